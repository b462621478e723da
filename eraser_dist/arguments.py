"""Options of each stage as dataclasses that check themselves; the CLI and the API share them.

Each field carries its help text (``metadata["help"]``) and its bounds, and a field typed
with a ``Literal`` takes its choices from that type, so a choice is written once. Building
an options object validates it (:class:`Options`): a bad value raises :class:`EraserError`
naming the flag, before any file is read or any model is loaded. The ``eraser`` CLI builds
its flags from these fields (:mod:`eraser_dist.cli.options`). This module imports nothing
heavy, so that ``eraser --help`` starts fast.
"""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, Literal, get_args, get_origin

from .errors import EraserError

LrSchedule = Literal["constant", "linear"]
HvpKind = Literal["exact", "fd", "ggn", "ggn_exact"]
HvpChoice = Literal["auto", "exact", "fd", "ggn", "ggn_exact"]
DOUBLE_BACKWARD_HVPS = ("exact", "ggn_exact")  # not on a ZeRO-3-partitioned base
CurvatureData = Literal["original", "edited"]
NegativeCurvaturePolicy = Literal["ggn", "truncate", "fail"]
StepKind = Literal["cg", "least_residual"]
StepControlKind = Literal["auto", "none", "line_search", "damping", "newton", "path"]
PreconditionerKind = Literal["none", "fisher_diagonal"]
RhsGradient = Literal["changed_rows", "all_rows"]
Backend = Literal["auto", "gloo", "nccl"]
BaseDtype = Literal["float32", "bfloat16", "float64"]

HVP_KINDS: tuple[str, ...] = get_args(HvpKind)
PRECONDITIONERS: tuple[str, ...] = get_args(PreconditionerKind)


def option(default: Any = MISSING, help: str = "", *, minimum: float | None = None,
           above: float | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text and bounds: ``minimum`` (inclusive) or
    ``above`` (exclusive)."""
    metadata = {"help": help, "minimum": minimum, "above": above}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag(name: str) -> str:
    """The CLI flag of a field: ``max_iter`` → ``--max-iter``."""
    return "--" + name.replace("_", "-")


def choices(hint: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` type (also inside ``X | None``); () for any other type."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    for arg in get_args(hint):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def scalar_type(hint: Any) -> Any:
    """int, float, str or bool of a field's type, the element type of a tuple, the type of
    a ``Literal``'s values; ``X | None`` is X."""
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0])
    args = [a for a in get_args(hint) if a is not type(None)]  # tuple[X, ...] or X | None
    return scalar_type(args[0]) if args else hint


def allows_none(hint: Any) -> bool:
    return type(None) in get_args(hint)


@cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Options:
    """Validation shared by every options dataclass: choices, types and bounds per field,
    then the class's own cross-field rules (:meth:`check`)."""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            check_value(f.name, getattr(self, f.name), hints[f.name], f.metadata)
        self.check()

    def check(self) -> None:
        """Rules between fields; raise EraserError."""


def check_value(name: str, value: Any, hint: Any, metadata: Any) -> None:
    if value is None and allows_none(hint):
        return
    allowed = choices(hint)
    if allowed:
        if value not in allowed:
            raise EraserError(f"unknown {flag(name)} {value!r}; choose one of "
                              f"{', '.join(map(str, allowed))}")
        return
    kind = scalar_type(hint)
    values = value if get_origin(hint) is tuple else (value,)
    if get_origin(hint) is tuple and not isinstance(value, tuple):
        raise EraserError(f"{flag(name)} must be a tuple, got {value!r}")
    for item in values:
        if kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise EraserError(f"{flag(name)} must be an integer, got {item!r}")
        if kind is float and (isinstance(item, bool) or not isinstance(item, int | float)
                              or not math.isfinite(item)):
            raise EraserError(f"{flag(name)} must be a finite number, got {item!r}")
        if kind is str and not isinstance(item, str):
            raise EraserError(f"{flag(name)} must be a string, got {item!r}")
        minimum, above = metadata.get("minimum"), metadata.get("above")
        if minimum is not None and item < minimum:
            raise EraserError(f"{flag(name)} must be at least {minimum:g}, got {item!r}")
        if above is not None and not item > above:
            bound = "positive" if above == 0 else f"above {above:g}"
            raise EraserError(f"{flag(name)} must be {bound}, got {item!r}")


