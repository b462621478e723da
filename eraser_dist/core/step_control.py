"""Step control: how far the erase goes along its Newton step ΔΘ (docs/DESIGN.md §1.9).

One Newton step takes the curvature at Θ̂. Where the adapter is confident in a row's old
answer, the loss of the new answer is nearly flat there, so the step runs past the edited
objective's minimum: the textbook overshoot of Newton's method on a logistic loss started
on the wrong side. Two controls, as pure functions of scalars and vectors:

- :func:`line_search`: φ(α), the change of the objective the step aims at from Θ̂ to
  Θ̂ + αΔΘ, on a grid of α (forward passes only), then parabolic refinements around the
  best point. The same search over the strength t = λ₀/λ chooses the damping λ (t = 0:
  no step, as α = 0), each step re-solved in the first solve's Krylov span without a
  product
  (:func:`~eraser_dist.core.solve.galerkin_split` with a shift).
- :func:`chord_newton`: more Newton steps on the edited objective, each from where the last
  ended with the gradient re-evaluated there and the first step's matrix kept.

The pipeline (:mod:`eraser_dist.core.influence`) gives them φ, the gradient and the solve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import EraserError


@dataclass
class StepControlFigures:
    """What a step control did: ``kind`` (line_search, damping, newton or path), the step
    length ``alpha`` chosen (1 for damping, newton and path), the Newton ``steps`` taken (1
    for line_search and damping; a path's stages), every ``evaluations`` [α, φ(α)] of the
    line search or [damping, φ] of the damping search (the chosen damping is the erase's
    own), the gradient norm before each Newton step (``gradient_norms``), and the
    ``seconds`` it added (0 for a path, whose stages are the solve)."""

    kind: str
    alpha: float
    steps: int
    evaluations: list[list[float]]
    gradient_norms: list[float]
    seconds: float


@dataclass
class StepLength:
    """The α chosen and every (α, φ(α)) evaluated, in order (φ(0) = 0 is known, not
    evaluated, and not listed)."""

    alpha: float
    tried: list[tuple[float, float]]


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """The grid sorted; refused when empty or not all > 0."""
    if not alphas:
        raise EraserError("the step-length grid is empty; give at least one α > 0")
    if any(not a > 0 for a in alphas):
        raise EraserError(f"every step length α must be > 0, got {list(alphas)}")
    return tuple(sorted(set(float(a) for a in alphas)))


def parabola_vertex(points: Sequence[tuple[float, float]]) -> float | None:
    """The minimiser of the parabola through three (α, φ) points, or None where it opens
    downward or is flat."""
    (a, fa), (b, fb), (c, fc) = points
    numerator = (b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)
    denominator = (b - a) * (fb - fc) - (b - c) * (fb - fa)
    if denominator >= 0:  # not convex through these points (with a < b < c)
        return None
    return b - 0.5 * numerator / denominator


def line_search(phi: Callable[[float], float], alphas: Sequence[float],
                refinements: int = 3, resolution: float = 0.0) -> StepLength:
    """argmin over α > 0 of ``phi`` (with φ(0) = 0): ``phi`` on the grid ``alphas``, then up
    to ``refinements`` times the vertex of the parabola through the best point and its two
    neighbours (α = 0 among them), until a vertex is already known. The grid's largest α
    bounds the step: a minimum beyond it is not chased. Costs at most len(alphas) +
    refinements calls.

    α = 1, the step as solved, stays unless some α lowers φ below φ(1) by more than
    ``resolution``, the smallest change of φ the caller can tell from rounding (where 1 is
    not on the grid: unless some α lowers φ by more than that). A request whose effect on
    the objective is below the check's rounding is then not rescaled by that rounding."""
    values = {0.0: 0.0}
    tried: list[tuple[float, float]] = []

    def evaluate(alpha: float) -> None:
        if alpha not in values:
            values[alpha] = float(phi(alpha))
            tried.append((alpha, values[alpha]))

    def resolved_gain(alpha: float) -> bool:
        """Whether φ(α) is below the solved step's φ by more than the resolution."""
        return values[alpha] < values.get(1.0, 0.0) - resolution

    for alpha in check_alphas(alphas):
        evaluate(alpha)
    for _ in range(refinements):
        ordered = sorted(values.items())
        best = min(range(1, len(ordered)), key=lambda i: ordered[i][1])
        if best == len(ordered) - 1 or not resolved_gain(ordered[best][0]):
            break  # the minimum lies at or past the grid's end, or φ is flat to rounding
        vertex = parabola_vertex(ordered[best - 1: best + 2])
        if vertex is None or not ordered[best - 1][0] < vertex < ordered[best + 1][0] or (
                min(abs(vertex - a) for a in values) <= 1e-3 * vertex):
            break  # no bracketed vertex, or nothing new to learn there
        evaluate(vertex)
    best = min((a for a in values if a > 0), key=lambda a: values[a])
    return StepLength(best if resolved_gain(best) else 1.0, tried)


@dataclass
class ChordSteps:
    """Σ of the steps taken, each step [steps, d], and the gradient norms (‖b‖, then after
    each step taken)."""

    delta: torch.Tensor
    steps: list[torch.Tensor]
    gradient_norms: list[float]


def chord_newton(first: torch.Tensor, rhs: torch.Tensor,
                 gradient: Callable[[torch.Tensor], torch.Tensor],
                 solve: Callable[[torch.Tensor], torch.Tensor], steps: int,
                 tol: float = 1e-3) -> ChordSteps:
    """Newton steps on the edited objective with the first step's matrix A kept (the chord
    method): δ₁ = ``first`` (A⁻¹b for ``rhs`` b = −∇f_new(Θ̂), already solved), then
    δ_{k+1} = δ_k − A⁻¹ ∇f_new(Θ̂ + δ_k), with ``gradient`` δ ↦ ∇f_new(Θ̂ + δ) [d] and
    ``solve`` g ↦ A⁻¹g, up to ``steps`` steps in all. It stops once the gradient's norm is
    within ``tol`` of ‖b‖ (on a quadratic with the exact A, after the first step), and a
    step after which the gradient is larger than before it is not taken: A too flat for
    where the first step landed sends the chord away (measured: docs/RESULTS.md, "Step
    control"). ``gradient_norms``: ‖b‖, then the norm after each step taken."""
    if steps < 1:
        raise EraserError(f"Newton steps must be at least 1, got {steps}")
    start = float(rhs.norm())
    delta, taken, norms = first.clone(), [first], [start]
    g = gradient(delta)
    norms.append(float(g.norm()))
    while len(taken) < steps and norms[-1] > tol * start:
        step = -solve(g)
        moved = gradient(delta + step)
        if float(moved.norm()) >= norms[-1]:
            break  # the step would make the gradient larger: not taken
        delta, g = delta + step, moved
        taken.append(step)
        norms.append(float(g.norm()))
    return ChordSteps(delta, taken, norms)
