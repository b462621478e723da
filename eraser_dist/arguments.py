"""Options of each stage as dataclasses; the CLI and the Python API share them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HvpKind = Literal["exact", "fd", "ggn"]
HVP_KINDS: tuple[str, ...] = ("exact", "fd", "ggn")
CurvatureData = Literal["original", "edited"]
CURVATURE_DATA: tuple[str, ...] = ("original", "edited")
NegativeCurvaturePolicy = Literal["ggn", "truncate", "fail"]
NEGATIVE_CURVATURE_POLICIES: tuple[str, ...] = ("ggn", "truncate", "fail")


@dataclass
class LoraArguments:
    """Shape of the LoRA adapter attached to the frozen base."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    # No LoRA dropout: the model always runs in eval mode, so training, gradients and curvature
    # all see the same deterministic objective.


@dataclass
class TrainArguments:
    """Fine-tuning of the adapter by Adam on the objective (1/n) Σ L_i + (λ/2)‖Θ‖².

    ``weight_decay`` is λ of that objective (an L2 term in the loss, not AdamW's decoupled
    decay), so that erasure, which uses λ as its default damping, and retraining optimise the
    same function.
    """

    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 8
    weight_decay: float = 0.01
    seed: int = 0
    max_length: int = 256


@dataclass
class EraseArguments:
    """How ΔΘ = (H + damping·I)⁻¹ b is solved.

    ``damping`` defaults to the adapter's training weight decay λ, which is the exact λI term
    of the objective's Hessian. ``tol`` is the relative residual ‖AΔ − b‖/‖b‖ at which
    conjugate gradient stops. ``hessian_samples`` estimates H on a seeded subset of that many
    training rows (all rows when None).

    ``curvature`` says whose Hessian the step uses: ``original``, that of the objective the
    adapter was fitted on (positive definite at its converged minimiser, so the solve is well
    posed), or ``edited``, that of the edited objective at the same point (exact for a
    quadratic loss, but it can be indefinite: Θ̂ is not its minimiser). Both are first-order
    exact; on tiny-llama, removing or editing 1/8 of the rows, ``original`` was closer to
    retraining (bench/influence_vs_retrain.py).

    ``on_negative_curvature`` says what happens when CG finds H + damping·I indefinite (it
    does at an adapter that Adam left short of a minimum): ``ggn`` solves again with the
    Gauss-Newton matrix, positive semi-definite by construction; ``truncate`` keeps CG's
    last iterate; ``fail`` raises. The report says which happened.
    """

    hvp: HvpKind = "exact"
    curvature: CurvatureData = "original"
    on_negative_curvature: NegativeCurvaturePolicy = "ggn"
    damping: float | None = None
    tol: float = 1e-4
    max_iter: int = 100
    hessian_samples: int | None = None
    batch_size: int = 8
    seed: int = 0
    fd_step: float | None = None
