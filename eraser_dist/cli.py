"""``eraser``: a thin command-line shell over :mod:`eraser_dist.api`.

User mistakes (:class:`EraserError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .arguments import (
    CURVATURE_DATA,
    HVP_KINDS,
    NEGATIVE_CURVATURE_POLICIES,
    DistributedArguments,
    EraseArguments,
    LoraArguments,
    TrainArguments,
)
from .errors import EraserError
from .plan import PlanArguments
from .zero import BACKENDS, BASE_DTYPES


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise argparse.ArgumentTypeError("give at least one target module, e.g. q_proj,v_proj")
    return targets


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_train(ns: argparse.Namespace) -> None:
    from . import api

    d = TrainArguments()
    lora = None
    if ns.init_adapter is None or ns.rank is not None or ns.targets is not None:
        lora = LoraArguments(
            rank=ns.rank if ns.rank is not None else LoraArguments.rank,
            alpha=ns.alpha,
            targets=ns.targets or LoraArguments.targets,
        )
    training = TrainArguments(
        epochs=ns.epochs if ns.epochs is not None else d.epochs,
        lr=ns.lr if ns.lr is not None else d.lr,
        batch_size=ns.batch_size if ns.batch_size is not None else d.batch_size,
        weight_decay=ns.weight_decay if ns.weight_decay is not None else d.weight_decay,
        seed=ns.seed,
        max_length=ns.max_length,
    )
    result = api.train(ns.base, ns.data, ns.out, lora, training, ns.init_adapter,
                       overwrite=ns.overwrite, progress=not ns.quiet)
    if ns.json:
        _print_json(result)
    else:
        print(f"trained {result['out']} on {result['n_train']} rows in {result['seconds']:.1f}s; "
              f"objective per epoch: {', '.join(f'{v:.4f}' for v in result['epoch_objective'])}")


def cmd_erase(ns: argparse.Namespace) -> None:
    from . import api

    distributed = None
    if ns.workers is not None or ns.group_size is not None or ns.address is not None:
        distributed = DistributedArguments(
            workers=1 if ns.workers is None else ns.workers,
            group_size=1 if ns.group_size is None else ns.group_size, address=ns.address,
            backend=ns.backend, base_dtype=ns.base_dtype,
            max_group_restarts=ns.max_group_restarts,
        )
    # Exact HVPs need double backward, which a ZeRO-3-partitioned base does not allow.
    hvp = ns.hvp or ("exact" if distributed is None else "fd")
    args = EraseArguments(
        hvp=hvp, curvature=ns.curvature, on_negative_curvature=ns.on_negative_curvature,
        damping=ns.damping, tol=ns.tol, max_iter=ns.max_iter,
        hessian_samples=ns.hessian_samples, batch_size=ns.batch_size, seed=ns.seed,
    )
    report = api.erase(ns.base, ns.adapter, ns.data, ns.request, ns.out, args,
                       overwrite=ns.overwrite, progress=not ns.quiet, distributed=distributed)
    if ns.json:
        _print_json(report)
        return
    status = "converged" if report["cg_converged"] else "NOT converged"
    print(f"{report['kind']} of {report['n_affected']} of {report['n_train']} rows: CG {status} "
          f"in {report['cg_iterations']} iterations, relative residual "
          f"{report['relative_residual']:.2e}, ‖ΔΘ‖ = {report['delta_norm']:.4g}, "
          f"{report['seconds']:.1f}s → {ns.out}")
    if report["negative_curvature"] and report["hvp_used"] != report["hvp"]:
        print(f"note: the {report['hvp']} Hessian has negative curvature at this adapter; "
              f"solved with the {report['hvp_used']} matrix instead", file=sys.stderr)
    elif report["negative_curvature"]:
        print("warning: the Hessian has negative curvature; CG stopped early and the result is "
              "the truncated iterate (try --hvp ggn or a larger --damping)", file=sys.stderr)
    if report.get("base_dtype") == "bfloat16" and report["hvp_used"] == "ggn":
        print("warning: Gauss-Newton products on a bf16 base are noisy (24% off fp32 on "
              "SmolLM2-135M, bench/bf16_hvp.py); fd was 6.7% off", file=sys.stderr)


def cmd_eval(ns: argparse.Namespace) -> None:
    from . import api

    result = api.evaluate(ns.base, ns.adapter, ns.data, batch_size=ns.batch_size)
    if ns.json:
        _print_json(result)
        return
    print(f"mean response loss {result['mean_loss']:.4f} over {result['n']} rows")
    for row_id, loss in result["losses"].items():
        print(f"{row_id}\t{loss:.4f}")


def cmd_demo(ns: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(ns.workdir, base=ns.base, rows=ns.rows, progress=not ns.quiet)


def cmd_plan(ns: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .plan import PlanArguments, format_plan, make_plan, parse_params

    plan = make_plan(PlanArguments(
        params=parse_params(ns.params), gpus=ns.gpus, group_size=ns.group_size,
        lora_rank=ns.lora_rank, targets=ns.targets, batch_size=ns.batch_size,
        seq_len=ns.seq_len, base_dtype=ns.base_dtype, gpu_memory_gb=ns.gpu_memory_gb,
    ))
    if ns.json:
        _print_json(asdict(plan))
    else:
        print(format_plan(plan))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eraser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: bool = True) -> None:
        p.add_argument("--base", required=True,
                       help="tiny-llama, smollm2-135m, or a Hugging Face model directory")
        p.add_argument("--data", required=True, help="training set (Parquet: id, query, response)")
        if out:
            p.add_argument("--out", required=True, help="new adapter directory")
            p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="fine-tune a LoRA adapter")
    common(p)
    p.add_argument("--rank", type=int, default=None, help=f"LoRA rank ({LoraArguments.rank})")
    p.add_argument("--alpha", type=float, default=LoraArguments.alpha)
    p.add_argument("--targets", type=_targets, default=None,
                   help="comma-separated module names (q_proj,v_proj)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float,
                   help=f"λ of the L2 term in the objective ({TrainArguments.weight_decay})")
    p.add_argument("--max-length", type=int, default=TrainArguments.max_length)
    p.add_argument("--init-adapter", help="warm-start from this adapter (same rank and targets)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("erase", help="remove rows or correct them by one influence step")
    common(p)
    p.add_argument("--adapter", required=True, help="adapter trained on --data")
    p.add_argument("--request", required=True, help="request JSON (remove / modify_query / "
                   "correct_response)")
    p.add_argument("--hvp", choices=HVP_KINDS, default=None,
                   help="HVP back-end; default: exact in one process, fd with --workers")
    p.add_argument("--curvature", choices=CURVATURE_DATA, default=EraseArguments.curvature,
                   help="Hessian of the original objective (PD at a converged adapter) or of "
                   "the edited one")
    p.add_argument("--on-negative-curvature", choices=NEGATIVE_CURVATURE_POLICIES,
                   default=EraseArguments.on_negative_curvature,
                   help="if H is indefinite: solve with Gauss-Newton (ggn), keep CG's last "
                   "iterate (truncate) or stop (fail)")
    p.add_argument("--damping", type=float, default=None,
                   help="λ in (H + λI); default: the adapter's training weight decay")
    p.add_argument("--tol", type=float, default=EraseArguments.tol,
                   help="CG stops at this relative residual")
    p.add_argument("--max-iter", type=int, default=EraseArguments.max_iter)
    p.add_argument("--hessian-samples", type=int, default=None,
                   help="estimate H on this many rows (seeded); default: all")
    p.add_argument("--batch-size", type=int, default=EraseArguments.batch_size)
    p.add_argument("--seed", type=int, default=0)
    d = DistributedArguments()
    g = p.add_argument_group("distributed engine (Ray worker groups on a ZeRO-3 base)")
    g.add_argument("--workers", type=int, default=None,
                   help="worker groups side by side (data parallel); enables the engine")
    g.add_argument("--group-size", type=int, default=None,
                   help="ranks per group that share one partitioned base")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto); default: start a local one")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend)
    g.add_argument("--base-dtype", choices=tuple(BASE_DTYPES), default=d.base_dtype)
    g.add_argument("--max-group-restarts", type=int, default=d.max_group_restarts)
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("eval", help="mean and per-id response loss of an adapter")
    common(p, out=False)
    p.add_argument("--adapter", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="end to end on SmolLM2-135M and MovieLens titles")
    p.add_argument("--workdir", default="runs/demo", help="where data and adapters go")
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=None, help="training rows (default: preset)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plan", help="per-GPU memory and traffic of one erase on a cluster")
    p.add_argument("--params", required=True,
                   help="base model size, e.g. 70e9 or 70B; the closest known Llama shape is used")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the cluster")
    p.add_argument("--group-size", type=int, default=None,
                   help="GPUs per ZeRO-3 group holding one base (default: smallest of 1, 2, 4, "
                   "8 that fits)")
    p.add_argument("--lora-rank", type=int, required=True)
    p.add_argument("--targets", type=_targets, required=True,
                   help="comma-separated module names (q_proj,v_proj)")
    p.add_argument("--batch-size", type=int, default=PlanArguments.batch_size,
                   help="sequences per GPU per forward pass")
    p.add_argument("--seq-len", type=int, default=PlanArguments.seq_len, help="tokens")
    p.add_argument("--base-dtype", default=PlanArguments.base_dtype,
                   help="bf16, fp16 or fp32")
    p.add_argument("--gpu-memory-gb", type=float, default=PlanArguments.gpu_memory_gb,
                   help="memory of each GPU in GB (10^9 bytes); plans use at most 90%%")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
    return parser


def quiet_library_warnings() -> None:
    # Deprecation chatter from transformers/peft internals is not actionable for a user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    # An adapter whose config names modules its weights lack: load_adapter says so as one error.
    warnings.filterwarnings("ignore", message="Found missing adapter keys")


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    quiet_library_warnings()
    try:
        ns.func(ns)
    except EraserError as err:
        print(f"eraser: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eraser: interrupted; nothing was published", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
