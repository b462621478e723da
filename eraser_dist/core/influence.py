"""The erase step: one Newton step on the edited objective, ΔΘ = (H + damping·I)⁻¹ b.

One pipeline for both engines (docs/DESIGN.md §3): :func:`newton_step` asks a
:class:`~eraser_dist.core.backend.CurvatureBackend` for gradient sums, HVPs and the Fisher
diagonal, and does everything else here: b from the changed rows, the Hessian rows, damping
and normalisation, the preconditioner, CG with the negative-curvature policy, the
least-residual step, each request's own share of a batch, and a path of stages. In one
process the backend is the model itself; on a cluster it is the aggregator's pool of worker
groups, and the aggregator passes a checkpoint store so that a restarted aggregator resumes
CG where it stopped.

The maths (docs/DESIGN.md §1): with f the old objective (1/W) Σ w_i L_i + (λ/2)‖Θ‖², Θ̂ its
minimiser and f_new the objective after the request (weights w'_i, total W'), ∇f(Θ̂) = 0
gives

    b = −∇f_new(Θ̂) = ( −Σ_changed Δw_i G_i + (W − W') λ Θ̂ ) / W'

so b needs the changed rows only (``gradient`` ``all_rows`` adds Θ̂'s own term
−(W/W')∇f(Θ̂) for an adapter short of its minimum). H is the original objective's Hessian
(or the edited one's, ``curvature`` ``edited``) on all rows or a seeded sample. A batch of K
requests is one solve of Σ_k b_k; each request's ΔΘ_k is read off in that solve's Krylov
space (:func:`~eraser_dist.core.solve.galerkin_split`). ``stages`` K > 1 cuts the edit into
K equal parts along f_t = f + t·(f_new − f), each step taken from where the last ended.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ..arguments import EraseArguments, check_index_budget
from ..errors import EraserError
from .backend import CurvatureBackend, InProcessBackend
from .objective import LossModel, check_finite
from .progress import StatusCallback, status_bar
from .requests import EditedObjective
from .solve import CGResult, CGState, conjugate_gradient, galerkin_split
from .spectral import LowRankCurvature, low_rank_curvature
from .step_control import StepControlFigures, chord_newton, line_search


@dataclass
class StageFigures:
    """One stage's own figures in a path of ``EraseArguments.stages`` steps."""

    rhs_norm: float
    delta_norm: float
    cg_iterations: int
    relative_residual: float
    hvp_used: str
    rhs_seconds: float
    solve_seconds: float


@dataclass
class InfluenceResult:
    """ΔΘ [d] float64 with the solver's figures.

    ``hvp`` is the back-end whose solve produced ``delta``; ``negative_curvature`` is True
    when the requested back-end met negative curvature (then ``hvp`` may be the fallback),
    ``truncated`` when the kept solve itself stopped there (``delta`` is then its last
    iterate before that direction, not a solution).
    ``parts`` [K, d] is each request's own ΔΘ_k and ``part_residuals`` [K] its relative
    residual ‖(H + damping·I)ΔΘ_k − b_k‖/‖b_k‖ (K = 1: ``delta`` itself and CG's residual).
    ``rhs_seconds`` is the wall time of b and ``solve_seconds`` that of the solve.
    With ``gradient`` ``all_rows``, ``stationarity`` [d] is the share of ``delta`` due to
    ∇f(Θ̂) ≠ 0 (``delta`` = Σ_k parts_k + stationarity), with its right-hand side's norm and
    relative residual; None otherwise.
    ``stages`` lists each stage's figures (``EraseArguments.stages`` > 1; else empty).
    ``first_residual`` is the relative residual of CG's first guess (a curvature index's
    step; 1.0 from zero), ``first_products`` the products that guess cost (0 without one).
    ``control`` says what ``EraseArguments.step_control`` did (None: the Newton step as
    solved). ``span_rhs`` [T, d] are the right-hand sides, kept (with ``cg``'s recorded
    directions) only while the ``damping`` control may re-solve in the same span.
    """

    delta: torch.Tensor
    cg: CGResult
    rhs_norm: float
    damping: float
    hessian_rows: int
    hvp_requested: str
    hvp: str
    negative_curvature: bool
    truncated: bool
    parts: torch.Tensor
    part_residuals: torch.Tensor
    part_rhs_norms: torch.Tensor
    rhs_seconds: float
    solve_seconds: float
    stationarity: torch.Tensor | None = None
    stationarity_rhs_norm: float = 0.0
    stationarity_residual: float = 0.0
    stages: list[StageFigures] = field(default_factory=list)
    first_residual: float = 1.0
    first_products: int = 0
    control: StepControlFigures | None = None
    span_rhs: torch.Tensor | None = None


