"""The distributed engine at 70B widths on this machine, held against ``eraser plan``.

``llama70b-shaped:L`` (Llama-70B's per-layer widths, L decoder layers, seeded bf16 weights,
SmolLM2's 49,152-token vocabulary) runs as 1 group × 2 ranks (ZeRO-3 over gloo, one thread
each). A rank-8 q/v LoRA is fitted for one step in a separate process (fp32 base), then one
removal is erased with the fd HVP, a bf16 base and one CG iteration, DeepSpeed's comms logger
counting every in-group collective. Reported, measured:

- per rank: the base bytes it holds, its resident set before the base, after the erase and
  at its peak;
- seconds of b and of the fd HVP, and the HVP's seconds per 1,000 tokens of one rank;
- bytes per CG iteration between the aggregator and the group (the vectors the engine sends)
  and within the group (ZeRO-3's all-gathers and the all-reduce, as DeepSpeed logged them);
- the LoRA dimension d;

beside ``eraser plan``'s prediction for the same shape and group (batch 1 × the rows'
length), with their ratio. Two microbenchmarks, run again by ``--raw``: the bf16 forward
and input-gradient products at width 8192 on one thread, which predict the HVP's seconds
from its matmul parameters; and the peak of a gloo all-gather of the largest module against
its output's bytes (gloo holds a temporary of that size; the plan models NCCL, which does
not);
and the 80-layer plan is given with a stated time model for the ``cluster.yaml`` nodes
(8 × A100 80 GB). ``--one-process`` only times one gradient of the same row in this
process, without ZeRO-3. Prints JSON::

    .venv/bin/python bench/shaped_70b.py [--layers 1] [--max-length 6]
        [--out docs/shaped_70b.json] [--one-process]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
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
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.data import write_examples
from eraser_dist.distributed.plan import (
    DTYPE_BYTES,
    PlanArguments,
    count_params,
    layer_params,
    make_plan,
    shaped_70b_architecture,
)
from eraser_dist.distributed.shard_worker import WorkerSpec
from eraser_dist.experiments.movielens import genre_examples
from eraser_dist.llm.adapters import read_meta
from eraser_dist.llm.models import smollm2_dir
from eraser_dist.llm.tokenization import HFTokenizer, tokenize_example

GROUP_SIZE = 2
TARGETS = ("q_proj", "v_proj")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fit_adapter(base: str, data: Path, adapter: Path, max_length: int) -> float:
    """One Adam step of a rank-8 q/v LoRA on every row, in a process of its own (it holds
    the whole base in fp32, which the ranks then need the memory of); its seconds."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        found = pool.submit(api.train, base, data, adapter, LoraArguments(rank=8),
                            TrainArguments(epochs=1, batch_size=8, max_length=max_length),
                            progress=False).result()
    return found["seconds"]


def kernel_seconds_per_token(tokens: int) -> dict[str, float]:
    """Seconds per token per base parameter of a bf16 ``linear`` (forward, x·Wᵀ) and of the
    input gradient (g·W) at width 8192, on one thread: what an fd HVP is made of."""
    torch.set_num_threads(1)
    weight = torch.randn(8192, 8192, dtype=torch.bfloat16)
    x = torch.randn(tokens, 8192, dtype=torch.bfloat16)
    out = {}
    for name, product in (("forward", lambda: torch.nn.functional.linear(x, weight)),
                          ("input_gradient", lambda: x @ weight)):
        product()
        start = time.perf_counter()
        product()
        out[name] = (time.perf_counter() - start) / tokens / weight.numel()
    return out


def _gloo_gather_peak(rank: int, port: int, numel: int) -> int:
    """On rank ``rank`` of 2 (gloo): the peak resident set an all_gather_into_tensor of
    ``numel`` bf16 elements per rank adds over the process's resident set before it."""
    import os

    import psutil
    import torch.distributed as dist

    from eraser_dist.distributed.shard_worker import resident_peak

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    part = torch.ones(numel, dtype=torch.bfloat16)
    out = torch.empty(2 * numel, dtype=torch.bfloat16)
    dist.barrier()
    before = psutil.Process().memory_info().rss
    resident_peak(reset=True)
    dist.all_gather_into_tensor(out, part)
    peak = resident_peak()
    dist.destroy_process_group()
    return peak - before


