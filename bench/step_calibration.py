"""Step length calibrated against a retraining: does the α that makes one held-out request
land where its retraining lands make another request of the same kind land too
(docs/RESULTS.md, "Step control")?

The erase's one Newton step misses retraining by a factor that differs between requests
(recovery 0.29 … 1.64 on the step-control bench). If that factor were a property of the
adapter version and the request kind, one retraining per version would pay for it: erase
a held-out request, retrain without it, take the α at which α·ΔΘ recovers 1 of its
retraining's change, and scale every later erase of that kind by it. This bench measures
whether α transfers. For each experiment of a task set (``--task`` and ``--work`` as
``bench/step_control.py``, whose fine-tunings it shares) it builds ``--held-out`` requests
of the experiment's kind on the same Θ̂, each touching as many rows as the experiment and
none of its rows (seeded; a removal drops other rows, a response correction gives other
rows another of the task's candidate responses). For the experiment's own request and
each held-out one it retrains on the edited set, solves the plain step once from the
adapter's curvature index (``--rank`` Lanczos steps, then the preset's CG), and gives:

- ``curve``: the recovery of its edited rows at α·ΔΘ over ``--alphas``;
- ``alpha``: where recovery first reaches 1 along that grid (bisected to 1e-3 between
  the grid points that bracket it; null if the grid never reaches it);

and, for every request as the target and each other request as the calibration,
``transfer``: the target's recovery and kept-row loss change at the calibration's α
(the target's own plain step scaled by it), beside retraining's kept change.

    .venv/bin/python bench/step_calibration.py --task facts --work runs/step-control \\
        --out docs/experiments/step_calibration_facts.json

Prints one JSON object per experiment as it finishes; ``--out`` writes them all.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

from step_control import for_each_experiment, task_options

from eraser_dist.core.backend import InProcessBackend
from eraser_dist.core.influence import fit_curvature, solved_step
from eraser_dist.core.objective import loss_values
from eraser_dist.core.requests import EraseRequest, apply_request
from eraser_dist.data import write_examples
from eraser_dist.experiments.runner import (
    ExperimentPreset,
    Trainings,
    experiment_inputs,
    measured_rows,
    recovery,
    row_losses,
)
from eraser_dist.llm.adapters import adapter_vector, load_adapter
from eraser_dist.llm.models import load_base

ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0]


def held_out_requests(request: EraseRequest, rows: list, candidates: dict, count: int,
                      seed: int) -> list[EraseRequest]:
    """``count`` requests of ``request``'s kind on disjoint rows outside it, each as large
    as it. A correction's new response is a seeded pick among the row's candidate
    responses other than its current one."""
    touched = set(request.ids)
    free = [r for r in rows if r.id not in touched]
    size = len(request.ids)
    if count * size > len(free):
        raise SystemExit(f"--held-out {count} needs {count * size} rows outside the "
                         f"request; the training set has {len(free)}")
    rng = random.Random(f"{seed}:held-out")
    picked = rng.sample(free, count * size)
    out = []
    for k in range(count):
        some = picked[k * size:(k + 1) * size]
        if request.kind == "remove":
            out.append(EraseRequest("remove", tuple(r.id for r in some)))
        elif request.kind == "correct_response":
            texts = tuple(rng.choice([c for c in candidates[r.id]["candidates"]
                                      if c != r.response]) for r in some)
            out.append(EraseRequest("correct_response", tuple(r.id for r in some), texts))
        else:
            raise SystemExit(f"held-out requests of kind {request.kind!r} are not built "
                             "(remove and correct_response are)")
    return out


def first_crossing(curve: list[tuple[float, float]], at) -> float | None:
    """The smallest α at which recovery reaches 1: the first grid interval whose ends
    bracket 1, bisected to 1e-3 with ``at(α)`` (the recovery there)."""
    for (lo, r_lo), (hi, r_hi) in zip(curve, curve[1:], strict=False):
        if (r_lo - 1) * (r_hi - 1) <= 0:
            while hi - lo > 1e-3:
                mid = (lo + hi) / 2
                r_mid = at(mid)
                if (r_mid - 1) * (r_lo - 1) <= 0:
                    hi = mid
                else:
                    lo, r_lo = mid, r_mid
            return (lo + hi) / 2
    return None


def run(work: Path, name: str, preset: ExperimentPreset, rank: int, held_out: int,
        alphas: list[float]) -> dict:
    inputs = experiment_inputs(work, name, preset)
    rows = inputs.rows
    candidates = json.loads((work / "task" / "candidates.json").read_text())
    requests = {"experiment": inputs.request} | {
        f"held_out_{k}": r for k, r in enumerate(held_out_requests(
            inputs.request, rows, candidates, held_out, preset.training.seed))}
    train = Trainings(work / "trainings", preset, False)
    model, meta = load_adapter(load_base(preset.base), inputs.corrupted)
    backend = InProcessBackend(model)
    theta0 = model.get_flat().double()
    fitted = fit_curvature(backend, rows, meta.weight_decay, preset.erase, rank,
                           progress=False)
    out: dict = {"experiment": name, "kind": inputs.request.kind, "n_train": len(rows),
                 "n_affected": len(inputs.request.ids), "rank": rank,
                 "index_seconds": fitted.seconds, "alphas": alphas, "requests": {}}
    measured = {}
    for label, request in requests.items():
        edited = apply_request(request, rows)
        if label == "experiment":
            retrained, retrain_seconds = inputs.retrained, inputs.retrain_seconds
        else:
            data = work / name / f"{label}.parquet"
            write_examples(data, edited.rows_after)
            retrained, retrain_seconds = train(data)
        affected, kept = measured_rows(edited, request, rows, preset.kept_sample)
        model.set_flat(adapter_vector(model, retrained).double())
        reference = row_losses(model, affected, kept, preset.eval_batch_size)
        model.set_flat(theta0)
        start = row_losses(model, affected, kept, preset.eval_batch_size)
        began = time.perf_counter()
        step = solved_step(backend, edited, meta.weight_decay,
                           replace(preset.erase, step_control="none"), lambda status: None,
                           index=fitted.curvature)
        erase_seconds = time.perf_counter() - began
        measured[label] = (step.delta, affected, kept, start, reference)

        def recovery_at(alpha: float, delta=step.delta, affected=affected, start=start,
                        reference=reference) -> float:
            model.set_flat(theta0 + alpha * delta)
            loss = float(loss_values(model, affected, preset.eval_batch_size).mean())
            return recovery(loss, start["edited_loss"], reference["edited_loss"])

        curve = [(a, recovery_at(a)) for a in alphas]
        out["requests"][label] = {
            "ids": list(request.ids), "retrain_seconds": retrain_seconds,
            "erase_seconds": erase_seconds, "cg_iterations": step.cg.iterations,
            "relative_residual": step.cg.relative_residual,
            "delta_norm": float(step.delta.norm()),
            "retrain_kept_change": reference["kept_loss"] - start["kept_loss"],
            "curve": curve, "alpha": first_crossing(curve, recovery_at)}
    transfer = []
    for target, (delta, affected, kept, start, reference) in measured.items():
        for calibration, figures in out["requests"].items():
            alpha = figures["alpha"]
            if calibration == target or alpha is None:
                continue
            model.set_flat(theta0 + alpha * delta)
            losses = row_losses(model, affected, kept, preset.eval_batch_size)
            transfer.append({
                "target": target, "calibration": calibration, "alpha": alpha,
                "recovery": recovery(losses["edited_loss"], start["edited_loss"],
                                     reference["edited_loss"]),
                "kept_change": losses["kept_loss"] - start["kept_loss"],
                "retrain_kept_change": out["requests"][target]["retrain_kept_change"]})
    model.set_flat(theta0)
    out["transfer"] = transfer
    return out


def main() -> None:
    parser = task_options(__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8, help="Lanczos steps of the index")
    parser.add_argument("--held-out", type=int, default=3,
                        help="held-out requests per experiment, each retrained once")
    parser.add_argument("--alphas", type=float, nargs="+", default=ALPHAS,
                        help="the step scales the recovery curve is measured at (rising)")
    args = parser.parse_args()
    if args.held_out < 1:
        parser.error("--held-out must be at least 1")
    if sorted(args.alphas) != args.alphas or args.alphas[0] <= 0:
        parser.error("--alphas must be positive and rising")
    for_each_experiment(args, lambda work, name, preset: run(
        work, name, preset, args.rank, args.held_out, args.alphas))


if __name__ == "__main__":
    main()
