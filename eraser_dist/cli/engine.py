"""``eraser train | erase | index | eval | plan``: adapters and curvature indexes on files,
and the cluster plan."""

from __future__ import annotations

import argparse
import sys

from ..arguments import (
    DistributedArguments,
    EraseArguments,
    IndexArguments,
    LoraArguments,
    TrainArguments,
    check_engine,
)
from ..distributed.plan import PlanArguments
from ..errors import EraserError
from .common import model_flags, print_json
from .options import add_options, given, options_from

# flags that switch the distributed engine on; its other options only tune it
ENGINE_SWITCHES = ("workers", "group_size", "address")
# erase options that only concern a solve, not the matrix an index approximates
INDEX_IRRELEVANT = ("on_negative_curvature", "tol", "max_iter", "step", "preconditioner",
                    "gradient", "stages", "curvature")


def distributed_options(ns: argparse.Namespace) -> DistributedArguments | None:
    """DistributedArguments when the command line asks for the distributed engine."""
    chosen = given(ns, DistributedArguments)
    if not chosen:
        return None
    if not any(name in chosen for name in ENGINE_SWITCHES):
        tuning = ", ".join("--" + name.replace("_", "-") for name in chosen)
        raise EraserError(f"{tuning} tune the distributed engine; switch it on with "
                          "--workers/--group-size (or --address)")
    return DistributedArguments(**chosen)


def solver_options(p: argparse.ArgumentParser) -> None:
    """The options of the influence solve and of the distributed engine (erase, serve)."""
    add_options(p, EraseArguments, "influence solve")
    add_options(p, DistributedArguments,
                "distributed engine (Ray worker groups on a ZeRO-3-partitioned base; "
                "on with --workers, --group-size or --address)")


def engine_options(ns: argparse.Namespace) -> tuple[EraseArguments, DistributedArguments | None]:
    """The solve's and the engine's options of a command line, checked together; with
    ``--index``, the options not given are the index's (its matrix, a short solve)."""
    distributed = distributed_options(ns)
    if getattr(ns, "index", None) is not None:
        from ..llm.curvature_index import read_index_meta

        args = read_index_meta(ns.index).erase_arguments(**given(ns, EraseArguments))
    else:
        args = options_from(ns, EraseArguments)
    check_engine(args, distributed)
    return args, distributed


def cmd_train(ns: argparse.Namespace) -> None:
    from .. import api

    lora = None
    if ns.init_adapter is None or given(ns, LoraArguments):
        lora = options_from(ns, LoraArguments)
    result = api.train(ns.base, ns.data, ns.out, lora, options_from(ns, TrainArguments),
                       ns.init_adapter, overwrite=ns.overwrite, progress=not ns.quiet,
                       device=ns.device)
    if ns.json:
        print_json(result)
    else:
        print(f"trained {result['out']} on {result['n_train']} rows in {result['seconds']:.1f}s; "
              f"objective per epoch: {', '.join(f'{v:.4f}' for v in result['epoch_objective'])}")


def cmd_erase(ns: argparse.Namespace) -> None:
    from .. import api

    args, distributed = engine_options(ns)
    report = api.erase(ns.base, ns.adapter, ns.data, ns.request, ns.out, args,
                       overwrite=ns.overwrite, progress=not ns.quiet, distributed=distributed,
                       device=ns.device, index=ns.index)
    if ns.json:
        print_json(report.to_json())
        return
    print(f"{report.kind} of {report.n_affected} of {report.n_train} rows: "
          f"{solve_summary(report)}, ‖ΔΘ‖ = {report.delta_norm:.4g}, "
          f"{report.seconds:.1f}s → {ns.out}")
    for line in solve_notes(report):
        print(line, file=sys.stderr)


