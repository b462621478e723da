"""The experiment runner on tiny-llama: every method side by side, deterministic, resumable."""

import json

import pytest
import torch

from eraser_dist import cli
from eraser_dist.arguments import EraseArguments, GenreArguments, LoraArguments, TrainArguments
from eraser_dist.errors import EraserError
from eraser_dist.experiments.genres import build_genres
from eraser_dist.experiments.report import results_table
from eraser_dist.experiments.runner import (
    ExperimentPreset,
    add_recoveries,
    recovery,
    run_experiments,
)
from eraser_dist.llm.models import load_base

TINY = ExperimentPreset(
    base="tiny-llama", lora=LoraArguments(rank=2),
    training=TrainArguments(epochs=1, batch_size=8, max_length=64),
    erase=EraseArguments(hessian_samples=8, max_iter=3, tol=1e-2), hvps=("ggn", "exact"),
    kept_sample=8)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("task")
    build_genres(out, GenreArguments(train_movies=24, valid_movies=4, test_movies=8,
                                     candidates=3))
    return out


def without_seconds(obj):
    """Everything but the wall times (``seconds``, ``rhs_seconds``, ``solve_seconds``)."""
    if isinstance(obj, dict):
        return {k: without_seconds(v) for k, v in obj.items() if not k.endswith("seconds")}
    return obj


def test_recovery_is_the_share_of_the_retrain_gap_closed():
    assert recovery(-1.5, -2.0, -1.0) == 0.5
    assert recovery(3.0, 4.0, 2.0) == 0.5  # a loss that should fall
    assert recovery(1.0, 1.0, 1.0) is None


def test_no_recovery_of_a_gap_inside_the_noise():
    def figures(hit, loglik, loss):
        return {"hit_rate_likelihood": {"mean": hit, "low": hit - 0.1, "high": hit + 0.1},
                "target_loglik": {"mean": loglik, "low": loglik - 0.1, "high": loglik + 0.1},
                "edited_loss": loss}

    methods = add_recoveries({"corrupted": figures(0.5, -1.0, 1.0),
                              "retrain": figures(0.55, -0.7, 0.9),
                              "erase": figures(0.6, -0.85, 0.95)})
    # HR@1 moved 0.05 < the half-width 0.1: no share; log-lik moved 0.3: a share
    assert methods["erase"]["recovery"] == {"hit_rate_likelihood": None,
                                            "target_loglik": pytest.approx(0.5),
                                            "edited_loss": pytest.approx(0.5)}


def test_same_seed_gives_the_same_table_and_a_rerun_resumes(task, tmp_path):
    first = run_experiments(task, ["rc40", "ir"], TINY, tmp_path / "a", progress=False)
    second = run_experiments(task, ["rc40", "ir"], TINY, tmp_path / "b", progress=False)
    assert without_seconds(first["experiments"]) == without_seconds(second["experiments"])
    rc = first["experiments"]["rc40"]
    assert set(rc["methods"]) == {"corrupted", "retrain", "warm", "erase-ggn", "erase-exact",
                                  "paper"}
    assert rc["n_affected"] == 10 and rc["kind"] == "correct_response"
    methods = rc["methods"]
    assert methods["corrupted"]["recovery"]["edited_loss"] == 0.0
    assert methods["retrain"]["recovery"]["edited_loss"] == 1.0
    # the paper's 20 Adam steps at lr 1e-5 move Θ less than our step does
    assert methods["paper"]["norm_ratio_to_warm"] < methods["erase-ggn"]["norm_ratio_to_warm"]
    # the reference checked against itself: another shuffle, so not the same change
    assert rc["warm_reference"]["reseeded_cosine"] < 0.999
    assert rc["warm_reference"]["reseeded_norm_ratio"] > 0
    # the table and the chart are rendered from the same figures
    table = (tmp_path / "a" / "results.md").read_text()
    assert table == results_table(first) + "\n"
    ggn = methods["erase-ggn"]
    row = next(line for line in table.splitlines() if line.startswith("| erase-ggn |"))
    assert f"| {ggn['edited_loss']:.3f} | {ggn['kept_loss']:.3f} |" in row
    assert f"| {ggn['cosine_to_warm']:.2f} |" in row
    assert f"erase-ggn: {rc['solver']['erase-ggn']['cg_iterations']} CG iterations" in table
    assert "b from the changed rows" in table and rc["solver"]["erase-ggn"]["gradient"] == (
        "changed_rows")
    over_all_rows = json.loads(json.dumps(first))
    over_all_rows["experiments"]["rc40"]["solver"]["erase-ggn"].update(
        gradient="all_rows", rhs_norm=0.5, stationarity={"rhs_norm": 0.25})
    assert "b over every row (‖b‖ 0.50, of which Θ̂'s own gradient term 0.25)" in (
        results_table(over_all_rows))
    in_stages = json.loads(json.dumps(first))
    in_stages["experiments"]["rc40"]["solver"]["erase-ggn"].update(
        stages=2, cg_iterations=7, relative_residual=0.125)
    assert "erase-ggn: 7 CG iterations with the ggn HVP (fisher diagonal preconditioner) over " \
        "2 stages, each from where the last ended, worst stage residual 0.12" in (
            results_table(in_stages))
    assert "stages" not in table and rc["solver"]["erase-ggn"]["stages"] == 1
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")
            and "---" not in line and "method" not in line][:6] == [
        "| corrupted", "| erase-ggn", "| erase-exact", "| paper", "| warm", "| retrain"]
    assert (tmp_path / "a" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resuming: a finished experiment is read back, not run again
    result = tmp_path / "a" / "rc40" / "result.json"
    marked = json.loads(result.read_text()) | {"marker": 1}
    result.write_text(json.dumps(marked))
    again = run_experiments(task, ["rc40"], TINY, tmp_path / "a", progress=False)
    assert again["experiments"]["rc40"]["marker"] == 1
    assert first["resumed"] == [] and again["resumed"] == ["rc40"]


def test_unknown_experiments_and_missing_task_sets_are_one_line_errors(task, tmp_path, capsys):
    with pytest.raises(EraserError, match="no experiment 'qx'"):
        run_experiments(task, ["qx"], TINY, tmp_path, progress=False)
    assert cli.main(["experiment", "ir", "--task-dir", str(tmp_path / "none"),
                     "--work", str(tmp_path / "w")]) == 2
    assert "not a task set" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_devices_this_machine_lacks_are_one_line_errors_before_any_work(tmp_path, capsys):
    # the gpu preset stops before building a task set or training anything
    assert cli.main(["experiment", "ir", "--preset", "gpu", "--work", str(tmp_path / "g")]) == 2
    assert "torch sees 0 CUDA device(s)" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    with pytest.raises(EraserError, match="unknown device 'tpu'"):
        load_base("tiny-llama", device="tpu")
    with pytest.raises(EraserError, match="'cuda:1' requested"):
        load_base("tiny-llama", device="cuda:1")
    assert load_base("tiny-llama", device="cpu").model.device.type == "cpu"
