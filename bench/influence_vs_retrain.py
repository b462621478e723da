"""Erase versus warm-started retraining on tiny-llama: how close is ΔΘ to the real change?

Measures, for real deletions and edits of a converged LoRA adapter, the cosine and the norm
ratio ‖ΔΘ‖/‖ΔΘ_retrain‖ between the influence step ΔΘ of ``newton_step`` and the change
ΔΘ_retrain = Θ_retrained − Θ̂ that retraining to convergence (warm-started from Θ̂) makes.

Setting: built-in base ``tiny-llama`` in float64, LoRA on q_proj/v_proj, weight decay λ,
n rows "rev <word>" → "<word reversed>", fitted by full-batch L-BFGS and then Newton-polished
with the explicit Hessian (the achieved ‖∇f‖ and the extreme eigenvalues of the Hessian of f
at Θ̂ are reported). Cases: remove / modify_query / correct_response × 1 row / 10% of rows.
Per case, every HVP back-end (exact, fd, ggn) × curvature (original, edited) of
``newton_step`` (CG, tol 1e-6, at most 300 iterations, damping λ), and two baselines with
the exact HVP of the original objective:

- ``paper``: the paper's right-hand side b = (1/n) Σ_changed (−Δw) G (no kλΘ̂ term, 1/n
  instead of 1/(n−k)), solved by the same CG;
- ``paper-adam``: that b and the paper's solver, 20 Adam steps at lr 1e-5 from Δ = 0 on
  ½ΔᵀHΔ − bᵀΔ with the HVP not differentiated, i.e. Adam sees the gradient ½HΔ − b.

For the baselines ``relative_residual`` is ‖(H + λI)Δ − b‖/‖b‖ of their own system and
``cg_iterations`` the number of solver iterations (Adam steps for ``paper-adam``).

Run from the repository root (prints the JSON, writes docs/influence_vs_retrain.{json,md})::

    .venv/bin/python bench/influence_vs_retrain.py            # rank 4, the design setting
    .venv/bin/python bench/influence_vs_retrain.py --rank 2   # about 4x faster on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from eraser_dist.arguments import EraseArguments, LoraArguments
from eraser_dist.curvature import hessian_vector_product
from eraser_dist.data import Example
from eraser_dist.influence import newton_step
from eraser_dist.models import LoraCausalLM, attach_lora, load_base
from eraser_dist.objective import gradient_sum
from eraser_dist.reference import explicit_hessian, newton_polish
from eraser_dist.requests import EditedObjective, apply_request, parse_request
from eraser_dist.solve import conjugate_gradient
from eraser_dist.train import fit_lbfgs

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["cat", "dog", "owl", "elk", "bee", "ant", "cow", "pig", "rat", "emu",
         "yak", "fox", "bat", "hen", "ram", "eel", "gnu", "jay", "koi", "doe"]
NEW_WORDS = ["ape", "boa", "cod", "asp", "gar", "kid"]  # not in WORDS: new queries
KINDS = ("remove", "modify_query", "correct_response")
HVPS = ("exact", "fd", "ggn")
CURVATURES = ("original", "edited")
BATCH = 16
TOL, MAX_ITER = 1e-6, 300
ADAM_STEPS, ADAM_LR = 20, 1e-5


def build_model(rank: int) -> LoraCausalLM:
    base = load_base("tiny-llama", torch.float64)
    peft_model = attach_lora(base, LoraArguments(rank=rank, targets=("q_proj", "v_proj")), seed=0)
    return LoraCausalLM(peft_model, base.tokenizer, max_length=64)


def word_rows(n: int) -> list[Example]:
    """Rows "rev <word>" → "<word reversed>", as in the tests' ``word_rows``."""
    return [Example(f"r{i}", f"rev {WORDS[i % len(WORDS)]}{i // len(WORDS) or ''}",
                    WORDS[i % len(WORDS)][::-1]) for i in range(n)]


def request_json(kind: str, picked: list[int], rows: list[Example]) -> dict:
    ids = [rows[i].id for i in picked]
    if kind == "remove":
        return {"kind": kind, "ids": ids}
    if kind == "modify_query":
        edits = [{"id": r, "query": f"rev {NEW_WORDS[j]}"} for j, r in enumerate(ids)]
    else:  # another word of the set, reversed
        edits = [{"id": rows[i].id, "response": WORDS[(i + 7) % len(WORDS)][::-1]}
                 for i in picked]
    return {"kind": kind, "edits": edits}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def row(case: dict, method: str, hvp: str, curvature: str, delta: torch.Tensor,
        target: torch.Tensor, iterations: int, residual: float, negative: bool,
        seconds: float) -> dict:
    return {
        "kind": case["kind"], "size": case["size"], "method": method, "hvp": hvp,
        "curvature": curvature, "cosine": cosine(delta, target),
        "norm_ratio": float(delta.norm() / target.norm()), "cg_iterations": iterations,
        "relative_residual": residual, "negative_curvature": negative,
        "seconds": round(seconds, 3),
    }


