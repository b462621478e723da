"""The curvature index on the four cpu experiments, against retraining and today's solver
(docs/RESULTS.md, "Curvature index on the cpu experiments").

Per experiment of ``eraser experiment --preset cpu`` (its task set, fine-tunings and erase
matrix: damping 0.03 and 96 Hessian rows, or ``--hessian-samples``), with the exact
Gauss-Newton product (``ggn_exact``, what ``eraser index`` uses in one process):

1. ``index``: the curvature index, built as ``eraser index`` builds it
   (:func:`eraser_dist.core.influence.fit_curvature`, ``--rank`` Lanczos steps); timed.
2. ``erase-index``: the erase a user gets from it (``newton_step`` with the index and the
   index's own solve budget, tol 0.05 and at most 4 CG iterations); b and solve timed.
3. ``reference``: PCG from the index until a relative residual ≤ ``--reference-tol`` or
   ``--reference-iters`` iterations; ``index-step`` is its start, the index's step P⁻¹b
   with no CG iteration (one product: its residual).
4. ``erase-fisher``: today's solve without an index, Fisher-diagonal PCG from 0, for
   ``--fisher-products`` products (the experiments' default is 16).

For each ΔΘ: its relative residual, cosine and norm ratio to the reference, the mean loss on
the edited rows and on kept rows (as ``eraser experiment`` measures them) and the recovery
of the edited rows' loss, (m − corrupted)/(retrain − corrupted). Seconds per request are
measured (b plus the solve) and set against the retraining's. The fine-tunings (corrupted,
retrain) are ``eraser experiment``'s own, cached under ``--work`` by their inputs, so a
folder shared with ``eraser experiment --work`` trains nothing twice.

    .venv/bin/python bench/index_experiments.py --work runs/experiments \\
        --out docs/experiments/index.json --chart docs/experiments/index.png

Prints one JSON object per experiment as it finishes; ``--out`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from eraser_dist.arguments import IndexArguments
from eraser_dist.core.backend import InProcessBackend
from eraser_dist.core.influence import (
    erase_damping,
    fisher_scaling,
    fit_curvature,
    hessian_subset,
    newton_rhs,
    newton_step,
)
from eraser_dist.core.reference import cosine
from eraser_dist.core.solve import conjugate_gradient
from eraser_dist.experiments.runner import (
    PRESETS,
    build_task_set,
    experiment_inputs,
    measured_rows,
    recovery,
    row_losses,
)
from eraser_dist.llm.adapters import adapter_vector, load_adapter
from eraser_dist.llm.curvature_index import INDEX_SOLVE
from eraser_dist.llm.models import load_base

HVP = "ggn_exact"


def run(work: Path, name: str, args: argparse.Namespace) -> dict:
    preset = PRESETS["cpu"]
    inputs = experiment_inputs(work, name, preset)
    rows, request, edited = inputs.rows, inputs.request, inputs.edited
    retrained, retrain_seconds = inputs.retrained, inputs.retrain_seconds
    model, meta = load_adapter(load_base(preset.base), inputs.corrupted)
    backend = InProcessBackend(model)
    theta0 = model.get_flat().double()
    erase = replace(preset.erase, hvp=HVP, step="cg", stages=1,
                    hessian_samples=args.hessian_samples or preset.erase.hessian_samples)
    damping = erase_damping(erase, meta.weight_decay)
    out: dict = {"experiment": name, "kind": request.kind, "n_train": len(rows),
                 "n_affected": len(request.ids), "d": model.dim, "damping": damping,
                 "hessian_rows": erase.hessian_samples, "hvp": HVP, "rank": args.rank,
                 "retrain_seconds": retrain_seconds}

    fitted = fit_curvature(backend, rows, meta.weight_decay, erase, args.rank, progress=False)
    index = fitted.curvature
    out["index"] = {"seconds": fitted.seconds, "pairs": len(index.values),
                    "ritz_values": index.values.tolist(), "asymmetry": index.asymmetry,
                    "products": fitted.products}

    # the user's erase from the index: its own budget, the same code as eraser erase --index
    user = newton_step(backend, edited, meta.weight_decay,
                       replace(erase, **INDEX_SOLVE), progress=False, index=index)
    out["erase-index"] = {"rhs_seconds": user.rhs_seconds, "solve_seconds": user.solve_seconds,
                          "iterations": user.cg.iterations,
                          "residual": user.cg.relative_residual}

    # the erase system itself, as newton_step builds it, for the reference and today's solve
    b = newton_rhs(backend, edited, meta.weight_decay, erase.batch_size).sum(0)
    h_rows, weights = hessian_subset(edited, erase.curvature, erase.hessian_samples, erase.seed)
    backend.use_hessian_rows(h_rows, weights)
    scale = 1.0 / float(weights.sum())

    def matrix(v: torch.Tensor) -> torch.Tensor:
        return backend.hvp(HVP, v, erase.batch_size, erase.fd_step) * scale + damping * v

    start = time.perf_counter()
    step = conjugate_gradient(matrix, b, max_iter=0, x0=index.inverse(b)[None])
    step_seconds = time.perf_counter() - start
    out["index-step"] = {"solve_seconds": step_seconds, "residual": step.relative_residual}
    out["seconds_per_product"] = step_seconds
    history: list[float] = []
    start = time.perf_counter()
    reference = conjugate_gradient(
        matrix, b, tol=args.reference_tol, max_iter=args.reference_iters,
        preconditioner=index.inverse, x0=index.inverse(b)[None],
        callback=lambda _, residual: history.append(residual))
    out["reference"] = {"iterations": reference.iterations,
                        "residual": reference.relative_residual,
                        "converged": reference.converged, "history": history,
                        "solve_seconds": time.perf_counter() - start}
    start = time.perf_counter()
    diagonal = fisher_scaling(backend.fisher_diagonal, scale, damping)
    fisher_history: list[float] = []
    fisher = conjugate_gradient(matrix, b, tol=0.0, max_iter=args.fisher_products,
                                preconditioner=lambda v: v / diagonal,
                                callback=lambda _, residual: fisher_history.append(residual))
    out["erase-fisher"] = {"iterations": fisher.iterations,
                           "residual": fisher.relative_residual, "history": fisher_history,
                           "solve_seconds": time.perf_counter() - start}

    deltas = {"erase-index": user.delta.double(), "index-step": step.x,
              "erase-fisher": fisher.x, "reference": reference.x}
    affected, kept = measured_rows(edited, request, rows, preset.kept_sample)
    thetas = {"corrupted": theta0, "retrain": adapter_vector(model, retrained).double(),
              **{label: theta0 + delta for label, delta in deltas.items()}}
    losses = {}
    for label, theta in thetas.items():
        model.set_flat(theta)
        losses[label] = row_losses(model, affected, kept, preset.eval_batch_size)
    model.set_flat(theta0)
    for label in thetas:
        figures = out.setdefault(label, {})
        figures.update(losses[label])
        figures["edited_recovery"] = recovery(losses[label]["edited_loss"],
                                              losses["corrupted"]["edited_loss"],
                                              losses["retrain"]["edited_loss"])
        if label in deltas:
            figures["cosine_to_reference"] = cosine(deltas[label], reference.x)
            figures["norm_ratio_to_reference"] = float(deltas[label].norm()
                                                       / reference.x.norm())
            # the same b for every solve: the user's erase measured it
            seconds = out["erase-index"]["rhs_seconds"] + figures["solve_seconds"]
            figures["request_seconds"] = seconds
            figures["times_retrain"] = seconds / retrain_seconds
    out["index"]["times_retrain"] = fitted.seconds / retrain_seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/experiments",
                        help="the work folder (shared with eraser experiment --work)")
    parser.add_argument("--experiments", nargs="+", default=["ir", "qm", "rc10", "rc40"])
    parser.add_argument("--rank", type=int, default=IndexArguments().rank)
    parser.add_argument("--hessian-samples", type=int,
                        help="Hessian rows of the erase matrix (default: the preset's 96)")
    parser.add_argument("--reference-tol", type=float, default=1e-3)
    parser.add_argument("--reference-iters", type=int, default=30)
    parser.add_argument("--fisher-products", type=int, default=8)
    parser.add_argument("--out")
    parser.add_argument("--chart")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    if not (work / "task" / "manifest.json").is_file():
        build_task_set(PRESETS["cpu"].task, work / "task")
    results = {}
    for name in args.experiments:
        results[name] = run(work, name, args)
        print(json.dumps(results[name], indent=1), flush=True)
        if args.out:  # after each experiment: a crash keeps the finished ones
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.chart:
        draw(results, args.chart)


def draw(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ("index-step", "erase-index", "erase-fisher", "reference")
    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        xs = [i + k * width for i in range(len(names))]
        axes[0].bar(xs, [results[n][label]["times_retrain"] for n in names], width,
                    label=label)
        axes[1].bar(xs, [results[n][label]["cosine_to_reference"] for n in names], width)
        axes[2].bar(xs, [results[n][label]["edited_recovery"] or 0.0 for n in names], width)
    for ax, ylabel in zip(axes, ("seconds per request ÷ retraining's",
                                 "cosine of ΔΘ to the converged reference",
                                 "recovery of the edited rows' loss"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_ylabel(ylabel)
    axes[0].axhline(0.1, color="grey", linestyle=":")
    axes[2].axhline(1.0, color="grey", linestyle=":")
    axes[0].legend(fontsize=7)
    fig.suptitle("cpu experiments: erase from the curvature index, today's Fisher-diagonal "
                 "PCG and the converged reference (ggn_exact)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
