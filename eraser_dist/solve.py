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


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int = 100,
    callback: Callable[[int, float], None] | None = None,
) -> CGResult:
    """Solve (H + damping·I) x = b from x₀ = 0.

    Args:
        matvec: v [d] float64 ↦ H v [d] (any dtype; cast to float64 here).
        b: right-hand side [d].
        tol: stop when ‖r‖/‖b‖ ≤ tol.
        callback: called as callback(iteration, relative_residual) after each iteration.
    """
    b = b.double()
    x = torch.zeros_like(b)
    b_norm = float(b.norm())
    if b_norm == 0.0:
        return CGResult(x, 0, 0.0, True, False)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    iterations = 0
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
    return CGResult(x, iterations, rr**0.5 / b_norm, False, False)