@dataclass
class LoraArguments(Options):
    """Shape of the LoRA adapter attached to the frozen base.

    No LoRA dropout: the model always runs in eval mode, so training, gradients and
    curvature all see the same deterministic objective.
    """

    rank: int = option(8, "LoRA rank r", minimum=1)
    alpha: float = option(16.0, "LoRA scale α (the update is α/r · BA)", above=0)
    targets: tuple[str, ...] = option(("q_proj", "v_proj"),
                                      "comma-separated module names to adapt")

    def check(self) -> None:
        if not self.targets or not all(self.targets):
            raise EraserError("give at least one target module, e.g. q_proj,v_proj")


@dataclass
class TrainArguments(Options):
    """Fine-tuning of the adapter by Adam on the objective (1/n) Σ L_i + (λ/2)‖Θ‖².

    ``weight_decay`` is λ of that objective (an L2 term in the loss, not AdamW's decoupled
    decay), so that erasure, which uses λ as its default damping, and retraining optimise
    the same function. ``lr_schedule`` ``linear`` decays the rate to 0 at the last step, so
    the adapter ends settled near a minimum, where the erase step's ∇f(Θ̂) = 0 holds.
    """

    epochs: int = option(3, "passes over the training set", minimum=1)
    lr: float = option(2e-3, "Adam learning rate", above=0)
    batch_size: int = option(8, "rows per Adam step", minimum=1)
    weight_decay: float = option(0.01, "λ of the L2 term in the objective; also the erase's "
                                 "default damping", minimum=0)
    seed: int = option(0, "seed of the LoRA initialisation and the shuffles")
    max_length: int = option(256, "tokens per row (prompt cut first)", minimum=2)
    lr_schedule: LrSchedule = option("constant", "constant, or linear decay to 0 at the "
                                     "last step")


