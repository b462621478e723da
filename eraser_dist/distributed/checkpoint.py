"""A CG solve's state on disk, so that a restarted aggregator resumes where it stopped.

One folder per solve, named by its key (:func:`eraser_dist.core.influence.solve_key`): the
state (x, r, p: three [d] vectors) replaced atomically after each iteration, and each
recorded step (p, (H + λI)p) written once to its own file. An iteration writes O(d) bytes
however many steps are recorded; rewriting them all would write O(m²·d) over a solve,
terabytes at 70B and 100 steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.solve import CGState
from ..files import atomic_write


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class CheckpointFile:
    """The checkpoint store of one solve (``load``/``save``, as CG's ``start``/
    ``checkpoint`` use them) in ``folder/cg-KEY``."""

    def __init__(self, folder: str | Path, key: str):
        self.folder = Path(folder) / f"cg-{key}"
        self.steps_on_disk = 0

    def load(self) -> CGState | None:
        state_file = self.folder / "state.pt"
        if not state_file.is_file():
            return None
        saved = torch.load(state_file, weights_only=True)
        state = CGState(**{k: v for k, v in saved.items() if k != "recorded"})
        if saved["recorded"]:
            # step files past ``iterations`` are from a crash between a step and its state
            steps = [torch.load(self.step_file(i), weights_only=True)
                     for i in range(state.iterations)]
            state.directions, state.products = [p for p, _ in steps], [ap for _, ap in steps]
            self.steps_on_disk = state.iterations
        return state

    def save(self, state: CGState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        recorded = state.directions is not None and state.products is not None
        if recorded:
            for i in range(self.steps_on_disk, len(state.directions)):
                atomic_save((state.directions[i], state.products[i]), self.step_file(i))
            self.steps_on_disk = len(state.directions)
        atomic_save({"x": state.x, "r": state.r, "p": state.p, "rz": state.rz,
                     "iterations": state.iterations, "recorded": recorded},
                    self.folder / "state.pt")

    def step_file(self, i: int) -> Path:
        return self.folder / f"step-{i:05d}.pt"
