"""The aggregator actor: the distributed CG of one erase, checkpointed every iteration.

Each CG iteration publishes the vector v once to the object store; every group returns its
Σ_i w_i ∇²L_i v and the aggregator sums them in group order (so a rerun gives the same
bits). Only adapter-sized vectors move between it and the workers. After every iteration
the CG state is written atomically to ``checkpoint_dir``; a restarted aggregator (Ray
restarts it and retries ``erase``) starts fresh worker groups, recomputes b and resumes CG
where the checkpoint left it. The checkpoint is keyed by b and the solve's settings, so a
different erase never resumes from it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch

from eraser_dist.arguments import EraseArguments
from eraser_dist.core.influence import (
    erase_damping,
    influence_result,
    keeps_directions,
    preconditioner,
    rhs_from_gradients,
    solve_with_policy,
)
from eraser_dist.core.solve import CGResult, CGState, conjugate_gradient
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.faults import FaultPlan, check_all
from eraser_dist.files import atomic_write

from .group import GroupLayout, GroupPool


class CheckpointFile:
    """One solve's CG state on disk, in a folder: the state (x, r, p: three [d] vectors)
    replaced atomically after each iteration, and each recorded step (p, (H + λI)p) written
    once to its own file. An iteration writes O(d) bytes however many steps are recorded
    (rewriting them all would write O(m²·d) over a solve: terabytes at 70B and 100 steps)."""

    def __init__(self, folder: str, key: str):
        self.folder = Path(folder) / f"cg-{key}"
        self.steps_on_disk = 0

    def load(self) -> CGState | None:
        state_file = self.folder / "state.pt"
        if not state_file.is_file():
            return None
        saved = torch.load(state_file, weights_only=True)
        state = CGState(**{k: v for k, v in saved.items() if k != "recorded"})
        if saved["recorded"]:
            # step files past ``iterations`` are from a crash between a step and its state
            steps = [torch.load(self.step_file(i), weights_only=True)
                     for i in range(state.iterations)]
            state.directions, state.products = [p for p, _ in steps], [ap for _, ap in steps]
            self.steps_on_disk = state.iterations
        return state

    def save(self, state: CGState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        recorded = state.directions is not None and state.products is not None
        if recorded:
            for i in range(self.steps_on_disk, len(state.directions)):
                atomic_save((state.directions[i], state.products[i]), self.step_file(i))
            self.steps_on_disk = len(state.directions)
        atomic_save({"x": state.x, "r": state.r, "p": state.p, "rz": state.rz,
                     "iterations": state.iterations, "recorded": recorded},
                    self.folder / "state.pt")

    def step_file(self, i: int) -> Path:
        return self.folder / f"step-{i:05d}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def solve_key(rhs: torch.Tensor, kind: str, damping: float, args: EraseArguments) -> str:
    h = hashlib.sha256(rhs.double().numpy().tobytes())
    h.update(repr((kind, damping, args.tol, args.max_iter, args.curvature,
                   args.hessian_samples, args.seed, args.fd_step, args.batch_size,
                   args.step, args.preconditioner)).encode())
    return h.hexdigest()[:24]


@ray.remote
class Aggregator:
    def __init__(self, spec: WorkerSpec, layout: GroupLayout, checkpoint_dir: str,
                 max_group_restarts: int, faults: tuple[FaultPlan, ...] = ()):
        self.pool = GroupPool(layout, spec, max_group_restarts, faults)
        self.checkpoint_dir = checkpoint_dir
        self.faults = faults
        self.iterations_here = 0  # CG iterations run by this incarnation (for fault plans)
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {"phase": "starting worker groups"}
        self.started = False

    def progress(self) -> dict[str, Any]:
        """Phase, back-end, iteration and residual of the running solve (callable while
        ``erase`` runs: the actor has a second thread for it)."""
        with self.lock:
            return {**self.status, "group_restarts": list(self.pool.restarts)}

    def _set(self, **status: Any) -> None:
        with self.lock:
            self.status = status

    def erase(self, requests: list[dict[str, Any]], args: EraseArguments) -> dict[str, Any]:
        """The InfluenceResult (ΔΘ, each request's ΔΘ_k, the solver's figures) of a batch of
        requests (dicts, as in request files) and the adapter's layout."""
        start = time.perf_counter()
        if not self.started:
            self.infos = self.pool.start()
            self.started = True
        info = self.infos[0][0]
        self._set(phase="preparing the request")
        totals = self.pool.run("prepare", requests, args)[0]
        self._set(phase="computing b")
        rhs_start = time.perf_counter()
        gradients = torch.stack([g.double() for g in self.pool.run("rhs_gradients")]).sum(0)
        parts_rhs = rhs_from_gradients(gradients, info["theta"], totals["removed_weights"],
                                       totals["weight_after"], info["weight_decay"])
        b = parts_rhs.sum(0)
        rhs_seconds = time.perf_counter() - rhs_start
        damping = erase_damping(args, info["weight_decay"])
        scale = 1.0 / totals["hessian_weight"]
        vector_dtype = info["dtype"]  # the adapter's: what the HVP computes in anyway
        timings: list[float] = []
        resumed_at: list[int] = []
        cg_start = time.perf_counter()
        self._set(phase="computing the preconditioner")
        inverse_diagonal = preconditioner(
            args.preconditioner, lambda: torch.stack(self.pool.run("fisher_diagonal")).sum(0),
            scale, damping)

        def solve(kind: str) -> CGResult:
            checkpoint = CheckpointFile(self.checkpoint_dir,
                                        solve_key(parts_rhs, kind, damping, args))
            state = checkpoint.load()
            if state is not None:
                resumed_at.append(state.iterations)

            def matvec(v: torch.Tensor) -> torch.Tensor:
                t = time.perf_counter()
                ref = ray.put(v.to(vector_dtype))  # published once, read by every rank
                parts = self.pool.run("hvp", kind, ref)
                timings.append(time.perf_counter() - t)
                return torch.stack([p.double() for p in parts]).sum(0) * scale

            def report(iteration: int, residual: float) -> None:
                self._set(phase="CG", hvp=kind, iteration=iteration, residual=residual,
                          max_iter=args.max_iter)

            def save(cg_state: CGState) -> None:
                checkpoint.save(cg_state)
                self.iterations_here += 1
                check_all(self.faults, "aggregator", "iteration", self.iterations_here)

            return conjugate_gradient(matvec, b, damping=damping, tol=args.tol,
                                      max_iter=args.max_iter, callback=report, start=state,
                                      checkpoint=save,
                                      record=keeps_directions(parts_rhs, args),
                                      inverse_diagonal=inverse_diagonal)

        self._set(phase="CG", hvp=args.hvp, iteration=0, residual=1.0, max_iter=args.max_iter)
        cg, hvp = solve_with_policy(solve, args)
        cg_seconds = time.perf_counter() - cg_start
        self._set(phase="done")
        d = b.numel()
        return {
            "result": influence_result(cg, hvp, parts_rhs, damping, totals["hessian_rows"], args,
                                       (rhs_seconds, cg_seconds)),
            "keys": info["keys"], "shapes": info["shapes"], "theta": info["theta"],
            "group_restarts": list(self.pool.restarts), "resumed_at_iteration": resumed_at,
            "seconds_per_hvp": timings,
            "seconds": time.perf_counter() - start,
            # v out once, one group total back per group
            "bytes_per_iteration": d * vector_dtype.itemsize * (1 + len(self.pool.groups)),
            "partition": [[i["partition"] for i in group] for group in self.infos],
        }

    def memory(self) -> list[list[dict[str, int]]]:
        """Every rank's ShardWorker.memory(), per group."""
        return [ray.get([rank.memory.remote() for rank in group.ranks])
                for group in self.pool.groups]

    def losses(self, ids: list[str]) -> dict[str, float]:
        merged: dict[str, float] = {}
        for part in self.pool.run("losses", list(ids)):
            merged.update(part)
        return merged

    def shutdown(self) -> None:
        self.pool.stop()
