"""Options of each stage as dataclasses; the CLI and the Python API share them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LrSchedule = Literal["constant", "linear"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear")
HvpKind = Literal["exact", "fd", "ggn"]
HVP_KINDS: tuple[str, ...] = ("exact", "fd", "ggn")
CurvatureData = Literal["original", "edited"]
CURVATURE_DATA: tuple[str, ...] = ("original", "edited")
NegativeCurvaturePolicy = Literal["ggn", "truncate", "fail"]
NEGATIVE_CURVATURE_POLICIES: tuple[str, ...] = ("ggn", "truncate", "fail")
StepKind = Literal["cg", "least_residual"]
STEP_KINDS: tuple[str, ...] = ("cg", "least_residual")
PreconditionerKind = Literal["none", "fisher_diagonal"]
PRECONDITIONERS: tuple[str, ...] = ("none", "fisher_diagonal")
RhsGradient = Literal["changed_rows", "all_rows"]
RHS_GRADIENTS: tuple[str, ...] = ("changed_rows", "all_rows")


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

    ``lr_schedule`` ``linear`` decays the rate to 0 at the last step, so that the adapter ends
    settled near a minimum (where the influence step's ∇f(Θ̂) = 0 holds) rather than where a
    constant-rate Adam step left it.
    """

    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 8
    weight_decay: float = 0.01
    seed: int = 0
    max_length: int = 256
    lr_schedule: LrSchedule = "constant"


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

    ``step`` is the vector taken from the Krylov space CG built: ``cg``, CG's own iterate, or
    ``least_residual``, the vector of that space with the least ‖(H + damping·I)Δ − b‖.
    They agree where CG converges. Where the product is not exactly symmetric (the
    Gauss-Newton product is a finite difference of logits) CG's short recurrence can
    derail: on the qm experiment its residual grew to 3.97 while the least-residual vector
    of the same 16 directions had 0.22 (docs/experiments/damping_qm.json). It keeps the
    directions and their products, 2·max_iter·d floats.

    ``preconditioner`` ``fisher_diagonal`` runs preconditioned CG with M = diag(F) + damping,
    F the empirical Fisher of the Hessian rows (one gradient per row, about one iteration's
    cost); ``none`` is plain CG. The solution is the same; the Krylov space is a better one
    for a fixed number of iterations: on the qm experiment 16 iterations recovered 1.11 of
    retraining's edited-row loss against 0.77 without it, and rc10, rc40 and ir moved by
    ≤ 0.02 (docs/experiments/preconditioner.json).

    ``gradient`` says how b = −∇f_new(Θ̂) is computed. ``changed_rows`` assumes Θ̂ minimises
    f (∇f(Θ̂) = 0) and needs the gradients of the request's rows only, a cost that grows
    with the request, not the data set. ``all_rows`` drops that assumption: one pass over
    every row adds the term −(W/W')∇f(Θ̂), so the step also finishes the fit that training
    left short (the report gives that term's share of ΔΘ apart, as ``stationarity``). For a
    quadratic loss it makes the step exact from any Θ̂. On the cpu experiments that term
    (‖·‖ 0.15–0.25) is 3–5× the request's own b on qm and ir (0.05, 0.06), about equal on
    rc10 (0.21) and a third of it on rc40 (0.70), and it helped only rc40: the share of
    retraining's edited-row loss recovered went from 0.62 to 1.27 there, but from 1.11 to
    0.88 on qm, 1.14 to 0.28 on rc10 and 0.96 to 0.89 on ir (docs/experiments/gradient.json).
    So it is not the default.

    ``stages`` > 1 applies the request in that many equal parts, f → f_{1/k} → … → f_new
    along f_t = f + t·(f_new − f): each part is one step as above, taken from where the
    previous one ended, with b and H evaluated there. One step assumes the retrained adapter
    lies where Θ̂'s second-order model still holds; an edit of 40% of the answers moves it
    further, and re-linearising on the way follows it (on rc40 the share of retraining's
    edited-row loss recovered went from 0.62 with one stage to 0.90 with four,
    docs/experiments/stages_rc40.json). Each stage is a full solve, so the erase costs
    ``stages`` times as much. It needs ``gradient`` ``changed_rows`` and the one-process
    engine.
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
    step: StepKind = "cg"
    preconditioner: PreconditionerKind = "fisher_diagonal"
    gradient: RhsGradient = "changed_rows"
    stages: int = 1


@dataclass
class DistributedArguments:
    """How an erase is spread over a Ray cluster (``eraser erase --workers G --group-size K``).

    ``workers`` groups run side by side on disjoint shards of the rows (data parallelism);
    each group is ``group_size`` ranks that hold one base model partitioned by ZeRO-3.
    ``address`` is a Ray cluster to join (``auto``, ``ray://host:10001``); None starts a
    local one when this process is not connected yet. ``backend`` ``auto`` picks NCCL when
    the ranks have GPUs, gloo otherwise. ``base_dtype`` is the dtype the base is held in
    (``bfloat16`` at 70B); LoRA weights, gradients and CG vectors stay fp32 or wider.
    A group that fails (a rank died or its collective broke) is restarted up to
    ``max_group_restarts`` times and its work retried; the aggregator itself is restarted
    up to ``max_aggregator_restarts`` times and resumes CG from ``checkpoint_dir``
    (default: a hidden folder beside the output).
    """

    workers: int = 1
    group_size: int = 1
    address: str | None = None
    backend: str = "auto"
    base_dtype: str = "float32"
    cpus_per_rank: float = 1.0
    gpus_per_rank: float | None = None  # None: 1 with NCCL, 0 with gloo
    threads_per_rank: int = 1
    max_group_restarts: int = 2
    max_aggregator_restarts: int = 1
    collective_timeout_s: float = 300.0
    checkpoint_dir: str | None = None


@dataclass
class ServiceArguments:
    """How ``eraser serve`` forms batches and verifies them.

    A batch is at most ``max_batch_requests`` requests and ``max_batch_rows`` rows against
    one adapter. Each certificate measures losses on up to ``holdout_sample`` rows of the
    dataset's held-out set (seeded). An idle worker looks for work every ``poll_seconds``.
    """

    max_batch_requests: int = 64
    max_batch_rows: int = 4096
    holdout_sample: int = 64
    poll_seconds: float = 1.0
    eval_batch_size: int = 8


@dataclass(frozen=True)
class CorruptionArguments:
    """The experiments' corruptions, as shares of the training rows, and the seed of all."""

    seed: int = 0
    query_share: float = 0.1
    response_shares: tuple[float, ...] = (0.1, 0.4)
    remove_share: float = 0.05


@dataclass(frozen=True)
class LlaraArguments(CorruptionArguments):
    """Shape of the LLaRA task (one row per user)."""

    history: int = 5
    candidates: int = 10
    train_users: int = 600
    valid_users: int = 100
    test_users: int = 200


@dataclass(frozen=True)
class GenreArguments(CorruptionArguments):
    """Shape of the genre task (a movie's genres from its title) and its corruptions.

    The CPU stand-in for the LLaRA task: a 135M model learns it in minutes on 2 cores.
    ``candidates`` answers are scored per test movie: its genres and ``candidates − 1``
    other genre lists of training movies.
    """

    train_movies: int = 300
    valid_movies: int = 50
    test_movies: int = 100
    candidates: int = 4
