"""Curvature indexes on disk: the low-rank curvature of one adapter version, built once and
used by every erase of that version and of the versions erased from it.

A directory holds ``curvature_index.safetensors`` (the scaling D [d], the Ritz values θ [k],
the vectors V [k, d] in float32, and Θ [d] of the version it was built on) and
``curvature_index.json`` (:class:`IndexMeta`: what it is keyed by and how it was built). It
is published atomically, like an adapter. An index fits an adapter when the base
fingerprints agree and the index's version is the adapter itself or one of the versions the
adapter was erased from (``lineage.chain`` in ``eraser_adapter.json``), with the data that
version was fitted on. Anything else is refused with one line, and so is a file that is
missing or damaged. The maths: :mod:`eraser_dist.core.spectral`; docs/DESIGN.md §7.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..arguments import EraseArguments
from ..core.spectral import LowRankCurvature
from ..errors import EraserError
from ..files import atomic_write, publish_folder
from .adapters import AdapterMeta, adapter_version, check_output_dir, write_json

log = logging.getLogger(__name__)

INDEX_TENSORS = "curvature_index.safetensors"
INDEX_META = "curvature_index.json"
INDEX_FORMAT = 2
INDEX_SOLVE = {"tol": 0.05, "max_iter": 4}
"""The solve budget of an erase from an index when the user sets none (docs/RESULTS.md,
"Curvature index")."""


@dataclass
class IndexMeta:
    """What an index is keyed by (base fingerprint, adapter version, data sha256) and how it
    was built: the erase settings that define its matrix (``hvp``, ``hessian_samples``,
    ``seed``, ``damping``, ``batch_size``, ``fd_step``), the Ritz pairs it holds
    (``rank``), their values (the scaled matrix's spectrum, largest first), the product's
    measured ``asymmetry`` (pairs below twice it were dropped), the products made (Lanczos
    steps) and the seconds; ``rebuild_growth`` as
    :class:`~eraser_dist.arguments.IndexArguments`. ``fresh_residual``: the first-step
    residual of the first erase on the index's own version, recorded by that erase (None
    until then); later erases are judged against it (:meth:`rebuild_advised`)."""

    base: str
    base_fingerprint: str
    adapter_version: str
    data_sha256: str
    n_train: int
    dim: int
    rank: int
    hvp: str
    hessian_rows: int
    hessian_samples: int | None
    seed: int
    damping: float
    batch_size: int
    fd_step: float | None
    ritz_values: list[float]
    asymmetry: float
    products: int
    seconds: float
    rebuild_growth: float
    fresh_residual: float | None = None
    format: int = INDEX_FORMAT

    def rebuild_advised(self, first_residual: float) -> bool:
        """Whether an erase whose first step from this index had relative residual
        ``first_residual`` should have had a fresh index: its residual is above
        ``rebuild_growth`` times the index's fresh one, or above 1 (the step is then worse
        than starting from zero). The bar is relative because the first residual's level
        depends on the index's rank and on the request, not only on how stale the index is
        (0.95-0.97 on the demo's fresh rank-8 index; docs/RESULTS.md)."""
        bar = 1.0 if self.fresh_residual is None else min(
            1.0, self.rebuild_growth * self.fresh_residual)
        return first_residual > bar

    def erase_arguments(self, **given: Any) -> EraseArguments:
        """How an erase from this index solves, unless ``given`` says otherwise: on the
        matrix the index was built on, and only as far as ``INDEX_SOLVE`` (the index's step
        is most of the work; docs/RESULTS.md, "Curvature index")."""
        own = {"hvp": self.hvp, "hessian_samples": self.hessian_samples, "seed": self.seed,
               "damping": self.damping, "batch_size": self.batch_size,
               "fd_step": self.fd_step, **INDEX_SOLVE}
        return EraseArguments(**{**own, **given})


@dataclass
class CurvatureIndex:
    """An index in memory: its meta, its preconditioner and Θ [d] of its version."""

    meta: IndexMeta
    curvature: LowRankCurvature
    theta: torch.Tensor


def save_index(index: CurvatureIndex, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Publish an index directory atomically (refusing an existing ``out`` without
    ``overwrite``)."""
    from safetensors.torch import save_file

    tensors = {"scaling": index.curvature.scaling.double().contiguous(),
               "values": index.curvature.values.double().contiguous(),
               "vectors": index.curvature.vectors.float().contiguous(),
               "theta": index.theta.double().contiguous()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / INDEX_TENSORS), metadata={"format": str(INDEX_FORMAT)})
        write_json(tmp / INDEX_META, asdict(index.meta))

    return publish_folder(check_output_dir(out, overwrite), write, overwrite)


def record_fresh_residual(path: str | os.PathLike, meta: IndexMeta, residual: float) -> None:
    """Record ``residual``, the first-step residual of an erase on the index's own version,
    as the index's ``fresh_residual`` (its meta file is replaced atomically). An index that
    cannot be written (a read-only copy) is left as it is, with a warning: the record only
    sharpens :meth:`IndexMeta.rebuild_advised`."""
    meta.fresh_residual = residual
    target = Path(path) / INDEX_META

    def write(tmp: Path) -> None:
        write_json(tmp, asdict(meta))
        tmp.chmod(target.stat().st_mode & 0o777)  # as readable as the meta it replaces

    try:
        atomic_write(target, write)
    except OSError as err:
        log.warning("could not record the fresh residual in curvature index %s: %s", path, err)


def read_index_meta(path: str | os.PathLike) -> IndexMeta:
    """An index's meta alone (no tensors); a missing, foreign or damaged one is refused."""
    path = Path(path)
    if not path.is_dir():
        raise EraserError(f"curvature index {path} does not exist (build one with "
                          "`eraser index`)")
    for name in (INDEX_META, INDEX_TENSORS):
        if not (path / name).is_file():
            raise EraserError(f"{path} is not a curvature index: {name} is missing")
    try:
        raw = json.loads((path / INDEX_META).read_text(encoding="utf-8"))
        known = {f.name for f in fields(IndexMeta)}
        meta = IndexMeta(**{k: v for k, v in raw.items() if k in known})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as err:
        raise EraserError(f"{path / INDEX_META} is damaged: {err}") from err
    if meta.format != INDEX_FORMAT:
        raise EraserError(f"{path} has index format {meta.format}; this version reads "
                          f"{INDEX_FORMAT}: rebuild it with `eraser index`")
    return meta


def load_index(path: str | os.PathLike) -> CurvatureIndex:
    """Read an index directory; a missing, foreign or damaged one is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_index_meta(path)
    path = Path(path)
    try:
        tensors = load_file(str(path / INDEX_TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise EraserError(f"{path / INDEX_TENSORS} is damaged: {err}") from err
    expected = {"scaling": (meta.dim,), "values": (meta.rank,), "vectors": (meta.rank, meta.dim),
                "theta": (meta.dim,)}
    for name, shape in expected.items():
        tensor = tensors.get(name)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise EraserError(f"{path / INDEX_TENSORS} is damaged: {name!r} is {found}, "
                              f"{INDEX_META} says {shape}")
        if not torch.isfinite(tensor).all():
            raise EraserError(f"{path / INDEX_TENSORS} is damaged: {name!r} is not finite")
    if not (tensors["scaling"] > 0).all() or not (tensors["values"] > 0).all():
        raise EraserError(f"{path / INDEX_TENSORS} is damaged: its scaling and Ritz values "
                          "must be positive")
    curvature = LowRankCurvature(tensors["scaling"], tensors["values"], tensors["vectors"],
                                 meta.products, meta.asymmetry)
    return CurvatureIndex(meta, curvature, tensors["theta"])


@dataclass(frozen=True)
class _HeldIndex:
    """An index in :class:`IndexCache`, with the (inode, size, mtime) of its two files as
    read, and when it was last asked for."""

    tensors_key: tuple[int, ...]
    meta_key: tuple[int, ...]
    index: CurvatureIndex
    used: float


class IndexCache:
    """Curvature indexes held in memory across erases (the service's warm engine), by
    folder. :meth:`load` reads an index's tensors once and hands back the same tensors
    while their file is the one read (same inode, size and modification time): an index
    rebuilt or replaced is published by a rename, so it is read afresh. A new meta file
    alone (the fresh residual recorded after an index's first erase) is re-read without
    the tensors. ``tensor_reads`` counts the tensor files read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.held: dict[Path, _HeldIndex] = {}
        self.tensor_reads = 0
        self.lock = threading.Lock()

    def load(self, path: str | os.PathLike) -> CurvatureIndex:
        """The index at ``path`` (as :func:`load_index`, which refuses a damaged one)."""
        path = Path(path).resolve()
        with self.lock:  # the serve's batch threads share the cache
            tensors_key, meta_key = _file_key(path / INDEX_TENSORS), _file_key(path / INDEX_META)
            held = self.held.get(path)
            if held is None or held.tensors_key != tensors_key:
                index = load_index(path)
                self.tensor_reads += 1
            elif held.meta_key != meta_key:
                index = replace(held.index, meta=read_index_meta(path))
            else:
                index = held.index
            self.held[path] = _HeldIndex(tensors_key, meta_key, index, self.clock())
            return index

    def release_idle(self, seconds: float) -> None:
        """Forget the indexes unused for ``seconds``."""
        with self.lock:
            now = self.clock()
            for path in [p for p, held in self.held.items() if now - held.used >= seconds]:
                del self.held[path]

    def clear(self) -> None:
        with self.lock:
            self.held.clear()


def _file_key(path: Path) -> tuple[int, ...]:
    try:
        found = path.stat()
    except OSError:  # missing: load_index says so
        return ()
    return found.st_ino, found.st_size, found.st_mtime_ns


def lineage_chain(meta: AdapterMeta, adapter_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The versions an adapter came from, oldest first, then itself: one
    ``{"adapter_version", "data_sha256"}`` each. A trained adapter starts a chain."""
    own = {"adapter_version": adapter_version(adapter_dir),
           "data_sha256": str(meta.lineage.get("data_sha256"))}
    return [*meta.lineage.get("chain", []), own]


def check_index(index: CurvatureIndex, path: str | os.PathLike, meta: AdapterMeta,
                adapter_dir: str | os.PathLike) -> int:
    """Refuse an index that does not fit the adapter (another base, another chain, other
    data than its version's); otherwise return how many erases back its version is."""
    found = index.meta
    if found.base_fingerprint != meta.base_fingerprint:
        raise EraserError(f"curvature index {path} was built on base {found.base} "
                          f"(fingerprint {found.base_fingerprint[:12]}), not on adapter "
                          f"{adapter_dir}'s base {meta.base} ({meta.base_fingerprint[:12]})")
    chain = lineage_chain(meta, adapter_dir)
    versions = [link["adapter_version"] for link in chain]
    if found.adapter_version not in versions:
        raise EraserError(f"curvature index {path} was built for adapter version "
                          f"{found.adapter_version}, which is neither {adapter_dir} nor a "
                          "version it was erased from; build one with `eraser index`")
    position = versions.index(found.adapter_version)
    if chain[position]["data_sha256"] != found.data_sha256:
        raise EraserError(f"curvature index {path} was built on other data than adapter "
                          f"version {found.adapter_version} was fitted on; build one with "
                          "`eraser index`")
    return len(chain) - 1 - position


def index_drift(index: CurvatureIndex, path: str | os.PathLike, theta: torch.Tensor) -> float:
    """‖Θ − Θ_index‖/‖Θ_index‖: how far the adapter (Θ [d]) has moved since the index."""
    if index.meta.dim != theta.numel():
        raise EraserError(f"curvature index {path} has {index.meta.dim} weights, the adapter "
                          f"{theta.numel()}")
    return float((theta.double() - index.theta).norm() / max(float(index.theta.norm()), 1e-300))
