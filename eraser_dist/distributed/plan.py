"""Capacity plan for one erase on a cluster: per-GPU memory and bytes moved per CG iteration.

The distributed engine shards the gradient / Hessian-vector-product work over worker groups.
Each group is ``group_size`` GPUs that together hold one copy of the frozen base, partitioned
by DeepSpeed ZeRO-3; every rank of a group runs its own micro-batch (data parallel) and the
LoRA adapter sits whole, in fp32, on every rank. An aggregator runs conjugate gradient: each
iteration it publishes one adapter-sized vector v to every group and gets back one
adapter-sized partial sum H·v per group.

Everything here is arithmetic on a Llama-family shape; nothing imports torch. All sizes are
bytes, and GB means 10⁹ bytes (MB 10⁶), including ``gpu_memory_gb``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..arguments import BaseDtype, Options, option
from ..errors import EraserError

GB = 1e9
MB = 1e6

#: Bytes per element of the frozen base (and of its activations).
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float64": 8}
#: Bytes per element of the adapter and of every adapter-sized vector (fp32).
ADAPTER_DTYPE_BYTES = 4
#: Fraction of GPU memory a plan may use; the rest is left for the CUDA context, NCCL buffers,
#: allocator fragmentation and whatever the estimate below misses.
HEADROOM = 0.9
#: Adapter-sized fp32 vectors each worker keeps for one finite-difference HVP: v, the partial
#: H·v, the two gradients g(Θ + hv) and g(Θ − hv), and the saved Θ to restore afterwards.
CG_VECTORS_PER_WORKER = 5
#: Gradients per finite-difference HVP: g(Θ + hv) and g(Θ − hv). The engine keeps every
#: layer's activations for the backward (no activation checkpointing), so a gradient is one
#: forward and one backward pass; ZeRO-3 all-gathers the whole base for the forward and all
#: of it but the input embedding for the backward (measured: RESULTS.md § At 70B widths).
GRADIENTS_PER_HVP = 2
#: Bytes per element of the HVP product all-reduced inside a group (float64).
PRODUCT_DTYPE_BYTES = 8
#: Parameters ZeRO-3 prefetches ahead of the module it gathers (stage3_prefetch_bucket_size
#: in distributed/zero.py).
PREFETCH_BUCKET_PARAMS = 10_000_000
#: Bytes per index weight: its k Ritz vectors in fp32, and its scaling D and its Θ in fp64.
INDEX_VECTOR_BYTES = 4
INDEX_DIAGONAL_BYTES = 2 * 8
#: Group sizes tried for the default, smallest first: powers of two that fit on one node.
NODE_GROUP_SIZES: tuple[int, ...] = (1, 2, 4, 8)

LORA_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)


@dataclass(frozen=True)
class Architecture:
    """Shape of a Llama-family decoder (grouped-query attention, SwiGLU MLP, RMSNorm).

    ``tied_embeddings`` is True when the LM head shares the embedding matrix (SmolLM2).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    name: str
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_size(self) -> int:
        """Output width of k_proj and v_proj: num_kv_heads · head_dim."""
        return self.num_kv_heads * self.head_dim

    def linear_shape(self, target: str) -> tuple[int, int]:
        """(in_features, out_features) of one targeted linear of a decoder layer."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.kv_size
        shapes = {
            "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }
        if target not in shapes:
            raise EraserError(f"unknown LoRA target {target!r}; valid: {', '.join(LORA_TARGETS)}")
        return shapes[target]


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (
        Architecture(576, 30, 9, 3, 1536, 49152, "smollm2-135m", tied_embeddings=True),
        Architecture(4096, 32, 32, 32, 11008, 32000, "llama-2-7b"),
        Architecture(5120, 40, 40, 40, 13824, 32000, "llama-2-13b"),
        Architecture(8192, 80, 64, 8, 28672, 32000, "llama-2-70b"),
    )
}

#: The built-in base ``llama70b-shaped:N``: the per-layer widths of Llama-2-70B and
#: Llama-3-70B (hidden 8192, intermediate 28672, 64 query heads, 8 KV heads, head dim 128)
#: with N decoder layers and SmolLM2's 49,152-token vocabulary (Llama-3 has 128,256: 2.6×
#: more), so that it reads real text with a tokenizer that ships with the package.
SHAPED_70B_PREFIX = "llama70b-shaped:"
SHAPED_70B_VOCAB = 49152
SHAPED_70B_MAX_LAYERS = 80


def shaped_70b_layers(name: str) -> int | None:
    """N of a ``llama70b-shaped:N`` name (1 ≤ N ≤ 80); None for any other name."""
    if not name.startswith(SHAPED_70B_PREFIX):
        return None
    text = name[len(SHAPED_70B_PREFIX):]
    if not (text.isdigit() and 1 <= int(text) <= SHAPED_70B_MAX_LAYERS):
        raise EraserError(f"{name!r}: the layer count after {SHAPED_70B_PREFIX!r} must be a "
                          f"whole number from 1 to {SHAPED_70B_MAX_LAYERS}")
    return int(text)


def shaped_70b_architecture(layers: int) -> Architecture:
    """The shape of ``llama70b-shaped:<layers>``."""
    full = ARCHITECTURES["llama-2-70b"]
    return Architecture(full.hidden_size, layers, full.num_heads, full.num_kv_heads,
                        full.intermediate_size, SHAPED_70B_VOCAB,
                        f"{SHAPED_70B_PREFIX}{layers}")


def architecture_of_base(name: str) -> Architecture:
    """The shape of a base named on the command line: a known shape's name (``llama-2-70b``,
    ``smollm2-135m``, …) or ``llama70b-shaped:N``."""
    layers = shaped_70b_layers(name)
    if layers is not None:
        return shaped_70b_architecture(layers)
    if name not in ARCHITECTURES:
        raise EraserError(f"no known shape for base {name!r}; known: "
                          f"{', '.join(ARCHITECTURES)}, {SHAPED_70B_PREFIX}N")
    return ARCHITECTURES[name]


def layer_params(arch: Architecture) -> int:
    """Parameters of one decoder layer: q, k, v, o, gate, up, down and two RMSNorm weights."""
    linears = sum(i * o for i, o in map(arch.linear_shape, LORA_TARGETS))
    return linears + 2 * arch.hidden_size


def count_params(arch: Architecture) -> int:
    """Embeddings + LM head (unless tied) + all decoder layers + the final RMSNorm."""
    embed = arch.vocab_size * arch.hidden_size
    head = 0 if arch.tied_embeddings else embed
    return embed + head + arch.num_layers * layer_params(arch) + arch.hidden_size


def architecture_for(params: float) -> Architecture:
    """The known shape whose parameter count is closest to ``params`` in |log ratio|."""
    _check_params(params)
    return min(ARCHITECTURES.values(), key=lambda a: abs(math.log(count_params(a) / params)))


def lora_params(arch: Architecture, rank: int, targets: tuple[str, ...] | list[str]) -> int:
    """Adapter parameters: rank · (in + out) per targeted linear, in every decoder layer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise EraserError(f"LoRA rank must be an integer ≥ 1, got {rank!r}")
    targets = tuple(targets)
    if not targets:
        raise EraserError(f"give at least one LoRA target; valid: {', '.join(LORA_TARGETS)}")
    if len(set(targets)) != len(targets):
        raise EraserError(f"LoRA targets repeat: {', '.join(targets)}")
    per_layer = sum(rank * (i + o) for i, o in map(arch.linear_shape, targets))
    return arch.num_layers * per_layer


