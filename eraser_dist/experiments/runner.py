"""The paper's erase experiments on a task set: one command per experiment, one for all.

For an experiment (``qm``, ``rc10``, ``rc40``, ``ir`` of :mod:`eraser_dist.experiments.tasksets`) it
fine-tunes on the corrupted (or full) training set, then changes that adapter by every
method side by side and measures each on the same loaded model:

- ``erase-<hvp>``: our influence step (:func:`eraser_dist.api.erase`), per HVP back-end;
- ``paper``: the paper's b and solver (:mod:`eraser_dist.experiments.baselines`), batch 1,
  exact HVP;
- ``retrain``: fine-tuning from scratch on the edited set (the reference);
- ``warm``: ``warm_epochs`` of fine-tuning from the corrupted adapter on the edited set.

Figures per method: HR@1 by likelihood and the target's mean log-likelihood on the test
split (95% bootstrap intervals), mean loss on the edited rows (the new versions of edited
rows; the removed rows for ``ir``) and on a sample of untouched rows, recovery
(m − m_corrupted)/(m_retrain − m_corrupted) of each, the cosine and norm ratio of ΔΘ to the
warm retrain's ΔΘ net of ``drift`` (the same epochs on the unedited set: Adam's own motion),
and wall seconds. ``warm_reference`` says how much that reference can be trusted: the cosine
of the same warm retrain and drift run with another shuffle seed to it (no method can agree
with the reference better than the reference agrees with itself), and the losses of Θ̂ plus
the net warm change alone. Trainings are cached under the work folder by their inputs, so ``all``
trains the shared ones once and a rerun after a crash resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import api
from ..arguments import EraseArguments, LoraArguments, TrainArguments
from ..core.curvature import hessian_vector_product
from ..core.objective import loss_values
from ..core.reference import cosine
from ..core.requests import EditedObjective, EraseRequest, apply_request, load_request
from ..data import examples_digest, read_examples, write_examples
from ..errors import EraserError
from ..llm.adapters import adapter_vector, load_adapter, write_json
from ..llm.models import LoraCausalLM, check_device, load_base
from .baselines import paper_adam, paper_rhs
from .recommend import evaluate_recommendations
from .report import write_report
from .tasksets import TaskSet, read_task_set


@dataclass(frozen=True)
class ExperimentPreset:
    """Everything an experiment run chooses besides the task set."""

    task: str = "genres"  # the task set built when none is given: genres, llara or facts
    base: str = "smollm2-135m"
    lora: LoraArguments = field(default_factory=LoraArguments)
    training: TrainArguments = field(default_factory=lambda: TrainArguments(
        epochs=3, lr=3e-3, batch_size=8, weight_decay=0.01, max_length=64,
        lr_schedule="linear"))
    warm_epochs: int = 1
    warm_lr: float | None = None  # the warm retrain's rate; None: the training's
    # 96 Hessian rows, damping 0.03, the least-residual step and the Fisher-diagonal
    # preconditioner: chosen by bench/erase_damping.py on these experiments (docs/RESULTS.md,
    # "How the preset was chosen" and "Preconditioner"). The plain Newton step: the tables
    # recorded from these experiments measure it; bench/step_control.py compares the step
    # controls, the default's auto among them, on the same experiments
    erase: EraseArguments = field(default_factory=lambda: EraseArguments(
        damping=0.03, hessian_samples=96, max_iter=16, tol=1e-3, step="least_residual",
        preconditioner="fisher_diagonal", step_control="none"))
    # exact and fd meet negative curvature at these adapters and fall back to ggn
    # (docs/RESULTS.md), so on 2 cores only ggn is run
    hvps: tuple[str, ...] = ("ggn",)
    kept_sample: int = 64
    generate: bool = False
    eval_batch_size: int = 8
    device: str = "cpu"  # where every training, erase and evaluation runs


PRESETS = {
    # 2 CPU cores: the genre task (eraser data genres), 300 training movies
    "cpu": ExperimentPreset(),
    # a GPU machine: the LLaRA task (eraser data llara), full Hessian, tight solves, generation
    "gpu": ExperimentPreset(
        task="llara",
        training=TrainArguments(epochs=3, lr=2e-3, batch_size=8, weight_decay=0.01,
                                max_length=256, lr_schedule="linear"),
        erase=EraseArguments(damping=0.1, max_iter=100, tol=1e-4, step="least_residual",
                             step_control="none"),
        hvps=("ggn", "exact", "fd"),
        generate=True, kept_sample=256,
        device="cuda"),
}


def recovery(method: float, corrupted: float, retrain: float) -> float | None:
    """(m − m_corrupted)/(m_retrain − m_corrupted); None when retraining moved nothing."""
    gap = retrain - corrupted
    return None if gap == 0 else (method - corrupted) / gap


class Trainings:
    """Fine-tunings cached under ``root`` by (data, init adapter, seed, preset)."""

    def __init__(self, root: Path, preset: ExperimentPreset, progress: bool):
        self.root, self.preset, self.progress = root, preset, progress

    def __call__(self, data: Path, init: Path | None = None, seed: int | None = None):
        """(adapter folder, wall seconds of the training that made it); from ``init`` it is
        the preset's warm retrain (its epochs and rate)."""
        training = self.preset.training
        if init is not None:
            training = replace(training, epochs=self.preset.warm_epochs,
                               lr=self.preset.warm_lr or training.lr)
        if seed is not None:
            training = replace(training, seed=seed)
        key = hashlib.sha256(json.dumps([
            examples_digest(read_examples(data)), None if init is None else init.name,
            asdict(training), asdict(self.preset.lora), self.preset.base],
            sort_keys=True).encode()).hexdigest()[:16]
        out, seconds_file = self.root / key, self.root / f"{key}.seconds.json"
        if not seconds_file.is_file():
            start = time.perf_counter()
            api.train(self.preset.base, data, out, None if init else self.preset.lora,
                      training, init_adapter=init, overwrite=True, progress=self.progress,
                      device=self.preset.device)
            write_json(seconds_file, time.perf_counter() - start)
        return out, json.loads(seconds_file.read_text())


