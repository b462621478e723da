"""Connecting to a Ray cluster, or starting a local one, with room for the worker ranks."""

from __future__ import annotations

import os

import ray

from eraser_dist.errors import EraserError


def connect(address: str | None, ranks: int, cpus_per_rank: float, gpus_per_rank: float) -> None:
    """Join ``address``, reuse this process's connection, or start a private local cluster.

    A local cluster gets at least as many logical CPUs as the ranks ask for, so that
    2 groups × 2 ranks also run on a 2-core laptop (slowly: they share the cores). Refuses a
    cluster that can never place the ranks instead of waiting for it forever.
    """
    if not ray.is_initialized():
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address is None:
            cpus = max(os.cpu_count() or 1, int(-(-ranks * cpus_per_rank // 1)))
            # "local": a cluster of this process's own, never one that `ray start` or a
            # stale session left on the machine (joining it would ignore num_cpus)
            ray.init(address="local", num_cpus=cpus, **quiet)
        else:
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise EraserError(f"cannot connect to the Ray cluster at {address}: {err}") from err
    have = ray.cluster_resources()
    for resource, per_rank in (("CPU", cpus_per_rank), ("GPU", gpus_per_rank)):
        need = ranks * per_rank
        if need > have.get(resource, 0.0) + 1e-9:
            raise EraserError(
                f"the Ray cluster has {have.get(resource, 0.0):g} {resource}(s); "
                f"{ranks} ranks × {per_rank:g} need {need:g}"
            )