def paper_baselines(model, edited: EditedObjective, weight_decay: float, case: dict,
                    target: torch.Tensor) -> list[dict]:
    """The paper's b with the original exact H, solved by CG and by its 20 Adam steps."""
    n = len(edited.rows_before)
    b = gradient_sum(model, edited.changed_rows, -edited.weight_changes, BATCH).double() / n
    ones = torch.ones(n, dtype=torch.float64)
    hvp = hessian_vector_product("exact", model, edited.rows_before, ones, BATCH)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return hvp(v).double() / n

    def residual(delta: torch.Tensor) -> float:
        return float((matvec(delta) + weight_decay * delta - b).norm() / b.norm())

    start = time.perf_counter()
    cg = conjugate_gradient(matvec, b, damping=weight_decay, tol=TOL, max_iter=MAX_ITER)
    out = [row(case, "paper", "exact", "original", cg.x, target, cg.iterations,
               cg.relative_residual, cg.negative_curvature, time.perf_counter() - start)]

    start = time.perf_counter()
    delta = torch.zeros_like(b, requires_grad=True)
    adam = torch.optim.Adam([delta], lr=ADAM_LR)
    for _ in range(ADAM_STEPS):
        current = delta.detach()  # the HVP is not differentiated: Adam sees ½HΔ − b
        delta.grad = 0.5 * (matvec(current) + weight_decay * current) - b
        adam.step()
    delta = delta.detach()
    seconds = time.perf_counter() - start
    out.append(row(case, "paper-adam", "exact", "original", delta, target, ADAM_STEPS,
                   residual(delta), False, seconds))
    return out


def fit(model, rows, weights, weight_decay: float, polish_steps: int) -> tuple[float, float]:
    """L-BFGS then Newton polish from the current Θ; returns (‖∇f‖, seconds)."""
    start = time.perf_counter()
    fit_lbfgs(model, rows, weights, weight_decay, batch_size=BATCH, max_iter=500)
    grad_norm = newton_polish(model, rows, weights, weight_decay, steps=polish_steps)
    return grad_norm, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    lam = args.weight_decay
    model = build_model(args.rank)
    rows = word_rows(args.rows)
    ones = torch.ones(len(rows), dtype=torch.float64)
    grad_norm, fit_seconds = fit(model, rows, ones, lam, polish_steps=4)
    theta_hat = model.get_flat().double().clone()
    hessian = explicit_hessian(model, rows, ones).double() / len(rows)
    eigs = torch.linalg.eigvalsh(hessian + lam * torch.eye(model.dim, dtype=torch.float64))
    fit_figures = {
        "dim": model.dim, "grad_norm": grad_norm, "seconds": round(fit_seconds, 1),
        "hessian_eig_min": float(eigs[0]), "hessian_eig_max": float(eigs[-1]),
        "theta_norm": float(theta_hat.norm()),
    }
    print(f"fit: {fit_figures}", file=sys.stderr, flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(rows), generator=generator).tolist()
    k_many = max(1, round(0.1 * len(rows)))
    sizes = {"1 row": order[:1]}
    if k_many > 1:
        sizes[f"{k_many} rows"] = order[:k_many]

    cases, results = [], []
    for kind in KINDS:
        for size, picked in sizes.items():
            request = request_json(kind, picked, rows)
            edited = apply_request(parse_request(request), rows)
            model.set_flat(theta_hat)
            retrain_grad, retrain_seconds = fit(model, edited.rows_after, edited.weights_after,
                                                lam, polish_steps=args.polish_steps)
            target = model.get_flat().double() - theta_hat
            case = {"kind": kind, "size": size, "request": request,
                    "retrain_grad_norm": retrain_grad, "retrain_norm": float(target.norm()),
                    "retrain_seconds": round(retrain_seconds, 1)}
            cases.append(case)
            print(f"retrained: {case}", file=sys.stderr, flush=True)
            for hvp in HVPS:
                for curvature in CURVATURES:
                    model.set_flat(theta_hat)
                    erase_args = EraseArguments(hvp=hvp, curvature=curvature, tol=TOL,
                                                max_iter=MAX_ITER, batch_size=BATCH)
                    start = time.perf_counter()
                    result = newton_step(model, edited, lam, erase_args, progress=False)
                    seconds = time.perf_counter() - start
                    results.append(row(case, "erase", hvp, curvature, result.delta.double(),
                                       target, result.cg.iterations,
                                       result.cg.relative_residual,
                                       result.cg.negative_curvature, seconds))
            model.set_flat(theta_hat)
            results.extend(paper_baselines(model, edited, lam, case, target))
            model.set_flat(theta_hat)
    return {"fit": fit_figures, "cases": cases, "rows": results}