def run_experiment(task_dir: str | Path, name: str, preset: ExperimentPreset,
                   work: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run one experiment; returns its result (also ``WORK/NAME/result.json``)."""
    task = read_task_set(task_dir)
    data, request_file = task.experiment_data(name), task.experiment_request(name)
    work = Path(work)
    result_file = result_path(work, name)
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        add_recoveries(result["methods"])  # a result written by an earlier rule
        return result
    rows, request = read_examples(data), load_request(request_file)
    edited = apply_request(request, rows)
    edited_data = work / name / "edited.parquet"
    write_examples(edited_data, edited.rows_after)
    train = Trainings(work / "trainings", preset, progress)
    say = print if progress else (lambda *a, **k: None)

    say(f"[{name}] fine-tuning on the corrupted set, retraining, warm retraining ...")
    corrupted, corrupted_s = train(data)
    adapters = {"corrupted": corrupted}
    seconds: dict[str, float] = {"corrupted": corrupted_s}
    adapters["retrain"], seconds["retrain"] = train(edited_data)
    adapters["warm"], seconds["warm"] = train(edited_data, corrupted)
    drift, _ = train(data, corrupted)
    # the same warm retrain and drift with another shuffle: how far the reference agrees
    # with itself, the ceiling of any method's cosine to it
    reseeded = [train(d, corrupted, preset.training.seed + 1)[0]
                for d in (edited_data, data)]
    solver: dict[str, Any] = {}
    for hvp in preset.hvps:
        say(f"[{name}] erase with the {hvp} HVP ...")
        out = work / name / f"erase-{hvp}"
        start = time.perf_counter()
        report = api.erase(preset.base, corrupted, data, request, out,
                           replace(preset.erase, hvp=hvp), overwrite=True, progress=progress,
                           device=preset.device).to_json()
        seconds[f"erase-{hvp}"] = time.perf_counter() - start
        adapters[f"erase-{hvp}"] = out
        solver[f"erase-{hvp}"] = {k: report[k] for k in (
            "hvp_used", "cg_iterations", "preconditioner", "relative_residual",
            "negative_curvature", "rhs_seconds", "solve_seconds", "gradient", "rhs_norm",
            "stationarity", "stages")}

    model, meta = load_adapter(load_base(preset.base, device=preset.device), corrupted)
    theta0 = model.get_flat().double().cpu()
    thetas = {label: adapter_vector(model, path).double() for label, path in adapters.items()}
    say(f"[{name}] the paper's solver ...")
    start = time.perf_counter()
    thetas["paper"] = theta0 + paper_step(model, edited, meta.weight_decay, preset)
    seconds["paper"] = time.perf_counter() - start
    model.set_flat(theta0)

    # (Θ_warm − Θ0) − (Θ_drift − Θ0): the warm retrain's change net of Adam's own motion
    warm_change = thetas["warm"] - adapter_vector(model, drift).double()
    reseeded_change = (adapter_vector(model, reseeded[0]).double()
                       - adapter_vector(model, reseeded[1]).double())
    affected, kept = measured_rows(edited, request, rows, preset.kept_sample)
    test = task.split("test")
    methods: dict[str, Any] = {}
    for label, theta in thetas.items():
        say(f"[{name}] evaluating {label} ...")
        model.set_flat(theta)
        figures = evaluate_recommendations(model, test, task.candidates,
                                           preset.eval_batch_size, preset.generate)
        figures.update(row_losses(model, affected, kept, preset.eval_batch_size))
        delta = theta - theta0
        if label != "corrupted":
            figures["cosine_to_warm"] = cosine(delta, warm_change)
            figures["norm_ratio_to_warm"] = float(delta.norm() / warm_change.norm())
        figures["seconds"] = seconds[label]
        methods[label] = figures
    model.set_flat(theta0 + warm_change)
    warm_reference = {
        "reseeded_cosine": cosine(reseeded_change, warm_change),
        "reseeded_norm_ratio": float(reseeded_change.norm() / warm_change.norm()),
        **row_losses(model, affected, kept, preset.eval_batch_size)}
    model.set_flat(theta0)
    result = {"experiment": name, "kind": request.kind, "n_train": len(rows),
              "n_affected": len(request.ids), "n_test": len(test), "preset": asdict(preset),
              "task": task.manifest["arguments"], "solver": solver,
              "warm_reference": warm_reference, "methods": methods}
    add_recoveries(result["methods"])
    write_json(result_file, result)
    return result


def result_path(work: Path, name: str) -> Path:
    return Path(work) / name / "result.json"


@dataclass
class FinishedExperiment:
    """What a bench that reworks a finished experiment's erase starts from: its data and
    request, the corrupted adapter loaded (Θ̂ = ``theta0`` [d] float64), the warm retrain's
    change net of drift [d] float64 and the rows its losses are measured on."""

    task: TaskSet
    data: Path
    request: EraseRequest
    edited: EditedObjective
    corrupted: Path
    model: LoraCausalLM
    weight_decay: float
    theta0: torch.Tensor
    warm_change: torch.Tensor
    affected: list
    kept: list


def reopen_experiment(work: str | Path, name: str, preset: ExperimentPreset,
                      progress: bool = False) -> FinishedExperiment:
    """Reload experiment ``name`` of ``eraser experiment --work WORK`` (its fine-tunings are
    read from the cache, or trained where missing)."""
    work = Path(work)
    task = read_task_set(work / "task")
    data = task.experiment_data(name)
    rows, request = read_examples(data), load_request(task.experiment_request(name))
    edited = apply_request(request, rows)
    train = Trainings(work / "trainings", preset, progress)
    corrupted, _ = train(data)
    warm, _ = train(work / name / "edited.parquet", corrupted)
    drift, _ = train(data, corrupted)
    model, meta = load_adapter(load_base(preset.base, device=preset.device), corrupted)
    warm_change = adapter_vector(model, warm).double() - adapter_vector(model, drift).double()
    affected, kept = measured_rows(edited, request, rows, preset.kept_sample)
    return FinishedExperiment(task, data, request, edited, corrupted, model, meta.weight_decay,
                              model.get_flat().double().cpu(), warm_change, affected, kept)


@dataclass
class ExperimentInputs:
    """What a bench that sets erases of one experiment against retraining starts from: the
    training rows, the request and its edited objective, the fine-tuning on the rows (Θ̂)
    and the one on the edited set (retraining), with the retraining's wall seconds."""

    rows: list
    request: EraseRequest
    edited: EditedObjective
    corrupted: Path
    retrained: Path
    retrain_seconds: float


def experiment_inputs(work: str | Path, name: str, preset: ExperimentPreset,
                      progress: bool = False) -> ExperimentInputs:
    """The inputs of experiment ``name`` of the task set in ``WORK/task``; the fine-tunings
    are cached under ``WORK/trainings`` as ``eraser experiment`` caches them (trained where
    missing), and the edited set is written to ``WORK/NAME/edited.parquet``."""
    work = Path(work)
    task = read_task_set(work / "task")
    data = task.experiment_data(name)
    rows, request = read_examples(data), load_request(task.experiment_request(name))
    edited = apply_request(request, rows)
    edited_data = work / name / "edited.parquet"
    edited_data.parent.mkdir(parents=True, exist_ok=True)
    write_examples(edited_data, edited.rows_after)
    train = Trainings(work / "trainings", preset, progress)
    corrupted, _ = train(data)
    retrained, retrain_seconds = train(edited_data)
    return ExperimentInputs(rows, request, edited, corrupted, retrained, retrain_seconds)


def measured_rows(edited, request, rows, kept_sample: int) -> tuple[list, list]:
    """(affected, kept): the rows an experiment measures the loss on. Affected rows are the
    new versions of the edited rows (for a removal, the removed rows); kept rows are the
    first ``kept_sample`` rows the request does not touch."""
    affected = edited.added_rows()[0] or edited.changed_rows
    touched = set(request.ids)
    return affected, [r for r in rows if r.id not in touched][:kept_sample]


def row_losses(model, affected, kept, batch_size: int) -> dict[str, float]:
    """Mean loss of ``model`` as it is now on the affected rows and on the kept rows."""
    return {key: float(loss_values(model, some, batch_size).mean())
            for key, some in (("edited_loss", affected), ("kept_loss", kept))}


RECOVERED = ("target_loglik", "hit_rate_likelihood", "edited_loss")


def add_recoveries(methods: dict[str, Any]) -> dict[str, Any]:
    """Give every method its ``recovery`` of each :data:`RECOVERED` figure (in place).

    A figure measured with a 95% interval (a dict of mean, low, high) gets None where
    retraining's gap to the corrupted model lies inside the corrupted model's interval:
    a share of a gap that noise alone could make means nothing.
    """
    corrupted, retrain = methods["corrupted"], methods["retrain"]
    for figures in methods.values():
        figures["recovery"] = {}
        for key in RECOVERED:
            base, target = corrupted[key], retrain[key]
            if isinstance(base, dict):
                if abs(target["mean"] - base["mean"]) < (base["high"] - base["low"]) / 2:
                    figures["recovery"][key] = None
                    continue
                base, target, value = base["mean"], target["mean"], figures[key]["mean"]
            else:
                value = figures[key]
            figures["recovery"][key] = recovery(value, base, target)
    return methods


def build_task_set(task: str, out: Path) -> dict[str, Any]:
    if task == "genres":
        from .genres import build_genres

        return build_genres(out)
    if task == "llara":
        from .llara import build_llara

        return build_llara(out)
    if task == "facts":
        from .facts import build_facts

        return build_facts(out)
    raise EraserError(f"unknown task {task!r}; choose genres, llara or facts")


def paper_step(model, edited, weight_decay: float, preset: ExperimentPreset) -> torch.Tensor:
    """ΔΘ of the paper's solver: its b, 20 Adam steps, each on the exact HVP of one seeded
    training row (its batch of 1), damped by λ."""
    b = paper_rhs(model, edited, preset.erase.batch_size)
    rows = edited.rows_before
    picks = torch.randint(len(rows), (64,), generator=torch.Generator().manual_seed(0)).tolist()
    one = torch.ones(1)

    def matvec(step: int, v: torch.Tensor) -> torch.Tensor:
        row = rows[picks[step % len(picks)]]
        hvp = hessian_vector_product("exact", model, [row], one, 1)
        return hvp(v).double().cpu() + weight_decay * v

    return paper_adam(matvec, b)


def run_experiments(task_dir: str | Path | None, names: list[str] | None,
                    preset: ExperimentPreset, work: str | Path,
                    progress: bool = True) -> dict[str, Any]:
    """Every named experiment (all of the task set's by default) in one work folder; without
    ``task_dir`` the preset's task set is built (default arguments) in ``WORK/task``. Writes
    ``WORK/results.json`` and its table and chart (``results.md``, ``results.png``)."""
    check_device(preset.device)  # before any work: a GPU preset on a machine without one
    if task_dir is None:
        task_dir = Path(work) / "task"
        if not (task_dir / "manifest.json").is_file():
            build_task_set(preset.task, task_dir)
    task = read_task_set(task_dir)
    names = names or task.experiments
    task.check_experiments(names)
    resumed = [n for n in names if result_path(work, n).is_file()]
    start = time.perf_counter()
    results = {n: run_experiment(task_dir, n, preset, work, progress) for n in names}
    # seconds of this call: the experiments in ``resumed`` were read back, not run
    summary = {"experiments": results, "seconds": time.perf_counter() - start,
               "resumed": resumed}
    write_json(Path(work) / "results.json", summary)
    write_report(summary, work)
    return summary