class CheckpointStore(Protocol):
    """Where one solve's CG state is kept between iterations (see ``conjugate_gradient``'s
    ``start`` and ``checkpoint``): what :meth:`load` returns resumes the same solve."""

    def load(self) -> CGState | None: ...

    def save(self, state: CGState) -> None: ...


Checkpoints = Callable[[str], CheckpointStore]
"""A solve's key (:func:`solve_key`) → its checkpoint store."""


def as_backend(model: LossModel | CurvatureBackend) -> CurvatureBackend:
    """A LossModel is computed on in this process; a backend is used as it is."""
    return InProcessBackend(model) if isinstance(model, LossModel) else model


def newton_rhs(model: LossModel | CurvatureBackend, edited: EditedObjective,
               weight_decay: float, batch_size: int,
               gradient: str = "changed_rows") -> torch.Tensor:
    """The terms b_t of b = −∇f_new(Θ̂) = Σ_t b_t [T, d] float64 (see :func:`rhs_terms`)."""
    backend = as_backend(model)
    terms, removed = rhs_terms(edited, gradient)
    return rhs_from_gradients(backend.gradient_sums(terms, batch_size), backend.theta(),
                              removed, edited.weight_after, weight_decay)


def rhs_terms(edited: EditedObjective, gradient: str):
    """What b's terms are summed from: per request k its changed rows with coefficients
    −Δw_i and the weight W − W' it removes (T = K terms); with ``gradient`` ``all_rows`` one
    more, every row of D with −w_i and −W, which :func:`rhs_from_gradients` turns into
    −(W/W')∇f(Θ̂) (T = K + 1). Returns ([(rows, coefficients [n_t])], removed weights [T])."""
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
    (``edited``), all of them or a seeded uniform subset of ``samples``."""
    if curvature == "original":
        return sample_rows(edited.rows_before, edited.weights_before, samples, seed)
    return sample_rows(edited.rows_after, edited.weights_after, samples, seed)


def sample_rows(rows: Sequence, weights: torch.Tensor, samples: int | None, seed: int):
    """All the rows [n] and weights [n], or a seeded uniform subset of ``samples`` of them
    (in their order): the same rows for the same data, seed and count, whoever asks."""
    if samples is None or samples >= len(rows):
        return rows, weights
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(rows), generator=generator)[:samples].sort().values.tolist()
    return [rows[i] for i in picked], weights[picked]


def hvp_kind(args: EraseArguments, backend: CurvatureBackend) -> str:
    """The HVP back-end ``args.hvp`` names on ``backend`` (``auto``: the backend's default)."""
    return backend.default_hvp if args.hvp == "auto" else args.hvp


def newton_step(
    model: LossModel | CurvatureBackend,
    edited: EditedObjective,
    weight_decay: float,
    args: EraseArguments,
    progress: bool | StatusCallback = True,
    checkpoints: Checkpoints | None = None,
    index: LowRankCurvature | None = None,
) -> InfluenceResult:
    """ΔΘ = (H + damping·I)⁻¹ b on ``model`` (a LossModel in this process, or any
    :class:`CurvatureBackend`); damping defaults to the objective's λ.

    With a curvature ``index`` (:func:`fit_curvature`, built once per adapter version), CG
    starts from the best combination of the index's steps P⁻¹b_k (one per request of a
    batch that must be split, else one for b) and is preconditioned by P⁻¹ instead of the
    Fisher diagonal, which is then not computed: each step costs a product, and CG adds
    products only while the residual is above ``args.tol``.

    With ``args.stages`` K > 1, ΔΘ is the sum of K such steps, each for 1/K of the edit from
    where the previous one ended (:meth:`EditedObjective.stage`); Θ is restored after.
    ``progress``: a progress bar (True), none (False), or a callback that receives each
    status (a dict: ``phase``, and in CG ``hvp``, ``iteration``, ``residual``, ``max_iter``;
    ``stage`` and ``stages``). ``checkpoints`` makes every CG solve resumable.
    """
    check_index_budget(args, index is not None)
    if args.step_control == "newton" and edited.n_requests > 1:
        raise EraserError("--step-control newton takes one request at a time (its later "
                          "steps are not split among a batch's requests); use line_search")
    backend = as_backend(model)
    with status_bar(progress, args.max_iter) as report:
        result = solved_step(backend, edited, weight_decay, args, report, checkpoints, index)
        return control_step(backend, edited, weight_decay, args, result, report, index)


def solved_step(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
                args: EraseArguments, report: StatusCallback,
                checkpoints: Checkpoints | None = None,
                index: LowRankCurvature | None = None) -> InfluenceResult:
    """:func:`newton_step` before its step control: the solve (or the path of stages), with
    the span kept when ``args.step_control`` is ``damping``. Comparing controls on one solve
    (bench/step_control.py) calls it once and :func:`control_step` per control."""
    if chosen_control(args, edited) == "path":
        return path_step(backend, edited, weight_decay, args, report, checkpoints, index)
    if args.stages == 1:
        return _one_step(backend, edited, weight_decay, args, report, checkpoints, 1, index)
    return _stages(backend, edited, weight_decay, args, report, checkpoints, index)


def path_step(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
              args: EraseArguments, report: StatusCallback,
              checkpoints: Checkpoints | None = None,
              index: LowRankCurvature | None = None) -> InfluenceResult:
    """The ``path`` step control: the request in ``args.path_stages`` K stages along f_t
    (§1.7), each stage's CG at most ⌈``args.max_iter``/K⌉ iterations, so that the path
    costs about the one solve's products (and K right-hand sides over the changed rows,
    and each stage's first step, one product). Every stage starts from, and is
    preconditioned by, the same curvature ``index``, built at Θ̂; without one, by the Fisher
    diagonal computed once at Θ̂ (an index of rank 0) rather than once per stage (with
    ``preconditioner`` ``none``, plain CG from zero at every stage). Each
    stage's b is taken where the last stage ended, so the curvature of the rows the request
    adds is re-read on the way, where one step takes it at Θ̂ alone."""
    stages = args.path_stages
    if index is None and args.preconditioner == "fisher_diagonal":
        rows, weights = hessian_subset(edited, args.curvature, args.hessian_samples, args.seed)
        backend.use_hessian_rows(rows, weights)
        report({"phase": "computing the preconditioner"})
        scaling = fisher_scaling(backend.fisher_diagonal, 1.0 / float(weights.sum()),
                                 erase_damping(args, weight_decay))
        index = LowRankCurvature(scaling, scaling.new_zeros(0),
                                 scaling.new_zeros(0, scaling.numel()))
    result = _stages(backend, edited, weight_decay, replace(
        args, stages=stages, max_iter=-(-args.max_iter // stages), step_control="none"),
        report, checkpoints, index)
    return replace(result, control=StepControlFigures("path", 1.0, stages, [], [], 0.0))


def _stages(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
            args: EraseArguments, report: StatusCallback, checkpoints: Checkpoints | None,
            index: LowRankCurvature | None) -> InfluenceResult:
    """``args.stages`` steps, each for 1/K of the edit from where the last ended."""
    theta = backend.theta()
    steps: list[InfluenceResult] = []
    try:
        for stage in range(1, args.stages + 1):
            steps.append(_one_step(backend, edited.stage(stage, args.stages), weight_decay,
                                   args, report, checkpoints, stage, index))
            if stage < args.stages:
                backend.set_theta(theta + sum(step.delta for step in steps))
    finally:
        backend.set_theta(theta)
    return combine_stages(steps)


def control_step(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
                 args: EraseArguments, result: InfluenceResult, report: StatusCallback,
                 index: LowRankCurvature | None = None) -> InfluenceResult:
    """``args.step_control`` applied to a solved step ``result`` (Θ is left at Θ̂):
    ``line_search`` scales ΔΘ (and each request's part) by the α that minimises the
    objective the step aims at along it; ``damping`` re-solves in the solve's own Krylov
    span with the damping among ``args.damping_factors`` × the solved one at which that
    objective is least (both measured by :func:`edited_objective_change`: forward passes
    and, with ``changed_rows``, one gradient pass); ``newton`` adds
    chord Newton steps (:func:`edited_gradient` and the erase's own solve, from the
    ``index`` if any); ``auto`` is resolved by :func:`chosen_control`."""
    kind = chosen_control(args, edited)
    if kind in ("none", "path"):  # a path's stages were its solve (path_step)
        return result
    theta, start = backend.theta(), time.perf_counter()
    try:
        if kind == "line_search":
            report({"phase": "line search"})
            check = edited_objective_change(backend, edited, weight_decay, theta, args)
            found = line_search(lambda a: check.change(a * result.delta), args.step_alphas,
                                resolution=check.resolution)
            alpha = found.alpha
            figures = StepControlFigures("line_search", alpha, 1, [list(p) for p in found.tried],
                                         [], 0.0)
            result = replace(result, delta=alpha * result.delta, parts=alpha * result.parts,
                             stationarity=None if result.stationarity is None
                             else alpha * result.stationarity)
        elif kind == "damping":
            report({"phase": "damping search"})
            check = edited_objective_change(backend, edited, weight_decay, theta, args)
            solved = result.damping

            def resolved(strength: float) -> InfluenceResult:
                """The span's step for damping solved/strength (strength 1: the solve's)."""
                return influence_result(
                    result.cg, result.hvp_requested, result.hvp, result.span_rhs, solved,
                    result.hessian_rows, args, (result.rhs_seconds, result.solve_seconds),
                    result.first_products, shift=solved / strength - solved)

            found = line_search(lambda t: check.change(resolved(t).delta),
                                [1.0 / factor for factor in args.damping_factors],
                                resolution=check.resolution)
            chosen = resolved(found.alpha)
            result = replace(chosen, cg=replace(chosen.cg, directions=None, products=None),
                             span_rhs=None)
            figures = StepControlFigures("damping", 1.0, 1, [[solved / t, phi] for t, phi
                                                             in found.tried], [], 0.0)
        else:
            solver_args = replace(args, hvp=result.hvp.split("/")[-1])  # after a fallback
            rows, weights = hessian_subset(edited, args.curvature, args.hessian_samples,
                                           args.seed)
            backend.use_hessian_rows(rows, weights)
            scale = 1.0 / float(weights.sum())
            b = newton_rhs(backend, edited, weight_decay, args.batch_size,
                           args.gradient).sum(0)

            def solve(g: torch.Tensor) -> torch.Tensor:
                report({"phase": "Newton step"})
                return solve_system(backend, g[None], weight_decay, solver_args, scale,
                                    len(rows), report, None, {}, index).delta

            chord = chord_newton(result.delta, b, edited_gradient(
                backend, edited, weight_decay, theta, b, solver_args, (rows, weights)), solve,
                args.newton_steps, args.tol)
            figures = StepControlFigures("newton", 1.0, len(chord.steps), [],
                                         chord.gradient_norms, 0.0)
            own = chord.delta if result.stationarity is None else (
                chord.delta - result.stationarity)  # the request's part: all but Θ̂'s own
            result = replace(result, delta=chord.delta, parts=own[None].clone())
    finally:
        backend.set_theta(theta)
    figures.seconds = time.perf_counter() - start
    return replace(result, control=figures)


def chosen_control(args: EraseArguments, edited: EditedObjective) -> str:
    """``args.step_control``, with ``auto`` resolved: ``line_search`` where the request adds
    rows (a correction or a query edit: the new answer's loss is nearly flat at Θ̂, so the
    Newton step tends to run long), ``none`` for removals alone (there the check's minimum
    lay past the grid's end, and the longer step took ir, which the plain step had at 1.02
    of retraining's change, to 1.26). Measured: docs/RESULTS.md, "Step control"."""
    if args.step_control != "auto":
        return args.step_control
    return "line_search" if bool((edited.weight_changes > 0).any()) else "none"


@dataclass
class ObjectiveCheck:
    """The check of a step control: ``change`` δ [d] ↦ the change of the objective the step
    aims at from Θ̂ to Θ̂ + δ, and its ``resolution`` ε‖w ⊙ L(Θ̂)‖₂: one rounding of each
    row's loss, independent across rows, at float32's ε (or the adapter dtype's, if
    coarser). A step control does not act on differences of φ below it: the network's own
    float32 parts make φ ragged (measured on tiny-llama in float64, on an edit of weight
    1e-3: φ off its quadratic model by up to ~3e-9, with no shape; resolution ~1.6e-7)."""

    change: Callable[[torch.Tensor], float]
    resolution: float


def edited_objective_change(backend: CurvatureBackend, edited: EditedObjective,
                            weight_decay: float, theta: torch.Tensor,
                            args: EraseArguments) -> ObjectiveCheck:
    """δ [d] ↦ the change of the objective whose minimiser the step aims at, by forward
    passes: the check of a step control, with its resolution (:class:`ObjectiveCheck`).

    With ``args.gradient`` ``all_rows`` that objective is f_new: the check is
    f_new(Θ̂ + δ) − f_new(Θ̂). With ``changed_rows`` b assumes ∇f(Θ̂) = 0, so the step aims at
    the minimiser of f_new(Θ) − (W/W')∇f(Θ̂)·(Θ − Θ̂), the edited objective tilted so that Θ̂
    is stationary for f: its gradient at Θ̂ is −b exactly. The check subtracts that tilt, or
    it would mostly measure how far Θ̂ is from f's minimum (a fine-tune stopped early).

    Rows: the changed rows f_new still weighs (new versions of edited rows; an old version
    an edit only down-weights) in full, at their weights in f_new; the kept rows by
    a seeded sample of ``args.line_search_rows`` scaled to their total weight, held out
    from H's rows where enough kept rows lie outside them, so that the check is not made on
    the rows whose curvature shaped the step; the exact L2 term. The tilt is one gradient
    pass at Θ̂ over the sample and the edited rows' old versions: the sample's own
    gradient cancels the kept rows' linear term, so they enter by their curvature only.
    Each call moves the backend to Θ̂ + δ and back to ``theta``."""
    changed = set(edited.changed_rows)
    after = list(zip(edited.rows_after, edited.weights_after.tolist(), strict=True))
    kept = [(row, w) for row, w in after if row not in changed]
    # changed rows that f_new still weighs, in full: the new versions, and an old version
    # an edit keeps at a fraction of its weight (weight 1 − ε in an ε-edit)
    weighed = [(row, w) for row, w in after if row in changed and w > 0]
    kept_total = sum(w for _, w in kept)  # what the sample stands for, held out or not
    in_hessian = set(hessian_subset(edited, args.curvature, args.hessian_samples,
                                    args.seed)[0])
    held_out = [(row, w) for row, w in kept if row not in in_hessian]
    if len(held_out) >= min(args.line_search_rows, len(kept)):
        kept = held_out
    sample: list = []
    sample_coefficients = torch.zeros(0, dtype=torch.float64)
    if kept and args.line_search_rows > 0:
        kept_weights = torch.tensor([w for _, w in kept], dtype=torch.float64)
        sample, sample_weights = sample_rows([row for row, _ in kept], kept_weights,
                                             args.line_search_rows, args.seed)
        sample_coefficients = sample_weights * kept_total / sample_weights.sum()
    rows = [row for row, _ in weighed] + list(sample)
    weights = torch.cat([torch.tensor([w for _, w in weighed], dtype=torch.float64),
                         sample_coefficients]) / edited.weight_after
    at_start = backend.losses(rows, args.batch_size)
    start_norm = float(theta.dot(theta))
    tilt = None
    if args.gradient == "changed_rows":  # (W/W')∇f(Θ̂), with the kept rows' part sampled
        old = [(row, w) for row, w in zip(edited.rows_before, edited.weights_before.tolist(),
                                          strict=True) if row in changed]
        coefficients = torch.cat([torch.tensor([w for _, w in old], dtype=torch.float64),
                                  sample_coefficients])
        gradient = backend.gradient_sums([([row for row, _ in old] + list(sample),
                                           coefficients)], args.batch_size)[0]
        tilt = (gradient.double().cpu() + edited.weight_before * weight_decay
                * theta.double().cpu()) / edited.weight_after

    def change(delta: torch.Tensor) -> float:
        moved = theta + delta
        backend.set_theta(moved)
        try:
            losses = backend.losses(rows, args.batch_size)
        finally:
            backend.set_theta(theta)
        value = float(weights.dot(losses - at_start)) + 0.5 * weight_decay * (
            float(moved.dot(moved)) - start_norm)
        return value if tilt is None else value - float(tilt.dot(delta.double().cpu()))

    epsilon = max(torch.finfo(torch.float32).eps, torch.finfo(theta.dtype).eps)
    return ObjectiveCheck(change, epsilon * float((weights * at_start).norm()))


def edited_gradient(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
                    theta: torch.Tensor, b: torch.Tensor, args: EraseArguments,
                    hessian: tuple[Sequence, torch.Tensor]) -> Callable[[torch.Tensor],
                                                                         torch.Tensor]:
    """δ ↦ ∇f_new(Θ̂ + δ) [d] as the chord steps model it: the linear model the first step
    solved, −b + (H + damping·I)δ with H at Θ̂ over the erase's ``hessian`` rows and weights,
    plus what that model misses of the rows the request adds, their gradients' change from
    Θ̂ to Θ̂ + δ less its linear part (a product over those rows alone). Their loss is the
    least quadratic: a new answer the adapter gave almost no probability. Exact where the
    loss is quadratic, so there the first step is the last."""
    damping = erase_damping(args, weight_decay)
    kind = hvp_kind(args, backend)
    scale = 1.0 / float(hessian[1].sum())
    new_rows = edited.added_rows()
    at_start = backend.gradient_sums([new_rows], args.batch_size)[0] if new_rows[0] else None

    def product(rows: tuple[Sequence, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        backend.use_hessian_rows(*rows)
        return backend.hvp(kind, v, args.batch_size, args.fd_step)

    def gradient(delta: torch.Tensor) -> torch.Tensor:
        g = product(hessian, delta) * scale + damping * delta - b
        if at_start is None:
            return g
        linear = product(new_rows, delta)
        backend.use_hessian_rows(*hessian)
        backend.set_theta(theta + delta)
        try:
            moved = backend.gradient_sums([new_rows], args.batch_size)[0]
        finally:
            backend.set_theta(theta)
        return g + (moved - at_start - linear) / edited.weight_after

    return gradient


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
        truncated=any(s.truncated for s in steps),
        part_residuals=torch.stack([s.part_residuals for s in steps]).amax(0),
        part_rhs_norms=total("part_rhs_norms"), rhs_seconds=total("rhs_seconds"),
        solve_seconds=total("solve_seconds"), first_residual=steps[0].first_residual,
        first_products=total("first_products"),
        stages=[StageFigures(s.rhs_norm, float(s.delta.norm()), s.cg.iterations,
                             s.cg.relative_residual, s.hvp, s.rhs_seconds, s.solve_seconds)
                for s in steps])


def _one_step(backend: CurvatureBackend, edited: EditedObjective, weight_decay: float,
              args: EraseArguments, report: StatusCallback, checkpoints: Checkpoints | None,
              stage: int, index: LowRankCurvature | None) -> InfluenceResult:
    where = {"stage": stage, "stages": args.stages}
    report({"phase": "computing b", **where})
    start = time.perf_counter()
    parts_rhs = newton_rhs(backend, edited, weight_decay, args.batch_size, args.gradient)
    rhs_seconds = time.perf_counter() - start
    rows, weights = hessian_subset(edited, args.curvature, args.hessian_samples, args.seed)
    backend.use_hessian_rows(rows, weights)
    return solve_system(backend, parts_rhs, weight_decay, args, 1.0 / float(weights.sum()),
                        len(rows), report, checkpoints, where, index, rhs_seconds)


def solve_system(backend: CurvatureBackend, parts_rhs: torch.Tensor, weight_decay: float,
                 args: EraseArguments, scale: float, hessian_rows: int,
                 report: StatusCallback, checkpoints: Checkpoints | None,
                 where: dict[str, Any], index: LowRankCurvature | None,
                 rhs_seconds: float = 0.0) -> InfluenceResult:
    """(H + damping·I)⁻¹ Σ_t b_t (``parts_rhs`` [T, d]) with H = ``scale`` · the backend's
    sum over its current Hessian rows: preconditioned (or started from the ``index``), under
    the negative-curvature policy, each term's own share read off."""
    damping = erase_damping(args, weight_decay)
    requested = hvp_kind(args, backend)
    b = parts_rhs.sum(0)
    start = time.perf_counter()
    record = keeps_directions(parts_rhs, args)
    if index is None:
        report({"phase": "computing the preconditioner", **where})
        precondition = preconditioner(args.preconditioner, backend.fisher_diagonal, scale,
                                      damping)
        guesses = None
    else:
        precondition = index.inverse
        guesses = torch.stack([index.inverse(part) for part in parts_rhs]) if record else (
            index.inverse(b)[None])

    def solve(kind: str) -> CGResult:
        store = None if checkpoints is None else checkpoints(
            solve_key(parts_rhs, kind, damping, args, index))
        resume = None if store is None else store.load()

        def iteration(done: int, residual: float) -> None:
            report({"phase": "CG", "hvp": kind, "iteration": done, "residual": residual,
                    "max_iter": args.max_iter, **where})

        iteration(0 if resume is None else resume.iterations, 1.0)
        return conjugate_gradient(
            lambda v: backend.hvp(kind, v, args.batch_size, args.fd_step) * scale, b,
            damping=damping, tol=args.tol, max_iter=args.max_iter, callback=iteration,
            start=resume, checkpoint=None if store is None else store.save,
            record=record, preconditioner=precondition, x0=guesses)

    cg, hvp = solve_with_policy(solve, requested, args.on_negative_curvature)
    seconds = (rhs_seconds, time.perf_counter() - start)
    report({"phase": "done", **where})
    return influence_result(cg, requested, hvp, parts_rhs, damping, hessian_rows, args,
                            seconds, first_products=0 if guesses is None else guesses.shape[0])


def solve_key(rhs: torch.Tensor, kind: str, damping: float, args: EraseArguments,
              index: LowRankCurvature | None = None) -> str:
    """Names one solve: its right-hand sides and every setting its iterates depend on (the
    curvature index included), so that a checkpoint is only ever resumed by the same solve."""
    h = hashlib.sha256(rhs.double().contiguous().numpy().tobytes())
    h.update(repr((kind, damping, args.tol, args.max_iter, args.curvature,
                   args.hessian_samples, args.seed, args.fd_step, args.batch_size,
                   args.step, args.preconditioner)).encode())
    if index is not None:
        h.update(index.values.double().numpy().tobytes())
    return h.hexdigest()[:24]


def fisher_scaling(fisher_sum: Callable[[], torch.Tensor], scale: float,
                   damping: float) -> torch.Tensor:
    """D = F/W + damping [d] float64, with ``fisher_sum`` computing Σ_i w_i ∇L_i ⊙ ∇L_i over
    H's rows and ``scale`` = 1/W; a weight with neither curvature nor damping gets 1."""
    diagonal = fisher_sum().double() * scale + damping
    return torch.where(diagonal > 0, diagonal, 1.0)


def preconditioner(kind: str, fisher_sum: Callable[[], torch.Tensor], scale: float,
                   damping: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """v ↦ M⁻¹v of the preconditioner ``kind`` (None for ``none``, plain CG), M the
    diagonal :func:`fisher_scaling`."""
    if kind == "none":
        return None
    inverse = 1.0 / fisher_scaling(fisher_sum, scale, damping)
    return lambda v: inverse * v


def keeps_directions(parts_rhs: torch.Tensor, args: EraseArguments) -> bool:
    """Whether CG must record its directions: to split a batch, for a least-residual step, or
    for the ``damping`` control's re-solves in the same span."""
    return (parts_rhs.shape[0] > 1 or args.step == "least_residual"
            or args.step_control == "damping")


def influence_result(cg: CGResult, requested: str, hvp: str, parts_rhs: torch.Tensor,
                     damping: float, hessian_rows: int, args: EraseArguments,
                     seconds: tuple[float, float], first_products: int = 0,
                     shift: float = 0.0) -> InfluenceResult:
    """The figures of a finished solve of Σ_t b_t (``parts_rhs`` [T, d], as
    :func:`newton_rhs`), with each term's own ΔΘ_t, the (b, solve) wall ``seconds`` and the
    products its first guesses cost (``first_products``); with
    ``args.step`` ``least_residual`` (or the ``damping`` control) the step (and its
    residual) is the least-residual vector of CG's span instead of CG's iterate, for the
    solved ``damping`` plus ``shift``. The recorded directions are dropped once used, unless
    the ``damping`` control will use them again."""
    span = args.step_control == "damping"
    recorded = cg
    if args.step == "least_residual" or span:
        total, residual = galerkin_split(cg, parts_rhs.sum(0, keepdim=True), shift)
        cg = replace(cg, x=total[0], relative_residual=float(residual[0]))
    if parts_rhs.shape[0] == 1:
        parts = cg.x[None].clone()
        residuals = torch.tensor([cg.relative_residual], dtype=torch.float64)
    else:
        parts, residuals = galerkin_split(cg, parts_rhs, shift)
    cg = replace(cg, directions=recorded.directions if span else None,
                 products=recorded.products if span else None)
    norms = parts_rhs.norm(dim=1)
    stationarity: dict[str, Any] = {}
    if args.gradient == "all_rows":  # the last term is Θ̂'s own gradient, not a request's
        stationarity = {"stationarity": parts[-1], "stationarity_rhs_norm": float(norms[-1]),
                        "stationarity_residual": float(residuals[-1])}
        parts, residuals, norms = parts[:-1], residuals[:-1], norms[:-1]
    return InfluenceResult(cg.x, cg, float(parts_rhs.sum(0).norm()), damping + shift,
                           hessian_rows, requested, hvp,
                           cg.negative_curvature or hvp != requested, cg.negative_curvature,
                           parts, residuals, norms, *seconds, **stationarity,
                           first_residual=cg.start_residual, first_products=first_products,
                           span_rhs=parts_rhs if span else None)


def erase_damping(args: EraseArguments, weight_decay: float) -> float:
    """``args.damping``, or the objective's own λ when it is not set."""
    return weight_decay if args.damping is None else args.damping


@dataclass
class FittedCurvature:
    """A curvature index's maths and how it was found: the preconditioner, the HVP
    back-end used, the Hessian rows and damping, the products made and the seconds."""

    curvature: LowRankCurvature
    hvp: str
    hessian_rows: int
    damping: float
    products: int
    seconds: float


def fit_curvature(
    model: LossModel | CurvatureBackend,
    rows: Sequence,
    weight_decay: float,
    args: EraseArguments,
    rank: int,
    progress: bool | StatusCallback = True,
) -> FittedCurvature:
    """The curvature index of the objective over ``rows`` (weight 1 each, the adapter's
    training set): the Fisher diagonal over ``args``'s Hessian rows (one gradient each) and
    ``rank`` Lanczos steps on the scaled A = H/W + damping·I (one HVP each), with the
    settings an erase uses (``hvp``, ``hessian_samples``, ``seed``, ``damping``,
    ``batch_size``, ``fd_step``). ``hvp`` ``auto`` is the Gauss-Newton matrix, as for an
    erase: Lanczos needs a positive semi-definite H, and an adapter short of its minimum has
    an indefinite Hessian (docs/RESULTS.md, demo). Its exact product where double backward
    works (one process) matters here, since the finite-difference one is too inexact for
    Lanczos on a real model (docs/RESULTS.md, "Curvature index").
    """
    backend = as_backend(model)
    kind = hvp_kind(args, backend)
    damping = erase_damping(args, weight_decay)
    h_rows, weights = sample_rows(list(rows), torch.ones(len(rows), dtype=torch.float64),
                                  args.hessian_samples, args.seed)
    backend.use_hessian_rows(h_rows, weights)
    scale = 1.0 / float(weights.sum())
    start = time.perf_counter()
    with status_bar(progress, rank) as report:
        report({"phase": "computing the Fisher diagonal"})
        diagonal = fisher_scaling(backend.fisher_diagonal, scale, damping)

        def step(done: int) -> None:
            report({"phase": "Lanczos", "hvp": kind, "iteration": done, "max_iter": rank})

        curvature = low_rank_curvature(
            lambda v: backend.hvp(kind, v, args.batch_size, args.fd_step) * scale + damping * v,
            diagonal, rank, seed=args.seed, callback=step)
        report({"phase": "done"})
    return FittedCurvature(curvature, kind, len(h_rows), damping, curvature.steps,
                           time.perf_counter() - start)


def solve_with_policy(solve: Callable[[str], CGResult], kind: str,
                      policy: str) -> tuple[CGResult, str]:
    """Run ``solve(kind)`` and apply the negative-curvature ``policy`` to its outcome.

    ``solve`` maps an HVP back-end to a CG result (in one process or distributed). With
    ``ggn`` an indefinite solve is redone with the Gauss-Newton matrix, and that solve is
    held to the same rule: a solve that met negative curvature before its first step has no
    usable iterate and is refused. Returns (the CG result kept, the back-end that made it).
    """
    cg = solve(kind)
    if cg.negative_curvature:
        hint = "raise --damping or use --hvp ggn"
        if policy == "fail":
            raise EraserError(f"H + damping·I has negative curvature (pᵀAp/pᵀp = "
                              f"{cg.curvature:.3g} at CG iteration {cg.iterations}); {hint}")
        if policy == "ggn" and kind != "ggn":
            kind = "ggn"
            cg = solve(kind)
            hint = "raise --damping"
    if cg.negative_curvature and cg.iterations == 0:
        raise EraserError(
            f"the {kind} matrix + damping·I has negative curvature along b itself, so CG has "
            f"no usable iterate (curvature {cg.curvature:.3g}); {hint}")
    return cg, kind
