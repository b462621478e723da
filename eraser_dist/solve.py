"""Damped conjugate gradient for (H + λI) x = b, with negative-curvature detection.

Pure tensor code: ``matvec`` is any function v ↦ Hv (one HVP per iteration), so the same
solver runs in one process or with each product a map-reduce over Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class CGResult:
    """Outcome of a CG solve.

    ``x`` [d] float64. ``relative_residual`` = ‖b − (H+λI)x‖/‖b‖ from CG's recurrence.
    ``negative_curvature`` is True when a search direction p had pᵀ(H+λI)p ≤ 0: the matrix is
    not positive definite, CG stopped there and ``x`` is the last iterate before that step
    (a truncated, Steihaug-style solution), not a solution of the system.
    """

    x: torch.Tensor
    iterations: int
    relative_residual: float
    converged: bool
    negative_curvature: bool
    curvature: float | None = None  # pᵀAp/pᵀp at the step that met negative curvature


@dataclass
class CGState:
    """Everything CG needs to continue after ``iterations`` steps: iterate ``x``, residual
    ``r``, next search direction ``p`` (all [d] float64) and ``rr`` = rᵀr. Saving it after
    every iteration makes a solve resumable (the distributed aggregator checkpoints it)."""

    x: torch.Tensor
    r: torch.Tensor
    p: torch.Tensor
    rr: float
    iterations: int


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 100,
    callback: Callable[[int, float], None] | None = None,
    start: CGState | None = None,
    checkpoint: Callable[[CGState], None] | None = None,
) -> CGResult:
    """Solve (H + damping·I) x = b from x₀ = 0, or continue from ``start``.

    Args:
        matvec: v [d] float64 ↦ H v [d] (any dtype; cast to float64 here).
        b: right-hand side [d].
        tol: stop when ‖r‖/‖b‖ ≤ tol.
        callback: called as callback(iteration, relative_residual) after each iteration.
        start: a state saved by ``checkpoint`` during an earlier run of the same solve; the
            result is then the same as that of an uninterrupted run.
        checkpoint: called with the state after each iteration that does not end the solve.
    """
    b = b.double()
    b_norm = float(b.norm())
    if b_norm == 0.0:
        return CGResult(torch.zeros_like(b), 0, 0.0, True, False)
    if start is None:
        start = CGState(torch.zeros_like(b), b.clone(), b.clone(), float(b @ b), 0)
    x, r, p, rr, iterations = start.x, start.r, start.p, start.rr, start.iterations
    while iterations < max_iter:
        ap = matvec(p).double() + damping * p
        pap = float(p @ ap)
        if not pap > 0.0:  # also catches NaN
            return CGResult(x, iterations, rr**0.5 / b_norm, False, True, pap / float(p @ p))
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        iterations += 1
        rel = rr_new**0.5 / b_norm
        if callback is not None:
            callback(iterations, rel)
        if rel <= tol:
            return CGResult(x, iterations, rel, True, False)
        p = r + (rr_new / rr) * p
        rr = rr_new
        if checkpoint is not None:
            checkpoint(CGState(x, r, p, rr, iterations))
    return CGResult(x, iterations, rr**0.5 / b_norm, False, False)
