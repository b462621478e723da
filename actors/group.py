"""Worker groups: k rank actors sharing one ZeRO-3 base, the pool of G groups, and the
pool seen as a :class:`~eraser_dist.core.backend.CurvatureBackend`.

A group fails as a whole: its ranks are bound by one torch.distributed group, so when one
rank dies the others are stuck in (or broken out of) a collective. The pool then kills the
group, starts a fresh one (which reloads its shard and is given the ranks' state again: Θ
and the current Hessian rows) and retries the call, up to ``max_restarts`` times per group.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.distributed.sharding import RankPlace
from eraser_dist.errors import EraserError
from eraser_dist.faults import FaultPlan

from .worker import WorkerRank


@dataclass(frozen=True)
class GroupLayout:
    """G groups of k ranks and what each rank asks the cluster for."""

    groups: int
    group_size: int
    backend: str
    cpus_per_rank: float
    gpus_per_rank: float
    threads_per_rank: int
    collective_timeout_s: float


class GroupFailure(Exception):
    """A group lost a rank or its collectives broke; the group must be restarted."""


def user_error(err: Exception) -> EraserError | None:
    """The EraserError a rank raised (a problem with the inputs, not a fault), if any."""
    if isinstance(err, RayTaskError) and isinstance(err.cause, EraserError):
        return err.cause
    return None


class WorkerGroup:
    def __init__(self, index: int, layout: GroupLayout, spec: WorkerSpec,
                 faults: tuple[FaultPlan, ...]):
        self.index, self.layout, self.spec, self.faults = index, layout, spec, faults
        self.ranks: list[Any] = []

    def start(self) -> list[ray.ObjectRef]:
        """Create the rank actors and begin their set-up; returns the set-up refs."""
        lay = self.layout
        self.ranks = [
            WorkerRank.options(num_cpus=lay.cpus_per_rank, num_gpus=lay.gpus_per_rank).remote(
                self.spec, RankPlace(self.index, lay.groups, r, lay.group_size), lay.backend,
                lay.threads_per_rank, lay.collective_timeout_s, self.faults)
            for r in range(lay.group_size)
        ]
        try:
            addr, port = ray.get(self.ranks[0].rendezvous.remote())
        except RayActorError as err:
            raise GroupFailure(str(err)) from err
        return [rank.setup.remote(addr, port) for rank in self.ranks]

    def submit(self, method: str, *args: Any) -> list[ray.ObjectRef]:
        return [rank.call.remote(method, *args) for rank in self.ranks]

    def gather(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """Results of all ranks, in rank order; raises as soon as any rank has failed.

        Waiting on each ref as it completes (not in rank order) matters: the survivors of a
        dead rank block in a collective, so the first failure to arrive is the dead one's.
        """
        results: dict[ray.ObjectRef, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                results[ready[0]] = ray.get(ready[0])
            except (RayActorError, RayTaskError) as err:
                cause = user_error(err)
                if cause is not None:
                    raise cause from None
                raise GroupFailure(f"worker group {self.index}: {_first_line(err)}") from err
        return [results[r] for r in refs]

    def stop(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        self.ranks = []


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


class GroupPool:
    """G worker groups run side by side; each call goes to every group and is retried on a
    restarted group when one fails."""

    def __init__(self, layout: GroupLayout, spec: WorkerSpec, max_restarts: int,
                 faults: tuple[FaultPlan, ...] = ()):
        self.groups = [WorkerGroup(g, layout, spec, faults) for g in range(layout.groups)]
        self.max_restarts = max_restarts
        self.restarts = [0] * layout.groups
        self.infos: list[list[dict[str, Any]]] = []
        # the calls that set a rank's state, latest per method, given again to a new group
        self.state_calls: dict[str, tuple[Any, ...]] = {}

    def start(self) -> list[list[dict[str, Any]]]:
        """Start every group (concurrently); returns each rank's ShardWorker.info()."""
        self.infos = self._run(lambda group: group.start(), replay=False)
        return self.infos

    def run(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every group; the group totals (rank 0's), in group order."""
        return [out[0] for out in self._run(lambda group: group.submit(method, *args))]

    def set_state(self, method: str, *args: Any) -> None:
        """Run a call that sets the ranks' state on every group, and remember it: a group
        restarted later is given it again before it works."""
        self.state_calls.pop(method, None)
        self.state_calls[method] = args
        self.run(method, *args)

    def _run(self, submit, replay: bool = True) -> list[list[Any]]:
        results: list[list[Any] | None] = [None] * len(self.groups)
        todo = list(range(len(self.groups)))
        while todo:
            refs = {}
            for g in todo:
                try:
                    refs[g] = submit(self.groups[g])
                except GroupFailure as err:
                    refs[g] = err
            failed = []
            for g in todo:
                try:
                    if isinstance(refs[g], GroupFailure):
                        raise refs[g]
                    results[g] = self.groups[g].gather(refs[g])
                except GroupFailure as err:
                    failed.append(g)
                    self._restart(g, err, replay)
            todo = failed
        return results  # type: ignore[return-value]

    def _restart(self, g: int, err: GroupFailure, replay: bool) -> None:
        group = self.groups[g]
        while True:
            group.stop()
            if self.restarts[g] >= self.max_restarts:
                raise EraserError(f"{err}; the group failed {self.restarts[g] + 1} times, giving "
                                  "up (nothing was published)")
            self.restarts[g] += 1
            try:
                group.gather(group.start())
                if replay:
                    for method, args in self.state_calls.items():
                        group.gather(group.submit(method, *args))
                return
            except GroupFailure as again:
                err = again

    def stop(self) -> None:
        for group in self.groups:
            group.stop()


class PoolBackend:
    """The :class:`~eraser_dist.core.backend.CurvatureBackend` protocol on a pool of worker
    groups: each call goes to every group, whose ranks take their share of the rows and
    reduce within the group; the group totals are summed here in group order (float64), so
    a rerun gives the same bits. Rows and vectors are put in the object store once per call
    and read by every rank. ``hvp_seconds`` records each HVP's wall time.
    """

    # the Gauss-Newton matrix with Jv by a difference of logits: double backward does not
    # work on a ZeRO-3-partitioned base
    default_hvp = "ggn"

    def __init__(self, pool: GroupPool, theta: torch.Tensor, vector_dtype: torch.dtype):
        self.pool = pool
        self._theta = theta.double().cpu()
        # v travels in the adapter's dtype: what the ranks compute in anyway
        self.vector_dtype = vector_dtype
        self.hvp_seconds: list[float] = []

    @staticmethod
    def _sum(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([p.double() for p in parts]).sum(0)

    def theta(self) -> torch.Tensor:
        return self._theta.clone()

    def set_theta(self, theta: torch.Tensor) -> None:
        self._theta = theta.double().cpu().clone()
        self.pool.set_state("set_theta", ray.put(self._theta))

    def gradient_sums(self, terms: Sequence[tuple[Sequence, torch.Tensor]],
                      batch_size: int) -> torch.Tensor:
        terms = [(list(rows), coefficients) for rows, coefficients in terms]
        return self._sum(self.pool.run("gradient_sums", ray.put(terms), batch_size))

    def use_hessian_rows(self, rows: Sequence, weights: torch.Tensor) -> None:
        self.pool.set_state("use_hessian_rows", ray.put((list(rows), weights)))

    def hvp(self, kind: str, v: torch.Tensor, batch_size: int,
            fd_step: float | None) -> torch.Tensor:
        start = time.perf_counter()
        parts = self.pool.run("hvp", kind, ray.put(v.to(self.vector_dtype)), batch_size,
                              fd_step)
        self.hvp_seconds.append(time.perf_counter() - start)
        return self._sum(parts)

    def fisher_diagonal(self) -> torch.Tensor:
        return self._sum(self.pool.run("fisher_diagonal"))

    def losses(self, rows: Sequence, batch_size: int) -> torch.Tensor:
        by_position: dict[int, float] = {}
        for part in self.pool.run("losses", ray.put(list(rows)), batch_size):
            by_position.update(part)
        return torch.tensor([by_position[i] for i in range(len(rows))], dtype=torch.float64)

    def bytes_per_iteration(self) -> int:
        """What one CG iteration moves between the aggregator and the groups: v out once,
        one total back per group."""
        d = self._theta.numel()
        return d * self.vector_dtype.itemsize * (1 + len(self.pool.groups))
