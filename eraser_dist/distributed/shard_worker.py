"""What one rank of a worker group does, as a plain class (the Ray actor only hosts it).

A :class:`ShardWorker` runs inside a process that has joined its group's torch.distributed
group. It loads the base, partitions it with ZeRO-3 over the group and attaches the adapter
(whole on every rank). It answers the :class:`~eraser_dist.core.backend.CurvatureBackend`
calls on its share of the given rows (:func:`~eraser_dist.distributed.sharding.rank_share`)
with the same in-process code as one process, and all-reduces each sum within the group,
so every rank returns the group's total; the caller keeps rank 0's. Rows arrive with each
call (they are the aggregator's, sent once through the object store); the only state a rank
keeps between calls is Θ and the current Hessian rows, which a restarted group is given
again.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.backend import InProcessBackend
from ..llm.adapters import file_key, load_adapter
from ..llm.models import load_base
from .sharding import RankPlace, rank_rows, rank_share
from .zero import (
    all_gather,
    all_reduce_sum,
    base_dtype,
    collective_bytes,
    count_collectives,
    partition_base,
    partition_report,
    partitioned_loading,
)


def resident_peak(reset: bool = False) -> int | None:
    """This process's peak resident set in bytes (Linux VmHWM), then, with ``reset``, set
    back to the resident set now (``/proc/self/clear_refs``), so that the next reading is the
    peak of what comes after. None where /proc does not offer it."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
        peak = next(int(line.split()[1]) * 1024 for line in status.splitlines()
                    if line.startswith("VmHWM:"))
        if reset:
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except (OSError, StopIteration, ValueError):
        return None
    return peak


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank loads: the base (and the dtype it is held in) and the adapter.

    Paths are those of the worker's node (shared storage on a cluster).
    """

    base: str
    adapter: str
    base_dtype: str = "float32"
    #: record the bytes of every in-group collective per call (:meth:`ShardWorker.collectives`;
    #: DeepSpeed then synchronises after each collective, so for measurements only)
    count_collectives: bool = False


class ShardWorker:
    def __init__(self, spec: WorkerSpec, place: RankPlace):
        import psutil

        self.place = place
        self.rss_before_base = psutil.Process().memory_info().rss
        dtype = base_dtype(spec.base_dtype)
        # Both must live as long as the model: the first makes a Hugging Face checkpoint load
        # straight into partitions, the engine owns the hooks that gather them per layer.
        self.loading = partitioned_loading(dtype)
        base = load_base(spec.base, dtype)
        self.engine = partition_base(base.model)
        self.model, self.meta = load_adapter(base, spec.adapter)
        # sums stay on the model's device until the group has reduced them (NCCL needs it)
        self.local = InProcessBackend(self.model, to_cpu=False)
        self.counted: dict[str, list[dict[str, int]]] | None = None
        if spec.count_collectives:
            count_collectives()
            self.counted = {}
        self.peak_rss_after_load = resident_peak(reset=True)

    @contextmanager
    def _counting(self, call: str):
        """Record the collective bytes of one ``call`` (when the spec asks for it)."""
        if self.counted is None:
            yield
            return
        before = collective_bytes()
        yield
        after = collective_bytes()
        self.counted.setdefault(call, []).append(
            {op: total - before.get(op, 0) for op, total in after.items()
             if total != before.get(op, 0)})

    def collectives(self) -> dict[str, list[dict[str, int]]]:
        """Per call kind (``gradient_sums``, ``hvp``), each call's bytes per collective
        operation on this rank (:func:`~eraser_dist.distributed.zero.collective_bytes`);
        empty unless the spec counts collectives."""
        return dict(self.counted or {})

    def info(self) -> dict[str, Any]:
        """The adapter's layout and Θ̂ (CPU float64), and what this rank holds of the base."""
        return {
            "keys": [file_key(n) for n in self.model.names],
            "shapes": [tuple(p.shape) for p in self.model.params],
            "theta": self.model.get_flat().double().cpu(),
            "dtype": self.model.dtype,
            "partition": partition_report(self.model.peft_model),
        }

    def set_theta(self, theta: torch.Tensor) -> None:
        self.local.set_theta(theta)

    def gradient_sums(self, terms: Sequence[tuple[Sequence, torch.Tensor]],
                      batch_size: int) -> torch.Tensor:
        """Σ_i c_i ∇L_i over the group's rows of each term [T, d] (CPU float64)."""
        mine = [rank_rows(rows, coefficients, self.place) for rows, coefficients in terms]
        with self._counting("gradient_sums"):
            return all_reduce_sum(self.local.gradient_sums(mine, batch_size)).cpu()

    def use_hessian_rows(self, rows_and_weights: tuple[Sequence, torch.Tensor]) -> None:
        """Keep this rank's share of the Hessian rows for :meth:`hvp` and
        :meth:`fisher_diagonal`."""
        self.local.use_hessian_rows(*rank_rows(*rows_and_weights, self.place))

    def hvp(self, kind: str, v: torch.Tensor, batch_size: int,
            fd_step: float | None) -> torch.Tensor:
        """Σ_i w_i ∇²L_i v over the group's Hessian rows [d] (CPU, the adapter's dtype: half
        the bytes of float64 on the way back, every CG iteration)."""
        with self._counting("hvp"):
            product = all_reduce_sum(self.local.hvp(kind, v, batch_size, fd_step))
        return product.to(self.model.dtype).cpu()

    def fisher_diagonal(self) -> torch.Tensor:
        """Σ_i w_i ∇L_i ⊙ ∇L_i over the group's Hessian rows [d] (CPU float64)."""
        return all_reduce_sum(self.local.fisher_diagonal()).cpu()

    def losses(self, rows: Sequence, batch_size: int) -> dict[int, float]:
        """L_i(Θ) of the group's rows among ``rows``, by position in ``rows``."""
        picked, padding = rank_share(rows, self.place)
        values = self.local.losses([rows[i] for i in picked + padding], batch_size)
        merged: dict[int, float] = {}
        for part in all_gather(dict(zip(picked, values[: len(picked)].tolist(), strict=True))):
            merged.update(part)
        return merged

    def memory(self) -> dict[str, int]:
        """This rank's bytes: base weights it holds, its process's resident set before the
        base was loaded, now, at its peak (loading included: a checkpoint is read one shard
        at a time into the partitions, a built-in base one module at a time), at its peak
        up to the end of loading, and at its peak since then (the work's own; None where
        the kernel cannot reset the peak)."""
        import resource

        import psutil

        held = sum(p["local_numel"] for p in partition_report(self.model.peft_model)
                   if not p["trainable"]) * self.model.compute_dtype.itemsize
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"base_bytes_held": held, "rss_before_base_bytes": self.rss_before_base,
                "rss_bytes": psutil.Process().memory_info().rss,
                "peak_rss_bytes": peak_kib * 1024,
                "peak_rss_at_load_bytes": self.peak_rss_after_load,
                "peak_rss_since_load_bytes": resident_peak()}