def cmd_index(ns: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .. import api

    args, distributed = engine_options(ns)
    meta = api.build_index(ns.base, ns.adapter, ns.data, ns.out, args,
                           options_from(ns, IndexArguments), overwrite=ns.overwrite,
                           progress=not ns.quiet, distributed=distributed, device=ns.device)
    if ns.json:
        print_json(asdict(meta))
        return
    top = f"top value {meta.ritz_values[0]:.3g}" if meta.ritz_values else (
        "none above the product's noise: the Fisher diagonal alone")
    print(f"curvature index of {meta.n_train} rows ({meta.hvp} matrix on "
          f"{meta.hessian_rows} rows, damping {meta.damping:g}): {meta.rank} Ritz pairs "
          f"({top}), {meta.products} HVPs in {meta.seconds:.1f}s → {ns.out}")


def solve_summary(report) -> str:
    """How the step was solved and what the step control did, for the erase's one line. A
    path's stages each stop at their share of --max-iter by design (docs/DESIGN.md §1.9),
    so a path is not called unconverged for the residual its stages leave."""
    start = ""
    if report.index is not None:
        start = (f"from the index's step (residual {report.index.first_residual:.2e}, "
                 f"{report.index.first_products} HVP) ")
    control = report.step_control
    if control is not None and control.kind == "path":
        return (f"path of {control.steps} stages, CG {start}{report.cg_iterations} iterations "
                f"in all (each stage stops at its share of --max-iter, not at --tol), worst "
                f"stage's relative residual {report.relative_residual:.2e}")
    status = "converged" if report.cg_converged else "NOT converged"
    summary = (f"CG {start}{status} in {report.cg_iterations} iterations, relative residual "
               f"{report.relative_residual:.2e}")
    if control is None:
        return summary
    tried = len(control.evaluations)
    if control.kind == "line_search":
        return f"{summary}; step length α = {control.alpha:.3g} from {tried} evaluations"
    if control.kind == "damping":
        return f"{summary}; damping {report.damping:g} chosen from {tried} evaluations"
    return f"{summary}; {control.steps} Newton steps"


def solve_notes(report) -> list[str]:
    """What a user should know about how the step was solved (printed on stderr)."""
    notes = []
    truncated = ("the step is its last iterate before that direction, not a solution "
                 "(try a larger --damping)")
    if report.negative_curvature and report.hvp_used != report.hvp:
        note = (f"note: the {report.hvp} Hessian has negative curvature at this adapter; "
                f"solved with the {report.hvp_used} matrix instead")
        if report.truncated:
            note += f", which also met negative curvature: {truncated}"
        notes.append(note)
    elif report.truncated:
        notes.append(f"warning: the Hessian has negative curvature; CG stopped early and "
                     f"{truncated}")
    if (report.distributed is not None and report.distributed.base_dtype == "bfloat16"
            and "ggn" in report.hvp_used):
        notes.append("warning: Gauss-Newton products are noisy on a bf16 base (a central "
                     "difference of bf16 logits); prefer --hvp fd there (docs/RESULTS.md, "
                     "bf16 base)")
    return notes


def cmd_eval(ns: argparse.Namespace) -> None:
    from .. import api

    result = api.evaluate(ns.base, ns.adapter, ns.data, batch_size=ns.batch_size,
                          device=ns.device)
    if ns.json:
        print_json(result)
        return
    print(f"mean response loss {result['mean_loss']:.4f} over {result['n']} rows")
    for row_id, loss in result["losses"].items():
        print(f"{row_id}\t{loss:.4f}")


def cmd_plan(ns: argparse.Namespace) -> None:
    from dataclasses import asdict

    from ..distributed.plan import format_plan, make_plan, parse_params

    params = None if ns.params is None else parse_params(ns.params)
    plan = make_plan(options_from(ns, PlanArguments, params=params))
    if ns.json:
        print_json(asdict(plan))
    else:
        print(format_plan(plan))


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA adapter")
    model_flags(p)
    p.add_argument("--init-adapter", help="warm-start from this adapter (same rank and targets)")
    add_options(p, LoraArguments, "adapter shape (default with --init-adapter: its own)")
    add_options(p, TrainArguments, "training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("erase", help="remove rows or correct them by one influence step")
    model_flags(p)
    p.add_argument("--adapter", required=True, help="adapter trained on --data")
    p.add_argument("--request", required=True, help="request JSON (remove / modify_query / "
                   "correct_response)")
    p.add_argument("--index", help="curvature index of this adapter or of a version it was "
                   "erased from (`eraser index`); the solve then starts from its step, with "
                   "its matrix and a short solve unless flags say otherwise")
    solver_options(p)
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("index", help="build an adapter's curvature index, once per version, "
                       "for fast erases (--index)")
    model_flags(p)
    p.add_argument("--adapter", required=True, help="adapter trained on --data")
    add_options(p, IndexArguments, "index")
    add_options(p, EraseArguments, "the erase system it approximates",
                exclude=INDEX_IRRELEVANT)
    add_options(p, DistributedArguments,
                "distributed engine (Ray worker groups on a ZeRO-3-partitioned base; "
                "on with --workers, --group-size or --address)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("eval", help="mean and per-id response loss of an adapter")
    model_flags(p, out=False)
    p.add_argument("--adapter", required=True)
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="per-GPU memory and traffic of one erase on a cluster")
    p.add_argument("--params", help="base model size, e.g. 70e9 or 70B; the closest known "
                   "Llama shape is used (or --base)")
    add_options(p, PlanArguments, exclude=("params",),
                required=("gpus", "lora_rank", "targets"))
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
