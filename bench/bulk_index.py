"""Bulk erasure from a curvature index: single-row removals against one SmolLM2 adapter, each
its own version, as ``eraser serve --max-batch-requests 1 --index-rank K`` runs them
(docs/RESULTS.md, "Bulk removals from an index").

The demo's adapter and data (``eraser demo``: SmolLM2-135M, 240 MovieLens rows, rank-8 LoRA;
trained into ``--work`` when missing) are registered with a service; ``--requests`` removals
of one row each are submitted at once and served with the demo's erase settings (the
Gauss-Newton matrix on 32 Hessian rows, ``--max-iter`` CG iterations from the index, tol
1e-2). The service builds the index at the first batch and rebuilds it when a batch's first
step has a relative residual above ``--rebuild-growth`` times the index's fresh one (or 1).
Reported: the serve's total seconds against one retraining of the adapter (the demo's
training on the data less the removed rows, timed in the same run), the index builds, the
worst relative residual of a batch, the time split (solve, certificates, batch), the
latencies, and per batch the first step's residual, the index's fresh one and its age.

    .venv/bin/python bench/bulk_index.py --requests 100 --out docs/bulk_index.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from json_report import print_and_write

from eraser_dist import api
from eraser_dist.arguments import ServiceArguments
from eraser_dist.cli import quiet_library_warnings
from eraser_dist.data import read_examples, write_examples
from eraser_dist.experiments.demo import DemoPreset, demo_data
from eraser_dist.service import EraseService


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/index-bench",
                        help="where the demo's adapter is (trained there when missing)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rank", type=int, default=DemoPreset().index.rank)
    parser.add_argument("--max-iter", type=int, default=DemoPreset().erase.max_iter)
    parser.add_argument("--rebuild-growth", type=float,
                        default=ServiceArguments().index_rebuild_growth)
    parser.add_argument("--out")
    ns = parser.parse_args()
    torch.set_num_threads(2)
    quiet_library_warnings()
    preset = DemoPreset()
    erase = replace(preset.erase, max_iter=ns.max_iter)
    work = Path(ns.work)
    noisy, _ = demo_data(preset)
    data = work / "train.parquet"
    if not (work / "adapter-v0").exists():
        write_examples(data, noisy)
        api.train("smollm2-135m", data, work / "adapter-v0", preset.lora, preset.training,
                  progress=False)
    rows = read_examples(data)
    if ns.requests >= len(rows):
        parser.error(f"--requests must be below the {len(rows)} training rows")
    removed = [row.id for row in rows[-ns.requests:]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_examples(tmp / "kept.parquet", rows[: -ns.requests])
        api.train("smollm2-135m", tmp / "kept.parquet", tmp / "retrained", preset.lora,
                  preset.training, progress=False)
        retrain_seconds = time.perf_counter() - start

        service = EraseService(tmp / "root")
        token = service.add_tenant("bench")
        service.add_dataset(token, "bench", "movies", data)
        service.add_adapter(token, "bench", "genres", work / "adapter-v0", "movies")
        for row_id in removed:
            service.submit(token, "genres", {"kind": "remove", "ids": [row_id]})
        settings = ServiceArguments(max_batch_requests=1, index_rank=ns.rank,
                                    index_rebuild_growth=ns.rebuild_growth)
        worker = service.worker(settings, erase)
        start = time.perf_counter()
        batches = worker.serve(drain=True)
        serve_seconds = time.perf_counter() - start
        done = service.registry.query("SELECT finished - submitted AS latency, state "
                                      "FROM requests")
        latencies = sorted(r["latency"] for r in done if r["state"] == "done")
        reports = [json.loads(b["report"]) for b in service.registry.query(
            "SELECT report FROM batches WHERE state = 'committed' ORDER BY id")]
    result = {
        "requests": ns.requests, "done": len(latencies), "batches": batches,
        "erase": {"hvp": erase.hvp, "hessian_samples": erase.hessian_samples,
                  "max_iter": erase.max_iter, "tol": erase.tol},
        "index_rank": ns.rank, "rebuild_growth": ns.rebuild_growth,
        "index_builds": worker.index_builds,
        "serve_seconds": serve_seconds, "retrain_seconds": retrain_seconds,
        "times_retrain": serve_seconds / retrain_seconds,
        "worst_relative_residual": max(r["relative_residual"] for r in reports),
        "median_relative_residual": statistics.median(r["relative_residual"] for r in reports),
        "cg_iterations": sum(r["cg_iterations"] for r in reports),
        "seconds_in_erases": sum(r["seconds"] for r in reports),
        "seconds_in_certificates": sum(r["certify_seconds"] for r in reports),
        "seconds_in_batches": sum(r["batch_seconds"] for r in reports),
        "latency_seconds_p50": statistics.median(latencies),
        "latency_seconds_max": latencies[-1],
        "per_batch": [{key: r["index"][key] for key in ("versions_behind", "drift",
                                                         "first_residual", "fresh_residual")}
                      | {"relative_residual": r["relative_residual"],
                         "cg_iterations": r["cg_iterations"], "seconds": r["seconds"]}
                      for r in reports],
    }
    print_and_write(result, ns.out)


if __name__ == "__main__":
    main()
