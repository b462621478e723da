"""Damped conjugate gradient for (H + λI) x = b, with negative-curvature detection.

Pure tensor code: ``matvec`` is any function v ↦ Hv (one HVP per iteration), so the same
solver runs in one process or with each product a map-reduce over Ray workers. An optional
preconditioner v ↦ M⁻¹v (symmetric positive definite) makes it preconditioned CG: same
solution, a Krylov space of M⁻¹(H + λI) instead, which converges in fewer products when the
weights' curvatures differ by orders of magnitude (a LoRA adapter's A and B factors do) or
when a curvature index already knows the largest directions.
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
    directions: torch.Tensor | None = None  # [m, d] the search directions p (if recorded)
    products: torch.Tensor | None = None  # [m, d] (H + damping·I) p of each
    start_residual: float = 1.0  # ‖b − (H+λI)x₀‖/‖b‖ of the first guess (1 from x₀ = 0)


@dataclass
class CGState:
    """Everything CG needs to continue after ``iterations`` steps: iterate ``x``, residual
    ``r``, next search direction ``p`` (all [d] float64) and ``rz`` = rᵀM⁻¹r (rᵀr without a
    preconditioner). Saving it after every iteration makes a solve resumable (the
    distributed aggregator checkpoints it).
    ``directions``/``products`` are the steps taken so far when they are recorded: one [d]
    tensor per iteration, in lists that only grow, so a checkpoint can write each step once
    rather than all m of them after every iteration."""

    x: torch.Tensor
    r: torch.Tensor
    p: torch.Tensor
    rz: float
    iterations: int
    directions: list[torch.Tensor] | None = None
    products: list[torch.Tensor] | None = None
    start_residual: float = 1.0


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
    record: bool = False,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
) -> CGResult:
    """Solve (H + damping·I) x = b from x₀ (default 0), or continue from ``start``.

    Args:
        matvec: v [d] float64 ↦ H v [d] (any dtype; cast to float64 here).
        b: right-hand side [d].
        tol: stop when ‖r‖/‖b‖ ≤ tol.
        callback: called as callback(iteration, relative_residual) after each iteration.
        start: a state saved by ``checkpoint`` during an earlier run of the same solve; the
            result is then the same as that of an uninterrupted run.
        checkpoint: called with the state after each iteration that does not end the solve.
        record: keep every direction p and its product (H + damping·I)p in the result
            (2·m·d floats), so that :func:`galerkin_split` can solve other right-hand
            sides in the same Krylov space without more products.
        preconditioner: v [d] ↦ M⁻¹v [d] float64 for a symmetric positive definite M, or
            None. A resumed solve must be given the same one.
        x0: first guesses [K, d] (or one [d]), e.g. a curvature index's step for each
            request of a batch. CG starts from their combination Σ_k c_k x0_k with the
            least residual ‖b − (H+λI)x‖ (never worse than x = 0; for one guess, the best
            multiple of it). That costs one product per guess, which ``iterations`` does
            not count; a recorded solve keeps each guess and its product as a direction,
            so that :func:`galerkin_split` finds each request's part in a span that holds
            its own guess. With ``max_iter`` 0 the result is that start and its residual.
    """
    b = b.double()
    b_norm = float(b.norm())
    if b_norm == 0.0:
        empty = torch.zeros(0, b.numel(), dtype=torch.float64) if record else None
        return CGResult(torch.zeros_like(b), 0, 0.0, True, False, None, empty, empty)

    def precondition(v: torch.Tensor) -> torch.Tensor:
        return v if preconditioner is None else preconditioner(v).double()

    if start is None:
        x, r = torch.zeros_like(b), b.clone()
        guesses: list[torch.Tensor] = []
        guess_products: list[torch.Tensor] = []
        if x0 is not None:
            guesses = list(x0.double().reshape(-1, b.numel()))
            guess_products = [matvec(g).double() + damping * g for g in guesses]
            weights = torch.linalg.lstsq(torch.stack(guess_products).T, b[:, None]).solution[:, 0]
            x = weights @ torch.stack(guesses)
            r = b - weights @ torch.stack(guess_products)
        z = precondition(r)
        start = CGState(x, r, z.clone(), float(r @ z), 0,
                        *((guesses, guess_products) if record else (None, None)),
                        float(r.norm()) / b_norm)
    x, r, p, rz, iterations = start.x, start.r, start.p, start.rz, start.iterations
    residual_norm = float(r.norm())
    if record and start.iterations and start.directions is None:
        raise ValueError("a recorded solve cannot resume from a state saved without record")
    directions = list(start.directions or [])
    products = list(start.products or [])

    def result(converged: bool, negative: bool, curvature: float | None = None) -> CGResult:
        kept = (torch.stack(directions), torch.stack(products)) if directions else (
            torch.zeros(0, b.numel(), dtype=torch.float64),) * 2
        return CGResult(x, iterations, residual_norm / b_norm, converged, negative, curvature,
                        *(kept if record else (None, None)), start.start_residual)

    if residual_norm / b_norm <= tol:  # x0 already good enough
        return result(True, False)
    while iterations < max_iter:
        ap = matvec(p).double() + damping * p
        pap = float(p @ ap)
        if not pap > 0.0:  # also catches NaN
            return result(False, True, pap / float(p @ p))
        if record:
            directions.append(p)
            products.append(ap)
        alpha = rz / pap
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = float(r @ z)
        iterations += 1
        residual_norm = float(r.norm())
        rel = residual_norm / b_norm
        if callback is not None:
            callback(iterations, rel)
        p = z + (rz_new / rz) * p
        rz = rz_new
        if rel <= tol:
            return result(True, False)
        if checkpoint is not None:
            # copies of the lists, not of the tensors: a kept state must not grow later
            checkpoint(CGState(x, r, p, rz, iterations,
                               *((directions[:], products[:]) if record else (None, None)),
                               start.start_residual))
    return result(False, False)


def galerkin_split(cg: CGResult, rhs: torch.Tensor,
                   shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve A x_k = b_k for each row of ``rhs`` [K, d] within the span of ``cg``'s directions.

    ``cg`` must be a recorded solve (``record=True``) of A x = Σ_k b_k. Each x_k is the
    vector of that span whose residual ‖A x_k − b_k‖ is least (a projection onto the Krylov
    space, exact where b_k's solution lies in it). It is linear in b_k, so Σ_k x_k is the
    least-residual solution for Σ_k b_k, which CG's own iterate (in the same span, residual
    at most ``tol``) bounds. Costs no product with A: the residual is computed exactly from
    the recorded products. With ``shift`` s, A is the solved matrix plus s·I: its products
    are the recorded ones plus s times the directions, so another damping is solved in the
    same span, still without a product. Returns (x [K, d] float64, ‖A x_k − b_k‖/‖b_k‖ [K]).
    """
    rhs = rhs.double()
    if cg.directions is None or cg.products is None:
        raise ValueError("galerkin_split needs a CG result run with record=True")
    if cg.directions.shape[0] == 0:
        return torch.zeros_like(rhs), torch.ones(rhs.shape[0], dtype=torch.float64)
    # Directions shrink with the residual (scale them to unit length), and in floating point
    # they lose conjugacy and grow nearly dependent: take an orthonormal basis U of their
    # span (P = U S Vᵀ, dropping what rounding left of dependent directions) and carry the
    # products along, AU = AP V S⁻¹. Least squares rather than UᵀAU: an fd or GGN product
    # is not exactly symmetric, and the residual is what is reported.
    scale = cg.directions.norm(dim=1, keepdim=True)
    u, sv, vh = torch.linalg.svd((cg.directions / scale).T, full_matrices=False)
    keep = sv > sv[0] * 1e-6
    u, sv, vh = u[:, keep], sv[keep], vh[keep]
    au = ((cg.products + shift * cg.directions) / scale).T @ vh.T / sv
    coefficients = torch.linalg.lstsq(au, rhs.T).solution  # [r, K]
    x = (u @ coefficients).T
    residual = (au @ coefficients).T - rhs
    norms = rhs.norm(dim=1)
    return x, residual.norm(dim=1) / torch.where(norms > 0, norms, 1.0)
