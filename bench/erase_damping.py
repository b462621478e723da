"""How the erase step's damping, Hessian sample and CG iterations move it toward warm retraining.

Run after ``eraser experiment NAME --work WORK`` (it reuses that run's cached fine-tunings):
loads the corrupted adapter, computes b once, then per Hessian sample size runs one recorded
Gauss-Newton CG solve at damping λ. The Krylov space of H + dI does not depend on d, so the
solution for any other damping d and any first m iterations is read off the recorded
directions by :func:`eraser_dist.core.solve.galerkin_split` with no further HVP. For each
(samples, d, m) it reports the cosine and norm ratio of ΔΘ to the warm retrain's ΔΘ net of
drift (as ``eraser experiment`` does), and at the ``--evaluate-at`` iteration counts also the
loss on the edited rows and on kept rows (the warm change net of drift is measured the same
way). The limit d → ∞ is the direction of b itself (scaled to the warm change's norm). Where
the experiment's ``result.json`` is in WORK, each measured row also gets its recovery of the
edited rows' loss toward retraining's (``edited_recovery``, as the experiment's table defines it).

With ``--preconditioner fisher_diagonal`` the Krylov space is that of M⁻¹(H + dI), with
M = F/W + d, which changes with d: then each damping gets a solve of its own.

    .venv/bin/python bench/erase_damping.py --work runs/experiments --experiment rc40

Prints JSON; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from json_report import print_and_write

from eraser_dist.arguments import PRECONDITIONERS
from eraser_dist.core.curvature import fisher_diagonal, hessian_vector_product
from eraser_dist.core.influence import hessian_subset, newton_rhs, preconditioner
from eraser_dist.core.reference import cosine
from eraser_dist.core.solve import conjugate_gradient, galerkin_split
from eraser_dist.experiments.runner import (
    PRESETS,
    recovery,
    reopen_experiment,
    result_path,
    row_losses,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="the work folder of eraser experiment")
    parser.add_argument("--experiment", default="rc40")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--samples", type=int, nargs="+", default=[24, 96])
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--dampings", type=float, nargs="+",
                        default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--evaluate-at", type=int, nargs="+", default=[8, 16],
                        help="iteration counts at which the losses are measured (every damping)")
    parser.add_argument("--preconditioner", choices=PRECONDITIONERS, default="none")
    parser.add_argument("--out")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    work = Path(args.work)
    found = reopen_experiment(work, args.experiment, preset, progress=True)
    model, edited, theta0, warm_change = found.model, found.edited, found.theta0, found.warm_change
    start = time.perf_counter()
    b = newton_rhs(model, edited, found.weight_decay, preset.erase.batch_size).sum(0)
    rhs_seconds = time.perf_counter() - start

    def losses(delta: torch.Tensor) -> dict[str, float]:
        model.set_flat(theta0 + delta)
        figures = row_losses(model, found.affected, found.kept, preset.eval_batch_size)
        model.set_flat(theta0)
        return figures

    rows_out = [{"samples": None, "damping": float("inf"), "iterations": 0,
                 "cosine_to_warm": cosine(b, warm_change)}]
    solves = {}
    preconditioned = args.preconditioner != "none"
    # plain CG: one solve per sample size, every damping read off it; preconditioned: one each
    solve_dampings = args.dampings if preconditioned else [found.weight_decay]
    for samples, solve_damping in ((s, d) for s in args.samples for d in solve_dampings):
        h_rows, weights = hessian_subset(edited, "original", samples, preset.erase.seed)
        hvp = hessian_vector_product("ggn", model, h_rows, weights, preset.erase.batch_size)
        scale = 1.0 / float(weights.sum())
        start = time.perf_counter()
        precondition = preconditioner(
            args.preconditioner,
            lambda h_rows=h_rows, weights=weights: fisher_diagonal(model, h_rows, weights),
            scale, solve_damping)
        cg = conjugate_gradient(lambda v, hvp=hvp, scale=scale: hvp(v).double().cpu() * scale, b,
                                damping=solve_damping, tol=0.0, max_iter=args.iterations,
                                record=True, preconditioner=precondition)
        seconds = time.perf_counter() - start
        solves[f"{samples}" + (f"@{solve_damping}" if preconditioned else "")] = {
            "seconds": seconds, "iterations": cg.iterations,
            "seconds_per_row_hvp": seconds / (cg.iterations * len(h_rows))}
        for damping in [solve_damping] if preconditioned else args.dampings:
            shift = damping - solve_damping
            for m in sorted({2, 4, 6, 8, 12, cg.iterations, *args.evaluate_at}):
                if m > cg.iterations:
                    continue
                sub = replace(cg, directions=cg.directions[:m],
                              products=cg.products[:m] + shift * cg.directions[:m])
                delta, residual = galerkin_split(sub, b[None])
                delta = delta[0]
                rows_out.append({"samples": samples, "damping": damping, "iterations": m,
                                 "preconditioner": args.preconditioner,
                                 "relative_residual": float(residual[0]),
                                 "cosine_to_warm": cosine(delta, warm_change),
                                 "norm_ratio_to_warm": float(delta.norm() / warm_change.norm()),
                                 "_delta": delta})
    for row in rows_out[1:]:
        if row["iterations"] in args.evaluate_at:
            row.update(losses(row["_delta"]))
    rows_out[0].update(losses(b * float(warm_change.norm() / b.norm())))
    reference = {"corrupted": losses(torch.zeros_like(theta0)),
                 "warm": losses(warm_change)}
    run = result_path(work, args.experiment)
    if run.is_file():
        retrain = json.loads(run.read_text())["methods"]["retrain"]
        reference["retrain"] = {k: retrain[k] for k in ("edited_loss", "kept_loss")}
        for row in rows_out:
            if "edited_loss" in row:
                row["edited_recovery"] = recovery(row["edited_loss"],
                                                  reference["corrupted"]["edited_loss"],
                                                  reference["retrain"]["edited_loss"])
    result = {"experiment": args.experiment, "preconditioner": args.preconditioner,
              "rhs_seconds": rhs_seconds, "solves": solves,
              "reference": reference,
              "grid": [{k: v for k, v in r.items() if k != "_delta"} for r in rows_out]}
    print_and_write(result, args.out, indent=1)


if __name__ == "__main__":
    main()
