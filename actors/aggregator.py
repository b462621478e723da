"""The aggregator actor: runs one erase's Newton step (or builds a curvature index) over the
worker groups.

A thin shell (docs/DESIGN.md §4): the step is the same
:func:`~eraser_dist.core.influence.newton_step` as in one process, run on a
:class:`~actors.group.PoolBackend`, so each HVP publishes v once to the object store and
sums one total per group, in group order (a rerun gives the same bits). The actor adds what
only it can: the worker groups' lifetime, a CG checkpoint after every iteration (a
restarted aggregator, which Ray restarts and retries ``erase`` on, starts fresh worker
groups, recomputes b and resumes CG where the checkpoint left it; the checkpoint is keyed by
b and the solve's settings, so a different erase never resumes from it), and its status for
the driver's progress bar.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
from safetensors.torch import load_file

from eraser_dist.arguments import EraseArguments
from eraser_dist.core.influence import fit_curvature, newton_step
from eraser_dist.core.requests import EditedObjective
from eraser_dist.core.solve import CGState
from eraser_dist.core.spectral import LowRankCurvature
from eraser_dist.distributed.checkpoint import CheckpointFile
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.faults import FaultPlan, check_all
from eraser_dist.llm.adapters import PEFT_FILES

from .group import GroupLayout, GroupPool, PoolBackend


class ObservedCheckpoint:
    """A solve's checkpoint file, with the aggregator told of each resume and each save
    (the iteration count that fault plans fire on)."""

    def __init__(self, file: CheckpointFile, aggregator: Aggregator):
        self.file, self.aggregator = file, aggregator

    def load(self) -> CGState | None:
        state = self.file.load()
        if state is not None:
            self.aggregator.resumed_at.append(state.iterations)
        return state

    def save(self, state: CGState) -> None:
        self.file.save(state)
        self.aggregator.iterations_here += 1
        check_all(self.aggregator.faults, "aggregator", "iteration",
                  self.aggregator.iterations_here)


@ray.remote
class Aggregator:
    def __init__(self, spec: WorkerSpec, layout: GroupLayout, checkpoint_dir: str,
                 max_group_restarts: int, faults: tuple[FaultPlan, ...] = ()):
        self.pool = GroupPool(layout, spec, max_group_restarts, faults)
        self.checkpoint_dir = checkpoint_dir
        self.faults = faults
        self.iterations_here = 0  # CG iterations run by this incarnation (for fault plans)
        self.resumed_at: list[int] = []
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {"phase": "starting worker groups"}

    def progress(self) -> dict[str, Any]:
        """The running step's latest status (callable while ``erase`` runs: the actor has a
        second thread for it)."""
        with self.lock:
            return {**self.status, "group_restarts": list(self.pool.restarts)}

    def _report(self, status: dict[str, Any]) -> None:
        with self.lock:
            self.status = status

    def erase(self, edited: EditedObjective, weight_decay: float, args: EraseArguments,
              index: LowRankCurvature | None = None, adapter: str | None = None,
              checkpoint_dir: str | None = None) -> dict[str, Any]:
        """The InfluenceResult of the edit (ΔΘ, each request's ΔΘ_k, the solver's figures),
        the adapter's layout, and the run's figures; with a curvature ``index``, CG starts
        from its step (:func:`~eraser_dist.core.influence.newton_step`). ``adapter``: another
        adapter of the groups' layout, switched in first (:meth:`_backend`);
        ``checkpoint_dir``: this erase's CG checkpoints, instead of the actor's."""
        start = time.perf_counter()
        backend = self._backend(adapter)
        theta = backend.theta()
        info = self.pool.infos[0][0]
        folder = checkpoint_dir or self.checkpoint_dir
        result = newton_step(
            backend, edited, weight_decay, args, progress=self._report,
            checkpoints=lambda key: ObservedCheckpoint(CheckpointFile(folder, key), self),
            index=index)
        return {
            "result": result,
            "keys": info["keys"], "shapes": info["shapes"], "theta": theta,
            "group_restarts": list(self.pool.restarts),
            "resumed_at_iteration": list(self.resumed_at),
            "seconds_per_hvp": backend.hvp_seconds,
            "seconds": time.perf_counter() - start,
            "bytes_per_iteration": backend.bytes_per_iteration(),
            "partition": [[i["partition"] for i in group] for group in self.pool.infos],
        }

    def fit_curvature(self, rows: list, weight_decay: float, args: EraseArguments,
                      rank: int, adapter: str | None = None) -> dict[str, Any]:
        """The curvature index of the adapter over ``rows`` (its training set), each HVP of
        Lanczos a map-reduce over the groups; with the adapter's layout, as ``erase``."""
        backend = self._backend(adapter)
        info = self.pool.infos[0][0]
        fitted = fit_curvature(backend, rows, weight_decay, args, rank, progress=self._report)
        return {"fitted": fitted, "keys": info["keys"], "shapes": info["shapes"],
                "theta": backend.theta(), "group_restarts": list(self.pool.restarts)}

    def losses(self, rows: list, batch_size: int, adapter: str | None = None) -> torch.Tensor:
        """L_i(Θ) of each row [n] float64, in the rows' order, computed on the groups, at the
        groups' own adapter or at ``adapter``."""
        return self._backend(adapter).losses(rows, batch_size)

    def _backend(self, adapter: str | None = None) -> PoolBackend:
        """The worker groups (started on first use) as a curvature back-end at Θ̂ of the
        groups' own adapter, or of ``adapter`` (same base and layout): its LoRA weights are
        set on every rank (a state call, so a restarted group gets them too), and the base
        stays as loaded."""
        info = (self.pool.infos or self.pool.start())[0][0]
        if adapter is None:
            return PoolBackend(self.pool, info["theta"], info["dtype"])
        tensors = load_file(str(Path(adapter) / PEFT_FILES[1]))
        theta = torch.cat([tensors[key].reshape(-1).double() for key in info["keys"]])
        backend = PoolBackend(self.pool, theta, info["dtype"])
        backend.set_theta(theta)
        return backend

    def per_rank(self, figures: str) -> list[list[Any]]:
        """Every rank's own ``figures`` (``memory`` or ``collectives``, the ShardWorker
        methods of those names), per group."""
        return [ray.get([getattr(rank, figures).remote() for rank in group.ranks])
                for group in self.pool.groups]

    def shutdown(self) -> None:
        self.pool.stop()
