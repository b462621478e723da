"""Measure before choosing: the demo's erase system, its spectrum, its converged solution, and
how close each solver gets to it per product (docs/RESULTS.md, "Curvature index").

On the demo's setting (``eraser demo``'s data, adapter and requests: SmolLM2-135M, 240
MovieLens rows, rank-8 LoRA; the Gauss-Newton matrix on its 32-row Hessian sample, damping
λ = 0.01), one adapter version:

1. The spectrum of A = G/W + λI: ``--lanczos`` plain Lanczos steps (top Ritz values), and the
   spectrum of the Fisher-diagonal-scaled S = D^-½ A D^-½ from ``--rank`` steps, which is
   also the curvature index (core/spectral.py) built the way ``eraser index`` builds it.
2. Per request (remove, correct_response): b; the reference, PCG from the index until a
   relative residual ≤ ``--reference-tol`` or ``--reference-iters`` products, whichever
   comes first (the JSON says which: ``reference.converged``);
   then the relative residual, the cosine to the reference and the norm ratio after m
   products for (a) today's Fisher-diagonal PCG and (b) the index (its step, then PCG
   preconditioned by it); and (c) Krylov recycling: the correct_response's b solved in the
   span of the remove solve's directions, with no product of its own.

The adapter is trained into ``--work`` first if it is not there (as the demo does).
``--hvp`` swaps the product (``ggn_exact``: the same matrix with Jv exact) and
``--requests`` with no name stops after the spectrum and the index. Prints JSON; ``--out
FILE`` also writes it, and ``--chart FILE`` draws residual and cosine against products.

    .venv/bin/python bench/curvature_index.py --work runs/index-bench \\
        --out docs/curvature_index.json --chart docs/curvature_index.png
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from eraser_dist import api
from eraser_dist.core.backend import InProcessBackend
from eraser_dist.core.influence import fisher_scaling, hessian_subset, newton_rhs
from eraser_dist.core.reference import cosine
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.core.solve import conjugate_gradient, galerkin_split
from eraser_dist.core.spectral import lanczos, low_rank_curvature, ritz_pairs
from eraser_dist.data import read_examples, write_examples
from eraser_dist.experiments.demo import DemoPreset, demo_data
from eraser_dist.llm.adapters import load_adapter
from eraser_dist.llm.models import load_base

REQUEST_NAMES = ("remove", "correct_response")


def demo_setting(work: Path, preset: DemoPreset) -> dict[str, dict]:
    """The demo's training set, adapter and two requests (the same seeds as ``eraser demo``)."""
    noisy, requests = demo_data(preset)
    if not (work / "adapter-v0").exists():
        write_examples(work / "train.parquet", noisy)
        api.train("smollm2-135m", work / "train.parquet", work / "adapter-v0", preset.lora,
                  preset.training, progress=False)
    return requests


