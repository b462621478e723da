"""The typed result of an erase: :class:`EraseReport`, and ``erase_report.json``, its form on disk.

:func:`eraser_dist.api.erase` returns it; the CLI prints it, the service copies its solver
figures into each certificate, and the published adapter carries it as
``erase_report.json`` (:meth:`EraseReport.to_json`), read back by :meth:`EraseReport.read`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .core.influence import StageFigures
from .core.step_control import StepControlFigures
from .errors import EraserError

REPORT_FILE = "erase_report.json"


@dataclass
class RequestFigures:
    """One request of a batch: its own ‖b_k‖, ‖ΔΘ_k‖ and relative residual (docs/DESIGN.md
    §1: a batch is one solve, and ΔΘ_k is read off in that solve's Krylov space)."""

    kind: str
    n_affected: int
    rhs_norm: float
    delta_norm: float
    relative_residual: float


@dataclass
class StationarityFigures:
    """The share of ΔΘ that finishes the fit (``gradient`` ``all_rows``): the solve of
    −(W/W')∇f(Θ̂)."""

    rhs_norm: float
    delta_norm: float
    relative_residual: float


@dataclass
class DistributedFigures:
    """How a distributed erase ran: its layout, the restarts it survived, and the bytes one
    CG iteration moves between the aggregator and the groups."""

    workers: int
    group_size: int
    base_dtype: str
    group_restarts: list[int]
    resumed_at_iteration: list[int]
    bytes_per_iteration: int


@dataclass
class IndexFigures:
    """The curvature index an erase started from (docs/DESIGN.md §7): where it is, the
    adapter version it was built on and how many erases back that is, how far Θ has moved
    since (‖Θ − Θ_index‖/‖Θ_index‖), the pairs it holds, the relative residual of its step
    before CG (``first_residual``), the products that step cost, the first residual the
    index had on its own version (``fresh_residual``; None when no erase of that version
    recorded one) and ``rebuild_advised``
    (:meth:`~eraser_dist.llm.curvature_index.IndexMeta.rebuild_advised`)."""

    path: str
    adapter_version: str
    versions_behind: int
    drift: float
    rank: int
    first_residual: float
    first_products: int
    fresh_residual: float | None
    rebuild_advised: bool


@dataclass
class EraseReport:
    """What an erase did and how well it solved.

    The request: ``kind`` (or ``mixed`` for a batch of kinds), ``n_train`` rows of which
    ``n_affected`` changed. The settings as run: ``hvp`` (requested, ``auto`` resolved),
    ``hvp_used`` (the back-end that made ΔΘ; another one after a negative-curvature
    fallback, or several joined by ``/`` over stages), ``curvature``, ``damping``,
    ``weight_decay``, ``on_negative_curvature``, ``step``, ``preconditioner``, ``gradient``,
    ``stages``, ``tol``, ``hessian_rows``. The solve: ``cg_iterations``, ``cg_converged``,
    ``relative_residual`` (worst stage's), ``negative_curvature`` (the requested back-end
    met it), ``truncated`` (the kept solve stopped at it: ΔΘ is a truncated iterate);
    ``preconditioner`` is ``curvature_index`` when the erase started from one.
    Sizes: ``rhs_norm`` ‖b‖, ``delta_norm`` ‖ΔΘ‖, ``adapter_norm`` ‖Θ̂‖. Wall time:
    ``seconds`` in all, ``rhs_seconds`` for b and ``solve_seconds`` for the solve.
    ``requests`` has each request's own figures, ``parts_sum_error`` how exactly they add
    up to ΔΘ: ‖Σ_k ΔΘ_k (+ stationarity) − ΔΘ‖/‖ΔΘ‖. ``index``: the curvature index used,
    if any. ``step_control``: what the step control did (None: the Newton step as solved).
    """

    kind: str
    n_train: int
    n_affected: int
    hvp: str
    hvp_used: str
    curvature: str
    damping: float
    weight_decay: float
    cg_iterations: int
    cg_converged: bool
    relative_residual: float
    negative_curvature: bool
    truncated: bool
    on_negative_curvature: str
    step: str
    preconditioner: str
    gradient: str
    stages: int
    tol: float
    hessian_rows: int
    rhs_norm: float
    delta_norm: float
    adapter_norm: float
    seconds: float
    rhs_seconds: float
    solve_seconds: float
    parts_sum_error: float
    requests: list[RequestFigures] = field(default_factory=list)
    stationarity: StationarityFigures | None = None
    stage_steps: list[StageFigures] = field(default_factory=list)
    distributed: DistributedFigures | None = None
    index: IndexFigures | None = None
    step_control: StepControlFigures | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (``erase_report.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EraseReport:
        try:  # the index and step-control figures came later: without them, none was used
            values = {f.name: obj.get(f.name) if f.name in ("index", "step_control")
                      else obj[f.name] for f in fields(cls)}
        except KeyError as err:
            raise EraserError(f"an erase report lacks {err}; it was written by another "
                              "version of eraser_dist") from None
        values["requests"] = [RequestFigures(**r) for r in values["requests"]]
        values["stage_steps"] = [StageFigures(**s) for s in values["stage_steps"]]
        if values["stationarity"] is not None:
            values["stationarity"] = StationarityFigures(**values["stationarity"])
        if values["distributed"] is not None:
            values["distributed"] = DistributedFigures(**values["distributed"])
        if values["index"] is not None:
            values["index"] = IndexFigures(**values["index"])
        if values["step_control"] is not None:
            values["step_control"] = StepControlFigures(**values["step_control"])
        return cls(**values)

    @classmethod
    def read(cls, adapter_dir: str | os.PathLike) -> EraseReport:
        """The report of a published erase."""
        path = Path(adapter_dir) / REPORT_FILE
        if not path.is_file():
            raise EraserError(f"{adapter_dir} has no {REPORT_FILE}: it was not made by an erase")
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
