"""``eraser demo | data | experiment``: the embedded demo and the paper's experiments."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import FactsArguments, GenreArguments, LlaraArguments
from .common import print_json
from .options import add_options, options_from

EXPERIMENTS = ("qm", "rc10", "rc40", "ir")


def cmd_demo(ns: argparse.Namespace) -> None:
    from ..experiments.demo import run_demo

    run_demo(ns.workdir, base=ns.base, rows=ns.rows, progress=not ns.quiet)


def cmd_data_llara(ns: argparse.Namespace) -> None:
    from ..experiments.llara import build_llara

    print_json(build_llara(ns.out, options_from(ns, LlaraArguments)))


def cmd_data_genres(ns: argparse.Namespace) -> None:
    from ..experiments.genres import build_genres

    print_json(build_genres(ns.out, options_from(ns, GenreArguments)))


def cmd_data_facts(ns: argparse.Namespace) -> None:
    from ..experiments.facts import build_facts

    print_json(build_facts(ns.out, options_from(ns, FactsArguments)))


def cmd_experiment(ns: argparse.Namespace) -> None:
    from ..experiments.runner import PRESETS, run_experiments

    names = None if ns.experiment == "all" else [ns.experiment]
    summary = run_experiments(ns.task_dir, names, PRESETS[ns.preset], ns.work,
                              progress=not ns.quiet)
    work = Path(ns.work)
    resumed = f"; read back: {', '.join(summary['resumed'])}" if summary["resumed"] else ""
    print(f"results: {work / 'results.json'}, {work / 'results.md'}, {work / 'results.png'} "
          f"({summary['seconds']:.0f} s{resumed})")


def register(sub) -> None:
    p = sub.add_parser("demo", help="end to end on SmolLM2-135M and MovieLens titles")
    p.add_argument("--workdir", default="runs/demo", help="where data and adapters go")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=None, help="training rows (default: preset)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="build experiment data sets")
    datasets = p.add_subparsers(dest="dataset", required=True)
    q = datasets.add_parser(
        "llara", help="MovieLens-100K next-movie rows (LLaRA style) and corrupted variants")
    q.add_argument("--out", required=True, help="folder for the Parquet files and requests")
    add_options(q, LlaraArguments)
    q.set_defaults(func=cmd_data_llara)
    q = datasets.add_parser("genres", help="MovieLens-100K genres from titles, and corrupted "
                            "variants (the CPU-sized task)")
    q.add_argument("--out", required=True, help="folder for the Parquet files and requests")
    add_options(q, GenreArguments)
    q.set_defaults(func=cmd_data_genres)
    q = datasets.add_parser("facts", help="made-up facts a small LM memorises (where a person "
                            "lives), with remove and correct requests")
    q.add_argument("--out", required=True, help="folder for the Parquet files and requests")
    add_options(q, FactsArguments)
    q.set_defaults(func=cmd_data_facts)

    p = sub.add_parser("experiment", help="the paper's erase experiments against retraining")
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"))
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: genre task on 2 cores; gpu: the LLaRA task, paper-sized")
    p.add_argument("--task-dir", default=None,
                   help="a task set (eraser data genres|llara); default: the preset's, built "
                   "in WORK/task")
    p.add_argument("--work", default="runs/experiments",
                   help="adapters, cached trainings and results (a rerun resumes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)
