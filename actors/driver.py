"""The driver side of a distributed erase (or index build): place the aggregator, follow it,
return ΔΘ (or the index).

Called by :func:`eraser_dist.api.erase` when it is given ``DistributedArguments``; the API
validates the inputs, builds the edited objective and publishes the result, so both engines
share those steps, and the aggregator runs the same Newton step as one process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from eraser_dist.arguments import DistributedArguments, EraseArguments
from eraser_dist.core.progress import StatusBar
from eraser_dist.core.requests import EditedObjective
from eraser_dist.core.spectral import LowRankCurvature
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.distributed.zero import local_backend
from eraser_dist.errors import EraserError
from eraser_dist.faults import FaultPlan
from eraser_dist.llm.adapters import read_meta
from eraser_dist.llm.warm import lora_layout

from .aggregator import Aggregator
from .cluster import connect
from .group import GroupLayout


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
    edited: EditedObjective,
    weight_decay: float,
    args: EraseArguments,
    dist: DistributedArguments,
    checkpoint_dir: str,
    progress: bool = True,
    faults: tuple[FaultPlan, ...] = (),
    index: LowRankCurvature | None = None,
    warm: WarmGroups | None = None,
) -> dict[str, Any]:
    """Run one erase step of ``edited`` on the cluster (from a curvature ``index``'s step, if
    given); returns the aggregator's answer (``result``: the InfluenceResult, and the
    adapter's layout and the run's figures). On ``warm`` groups, which stay up after it;
    otherwise on groups started for this erase."""
    # warm groups switch the adapter in, and keep this erase's checkpoints where it says
    switch = () if warm is None else (spec.adapter, checkpoint_dir)
    with _aggregator(spec, dist, warm, checkpoint_dir, faults) as aggregator:
        return _follow(aggregator, aggregator.erase.remote(edited, weight_decay, args, index,
                                                           *switch),
                       args.max_iter, progress, "distributed erase")


def distributed_index(spec: WorkerSpec, rows: list, weight_decay: float, args: EraseArguments,
                      rank: int, dist: DistributedArguments, progress: bool = True,
                      warm: WarmGroups | None = None) -> dict[str, Any]:
    """Build the curvature index of the adapter over ``rows`` on the cluster; returns the
    aggregator's answer (``fitted``: the FittedCurvature, and the adapter's layout). On
    ``warm`` groups, as :func:`distributed_erase`."""
    switch = () if warm is None else (spec.adapter,)
    with _aggregator(spec, dist, warm) as aggregator:
        return _follow(aggregator, aggregator.fit_curvature.remote(rows, weight_decay, args,
                                                                   rank, *switch),
                       rank, progress, "distributed index")


class WarmGroups:
    """An aggregator and its G×K worker groups kept up across erases, index builds and
    certificate losses of adapters on one base: the service's engine with ``--workers``
    (:class:`~eraser_dist.service.engines.EnginePool`). An adapter of the same base,
    dtype, LoRA layout and max_length is switched in by setting its LoRA weights on the
    ranks, so the base is loaded and partitioned once; another one stops the groups and
    starts new ones. The groups start at the first work, not when this is made.
    ``base_loads`` counts their starts (each loads the base on every rank)."""

    def __init__(self, dist: DistributedArguments):
        self.dist = dist
        self.held: Any = None
        self.key: tuple | None = None
        self.base_loads = 0

    def aggregator(self, spec: WorkerSpec):
        """The aggregator whose groups hold ``spec``'s base and layout, started if needed."""
        meta = read_meta(spec.adapter)
        key = (spec.base, spec.base_dtype, meta.base_fingerprint, meta.max_length,
               json.dumps(lora_layout(spec.adapter), sort_keys=True))
        if key != self.key:
            self.close()
            self.held, self.key = _place(spec, self.dist, "", ()), key
            self.base_loads += 1
        return self.held

    def losses(self, spec: WorkerSpec, rows: list, batch_size: int) -> torch.Tensor:
        """L_i(Θ) of ``spec``'s adapter on each row [n], computed on the groups."""
        with _aggregator(spec, self.dist, self) as aggregator:
            return ray.get(aggregator.losses.remote(rows, batch_size, spec.adapter))

    def close(self) -> None:
        """Stop the groups (their CPUs and GPUs go back to the cluster)."""
        if self.held is not None:
            ray.kill(self.held)  # its worker groups go with it
        self.held = self.key = None


@contextmanager
def _aggregator(spec: WorkerSpec, dist: DistributedArguments, warm: WarmGroups | None,
                checkpoint_dir: str = "", faults: tuple[FaultPlan, ...] = ()) -> Iterator[Any]:
    """The aggregator for work on ``spec``: ``warm``'s, whose groups are stopped if the work
    fails (a dead aggregator, or groups past their restarts, would fail every later batch;
    the next one starts fresh), or one placed for this work and killed after it."""
    if warm is not None:
        aggregator = warm.aggregator(spec)
        try:
            yield aggregator
        except BaseException:
            warm.close()
            raise
        return
    aggregator = _place(spec, dist, checkpoint_dir, faults)
    try:
        yield aggregator
    finally:
        ray.kill(aggregator)  # its worker groups go with it


def join_cluster(dist: DistributedArguments, engines: int = 1) -> GroupLayout:
    """Join (or start) the cluster with room for the G×K ranks of ``engines`` engines side
    by side; returns the ranks' layout. A serve joins before any Ray actor of its own (the
    API, serving replicas), so that a local cluster is started large enough for its
    engines, and a cluster too small for them is refused at once rather than left waiting."""
    layout = layout_for(dist)
    connect(dist.address, engines * dist.workers * dist.group_size, layout.cpus_per_rank,
            layout.gpus_per_rank)
    return layout


def _place(spec: WorkerSpec, dist: DistributedArguments, checkpoint_dir: str,
           faults: tuple[FaultPlan, ...]):
    """Join (or start) the cluster and place the aggregator, which starts the groups."""
    layout = join_cluster(dist)
    return Aggregator.options(
        num_cpus=0, max_concurrency=2, max_restarts=dist.max_aggregator_restarts,
        max_task_retries=dist.max_aggregator_restarts,
    ).remote(spec, layout, checkpoint_dir, dist.max_group_restarts, faults)


def _follow(aggregator, ref, total: int, progress: bool, label: str) -> dict[str, Any]:
    """Wait for the work, showing the aggregator's phase, iteration and residual."""
    bar = StatusBar(total, enabled=progress, label=label)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                try:
                    return ray.get(ref)
                except RayTaskError as err:
                    if isinstance(err.cause, EraserError):
                        raise err.cause from None
                    raise EraserError(f"the {label} failed: {err.cause!r}") from err
                except RayActorError as err:
                    raise EraserError(f"the aggregator died and could not be restarted: "
                                      f"{err}") from err
            if progress:
                try:
                    bar(ray.get(aggregator.progress.remote(), timeout=5))
                except (RayActorError, ray.exceptions.GetTimeoutError):
                    pass  # restarting; the next poll will tell
    finally:
        bar.close()
