"""Throughput of the erase service and the cost of batching (a benchmark, not a test).

1. Bulk load: ``--requests`` single-row removals spread over ``--adapters`` tiny-llama
   adapters (one tenant each), submitted at once, then one ``serve --drain``. Prints the
   requests per hour, the batches, and each request's latency (submit → done).
2. Batch cost: on one adapter, the solver time of one batch of K removals for each K in
   ``--batch-sizes`` (the same one-process engine and settings as the service), against K=1.
   Target: K = 50 costs at most 2× one request.

    .venv/bin/python bench/service.py --out docs/service_bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from eraser_dist import api
from eraser_dist.arguments import EraseArguments, LoraArguments, ServiceArguments, TrainArguments
from eraser_dist.cli import quiet_library_warnings
from eraser_dist.core.requests import EraseRequest
from eraser_dist.data import Example, write_examples
from eraser_dist.service import EraseService

WORDS = ["cat", "dog", "owl", "elk", "bee", "ant", "cow", "pig", "rat", "emu"]


def rows_for(name: str, n: int) -> list[Example]:
    return [Example(f"{name}-{i}", f"rev {WORDS[i % 10]}{i // 10}", WORDS[i % 10][::-1])
            for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=150, help="training rows per adapter")
    parser.add_argument("--batch-sizes", default="1,10,50")
    parser.add_argument("--max-batch-requests", type=int, default=64)
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    torch.set_num_threads(2)
    quiet_library_warnings()
    erase = EraseArguments(hvp="exact", damping=0.1, tol=1e-6, max_iter=30)
    per_adapter = -(-ns.requests // ns.adapters)
    if per_adapter >= ns.rows:
        sys.exit("each adapter needs more rows than removal requests")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        service = EraseService(work / "root")
        tokens, start = {}, time.perf_counter()
        for a in range(ns.adapters):
            name = f"ad{a}"
            rows = rows_for(name, ns.rows + 16)
            write_examples(work / f"{name}.parquet", rows[: ns.rows])
            write_examples(work / f"{name}-h.parquet", rows[ns.rows:])
            api.train("tiny-llama", work / f"{name}.parquet", work / name,
                      LoraArguments(rank=2), TrainArguments(epochs=1, max_length=48),
                      progress=False)
            tokens[name] = service.add_tenant(f"t{a}")
            service.add_dataset(tokens[name], f"t{a}", "data", work / f"{name}.parquet",
                                work / f"{name}-h.parquet")
            service.add_adapter(tokens[name], f"t{a}", name, work / name, "data")
        setup = time.perf_counter() - start
        start = time.perf_counter()
        for j in range(per_adapter):
            for a in range(ns.adapters):
                if j * ns.adapters + a < ns.requests:
                    service.submit(tokens[f"ad{a}"], f"ad{a}",
                                   {"kind": "remove", "ids": [f"ad{a}-{j}"]})
        submit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        batches = service.worker(ServiceArguments(max_batch_requests=ns.max_batch_requests),
                                 erase).serve(drain=True)
        serve_seconds = time.perf_counter() - start
        done = service.registry.query("SELECT finished - submitted AS latency, state "
                                      "FROM requests")
        latencies = sorted(r["latency"] for r in done if r["state"] == "done")
        committed = service.registry.query(
            "SELECT request_ids, report FROM batches WHERE state = 'committed'")
        sizes = [len(json.loads(b["request_ids"])) for b in committed]
        phases = {key: sum(json.loads(b["report"])[key] for b in committed)
                  for key in ("seconds", "certify_seconds", "batch_seconds")}
        bulk = {
            "adapters": ns.adapters, "requests": ns.requests, "rows_per_adapter": ns.rows,
            "done": len(latencies), "batches": batches, "batch_sizes": sizes,
            "setup_seconds_train_and_register": setup, "submit_seconds": submit_seconds,
            "submits_per_second": ns.requests / submit_seconds,
            "serve_seconds": serve_seconds,
            "serve_seconds_in_solves": phases["seconds"],
            "serve_seconds_in_certificates": phases["certify_seconds"],
            "serve_seconds_in_batches": phases["batch_seconds"],
            "requests_per_hour": 3600 * len(latencies) / serve_seconds,
            "latency_seconds_p50": statistics.median(latencies),
            "latency_seconds_p95": latencies[int(0.95 * (len(latencies) - 1))],
            "latency_seconds_max": latencies[-1],
        }
        print(json.dumps(bulk, indent=2))
        cost = []
        for k in [int(x) for x in ns.batch_sizes.split(",")]:
            batch = [EraseRequest("remove", (f"ad0-{ns.rows - 1 - i}",)) for i in range(k)]
            report = api.erase("tiny-llama", work / "ad0", work / "ad0.parquet", batch,
                               work / f"k{k}", erase, progress=False).to_json()
            cost.append({"k": k, "seconds": report["seconds"],
                         "cg_iterations": report["cg_iterations"],
                         "hvp_used": report["hvp_used"],
                         "median_own_relative_residual": statistics.median(
                             r["relative_residual"] for r in report["requests"]),
                         "parts_sum_error": report["parts_sum_error"]})
        one = cost[0]["seconds"]
        for c in cost:
            c["relative_to_k1"] = c["seconds"] / one
        print(json.dumps(cost, indent=2))
    result = {"bulk": bulk, "batch_cost": cost, "engine": "one process, tiny-llama, exact "
              "HVP (ggn on negative curvature), damping 0.1, tol 1e-6, 2 threads"}
    if ns.out:
        Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
