"""What one rank of a worker group does, as a plain class (the Ray actor only hosts it).

A :class:`ShardWorker` runs inside a process that has joined its group's torch.distributed
group. It loads the base, partitions it with ZeRO-3 over the group, attaches the adapter
(whole on every rank), reads the training set itself, and answers sums over its share of
the rows: gradients (for b), HVPs (for CG) and losses. Every sum is all-reduced within the
group, so each rank returns the group's total; the caller keeps rank 0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..arguments import EraseArguments
from ..core.curvature import fisher_diagonal, hessian_vector_product
from ..core.influence import hessian_subset, rhs_terms
from ..core.objective import gradient_sum, loss_values
from ..core.requests import apply_requests, parse_request
from ..data import read_examples
from ..llm.adapters import check_fitted_on, file_key, load_adapter
from ..llm.models import load_base
from .sharding import RankPlace, rank_rows
from .zero import (
    all_gather,
    all_reduce_sum,
    base_dtype,
    check_hvp_supported,
    partition_base,
    partition_report,
    partitioned_loading,
)


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank loads: the base (and its dtype), the adapter and the training set.

    Paths are those of the worker's node (shared storage on a cluster).
    """

    base: str
    adapter: str
    data: str
    base_dtype: str = "float32"


class ShardWorker:
    def __init__(self, spec: WorkerSpec, place: RankPlace):
        self.place = place
        dtype = base_dtype(spec.base_dtype)
        # Both must live as long as the model: the first makes a Hugging Face checkpoint load
        # straight into partitions, the engine owns the hooks that gather them per layer.
        self.loading = partitioned_loading(dtype)
        base = load_base(spec.base, dtype)
        self.engine = partition_base(base.model)
        self.model, self.meta = load_adapter(base, spec.adapter)
        self.examples = read_examples(spec.data)
        check_fitted_on(self.meta, spec.adapter, spec.data, self.examples)
        self.args = EraseArguments()
        self.edited = None

    def info(self) -> dict[str, Any]:
        """The adapter's layout and Θ̂ (CPU float64), and what this rank holds of the base."""
        return {
            "keys": [file_key(n) for n in self.model.names],
            "shapes": [tuple(p.shape) for p in self.model.params],
            "theta": self.model.get_flat().double().cpu(),
            "dtype": self.model.dtype,
            "weight_decay": self.meta.weight_decay,
            "n_train": len(self.examples),
            "partition": partition_report(self.model.peft_model),
        }

    def prepare(self, requests: list[dict[str, Any]], args: EraseArguments) -> dict[str, Any]:
        """Build this rank's rows for a batch of requests (dicts, as in request files): its
        share of the rows of each of b's terms and of H's rows."""
        check_hvp_supported(args.hvp)
        self.args = args
        self.edited = apply_requests([parse_request(r) for r in requests], self.examples)
        terms, removed = rhs_terms(self.edited, args.gradient)
        self.rhs_rows = [rank_rows(rows, coefficients, self.place)
                         for rows, coefficients in terms]
        rows, weights = hessian_subset(self.edited, args.curvature, args.hessian_samples,
                                       args.seed)
        self.hessian_rows = rank_rows(rows, weights, self.place)
        return {"removed_weights": removed,
                "weight_after": self.edited.weight_after,
                "hessian_rows": len(rows), "hessian_weight": float(weights.sum())}

    def _edited(self):
        if self.edited is None:
            raise RuntimeError("prepare() a request first")
        return self.edited

    def rhs_gradients(self) -> torch.Tensor:
        """Σ_i c_i G_i over the group's rows of each of b's terms [T, d] (as
        :func:`~eraser_dist.core.influence.rhs_terms`; CPU, the adapter's dtype)."""
        self._edited()
        g = torch.stack([gradient_sum(self.model, *part, self.args.batch_size)
                         for part in self.rhs_rows])
        return all_reduce_sum(g).cpu()

    def hvp(self, kind: str, v: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i ∇²L_i v over the group's Hessian rows [d] (CPU, the adapter's dtype)."""
        self._edited()
        product = hessian_vector_product(kind, self.model, *self.hessian_rows,
                                         self.args.batch_size, self.args.fd_step)
        return all_reduce_sum(product(v)).cpu()

    def fisher_diagonal(self) -> torch.Tensor:
        """Σ_i w_i ∇L_i ⊙ ∇L_i over the group's Hessian rows [d] (CPU float64)."""
        self._edited()
        return all_reduce_sum(fisher_diagonal(self.model, *self.hessian_rows)).cpu()

    def memory(self) -> dict[str, int]:
        """This rank's bytes: base weights it holds, its process's resident set now and peak.

        The peak includes loading: the base is read whole, then partitioned.
        """
        import resource

        import psutil

        held = sum(p["local_numel"] for p in partition_report(self.model.peft_model)
                   if not p["trainable"]) * self.model.compute_dtype.itemsize
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"base_bytes_held": held, "rss_bytes": psutil.Process().memory_info().rss,
                "peak_rss_bytes": peak_kib * 1024}

    def losses(self, ids: list[str]) -> dict[str, float]:
        """L_i(Θ) of the group's rows among ``ids`` (all ranks of the group must call)."""
        wanted = set(ids)
        rows = [e for e in self.examples if e.id in wanted]
        mine, weights = rank_rows(rows, torch.ones(len(rows)), self.place)
        values = loss_values(self.model, mine, self.args.batch_size)
        local = {r.id: float(v) for r, v, w in zip(mine, values, weights, strict=True) if w > 0}
        merged: dict[str, float] = {}
        for part in all_gather(local):
            merged.update(part)
        return merged
