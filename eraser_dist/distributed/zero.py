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
    """Σ over the ranks of the group, in place; a no-op for a group of one."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
