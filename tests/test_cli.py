"""The ``eraser`` command line, driven in-process through :func:`eraser_dist.cli.main`.

One small adapter is trained per module on the built-in ``tiny-llama`` base; every erase
reuses it. User mistakes must give exit status 2, exactly one ``eraser: error:`` line on
stderr, no output directory and untouched inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_other_base
from safetensors.torch import load_file, save_file

from eraser_dist import api
from eraser_dist.cli import main
from eraser_dist.data import Example, read_examples, write_examples
from eraser_dist.llm import adapters
from eraser_dist.llm.models import load_base

N_ROWS = 16
WEIGHT_DECAY = 0.1
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ADAPTER_FILES = {CONFIG, WEIGHTS, "eraser_adapter.json"}
REPORT_KEYS = {"kind", "n_train", "n_affected", "hvp", "damping", "cg_iterations",
               "relative_residual", "negative_curvature", "delta_norm", "seconds", "gradient",
               "stationarity"}


def make_rows(n: int = N_ROWS) -> list[Example]:
    return [Example(f"r{i}", f"What is {i} plus {i}?", str(2 * i)) for i in range(n)]


def tree_state(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (hidden ones too) → sha256 of its bytes ('dir' for folders)."""
    def digest(p: Path) -> str:
        return "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    if path.is_file():
        return {".": digest(path)}
    return {str(p.relative_to(path)): digest(p) for p in sorted(path.rglob("*"))}


def write_request(folder: Path, obj, name: str = "request.json") -> Path:
    path = folder / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def erase_argv(base, adapter, data, request, out, *extra) -> list[str]:
    return ["erase", "--base", str(base), "--adapter", str(adapter), "--data", str(data),
            "--request", str(request), "--out", str(out), *extra]


def lora_delta_norm(before: Path, after: Path) -> float:
    a, b = load_file(str(before / WEIGHTS)), load_file(str(after / WEIGHTS))
    assert set(a) == set(b)
    return float(torch.cat([(b[k].double() - a[k].double()).flatten() for k in a]).norm())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread is fastest, and it does not thrash when
    other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("cli")
    data = root / "train.parquet"
    write_examples(data, make_rows())
    adapter = root / "adapter"
    code = main(["train", "--base", "tiny-llama", "--data", str(data), "--out", str(adapter),
                 "--epochs", "2", "--lr", "1e-2", "--weight-decay", str(WEIGHT_DECAY),
                 "--quiet"])
    assert code == 0
    return SimpleNamespace(root=root, data=data, adapter=adapter)


@pytest.fixture(scope="module")
def other(work) -> SimpleNamespace:
    """A second base (a local Hugging Face directory) and an adapter trained on it."""
    base = work.root / "other-base"
    make_other_base(base)
    adapter = work.root / "other-adapter"
    code = main(["train", "--base", str(base), "--data", str(work.data), "--out", str(adapter),
                 "--epochs", "1", "--quiet"])
    assert code == 0
    return SimpleNamespace(base=base, adapter=adapter)


def run_ok(capsys, argv: list[str]):
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def expect_user_error(capsys, argv: list[str], pattern: str, out: Path | None,
                      protect: list[Path]) -> str:
    """Run the CLI on a mistake and check the whole contract; returns the message."""
    protect = [p for p in protect if p is not None]
    before = {str(p): tree_state(p) for p in protect}
    parent = out.parent if out is not None else None
    listing = sorted(p.name for p in parent.iterdir()) if parent is not None else None
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as shown:
        # Whatever the CLI's own filters let through would reach a user's terminal.
        warnings.simplefilter("always")
        code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, f"stderr is not one line:\n{captured.err}"
    assert lines[0].startswith("eraser: error: ")
    assert "Traceback" not in captured.err
    assert re.search(pattern, lines[0]), lines[0]
    assert captured.out == ""
    assert [str(w.message) for w in shown] == []
    if out is not None:
        assert not out.exists()
        assert sorted(p.name for p in parent.iterdir()) == listing  # no temp folder left
    for p in protect:
        assert tree_state(p) == before[str(p)], f"{p} was modified"
    return lines[0]


# -- happy paths ----------------------------------------------------------------------------

