"""The warm engines of ``eraser serve``: one engine per base model, held across batches.

A batch worker asks :class:`EnginePool` for the engine of its adapter's base. An engine is
what holds a base: a :class:`~eraser_dist.llm.warm.WarmBase` in this process, or, with
``--workers``, an :class:`actors.driver.WarmGroups` (an aggregator and its G×K worker
groups, each rank holding its ZeRO-3 partition). The pool starts an engine at its base's
first batch and keeps it, so the base is loaded once and the adapters of all tenants on it
are switched in by their LoRA weights. The erase, the index build and the certificate's
losses of a batch all use that one engine.

- ``max_engines`` bounds the engines held, and the batches run side by side (one per
  base): a batch on another base first releases the idle engine used longest ago.
- ``idle_seconds``: an engine unused that long is released (:meth:`EnginePool.release_idle`,
  called by the worker between batches), so an idle service gives its memory (or its
  cluster's CPUs and GPUs) back; the worker releases them all when its serve returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ..errors import EraserError
from ..llm.adapters import AdapterMeta
from ..llm.models import LoraCausalLM

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What holds one base warm. ``base_loads``: the times it loaded the base (a
    :class:`~eraser_dist.llm.warm.WarmBase` once; worker groups at every start);
    ``close`` gives its memory, or its cluster resources, back."""

    base_loads: int

    def close(self) -> None: ...


E = TypeVar("E", bound=Engine)


@dataclass
class _HeldEngine(Generic[E]):
    """An engine in :class:`EnginePool`, and when a batch last asked for it."""

    engine: E
    used: float


class EnginePool(Generic[E]):
    """Engines by base name, started by ``start(base)``, safe to share between the serve's
    batch threads. ``base_loads`` counts the bases loaded by every engine it ever held,
    ``releases`` the engines released. ``clock`` is :func:`time.monotonic` unless a test
    sets it.

    A batch holds its base (:meth:`hold`) while it runs: a held engine is never released,
    neither for the budget nor as idle. The worker runs at most one batch per base at a
    time, so an engine is used by one thread at a time; the pool's lock guards only its own
    tables, and an engine starts outside it, while other batches go on."""

    def __init__(self, start: Callable[[str], E], max_engines: int = 1,
                 idle_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.start = start
        self.max_engines = max_engines
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.engines: dict[str, _HeldEngine[E]] = {}
        self.holds: dict[str, int] = {}
        self.starting = 0
        self.released_loads = 0  # base loads of the engines already released
        self.releases = 0
        self.lock = threading.Lock()

    @contextmanager
    def hold(self, base: str) -> Iterator[None]:
        """Keep ``base``'s engine from being released while the block runs (a batch on
        it)."""
        with self.lock:
            self.holds[base] = self.holds.get(base, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.holds[base] -= 1
                if not self.holds[base]:
                    del self.holds[base]

    def engine(self, base: str) -> E:
        """The engine of ``base``, started first if none is held."""
        with self.lock:
            held = self.engines.get(base)
            if held is not None:
                held.used = self.clock()
                return held.engine
            while len(self.engines) + self.starting >= self.max_engines:
                free = [b for b in self.engines if b not in self.holds]
                if not free:
                    raise EraserError(f"no room for base {base}: all {self.max_engines} "
                                      "engines are held by running batches")
                self.release(min(free, key=lambda b: self.engines[b].used), "the budget")
            self.starting += 1
        try:
            engine = self.start(base)
        finally:
            with self.lock:
                self.starting -= 1
        with self.lock:
            self.engines[base] = _HeldEngine(engine, self.clock())
            log.info("engine of base %s started (%d held)", base, len(self.engines))
        return engine

    def adapter(self, base: str, adapter_dir: str | os.PathLike
                ) -> tuple[LoraCausalLM, AdapterMeta]:
        """``adapter_dir`` on the warm ``base``: a pool of
        :class:`~eraser_dist.llm.warm.WarmBase` is an
        :class:`~eraser_dist.llm.warm.AdapterSource` for :mod:`eraser_dist.api`."""
        return self.engine(base).adapter(adapter_dir)

    @property
    def base_loads(self) -> int:
        with self.lock:
            return self.released_loads + sum(
                held.engine.base_loads for held in self.engines.values())

    def release(self, base: str, why: str) -> None:
        """Close ``base``'s engine and drop it; the caller holds the lock."""
        engine = self.engines.pop(base).engine
        engine.close()
        self.released_loads += engine.base_loads
        self.releases += 1
        log.info("engine of base %s released (%s)", base, why)

    def release_idle(self) -> list[str]:
        """Release every engine unused for ``idle_seconds`` and not held; returns their
        bases."""
        with self.lock:
            now = self.clock()
            idle = [b for b, held in self.engines.items()
                    if now - held.used >= self.idle_seconds and b not in self.holds]
            for base in idle:
                self.release(base, f"idle {self.idle_seconds:g} s")
        return idle

    def release_all(self, why: str) -> None:
        """Release every engine not held: after a Ctrl-C, batches still running in other
        threads keep theirs (closing worker groups under one would fail its requests), and
        the process's exit takes them."""
        with self.lock:
            for base in [b for b in self.engines if b not in self.holds]:
                self.release(base, why)

    def held(self) -> list[str]:
        with self.lock:
            return sorted(self.engines)