def figures(x: torch.Tensor, residual: float, reference: torch.Tensor) -> dict[str, float]:
    return {"residual": residual, "cosine": cosine(x, reference),
            "norm_ratio": float(x.norm() / reference.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/index-bench")
    parser.add_argument("--lanczos", type=int, default=12, help="steps for A's top spectrum")
    parser.add_argument("--rank", type=int, default=24, help="Lanczos steps of the index")
    parser.add_argument("--reference-tol", type=float, default=1e-3)
    parser.add_argument("--reference-iters", type=int, default=50)
    parser.add_argument("--products", type=int, default=8, help="products per method")
    parser.add_argument("--hvp", choices=("ggn", "ggn_exact", "fd", "exact"), default="ggn",
                        help="the product (the demo's: ggn)")
    parser.add_argument("--requests", nargs="*", choices=REQUEST_NAMES, default=REQUEST_NAMES,
                        help="requests to solve; none: the spectrum and the index only")
    parser.add_argument("--out")
    parser.add_argument("--chart")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    preset = DemoPreset()
    requests = demo_setting(work, preset)
    erase = replace(preset.erase, hvp=args.hvp)
    model, meta = load_adapter(load_base("smollm2-135m"), work / "adapter-v0")
    examples = read_examples(work / "train.parquet")
    backend = InProcessBackend(model)
    damping = meta.weight_decay
    out: dict = {"d": model.dim, "damping": damping, "hessian_rows": erase.hessian_samples,
                 "hvp": erase.hvp}
    # curvature "original": the Hessian rows are a sample of D, the same for every request
    edited = apply_requests([parse_request(requests["remove"])], examples)
    rows, weights = hessian_subset(edited, "original", erase.hessian_samples, erase.seed)
    backend.use_hessian_rows(rows, weights)
    scale = 1.0 / float(weights.sum())

    def matrix(v: torch.Tensor) -> torch.Tensor:
        return backend.hvp(erase.hvp, v, erase.batch_size, erase.fd_step) * scale + damping * v

    start = time.perf_counter()
    diagonal = fisher_scaling(backend.fisher_diagonal, scale, damping)
    out["fisher_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    plain = lanczos(matrix, torch.randn(model.dim, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1)),
                    args.lanczos)
    out["ritz_values_A"] = ritz_pairs(plain)[0].tolist()
    out["seconds_per_product"] = (time.perf_counter() - start) / args.lanczos
    start = time.perf_counter()
    index = low_rank_curvature(matrix, diagonal, args.rank, seed=erase.seed)
    out["ritz_values_S"] = index.values.tolist()
    out["index_asymmetry"] = index.asymmetry
    out["index_steps"] = index.steps
    out["index_seconds"] = out["fisher_seconds"] + time.perf_counter() - start
    recycled = None
    for name in args.requests:
        edited = apply_requests([parse_request(requests[name])], examples)
        start = time.perf_counter()
        b = newton_rhs(backend, edited, damping, erase.batch_size).sum(0)
        row: dict = {"rhs_seconds": time.perf_counter() - start}
        history: list[float] = []
        start = time.perf_counter()
        reference = conjugate_gradient(
            matrix, b, tol=args.reference_tol, max_iter=args.reference_iters,
            preconditioner=index.inverse, x0=index.inverse(b)[None],
            callback=lambda _, residual, history=history: history.append(residual))
        row["reference"] = {"iterations": reference.iterations,
                            "residual": reference.relative_residual,
                            "converged": reference.converged, "history": history,
                            "seconds": time.perf_counter() - start,
                            "norm": float(reference.x.norm())}
        for method in ("fisher_diagonal", "index"):
            states = []
            with_index = method == "index"
            cg = conjugate_gradient(
                matrix, b, tol=0.0, max_iter=args.products - int(with_index),
                preconditioner=index.inverse if with_index else (lambda v: v / diagonal),
                x0=index.inverse(b)[None] if with_index else None,
                checkpoint=states.append, record=with_index)
            # products so far: CG's iterations, plus the first step's product with an index
            points = {state.iterations + int(with_index): (state.x, float(state.r.norm())
                                                           / float(b.norm()))
                      for state in states}
            points[cg.iterations + int(with_index)] = (cg.x, cg.relative_residual)
            if with_index:
                first = conjugate_gradient(matrix, b, max_iter=0, x0=index.inverse(b)[None])
                points[1] = (first.x, first.relative_residual)
            row[method] = {m: figures(x, r, reference.x) for m, (x, r) in sorted(points.items())}
            if with_index:
                if recycled is not None:
                    x, residual = galerkin_split(recycled, b[None])
                    row["recycled_from_remove"] = figures(x[0], float(residual[0]), reference.x)
                recycled = cg
        out[name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.chart and args.requests:
        draw(out, args.chart, args.requests)
    print(text)


def draw(out: dict, path: str, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in zip(names, ("-", "--")[: len(names)], strict=True):
        for method, colour in (("fisher_diagonal", "tab:blue"), ("index", "tab:orange")):
            points = out[name][method]
            products = [int(m) for m in points]
            axes[0].semilogy(products, [points[m]["residual"] for m in points], style,
                             color=colour, marker="o", label=f"{name}, {method}")
            axes[1].plot(products, [points[m]["cosine"] for m in points], style,
                         color=colour, marker="o", label=f"{name}, {method}")
    axes[0].set(xlabel="products with A (per request)", ylabel="relative residual")
    axes[1].set(xlabel="products with A (per request)",
                ylabel="cosine to the reference ΔΘ (longest PCG run)")
    axes[1].legend(fontsize=7)
    fig.suptitle("demo erase system: Fisher-diagonal PCG against the curvature index")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
