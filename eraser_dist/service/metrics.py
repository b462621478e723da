"""What ``eraser serve`` tells its operator: counters of the batch worker and the queue.

:class:`ServeStats` counts what one serve process did (batches, requests done and failed,
bases loaded, seconds by phase). :class:`ServiceCollector` exposes it, with the queue read
from the journal at each scrape, to prometheus-client, which writes the Prometheus text
format of ``GET /metrics``.

A batch's phases, which add up to its wall time:

- ``index``: finding or building the adapter's curvature index;
- ``load``: the erase's own set-up (the model from the warm base, or a base loaded cold;
  the training set read and checked);
- ``b``: the right-hand side, the gradients of the changed rows;
- ``solve``: the (preconditioned) CG solve;
- ``step_control``: the step control's forward passes (:mod:`eraser_dist.core.step_control`);
- ``certificate``: the losses before and after on the request's and held-out rows;
- ``publish``: the new adapter and training-set versions written, the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .registry import Registry

BATCH_PHASES = ("index", "load", "b", "solve", "step_control", "certificate", "publish")


@dataclass
class ServeStats:
    """What this serve process did (the last batch's phases are in the registry)."""

    batches: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    seconds_by_phase: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(BATCH_PHASES, 0.0))

    def committed(self, requests: int, seconds: dict[str, float]) -> None:
        self.batches += 1
        self.requests_done += requests
        for phase in BATCH_PHASES:
            self.seconds_by_phase[phase] += seconds[phase]

    def summary(self, base_loads: int) -> dict[str, Any]:
        """The ``drained`` summary of ``serve --drain --log-json``."""
        return {"event": "drained", "batches": self.batches,
                "requests_done": self.requests_done, "requests_failed": self.requests_failed,
                "base_loads": base_loads,
                "seconds_by_phase": {p: round(s, 6) for p, s in self.seconds_by_phase.items()}}


class ServiceCollector(Collector):
    """The service's metrics, read at each scrape: the queue from the journal (every
    process's submits), and, with ``stats`` and ``engines_held`` of the serve process, its
    counters."""

    def __init__(self, registry: Registry, stats: ServeStats | None = None,
                 base_loads: Callable[[], int] = lambda: 0,
                 engines_held: Callable[[], int] = lambda: 0):
        self.registry = registry
        self.stats = stats
        self.base_loads = base_loads
        self.engines_held = engines_held

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("eraser_queue_depth", "requests waiting, by state, tenant "
                                  "and adapter", labels=["state", "tenant", "adapter"])
        for row in self.registry.query(
                "SELECT state, tenant, adapter, COUNT(*) AS n FROM requests WHERE state IN "
                "('pending', 'running') GROUP BY state, tenant, adapter"):
            depth.add_metric([row["state"], row["tenant"], row["adapter"]], row["n"])
        yield depth
        if self.stats is None:
            return
        yield CounterMetricFamily("eraser_batches", "batches committed by this serve",
                                  value=self.stats.batches)
        yield CounterMetricFamily("eraser_requests_done", "requests done by this serve",
                                  value=self.stats.requests_done)
        yield CounterMetricFamily("eraser_requests_failed", "requests failed by this serve",
                                  value=self.stats.requests_failed)
        yield CounterMetricFamily("eraser_base_loads", "bases loaded by this serve",
                                  value=self.base_loads())
        yield GaugeMetricFamily("eraser_engines_held", "bases held warm",
                                value=self.engines_held())
        seconds = CounterMetricFamily("eraser_batch_seconds", "seconds of committed batches "
                                      "by phase", labels=["phase"])
        for phase, total in self.stats.seconds_by_phase.items():
            seconds.add_metric([phase], total)
        yield seconds


def metrics_text(collector: ServiceCollector) -> bytes:
    """The Prometheus text exposition of ``collector``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