@dataclass
class EraseArguments(Options):
    """How ΔΘ = (H + damping·I)⁻¹ b is solved (docs/DESIGN.md §1–2).

    The defaults are the fast path on a real model and run on either engine: ``hvp``
    ``auto`` is the Gauss-Newton matrix, with its exact product in one process and the
    finite-difference one on a ZeRO-3-partitioned base, where double backward does not work;
    it is positive semi-definite where the Hessian of an adapter short of its minimum is
    not, so with damping > 0 CG meets no negative curvature. It is estimated on 96 seeded
    rows, and CG stops at 16 iterations or a relative residual of 1e-3: the budget chosen
    on the cpu experiments (docs/RESULTS.md, "How the preset was chosen"), which keeps an
    erase's cost flat in the size of the training set. The slow exact path is ``--hvp exact
    --hessian-samples N`` (N at least the row count) ``--max-iter 100 --tol 1e-4``.
    ``damping`` defaults to the adapter's training weight decay λ, the exact λI term of the
    objective's Hessian. ``curvature`` ``original`` is the Hessian of the objective the
    adapter was fitted on (positive definite at its minimiser), ``edited`` that of the
    edited objective at the same point (exact for a quadratic loss, but it can be
    indefinite). ``step`` ``least_residual`` returns the vector of CG's Krylov space with
    the least residual instead of CG's iterate: the same where CG converges, robust where a
    not exactly symmetric product (fd, ggn) derails CG's recurrence; it keeps
    2·max_iter·d floats. ``gradient`` ``all_rows`` drops the assumption ∇f(Θ̂) = 0 at the
    cost of one pass over every row. ``stages`` K > 1 follows the path f_t in K steps, each
    a full solve. ``step_control`` sets how far along ΔΘ the erase goes, judged on the
    objective the step aims at: f_new, tilted by Θ̂'s own gradient with ``changed_rows``
    (:mod:`eraser_dist.core.step_control`). What each choice
    measured: docs/RESULTS.md.
    """

    hvp: HvpChoice = option("auto", "HVP back-end: auto (Gauss-Newton: ggn_exact in one "
                            "process, ggn with --workers), exact (double backward), fd "
                            "(difference of gradients), ggn (Gauss-Newton, Jv by a "
                            "difference of logits) or ggn_exact (Gauss-Newton, Jv by double "
                            "backward)")
    curvature: CurvatureData = option("original", "Hessian of the original objective "
                                      "(positive definite at a converged adapter) or of the "
                                      "edited one")
    on_negative_curvature: NegativeCurvaturePolicy = option(
        "ggn", "if H is indefinite: solve with Gauss-Newton (ggn), keep CG's last iterate "
        "(truncate) or stop (fail)")
    damping: float | None = option(None, "λ in (H + λI); default: the adapter's training "
                                   "weight decay", minimum=0)
    tol: float = option(1e-3, "CG stops at this relative residual", above=0)
    max_iter: int = option(16, "most CG iterations (HVPs) per solve; 0 with --index: the "
                           "index's step alone", minimum=0)
    hessian_samples: int | None = option(96, "estimate H on this many rows (seeded): all "
                                         "rows where the data has no more", minimum=1)
    batch_size: int = option(8, "rows per forward pass", minimum=1)
    seed: int = option(0, "seed of the Hessian sample")
    fd_step: float | None = option(None, "step h of the finite-difference HVPs; default: "
                                   "scaled to the adapter and dtype", above=0)
    step: StepKind = option("cg", "CG's iterate (cg) or the least-residual vector of its "
                            "Krylov space (least_residual)")
    preconditioner: PreconditionerKind = option(
        "fisher_diagonal", "fisher_diagonal: CG preconditioned by the empirical Fisher's "
        "diagonal (one gradient per Hessian row); none: plain CG")
    gradient: RhsGradient = option(
        "changed_rows", "b from the request's rows alone, assuming the adapter minimises its "
        "objective (changed_rows), or from one pass over every row (all_rows)")
    stages: int = option(1, "apply the request in this many equal parts, each step from "
                         "where the last ended (a solve per stage)", minimum=1)
    step_control: StepControlKind = option(
        "auto", "how far the erase goes: auto (line_search where the request adds rows, "
        "none for removals alone), none (the Newton step), line_search (the edited "
        "objective on a grid of step lengths along ΔΘ, forward passes only), damping (the "
        "edited objective at each of --damping-factors, each step re-solved in the solve's "
        "own Krylov span: forward passes only; least-residual steps), newton (up to "
        "--newton-steps Newton steps on the edited objective, the first step's matrix kept) "
        "or path (the request in --path-stages stages along the path to the edited "
        "objective, sharing --max-iter's CG iterations)")
    step_alphas: tuple[float, ...] = option(
        (0.25, 0.5, 0.75, 1.0, 1.25), "the line search's step lengths α (then up to 3 "
        "parabolic refinements around the best)", above=0)
    damping_factors: tuple[float, ...] = option(
        (0.5, 1.0, 2.0, 4.0, 8.0), "with --step-control damping: the dampings tried, as "
        "multiples of the solved one (then up to 3 parabolic refinements)", above=0)
    line_search_rows: int = option(32, "kept rows (seeded, outside H's sample where enough "
                                   "are) on which the line search or damping search "
                                   "measures the edited objective, beside the edited rows",
                                   minimum=0)
    newton_steps: int = option(2, "Newton steps in all with --step-control newton",
                               minimum=1)
    path_stages: int = option(4, "with --step-control path: the stages the request is cut "
                              "into, each from where the last ended, with --max-iter's CG "
                              "iterations shared among them", minimum=2)

    def check(self) -> None:
        if self.stages > 1 and self.gradient != "changed_rows":
            # all_rows's term is ∇f at t = 0; a later stage would need f_t's
            raise EraserError("--stages above 1 needs --gradient changed_rows")
        if not self.step_alphas:
            raise EraserError("--step-alphas is empty; give at least one step length α > 0")
        if not self.damping_factors:
            raise EraserError("--damping-factors is empty; give at least one factor > 0")
        if self.step_control == "path" and self.stages > 1:
            raise EraserError("--step-control path makes its own stages (--path-stages); "
                              "leave --stages at 1")
        if self.step_control == "path" and self.gradient != "changed_rows":
            raise EraserError("--step-control path needs --gradient changed_rows (a stage's "
                              "b would need ∇f_t where the last stage ended)")
        if self.step_control == "damping" and self.stages > 1:
            # the search re-solves in one solve's Krylov span; a path of stages has several
            raise EraserError("--step-control damping needs --stages 1")


@dataclass
class IndexArguments(Options):
    """How a curvature index is built (``eraser index``; docs/DESIGN.md §7): ``rank`` Lanczos
    steps, one HVP each, on the Fisher-diagonal-scaled matrix of the erase system. Its
    matrix is set by the erase options it is built with (``hvp``, ``hessian_samples``,
    ``seed``, ``damping``, ``batch_size``, ``fd_step``), and an erase given the index uses
    the same ones unless told otherwise. ``rebuild_growth``: an erase whose first step from
    the index has a relative residual above this many times the one the index had on its
    own version (or above 1) says the index should be rebuilt (the service rebuilds it).
    """

    rank: int = option(24, "Lanczos steps (one HVP each): the Ritz pairs the index holds",
                       minimum=1)
    rebuild_growth: float = option(2.0, "rebuild the index once an erase's first step from "
                                   "it has a relative residual above this many times the "
                                   "one it had on its own version (or above 1)", above=0)


