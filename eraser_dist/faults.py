"""Deliberate process deaths for chaos tests of the restart and recovery paths.

A :class:`FaultPlan` makes one process exit abruptly (``os._exit``, as a crash or an OOM
kill would) at a chosen call. Deaths are counted in files under ``record_dir``, so a plan
survives the restarts it causes: ``times=1`` dies once, a large ``times`` fails every
incarnation (a permanently broken worker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FaultPlan:
    """Exit the process ``where`` (``"worker G.R"``, ``"aggregator"`` or ``"serve"``) at its
    ``at_call``-th call of ``method`` (a worker method, ``"iteration"`` for a CG iteration of
    the aggregator, a batch phase of the service), at most ``times`` times in all."""

    where: str
    method: str
    at_call: int
    times: int
    record_dir: str

    def deaths(self) -> int:
        return len(list(Path(self.record_dir).glob("death-*")))

    def check(self, where: str, method: str, count: int) -> None:
        if (where, method, count) != (self.where, self.method, self.at_call):
            return
        deaths = self.deaths()
        if deaths >= self.times:
            return
        Path(self.record_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.record_dir) / f"death-{deaths}").write_text(f"{where} {method} {count}\n")
        os._exit(1)


def check_all(plans: tuple[FaultPlan, ...], where: str, method: str, count: int) -> None:
    for plan in plans:
        plan.check(where, method, count)
