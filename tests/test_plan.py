"""The capacity planner: parameter counts, adapter sizes, per-GPU memory and traffic per CG
iteration, against hand-checked figures for the Llama-2 family. Pure arithmetic, no torch."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from eraser_dist.cli import main
from eraser_dist.distributed.plan import (
    ARCHITECTURES,
    LORA_TARGETS,
    Plan,
    PlanArguments,
    architecture_for,
    count_params,
    format_plan,
    lora_params,
    make_plan,
    parse_params,
)
from eraser_dist.errors import EraserError

L70 = ARCHITECTURES["llama-2-70b"]
GB = 1e9
QV8_70B = PlanArguments(params=70e9, gpus=8, lora_rank=8, targets=("q_proj", "v_proj"))


def test_parameter_counts_match_the_published_sizes():
    assert count_params(L70) == pytest.approx(69.0e9, abs=0.1e9)
    assert count_params(ARCHITECTURES["llama-2-7b"]) == pytest.approx(6.74e9, abs=0.02e9)
    assert count_params(ARCHITECTURES["llama-2-13b"]) == pytest.approx(13.0e9, abs=0.05e9)
    # SmolLM2 ties its LM head to the embeddings.
    assert count_params(ARCHITECTURES["smollm2-135m"]) == pytest.approx(134.5e6, abs=0.1e6)


@pytest.mark.parametrize("params, name", [
    (70e9, "llama-2-70b"), (65e9, "llama-2-70b"), (7e9, "llama-2-7b"), (6.7e9, "llama-2-7b"),
    (13e9, "llama-2-13b"), (135e6, "smollm2-135m"), (1e6, "smollm2-135m"),
    (9e9, "llama-2-7b"), (10e9, "llama-2-13b"),  # √(6.74·13.0) ≈ 9.4e9 is the boundary
])
def test_architecture_for_picks_the_closest_in_log_ratio(params, name):
    assert architecture_for(params).name == name


@pytest.mark.parametrize("rank, targets, expected, tol", [
    (8, ("q_proj", "v_proj"), 16.4e6, 0.05e6),
    (8, ("q_proj", "k_proj", "v_proj", "o_proj"), 32.8e6, 0.05e6),
    (64, LORA_TARGETS, 828e6, 1e6),
])
def test_lora_sizes_of_llama_2_70b(rank, targets, expected, tol):
    assert lora_params(L70, rank, targets) == pytest.approx(expected, abs=tol)


def test_lora_k_and_v_use_the_grouped_query_width():
    # 70B has 8 KV heads of 128: v_proj is 8192 → 1024, q_proj 8192 → 8192.
    assert lora_params(L70, 1, ["v_proj"]) == 80 * (8192 + 1024)
    assert lora_params(L70, 1, ["q_proj"]) == 80 * (8192 + 8192)
    assert lora_params(L70, 2, ["down_proj"]) == 80 * 2 * (28672 + 8192)


def test_base_shard_of_70b_bf16_over_8():
    plan = make_plan(replace(QV8_70B, group_size=8))
    assert plan.base_shard_bytes / GB == pytest.approx(17.2, abs=0.1)
    assert plan.base_bytes == count_params(L70) * 2
    assert plan.lora_bytes == lora_params(L70, 8, ("q_proj", "v_proj")) * 4
    assert plan.cg_vector_bytes == 5 * plan.lora_bytes


def test_fp32_base_doubles_the_shard():
    bf16 = make_plan(replace(QV8_70B, group_size=8))
    fp32 = make_plan(replace(QV8_70B, group_size=8, base_dtype="float32"))
    assert fp32.base_shard_bytes == pytest.approx(2 * bf16.base_shard_bytes)


def test_aggregator_traffic_is_under_one_percent_of_the_base():
    plan = make_plan(replace(QV8_70B, gpus=32, group_size=8))
    assert plan.num_groups == 4
    assert plan.aggregator_bytes_per_iteration == 2 * 4 * plan.lora_bytes
    assert plan.aggregator_bytes_per_iteration <= 0.01 * plan.base_bytes
    assert plan.ratio_to_base == pytest.approx(plan.aggregator_bytes_per_iteration
                                               / plan.base_bytes)
    assert plan.ratio_to_base == pytest.approx(0.0038, abs=0.0001)


def test_intra_group_traffic_is_two_gradients_of_gathers_plus_one_product_all_reduce():
    """Per fd HVP: 2 gradients, each gathering the whole base forward and all of it but the
    input embedding backward (no recomputation: the engine has no activation
    checkpointing), and one ring all-reduce of the float64 product."""
    plan = make_plan(replace(QV8_70B, group_size=8))
    embedding = 32000 * 8192 * 2
    expected = (2 * 7 / 8 * (2 * plan.base_bytes - embedding)
                + 2 * 7 / 8 * plan.lora_params * 8)
    assert plan.intra_group_bytes_per_iteration == pytest.approx(expected)
    assert plan.intra_group_bytes_per_iteration / plan.base_bytes == pytest.approx(3.5, abs=0.01)
    one = make_plan(replace(QV8_70B, gpus=1, group_size=1, params=7e9))
    assert one.intra_group_bytes_per_iteration == 0
    assert one.zero3_gather_bytes == 0


def test_halving_the_group_doubles_the_base_shard():
    p8 = make_plan(replace(QV8_70B, group_size=8))
    p4 = make_plan(replace(QV8_70B, group_size=4))
    assert p4.base_shard_bytes == pytest.approx(2 * p8.base_shard_bytes)
    assert (p4.num_groups, p8.num_groups) == (2, 1)
    # Everything else per GPU is the same.
    assert p4.activation_bytes == p8.activation_bytes
    assert p4.total_per_gpu_bytes - p8.total_per_gpu_bytes == pytest.approx(p8.base_shard_bytes)


def test_activation_estimate_matches_its_documented_formula():
    plan = make_plan(replace(QV8_70B, group_size=8, batch_size=2, seq_len=1024))
    t = 2 * 1024
    # every layer's working set is kept for the backward, and the fp32 logits
    expected = (80 * t * (16 * 8192 + 3 * 28672 + 2 * 64 * 1024) * 2 + t * 32000 * 4)
    assert plan.activation_bytes == expected
    # one module at a time: the largest weight (the 32000 × 8192 embedding) + the prefetch
    assert plan.zero3_gather_bytes == (32000 * 8192 + 10_000_000) * 2


def test_70b_fits_on_8x80_and_not_on_2x80():
    fits = make_plan(replace(QV8_70B, group_size=8))
    assert fits.fits and fits.total_per_gpu_bytes <= 0.9 * 80 * GB
    assert fits.total_per_gpu_bytes / GB == pytest.approx(41.4, abs=0.1)
    small = make_plan(replace(QV8_70B, gpus=2, group_size=2))
    assert not small.fits and small.total_per_gpu_bytes > 0.9 * 80 * GB
    assert format_plan(fits).splitlines()[-1] == "fits"
    assert format_plan(small).splitlines()[-1] == (
        "does not fit: need 93.1 GB per GPU, have 72.0 GB (90% of 80 GB)")
    # 8 rows of 2048 tokens keep 1.2 TB of activations per GPU: no group holds them
    long_rows = make_plan(replace(QV8_70B, group_size=8, batch_size=8, seq_len=2048))
    assert not long_rows.fits and long_rows.activation_bytes / GB > 1000


def test_default_group_size_is_the_smallest_power_of_two_that_fits():
    assert make_plan(QV8_70B).group_size == 4  # 93.1 GB per GPU over 2; 58.6 GB over 4
    assert make_plan(replace(QV8_70B, gpus=16)).group_size == 4
    assert make_plan(replace(QV8_70B, params=7e9)).group_size == 1
    # 7B at 13 sequences per GPU: 70.4 GB on one GPU; at 14, 68.3 GB per GPU over two.
    assert make_plan(replace(QV8_70B, params=7e9, batch_size=13)).group_size == 1
    assert make_plan(replace(QV8_70B, params=7e9, batch_size=14)).group_size == 2
    # With more memory 70B fits on fewer GPUs per group: 93.1 GB over 2.
    wide = make_plan(replace(QV8_70B, gpu_memory_gb=100))
    assert (wide.group_size, wide.num_groups) == (4, 2)
    wider = make_plan(replace(QV8_70B, gpu_memory_gb=141))
    assert (wider.group_size, wider.num_groups) == (2, 4)
    # Nothing fits: the largest group that divides the cluster, reported as not fitting.
    none = make_plan(replace(QV8_70B, gpus=6))
    assert (none.group_size, none.fits) == (2, False)


@pytest.mark.parametrize("changes, message", [
    ({"gpus": 6, "group_size": 4}, "do not divide"),
    ({"gpus": 4, "group_size": 8}, "larger than"),
    ({"group_size": 0}, "--group-size must be at least 1"),
    ({"gpus": 0}, "gpus"),
    ({"targets": ("q_proj", "w_proj")}, "q_proj, k_proj, v_proj, o_proj, gate_proj"),
    ({"targets": ()}, "at least one"),
    ({"lora_rank": 0}, "rank"),
    ({"params": 0}, "params"),
    ({"params": -7e9}, "params"),
    ({"params": float("nan")}, "params"),
    ({"base_dtype": "int3"}, "dtype"),
    ({"gpu_memory_gb": 0}, "memory"),
    ({"batch_size": 0}, "batch"),
])
def test_bad_input_is_an_eraser_error(changes, message):
    with pytest.raises(EraserError, match=message):
        make_plan(replace(QV8_70B, **changes))


def test_parse_params():
    assert parse_params("70e9") == 70e9
    assert parse_params("70B") == 70e9
    assert parse_params("135m") == 135e6
    for bad in ("seventy", "70X", "-1", "0", ""):
        with pytest.raises(EraserError):
            parse_params(bad)


PLAN_ARGV = ["plan", "--params", "70e9", "--gpus", "8", "--lora-rank", "8",
             "--targets", "q_proj,v_proj"]


def test_cli_prints_the_table(capsys):
    assert main(PLAN_ARGV) == 0
    out = capsys.readouterr().out
    assert "llama-2-70b" in out and "34.49 GB" in out and "262.1 MB" in out
    assert out.splitlines()[-1] == "fits"


def test_cli_json(capsys):
    assert main(PLAN_ARGV + ["--group-size", "4", "--gpus", "16", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) == set(Plan.__dataclass_fields__)
    assert obj["group_size"] == 4 and obj["num_groups"] == 4
    assert obj["base_shard_bytes"] / GB == pytest.approx(34.5, abs=0.1)
    assert obj["aggregator_bytes_per_iteration"] == 8 * obj["lora_bytes"]
    assert obj["fits"] is True and obj["total_per_gpu_bytes"] / GB == pytest.approx(58.6,
                                                                                   abs=0.1)
    assert obj["targets"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize("extra", [
    ["--gpus", "6", "--group-size", "4"],
    ["--targets", "q_proj,nope"],
    ["--lora-rank", "0"],
    ["--params", "-1"],
    ["--params", "big"],
    ["--base-dtype", "int3"],
])
def test_cli_bad_input_exits_2_with_one_line(capsys, extra):
    assert main(PLAN_ARGV + extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eraser: error:"), captured.err
    assert captured.out == ""


def test_index_of_70b_is_low_rank_and_held_off_the_gpus():
    """Llama-2-70B, rank 8 on q,v: d = 16.4M; 24 fp32 Ritz vectors and two fp64 vectors
    are 24·4·d + 16·d bytes, on the aggregator's host, none of it on a GPU rank."""
    plan = make_plan(PlanArguments(params=70e9, gpus=8, lora_rank=8, targets=("q_proj", "v_proj")))
    assert plan.lora_params == 16_384_000
    assert plan.index_bytes == 16_384_000 * (24 * 4 + 16)
    assert plan.index_bytes_per_rank == 0
    wider = make_plan(PlanArguments(params=70e9, gpus=8, lora_rank=8,
                                    targets=("q_proj", "v_proj"), index_rank=48))
    assert wider.index_bytes - plan.index_bytes == 16_384_000 * 24 * 4