REQUESTS = {
    "remove": {"kind": "remove", "ids": ["r1", "r5", "r9"]},
    "modify_query": {"kind": "modify_query",
                     "edits": [{"id": "r2", "query": "What is two plus two?"}]},
    "correct_response": {"kind": "correct_response",
                         "edits": [{"id": "r3", "response": "7"}, {"id": "r4", "response": "9"}]},
}


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_erase_publishes_adapter_and_report(kind, work, tmp_path, capsys):
    from peft import PeftModel

    request = write_request(tmp_path, REQUESTS[kind])
    out = tmp_path / "out"
    adapter_before = tree_state(work.adapter)
    captured = run_ok(capsys, erase_argv("tiny-llama", work.adapter, work.data, request, out,
                                         "--hvp", "ggn", "--max-iter", "30", "--tol", "1e-4",
                                         "--json", "--quiet"))

    assert ADAPTER_FILES | {"erase_report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads(captured.out)  # stdout is nothing but the report
    assert report == json.loads((out / "erase_report.json").read_text())
    assert REPORT_KEYS <= set(report)
    n_affected = len(REQUESTS[kind].get("ids", REQUESTS[kind].get("edits", [])))
    assert (report["kind"], report["n_train"], report["n_affected"]) == (kind, N_ROWS,
                                                                          n_affected)
    assert report["hvp"] == "ggn"
    assert report["damping"] == pytest.approx(WEIGHT_DECAY)  # default: the training λ
    # GGN + λI is positive definite: CG converges to the default tolerance.
    assert report["negative_curvature"] is False
    assert report["cg_converged"] is True
    assert 1 <= report["cg_iterations"] <= 30
    assert 0 <= report["relative_residual"] <= report["tol"] == 1e-4
    assert report["delta_norm"] > 0
    # b and the solve are timed apart, and together they are the erase's own wall time
    assert 0 < report["rhs_seconds"] and 0 < report["solve_seconds"]
    assert report["rhs_seconds"] + report["solve_seconds"] <= report["seconds"]

    meta = json.loads((out / "eraser_adapter.json").read_text())
    assert meta["weight_decay"] == pytest.approx(WEIGHT_DECAY)
    assert meta["lineage"]["made_by"] == "erase"
    # the lineage names the request by its hash only, never its rows or the parent's path
    assert meta["lineage"]["requests"] == [{"kind": kind, "n_rows": n_affected}]
    assert meta["lineage"]["requests_sha256"] == hashlib.sha256(json.dumps(
        [REQUESTS[kind]], sort_keys=True).encode("utf-8")).hexdigest()
    assert str(work.adapter) not in json.dumps(meta["lineage"])
    assert meta["lineage"]["n_train"] == N_ROWS - (n_affected if kind == "remove" else 0)

    # The new weights are the old ones moved by exactly the reported step.
    assert lora_delta_norm(work.adapter, out) == pytest.approx(report["delta_norm"], rel=1e-5)
    # A plain peft load gives those weights.
    saved = load_file(str(out / WEIGHTS))
    peft_model = PeftModel.from_pretrained(load_base("tiny-llama").model, str(out))
    loaded = {n.replace(".default", ""): p for n, p in peft_model.named_parameters()
              if "lora_" in n}
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name].detach(), tensor), name
    assert tree_state(work.adapter) == adapter_before


def test_erase_damping_flag_and_text_output(work, tmp_path, capsys):
    request = write_request(tmp_path, {"kind": "remove", "ids": ["r0", "r7"]})
    out = tmp_path / "out"
    captured = run_ok(capsys, erase_argv("tiny-llama", work.adapter, work.data, request, out,
                                         "--damping", "0.5", "--max-iter", "6", "--quiet"))
    report = json.loads((out / "erase_report.json").read_text())
    assert report["damping"] == 0.5
    assert report["weight_decay"] == pytest.approx(WEIGHT_DECAY)
    # no solver flag: the fast path, Gauss-Newton with its exact product on ≤ 96 rows
    assert report["hvp"] == "ggn_exact" and report["hvp_used"] == "ggn_exact"
    assert report["hessian_rows"] == N_ROWS  # fewer rows than the default sample of 96
    assert (report["n_affected"], report["n_train"]) == (2, N_ROWS)
    assert captured.out.startswith("remove of 2 of 16 rows: CG ")
    assert str(out) in captured.out
    assert lora_delta_norm(work.adapter, out) == pytest.approx(report["delta_norm"], rel=1e-5)


