"""Distributed engine on this machine: time per HVP and CG iteration, bytes moved, memory.

For each base (tiny-llama, smollm2-135m) an adapter is fitted briefly on a few rows, then
one removal is erased with the fd HVP (a fixed number of CG iterations) on three layouts:
1 group × 1 rank, 1 group × 2 ranks (ZeRO-3 over 2), 2 groups × 1 rank (data parallel).
Reports per layout: median seconds per HVP (a map-reduce over the groups) and per CG
iteration, bytes moved between aggregator and workers per iteration against the base's
bytes, and per rank the base bytes it holds, its resident set after the solve and its peak.
Also the bf16 base: fd HVP error against the fp32 model's exact HVP (tiny-llama, one
process) and the distributed ΔΘ (Gauss-Newton, 1 × 2) with a bf16 base against the
fp32 one. Prints JSON::

    .venv/bin/python bench/distributed.py [--bases tiny-llama,smollm2-135m] [--iterations 3]
        [--out docs/distributed.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ray
import torch
from json_report import print_and_write

from actors.aggregator import Aggregator
from actors.driver import layout_for
from eraser_dist import api
from eraser_dist.arguments import (
    DistributedArguments,
    EraseArguments,
    LoraArguments,
    TrainArguments,
)
from eraser_dist.core.curvature import exact_hvp, fd_hvp
from eraser_dist.core.reference import cosine
from eraser_dist.core.requests import EditedObjective, apply_requests, parse_request
from eraser_dist.data import Example, read_examples, write_examples
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.experiments.movielens import genre_examples
from eraser_dist.llm.adapters import load_adapter, read_meta
from eraser_dist.llm.models import load_base

LAYOUTS = ((1, 1), (1, 2), (2, 1))


def fit(base: str, root: Path) -> tuple[Path, Path, list[Example]]:
    rows = genre_examples(16)
    data, adapter = root / f"{base}.parquet", root / f"{base}-adapter"
    write_examples(data, rows)
    api.train(base, data, adapter, LoraArguments(rank=8),
              TrainArguments(epochs=1, max_length=64), progress=False)
    return data, adapter, rows


def erase_on(spec: WorkerSpec, edited: EditedObjective, weight_decay: float,
             args: EraseArguments, workers: int, size: int, checkpoints: Path) -> dict:
    dist = DistributedArguments(workers=workers, group_size=size)
    aggregator = Aggregator.options(num_cpus=0, max_concurrency=2).remote(
        spec, layout_for(dist), str(checkpoints / f"{workers}x{size}-{spec.base_dtype}"), 0)
    try:
        start = time.perf_counter()
        found = ray.get(aggregator.erase.remote(edited, weight_decay, args))
        found["wall_seconds"] = time.perf_counter() - start
        found["memory"] = ray.get(aggregator.per_rank.remote("memory"))
        return found
    finally:
        ray.kill(aggregator)


def base_bytes(base: str) -> int:
    model = load_base(base).model
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bench_base(base: str, root: Path, iterations: int) -> dict:
    data, adapter, rows = fit(base, root)
    spec = WorkerSpec(base, str(adapter))
    edited = apply_requests([parse_request({"kind": "remove", "ids": [rows[0].id, rows[5].id]})],
                            rows)
    weight_decay = read_meta(adapter).weight_decay
    # tol 0: every layout runs the same number of iterations; damping keeps it PD.
    args = EraseArguments(hvp="fd", damping=1.0, tol=1e-30, max_iter=iterations,
                          on_negative_curvature="truncate", batch_size=8)
    size = base_bytes(base)
    out, deltas = {"base_bytes": size, "layouts": {}}, {}
    for workers, group_size in LAYOUTS:
        found = erase_on(spec, edited, weight_decay, args, workers, group_size, root)
        deltas[(workers, group_size)] = found["result"].delta
        hvps = found["seconds_per_hvp"]
        out["layouts"][f"{workers}x{group_size}"] = {
            "groups": workers, "group_size": group_size,
            "cg_iterations": found["result"].cg.iterations,
            "seconds_per_hvp_median": statistics.median(hvps),
            "hvps": len(hvps),
            # one HVP per iteration; a solve that met negative curvature ends on an extra one
            "seconds_per_cg_iteration": found["result"].solve_seconds / len(hvps),
            "seconds_total_incl_startup": found["wall_seconds"],
            "bytes_per_iteration": found["bytes_per_iteration"],
            "bytes_per_iteration_over_base_bytes": found["bytes_per_iteration"] / size,
            "ranks": [m for group in found["memory"] for m in group],
        }
    ref = deltas[(1, 1)]
    out["relative_difference_to_1x1"] = {
        f"{w}x{k}": float((d - ref).norm() / ref.norm()) for (w, k), d in deltas.items()}
    one = out["layouts"]["1x1"]
    for layout in out["layouts"].values():
        layout["hvp_speedup_vs_1x1"] = one["seconds_per_hvp_median"] / layout[
            "seconds_per_hvp_median"]
        layout["base_bytes_held_per_rank_over_1x1"] = (
            max(r["base_bytes_held"] for r in layout["ranks"])
            / one["ranks"][0]["base_bytes_held"])
    # bf16 against fp32 with Gauss-Newton: positive semi-definite, so neither solve is cut
    # short by negative curvature at a different iteration.
    ggn = replace(args, hvp="ggn")
    fp32 = erase_on(spec, edited, weight_decay, ggn, 1, 2, root)["result"].delta
    bf16 = erase_on(replace(spec, base_dtype="bfloat16"), edited, weight_decay, ggn, 1, 2,
                    root)["result"].delta
    out["bf16_base_ggn_1x2"] = {
        "delta_cosine_to_fp32": cosine(bf16, fp32),
        "delta_norm_ratio_to_fp32": float(bf16.norm() / fp32.norm()),
        "delta_relative_difference": float((bf16 - fp32).norm() / fp32.norm()),
    }
    return out


def bf16_hvp_error(root: Path) -> dict:
    """fd HVP with a bf16 base against the fp32 model's exact HVP (one process)."""
    data, adapter = root / "tiny-llama.parquet", root / "tiny-llama-adapter"
    rows = read_examples(data)
    weights = torch.ones(len(rows), dtype=torch.float64)
    fp32, _ = load_adapter(load_base("tiny-llama"), adapter)
    bf16, _ = load_adapter(load_base("tiny-llama", torch.bfloat16), adapter)
    errors = []
    for seed in range(3):
        v = torch.randn(fp32.dim, generator=torch.Generator().manual_seed(seed))
        exact = exact_hvp(fp32, rows, weights, v, 8)
        errors.append({
            "fp32_fd": float((fd_hvp(fp32, rows, weights, v, 8) - exact).norm() / exact.norm()),
            "bf16_fd": float((fd_hvp(bf16, rows, weights, v, 8) - exact).norm() / exact.norm()),
        })
    return {"relative_error_vs_fp32_exact": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="tiny-llama,smollm2-135m")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    ns = parser.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    results = {"machine_cpus": torch.get_num_threads(), "iterations": ns.iterations}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for base in ns.bases.split(","):
            results[base] = bench_base(base, root, ns.iterations)
        if "tiny-llama" in ns.bases.split(","):
            results["bf16_tiny_llama"] = bf16_hvp_error(root)
    print_and_write(results, ns.out, default=str)


if __name__ == "__main__":
    main()
