"""How far retraining lands from itself: the recovery of a retraining with another seed,
measured against the seed the step-control bench compares with (docs/RESULTS.md, "Step
control").

The step-control targets ask an erase to recover 0.9 … 1.1 of retraining's change of the
edited rows' loss. Retraining is itself a seeded fine-tune (LoRA initialisation and
shuffles), so the recovery of one retraining against another is the spread of the
reference: a target narrower than it cannot be told from noise. For each experiment of a
task set (as ``bench/step_control.py``: ``--task facts`` or ``--task genres``, the same
presets and fine-tuning cache under ``--work``), it retrains on the edited set with each of
``--seeds`` and gives, against the reference (the preset's own seed):

- ``edited_recovery``: (m − Θ̂)/(retrain − Θ̂) of the edited rows' mean loss;
- ``kept_change``: the kept rows' mean loss change from Θ̂, beside the reference's;
- ``seconds``: the retraining's wall time (cached: the first run's).

No solve is run: the fine-tunes are the whole cost (cached by their inputs, so a rerun of
this or of the step-control bench reuses them).

    .venv/bin/python bench/retrain_noise.py --task facts --work runs/step-control \\
        --out docs/experiments/retrain_noise_facts.json

Prints one JSON object per experiment as it finishes; ``--out`` writes them all.
"""

from __future__ import annotations

from pathlib import Path

from step_control import PRESET, for_each_experiment, task_options

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


def run(work: Path, name: str, preset: ExperimentPreset, seeds: list[int]) -> dict:
    inputs = experiment_inputs(work, name, preset)
    train = Trainings(work / "trainings", preset, False)
    model, _ = load_adapter(load_base(preset.base), inputs.corrupted)
    affected, kept = measured_rows(inputs.edited, inputs.request, inputs.rows,
                                   preset.kept_sample)

    def losses(adapter: Path) -> dict[str, float]:
        model.set_flat(adapter_vector(model, adapter).double())
        return row_losses(model, affected, kept, preset.eval_batch_size)

    start = losses(inputs.corrupted)
    reference = losses(inputs.retrained)
    out: dict = {"experiment": name, "kind": inputs.request.kind,
                 "n_affected": len(inputs.request.ids), "reference_seed": preset.training.seed,
                 "reference": {**reference, "seconds": inputs.retrain_seconds,
                               "kept_change": reference["kept_loss"] - start["kept_loss"]}}
    for seed in seeds:
        adapter, seconds = train(work / name / "edited.parquet", seed=seed)
        figures = losses(adapter)
        out[f"seed{seed}"] = {
            **figures, "seconds": seconds,
            "edited_recovery": recovery(figures["edited_loss"], start["edited_loss"],
                                        reference["edited_loss"]),
            "kept_change": figures["kept_loss"] - start["kept_loss"]}
    return out


def main() -> None:
    parser = task_options(__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2],
                        help="training seeds of the other retrainings (the reference is the "
                        "preset's own, 0)")
    args = parser.parse_args()
    reference_seed = PRESET[args.task].training.seed
    if reference_seed in args.seeds:
        parser.error(f"--seeds must not include the reference's seed {reference_seed}")
    for_each_experiment(args, lambda work, name, preset: run(work, name, preset, args.seeds))


if __name__ == "__main__":
    main()
