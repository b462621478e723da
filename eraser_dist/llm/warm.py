"""A base model held in memory across erases: adapters are switched by their LoRA weights.

Loading a base is the fixed cost of every cold erase (seconds at 135M, minutes at 70B).
:class:`WarmBase` loads it once and keeps one LoRA layout attached to it; an adapter with
that layout (the same ``adapter_config.json`` but for the base's path) is switched in by
copying its LoRA weights into the attached layers, which gives the model a cold
:func:`~eraser_dist.llm.adapters.load_adapter` would give, weight for weight. An adapter
with another layout detaches the old layers (peft's ``unload``) and attaches its own.

Anything that loads adapters for :mod:`eraser_dist.api` takes an :class:`AdapterSource`:
:class:`ColdLoads` (a fresh base each time) or a pool of warm bases
(:class:`eraser_dist.service.engines.EnginePool` of :class:`WarmBase`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import EraserError
from .adapters import (
    PEFT_FILES,
    AdapterMeta,
    adapter_vector,
    check_trained_on,
    load_adapter,
    read_meta,
)
from .models import Base, LoraCausalLM, load_base

# recorded by peft at save time, not part of the layers' layout
_NOT_LAYOUT = ("base_model_name_or_path", "revision", "inference_mode", "peft_version")


class AdapterSource(Protocol):
    """Where an erase gets its model: ``adapter(base, adapter_dir)`` returns the adapter on
    ``base`` as a :class:`LossModel` with its metadata."""

    def adapter(self, base: str, adapter_dir: str | os.PathLike
                ) -> tuple[LoraCausalLM, AdapterMeta]: ...


class ColdLoads:
    """A fresh base per call (what an erase from the command line does), on ``device``."""

    def __init__(self, device: str = "cpu"):
        self.device = device

    def adapter(self, base: str, adapter_dir: str | os.PathLike
                ) -> tuple[LoraCausalLM, AdapterMeta]:
        return load_adapter(load_base(base, device=self.device), adapter_dir)


def lora_layout(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """An adapter's LoRA layout: its ``adapter_config.json`` without what peft records of
    where and when it was saved. Adapters with equal layouts have the same parameters."""
    path = Path(adapter_dir) / PEFT_FILES[0]
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EraserError(f"{path} is unreadable: {err}") from err
    return {k: v for k, v in config.items() if k not in _NOT_LAYOUT}


class WarmBase:
    """One base, loaded once (by ``load``, :func:`load_base` by default), with the layout
    of the last adapter asked for attached: the one-process engine of
    :class:`~eraser_dist.service.engines.EnginePool`."""

    base_loads = 1  # loaded once, when made

    def __init__(self, name: str, device: str = "cpu",
                 load: Callable[..., Base] = load_base):
        self.base: Base | None = load(name, device=device)
        self.model: LoraCausalLM | None = None
        self.layout: dict[str, Any] | None = None

    def close(self) -> None:
        """Drop the base and its adapter layers: their memory goes as soon as no caller
        holds the model either."""
        self.base = self.model = self.layout = None

    def adapter(self, adapter_dir: str | os.PathLike) -> tuple[LoraCausalLM, AdapterMeta]:
        """``adapter_dir`` on this base, as :func:`load_adapter` would load it cold."""
        layout = lora_layout(adapter_dir)
        if self.model is None or layout != self.layout:
            if self.model is not None:  # detach the other layout's layers, keep the base
                self.base.model = self.model.peft_model.unload()
                self.model = self.layout = None
            self.model, meta = load_adapter(self.base, adapter_dir)
            self.layout = layout
            return self.model, meta
        meta = read_meta(adapter_dir)
        check_trained_on(meta, self.base, adapter_dir)
        self.model.set_flat(adapter_vector(self.model, adapter_dir))
        if meta.max_length != self.model.max_length:  # tokens are cut at max_length
            self.model = LoraCausalLM(self.model.peft_model, self.base.tokenizer,
                                      meta.max_length)
        return self.model, meta