def gloo_gather_overhead(numel: int) -> float:
    """The peak an all-gather over gloo adds, as a multiple of its output's bytes (1: it
    writes the output only; 2: it also holds a temporary of the output's size)."""
    from eraser_dist.distributed.zero import free_port

    port = free_port()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        peaks = [f.result() for f in [pool.submit(_gloo_gather_peak, r, port, numel)
                                      for r in (0, 1)]]
    return max(peaks) / (2 * numel * 2)


def one_process_gradient_seconds(layers: int, max_length: int) -> dict[str, float]:
    """Seconds of one gradient over the bench's first Hessian row in this process (no
    ZeRO-3, one thread, bf16), at Θ and at Θ shifted by the fd step along that gradient:
    the same products as a rank's, without the partitions and the gloo all-gathers."""
    from eraser_dist.core.curvature import default_fd_step, shifted
    from eraser_dist.core.objective import gradient_sum
    from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base

    torch.set_num_threads(1)
    base = load_base(f"llama70b-shaped:{layers}", torch.bfloat16)
    model = LoraCausalLM(attach_lora(base, LoraArguments(rank=8)), base.tokenizer, max_length)
    # B = 0 in a fresh LoRA; give it the size one Adam step gives (lr 2e-3)
    theta = model.get_flat()
    theta += 2e-3 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(0),
                                dtype=theta.dtype)
    model.set_flat(theta)
    rows, weights = genre_examples(3)[1:2], torch.ones(1, dtype=torch.float64)
    start = time.perf_counter()
    g = gradient_sum(model, rows, weights, 8)
    at_theta = time.perf_counter() - start
    with shifted(model, theta, g, default_fd_step(model, g)):
        start = time.perf_counter()
        gradient_sum(model, rows, weights, 8)
        shifted_seconds = time.perf_counter() - start
    return {"gradient_at_theta": at_theta, "gradient_shifted_by_fd_step": shifted_seconds}


def time_model_80_layers(plan, ns) -> dict:
    """Expected seconds of one erase on the cluster.yaml nodes, from the FLOPs of the fd
    HVP and the plan's in-group bytes; every assumption is in the returned dict."""
    arch = shaped_70b_architecture(80)
    matmul_params = arch.num_layers * layer_params(arch)  # the head runs on few positions
    # per token: 2 gradients × (forward 2N + input gradient 2N); LoRA's own products are
    # ~0.1% of N at rank 8 and are left out
    hvp_flops = 2 * 4 * matmul_params * ns.hessian_rows * ns.row_tokens
    gradient_flops = 4 * matmul_params * ns.changed_rows * ns.row_tokens
    rate = plan.group_size * ns.gpu_tflops * 1e12 * ns.utilisation
    hvp_compute = hvp_flops / rate / plan.num_groups
    hvp_gather = plan.intra_group_bytes_per_iteration / (ns.link_gb_per_s * 1e9)
    per_hvp = {"overlapped": max(hvp_compute, hvp_gather), "serial": hvp_compute + hvp_gather}
    b_seconds = gradient_flops / rate
    return {
        "assumptions": {
            "gpu": "A100 80 GB (cluster.yaml's p4de.24xlarge: 8 per node, NVLink)",
            "gpu_bf16_tflops_peak": ns.gpu_tflops, "utilisation": ns.utilisation,
            "in_group_link_gb_per_s_per_gpu": ns.link_gb_per_s,
            "hessian_rows": ns.hessian_rows, "tokens_per_row": ns.row_tokens,
            "changed_rows": ns.changed_rows, "cg_iterations": ns.cg_iterations,
            "groups": plan.num_groups,
            "flops_per_token_per_gradient": "4 × decoder matmul parameters (forward and "
                                            "input gradient; the base has no weight gradient)",
        },
        "seconds_per_hvp": {"compute": hvp_compute, "gather": hvp_gather, **per_hvp},
        "seconds_b": b_seconds,
        "seconds_per_erase": {k: b_seconds + ns.cg_iterations * v for k, v in per_hvp.items()},
    }