def test_erase_all_rows_gradient_reports_the_training_shortfall_apart(work, tmp_path, capsys):
    from eraser_dist.core.objective import gradient_sum
    from eraser_dist.llm.adapters import load_adapter

    request = write_request(tmp_path, {"kind": "remove", "ids": ["r0", "r7"]})
    reports = {}
    for gradient in ("changed_rows", "all_rows"):
        out = tmp_path / gradient
        captured = run_ok(capsys, erase_argv("tiny-llama", work.adapter, work.data, request, out,
                                             "--hvp", "ggn", "--max-iter", "30", "--tol",
                                             "1e-4", "--gradient", gradient, "--json",
                                             "--quiet"))
        reports[gradient] = json.loads(captured.out)
    shortcut, full = reports["changed_rows"], reports["all_rows"]
    assert shortcut["gradient"] == "changed_rows" and shortcut["stationarity"] is None
    # The extra term is −(W/W')∇f(Θ̂) of the adapter as trained: nonzero, short of a minimum.
    model, _ = load_adapter(load_base("tiny-llama"), work.adapter)
    theta = model.get_flat().double()
    grad_f = gradient_sum(model, make_rows(), torch.ones(N_ROWS), 8).double() / N_ROWS + (
        WEIGHT_DECAY * theta)
    expected = float(grad_f.norm()) * N_ROWS / (N_ROWS - 2)
    assert full["stationarity"]["rhs_norm"] == pytest.approx(expected, rel=1e-4)
    assert full["stationarity"]["delta_norm"] > 0
    # The request's own b is the shortcut's whole b; the parts add up to the step applied.
    assert full["requests"][0]["rhs_norm"] == pytest.approx(shortcut["rhs_norm"], rel=1e-9)
    assert full["rhs_norm"] != pytest.approx(shortcut["rhs_norm"], rel=1e-2)
    assert full["parts_sum_error"] <= 1e-4  # CG's iterate vs its span's least-residual sum
    assert full["cg_converged"] and full["relative_residual"] <= 1e-4
    assert lora_delta_norm(work.adapter, tmp_path / "all_rows") == pytest.approx(
        full["delta_norm"], rel=1e-5)


def test_erase_in_stages_reports_each_stage(work, tmp_path, capsys):
    request = write_request(tmp_path, {"kind": "correct_response", "edits": [
        {"id": "r2", "response": "5"}, {"id": "r9", "response": "7"}]})
    reports = {}
    for stages in (1, 2):
        out = tmp_path / f"stages{stages}"
        captured = run_ok(capsys, erase_argv("tiny-llama", work.adapter, work.data, request, out,
                                             "--hvp", "ggn", "--max-iter", "30", "--stages",
                                             str(stages), "--step-control", "none",
                                             "--json", "--quiet"))
        reports[stages] = json.loads(captured.out)
    one, two = reports[1], reports[2]
    assert one["stages"] == 1 and one["stage_steps"] == []
    assert two["stages"] == 2 and len(two["stage_steps"]) == 2
    first, second = two["stage_steps"]
    # The first stage is half the one-stage step (b is linear in Δw, H the same); the
    # second is taken from there, so the two do not simply add up to the one-stage step.
    assert first["rhs_norm"] == pytest.approx(one["rhs_norm"] / 2, rel=1e-6)
    assert first["delta_norm"] == pytest.approx(one["delta_norm"] / 2, rel=1e-3)
    assert second["rhs_norm"] != pytest.approx(first["rhs_norm"], rel=1e-3)
    assert two["cg_iterations"] == first["cg_iterations"] + second["cg_iterations"]
    assert two["rhs_norm"] == pytest.approx(first["rhs_norm"] + second["rhs_norm"])
    assert lora_delta_norm(work.adapter, tmp_path / "stages2") == pytest.approx(
        two["delta_norm"], rel=1e-5)
    assert two["delta_norm"] != pytest.approx(one["delta_norm"], rel=1e-3)


