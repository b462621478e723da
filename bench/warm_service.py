"""Throughput of ``eraser serve`` with warm engines against the code before them (a
benchmark, not a test; docs/RESULTS.md, "Warm engines").

Workload: SmolLM2-135M, 2 tenants × 2 adapters (rank-8 q/v LoRA, 1 epoch on 64 MovieLens
genre rows each, 16 held-out rows), and ``--requests`` single-row requests spread evenly
over the adapters, alternately a removal and a response correction (to "Drama", or to
"Comedy" where the row already says "Drama"), each on its own row,
all submitted before the serve starts. Each variant serves a fresh copy of the same data
root with ``eraser serve --drain --log-json`` in a child process, with the service's
default settings:

- ``warm``: this checkout;
- ``before``: the same command from a git worktree of ``--before`` (default 6d8deb1, main
  before the warm engines), its base loads counted by wrapping its ``load_base``.

Per variant: requests per hour (requests / (last finished − the serve's start, when every
request is marked submitted)), the latency of each request (submitted → finished) as p50
and p95, batches, base loads (counted at every ``load_base`` of the serve process, and as
the warm serve reports them), worker-group starts (with ``--workers``: counted at every
placement of an aggregator, each loading the base on every rank), the seconds by phase
(from the drained summary where the variant writes one), the per-batch overhead
(everything but b and the solve, as a share of the batches' wall time), and the serve
process's peak RSS. Prints one JSON object;
``--out`` writes it. ``--serve-flags`` adds flags to every variant's serve, and
``--second-base`` puts globex's adapters on a second base, for batches side by side:

    .venv/bin/python bench/warm_service.py --work runs/warm-service \\
        --out docs/experiments/warm_service.json
    .venv/bin/python bench/warm_service.py --work runs/side-by-side --requests 40 \\
        --second-base --variants warm --serve-flags "--max-iter 4 --max-engines 2" \\
        --out docs/experiments/side_by_side_2.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from eraser_dist import api
from eraser_dist.arguments import LoraArguments, TrainArguments
from eraser_dist.cli import quiet_library_warnings
from eraser_dist.data import write_examples
from eraser_dist.experiments.movielens import genre_examples
from eraser_dist.llm.models import smollm2_dir
from eraser_dist.service import EraseService

BASE = "smollm2-135m"
TENANTS = {"acme": ["a1", "a2"], "globex": ["b1", "b2"]}
ROWS, HOLDOUT = 64, 16
REPO = Path(__file__).resolve().parent.parent
# runs the `eraser` command of the code it is started in, counting every load_base in the
# serve process and every placement of an aggregator with its worker groups (--workers;
# the code before the warm engines has no counters of its own), and at exit prints those
# counts and its own peak RSS
MEASURED_CLI = """
import atexit, json, resource, sys
import actors.driver as driver
import eraser_dist.llm.models as models
loads, starts = [], []
fingerprint, place = models.base_fingerprint, driver._place
models.base_fingerprint = lambda m: loads.append(1) or fingerprint(m)
driver._place = lambda *a, **k: starts.append(1) or place(*a, **k)
atexit.register(lambda: print(json.dumps({
    "event": "measured", "base_loads": len(loads), "group_starts": len(starts),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
    file=sys.stderr))
from eraser_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""


def build_root(work: Path, n_requests: int, second_base: bool) -> Path:
    """The data root with the 4 adapters and every request journaled (cached in ``work``
    for the same settings). ``second_base``: globex's adapters are fine-tuned on SmolLM2's
    Hugging Face directory, a second base by name (the same weights), so that the serve
    holds two bases."""
    root = work / "root"
    ready = json.dumps({"requests": n_requests, "second_base": second_base})
    if (work / "root.ready").is_file() and (work / "root.ready").read_text() == ready:
        return root
    shutil.rmtree(root, ignore_errors=True)
    service = EraseService(root)
    adapters = [(t, a) for t, names in TENANTS.items() for a in names]
    per_adapter = n_requests // len(adapters)
    if per_adapter > ROWS:
        sys.exit(f"--requests {n_requests}: at most {ROWS * len(adapters)} (one row each)")
    for seed, (tenant, name) in enumerate(adapters):
        if seed % 2 == 0:
            token = service.add_tenant(tenant)
        rows = genre_examples(ROWS + HOLDOUT, seed=seed)
        data, holdout = work / f"{name}.parquet", work / f"{name}-holdout.parquet"
        write_examples(data, rows[:ROWS])
        write_examples(holdout, rows[ROWS:])
        print(f"fine-tuning {name} ...", file=sys.stderr, flush=True)
        base = str(smollm2_dir()) if second_base and tenant == "globex" else BASE
        api.train(base, data, work / name, LoraArguments(rank=8),
                  TrainArguments(epochs=1, max_length=64), overwrite=True, progress=False)
        service.add_dataset(token, tenant, f"{name}-data", data, holdout)
        service.add_adapter(token, tenant, name, work / name, f"{name}-data")
        for j, row in enumerate(rows[:per_adapter]):
            other = "Drama" if row.response != "Drama" else "Comedy"  # never a no-op
            request = ({"kind": "remove", "ids": [row.id]} if j % 2 == 0 else
                       {"kind": "correct_response",
                        "edits": [{"id": row.id, "response": other}]})
            service.submit(token, name, request)
    (work / "root.ready").write_text(ready)
    return root


def serve(root: Path, cwd: Path, flags: list[str]) -> dict:
    """One ``serve --drain`` over ``root`` by the code in ``cwd``, every request submitted
    as it starts; what it logged as JSON and its wall time."""
    service = EraseService(root)
    with service.registry.transaction() as db:  # submitted at once, as the serve starts
        db.execute("UPDATE requests SET submitted = ?", (time.time(),))
    start = time.time()
    child = subprocess.run([sys.executable, "-c", MEASURED_CLI, "serve", "--drain", *flags,
                            "--root", str(root)], cwd=cwd, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(cwd)})
    seconds = time.time() - start
    if child.returncode != 0:
        sys.exit(f"serve failed:\n{child.stderr[-3000:]}")
    lines = []
    for line in child.stderr.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the code before writes plain lines
    return {"seconds": seconds, "lines": lines}


def measure(root: Path, ran: dict) -> dict:
    """Throughput, latency and time split of a drained root."""
    service = EraseService(root)
    rows = service.registry.query("SELECT state, submitted, finished FROM requests")
    done = [r for r in rows if r["state"] == "done"]
    latency = sorted(r["finished"] - r["submitted"] for r in done)
    span = max(r["finished"] for r in done) - min(r["submitted"] for r in rows)
    batches = service.registry.query("SELECT report FROM batches WHERE state = 'committed'")
    reports = [json.loads(b["report"]) for b in batches]
    wall = sum(r["batch_seconds"] for r in reports)
    solve = sum(r["rhs_seconds"] + r["solve_seconds"] for r in reports)
    drained = next((line for line in ran["lines"] if line.get("event") == "drained"), None)
    measured = next(line for line in ran["lines"] if line.get("event") == "measured")
    return {
        "requests_done": len(done), "requests_failed": len(rows) - len(done),
        "requests_per_hour": len(done) / span * 3600,
        "latency_p50_s": statistics.median(latency),
        "latency_p95_s": latency[min(len(latency) - 1, int(0.95 * len(latency)))],
        "batches": len(batches), "serve_seconds": ran["seconds"],
        "base_loads": measured["base_loads"],  # counted at every load_base
        "group_starts": measured["group_starts"],  # each loads the base on every rank
        "base_loads_reported": drained["base_loads"] if drained else None,
        "seconds_by_phase": drained["seconds_by_phase"] if drained else None,
        "batch_seconds": wall, "b_and_solve_seconds": solve,
        # above 1 where batches ran side by side
        "batch_seconds_per_second_of_span": wall / span,
        "overhead_share": (wall - solve) / wall,
        "peak_rss_mb": measured["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/warm-service")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--before", default="6d8deb1",
                        help="the commit to compare with (run from a git worktree)")
    parser.add_argument("--variants", nargs="+", default=["before", "warm"],
                        choices=["before", "warm"])
    parser.add_argument("--serve-flags", default="",
                        help="more `eraser serve` flags for every variant, as one string")
    parser.add_argument("--second-base", action="store_true",
                        help="globex's adapters on a second base (SmolLM2's directory)")
    parser.add_argument("--out")
    ns = parser.parse_args()
    quiet_library_warnings()
    work = Path(ns.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    template = build_root(work, ns.requests, ns.second_base)
    flags = ns.serve_flags.split()
    out = {"base": BASE, "requests": ns.requests, "adapters": 4, "rows_per_adapter": ROWS,
           "second_base": ns.second_base, "serve_flags": flags, "before": ns.before,
           "variants": {}}
    for variant in ns.variants:
        root = work / f"root-{variant}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(template, root)
        if variant == "warm":
            ran = serve(root, REPO, ["--log-json", *flags])
        else:
            tree = work / f"worktree-{ns.before}"
            if not tree.exists():
                subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach",
                                str(tree), ns.before], check=True, capture_output=True)
            ran = serve(root, tree, ["--quiet", *flags])
        out["variants"][variant] = measure(root, ran)
        print(json.dumps({variant: out["variants"][variant]}), file=sys.stderr, flush=True)
    if len(out["variants"]) == 2:
        before, warm = out["variants"]["before"], out["variants"]["warm"]
        out["throughput_ratio"] = warm["requests_per_hour"] / before["requests_per_hour"]
    text = json.dumps(out, indent=2)
    print(text)
    if ns.out:
        Path(ns.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