@dataclass
class DistributedArguments(Options):
    """How an erase is spread over a Ray cluster (``eraser erase --workers G --group-size K``).

    ``workers`` groups run side by side on disjoint shards of the rows (data parallelism);
    each group is ``group_size`` ranks that hold one base model partitioned by ZeRO-3.
    LoRA weights, gradients and CG vectors stay fp32 or wider whatever ``base_dtype`` is.
    A group that fails (a rank died or its collective broke) is restarted up to
    ``max_group_restarts`` times and its work retried; the aggregator itself is restarted
    up to ``max_aggregator_restarts`` times and resumes CG from its checkpoint.
    """

    workers: int = option(1, "worker groups side by side (data parallel)", minimum=1)
    group_size: int = option(1, "ranks per group that share one ZeRO-3-partitioned base",
                             minimum=1)
    address: str | None = option(None, "Ray cluster to join (e.g. auto); default: start a "
                                 "local one")
    backend: Backend = option("auto", "collectives: nccl on GPU ranks, gloo on CPU ranks; "
                              "auto picks by the ranks' GPUs")
    base_dtype: BaseDtype = option("float32", "dtype the base is held in (bfloat16 at 70B)")
    cpus_per_rank: float = option(1.0, "Ray CPUs per rank", minimum=0)
    gpus_per_rank: float | None = option(None, "Ray GPUs per rank; default: 1 with nccl, 0 "
                                         "with gloo", minimum=0)
    threads_per_rank: int = option(1, "torch threads per rank", minimum=1)
    max_group_restarts: int = option(2, "restarts of a failed worker group before the erase "
                                     "fails", minimum=0)
    max_aggregator_restarts: int = option(1, "restarts of the aggregator (it resumes CG from "
                                          "its checkpoint)", minimum=0)
    collective_timeout_s: float = option(300.0, "seconds before a collective whose peer died "
                                         "raises", above=0)
    checkpoint_dir: str | None = option(None, "where CG state is kept; default: a hidden "
                                        "folder beside the output")


@dataclass
class ServiceArguments(Options):
    """How ``eraser serve`` forms batches and verifies them.

    A batch is at most ``max_batch_requests`` requests and ``max_batch_rows`` rows against
    one adapter. Each certificate measures losses on up to ``holdout_sample`` rows of the
    dataset's held-out set (seeded). After each batch the adapter keeps its newest
    ``retain_versions`` versions; older ones are purged. A batch's requests that the worker
    died running ``max_worker_deaths`` times are parked. With ``index_rank`` k > 0, each
    adapter keeps a curvature index of k pairs that every batch starts from (docs/DESIGN.md
    §7.5). The worker holds up to ``max_engines`` bases warm across batches
    (:mod:`eraser_dist.service.engines`): in this process, or with ``--workers`` as worker
    groups kept up per base (:class:`actors.driver.WarmGroups`). An engine is released once
    unused for ``idle_seconds``. With ``--workers`` the HTTP API runs as ``api_replicas`` Ray Serve
    replicas (:mod:`actors.api`).
    """

    max_batch_requests: int = option(64, "most requests solved together", minimum=1)
    max_batch_rows: int = option(4096, "most rows in one batch", minimum=1)
    holdout_sample: int = option(64, "held-out rows each certificate measures", minimum=1)
    poll_seconds: float = option(1.0, "seconds an idle worker waits between looks at the "
                                 "queue", above=0)
    eval_batch_size: int = option(8, "rows per forward pass of the certificates' losses",
                                  minimum=1)
    retain_versions: int = option(1, "adapter versions kept per adapter after each batch: "
                                  "older ones, the delta that rebuilds them and their data "
                                  "versions are purged once the new version is broadcast "
                                  "(`eraser purge`); 0 keeps every version", minimum=0)
    max_worker_deaths: int = option(3, "park a batch's requests (fail them, not retried) "
                                    "once the worker has died this many times running "
                                    "them", minimum=1)
    index_rank: int = option(0, "Ritz pairs of a curvature index kept per adapter and used "
                             "by every batch (built at its first batch, rebuilt when a "
                             "batch's first step from it has a residual above "
                             "--index-rebuild-growth times its fresh one); 0: no index",
                             minimum=0)
    index_rebuild_growth: float = option(2.0, "rebuild the index after a batch whose first "
                                         "step from it had a relative residual above this "
                                         "many times the index's fresh one (or above 1)",
                                         above=0)
    max_engines: int = option(1, "bases held warm across batches (in this process, or as "
                              "worker groups of their own with --workers, whose cluster "
                              "then needs room for this many times the ranks); batches on "
                              "different bases run side by side, a thread each; a batch on "
                              "another base first releases the idle one used longest ago",
                              minimum=1)
    idle_seconds: float = option(600.0, "release a held base (or stop its worker groups) "
                                 "after this many seconds without a batch", above=0)
    heartbeat_seconds: float = option(10.0, "seconds between the serve's heartbeats in the "
                                      "registry; a serve not heard from for 3 of them "
                                      "reads as 'lost' in /v1/status, /metrics and `eraser "
                                      "queue --summary`", above=0)
    api_replicas: int = option(1, "with --workers and --http: Ray Serve replicas of the HTTP "
                               "API (actors/api.py)", minimum=1)