@pytest.mark.parametrize("control", ["auto", "path"])
def test_erase_text_says_what_the_step_control_did(control, work, tmp_path, capsys):
    """The default on a correction is the line search: the line gives its α. A path's
    stages stop at their share of --max-iter, so its line names the path and its worst
    stage's residual instead of calling the erase unconverged."""
    request = write_request(tmp_path, REQUESTS["correct_response"])
    out = tmp_path / control
    # --max-iter 4: one iteration a stage on the path, which leaves each stage unconverged
    captured = run_ok(capsys, erase_argv("tiny-llama", work.adapter, work.data, request, out,
                                         "--hvp", "ggn", "--step-control", control,
                                         "--max-iter", "16" if control == "auto" else "4",
                                         "--quiet"))
    report = json.loads((out / "erase_report.json").read_text())
    step = report["step_control"]
    if control == "auto":
        assert step["kind"] == "line_search"
        assert captured.out.startswith("correct_response of 2 of 16 rows: CG converged in "
                                       f"{report['cg_iterations']} iterations")
        assert (f"; step length α = {step['alpha']:.3g} from {len(step['evaluations'])} "
                "evaluations, ‖ΔΘ‖") in captured.out
    else:
        assert (step["kind"], step["steps"], len(report["stage_steps"])) == ("path", 4, 4)
        worst = max(s["relative_residual"] for s in report["stage_steps"])
        assert report["relative_residual"] == worst and not report["cg_converged"]
        assert report["cg_iterations"] == 4
        assert captured.out.startswith(
            f"correct_response of 2 of 16 rows: path of 4 stages, CG {report['cg_iterations']}"
            f" iterations in all (each stage stops at its share of --max-iter, not at --tol), "
            f"worst stage's relative residual {worst:.2e}, ‖ΔΘ‖")
        assert "converged" not in captured.out


def test_eval_json_matches_api(work, capsys):
    captured = run_ok(capsys, ["eval", "--base", "tiny-llama", "--adapter", str(work.adapter),
                               "--data", str(work.data), "--json", "--quiet"])
    shown = json.loads(captured.out)
    expected = api.evaluate("tiny-llama", work.adapter, work.data)
    assert shown["n"] == N_ROWS
    assert set(shown["losses"]) == {f"r{i}" for i in range(N_ROWS)}
    assert shown["losses"] == pytest.approx(expected["losses"], rel=1e-9)
    assert shown["mean_loss"] == pytest.approx(expected["mean_loss"], rel=1e-9)
    assert shown["mean_loss"] == pytest.approx(sum(shown["losses"].values()) / N_ROWS)
    assert 0 < shown["mean_loss"] < 20


def test_eval_text_output(work, capsys):
    captured = run_ok(capsys, ["eval", "--base", "tiny-llama", "--adapter", str(work.adapter),
                               "--data", str(work.data), "--batch-size", "5", "--quiet"])
    lines = captured.out.splitlines()
    expected = api.evaluate("tiny-llama", work.adapter, work.data, batch_size=5)
    assert lines[0] == f"mean response loss {expected['mean_loss']:.4f} over 16 rows"
    assert lines[1:] == [f"{k}\t{v:.4f}" for k, v in expected["losses"].items()]


