"""The DeepSpeed edge: process groups and a ZeRO-3-partitioned frozen base.

Only this module imports deepspeed. A worker group of k processes joins one
torch.distributed group (gloo on CPU, NCCL on GPUs) and partitions the base weights over it
with ZeRO stage 3 and no optimizer. LoRA is attached *after* partitioning, so its weights
are ordinary tensors, whole on every rank: the finite-difference and Gauss-Newton HVPs shift
them in place, which does not work on a partitioned parameter, and CG vectors stay
adapter-sized. Double backward (exact HVPs) does not work here: ZeRO-3 releases the gathered
base weights before the second backward.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, get_args

import torch

from ..arguments import BaseDtype
from ..errors import EraserError


def local_backend() -> str:
    """What ``auto`` means in this process: NCCL when it sees a GPU, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def base_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``DistributedArguments.base_dtype`` name."""
    if name not in get_args(BaseDtype):
        raise EraserError(f"unknown base dtype {name!r}; choose one of "
                          f"{', '.join(get_args(BaseDtype))}")
    return getattr(torch, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_address() -> str:
    return socket.gethostbyname(socket.gethostname())


def init_process_group(
    rank: int, world_size: int, master_addr: str, master_port: int, backend: str,
    timeout_s: float = 300.0,
) -> None:
    """Join this process to its worker group's torch.distributed group (env:// rendezvous).

    A finite ``timeout_s`` makes a collective whose peer died raise instead of hanging.
    """
    import deepspeed

    os.environ.update(
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK="0",  # Ray gives each rank its own device 0
    )
    if backend == "nccl":
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))


def zero3_config(dtype: torch.dtype) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            # Partition every base tensor, norms included: only the LoRA weights (attached
            # afterwards, outside DeepSpeed) are whole on each rank.
            "stage3_param_persistence_threshold": 0,
            # Release each layer's gathered weights after use. DeepSpeed's defaults (1e9 live
            # parameters, reuse distance 1e9) keep a whole small model gathered, so a rank's
            # memory would not fall with the group size; the fd and GGN passes never reuse a
            # layer soon enough to gain from keeping it.
            "stage3_max_live_parameters": 1e8,
            "stage3_max_reuse_distance": 0,
            "stage3_prefetch_bucket_size": 1e7,
        },
        "bf16": {"enabled": dtype == torch.bfloat16},
    }


def partitioned_loading(dtype: torch.dtype) -> Any:
    """An object that, while alive, makes ``from_pretrained`` build the model inside
    ``deepspeed.zero.Init`` and load each checkpoint shard straight into the partitions, so a
    rank never holds the whole base (at 70B: 17 GB per rank over 8, not 138 GB each).

    Keep it alive as long as the model: transformers looks it up through a weak reference.
    """
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(zero3_config(dtype))


@contextmanager
def partitioned_construction(dtype: torch.dtype):
    """While a ZeRO-3 loading config is alive (:func:`partitioned_loading`), build modules
    inside ``deepspeed.zero.Init``: each parameter is cut into this rank's partition as soon
    as its module exists, so no rank holds a whole model that is too big for it. Elsewhere,
    an ordinary construction in ``dtype``. Weights are left uninitialised either way (fill
    them with :func:`fill_parameter`)."""
    from transformers.initialization import no_init_weights
    from transformers.integrations import deepspeed_config, is_deepspeed_zero3_enabled
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if not is_deepspeed_zero3_enabled():
            with no_init_weights():
                yield
            return
        import deepspeed

        # prevent_arange_dtype_change: zero.Init would otherwise build the rotary
        # frequencies in the base's dtype, as transformers' own ZeRO-3 construction avoids.
        # The dtype comes from the config (bf16 enabled or not): zero.Init's own dtype
        # argument, when given, resolves to bf16 on a CPU whatever it is.
        with no_init_weights(), prevent_arange_dtype_change(), deepspeed.zero.Init(
                config_dict_or_path=deepspeed_config()):
            yield
    finally:
        torch.set_default_dtype(default)


#: Elements written at a time by :func:`fill_parameter`: the transient it adds to a rank.
FILL_CHUNK = 1 << 24


def fill_parameter(param: torch.nn.Parameter, values) -> None:
    """Write ``values(start, stop)`` (the flattened parameter's elements [start, stop), as a
    1-D tensor) into what this rank holds of ``param``: all of it, or its ZeRO-3 partition
    (rank r holds elements [r·s, (r+1)·s), s = ⌈numel / group size⌉, zero past the end).
    Asked for ``FILL_CHUNK`` elements at a time."""
    with torch.no_grad():
        if hasattr(param, "ds_tensor"):
            import deepspeed

            local = param.ds_tensor.view(-1)
            first = local.numel() * deepspeed.comm.get_rank(group=param.ds_process_group)
            last = min(first + local.numel(), int(param.ds_numel))
            local.zero_()
        else:
            local, first, last = param.view(-1), 0, param.numel()
        for start in range(first, last, FILL_CHUNK):
            stop = min(start + FILL_CHUNK, last)
            local[start - first : stop - first].copy_(values(start, stop))


@contextmanager
def gathered(params: list[torch.nn.Parameter]):
    """The full values of possibly partitioned parameters, for reading inside the block."""
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield


def partition_base(model: torch.nn.Module) -> Any:
    """Partition a frozen base over the current process group with ZeRO-3, in place.

    ``model`` keeps working as a module (DeepSpeed's hooks gather each layer's weights for
    its forward and backward); returns the engine, which must stay alive as long as it.
    """
    import deepspeed

    dtype = next(model.parameters()).dtype
    engine, *_ = deepspeed.initialize(model=model, config=zero3_config(dtype))
    if engine.module is not model:
        raise RuntimeError("DeepSpeed replaced the module; the LoRA attachment would miss it")
    return engine


def partition_report(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Per parameter: its full size, what this rank holds, and whether it is partitioned."""
    out = []
    for name, p in model.named_parameters():
        partitioned = hasattr(p, "ds_tensor")
        out.append({
            "name": name,
            "numel": int(p.ds_numel) if partitioned else p.numel(),
            "local_numel": int(p.ds_tensor.numel()) if partitioned else p.numel(),
            "partitioned": partitioned,
            "trainable": p.requires_grad,
        })
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of the group, in place; a no-op for a group of one. Through
    DeepSpeed's communication layer, so that :func:`collective_bytes` counts it too."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        import deepspeed

        deepspeed.comm.all_reduce(tensor)
    return tensor


def count_collectives() -> None:
    """Have DeepSpeed's comms logger record every collective of this process from now on.
    It synchronises the device after each one (no overlap of ZeRO-3's prefetch with
    compute), so it is for measurements only."""
    import deepspeed

    deepspeed.comm.configure(enabled=True, prof_all=True, verbose=False)


def collective_bytes() -> dict[str, int]:
    """Per collective operation, Σ calls × message size in bytes, as DeepSpeed's comms
    logger has recorded them in this process so far (:func:`count_collectives`). The message
    size is that of the operation's tensor argument: for an all-gather, this rank's part
    (it receives k − 1 such parts), for an all-reduce the whole tensor."""
    import deepspeed

    totals: dict[str, int] = {}
    for name, by_size in deepspeed.comm.comms_logger.comms_dict.items():
        totals[name] = sum(size * record[0] for size, record in by_size.items())
    return totals


def all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
