"""eraser_dist: make a LoRA-adapted LLM unlearn training rows by one influence solve.

The public API::

    from eraser_dist import train, erase, evaluate, EraseArguments

    train("smollm2-135m", "train.parquet", "adapters/v0")
    report = erase("smollm2-135m", "adapters/v0", "train.parquet", "request.json",
                   "adapters/v1")                    # the fast path: EraseArguments()
    report = erase(..., args=EraseArguments(hvp="exact", max_iter=100, tol=1e-4))
    build_index("smollm2-135m", "adapters/v0", "train.parquet", "adapters/v0-index")
    report = erase(..., index="adapters/v0-index")   # starts from the curvature index

Names are imported on first use, so that ``import eraser_dist`` (and ``eraser --help``)
does not load torch. The layout, the maths and the architecture: docs/DESIGN.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "api", "erase": "api", "evaluate": "api", "build_index": "api",
    "LoraArguments": "arguments", "TrainArguments": "arguments",
    "EraseArguments": "arguments", "DistributedArguments": "arguments",
    "IndexArguments": "arguments",
    "ServiceArguments": "arguments",
    "EraseReport": "report",
    "EraseRequest": "core.requests", "parse_request": "core.requests",
    "LossModel": "core.objective",
    "CurvatureBackend": "core.backend",
    "newton_step": "core.influence", "fit_curvature": "core.influence",
    "EraserError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'eraser_dist' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
