"""What every ``eraser`` command shares: one-line errors, JSON output, common flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import EraserError


class EraserArgumentParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are user errors like any other: one
    ``eraser: error: …`` line and exit status 2 (``main`` prints it), not a usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise EraserError(f"{message} (see `{self.prog} --help`)")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def model_flags(p: argparse.ArgumentParser, out: bool = True) -> None:
    """--base, --data, --device, --json, --quiet (and --out, --overwrite)."""
    p.add_argument("--base", required=True,
                   help="tiny-llama, smollm2-135m, llama70b-shaped:N, or a Hugging Face model "
                   "directory")
    p.add_argument("--data", required=True, help="training set (Parquet: id, query, response)")
    if out:
        p.add_argument("--out", required=True,
                       help="output directory (the new adapter, or the index)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="cpu",
                   help="where the model runs in this process: cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
