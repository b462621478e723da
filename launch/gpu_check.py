"""The GPU check behind ``launch/gpu_check.sh``: is the CUDA/NCCL path what the CPU path is?

On SmolLM2-135M with a rank-8 q/v LoRA fitted for one epoch on 24 genre rows (on the GPU),
a removal of 2 rows is erased three times with the same settings (Gauss-Newton HVP, all
rows, 8 CG iterations): on the CPU, on ``cuda`` in this process, and on the distributed
engine with one group of one rank on NCCL. Each GPU ΔΘ must equal the CPU's to a relative
difference ≤ 1e-3. One fd HVP is timed in this process, and one fd CG iteration on the
distributed engine. Then a cut-down ``eraser experiment qm --preset gpu`` runs on a small
LLaRA task (48 training users). Prints one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

TOLERANCE = 1e-3
NO_CUDA_EXIT = 2


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device on this machine; "
              "run launch/gpu_check.sh on a GPU machine", file=sys.stderr)
        return NO_CUDA_EXIT
    work = Path(argv[0] if argv else "runs/gpu-check")
    work.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "checks": {}}
    try:
        summary.update(engine_checks(work, summary["checks"]))
        try:
            summary["experiment"] = cut_down_experiment(work)
            summary["checks"]["experiment_ran"] = True
        except subprocess.CalledProcessError as err:
            summary["experiment"] = {"error": f"{' '.join(err.cmd[2:])} exited {err.returncode}"}
            summary["checks"]["experiment_ran"] = False
    finally:
        summary["passed"] = bool(summary["checks"]) and all(summary["checks"].values())
        print(json.dumps(summary, indent=2, default=str))
    return 0 if summary["passed"] else 1


def engine_checks(work: Path, checks: dict[str, bool]) -> dict:
    from eraser_dist import api
    from eraser_dist.arguments import (
        DistributedArguments,
        EraseArguments,
        LoraArguments,
        TrainArguments,
    )
    from eraser_dist.core.curvature import fd_hvp
    from eraser_dist.data import read_examples, write_examples
    from eraser_dist.experiments.movielens import genre_examples
    from eraser_dist.llm.adapters import adapter_vector, load_adapter
    from eraser_dist.llm.models import load_base

    base = "smollm2-135m"
    rows = genre_examples(24)
    data, adapter = work / "train.parquet", work / "adapter"
    write_examples(data, rows)
    start = time.perf_counter()
    api.train(base, data, adapter, LoraArguments(rank=8),
              TrainArguments(epochs=1, max_length=64), overwrite=True, progress=False,
              device="cuda")
    out = {"train_seconds_cuda": time.perf_counter() - start}
    request = work / "remove.json"
    request.write_text(json.dumps({"kind": "remove", "ids": [rows[0].id, rows[7].id]}))
    args = EraseArguments(hvp="ggn", hessian_samples=None, max_iter=8, tol=1e-12,
                          damping=0.03)
    runs = {"cpu": {"device": "cpu"}, "cuda": {"device": "cuda"},
            "nccl_1x1": {"distributed": DistributedArguments(workers=1, group_size=1,
                                                             backend="nccl")}}
    on_cpu, _ = load_adapter(load_base(base), adapter)  # reads every version's weights
    deltas, seconds = {}, {}
    for name, where in runs.items():
        erased = work / f"erased-{name}"
        report = api.erase(base, adapter, data, request, erased, args, overwrite=True,
                           progress=False, **where)
        seconds[name] = report.seconds
        deltas[name] = adapter_vector(on_cpu, erased) - adapter_vector(on_cpu, adapter)
    differences = {name: float((deltas[name] - deltas["cpu"]).norm() / deltas["cpu"].norm())
                   for name in ("cuda", "nccl_1x1")}
    for name, difference in differences.items():
        checks[f"delta_{name}_equals_cpu"] = difference <= TOLERANCE
    out.update({"erase_seconds": seconds, "delta_relative_difference_to_cpu": differences})

    model, _ = load_adapter(load_base(base, device="cuda"), adapter)
    kept = read_examples(data)[1:]
    weights = torch.ones(len(kept), dtype=torch.float64)
    v = torch.randn(model.dim, generator=torch.Generator().manual_seed(0))
    fd_hvp(model, kept, weights, v, 8)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    fd_hvp(model, kept, weights, v, 8)
    torch.cuda.synchronize()
    out["fd_hvp_seconds_cuda"] = time.perf_counter() - start
    fd_report = api.erase(base, adapter, data, request, work / "erased-fd-nccl",
                          replace(args, hvp="fd", max_iter=1), overwrite=True,
                          progress=False, distributed=runs["nccl_1x1"]["distributed"])
    out["fd_cg_iteration_seconds_nccl_1x1"] = fd_report.solve_seconds
    return out


def cut_down_experiment(work: Path) -> dict:
    """``eraser data llara`` for 48 users and ``eraser experiment qm --preset gpu`` on it."""
    task, runs = work / "llara", work / "experiment"
    eraser = [sys.executable, "-m", "eraser_dist.cli"]
    start = time.perf_counter()
    subprocess.run([*eraser, "data", "llara", "--out", str(task), "--train-users", "48",
                    "--valid-users", "8", "--test-users", "16"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*eraser, "experiment", "qm", "--preset", "gpu", "--task-dir", str(task),
                    "--work", str(runs), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - start,
            "results": json.loads((runs / "results.json").read_text())}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
