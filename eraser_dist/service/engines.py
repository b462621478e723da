"""The warm engines of ``eraser serve``: one base held per base model, across batches.

A batch worker asks :class:`EnginePool` for an adapter on its base; the pool keeps a
:class:`~eraser_dist.llm.warm.WarmBase` per base, so the base is loaded once and the
adapters of all tenants on it are switched in by their LoRA weights. The erase, the index
build and the certificate's losses of a batch all use that one model.

- ``max_engines`` bounds the bases held, and the batches run side by side (one per base):
  a batch on another base first releases the idle base used longest ago.
- ``idle_seconds``: a base unused that long is released (:meth:`EnginePool.release_idle`,
  called by the worker between batches), so an idle service gives its memory back; the
  worker releases them all when its serve returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import EraserError
from ..llm.adapters import AdapterMeta
from ..llm.models import Base, LoraCausalLM, load_base
from ..llm.warm import WarmBase

log = logging.getLogger(__name__)


class EnginePool:
    """Warm bases by name (an :class:`~eraser_dist.llm.warm.AdapterSource`), safe to share
    between the serve's batch threads. ``base_loads`` counts the bases loaded, ``releases``
    those released. ``load`` and ``clock`` are :func:`load_base` and :func:`time.monotonic`
    unless a test sets them.

    A batch holds its base (:meth:`hold`) while it runs: a held base is never released,
    neither for the budget nor as idle. The worker runs at most one batch per base at a
    time, so a base's model is used by one thread at a time; the pool's lock guards only
    its own tables, and a base loads outside it, while other batches go on."""

    def __init__(self, max_engines: int = 1, idle_seconds: float = 600.0,
                 device: str = "cpu", load: Callable[..., Base] = load_base,
                 clock: Callable[[], float] = time.monotonic):
        self.max_engines = max_engines
        self.idle_seconds = idle_seconds
        self.device = device
        self.load = load
        self.clock = clock
        self.engines: dict[str, WarmBase] = {}
        self.used: dict[str, float] = {}
        self.holds: dict[str, int] = {}
        self.loading = 0
        self.base_loads = 0
        self.releases = 0
        self.lock = threading.Lock()

    @contextmanager
    def hold(self, base: str) -> Iterator[None]:
        """Keep ``base`` from being released while the block runs (a batch on it)."""
        with self.lock:
            self.holds[base] = self.holds.get(base, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.holds[base] -= 1
                if not self.holds[base]:
                    del self.holds[base]

    def adapter(self, base: str, adapter_dir: str | os.PathLike
                ) -> tuple[LoraCausalLM, AdapterMeta]:
        """``adapter_dir`` on the warm ``base``, loading the base first if none is held."""
        with self.lock:
            engine = self.engines.get(base)
            if engine is None:
                while len(self.engines) + self.loading >= self.max_engines:
                    free = [b for b in self.engines if b not in self.holds]
                    if not free:
                        raise EraserError(f"no room for base {base}: all {self.max_engines} "
                                          "engines are held by running batches")
                    self.release(min(free, key=self.used.__getitem__), "the budget")
                self.loading += 1
        loading = engine is None
        if loading:
            try:
                engine = WarmBase(base, self.device, self.load)
            finally:
                with self.lock:
                    self.loading -= 1
        with self.lock:
            if loading:
                self.engines[base] = engine
                self.base_loads += 1
                log.info("base %s loaded (%d held)", base, len(self.engines))
            self.used[base] = self.clock()
        return engine.adapter(adapter_dir)

    def release(self, base: str, why: str) -> None:
        """Drop the warm ``base`` (its memory goes with the last reference); the caller
        holds the lock."""
        del self.engines[base], self.used[base]
        self.releases += 1
        log.info("base %s released (%s)", base, why)

    def release_idle(self) -> list[str]:
        """Release every base unused for ``idle_seconds`` and not held; returns their
        names."""
        with self.lock:
            now = self.clock()
            idle = [b for b, used in self.used.items()
                    if now - used >= self.idle_seconds and b not in self.holds]
            for base in idle:
                self.release(base, f"idle {self.idle_seconds:g} s")
        return idle

    def release_all(self, why: str) -> None:
        with self.lock:
            for base in list(self.engines):
                self.release(base, why)

    def held(self) -> list[str]:
        with self.lock:
            return sorted(self.engines)
