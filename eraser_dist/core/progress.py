"""Progress of a long solve: status dicts, and one progress bar that renders them.

The Newton step reports its phase ("computing b", "computing the preconditioner", "CG",
"done") and, in CG, the back-end, iteration and relative residual; building a curvature
index reports "Lanczos" steps the same way, without a residual. In one process those
reports drive a bar directly; on a cluster the aggregator keeps the latest one and the
driver polls it and feeds the same bar, so both engines show the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

Status = dict[str, Any]
StatusCallback = Callable[[Status], None]


class StatusBar:
    """A tqdm bar over CG iterations (or Lanczos steps) whose label follows the phase."""

    def __init__(self, max_iter: int, enabled: bool = True, label: str = "erase"):
        self.bar = tqdm(total=max_iter, desc=label, disable=not enabled, leave=False)

    def __call__(self, status: Status) -> None:
        stage = ""
        if status.get("stages", 1) > 1:
            stage = f" stage {status['stage']}/{status['stages']}"
        if "iteration" not in status:
            self.bar.set_description(f"{status.get('phase', '')}{stage}")
            return
        self.bar.set_description(f"{status['phase']} ({status['hvp']} HVP){stage}")
        if status["iteration"] < self.bar.n:  # a new solve: a fallback or the next stage
            self.bar.reset(total=status.get("max_iter", self.bar.total))
        self.bar.update(status["iteration"] - self.bar.n)
        figures = {"residual": f"{status['residual']:.2e}"} if "residual" in status else {}
        if status.get("group_restarts"):
            figures["restarts"] = sum(status["group_restarts"])
        self.bar.set_postfix(figures)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def status_bar(progress: bool | StatusCallback, max_iter: int) -> Iterator[StatusCallback]:
    """The callback for ``progress``: a bar for True, nothing for False, else itself."""
    if callable(progress):
        yield progress
        return
    bar = StatusBar(max_iter, enabled=bool(progress))
    try:
        yield bar
    finally:
        bar.close()