def ratio(predicted: float, measured: float) -> dict[str, float]:
    return {"predicted": predicted, "measured": measured, "predicted_over_measured":
            predicted / measured if measured else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=6,
                        help="tokens per row (each rank gets one Hessian row)")
    parser.add_argument("--gpu-tflops", type=float, default=312.0)
    parser.add_argument("--utilisation", type=float, default=0.4)
    parser.add_argument("--link-gb-per-s", type=float, default=300.0)
    parser.add_argument("--hessian-rows", type=int, default=96)
    parser.add_argument("--row-tokens", type=int, default=512)
    parser.add_argument("--changed-rows", type=int, default=10)
    parser.add_argument("--cg-iterations", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--raw", default=None,
                        help="summarise the measurements kept in this file (written by an "
                        "earlier run's --keep-raw) instead of measuring")
    parser.add_argument("--keep-raw", default=None, help="keep the measurements here")
    parser.add_argument("--one-process", action="store_true",
                        help="only time one gradient in this process (no ZeRO-3) and print it")
    ns = parser.parse_args()
    if ns.one_process:
        print_and_write(one_process_gradient_seconds(ns.layers, ns.max_length), ns.out)
        return
    if ns.raw:
        raw = json.loads(Path(ns.raw).read_text(encoding="utf-8"))
    else:
        raw = measure(ns.layers, ns.max_length)
        if ns.keep_raw:
            Path(ns.keep_raw).write_text(json.dumps(raw, indent=1), encoding="utf-8")
    print_and_write(summarise(raw, ns), ns.out, default=str)


def measure(layers: int, max_length: int) -> dict:
    """Fit the adapter, erase on 1 × 2 ranks; the figures as plain JSON values."""
    base = f"llama70b-shaped:{layers}"
    rows = genre_examples(3)  # remove one; the other two are the Hessian rows, one per rank
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, adapter = root / "train.parquet", root / "adapter"
        write_examples(data, rows)
        fit_seconds = fit_adapter(base, data, adapter, max_length)
        log(f"adapter fitted in {fit_seconds:.0f} s; erasing on 1 × {GROUP_SIZE} ranks")
        ray.init(address="local", num_cpus=GROUP_SIZE, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        spec = WorkerSpec(base, str(adapter), "bfloat16", count_collectives=True)
        layout = layout_for(DistributedArguments(workers=1, group_size=GROUP_SIZE))
        edited = apply_requests([parse_request({"kind": "remove", "ids": [rows[0].id]})],
                                rows)
        # damping 1: the fd matrix of an adapter fitted for one step can have negative
        # curvature along b (met at damping 0.01); the seconds and bytes do not depend on it
        args = EraseArguments(hvp="fd", max_iter=1, tol=1e-30, hessian_samples=None,
                              damping=1.0, preconditioner="none",
                              on_negative_curvature="truncate")
        aggregator = Aggregator.options(num_cpus=0, max_concurrency=2).remote(
            spec, layout, str(root / "checkpoints"), 0)
        start = time.perf_counter()
        found = ray.get(aggregator.erase.remote(edited, read_meta(adapter).weight_decay,
                                                args))
        wall = time.perf_counter() - start
        log(f"erased in {wall:.0f} s")
        memory = ray.get(aggregator.per_rank.remote("memory"))[0]
        collectives = ray.get(aggregator.per_rank.remote("collectives"))[0]
        ray.kill(aggregator)
        ray.shutdown()
    from transformers import AutoTokenizer

    tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(smollm2_dir()))
    encoded = [tokenize_example(tokenizer, r, max_length) for r in edited.rows_after]
    result = found["result"]
    return {
        "layers": layers, "max_length": max_length, "rows": len(rows),
        "hessian_tokens": [len(ids) for ids, _ in encoded],
        "hessian_scored_tokens": [len(ids) - n_prompt for ids, n_prompt in encoded],
        "fit_seconds": fit_seconds, "erase_wall_seconds": wall,
        "b_seconds": result.rhs_seconds, "solve_seconds": result.solve_seconds,
        "hvp_seconds": found["seconds_per_hvp"], "d": int(found["theta"].numel()),
        "bytes_per_iteration": found["bytes_per_iteration"],
        "memory": memory, "collectives": collectives,
    }


