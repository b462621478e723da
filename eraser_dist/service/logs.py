"""``eraser serve --log-json``: one JSON object per log line, for a log shipper.

Each line holds ``time`` (Unix seconds), ``level``, ``logger`` and ``message``, and the
structured fields a log call passes as ``extra={"fields": {...}}`` (a committed batch's
``event``, ids and ``seconds_by_phase``; the ``drained`` summary at the end of a drain).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 6), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage(),
                **getattr(record, "fields", {})}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, sort_keys=True, default=str)


@contextmanager
def service_logs(json_lines: bool) -> Iterator[None]:
    """While the block runs, the ``eraser_dist`` INFO logs go to stderr, as JSON lines or
    as plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else
                         logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("eraser_dist")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
