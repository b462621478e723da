"""Step control against retraining: where each control makes an erase land (docs/RESULTS.md,
"Step control").

For each experiment of a task set (``--task facts``: ``eraser data facts``, SmolLM2-135M,
rank-8 q/v LoRA, 12 epochs on 32 made-up facts; ``--task genres``: the cpu experiments'
task set and preset), it fine-tunes on the experiment's training set (the corrupted or
full adapter Θ̂) and on the edited set (retraining, the reference), builds the adapter's
curvature index (``--rank`` Lanczos steps, as ``eraser index``), solves the Newton step once
from it, and applies each control to that same solve (what ``newton_step`` would do with
the control set, as :func:`~eraser_dist.core.influence.solved_step` then
:func:`~eraser_dist.core.influence.control_step`):

- ``none``: the Newton step as solved (the least-residual vector of CG's span);
- ``auto``: the default, ``line_search`` where the request adds rows, else ``none``;
- ``line_search``: the step scaled by the α that minimises the objective it aims at along it
  (forward passes over the edited rows and 32 kept rows, outside H's sample where enough,
  and with ``changed_rows`` one gradient pass for Θ̂'s own gradient);
- ``damping``: the damping among 0.5 … 8 × the solved one at which the same check is
  least, each step re-solved in the solve's Krylov span (no product);
- ``newton``: up to 2 chord Newton steps on the edited objective (each a solve);
- ``stages4``: the edit in 4 stages along f_t, each solved from the same index (path
  following; its own 4 solves);
- ``stages4+line_search``: both.
- ``path``: 4 stages of at most 4 CG iterations each, every stage started and
  preconditioned by the same index (path following at about the plain solve's product
  budget; its own solves);
- ``path2``: the same in 2 stages of at most 8 iterations each (half the right-hand sides
  over the changed rows);
- ``path+line_search``: ``path``, then the line search along its whole step (not an
  option of ``eraser erase``: the candidate for a default that also lands on the tests'
  one-parameter logistic, where the path alone overshoots);
- ``edited``: the Newton step on f_new's own curvature (``--curvature edited``: the
  Gauss-Newton matrix over the edited set's rows, so a removed row's own curvature no longer
  shortens its step), its own solve from the same index (built on D's rows, so only a
  start and preconditioner there);
- ``edited+auto``: the same, then the default control;
- ``converged`` and ``edited+converged``: ``none`` and ``edited`` with up to 48 CG
  iterations instead of 16 (their own solves, to ``--tol``): whether the iteration budget
  shapes the step.

Beside retraining from scratch it fine-tunes once more from Θ̂ on the edited set with the
training's own budget (``continued``: a minimiser of f_new reached from Θ̂, where a step
control can aim at best), and gives its recovery as it gives the controls'.

With ``--proximal`` it also minimises, from Θ̂, the proximal Bregman response objective P
(``proximal``: :func:`~eraser_dist.core.reference.proximal_response`, by L-BFGS), the
objective whose minimiser the erase's one step estimates (its Newton step, with the exact
Gauss-Newton matrix on all rows and the erase's damping, less the changed rows' own
curvature), and gives its recovery too: the controls' distance from it is the step's error,
its distance from retraining the target's. It keeps the training set's output gradients
([n, R, V]), so it is for the facts task.

Per control: the mean loss on the edited rows (new versions of edited rows; the removed rows
for a removal) and on kept rows, the recovery (m − Θ̂)/(retrain − Θ̂) of the edited rows'
loss, the kept rows' loss change beside retraining's, and the seconds: b and the solve, and
what the control added (``extra_cost``: its seconds over those of ``none``'s erase).

    .venv/bin/python bench/step_control.py --task facts --work runs/step-control \\
        --out docs/step_control.json

Prints one JSON object per experiment as it finishes; ``--out`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from eraser_dist.arguments import EraseArguments, TrainArguments
from eraser_dist.core.backend import InProcessBackend
from eraser_dist.core.influence import (
    chosen_control,
    control_step,
    erase_damping,
    fit_curvature,
    newton_step,
    solved_step,
)
from eraser_dist.core.reference import proximal_objective, proximal_response
from eraser_dist.experiments.runner import (
    PRESETS,
    ExperimentPreset,
    Trainings,
    build_task_set,
    experiment_inputs,
    measured_rows,
    recovery,
    row_losses,
)
from eraser_dist.experiments.tasksets import read_task_set
from eraser_dist.llm.adapters import adapter_vector, load_adapter
from eraser_dist.llm.models import load_base

# the setting where one Newton step was seen to overshoot: 12 epochs on 32 facts, the
# Gauss-Newton matrix on all of them, damping 0.03
FACTS = ExperimentPreset(
    task="facts",
    training=TrainArguments(epochs=12, lr=3e-3, batch_size=8, weight_decay=0.01,
                            max_length=64, lr_schedule="linear"),
    erase=EraseArguments(hvp="ggn_exact", damping=0.03, hessian_samples=None, max_iter=16,
                         tol=1e-3, step="least_residual"),
    kept_sample=64)
PRESET = {"facts": FACTS, "genres": replace(PRESETS["cpu"], erase=replace(
    PRESETS["cpu"].erase, hvp="ggn_exact"))}
CONTROLS = {
    "none": {"step_control": "none"},
    "auto": {"step_control": "auto"},
    "line_search": {"step_control": "line_search"},
    "damping": {"step_control": "damping"},
    "newton": {"step_control": "newton", "newton_steps": 2},
    "stages4": {"stages": 4, "step_control": "none"},
    "stages4+line_search": {"stages": 4, "step_control": "line_search"},
    "path": {"step_control": "path"},
    "path2": {"step_control": "path", "path_stages": 2},
    "path+line_search": {"step_control": "path"},  # then the line search, in run()
    "edited": {"curvature": "edited", "step_control": "none"},
    "edited+auto": {"curvature": "edited", "step_control": "auto"},
    "converged": {"step_control": "none", "max_iter": 48},
    "edited+converged": {"curvature": "edited", "step_control": "none", "max_iter": 48},
}
# what control_step reads after the shared solve; a control that sets anything else (stages,
# curvature, max_iter) changes the solve itself and gets its own
STEP_SETTINGS = {"step_control", "newton_steps"}


def run(work: Path, name: str, preset: ExperimentPreset, rank: int,
        controls: list[str], proximal_iterations: int = 0) -> dict:
    inputs = experiment_inputs(work, name, preset)
    rows, request, edited = inputs.rows, inputs.request, inputs.edited
    retrain_seconds = inputs.retrain_seconds
    # f_new minimised from Θ̂ by the training itself: the training's epochs and rate
    continued, _ = Trainings(work / "trainings", replace(
        preset, warm_epochs=preset.training.epochs, warm_lr=None), False)(
            work / name / "edited.parquet", init=inputs.corrupted)
    model, meta = load_adapter(load_base(preset.base), inputs.corrupted)
    backend = InProcessBackend(model)
    theta0 = model.get_flat().double()
    out: dict = {"experiment": name, "kind": request.kind, "n_train": len(rows),
                 "n_affected": len(request.ids), "d": model.dim, "rank": rank,
                 "retrain_seconds": retrain_seconds,
                 "erase": {k: v for k, v in vars(preset.erase).items()}}
    fitted = fit_curvature(backend, rows, meta.weight_decay, preset.erase, rank,
                           progress=False)
    out["index_seconds"] = fitted.seconds
    affected, kept = measured_rows(edited, request, rows, preset.kept_sample)
    losses = {}
    model.set_flat(theta0)
    losses["corrupted"] = row_losses(model, affected, kept, preset.eval_batch_size)
    model.set_flat(adapter_vector(model, inputs.retrained).double())
    losses["retrain"] = row_losses(model, affected, kept, preset.eval_batch_size)
    model.set_flat(adapter_vector(model, continued).double())
    losses["continued"] = row_losses(model, affected, kept, preset.eval_batch_size)
    model.set_flat(theta0)  # b and H at Θ̂, not at the retrained adapter just measured

    def quiet(status: dict) -> None:
        pass

    start = time.perf_counter()  # one solve, with its span kept for the damping search
    solved = solved_step(backend, edited, meta.weight_decay,
                         replace(preset.erase, step_control="damping"), quiet,
                         index=fitted.curvature)
    solve_seconds = time.perf_counter() - start
    steps = {}
    for label in controls:
        args = replace(preset.erase, **CONTROLS[label])
        model.set_flat(theta0)
        start = time.perf_counter()
        if (chosen_control(args, edited) == "path"  # its own solves
                or CONTROLS[label].keys() - STEP_SETTINGS):
            result = newton_step(backend, edited, meta.weight_decay, args, progress=False,
                                 index=fitted.curvature)
            if label == "path+line_search":
                result = control_step(backend, edited, meta.weight_decay,
                                      replace(args, step_control="line_search"), result,
                                      quiet, fitted.curvature)
            seconds = time.perf_counter() - start
        else:
            result = control_step(backend, edited, meta.weight_decay, args, solved, quiet,
                                  fitted.curvature)
            seconds = solve_seconds + time.perf_counter() - start
        steps[label] = result.delta
        model.set_flat(theta0 + result.delta)
        losses[label] = row_losses(model, affected, kept, preset.eval_batch_size)
        control = result.control
        out[label] = {"seconds": seconds, "rhs_seconds": result.rhs_seconds,
                      "solve_seconds": result.solve_seconds,
                      "cg_iterations": result.cg.iterations,
                      "relative_residual": result.cg.relative_residual,
                      "delta_norm": float(result.delta.norm()), "damping": result.damping,
                      "control": None if control is None else vars(control)}
    model.set_flat(theta0)
    if proximal_iterations:
        proximal(model, edited, meta.weight_decay, preset, proximal_iterations, steps, out,
                 lambda: row_losses(model, affected, kept, preset.eval_batch_size), losses)
    base = out["none"]["seconds"]
    for label, figures in losses.items():
        entry = out.setdefault(label, {})
        entry.update(figures)
        entry["edited_recovery"] = recovery(figures["edited_loss"],
                                            losses["corrupted"]["edited_loss"],
                                            losses["retrain"]["edited_loss"])
        entry["kept_change"] = figures["kept_loss"] - losses["corrupted"]["kept_loss"]
        if label in controls:
            entry["extra_cost"] = entry["seconds"] / base - 1
            entry["times_retrain"] = entry["seconds"] / retrain_seconds
    return out


def proximal(model, edited, weight_decay: float, preset: ExperimentPreset, iterations: int,
             steps: dict, out: dict, measure: Callable[[], dict], losses: dict) -> None:
    """The proximal Bregman response from Θ̂ (the model's Θ, where it is left) as the
    reference ``proximal``, and each control's decrease of its objective P
    (``proximal_decrease``, P(Θ̂) − P(Θ̂ + ΔΘ)) beside the minimiser's."""
    theta0 = model.get_flat()
    objective = proximal_objective(model, edited, weight_decay,
                                   erase_damping(preset.erase, weight_decay),
                                   preset.erase.batch_size)
    found = proximal_response(model, objective, max_iter=iterations)
    model.set_flat(theta0 + found.delta)
    losses["proximal"] = measure()
    out["proximal"] = {"seconds": found.seconds, "evaluations": found.evaluations,
                       "gradient_ratio": found.gradient_ratio,
                       "delta_norm": float(found.delta.norm()),
                       "proximal_decrease": found.decrease}
    model.set_flat(theta0)
    at_start = float(objective())
    for label, delta in steps.items():
        model.set_flat(theta0 + delta)
        out[label]["proximal_decrease"] = at_start - float(objective())
    model.set_flat(theta0)
    for p in model.params:
        p.grad = None


def task_options(description: str) -> argparse.ArgumentParser:
    """The options every task-set bench shares: ``--task``, ``--work``, ``--experiments``,
    ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", choices=sorted(PRESET), default="facts")
    parser.add_argument("--work", default="runs/step-control",
                        help="task set, fine-tunings (cached by their inputs) and edited sets")
    parser.add_argument("--experiments", nargs="+",
                        help="default: every experiment of the task set")
    parser.add_argument("--out")
    return parser


def for_each_experiment(args: argparse.Namespace,
                        run_one: Callable[[Path, str, ExperimentPreset], dict]) -> None:
    """``run_one(work, name, preset)`` for each of ``args.experiments`` (default: all of the
    task set, built under ``args.work`` first if missing); prints each result as JSON and
    rewrites ``args.out`` after each, so that a crash keeps the finished ones."""
    torch.set_num_threads(2)
    work, preset = Path(args.work), PRESET[args.task]
    if not (work / "task" / "manifest.json").is_file():
        build_task_set(preset.task, work / "task")
    results = {}
    for name in args.experiments or read_task_set(work / "task").experiments:
        results[name] = run_one(work, name, preset)
        print(json.dumps(results[name], indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


def main() -> None:
    parser = task_options(__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8, help="Lanczos steps of the index")
    parser.add_argument("--controls", nargs="+", choices=list(CONTROLS), default=list(CONTROLS),
                        help="the controls to run (none first: the others' cost is set "
                        "against it)")
    parser.add_argument("--proximal", type=int, default=0, metavar="ITERATIONS",
                        help="also minimise the proximal Bregman response objective, with "
                        "up to this many L-BFGS iterations (0: not)")
    args = parser.parse_args()
    controls = ["none"] + [c for c in args.controls if c != "none"]
    for_each_experiment(args, lambda work, name, preset: run(work, name, preset, args.rank,
                                                             controls, args.proximal))


if __name__ == "__main__":
    main()
