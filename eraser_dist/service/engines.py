"""The warm engines of ``eraser serve``: one base held per base model, across batches.

A batch worker asks :class:`EnginePool` for an adapter on its base; the pool keeps a
:class:`~eraser_dist.llm.warm.WarmBase` per base, so the base is loaded once and the
adapters of all tenants on it are switched in by their LoRA weights. The erase, the index
build and the certificate's losses of a batch all use that one model.

- ``max_engines`` bounds the bases held: a batch on another base first releases the one
  used longest ago (batches run one at a time, so none is in use then).
- ``idle_seconds``: a base unused that long is released (:meth:`EnginePool.release_idle`,
  called by the worker between batches), so an idle service gives its memory back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ..llm.adapters import AdapterMeta
from ..llm.models import Base, LoraCausalLM, load_base
from ..llm.warm import WarmBase

log = logging.getLogger(__name__)


class EnginePool:
    """Warm bases by name (an :class:`~eraser_dist.llm.warm.AdapterSource`). ``base_loads``
    counts the bases loaded, ``releases`` those released. ``load`` and ``clock`` are
    :func:`load_base` and :func:`time.monotonic` unless a test sets them."""

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
        self.base_loads = 0
        self.releases = 0

    def adapter(self, base: str, adapter_dir: str | os.PathLike
                ) -> tuple[LoraCausalLM, AdapterMeta]:
        """``adapter_dir`` on the warm ``base``, loading the base first if none is held."""
        engine = self.engines.get(base)
        if engine is None:
            while len(self.engines) >= self.max_engines:
                self.release(min(self.used, key=self.used.__getitem__), "the budget")
            engine = self.engines[base] = WarmBase(base, self.device, self.load)
            self.base_loads += 1
            log.info("base %s loaded (%d held)", base, len(self.engines))
        self.used[base] = self.clock()
        return engine.adapter(adapter_dir)

    def release(self, base: str, why: str) -> None:
        """Drop the warm ``base`` (its memory goes with the last reference)."""
        del self.engines[base], self.used[base]
        self.releases += 1
        log.info("base %s released (%s)", base, why)

    def release_idle(self) -> list[str]:
        """Release every base unused for ``idle_seconds``; returns their names."""
        now = self.clock()
        idle = [b for b, used in self.used.items() if now - used >= self.idle_seconds]
        for base in idle:
            self.release(base, f"idle {self.idle_seconds:g} s")
        return idle

    def held(self) -> list[str]:
        return sorted(self.engines)