def test_existing_output_is_refused_then_replaced_with_overwrite(work, tmp_path, capsys,
                                                                monkeypatch):
    request = write_request(tmp_path, {"kind": "remove", "ids": ["r3"]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("keep me unless --overwrite")
    argv = erase_argv("tiny-llama", work.adapter, work.data, request, out, "--max-iter", "3",
                      "--hvp", "ggn", "--quiet")
    train_argv = ["train", "--base", "tiny-llama", "--data", str(work.data), "--out", str(out),
                  "--quiet"]
    before = tree_state(out)
    with monkeypatch.context() as patch:
        forbid_model_loading(patch)  # refused before any work
        for command in (argv, train_argv):
            expect_user_error(capsys, command, r"output .*out already exists; pass --overwrite",
                              None, [work.adapter, work.data, request, out])
    assert tree_state(out) == before

    run_ok(capsys, [*argv, "--overwrite"])
    assert {p.name for p in out.iterdir()} >= ADAPTER_FILES | {"erase_report.json"}
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("failure", ["error", "interrupt", "error-overwrite"])
def test_failed_save_publishes_nothing(failure, work, tmp_path, capsys, monkeypatch):
    request = write_request(tmp_path, {"kind": "remove", "ids": ["r2"]})
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "new"
    if failure == "error-overwrite":
        out.mkdir()
        (out / "old.txt").write_text("the previous result")
    listing = tree_state(parent)
    reached = []

    def broken_write_json(path: Path, obj) -> None:
        # Called after peft has written its files into the temporary folder.
        reached.append({p.name for p in path.parent.iterdir()})
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError("No space left on device")

    monkeypatch.setattr(adapters, "write_json", broken_write_json)
    argv = erase_argv("tiny-llama", work.adapter, work.data, request, out, "--max-iter", "2",
                      "--hvp", "ggn", "--quiet", "--overwrite")
    capsys.readouterr()
    if failure == "interrupt":
        assert main(argv) == 130
        assert "nothing was published" in capsys.readouterr().err
    else:
        with pytest.raises(OSError, match="No space left"):
            main(argv)
    assert reached and {CONFIG, WEIGHTS} <= reached[0]
    assert tree_state(parent) == listing  # no new dir, no temp dir, old result intact


def test_train_warm_start_from_init_adapter(work, tmp_path, capsys):
    init = load_file(str(work.adapter / WEIGHTS))
    assert any(float(t.norm()) > 0 for k, t in init.items() if "lora_B" in k)
    for name, extra in (("warm", []), ("warm-same-shape", ["--rank", "8", "--targets",
                                                           "v_proj,q_proj"])):
        out = tmp_path / name
        run_ok(capsys, ["train", "--base", "tiny-llama", "--data", str(work.data), "--out",
                        str(out), "--init-adapter", str(work.adapter), "--epochs", "1",
                        "--lr", "1e-9", "--quiet", *extra])
        warm = load_file(str(out / WEIGHTS))
        assert set(warm) == set(init)
        for key, tensor in init.items():
            assert torch.allclose(warm[key], tensor, rtol=0, atol=1e-6), key
        meta = json.loads((out / "eraser_adapter.json").read_text())
        assert meta["lineage"]["init_adapter"] == str(work.adapter)
        config = json.loads((out / CONFIG).read_text())
        assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


# -- user mistakes --------------------------------------------------------------------------


def _request_case(obj):
    def build(ctx):
        request = write_request(ctx.tmp, obj)
        argv = erase_argv("tiny-llama", ctx.work.adapter, ctx.work.data, request, ctx.out,
                          "--quiet")
        return argv, [ctx.work.adapter, ctx.work.data, request]
    return build


def _distributed_case(*options):
    def build(ctx):
        request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
        argv = erase_argv("tiny-llama", ctx.work.adapter, ctx.work.data, request, ctx.out,
                          "--quiet", *options)
        return argv, [ctx.work.adapter, ctx.work.data, request]
    return build


def _data_case(columns):
    def build(ctx):
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = ctx.tmp / "bad.parquet"
        if isinstance(columns, bytes):
            data.write_bytes(columns)
        else:
            pq.write_table(pa.table(columns), data)
        request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
        argv = erase_argv("tiny-llama", ctx.work.adapter, data, request, ctx.out, "--quiet")
        return argv, [ctx.work.adapter, data, request]
    return build


def _copied_adapter(ctx) -> Path:
    copy = ctx.tmp / "adapter-copy"
    shutil.copytree(ctx.work.adapter, copy)
    return copy


def _edited_config_case(edit):
    def build(ctx):
        adapter = _copied_adapter(ctx)
        config = json.loads((adapter / CONFIG).read_text())
        edit(config)
        (adapter / CONFIG).write_text(json.dumps(config))
        request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
        argv = erase_argv("tiny-llama", adapter, ctx.work.data, request, ctx.out, "--quiet")
        return argv, [adapter, ctx.work.data]
    return build


def _nan_case(ctx):
    adapter = _copied_adapter(ctx)
    tensors = load_file(str(adapter / WEIGHTS))
    tensors = {k: torch.full_like(v, float("nan")) if "lora_B" in k else v
               for k, v in tensors.items()}
    save_file(tensors, str(adapter / WEIGHTS))
    request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
    argv = erase_argv("tiny-llama", adapter, ctx.work.data, request, ctx.out, "--quiet")
    return argv, [adapter, ctx.work.data]


def _foreign_adapter_case(direction):
    def build(ctx):
        other = ctx.other()
        if direction == "other-adapter-on-tiny":
            base, adapter = "tiny-llama", other.adapter
        else:
            base, adapter = other.base, ctx.work.adapter
        request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
        argv = erase_argv(base, adapter, ctx.work.data, request, ctx.out, "--quiet")
        return argv, [adapter, other.base, ctx.work.data]
    return build


def _init_adapter_case(extra):
    def build(ctx):
        argv = ["train", "--base", "tiny-llama", "--data", str(ctx.work.data), "--out",
                str(ctx.out), "--init-adapter", str(ctx.work.adapter), "--quiet", *extra]
        return argv, [ctx.work.adapter, ctx.work.data]
    return build


def _other_training_set(ctx):
    rows = read_examples(ctx.work.data)
    data = ctx.tmp / "changed.parquet"
    write_examples(data, [replace(rows[0], response="something else"), *rows[1:]])
    request = write_request(ctx.tmp, {"kind": "remove", "ids": ["r1"]})
    argv = erase_argv("tiny-llama", ctx.work.adapter, data, request, ctx.out, "--quiet")
    return argv, [ctx.work.adapter, data, request]


def _add_k_proj(config):
    config["target_modules"] = [*config["target_modules"], "k_proj"]


def _drop_v_proj(config):
    config["target_modules"] = [t for t in config["target_modules"] if t != "v_proj"]


MISTAKES = {
    "unknown-ids": (_request_case({"kind": "remove", "ids": ["r1", "r99"]}),
                    r"unknown id\(s\) r99 not in the training set"),
    "duplicate-ids": (_request_case({"kind": "remove", "ids": ["r2", "r2"]}),
                      r"duplicate id\(s\) r2"),
    "edit-equals-original": (
        _request_case({"kind": "correct_response", "edits": [{"id": "r3", "response": "6"}]}),
        "edit of 'r3' equals the current response"),
    "edit-query-equals-original": (
        _request_case({"kind": "modify_query",
                       "edits": [{"id": "r4", "query": "What is 4 plus 4?"}]}),
        "edit of 'r4' equals the current query"),
    "empty-ids": (_request_case({"kind": "remove", "ids": []}), "'ids' is empty"),
    "empty-edits": (_request_case({"kind": "modify_query", "edits": []}), "'edits' is empty"),
    "empty-file": (_request_case(""), "is not valid JSON"),
    "invalid-json": (_request_case('{"kind": "remove", "ids": ["r1"],}'), "is not valid JSON"),
    "unknown-kind": (_request_case({"kind": "forget", "ids": ["r1"]}), "unknown kind 'forget'"),
    "remove-everything": (_request_case({"kind": "remove",
                                         "ids": [f"r{i}" for i in range(N_ROWS)]}),
                          "remove every row"),
    "missing-columns": (_data_case({"id": ["r1"], "prompt": ["q"], "answer": ["a"]}),
                        r"lacks column\(s\) query, response"),
    "duplicate-rows": (_data_case({"id": ["r1", "r2", "r1"], "query": ["a", "b", "c"],
                                   "response": ["x", "y", "z"]}), r"duplicate id\(s\): r1"),
    "not-parquet": (_data_case(b"id,query,response\nr1,a,b\n"), "not a readable Parquet file"),
    "other-adapter-on-tiny": (_foreign_adapter_case("other-adapter-on-tiny"),
                              "was trained on base '.*other-base', not on 'tiny-llama'"),
    "tiny-adapter-on-other": (_foreign_adapter_case("tiny-adapter-on-other"),
                              "was trained on base 'tiny-llama', not on '.*other-base'"),
    "config-adds-target": (_edited_config_case(_add_k_proj),
                           "adapter_config.json and its weights disagree on the target modules"),
    "config-drops-target": (_edited_config_case(_drop_v_proj),
                            "adapter_config.json and its weights disagree on the target modules"),
    "nan-weights": (_nan_case, "NaN"),
    "other-training-set": (_other_training_set, "is not the training set adapter .* was fitted on"),
    "init-adapter-other-rank": (_init_adapter_case(["--rank", "4"]),
                                "has rank 8 on q_proj,v_proj; it cannot be trained as rank 4"),
    "init-adapter-other-targets": (_init_adapter_case(["--targets", "q_proj,k_proj"]),
                                   "cannot be trained as rank 8 on q_proj,k_proj"),
    "distributed-exact-hvp": (_distributed_case("--workers", "2", "--hvp", "exact"),
                              "exact needs double backward.*ZeRO-3.*use --hvp fd or ggn"),
    "distributed-zero-workers": (_distributed_case("--workers", "0"),
                                 "--workers must be at least 1, got 0"),
    "distributed-negative-restarts": (
        _distributed_case("--group-size", "2", "--max-group-restarts", "-1"),
        "--max-group-restarts must be at least 0, got -1"),
    "distributed-tuning-alone": (_distributed_case("--base-dtype", "bfloat16"),
                                 "--base-dtype tune the distributed engine; switch it on"),
    "unknown-choice": (_distributed_case("--hvp", "newton"),
                       r"argument --hvp: invalid choice: 'newton' .*see `eraser erase --help`"),
    "not-a-number": (_distributed_case("--damping", "lots"),
                     "argument --damping: invalid float value: 'lots'"),
    "negative-damping": (_distributed_case("--damping", "-1"),
                         "--damping must be at least 0, got -1.0"),
    "zero-stages": (_distributed_case("--stages", "0"), "--stages must be at least 1, got 0"),
    "stages-all-rows": (_distributed_case("--stages", "3", "--gradient", "all_rows"),
                        "--stages above 1 needs --gradient changed_rows"),
}


# Mistakes in the request or the data are found before any model is loaded.
FOUND_BEFORE_LOADING = {"unknown-ids", "duplicate-ids", "edit-equals-original",
                        "edit-query-equals-original", "empty-ids", "empty-edits", "empty-file",
                        "invalid-json", "unknown-kind", "remove-everything", "missing-columns",
                        "duplicate-rows", "not-parquet", "distributed-exact-hvp",
                        "distributed-zero-workers", "distributed-negative-restarts",
                        "distributed-tuning-alone", "unknown-choice", "not-a-number",
                        "negative-damping", "zero-stages", "stages-all-rows"}


def forbid_model_loading(monkeypatch) -> None:
    def load_base(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    monkeypatch.setattr(api, "load_base", load_base)


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistake(case, work, tmp_path, capsys, request, monkeypatch):
    build, pattern = MISTAKES[case]
    ctx = SimpleNamespace(work=work, tmp=tmp_path, out=tmp_path / "out",
                          other=lambda: request.getfixturevalue("other"))
    argv, protect = build(ctx)
    if case in FOUND_BEFORE_LOADING:
        forbid_model_loading(monkeypatch)
    expect_user_error(capsys, argv, pattern, ctx.out, protect)


def test_output_equal_to_input_adapter_is_refused(work, tmp_path, capsys):
    adapter = _copied_adapter(SimpleNamespace(tmp=tmp_path, work=work))
    request = write_request(tmp_path, {"kind": "remove", "ids": ["r1"]})
    argv = erase_argv("tiny-llama", adapter, work.data, request, adapter, "--overwrite",
                      "--quiet")
    expect_user_error(capsys, argv, "must differ from the input adapter", None,
                      [adapter, tmp_path])


@pytest.mark.parametrize("case", ["tiny-adapter-on-other", "config-adds-target"])
def test_console_script_prints_one_line(case, work, tmp_path, request):
    """The installed ``eraser`` in its own process: library logging, warnings and progress
    bars would all reach this stderr."""
    build, pattern = MISTAKES[case]
    ctx = SimpleNamespace(work=work, tmp=tmp_path, out=tmp_path / "out",
                          other=lambda: request.getfixturevalue("other"))
    argv, protect = build(ctx)
    argv = [a for a in argv if a != "--quiet"]  # the contract holds without --quiet too
    script = Path(sys.executable).with_name("eraser")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "eraser_dist.cli"]
    before = {str(p): tree_state(p) for p in protect}
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eraser: error: "), done.stderr
    assert re.search(pattern, lines[0])
    assert not ctx.out.exists()
    assert {str(p): tree_state(p) for p in protect} == before
