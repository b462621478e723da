"""What ``eraser serve`` tells its operator: counters of the batch worker and the queue.

:class:`ServeStats` counts what one serve process did (batches, requests done and failed,
seconds by phase); the serve records it in the registry with its bases loaded and held
(:meth:`Registry.record_serve`). :class:`ServiceCollector` reads that record and the queue at
each scrape for prometheus-client, which writes the Prometheus text format of ``GET
/metrics``. Reading the registry, not the serve's memory, is what lets an API served by
other processes (Ray Serve replicas) and ``eraser queue --summary`` report the same.

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

from collections.abc import Iterator
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

    def counters(self, base_loads: int, engines_held: list[str]) -> dict[str, Any]:
        """The counters as :meth:`Registry.record_serve` keeps them; ``engines_held`` names
        the bases held warm."""
        return {"batches": self.batches, "requests_done": self.requests_done,
                "requests_failed": self.requests_failed, "base_loads": base_loads,
                "engines_held": engines_held, "seconds_by_phase": dict(self.seconds_by_phase)}

    def summary(self, base_loads: int) -> dict[str, Any]:
        """The ``drained`` summary of ``serve --drain --log-json``."""
        return {"event": "drained", "batches": self.batches,
                "requests_done": self.requests_done, "requests_failed": self.requests_failed,
                "base_loads": base_loads,
                "seconds_by_phase": {p: round(s, 6) for p, s in self.seconds_by_phase.items()}}


class ServiceCollector(Collector):
    """The service's metrics, read from the registry at each scrape, so that every process
    that serves the API reports the same: the queue from the journal (every process's
    submits), and the serve process's counters as it last recorded them
    (:meth:`Registry.record_serve`)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("eraser_queue_depth", "requests waiting, by state, tenant "
                                  "and adapter", labels=["state", "tenant", "adapter"])
        for row in self.registry.query(
                "SELECT state, tenant, adapter, COUNT(*) AS n FROM requests WHERE state IN "
                "('pending', 'running') GROUP BY state, tenant, adapter"):
            depth.add_metric([row["state"], row["tenant"], row["adapter"]], row["n"])
        yield depth
        serve = self.registry.serve_state()
        if serve is None:  # no serve has run on this root
            return
        yield GaugeMetricFamily("eraser_serve_running", "1 while a serve process works on "
                                "this root (its record says so and its heartbeat is recent)",
                                value=int(serve["state"] == "serving"))
        yield CounterMetricFamily("eraser_batches", "batches committed by the serve",
                                  value=serve["batches"])
        yield CounterMetricFamily("eraser_requests_done", "requests done by the serve",
                                  value=serve["requests_done"])
        yield CounterMetricFamily("eraser_requests_failed", "requests failed by the serve",
                                  value=serve["requests_failed"])
        yield CounterMetricFamily("eraser_base_loads", "bases loaded by the serve",
                                  value=serve["base_loads"])
        yield GaugeMetricFamily("eraser_engines_held", "bases held warm",
                                value=len(serve["engines_held"]))
        seconds = CounterMetricFamily("eraser_batch_seconds", "seconds of committed batches "
                                      "by phase", labels=["phase"])
        for phase, total in serve["seconds_by_phase"].items():
            seconds.add_metric([phase], total)
        yield seconds


def metrics_text(collector: ServiceCollector) -> bytes:
    """The Prometheus text exposition of ``collector``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
