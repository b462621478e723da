"""The memorised-facts task builder (made-up people → their made-up cities)."""

import json
import re
from dataclasses import asdict, fields

import pytest

from eraser_dist import cli
from eraser_dist.arguments import FactsArguments
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.data import read_examples
from eraser_dist.errors import EraserError
from eraser_dist.experiments.facts import build_facts
from eraser_dist.experiments.tasksets import read_task_set

SMALL = FactsArguments(train_facts=20, valid_facts=3, test_facts=6, cities=5, remove=3,
                       correct=2, seed=4)
FILES = ("train.parquet", "valid.parquet", "test.parquet", "candidates.json",
         "remove/train.parquet", "remove/request.json", "correct/train.parquet",
         "correct/request.json", "manifest.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("facts")
    return out, build_facts(out, SMALL)


def test_counts_names_and_candidates(built):
    out, manifest = built
    task = read_task_set(out)
    assert manifest["arguments"] == asdict(SMALL)
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {
        "train": 20, "valid": 3, "test": 6}
    assert {k: (v["kind"], v["rows"], v["affected"])
            for k, v in manifest["experiments"].items()} == {
        "remove": ("remove", 20, 3), "correct": ("correct_response", 20, 2)}
    rows = [e for name in ("train", "valid", "test") for e in task.split(name)]
    names = [e.query.removeprefix("In which city does ").removesuffix(" live?") for e in rows]
    assert len(set(names)) == len(names) == 29  # unique across train, valid and test
    assert set(task.candidates) == {e.id for e in rows}
    cities = set()
    for name, row in zip(names, rows, strict=True):
        assert row.query == f"In which city does {name} live?"
        assert row.response.startswith(f"{name} lives in ") and row.response.endswith(".")
        entry = task.candidates[row.id]
        assert len(entry["candidates"]) == len(set(entry["candidates"])) == 5
        assert entry["candidates"][entry["target"]] == row.response
        cities.add(row.response.removeprefix(f"{name} lives in ").removesuffix("."))
    assert len(cities) == 5  # every city of the pool answers some fact


def test_requests_touch_the_asked_rows_and_undo_the_corruption(built):
    out, _ = built
    task = read_task_set(out)
    clean = task.split("train")
    assert read_examples(task.experiment_data("remove")) == clean
    remove = json.loads(task.experiment_request("remove").read_text())
    assert remove["kind"] == "remove" and len(set(remove["ids"])) == 3
    assert set(remove["ids"]) <= {e.id for e in clean}

    corrupted = read_examples(task.experiment_data("correct"))
    raw = json.loads(task.experiment_request("correct").read_text())
    changed = [(c, d) for c, d in zip(clean, corrupted, strict=True) if c != d]
    assert len(changed) == 2
    assert raw["edits"] == [{"id": c.id, "response": c.response} for c, _ in changed]
    for c, d in changed:  # a wrong city of the pool, same person and query
        assert d.query == c.query and d.response != c.response
        assert d.response in task.candidates[c.id]["candidates"]
    assert apply_requests([parse_request(raw)], corrupted).rows_after == clean


def test_same_seed_same_files_another_seed_other_files(built, tmp_path):
    out, manifest = built
    assert build_facts(tmp_path / "again", SMALL) == manifest
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    build_facts(tmp_path / "other", FactsArguments(**{**asdict(SMALL), "seed": 5}))
    for name in FILES:
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes(), name


def test_defaults_are_the_benchmark_setting(tmp_path):
    manifest = build_facts(tmp_path)
    assert manifest["splits"]["train"]["rows"] == 32
    assert manifest["splits"]["test"]["rows"] == 16
    assert {k: v["affected"] for k, v in manifest["experiments"].items()} == {
        "remove": 3, "correct": 2}


@pytest.mark.parametrize("flags,message", [
    (["--remove", "32"], r"--remove must be below --train-facts \(32\), got 32"),
    (["--correct", "5", "--train-facts", "5"], r"--correct must be below --train-facts"),
    (["--train-facts", "1"], r"--train-facts must be at least 2, got 1"),
    (["--cities", "1"], r"--cities must be at least 2, got 1"),
])
def test_refusals_are_one_line_errors_and_write_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "x"
    capsys.readouterr()
    assert cli.main(["data", "facts", "--out", str(out), *flags]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eraser: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert captured.out == ""
    assert not out.exists()
    with pytest.raises(EraserError, match=message.removeprefix("--")):
        FactsArguments(**{f.removeprefix("--").replace("-", "_"): int(v)
                          for f, v in zip(flags[::2], flags[1::2], strict=True)})


def test_cli_prints_the_manifest(tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["data", "facts", "--out", str(tmp_path / "t"), "--train-facts", "8",
                     "--test-facts", "2"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest == json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 8


def test_every_option_says_what_it_is():
    for f in fields(FactsArguments):
        assert len(f.metadata.get("help", "")) >= 10, f"FactsArguments.{f.name} has no help"
