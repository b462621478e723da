"""``eraser``: a thin command-line shell over the Python API.

Each command family has its module: :mod:`~eraser_dist.cli.engine` (train, erase, eval,
plan), :mod:`~eraser_dist.cli.experiments` (demo, data, experiment) and
:mod:`~eraser_dist.cli.service` (the erase service). Their option flags are built from the
options dataclasses (:mod:`~eraser_dist.cli.options`). Nothing heavy is imported until a
command runs, so ``eraser --help`` answers at once. User mistakes (:class:`EraserError`,
bad flags included) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import sys
import warnings

from ..errors import EraserError, Interrupted
from . import engine, experiments, service
from .common import EraserArgumentParser


def build_parser() -> EraserArgumentParser:
    parser = EraserArgumentParser(
        prog="eraser", description="Make a LoRA-adapted LLM unlearn training rows by one "
        "influence-function solve instead of a retraining run.")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (engine, experiments, service):
        family.register(sub)
    return parser


def quiet_library_warnings() -> None:
    # Deprecation chatter from transformers/peft internals is not actionable for a user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    # An adapter whose config names modules its weights lack: load_adapter says so as one error.
    warnings.filterwarnings("ignore", message="Found missing adapter keys")


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        ns = build_parser().parse_args(argv)
        ns.func(ns)
    except EraserError as err:
        print(f"eraser: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        outcome = err.outcome if isinstance(err, Interrupted) else "nothing was published"
        print(f"eraser: interrupted; {outcome}", file=sys.stderr)
        return 130
    return 0