def parse_params(text: str) -> float:
    """A parameter count as written on the command line: ``70e9``, ``70B``, ``135M``, ``7b``."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBtT]?)\s*", text)
    scale = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
    try:
        value = float(m.group(1)) * scale[m.group(2).lower()] if m else None
    except ValueError:
        value = None
    if value is None:
        raise EraserError(f"--params must be a number of parameters like 70e9 or 70B, got {text!r}")
    _check_params(value)
    return value


def _check_params(params: float) -> None:
    if not (isinstance(params, (int, float)) and math.isfinite(params) and params > 0):
        raise EraserError(f"params must be a positive number of parameters, got {params!r}")


@dataclass
class PlanArguments(Options):
    """One erase on a cluster, as the planner sees it.

    The shape is ``base``'s (:func:`architecture_of_base`), or else the known architecture
    closest to ``params`` (:func:`architecture_for`); give one of the two. ``gpus`` is the
    whole cluster, cut into groups of ``group_size`` GPUs (default: the smallest power of
    two ≤ 8 that fits). ``batch_size`` is sequences per GPU per forward
    pass (each rank of a group runs its own micro-batch) and ``seq_len`` tokens per sequence.
    ``gpu_memory_gb`` is each GPU's memory in GB (10⁹ bytes); a plan fits when it needs at most
    ``HEADROOM`` (90 %) of it.
    """

    gpus: int = option(help="GPUs in the cluster", minimum=1)
    params: float | None = option(None, "base model size, e.g. 70e9 or 70B; the closest "
                                  "known Llama shape is used", above=0)
    group_size: int | None = option(None, "GPUs per ZeRO-3 group holding one base; default: "
                                    "the smallest of 1, 2, 4, 8 that fits", minimum=1)
    lora_rank: int = option(8, "LoRA rank r of the adapter", minimum=1)
    targets: tuple[str, ...] = option(("q_proj", "v_proj"), "comma-separated module names")
    batch_size: int = option(1, "sequences per GPU per forward pass (eraser erase "
                             "--batch-size)", minimum=1)
    seq_len: int = option(512, "tokens per sequence", minimum=1)
    base_dtype: BaseDtype = option("bfloat16", "dtype the base is held in")
    gpu_memory_gb: float = option(80.0, "memory of each GPU in GB (10^9 bytes); plans use at "
                                  "most 90%", above=0)
    index_rank: int = option(24, "Ritz pairs of the curvature index (eraser index --rank)",
                             minimum=1)
    base: str | None = option(None, "plan for this base's shape instead of --params: "
                              "llama70b-shaped:N or a known shape's name")

    def check(self) -> None:
        if (self.params is None) == (self.base is None):
            raise EraserError("give exactly one of --params (the base's size) and --base (its "
                              "name)")
        if self.base is not None:
            architecture_of_base(self.base)
        if not self.targets:
            raise EraserError(f"give at least one LoRA target; valid: {', '.join(LORA_TARGETS)}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise EraserError(f"unknown LoRA target {unknown[0]!r}; valid: "
                              f"{', '.join(LORA_TARGETS)}")
        if self.group_size is not None and self.group_size > self.gpus:
            raise EraserError(f"group size {self.group_size} is larger than the {self.gpus} "
                              f"GPUs of the cluster")
        if self.group_size is not None and self.gpus % self.group_size:
            raise EraserError(f"{self.gpus} GPUs do not divide into groups of "
                              f"{self.group_size}")


@dataclass
class Plan:
    """Memory per GPU and traffic per CG iteration; every ``*_bytes*`` field is bytes.

    Per GPU:

    - ``base_shard_bytes`` = base_params · dtype_bytes / group_size: ZeRO-3 partitions the
      frozen base over the ranks of one group.
    - ``lora_bytes`` = lora_params · 4: the fp32 adapter, whole on every rank.
    - ``cg_vector_bytes`` = 5 · lora_bytes: v, the partial H·v, g(Θ + hv), g(Θ − hv) and the
      saved Θ of a finite-difference HVP (``CG_VECTORS_PER_WORKER``).
    - ``activation_bytes``, with dtype_bytes d, batch b, seq s: the engine has no activation
      checkpointing, so every layer's working set is kept until the backward has used it:
      num_layers · b·s·(16·hidden + 3·intermediate + 2·heads·s)·d (projections, norms and
      residuals; the SwiGLU activations; eager attention scores and probabilities)
      + b·s·vocab·4 (the logits, fp32; an upper bound: they are computed at the response's
      positions only).
    - ``zero3_gather_bytes`` = (the largest single weight + ``PREFETCH_BUCKET_PARAMS``) ·
      dtype_bytes: ZeRO-3 gathers one module at a time (max live parameters 1e8, reuse
      distance 0) and prefetches a bucket ahead; 0 when group_size is 1 (nothing is
      partitioned).
    - ``total_per_gpu_bytes`` is their sum; ``fits`` when it is ≤ ``usable_bytes_per_gpu`` =
      0.9 · gpu_memory.

    Per CG iteration (one HVP):

    - ``aggregator_bytes_per_iteration`` = 2 · num_groups · lora_bytes: every group receives v
      and sends back one partial sum.
    - ``intra_group_bytes_per_iteration``, received by each rank (k = group_size): 2
      gradients, each a forward that all-gathers the whole base and a backward that
      all-gathers all of it but the input embedding:
      2 · (k − 1)/k · (2 · base_bytes − embedding bytes); plus one ring all-reduce of the
      float64 product: 2 · (k − 1)/k · lora_params · 8. (It counts the first layer's q, k
      and v weights in the backward, where a q/v adapter does not need them: 3% over the
      measured bytes at one layer, nothing at 80.)
    - ``ratio_to_base`` = aggregator_bytes_per_iteration / base_bytes.

    The curvature index (docs/DESIGN.md §7) is low rank: ``index_bytes`` = lora_params ·
    (4 · index_rank + 16), its Ritz vectors in fp32 and its scaling and Θ in fp64. It is
    held and applied where CG runs, on the aggregator's host, so ``index_bytes_per_rank``
    on the GPUs is 0: building it and using it only send the ranks v, as CG does.
    """

    architecture: str
    requested_params: float
    base_params: int
    lora_params: int
    lora_rank: int
    targets: tuple[str, ...]
    base_dtype: str
    batch_size: int
    seq_len: int
    gpus: int
    group_size: int
    num_groups: int
    gpu_memory_gb: float
    base_bytes: int
    base_shard_bytes: float
    lora_bytes: int
    cg_vector_bytes: int
    activation_bytes: int
    zero3_gather_bytes: int
    total_per_gpu_bytes: float
    usable_bytes_per_gpu: float
    fits: bool
    aggregator_bytes_per_iteration: int
    intra_group_bytes_per_iteration: float
    ratio_to_base: float
    index_rank: int = 24
    index_bytes: int = 0
    index_bytes_per_rank: int = 0


def _plan(args: PlanArguments, arch: Architecture, group_size: int) -> Plan:
    d = DTYPE_BYTES[args.base_dtype]
    k = group_size
    base_params = count_params(arch)
    n_lora = lora_params(arch, args.lora_rank, args.targets)
    base_bytes = base_params * d
    lora_bytes = n_lora * ADAPTER_DTYPE_BYTES
    tokens = args.batch_size * args.seq_len
    h, i, v = arch.hidden_size, arch.intermediate_size, arch.vocab_size

    base_shard = base_bytes / k
    cg_vectors = CG_VECTORS_PER_WORKER * lora_bytes
    activations = (
        arch.num_layers * tokens * (16 * h + 3 * i + 2 * arch.num_heads * args.seq_len) * d
        + tokens * v * 4
    )
    largest_weight = max(v * h, h * i, h * h)
    gathered = 0 if k == 1 else (largest_weight + PREFETCH_BUCKET_PARAMS) * d
    total = base_shard + lora_bytes + cg_vectors + activations + gathered
    usable = HEADROOM * args.gpu_memory_gb * GB
    num_groups = args.gpus // k
    aggregator = 2 * num_groups * lora_bytes
    share = (k - 1) / k
    backward_bytes = base_bytes - v * h * d  # no gradient flows into the input embedding
    intra = (GRADIENTS_PER_HVP * share * (base_bytes + backward_bytes)
             + 2 * share * n_lora * PRODUCT_DTYPE_BYTES)
    return Plan(
        architecture=arch.name, requested_params=float(args.params or base_params),
        base_params=base_params,
        lora_params=n_lora, lora_rank=args.lora_rank, targets=tuple(args.targets),
        base_dtype=args.base_dtype, batch_size=args.batch_size, seq_len=args.seq_len,
        gpus=args.gpus, group_size=k, num_groups=num_groups,
        gpu_memory_gb=float(args.gpu_memory_gb), base_bytes=base_bytes,
        base_shard_bytes=base_shard, lora_bytes=lora_bytes, cg_vector_bytes=cg_vectors,
        activation_bytes=activations, zero3_gather_bytes=gathered, total_per_gpu_bytes=total,
        usable_bytes_per_gpu=usable, fits=total <= usable,
        aggregator_bytes_per_iteration=aggregator, intra_group_bytes_per_iteration=intra,
        ratio_to_base=aggregator / base_bytes, index_rank=args.index_rank,
        index_bytes=n_lora * (INDEX_VECTOR_BYTES * args.index_rank + INDEX_DIAGONAL_BYTES),
        index_bytes_per_rank=0,
    )


def make_plan(args: PlanArguments) -> Plan:
    """The capacity plan for ``args``; raises :class:`EraserError` on impossible input.

    Without ``group_size`` it is the smallest of 1, 2, 4, 8 that divides ``gpus`` and fits;
    when none fits, the largest of them that divides ``gpus`` (8 on whole 8-GPU nodes), and the
    plan says it does not fit.
    """
    arch = (architecture_for(args.params) if args.base is None
            else architecture_of_base(args.base))
    if args.group_size is not None:
        return _plan(args, arch, args.group_size)

    candidates = [k for k in NODE_GROUP_SIZES if k <= args.gpus and args.gpus % k == 0]
    plans = [_plan(args, arch, k) for k in candidates]
    return next((p for p in plans if p.fits), plans[-1])


def _count(n: float) -> str:
    return f"{n / 1e9:.4g}e9" if n >= 1e9 else f"{n / 1e6:.4g}e6"


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / MB:.1f} MB"


def verdict(plan: Plan) -> str:
    """One line: ``fits``, or ``does not fit: need X GB per GPU, have Y`` (Y: 90 % of memory)."""
    if plan.fits:
        return "fits"
    return (f"does not fit: need {plan.total_per_gpu_bytes / GB:.1f} GB per GPU, have "
            f"{plan.usable_bytes_per_gpu / GB:.1f} GB ({HEADROOM:.0%} of "
            f"{plan.gpu_memory_gb:g} GB)")


def format_plan(plan: Plan) -> str:
    """A small human-readable table of ``plan`` and its verdict as the last line."""
    groups = "group" if plan.num_groups == 1 else "groups"
    rows = [
        ("per GPU", ""),
        (f"  base shard (ZeRO-3, 1/{plan.group_size} of {_size(plan.base_bytes)})",
         _size(plan.base_shard_bytes)),
        ("  ZeRO-3 gathered weights (largest weight + prefetch)",
         _size(plan.zero3_gather_bytes)),
        (f"  activations (batch {plan.batch_size} × seq {plan.seq_len}, every layer's)",
         _size(plan.activation_bytes)),
        ("  LoRA adapter (fp32)", _size(plan.lora_bytes)),
        (f"  CG vectors ({CG_VECTORS_PER_WORKER} × adapter, fp32)", _size(plan.cg_vector_bytes)),
        ("  total", _size(plan.total_per_gpu_bytes)),
        (f"  usable ({HEADROOM:.0%} of {plan.gpu_memory_gb:g} GB)",
         _size(plan.usable_bytes_per_gpu)),
        ("per CG iteration (one finite-difference HVP)", ""),
        (f"  aggregator <-> groups (2 × {plan.num_groups} × adapter)",
         f"{_size(plan.aggregator_bytes_per_iteration)}  "
         f"({plan.ratio_to_base:.3%} of the base)"),
        ("  within a group, received per GPU (ZeRO-3 all-gathers)",
         _size(plan.intra_group_bytes_per_iteration)),
        ("curvature index (low rank, on the aggregator's host)", ""),
        (f"  {plan.index_rank} Ritz vectors (fp32) + scaling and Θ (fp64)",
         _size(plan.index_bytes)),
        ("  per GPU rank", _size(plan.index_bytes_per_rank)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    header = [
        f"{plan.architecture}: {_count(plan.base_params)} params"
        + ("" if plan.requested_params == plan.base_params else
           f" (the known shape closest to {_count(plan.requested_params)})")
        + f", {plan.base_dtype}",
        f"cluster: {plan.gpus} GPU{'s' if plan.gpus > 1 else ''} = {plan.num_groups} {groups} "
        f"× {plan.group_size}",
        f"adapter: rank {plan.lora_rank} on {','.join(plan.targets)} = "
        f"{plan.lora_params / 1e6:.3g}M params",
    ]
    body = [f"{label:<{width}}{value}".rstrip() for label, value in rows]
    return "\n".join(header + body + [verdict(plan)])
