"""Options that check themselves, CLI flags built from them, and a CLI that starts fast."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from typing import get_args

import pytest

from eraser_dist.arguments import (
    CorruptionArguments,
    DistributedArguments,
    EraseArguments,
    GenreArguments,
    HvpChoice,
    LlaraArguments,
    LoraArguments,
    ServiceArguments,
    TrainArguments,
    check_engine,
    choices,
    field_types,
    flag,
)
from eraser_dist.cli import build_parser
from eraser_dist.distributed.plan import PlanArguments
from eraser_dist.errors import EraserError

OPTIONS = (LoraArguments, TrainArguments, EraseArguments, DistributedArguments,
           ServiceArguments, CorruptionArguments, LlaraArguments, GenreArguments, PlanArguments)


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_every_option_says_what_it_is(cls):
    for f in fields(cls):
        assert len(f.metadata.get("help", "")) >= 10, f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize(("cls", "values", "message"), [
    (EraseArguments, {"hvp": "newton"},
     "unknown --hvp 'newton'; choose one of auto, exact, fd, ggn"),
    (EraseArguments, {"max_iter": -1}, "--max-iter must be at least 0, got -1"),
    (EraseArguments, {"max_iter": 2.5}, "--max-iter must be an integer, got 2.5"),
    (EraseArguments, {"tol": 0.0}, "--tol must be positive, got 0.0"),
    (EraseArguments, {"damping": float("nan")}, "--damping must be a finite number"),
    (EraseArguments, {"hessian_samples": 0}, "--hessian-samples must be at least 1"),
    (EraseArguments, {"stages": 2, "gradient": "all_rows"},
     "--stages above 1 needs --gradient changed_rows"),
    (DistributedArguments, {"backend": "mpi"}, "unknown --backend 'mpi'"),
    (DistributedArguments, {"base_dtype": "bf16"}, "unknown --base-dtype 'bf16'"),
    (DistributedArguments, {"workers": True}, "--workers must be an integer, got True"),
    (TrainArguments, {"lr": -1.0}, "--lr must be positive"),
    (LoraArguments, {"targets": ()}, "at least one target module"),
    (ServiceArguments, {"poll_seconds": 0}, "--poll-seconds must be positive"),
    (GenreArguments, {"response_shares": (0.1, -0.2)}, "--response-shares must be at least 0"),
])
def test_a_bad_option_is_refused_where_it_is_made(cls, values, message):
    with pytest.raises(EraserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(**values)


def test_choices_come_from_the_literal_type():
    """One list of choices: the type's. A value the type allows is accepted."""
    for choice in get_args(HvpChoice):
        assert EraseArguments(hvp=choice).hvp == choice


def test_the_api_defaults_run_on_either_engine():
    check_engine(EraseArguments(), None)
    check_engine(EraseArguments(), DistributedArguments())
    with pytest.raises(EraserError, match="exact needs double backward"):
        check_engine(EraseArguments(hvp="exact"), DistributedArguments())


def _subcommand(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize(("command", "classes"), [
    ("erase", (EraseArguments, DistributedArguments)),
    ("serve", (ServiceArguments, EraseArguments, DistributedArguments)),
    ("train", (LoraArguments, TrainArguments)),
])
def test_flags_are_built_from_the_fields_with_their_help(command, classes):
    actions = {a.option_strings[0]: a for a in _subcommand(command)._actions
               if a.option_strings}
    for cls in classes:
        for f in fields(cls):
            action = actions[flag(f.name)]
            assert action.help.startswith(f.metadata["help"].replace("%", "%%"))
            allowed = choices(field_types(cls)[f.name])
            assert tuple(action.choices or ()) == allowed


def test_an_omitted_flag_leaves_the_dataclass_default():
    ns = build_parser().parse_args(["erase", "--base", "b", "--adapter", "a", "--data", "d",
                                    "--request", "r", "--out", "o", "--max-iter", "7"])
    from eraser_dist.cli.options import options_from

    args = options_from(ns, EraseArguments)
    assert args == EraseArguments(max_iter=7)


def test_cli_help_does_not_import_torch():
    """`eraser --help` must answer at once: nothing heavy is imported to build the parser."""
    code = ("import sys\nfrom eraser_dist.cli import build_parser\n"
            "build_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'ray', 'peft')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