def method_label(r: dict) -> str:
    return f"{r['hvp']}/{r['curvature']}" if r["method"] == "erase" else r["method"]


def markdown(report: dict) -> str:
    s, f = report["setting"], report["fit"]
    labels = list(dict.fromkeys(method_label(r) for r in report["rows"]))
    keys = list(dict.fromkeys((r["kind"], r["size"]) for r in report["rows"]))
    cells = {}
    for r in report["rows"]:
        text = f"{r['cosine']:.3f} / {r['norm_ratio']:.3g}"
        cells[(r["kind"], r["size"]), method_label(r)] = text + (" nc" if
                                                                 r["negative_curvature"] else "")
    lines = [
        "# Erase vs warm-started retraining (tiny-llama)",
        "",
        f"tiny-llama float64, LoRA rank {s['rank']} on q_proj/v_proj (d = {f['dim']}), "
        f"λ = {s['weight_decay']}, n = {s['rows']} rows, seed {s['seed']}. "
        f"Fit: ‖∇f‖ = {f['grad_norm']:.2e}, eigenvalues of ∇²f(Θ̂) in "
        f"[{f['hessian_eig_min']:.4g}, {f['hessian_eig_max']:.4g}].",
        "",
        "Cell: cosine(ΔΘ, ΔΘ_retrain) / ‖ΔΘ‖/‖ΔΘ_retrain‖; \"nc\": CG met negative curvature "
        "and returned its truncated iterate. Columns hvp/curvature are `newton_step` "
        f"(CG tol {TOL:g}, max {MAX_ITER} iterations, damping λ); `paper` is the paper's "
        "b = (1/n) Σ_S (−Δw) G with the original exact H by the same CG; `paper-adam` is that "
        f"b by {ADAM_STEPS} Adam steps at lr {ADAM_LR:g}.",
        "",
        "| kind / size | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key in keys:
        lines.append(f"| {key[0]} / {key[1]} | "
                     + " | ".join(cells.get((key, m), "") for m in labels) + " |")
    lines += ["", "‖ΔΘ_retrain‖ and the retrained ‖∇f‖ per case:", "",
              "| kind / size | ‖ΔΘ_retrain‖ | retrained ‖∇f‖ |", "|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['kind']} / {c['size']} | {c['retrain_norm']:.4g} | "
                     f"{c['retrain_grad_norm']:.2e} |")
    if s.get("note"):
        lines += ["", s["note"]]
    lines += ["", f"Command: `{report['command']}` (from the repository root); "
              f"total run time {report['seconds']:.0f} s on {s['threads']} threads.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    parser.add_argument("--rows", type=int, default=30, help="training rows (default 30)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="λ (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="picks the edited rows")
    parser.add_argument("--polish-steps", type=int, default=3,
                        help="Newton steps after L-BFGS when retraining (default 3)")
    parser.add_argument("--note", default="", help="a remark copied into the outputs")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs",
                        help="where the .json and .md go (default docs/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    report = run(args)
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) \
        else "python"
    script = os.path.relpath(Path(__file__).resolve(), ROOT)
    report = {
        "setting": {"base": "tiny-llama", "dtype": "float64", "rank": args.rank,
                    "targets": ["q_proj", "v_proj"], "rows": args.rows,
                    "weight_decay": args.weight_decay, "seed": args.seed,
                    "polish_steps": args.polish_steps, "cg_tol": TOL, "cg_max_iter": MAX_ITER,
                    "threads": torch.get_num_threads(), "note": args.note},
        "command": shlex.join([python, script, *(sys.argv[1:] if argv is None else argv)]),
        "seconds": round(time.perf_counter() - start, 1),
        **report,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "influence_vs_retrain.json").write_text(text + "\n", encoding="utf-8")
    (args.out_dir / "influence_vs_retrain.md").write_text(markdown(report), encoding="utf-8")


if __name__ == "__main__":
    main()
