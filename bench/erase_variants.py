"""How a change of the erase's options moves it toward retraining, on finished experiments.

Run after ``eraser experiment NAME --work WORK`` (it reuses that run's cached fine-tunings
and its ``result.json``): per experiment, erases the corrupted adapter as the experiment
does (``api.erase`` with the preset's arguments) once per ``--variants`` value, each a
comma-separated list of ``EraseArguments`` fields set on top of the preset's (values read
as JSON where they parse, as text otherwise: ``gradient=all_rows``, ``stages=2``,
``damping=0.1,max_iter=24``). It reports, beside the experiment's corrupted model,
retraining and erase, each variant's loss on the edited and kept rows, HR@1 and the test
targets' log-likelihood, their recoveries toward retraining (None where retraining's gap is
inside the corrupted model's 95% interval, as in the experiment), the cosine of ΔΘ to the
warm retrain's change net of drift, ‖b‖, the share of ΔΘ that ``all_rows``'s gradient term
makes, each stage's figures, and the wall time of b and of the solve. ``--reuse`` measures
the erases an earlier run left in WORK instead of erasing again.

    .venv/bin/python bench/erase_variants.py --work runs/experiments --variants stages=2

Prints JSON; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

from json_report import print_and_write

from eraser_dist import api
from eraser_dist.arguments import EraseArguments
from eraser_dist.core.reference import cosine
from eraser_dist.experiments.recommend import evaluate_recommendations
from eraser_dist.experiments.runner import (
    PRESETS,
    add_recoveries,
    reopen_experiment,
    result_path,
    row_losses,
)
from eraser_dist.llm.adapters import adapter_vector
from eraser_dist.report import REPORT_FILE


def parse_variant(text: str) -> dict:
    """"stages=2,gradient=all_rows" → {"stages": 2, "gradient": "all_rows"}."""
    known = {f.name for f in fields(EraseArguments)}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"variant {text!r}: {item!r} is not FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(known))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def measure(work: Path, name: str, preset_name: str, variants: dict[str, dict],
            reuse: bool) -> dict:
    preset = PRESETS[preset_name]
    found = reopen_experiment(work, name, preset)
    model, theta0 = found.model, found.theta0
    reference = json.loads(result_path(work, name).read_text())["methods"]
    test = found.task.split("test")
    out = {"experiment": name,
           "reference": {label: {key: reference[label][key] for key in
                                 ("edited_loss", "kept_loss", "target_loglik",
                                  "hit_rate_likelihood", "seconds")}
                         for label in ("corrupted", "retrain", "warm", "erase-ggn")}}
    for variant, settings in variants.items():
        folder = work / name / f"erase-{variant}"
        if reuse and (folder / REPORT_FILE).is_file():
            report = json.loads((folder / REPORT_FILE).read_text())
        else:
            report = api.erase(preset.base, found.corrupted, found.data, found.request, folder,
                               replace(preset.erase, **settings),
                               overwrite=True, progress=False,
                               device=preset.device).to_json()
        theta = adapter_vector(model, folder).double()
        model.set_flat(theta)
        figures = evaluate_recommendations(model, test, found.task.candidates,
                                           preset.eval_batch_size)
        figures.update(row_losses(model, found.affected, found.kept, preset.eval_batch_size))
        model.set_flat(theta0)
        # the experiment's rule: no share of a gap that lies inside the noise
        add_recoveries({"corrupted": reference["corrupted"], "retrain": reference["retrain"],
                        variant: figures})
        figures["kept_loss_change"] = figures["kept_loss"] - reference["corrupted"]["kept_loss"]
        figures["cosine_to_warm"] = cosine(theta - theta0, found.warm_change)
        figures.update({key: report.get(key) for key in (
            "rhs_norm", "stationarity", "stage_steps", "relative_residual", "delta_norm",
            "seconds", "rhs_seconds", "solve_seconds")})
        out[variant] = figures
        print(json.dumps({name: {variant: figures["recovery"]}}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="the work folder of eraser experiment")
    parser.add_argument("--experiments", nargs="+", default=["qm", "rc10", "rc40", "ir"])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--variants", nargs="+", required=True,
                        help="FIELD=VALUE[,FIELD=VALUE…] of EraseArguments, one erase each")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the erases an earlier run left in WORK, not new ones")
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work)
    # parsed up front: a typo stops the bench before the first erase, not after
    variants = {variant: parse_variant(variant) for variant in args.variants}
    result = {"preset": args.preset,
              "experiments": [measure(work, name, args.preset, variants, args.reuse)
                              for name in args.experiments]}
    print_and_write(result, args.out, indent=1)


if __name__ == "__main__":
    main()
