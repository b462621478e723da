"""A task set on disk: the clean splits, each test row's candidates, and the paper's erase
experiments, each a corrupted training set with the request that undoes it.

Layout (written by :func:`write_task_set`, read by :func:`read_task_set`)::

    OUT/{train,valid,test}.parquet     clean rows, split by user (or by movie, or by person)
    OUT/candidates.json                row id → {"candidates": [answers], "target": index}
    OUT/EXP/train.parquet              the experiment's training set (EXP: qm, rc10, rc40, ir;
                                       remove, correct for facts)
    OUT/EXP/request.json               the erase request that turns it into the edited set
    OUT/manifest.json                  arguments, row counts and sha256 of every set

The builders (:mod:`eraser_dist.experiments.llara`, :mod:`eraser_dist.experiments.genres`,
:mod:`eraser_dist.experiments.facts`) decide what a row is; the experiment runner
(:mod:`eraser_dist.experiments.runner`) only needs this layout.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import Example, examples_digest, read_examples, write_examples
from ..errors import EraserError

SPLITS = ("train", "valid", "test")


def write_task_set(out: str | Path, arguments: dict[str, Any],
                   splits: dict[str, list[Example]], candidates: dict[str, dict[str, Any]],
                   experiments: dict[str, tuple[list[Example], dict[str, Any]]]):
    """Write the layout above; returns the manifest."""
    out = Path(out)
    manifest: dict[str, Any] = {"arguments": arguments, "splits": {}, "experiments": {}}
    for name, examples in splits.items():
        write_examples(out / f"{name}.parquet", examples)
        manifest["splits"][name] = {"rows": len(examples), "sha256": examples_digest(examples)}
    (out / "candidates.json").write_text(json.dumps(candidates, sort_keys=True) + "\n")
    for name, (examples, request) in experiments.items():
        write_examples(out / name / "train.parquet", examples)
        (out / name / "request.json").write_text(json.dumps(request, indent=1) + "\n")
        manifest["experiments"][name] = {
            "kind": request["kind"], "rows": len(examples),
            "affected": len(request.get("ids", request.get("edits", []))),
            "sha256": examples_digest(examples)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def picked_rows(n: int, share: float, tag: str, seed: int) -> list[int]:
    """round(share·n) (at least 1) seeded row indices, sorted; ``tag`` names the corruption."""
    if not 0 < share < 1:
        raise EraserError(f"a corrupted share must be in (0, 1), got {share}")
    count = max(1, round(share * n))
    return sorted(random.Random(f"{seed}:{tag}").sample(range(n), count))


def seeded_split(items: list, sizes: tuple[int, int, int], seed: int, what: str) -> dict:
    """Disjoint seeded train / valid / test parts of ``items``, each in the items' order;
    ``what`` names the items in the refusal ("users with at least 6 ratings")."""
    if sum(sizes) > len(items):
        raise EraserError(f"{sum(sizes)} {what.split()[0]} asked for, MovieLens-100K has "
                          f"{len(items)} {what}")
    order = list(range(len(items)))
    random.Random(f"{seed}:split").shuffle(order)
    cuts = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    return {name: [items[i] for i in sorted(order[lo:hi])]
            for name, lo, hi in zip(SPLITS, cuts, cuts[1:], strict=False)}


@dataclass(frozen=True)
class TaskSet:
    """A task set folder, with its manifest and candidates loaded."""

    root: Path
    manifest: dict[str, Any]
    candidates: dict[str, dict[str, Any]]

    @property
    def experiments(self) -> list[str]:
        return list(self.manifest["experiments"])

    def split(self, name: str) -> list[Example]:
        return read_examples(self.root / f"{name}.parquet")

    def experiment_data(self, name: str) -> Path:
        self.check_experiments([name])
        return self.root / name / "train.parquet"

    def experiment_request(self, name: str) -> Path:
        self.check_experiments([name])
        return self.root / name / "request.json"

    def check_experiments(self, names: list[str]) -> None:
        """Refuse, in one message, every name that is not one of this set's experiments."""
        unknown = [n for n in names if n not in self.manifest["experiments"]]
        if unknown:
            raise EraserError(f"no experiment {', '.join(map(repr, unknown))} in {self.root}; "
                              f"it has {', '.join(self.experiments)}")


def read_task_set(root: str | Path) -> TaskSet:
    root = Path(root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        candidates = json.loads((root / "candidates.json").read_text())
    except FileNotFoundError as err:
        raise EraserError(f"{root} is not a task set (no {Path(err.filename).name}); build "
                          f"one with 'eraser data llara', 'eraser data genres' or 'eraser "
                          f"data facts'") from err
    return TaskSet(root, manifest, candidates)
