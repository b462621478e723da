"""The Python API behind every CLI command: train, erase and evaluate adapters on files, and
build the curvature index that erases start from.

Each function validates its inputs before doing any work, never modifies its inputs, and
publishes its output directory atomically. Call them from a notebook or a Ray job; the CLI
in :mod:`eraser_dist.cli` only parses arguments and prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arguments import (
    DistributedArguments,
    EraseArguments,
    IndexArguments,
    LoraArguments,
    TrainArguments,
    check_engine,
    check_index_budget,
)
from .core.influence import InfluenceResult, fit_curvature, newton_step
from .core.objective import loss_values
from .core.requests import EditedObjective, EraseRequest, apply_requests, load_request
from .data import examples_digest, read_examples
from .distributed.shard_worker import WorkerSpec
from .errors import EraserError
from .llm.adapters import (
    AdapterMeta,
    adapter_version,
    check_fitted_on,
    check_output_dir,
    file_key,
    load_adapter,
    publish_erased,
    read_meta,
    save_adapter,
    split_delta,
)
from .llm.curvature_index import (
    CurvatureIndex,
    IndexCache,
    IndexMeta,
    check_index,
    index_drift,
    lineage_chain,
    load_index,
    record_fresh_residual,
    save_index,
)
from .llm.models import LoraCausalLM, attach_lora, load_base
from .llm.train import train_adam
from .llm.warm import AdapterSource, ColdLoads
from .report import (
    REPORT_FILE,
    DistributedFigures,
    EraseReport,
    IndexFigures,
    RequestFigures,
    StationarityFigures,
)

if TYPE_CHECKING:
    from actors.driver import WarmGroups

PathLike = str | os.PathLike


def train(
    base: str,
    data: PathLike,
    out: PathLike,
    lora: LoraArguments | None = None,
    training: TrainArguments | None = None,
    init_adapter: PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on a Parquet training set and publish it to ``out``.

    With ``init_adapter`` the adapter is warm-started from that one (same rank and targets;
    ``lora`` must then be None or equal to its shape). ``device`` is where the base and the
    adapter are held (``cpu``, ``cuda``, ``cuda:N``).
    """
    training = training or TrainArguments()
    check_output_dir(out, overwrite)
    examples = read_examples(data)
    base_model = load_base(base, device=device)
    if init_adapter is not None:
        model, init_meta = load_adapter(base_model, init_adapter)
        if lora is not None:
            shape = _lora_shape(model)
            if (lora.rank, tuple(sorted(lora.targets))) != shape:
                raise EraserError(
                    f"--init-adapter {init_adapter} has rank {shape[0]} on "
                    f"{','.join(shape[1])}; it cannot be trained as rank {lora.rank} on "
                    f"{','.join(lora.targets)}"
                )
        if init_meta.max_length != training.max_length:
            training = replace(training, max_length=init_meta.max_length)
    else:
        peft_model = attach_lora(base_model, lora or LoraArguments(), seed=training.seed)
        model = LoraCausalLM(peft_model, base_model.tokenizer, training.max_length)
    start = time.perf_counter()
    history = train_adam(model, examples, training, progress=progress)
    seconds = time.perf_counter() - start
    meta = AdapterMeta(
        base=base,
        base_fingerprint=base_model.fingerprint,
        weight_decay=training.weight_decay,
        max_length=training.max_length,
        lineage={
            "made_by": "train",
            "init_adapter": None if init_adapter is None else str(init_adapter),
            "data_sha256": examples_digest(examples),
            "n_train": len(examples),
            "training": asdict(training),
        },
    )
    save_adapter(model, out, meta, overwrite=overwrite)
    return {"out": str(out), "n_train": len(examples), "epoch_objective": history,
            "seconds": seconds}


def _lora_shape(model: LoraCausalLM) -> tuple[int, tuple[str, ...]]:
    config = model.peft_model.peft_config["default"]
    return int(config.r), tuple(sorted(config.target_modules))


