"""How a bench script hands over its result: the JSON on stdout, and the same text in the
``--out`` file when one is given (so that docs/ holds exactly what was printed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_and_write(result: Any, out: str | Path | None, indent: int = 2, **dumps: Any) -> str:
    """Print ``result`` as JSON (``json.dumps(result, indent=indent, **dumps)``) and write the
    same text to ``out`` unless it is None; returns the text."""
    text = json.dumps(result, indent=indent, **dumps)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return text
