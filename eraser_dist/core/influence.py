"""The erase step: one Newton step on the edited objective, ΔΘ = H_new⁻¹ b.

With f the old objective (1/W) Σ w_i L_i + (λ/2)‖Θ‖², Θ̂ its minimiser and f_new the objective
after the request (weights w'_i, total W'), the step is ΔΘ = −H_new⁻¹ ∇f_new(Θ̂). Because
∇f(Θ̂) = 0, i.e. Σ_i w_i G_i = −WλΘ̂, the gradient needs only the rows whose weight changed:

    b = −∇f_new(Θ̂) = ( −Σ_changed Δw_i G_i + (W − W') λ Θ̂ ) / W'

(removing k rows: b = (Σ_S G + kλΘ̂)/(n − k); editing: b = (1/n) Σ_S [G(old) − G(new)]).

The curvature is H = (1/W) Σ_D w_i ∇²L_i + λI of the original objective by default, or
H_new = (1/W') Σ_{D'} w'_i ∇²L_i + λI of the edited one (``EraseArguments.curvature``).
Either is exact to first order in the size of the request, and H_new is exact for a quadratic
loss. H is positive definite at a converged Θ̂; H_new need not be, and where it was indefinite
CG's truncated iterate overshot retraining 20×. The paper's b = Σ_S G / n (no λ term, wrong
normalisation) is far worse for removals (DESIGN.md §1).

The shortcut assumes ∇f(Θ̂) = 0, which an adapter trained for a few epochs need not reach.
With ``EraseArguments.gradient`` ``all_rows`` b is the full −∇f_new(Θ̂): the same terms plus
−(W/W')∇f(Θ̂) = −(Σ_D w_i G_i + WλΘ̂)/W', one more pass over the data.

A batch of K requests against one adapter is one solve: b is linear in the changed rows, so
b = Σ_k b_k with b_k the terms of request k's rows (and its removed weight), all over the
batch's W'. The solve of Σ_k b_k records its Krylov directions, and each request's own
ΔΘ_k = H⁻¹ b_k is then read off in that space with no further HVP (``galerkin_split``),
with its own exact residual (and Θ̂'s own gradient term, with ``all_rows``, likewise).

One step is first order in the size of the request. For a large one (``EraseArguments.stages``
k > 1) the edit is cut into k equal parts along f_t = f + t·(f_new − f), and each part is the
step above for f_{(s−1)/k} → f_{s/k}, taken from where the previous part ended, with b and H
evaluated there: a path-following (predictor) method whose ΔΘ is the sum of the k steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from ..arguments import CURVATURE_DATA, RHS_GRADIENTS, EraseArguments
from ..errors import EraserError
from .curvature import fisher_diagonal, hessian_vector_product
from .objective import LossModel, check_finite, gradient_sum
from .requests import EditedObjective
from .solve import CGResult, conjugate_gradient, galerkin_split


@dataclass
class InfluenceResult:
    """ΔΘ [d] float64 with the solver's figures.

    ``hvp`` is the back-end whose solve produced ``delta``; ``negative_curvature`` is True
    when the requested back-end met negative curvature (then ``hvp`` may be the fallback).
    ``parts`` [K, d] is each request's own ΔΘ_k and ``part_residuals`` [K] its relative
    residual ‖(H + damping·I)ΔΘ_k − b_k‖/‖b_k‖ (K = 1: ``delta`` itself and CG's residual).
    ``rhs_seconds`` is the wall time of b (gradients of the changed rows, a floor on any
    erase's cost that grows with the request; with ``all_rows`` also a pass over every row)
    and ``solve_seconds`` that of the solve.
    With ``gradient`` ``all_rows``, ``stationarity`` [d] is the share of ``delta`` due to
    ∇f(Θ̂) ≠ 0 (``delta`` = Σ_k parts_k + stationarity), with its right-hand side's norm and
    relative residual; None otherwise.
    ``stages`` lists each stage's figures (``EraseArguments.stages`` > 1; else empty).
    """

    delta: torch.Tensor
    cg: CGResult
    rhs_norm: float
    damping: float
    hessian_rows: int
    hvp: str
    negative_curvature: bool
    parts: torch.Tensor
    part_residuals: torch.Tensor
    part_rhs_norms: torch.Tensor
    rhs_seconds: float
    solve_seconds: float
    stationarity: torch.Tensor | None = None
    stationarity_rhs_norm: float = 0.0
    stationarity_residual: float = 0.0
    stages: list[dict] = field(default_factory=list)


def newton_rhs(model: LossModel, edited: EditedObjective, weight_decay: float, batch_size: int,
               gradient: str = "changed_rows"):
    """The terms b_t of b = −∇f_new(Θ̂) = Σ_t b_t [T, d] float64 (see :func:`rhs_terms`)."""
    terms, removed = rhs_terms(edited, gradient)
    gradients = torch.stack([gradient_sum(model, rows, coefficients, batch_size).double().cpu()
                             for rows, coefficients in terms])
    return rhs_from_gradients(gradients, model.get_flat(), removed, edited.weight_after,
                              weight_decay)


def rhs_terms(edited: EditedObjective, gradient: str):
    """What b's terms are summed from: per request k its changed rows with coefficients
    −Δw_i and the weight W − W' it removes (T = K terms); with ``gradient`` ``all_rows`` one
    more, every row of D with −w_i and −W, which :func:`rhs_from_gradients` turns into
    −(W/W')∇f(Θ̂) (T = K + 1). Returns ([(rows, coefficients [n_t])], removed weights [T])."""
    if gradient not in RHS_GRADIENTS:
        raise EraserError(f"unknown gradient {gradient!r}; choose {', '.join(RHS_GRADIENTS)}")
    terms = [(rows, -changes) for rows, changes in edited.request_parts()]
    removed = edited.removed_weights()
    if gradient == "all_rows":
        terms.append((edited.rows_before, -edited.weights_before))
        removed = torch.cat([removed, removed.new_tensor([-edited.weight_before])])
    return terms, removed


def rhs_from_gradients(
    term_gradients: torch.Tensor,
    theta: torch.Tensor,
    removed_weights: torch.Tensor,
    weight_after: float,
    weight_decay: float,
) -> torch.Tensor:
    """b_t [T, d] float64 from each term's Σ_i c_i G_i [T, d] (however it was summed), Θ̂ [d],
    each term's removed weight [T] and the batch's W' (terms as :func:`rhs_terms`)."""
    b = term_gradients.double().cpu() + (
        removed_weights.double()[:, None] * weight_decay * theta.double().cpu()[None, :])
    return check_finite(b / weight_after, "b")


def hessian_subset(edited: EditedObjective, curvature: str, samples: int | None, seed: int):
    """Rows and weights on which H is estimated: those of D (``original``) or of D'
    (``edited``), all of them or a seeded uniform subset."""
    if curvature not in CURVATURE_DATA:
        raise EraserError(f"unknown curvature {curvature!r}; choose {', '.join(CURVATURE_DATA)}")
    if curvature == "original":
        rows, weights = edited.rows_before, edited.weights_before
    else:
        rows, weights = edited.rows_after, edited.weights_after
    if samples is None or samples >= len(rows):
        return rows, weights
    if samples < 1:
        raise EraserError(f"--hessian-samples must be at least 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(rows), generator=generator)[:samples].sort().values.tolist()
    return [rows[i] for i in picked], weights[picked]


def newton_step(
    model: LossModel,
    edited: EditedObjective,
    weight_decay: float,
    args: EraseArguments,
    progress: bool = True,
) -> InfluenceResult:
    """ΔΘ = (H + damping·I)⁻¹ b by CG in this process; damping defaults to the objective's λ.

    With ``args.stages`` k > 1, ΔΘ is the sum of k such steps, each for 1/k of the edit from
    where the previous one ended (:meth:`EditedObjective.stage`); Θ is restored after."""
    check_stages(args)
    if args.stages == 1:
        return one_newton_step(model, edited, weight_decay, args, progress)
    theta = model.get_flat()
    steps: list[InfluenceResult] = []
    try:
        for index in range(1, args.stages + 1):
            steps.append(one_newton_step(model, edited.stage(index, args.stages),
                                         weight_decay, args, progress))
            model.set_flat(theta + sum(step.delta for step in steps).to(theta))
    finally:
        model.set_flat(theta)
    return combine_stages(steps)


def check_stages(args: EraseArguments) -> None:
    if args.stages < 1:
        raise EraserError(f"--stages must be at least 1, got {args.stages}")
    if args.stages > 1 and args.gradient != "changed_rows":
        # all_rows's term is ∇f at t = 0; a later stage would need f_t's
        raise EraserError("--stages above 1 needs --gradient changed_rows")


def combine_stages(steps: list[InfluenceResult]) -> InfluenceResult:
    """One result for a path of steps: ΔΘ, each request's part, norms of b, iterations and
    seconds add up; a residual is the worst stage's, the HVP back-ends used are listed once
    each; ``stages`` gives each stage's own figures."""
    def total(name: str):
        return sum(getattr(step, name) for step in steps)

    last = steps[-1]
    cg = replace(last.cg, x=total("delta"), iterations=sum(s.cg.iterations for s in steps),
                 relative_residual=max(s.cg.relative_residual for s in steps),
                 converged=all(s.cg.converged for s in steps))
    return replace(
        last, delta=cg.x, cg=cg, rhs_norm=total("rhs_norm"), parts=total("parts"),
        hvp="/".join(dict.fromkeys(s.hvp for s in steps)),  # "exact/ggn" if one fell back
        negative_curvature=any(s.negative_curvature for s in steps),
        part_residuals=torch.stack([s.part_residuals for s in steps]).amax(0),
        part_rhs_norms=total("part_rhs_norms"), rhs_seconds=total("rhs_seconds"),
        solve_seconds=total("solve_seconds"),
        stages=[stage_figures(s) for s in steps])


def stage_figures(step: InfluenceResult) -> dict:
    return {"rhs_norm": step.rhs_norm, "delta_norm": float(step.delta.norm()),
            "cg_iterations": step.cg.iterations, "relative_residual": step.cg.relative_residual,
            "hvp_used": step.hvp, "rhs_seconds": step.rhs_seconds,
            "solve_seconds": step.solve_seconds}


def one_newton_step(model: LossModel, edited: EditedObjective, weight_decay: float,
                    args: EraseArguments, progress: bool) -> InfluenceResult:
    damping = erase_damping(args, weight_decay)
    start = time.perf_counter()
    parts_rhs = newton_rhs(model, edited, weight_decay, args.batch_size, args.gradient)
    rhs_seconds = time.perf_counter() - start
    b = parts_rhs.sum(0)
    rows, weights = hessian_subset(edited, args.curvature, args.hessian_samples, args.seed)
    scale = 1.0 / float(weights.sum())
    start = time.perf_counter()
    inverse_diagonal = preconditioner(args.preconditioner,
                                      lambda: fisher_diagonal(model, rows, weights), scale, damping)

    def solve(kind: str) -> CGResult:
        hvp = hessian_vector_product(kind, model, rows, weights, args.batch_size, args.fd_step)
        with cg_progress(args, kind, progress) as report:
            return conjugate_gradient(lambda v: hvp(v).double().cpu() * scale, b, damping=damping,
                                      tol=args.tol, max_iter=args.max_iter, callback=report,
                                      record=keeps_directions(parts_rhs, args),
                                      inverse_diagonal=inverse_diagonal)

    cg, hvp = solve_with_policy(solve, args)
    seconds = (rhs_seconds, time.perf_counter() - start)
    return influence_result(cg, hvp, parts_rhs, damping, len(rows), args, seconds)


def preconditioner(kind: str, fisher_sum: Callable[[], torch.Tensor], scale: float,
                   damping: float) -> torch.Tensor | None:
    """M⁻¹ [d] float64 of the preconditioner ``kind`` (None for ``none``, plain CG):
    M = F/W + damping, with ``fisher_sum`` computing Σ_i w_i ∇L_i ⊙ ∇L_i over H's rows and
    ``scale`` = 1/W. A weight with neither curvature nor damping is left unscaled."""
    if kind == "none":
        return None
    diagonal = fisher_sum().double() * scale + damping
    return torch.where(diagonal > 0, 1.0 / diagonal, 1.0)


def keeps_directions(parts_rhs: torch.Tensor, args: EraseArguments) -> bool:
    """Whether CG must record its directions: to split a batch, or for a least-residual step."""
    return parts_rhs.shape[0] > 1 or args.step == "least_residual"


def influence_result(cg: CGResult, hvp: str, parts_rhs: torch.Tensor, damping: float,
                     hessian_rows: int, args: EraseArguments,
                     seconds: tuple[float, float]) -> InfluenceResult:
    """The figures of a finished solve of Σ_t b_t (``parts_rhs`` [T, d], as
    :func:`newton_rhs`), with each term's own ΔΘ_t and the (b, solve) wall ``seconds``; with
    ``args.step`` ``least_residual`` the step (and its residual) is the least-residual vector
    of CG's span instead of CG's iterate. The recorded directions are dropped once used."""
    if args.step == "least_residual":
        total, residual = galerkin_split(cg, parts_rhs.sum(0, keepdim=True))
        cg = replace(cg, x=total[0], relative_residual=float(residual[0]))
    if parts_rhs.shape[0] == 1:
        parts = cg.x[None].clone()
        residuals = torch.tensor([cg.relative_residual], dtype=torch.float64)
    else:
        parts, residuals = galerkin_split(cg, parts_rhs)
    cg = replace(cg, directions=None, products=None)
    norms = parts_rhs.norm(dim=1)
    stationarity = {}
    if args.gradient == "all_rows":  # the last term is Θ̂'s own gradient, not a request's
        stationarity = {"stationarity": parts[-1], "stationarity_rhs_norm": float(norms[-1]),
                        "stationarity_residual": float(residuals[-1])}
        parts, residuals, norms = parts[:-1], residuals[:-1], norms[:-1]
    return InfluenceResult(cg.x, cg, float(parts_rhs.sum(0).norm()), damping, hessian_rows, hvp,
                           cg.negative_curvature or hvp != args.hvp, parts, residuals,
                           norms, *seconds, **stationarity)


def erase_damping(args: EraseArguments, weight_decay: float) -> float:
    damping = weight_decay if args.damping is None else args.damping
    if damping < 0:
        raise EraserError(f"damping must be non-negative, got {damping}")
    return damping


def solve_with_policy(solve: Callable[[str], CGResult], args: EraseArguments):
    """Run ``solve(args.hvp)`` and apply ``args.on_negative_curvature`` to its outcome.

    ``solve`` maps an HVP back-end to a CG result (in one process or distributed). Returns
    (the CG result kept, the back-end that produced it).
    """
    hvp = args.hvp
    cg = solve(hvp)
    if cg.negative_curvature:
        hint = "raise --damping or use --hvp ggn"
        if args.on_negative_curvature == "fail":
            raise EraserError(f"H + damping·I has negative curvature (pᵀAp/pᵀp = "
                              f"{cg.curvature:.3g} at CG iteration {cg.iterations}); {hint}")
        if args.on_negative_curvature == "ggn" and hvp != "ggn":
            hvp = "ggn"
            cg = solve(hvp)
        elif cg.iterations == 0:
            raise EraserError(
                "H + damping·I has negative curvature along b itself, so CG has no usable "
                f"iterate (curvature {cg.curvature:.3g}); {hint}"
            )
    return cg, hvp


@contextmanager
def cg_progress(args: EraseArguments, kind: str, enabled: bool):
    """A progress bar for one CG solve; yields the ``callback`` CG reports to."""
    bar = tqdm(total=args.max_iter, desc=f"CG ({kind} HVP)", disable=not enabled, leave=False)

    def report(iteration: int, residual: float) -> None:
        bar.update(iteration - bar.n)
        bar.set_postfix(residual=f"{residual:.2e}")

    try:
        yield report
    finally:
        bar.close()