def erase(
    base: str,
    adapter: PathLike,
    data: PathLike,
    request: PathLike | EraseRequest | Sequence[EraseRequest],
    out: PathLike,
    args: EraseArguments | None = None,
    overwrite: bool = False,
    progress: bool = True,
    distributed: DistributedArguments | None = None,
    device: str = "cpu",
    index: PathLike | None = None,
    models: AdapterSource | None = None,
    groups: WarmGroups | None = None,
    indexes: IndexCache | None = None,
) -> EraseReport:
    """Apply an erase request, or a batch of them, to an adapter by one influence step;
    publish the new adapter.

    With a curvature ``index`` (:func:`build_index`, on this adapter or a version it was
    erased from), CG starts from the index's step and is preconditioned by it; ``args``
    then defaults to the index's own matrix and a short solve
    (:meth:`~eraser_dist.llm.curvature_index.IndexMeta.erase_arguments`), and the report
    gives the index's figures under ``index``. ``indexes`` holds indexes in memory across
    erases (a warm engine's); without it the index is read from its folder.

    ``data`` is the training set the adapter was fitted on. A batch (a sequence of requests
    with disjoint rows) is one solve; the report gives each request's own ΔΘ_k figures
    under ``requests``. With ``distributed`` the step runs on a Ray cluster (worker groups
    on a ZeRO-3-partitioned base, see ``actors/``); otherwise in this process, on ``device``
    (a distributed erase places its ranks by ``distributed.backend``, on warm ``groups``
    kept up after it, :class:`actors.driver.WarmGroups`, or on groups started for it), from
    ``models`` (a warm base, :mod:`eraser_dist.llm.warm`) or a base loaded for this erase.
    Both run
    the same pipeline (:func:`eraser_dist.core.influence.newton_step`). The output holds the new
    adapter, ΔΘ alone (``adapter_delta.safetensors``, for serving replicas) and the report
    that this function returns (``erase_report.json``).
    """
    loaded = None if index is None else (indexes.load(index) if indexes is not None
                                         else load_index(index))
    args = args or (EraseArguments() if loaded is None else loaded.meta.erase_arguments())
    check_engine(args, distributed)
    check_index_budget(args, loaded is not None)
    check_output_dir(out, overwrite)
    if Path(out).resolve() == Path(adapter).resolve():
        raise EraserError("the output directory must differ from the input adapter")
    if isinstance(request, EraseRequest):
        batch = [request]
    elif isinstance(request, (str, os.PathLike)):
        batch = [load_request(request)]
    else:
        batch = list(request)
    examples = read_examples(data)
    edited = apply_requests(batch, examples)
    meta = read_meta(adapter)
    check_fitted_on(meta, adapter, data, examples)
    versions_behind = None if loaded is None else check_index(loaded, index, meta, adapter)
    curvature = None if loaded is None else loaded.curvature
    start = time.perf_counter()
    figures = None
    if distributed is None:
        model, meta = (models or ColdLoads(device)).adapter(base, adapter)
        result = newton_step(model, edited, meta.weight_decay, args, progress=progress,
                             index=curvature)
        keys, shapes = [file_key(n) for n in model.names], [p.shape for p in model.params]
        theta = model.get_flat().double().cpu()
    else:
        from actors.driver import distributed_erase

        checkpoints = distributed.checkpoint_dir or str(
            Path(out).parent / f".{Path(out).name}.cg-checkpoint")
        spec = WorkerSpec(base, str(Path(adapter).resolve()), distributed.base_dtype)
        found = distributed_erase(spec, edited, meta.weight_decay, args, distributed,
                                  checkpoints, progress, index=curvature, warm=groups)
        result = found["result"]
        keys, shapes, theta = found["keys"], found["shapes"], found["theta"]
        figures = DistributedFigures(distributed.workers, distributed.group_size,
                                     distributed.base_dtype, found["group_restarts"],
                                     found["resumed_at_iteration"],
                                     found["bytes_per_iteration"])
    index_figures = None if loaded is None else index_report(
        loaded, index, versions_behind, theta, result)
    report = erase_report(batch, edited, args, result, meta.weight_decay, theta,
                          time.perf_counter() - start, figures, index_figures)
    new_meta = replace(
        meta,
        lineage={
            "made_by": "erase",
            # hashes, not the requests' ids and texts or the parent's path: once the parent
            # is purged, nothing here names what was erased (docs/DESIGN.md §5.8)
            "requests": [{"kind": r.kind, "n_rows": len(r.ids)} for r in batch],
            "requests_sha256": hashlib.sha256(json.dumps(
                [r.to_json() for r in batch], sort_keys=True).encode("utf-8")).hexdigest(),
            "data_sha256": examples_digest(edited.rows_after),
            "n_train": len(edited.rows_after),
            "chain": lineage_chain(meta, adapter),
        },
    )
    delta = split_delta(result.delta, keys, [tuple(s) for s in shapes])
    publish_erased(adapter, out, delta, new_meta, {REPORT_FILE: report.to_json()},
                   overwrite=overwrite)
    if distributed is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)  # published: nothing left to resume
    return report


def index_report(loaded: CurvatureIndex, path: PathLike, versions_behind: int, theta,
                 result: InfluenceResult) -> IndexFigures:
    """The figures of the curvature index an erase started from (``theta``: Θ̂ [d])."""
    meta = loaded.meta
    if versions_behind == 0 and meta.fresh_residual is None:
        record_fresh_residual(path, meta, result.first_residual)
    return IndexFigures(str(path), meta.adapter_version, versions_behind,
                        index_drift(loaded, path, theta), loaded.curvature.rank,
                        result.first_residual, result.first_products, meta.fresh_residual,
                        meta.rebuild_advised(result.first_residual))