def summarise(raw: dict, ns: argparse.Namespace) -> dict:
    """The measured figures beside the plan's, the kernel model and the 80-layer plan."""
    layers = raw["layers"]
    base = f"llama70b-shaped:{layers}"
    arch = shaped_70b_architecture(layers)
    memory, collectives = raw["memory"], raw["collectives"]
    hvp_seconds = raw["hvp_seconds"][0]
    rank_tokens = max(raw["hessian_tokens"])  # one row per rank; the ranks run side by side
    scored = max(raw["hessian_scored_tokens"])

    hvp_collectives = [rank["hvp"][0] for rank in collectives]
    gathered = max(c.get("all_gather_into_tensor", 0) for c in hvp_collectives)
    reduced = max(c.get("all_reduce", 0) for c in hvp_collectives)
    # an all-gather's logged size is this rank's part: it receives (k − 1) such parts; a
    # ring all-reduce of n bytes receives 2 (k − 1)/k · n
    received = gathered * (GROUP_SIZE - 1) + reduced * 2 * (GROUP_SIZE - 1) / GROUP_SIZE
    base_bytes = count_params(arch) * DTYPE_BYTES["bfloat16"]

    plan = make_plan(PlanArguments(gpus=GROUP_SIZE, group_size=GROUP_SIZE, base=base,
                                   lora_rank=8, targets=TARGETS, batch_size=1,
                                   seq_len=rank_tokens, base_dtype="bfloat16"))
    kernels = kernel_seconds_per_token(rank_tokens)
    matmul_params = layers * layer_params(arch)
    head_params = arch.vocab_size * arch.hidden_size
    predicted_hvp = 2 * (rank_tokens * matmul_params + scored * head_params) * (
        kernels["forward"] + kernels["input_gradient"])
    # the erase's own peak (reset after loading), over what the process had before the base
    peak = max((m.get("peak_rss_since_load_bytes") or m["peak_rss_bytes"])
               - m["rss_before_base_bytes"] for m in memory)
    largest_module = arch.vocab_size * arch.hidden_size  # the embedding and the LM head
    gloo_overhead = gloo_gather_overhead(largest_module // GROUP_SIZE)
    # gloo holds a temporary beside the gathered output (NCCL writes it in place): the plan
    # counts the output, so add the temporary of the largest module for this machine's run
    gloo_temporary = (gloo_overhead - 1) * largest_module * DTYPE_BYTES["bfloat16"]
    full = make_plan(PlanArguments(gpus=8, base="llama70b-shaped:80", lora_rank=8,
                                   targets=TARGETS, base_dtype="bfloat16"))
    return {
        "setting": {"base": base, "group_size": GROUP_SIZE, "threads_per_rank": 1,
                    "base_dtype": "bfloat16", "hvp": "fd", "lora": "rank 8 on q_proj,v_proj",
                    "rows": raw["rows"], "removed": 1, "cg_iterations": 1,
                    "hessian_tokens": raw["hessian_tokens"],
                    "hessian_scored_tokens": raw["hessian_scored_tokens"],
                    "max_length": raw["max_length"]},
        "seconds": {"fit_adapter_one_step_fp32": raw["fit_seconds"],
                    "erase_wall_incl_startup": raw["erase_wall_seconds"],
                    "b": raw["b_seconds"], "solve": raw["solve_seconds"], "fd_hvp": hvp_seconds,
                    "fd_hvp_per_1000_tokens_of_one_rank": hvp_seconds / rank_tokens * 1000},
        "ranks": memory,
        "collectives_per_rank": collectives,
        "lora_d": raw["d"],
        "against_plan": {
            "base_bytes_held_per_rank": ratio(plan.base_shard_bytes,
                                              max(m["base_bytes_held"] for m in memory)),
            "lora_d": ratio(plan.lora_params, raw["d"]),
            "aggregator_bytes_per_iteration": ratio(plan.aggregator_bytes_per_iteration,
                                                    raw["bytes_per_iteration"]),
            "in_group_bytes_received_per_rank_per_hvp": ratio(
                plan.intra_group_bytes_per_iteration, received),
            "peak_rss_over_rss_before_base": ratio(plan.total_per_gpu_bytes, peak),
            "peak_rss_over_rss_before_base_with_gloo_temporary": ratio(
                plan.total_per_gpu_bytes + gloo_temporary, peak),
            "fd_hvp_seconds_from_kernels": ratio(predicted_hvp, hvp_seconds),
        },
        "passes_over_the_base_per_hvp": gathered * GROUP_SIZE / base_bytes,
        "kernel_seconds_per_token_per_parameter": kernels,
        "gloo_all_gather_peak_over_output_bytes": gloo_overhead,
        "plan_same_shape": asdict(plan),
        "plan_80_layers": asdict(full),
        "time_model_80_layers": time_model_80_layers(full, ns),
    }


if __name__ == "__main__":
    main()
