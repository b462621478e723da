"""Erase versus warm-started retraining on tiny-llama: how close is ΔΘ to the real change?

Measures, for real deletions and edits of a converged LoRA adapter, the cosine and the norm
ratio ‖ΔΘ‖/‖ΔΘ_retrain‖ between the influence step ΔΘ of ``newton_step`` and the change
ΔΘ_retrain = Θ_retrained − Θ̂ that retraining to convergence (warm-started from Θ̂) makes.

Setting: built-in base ``tiny-llama`` in float64, LoRA on q_proj/v_proj, weight decay λ,
n rows "rev <word>" → "<word reversed>", fitted by full-batch L-BFGS and then Newton-polished
with the explicit Hessian (the achieved ‖∇f‖ and the extreme eigenvalues of the Hessian of f
at Θ̂ are reported). Cases: remove / modify_query / correct_response × 1 row / 10% of rows.
Per case, every HVP back-end (exact, fd, ggn) × curvature (original, edited) of
``newton_step`` (CG, tol 1e-6, at most 300 iterations, damping λ, and
``on_negative_curvature="truncate"`` so that each back-end is measured as itself: under the
default policy ``ggn`` a solve that meets negative curvature is redone with the GGN), and two
baselines with the exact HVP of the original objective:

- ``paper``: the paper's right-hand side b = (1/n) Σ_changed (−Δw) G (no kλΘ̂ term, 1/n
  instead of 1/(n−k)), solved by the same CG;
- ``paper-adam``: that b and the paper's solver, 20 Adam steps at lr 1e-5 from Δ = 0 on
  ½ΔᵀHΔ − bᵀΔ with the HVP not differentiated, i.e. Adam sees the gradient ½HΔ − b.

For the baselines ``relative_residual`` is ‖(H + λI)Δ − b‖/‖b‖ of their own system and
``cg_iterations`` the number of solver iterations (Adam steps for ``paper-adam``).

A LoRA of rank r ≥ 2 has an exact symmetry: A → MᵀA, B → BM for any orthogonal M of the rank
space leaves BA and ‖A‖² + ‖B‖² unchanged, so the optima form orbits and ∇²f is singular along
their tangents (the report counts its near-zero eigenvalues). ΔΘ lies in the Hessian's range,
while retraining may end anywhere on its orbit, so besides the raw ΔΘ_retrain each row also
gives ``cosine_aligned``/``norm_ratio_aligned`` against the retrained Θ rotated, module by
module, to the point of its orbit nearest Θ̂ (orthogonal Procrustes): same loss, same penalty.

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
from eraser_dist.core.curvature import hessian_vector_product
from eraser_dist.core.influence import newton_step
from eraser_dist.core.reference import cosine, explicit_hessian, newton_polish
from eraser_dist.core.requests import EditedObjective, apply_request, parse_request
from eraser_dist.core.solve import conjugate_gradient
from eraser_dist.data import Example
from eraser_dist.errors import EraserError
from eraser_dist.experiments.baselines import PAPER_LR, PAPER_STEPS, paper_adam, paper_rhs
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base
from eraser_dist.llm.train import fit_lbfgs

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["cat", "dog", "owl", "elk", "bee", "ant", "cow", "pig", "rat", "emu",
         "yak", "fox", "bat", "hen", "ram", "eel", "gnu", "jay", "koi", "doe"]
NEW_WORDS = ["ape", "boa", "cod", "asp", "gar", "kid"]  # not in WORDS: new queries
KINDS = ("remove", "modify_query", "correct_response")
HVPS = ("exact", "fd", "ggn")
CURVATURES = ("original", "edited")
BATCH = 16
TOL, MAX_ITER = 1e-6, 300
ADAM_STEPS, ADAM_LR = PAPER_STEPS, PAPER_LR


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


def lora_modules(model: LoraCausalLM) -> list[tuple[slice, torch.Size, slice, torch.Size]]:
    """(slice of A, shape of A, slice of B, shape of B) in Θ for every LoRA module."""
    where, offset = {}, 0
    for name, p in zip(model.names, model.params, strict=True):
        where[name] = (slice(offset, offset + p.numel()), p.shape)
        offset += p.numel()
    return [(*where[name], *where[name.replace("lora_A", "lora_B")])
            for name in model.names if "lora_A" in name]


def align_rotations(model: LoraCausalLM, theta: torch.Tensor, reference: torch.Tensor):
    """θ moved along its symmetry orbit (A → MᵀA, B → BM, M orthogonal per module) to the
    point nearest ``reference``: M = UVᵀ from the SVD of BᵀB₀ + AA₀ᵀ."""
    out = theta.clone()
    for sa, shape_a, sb, shape_b in lora_modules(model):
        a, b = theta[sa].view(shape_a), theta[sb].view(shape_b)
        a0, b0 = reference[sa].view(shape_a), reference[sb].view(shape_b)
        u, _, vh = torch.linalg.svd(b.T @ b0 + a @ a0.T)
        m = u @ vh
        out[sa], out[sb] = (m.T @ a).reshape(-1), (b @ m).reshape(-1)
    return out


def row(case: dict, method: str, hvp: str, curvature: str, delta: torch.Tensor | None,
        iterations: int | None, residual: float | None, negative: bool, seconds: float,
        hvp_used: str | None = None) -> dict:
    """One result; ``delta`` None when the solver gave no iterate."""
    out = {"kind": case["kind"], "size": case["size"], "method": method, "hvp": hvp,
           "curvature": curvature, "hvp_used": hvp_used or hvp}
    for suffix, target in (("", case["target"]), ("_aligned", case["target_aligned"])):
        out["cosine" + suffix] = None if delta is None else cosine(delta, target)
        out["norm_ratio" + suffix] = (None if delta is None
                                      else float(delta.norm() / target.norm()))
    out.update({"cg_iterations": iterations, "relative_residual": residual,
                "negative_curvature": negative, "seconds": round(seconds, 3)})
    return out


def paper_baselines(model, edited: EditedObjective, weight_decay: float,
                    case: dict) -> list[dict]:
    """The paper's b with the original exact H, solved by CG and by its 20 Adam steps."""
    n = len(edited.rows_before)
    b = paper_rhs(model, edited, BATCH)
    ones = torch.ones(n, dtype=torch.float64)
    hvp = hessian_vector_product("exact", model, edited.rows_before, ones, BATCH)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return hvp(v).double() / n

    def residual(delta: torch.Tensor) -> float:
        return float((matvec(delta) + weight_decay * delta - b).norm() / b.norm())

    start = time.perf_counter()
    cg = conjugate_gradient(matvec, b, damping=weight_decay, tol=TOL, max_iter=MAX_ITER)
    out = [row(case, "paper", "exact", "original", cg.x, cg.iterations,
               cg.relative_residual, cg.negative_curvature, time.perf_counter() - start)]

    start = time.perf_counter()
    delta = paper_adam(lambda _, v: matvec(v) + weight_decay * v, b, ADAM_STEPS, ADAM_LR)
    seconds = time.perf_counter() - start
    out.append(row(case, "paper-adam", "exact", "original", delta, ADAM_STEPS,
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
    eigs, vectors = torch.linalg.eigh(hessian + lam * torch.eye(model.dim, dtype=torch.float64))
    null = eigs.abs() <= 1e-7 * eigs.abs().max()  # newton_polish's threshold
    null_basis = vectors[:, null]
    modules = len(lora_modules(model))
    fit_figures = {
        "dim": model.dim, "grad_norm": grad_norm, "seconds": round(fit_seconds, 1),
        "hessian_eig_min": float(eigs[0]), "hessian_eig_max": float(eigs[-1]),
        "hessian_near_zero_eigs": int(null.sum()),
        "rotation_generators": modules * args.rank * (args.rank - 1) // 2,
        "hessian_eig_min_nonzero": float(eigs[~null].min()),
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
            retrained = model.get_flat().double()
            target = retrained - theta_hat
            target_aligned = align_rotations(model, retrained, theta_hat) - theta_hat
            case = {"kind": kind, "size": size, "request": request,
                    "retrain_grad_norm": retrain_grad, "retrain_norm": float(target.norm()),
                    "retrain_norm_aligned": float(target_aligned.norm()),
                    "retrain_null_fraction": float((null_basis.T @ target).norm()
                                                   / target.norm()),
                    "retrain_seconds": round(retrain_seconds, 1)}
            cases.append(case)
            print(f"retrained: {case}", file=sys.stderr, flush=True)
            case = {**case, "target": target, "target_aligned": target_aligned}
            for hvp in HVPS:
                for curvature in CURVATURES:
                    model.set_flat(theta_hat)
                    erase_args = EraseArguments(hvp=hvp, curvature=curvature, tol=TOL,
                                                max_iter=MAX_ITER, batch_size=BATCH,
                                                on_negative_curvature="truncate",
                                                step_control="none")  # the step as solved
                    start = time.perf_counter()
                    try:
                        result = newton_step(model, edited, lam, erase_args, progress=False)
                    except EraserError:  # negative curvature along b: no iterate at all
                        results.append(row(case, "erase", hvp, curvature, None, 0, None, True,
                                           time.perf_counter() - start))
                        continue
                    results.append(row(case, "erase", hvp, curvature, result.delta.double(),
                                       result.cg.iterations, result.cg.relative_residual,
                                       result.negative_curvature,
                                       time.perf_counter() - start, result.hvp))
            model.set_flat(theta_hat)
            results.extend(paper_baselines(model, edited, lam, case))
            model.set_flat(theta_hat)
    return {"fit": fit_figures, "cases": cases, "rows": results}


def method_label(r: dict) -> str:
    return f"{r['hvp']}/{r['curvature']}" if r["method"] == "erase" else r["method"]


def table(report: dict, suffix: str) -> list[str]:
    """Rows kind / size, columns method; cell "cos / ratio" (+ " nc")."""
    labels = list(dict.fromkeys(method_label(r) for r in report["rows"]))
    keys = list(dict.fromkeys((r["kind"], r["size"]) for r in report["rows"]))
    cells = {}
    for r in report["rows"]:
        cos, ratio = r["cosine" + suffix], r["norm_ratio" + suffix]
        text = "no iterate" if cos is None else f"{cos:.3f} / {ratio:.3g}"
        cells[(r["kind"], r["size"]), method_label(r)] = text + (" nc" if
                                                                 r["negative_curvature"] else "")
    lines = ["| kind / size | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key in keys:
        lines.append(f"| {key[0]} / {key[1]} | "
                     + " | ".join(cells.get((key, m), "") for m in labels) + " |")
    return lines


def markdown(report: dict) -> str:
    s, f = report["setting"], report["fit"]
    lines = [
        "# Erase vs warm-started retraining (tiny-llama)",
        "",
        f"tiny-llama float64, LoRA rank {s['rank']} on q_proj/v_proj (d = {f['dim']}), "
        f"λ = {s['weight_decay']}, n = {s['rows']} rows, seed {s['seed']}. "
        f"Fit (L-BFGS + Newton polish): ‖∇f‖ = {f['grad_norm']:.2e}; eigenvalues of ∇²f(Θ̂) "
        f"in [{f['hessian_eig_min']:.3g}, {f['hessian_eig_max']:.4g}], of which "
        f"{f['hessian_near_zero_eigs']} are zero to rounding (the LoRA has "
        f"{f['rotation_generators']} rank-space rotation generators) and the smallest other "
        f"one is {f['hessian_eig_min_nonzero']:.4g}.",
        "",
        "Cell: cosine(ΔΘ, ΔΘ_retrain) / ‖ΔΘ‖/‖ΔΘ_retrain‖. \"nc\": CG met negative curvature "
        "and the cell is its truncated iterate (`on_negative_curvature=\"truncate\"`; under "
        "the default `ggn` policy such a solve is redone with the GGN, i.e. the cell becomes "
        "the ggn one of the same curvature). Columns hvp/curvature are `newton_step` "
        f"(CG tol {TOL:g}, max {MAX_ITER} iterations, damping λ); `paper` is the paper's "
        "b = (1/n) Σ_S (−Δw) G with the original exact H by the same CG; `paper-adam` is that "
        f"b by {ADAM_STEPS} Adam steps at lr {ADAM_LR:g} on ½ΔᵀHΔ − bᵀΔ.",
        "",
        "## Against ΔΘ_retrain = Θ_retrained − Θ̂",
        "",
        *table(report, ""),
        "",
        "## Against the retrained Θ rotated to the point of its symmetry orbit nearest Θ̂",
        "",
        "Same loss and penalty as Θ_retrained (A → MᵀA, B → BM with M orthogonal, per "
        "module, by orthogonal Procrustes).",
        "",
        *table(report, "_aligned"),
        "",
        "## Retraining per case",
        "",
        "| kind / size | ‖ΔΘ_retrain‖ | aligned | share in ∇²f's null space | retrained ‖∇f‖ |",
        "|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        lines.append(f"| {c['kind']} / {c['size']} | {c['retrain_norm']:.4g} | "
                     f"{c['retrain_norm_aligned']:.4g} | {c['retrain_null_fraction']:.3g} | "
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
