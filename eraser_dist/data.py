"""Training sets: rows (:class:`Example`) and Parquet files with columns ``id`` (unique
string), ``query``, ``response``, read with validation and written atomically."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import EraserError
from .files import atomic_write

COLUMNS = ("id", "query", "response")


@dataclass(frozen=True)
class Example:
    """One training instance z = (x, y): ``query`` is the prompt x, ``response`` the target y."""

    id: str
    query: str
    response: str


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read and validate a training set; raises EraserError on any schema or content problem."""
    path = Path(path)
    if not path.is_file():
        raise EraserError(f"data file {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise EraserError(f"{path} is not a readable Parquet file: {err}") from err
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise EraserError(f"{path} lacks column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}")
    columns = {}
    for name in COLUMNS:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise EraserError(f"{path}: column {name!r} must hold strings, not {col.type}")
        if col.null_count:
            raise EraserError(f"{path}: column {name!r} has {col.null_count} missing value(s)")
        columns[name] = col.to_pylist()
    if table.num_rows == 0:
        raise EraserError(f"{path} has no rows")
    seen: set[str] = set()
    duplicates = sorted({i for i in columns["id"] if i in seen or seen.add(i)})
    if duplicates:
        raise EraserError(f"{path} has duplicate id(s): {', '.join(duplicates[:5])}")
    return [Example(*row) for row in zip(*(columns[c] for c in COLUMNS), strict=True)]


def write_examples(path: str | os.PathLike, examples: Sequence[Example]) -> None:
    """Write a training set atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: [getattr(e, c) for e in examples] for c in COLUMNS})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def examples_digest(examples: Sequence[Example]) -> str:
    """sha256 of the rows in order: identifies the data an adapter was trained on."""
    h = hashlib.sha256()
    for e in examples:
        for field in (e.id, e.query, e.response):
            h.update(field.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()
