"""Cost model of erasing against retraining: wall seconds of each as the training set grows.

For each n it builds the genre task with n training movies and one response correction of
a fixed k rows (``eraser data genres`` with the share k/n), fine-tunes on the corrupted set
with the experiment preset's training (what retraining costs: same epochs, same rows), and
erases with the preset's erase arguments. Retraining is fitted as a + b·n by least squares.
The sampled erase has no term that grows with n (b needs the k changed rows, each CG
iteration the fixed Hessian sample), so it is modelled as the mean of its measured seconds;
its least-squares slope is reported to show that. A full-Hessian erase is not run at every n
(an n-row HVP per CG iteration); its seconds are modelled from the measured parts: the
sampled erase plus iterations · (n − sample) · (seconds per row HVP). The output gives the
ratio erase/retrain at each n and the n from which the sampled erase costs ≤ 0.2× retraining.

    .venv/bin/python bench/erase_cost.py --sizes 100 200 400 --out docs/experiments/cost
    .venv/bin/python bench/erase_cost.py --runs docs/experiments/cost.json --out ...  # refit

Prints JSON and writes OUT.json and OUT.png (seconds against n, log axes, with the fits).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from json_report import print_and_write

from eraser_dist import api
from eraser_dist.arguments import GenreArguments
from eraser_dist.experiments.genres import build_genres
from eraser_dist.experiments.runner import PRESETS
from eraser_dist.experiments.tasksets import read_task_set


def fit_line(n: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of seconds ≈ a + b·n, least squares."""
    b, a = np.polyfit(np.asarray(n, float), np.asarray(seconds, float), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--k", type=int, default=12, help="rows corrected at every n")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--extrapolate", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--runs", help="refit the runs of an earlier OUT.json, measuring nothing")
    parser.add_argument("--out", help="write OUT.json and OUT.png")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    runs = json.loads(Path(args.runs).read_text())["runs"] if args.runs else measure(args, preset)
    sizes = [r["n"] for r in runs]
    retrain = fit_line(sizes, [r["retrain_seconds"] for r in runs])
    erase_slope = fit_line(sizes, [r["erase_seconds"] for r in runs])[1]
    erase = float(np.mean([r["erase_seconds"] for r in runs]))
    # the sampled erase's per-row HVP cost, upper-bounded by charging it all of the solve
    per_row_hvp = min(r["solve_seconds"] / (r["cg_iterations"] * r["hessian_rows"])
                      for r in runs)
    iterations = max(r["cg_iterations"] for r in runs)
    sample = max(r["hessian_rows"] for r in runs)

    def predict(n: int) -> dict[str, float]:
        r = retrain[0] + retrain[1] * n
        full = erase + iterations * max(n - sample, 0) * per_row_hvp
        return {"n": n, "retrain_seconds": r, "erase_seconds": erase, "ratio": erase / r,
                "full_hessian_erase_seconds": full, "full_hessian_ratio": full / r}

    result = {"preset": args.preset, "k": runs[0]["k"], "epochs": preset.training.epochs,
              "hessian_samples": sample, "runs": runs,
              "retrain_fit": {"a_seconds": retrain[0], "b_seconds_per_row": retrain[1]},
              "erase_model": {"seconds": erase, "least_squares_slope_seconds_per_row":
                              erase_slope},
              "seconds_per_row_hvp_at_most": per_row_hvp,
              # erase / (a + b·n) ≤ 0.2  ⇔  n ≥ (erase/0.2 − a)/b
              "ratio_at_most_0.2_from_n": (erase / 0.2 - retrain[0]) / retrain[1],
              "predicted": [predict(n) for n in sorted(set(sizes + args.extrapolate))]}
    print_and_write(result, f"{args.out}.json" if args.out else None, indent=1)
    if args.out:
        plot(result, Path(f"{args.out}.png"))


def measure(args: argparse.Namespace, preset) -> list[dict]:
    """Fine-tune and erase at every size; one dict of seconds per size."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            task_dir = Path(tmp) / f"n{n}"
            build_genres(task_dir, GenreArguments(train_movies=n, response_shares=(args.k / n,)))
            task = read_task_set(task_dir)
            name = next(e for e in task.experiments if e.startswith("rc"))
            data = task.experiment_data(name)
            start = time.perf_counter()
            api.train(preset.base, data, Path(tmp) / f"adapter{n}", preset.lora,
                      preset.training, progress=False, device=preset.device)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            report = api.erase(preset.base, Path(tmp) / f"adapter{n}", data,
                               task.experiment_request(name), Path(tmp) / f"erased{n}",
                               replace(preset.erase, hvp="ggn"), progress=False,
                               device=preset.device).to_json()
            erase_s = time.perf_counter() - start
            runs.append({"n": n, "k": report["n_affected"], "retrain_seconds": train_s,
                         "erase_seconds": erase_s, "cg_iterations": report["cg_iterations"],
                         "hessian_rows": report["hessian_rows"],
                         "solve_seconds": report["seconds"]})
            print(json.dumps(runs[-1]), flush=True)
    return runs


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = result["predicted"]
    grid = [p["n"] for p in predicted]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label, colour in (("retrain_seconds", "retrain (fit)", "#d62728"),
                               ("erase_seconds", "erase, sampled H (mean)", "#1f77b4"),
                               ("full_hessian_erase_seconds", "erase, full H (model)",
                                "#9467bd")):
        ax.plot(grid, [p[key] for p in predicted], "-", color=colour, label=label)
    runs = result["runs"]
    ax.plot([r["n"] for r in runs], [r["retrain_seconds"] for r in runs], "o", color="#d62728",
            label="retrain (measured)")
    ax.plot([r["n"] for r in runs], [r["erase_seconds"] for r in runs], "s", color="#1f77b4",
            label="erase (measured)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training rows n")
    ax.set_ylabel("wall seconds")
    ax.set_title(f"erase {result['k']} corrected rows vs retrain "
                 f"({result['epochs']} epochs), 2 CPU cores", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
