"""Serving replicas: a copy of base + adapter that takes new versions as deltas.

A replica holds one adapter version (named by :func:`eraser_dist.llm.adapters.adapter_version`).
An erase publishes ΔΘ beside the new adapter; :func:`broadcast_delta` puts it in the object
store once and every replica adds it, refusing a delta computed from another version than
the one it holds. Θ + ΔΘ is rounded exactly as the publisher rounds it, so a replica
answers as the published adapter does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
import torch

from eraser_dist.core.objective import loss_values
from eraser_dist.data import Example
from eraser_dist.errors import EraserError
from eraser_dist.llm.adapters import adapter_version, add_delta, file_key, load_adapter, read_delta
from eraser_dist.llm.models import load_base


@ray.remote
class ServingReplica:
    def __init__(self, base: str, adapter_dir: str, threads: int = 1):
        torch.set_num_threads(threads)
        self.model, _ = load_adapter(load_base(base), adapter_dir)
        self.version = adapter_version(adapter_dir)

    def current_version(self) -> str:
        return self.version

    def apply_delta(self, update: tuple[dict[str, torch.Tensor], str, str]) -> str:
        """Add ΔΘ (per tensor) if it was computed from this replica's version."""
        delta, parent, child = update
        if parent != self.version:
            raise EraserError(f"delta is for adapter version {parent}, this replica holds "
                              f"{self.version}")
        keys = [file_key(n) for n in self.model.names]
        current = {k: p.detach() for k, p in zip(keys, self.model.params, strict=True)}
        updated = add_delta(current, delta)
        with torch.no_grad():
            for k, p in zip(keys, self.model.params, strict=True):
                p.copy_(updated[k])
        self.version = child
        return self.version

    def losses(self, rows: Sequence[dict[str, str]], batch_size: int = 8) -> list[float]:
        """L_i of rows given as {id, query, response} under the current version."""
        examples = [Example(r["id"], r["query"], r["response"]) for r in rows]
        return loss_values(self.model, examples, batch_size).tolist()

    def generate(self, query: str, max_new_tokens: int = 32) -> str:
        return self.model.generate(query, max_new_tokens)


def broadcast_delta(replicas: Sequence[Any], adapter_dir: str) -> list[str]:
    """Send the ΔΘ published in ``adapter_dir`` to every replica (one object-store copy);
    returns the version each replica holds afterwards."""
    update = ray.put(read_delta(adapter_dir))
    try:
        return ray.get([r.apply_delta.remote(update) for r in replicas])
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, EraserError):
            raise err.cause from None
        raise


class ReplicaFleet:
    """Serving replicas of every adapter of a service, kept at its current version.

    Used as the batch worker's ``on_published`` hook: after each committed batch the new
    version's ΔΘ is broadcast to that adapter's replicas.
    """

    def __init__(self, replicas: dict[tuple[str, str], list[Any]]):
        self.replicas = replicas

    @classmethod
    def start(cls, registry, per_adapter: int, threads: int = 1) -> ReplicaFleet:
        """``per_adapter`` replicas of the current version of every registered adapter."""
        replicas = {}
        for tenant in registry.tenants():
            for info in registry.adapters(tenant):
                version = registry.adapter(tenant, info["name"])
                replicas[(tenant, version.name)] = [
                    ServingReplica.remote(version.base, str(version.path), threads)
                    for _ in range(per_adapter)]
        return cls(replicas)

    def __call__(self, version) -> list[str]:
        """Broadcast a newly committed adapter version (an ``AdapterVersion``)."""
        return broadcast_delta(self.replicas.get((version.tenant, version.name), []),
                               str(version.path))