def erase_report(batch: Sequence[EraseRequest], edited: EditedObjective, args: EraseArguments,
                 result: InfluenceResult, weight_decay: float, theta, seconds: float,
                 distributed: DistributedFigures | None = None,
                 index: IndexFigures | None = None) -> EraseReport:
    """The report of a finished step (``theta``: Θ̂ [d], ``seconds``: the erase's wall time)."""
    cg = result.cg
    kinds = {r.kind for r in batch}
    parts_total = result.parts.sum(0)
    if result.stationarity is not None:
        parts_total = parts_total + result.stationarity
    return EraseReport(
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        n_train=len(edited.rows_before),
        n_affected=sum(len(r.ids) for r in batch),
        hvp=result.hvp_requested, hvp_used=result.hvp, curvature=args.curvature,
        damping=result.damping, weight_decay=weight_decay, cg_iterations=cg.iterations,
        cg_converged=cg.converged, relative_residual=cg.relative_residual,
        negative_curvature=result.negative_curvature, truncated=result.truncated,
        on_negative_curvature=args.on_negative_curvature, step=args.step,
        preconditioner="curvature_index" if index is not None else args.preconditioner,
        gradient=args.gradient, stages=len(result.stages) or 1,
        tol=args.tol, hessian_rows=result.hessian_rows, rhs_norm=result.rhs_norm,
        delta_norm=float(result.delta.norm()), adapter_norm=float(theta.norm()),
        seconds=seconds, rhs_seconds=result.rhs_seconds, solve_seconds=result.solve_seconds,
        parts_sum_error=float((parts_total - result.delta).norm()
                              / max(float(result.delta.norm()), 1e-300)),
        requests=[RequestFigures(r.kind, len(r.ids), float(rhs_norm), float(part.norm()),
                                 float(residual))
                  for r, part, residual, rhs_norm in zip(batch, result.parts,
                                                         result.part_residuals,
                                                         result.part_rhs_norms, strict=True)],
        stationarity=None if result.stationarity is None else StationarityFigures(
            result.stationarity_rhs_norm, float(result.stationarity.norm()),
            result.stationarity_residual),
        stage_steps=result.stages,
        distributed=distributed,
        index=index,
        step_control=result.control,
    )


def build_index(
    base: str,
    adapter: PathLike,
    data: PathLike,
    out: PathLike,
    args: EraseArguments | None = None,
    index: IndexArguments | None = None,
    overwrite: bool = False,
    progress: bool = True,
    distributed: DistributedArguments | None = None,
    device: str = "cpu",
    models: AdapterSource | None = None,
    groups: WarmGroups | None = None,
) -> IndexMeta:
    """Build the curvature index of an adapter on its training set and publish it to ``out``
    (docs/DESIGN.md §7): ``index.rank`` Lanczos steps on the erase system's matrix as
    ``args`` defines it (``hvp``, ``hessian_samples``, ``seed``, ``damping``,
    ``batch_size``, ``fd_step``; for ``hvp`` ``auto`` the Gauss-Newton matrix, its exact
    product in one process). Every erase
    of this version, and of the versions erased from it, can then start from it
    (``erase(..., index=out)``). With ``distributed`` the HVPs run on the worker groups
    (``groups`` as :func:`erase`); otherwise in this process, from ``models`` as
    :func:`erase`.
    """
    args = args or EraseArguments()
    index = index or IndexArguments()
    check_engine(args, distributed)
    check_output_dir(out, overwrite)
    examples = read_examples(data)
    meta = read_meta(adapter)
    check_fitted_on(meta, adapter, data, examples)
    if distributed is None:
        model, meta = (models or ColdLoads(device)).adapter(base, adapter)
        fitted = fit_curvature(model, examples, meta.weight_decay, args, index.rank,
                               progress=progress)
        theta = model.get_flat().double().cpu()
    else:
        from actors.driver import distributed_index

        spec = WorkerSpec(base, str(Path(adapter).resolve()), distributed.base_dtype)
        found = distributed_index(spec, examples, meta.weight_decay, args, index.rank,
                                  distributed, progress, warm=groups)
        fitted, theta = found["fitted"], found["theta"]
    index_meta = IndexMeta(
        base=meta.base, base_fingerprint=meta.base_fingerprint,
        adapter_version=adapter_version(adapter), data_sha256=examples_digest(examples),
        n_train=len(examples), dim=theta.numel(), rank=fitted.curvature.rank,
        hvp=fitted.hvp, hessian_rows=fitted.hessian_rows,
        hessian_samples=args.hessian_samples, seed=args.seed, damping=fitted.damping,
        batch_size=args.batch_size, fd_step=args.fd_step,
        ritz_values=fitted.curvature.values.tolist(),
        asymmetry=fitted.curvature.asymmetry, products=fitted.products,
        seconds=fitted.seconds, rebuild_growth=index.rebuild_growth)
    save_index(CurvatureIndex(index_meta, fitted.curvature, theta), out, overwrite=overwrite)
    return index_meta


def evaluate(
    base: str, adapter: PathLike, data: PathLike, batch_size: int = 8, device: str = "cpu"
) -> dict[str, Any]:
    """Mean response loss and per-id losses of an adapter on a Parquet set."""
    examples = read_examples(data)
    model, _ = ColdLoads(device).adapter(base, adapter)
    losses = loss_values(model, examples, batch_size)
    return {"mean_loss": float(losses.mean()), "n": len(examples),
            "losses": {e.id: float(v) for e, v in zip(examples, losses, strict=True)}}