@dataclass(frozen=True)
class CorruptionArguments(Options):
    """The experiments' corruptions, as shares of the training rows, and the seed of all."""

    seed: int = option(0, "seed of the splits and corruptions")
    query_share: float = option(0.1, "share of queries corrupted (qm)", minimum=0)
    response_shares: tuple[float, ...] = option((0.1, 0.4), "shares of answers replaced "
                                                "(rc10, rc40)", minimum=0)
    remove_share: float = option(0.05, "share of rows removed (ir)", minimum=0)


@dataclass(frozen=True)
class LlaraArguments(CorruptionArguments):
    """Shape of the LLaRA task (one row per user)."""

    history: int = option(5, "movies in the prompt", minimum=1)
    candidates: int = option(10, "candidate answers per test user", minimum=2)
    train_users: int = option(600, "training users", minimum=1)
    valid_users: int = option(100, "validation users", minimum=1)
    test_users: int = option(200, "test users", minimum=1)


@dataclass(frozen=True)
class GenreArguments(CorruptionArguments):
    """Shape of the genre task (a movie's genres from its title) and its corruptions.

    The CPU stand-in for the LLaRA task, learnt in minutes on 2 cores. ``candidates``
    answers are scored per test movie: its genres and ``candidates − 1`` other genre lists
    of training movies.
    """

    train_movies: int = option(300, "training movies", minimum=1)
    valid_movies: int = option(50, "validation movies", minimum=1)
    test_movies: int = option(100, "test movies", minimum=1)
    candidates: int = option(4, "candidate answers per test movie", minimum=2)


@dataclass(frozen=True)
class FactsArguments(Options):
    """Shape of the memorised-facts task (where a made-up person lives) and its two requests.

    People and cities are made-up names from seeded syllables, so the base model has no
    prior on any answer. Each fact's candidates are its response with every city of the
    pool. ``remove`` drops rows of the clean training set; ``correct`` trains on rows with
    a wrong city and its request restores the true one.
    """

    train_facts: int = option(32, "facts in the training set", minimum=2)
    valid_facts: int = option(4, "facts never trained on, held out for validation",
                              minimum=1)
    test_facts: int = option(16, "facts never trained on, for a held-out loss", minimum=1)
    cities: int = option(12, "made-up city names the facts' answers are drawn from",
                         minimum=2)
    remove: int = option(3, "training rows the remove experiment's request removes",
                         minimum=1)
    correct: int = option(2, "training rows given a wrong city in the correct experiment's "
                          "training set, and corrected by its request", minimum=1)
    seed: int = option(0, "seed of the names, the cities and the picks")

    def check(self) -> None:
        for name in ("remove", "correct"):
            if getattr(self, name) >= self.train_facts:
                raise EraserError(f"--{name} must be below --train-facts "
                                  f"({self.train_facts}), got {getattr(self, name)}")


def check_engine(args: EraseArguments, distributed: DistributedArguments | None) -> None:
    """Refuse a solver setting the chosen engine cannot run (before any file is read)."""
    if distributed is not None and args.hvp in DOUBLE_BACKWARD_HVPS:
        raise EraserError(f"--hvp {args.hvp} needs double backward, which does not work on "
                          "a ZeRO-3-partitioned base; use --hvp fd or ggn")


def check_index_budget(args: EraseArguments, has_index: bool) -> None:
    """``max_iter`` 0 means the curvature index's step alone: refused without an index."""
    if args.max_iter == 0 and not has_index:
        raise EraserError("--max-iter 0 takes a curvature index's step alone; give --index, "
                          "or allow at least one CG iteration")
