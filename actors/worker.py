"""The Ray actor hosting one rank of a worker group; the work is in ShardWorker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import ray
import torch

from eraser_dist.distributed.shard_worker import ShardWorker, WorkerSpec
from eraser_dist.distributed.sharding import RankPlace
from eraser_dist.distributed.zero import free_port, init_process_group, node_address
from eraser_dist.faults import FaultPlan, check_all


@ray.remote
class WorkerRank:
    def __init__(self, spec: WorkerSpec, place: RankPlace, backend: str, threads: int,
                 timeout_s: float, faults: tuple[FaultPlan, ...] = ()):
        # Several ranks share a node's cores: without this each would start one thread per
        # core and they would fight (ranks × cores threads on the cores).
        torch.set_num_threads(threads)
        self.spec, self.place, self.backend, self.timeout_s = spec, place, backend, timeout_s
        self.faults = faults
        self.calls: Counter[str] = Counter()
        self.worker: ShardWorker | None = None

    def rendezvous(self) -> tuple[str, int]:
        """Address and a free port on this node, for rank 0 to host the group's rendezvous."""
        return node_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        init_process_group(self.place.rank, self.place.group_size, master_addr, master_port,
                           self.backend, self.timeout_s)
        self.worker = ShardWorker(self.spec, self.place)
        return self.worker.info()

    def call(self, method: str, *args: Any) -> Any:
        """Run a ShardWorker method; every rank of the group must call it (collectives).

        Only rank 0 returns the (group-reduced) result, so one copy travels back per group.
        """
        self.calls[method] += 1
        check_all(self.faults, f"worker {self.place.group}.{self.place.rank}", method,
                  self.calls[method])
        result = getattr(self.worker, method)(*args)
        return result if self.place.rank == 0 else None

    def memory(self) -> dict[str, int]:
        """This rank's own figures (no collective, unlike ``call``)."""
        return self.worker.memory()

    def collectives(self) -> dict[str, list[dict[str, int]]]:
        """This rank's collective bytes per call (no collective, unlike ``call``)."""
        return self.worker.collectives()
