"""The driver side of a distributed erase: place the aggregator, follow it, return ΔΘ.

Called by :func:`eraser_dist.api.erase` when it is given ``DistributedArguments``; the API
validates the inputs and publishes the result, so both engines share those steps.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from eraser_dist.arguments import DistributedArguments, EraseArguments
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.distributed.zero import BACKENDS, base_dtype, check_hvp_supported, local_backend
from eraser_dist.errors import EraserError
from eraser_dist.faults import FaultPlan

from .aggregator import Aggregator
from .cluster import connect
from .group import GroupLayout


def check_distributed_arguments(dist: DistributedArguments, args: EraseArguments) -> None:
    check_hvp_supported(args.hvp)
    if dist.workers < 1 or dist.group_size < 1:
        raise EraserError(f"--workers and --group-size must be at least 1, got "
                          f"{dist.workers} and {dist.group_size}")
    if dist.threads_per_rank < 1 or dist.cpus_per_rank < 0 or (dist.gpus_per_rank or 0) < 0:
        raise EraserError("threads, CPUs and GPUs per rank must not be negative")
    if dist.max_group_restarts < 0 or dist.max_aggregator_restarts < 0:
        raise EraserError("restart limits must not be negative")
    base_dtype(dist.base_dtype)
    if dist.backend not in BACKENDS:
        raise EraserError(f"unknown backend {dist.backend!r}; choose one of {', '.join(BACKENDS)}")


def layout_for(dist: DistributedArguments) -> GroupLayout:
    # The backend is chosen where the ranks run: a GPU-less driver may drive GPU workers.
    backend = dist.backend if dist.backend != "auto" else (
        "nccl" if (dist.gpus_per_rank or 0) > 0 else local_backend())
    gpus = dist.gpus_per_rank if dist.gpus_per_rank is not None else (
        1.0 if backend == "nccl" else 0.0)
    return GroupLayout(dist.workers, dist.group_size, backend, dist.cpus_per_rank, gpus,
                       dist.threads_per_rank, dist.collective_timeout_s)


def distributed_erase(
    spec: WorkerSpec,
    requests: list[dict[str, Any]],
    args: EraseArguments,
    dist: DistributedArguments,
    checkpoint_dir: str,
    progress: bool = True,
    faults: tuple[FaultPlan, ...] = (),
) -> dict[str, Any]:
    """Run one erase of a batch of requests on the cluster; returns the aggregator's answer
    (``result``: the InfluenceResult, and the adapter's layout and the run's figures)."""
    check_distributed_arguments(dist, args)
    layout = layout_for(dist)
    connect(dist.address, dist.workers * dist.group_size, layout.cpus_per_rank,
            layout.gpus_per_rank)
    aggregator = Aggregator.options(
        num_cpus=0, max_concurrency=2, max_restarts=dist.max_aggregator_restarts,
        max_task_retries=dist.max_aggregator_restarts,
    ).remote(spec, layout, checkpoint_dir, dist.max_group_restarts, faults)
    try:
        return _follow(aggregator, aggregator.erase.remote(requests, args), args, progress)
    finally:
        ray.kill(aggregator)  # its worker groups go with it


def _follow(aggregator, ref, args: EraseArguments, progress: bool) -> dict[str, Any]:
    """Wait for the solve, showing the aggregator's phase, iteration and residual."""
    bar = tqdm(total=args.max_iter, desc="distributed erase", disable=not progress,
               leave=False)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                try:
                    return ray.get(ref)
                except RayTaskError as err:
                    if isinstance(err.cause, EraserError):
                        raise err.cause from None
                    raise EraserError(f"the distributed erase failed: {err.cause!r}") from err
                except RayActorError as err:
                    raise EraserError(f"the aggregator died and could not be restarted: "
                                      f"{err}") from err
            if progress:
                _show(bar, aggregator)
    finally:
        bar.close()


def _show(bar, aggregator) -> None:
    try:
        status = ray.get(aggregator.progress.remote(), timeout=5)
    except (RayActorError, ray.exceptions.GetTimeoutError):
        return  # restarting; the next poll will tell
    if status.get("phase") == "CG":
        bar.set_description(f"distributed CG ({status['hvp']} HVP)")
        bar.update(status["iteration"] - bar.n)
        bar.set_postfix(residual=f"{status['residual']:.2e}",
                        restarts=sum(status["group_restarts"]))
    else:
        bar.set_description(status.get("phase", ""))
