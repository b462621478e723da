"""``eraser``: a thin command-line shell over :mod:`eraser_dist.api`.

User mistakes (:class:`EraserError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ..arguments import (
    CURVATURE_DATA,
    HVP_KINDS,
    LR_SCHEDULES,
    NEGATIVE_CURVATURE_POLICIES,
    PRECONDITIONERS,
    RHS_GRADIENTS,
    STEP_KINDS,
    DistributedArguments,
    EraseArguments,
    GenreArguments,
    LlaraArguments,
    LoraArguments,
    ServiceArguments,
    TrainArguments,
)
from ..distributed.plan import PlanArguments
from ..distributed.zero import BACKENDS, BASE_DTYPES
from ..errors import EraserError


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise argparse.ArgumentTypeError("give at least one target module, e.g. q_proj,v_proj")
    return targets


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_train(ns: argparse.Namespace) -> None:
    from .. import api

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
        lr_schedule=ns.lr_schedule,
    )
    result = api.train(ns.base, ns.data, ns.out, lora, training, ns.init_adapter,
                       overwrite=ns.overwrite, progress=not ns.quiet, device=ns.device)
    if ns.json:
        _print_json(result)
    else:
        print(f"trained {result['out']} on {result['n_train']} rows in {result['seconds']:.1f}s; "
              f"objective per epoch: {', '.join(f'{v:.4f}' for v in result['epoch_objective'])}")


def _distributed(ns: argparse.Namespace) -> DistributedArguments | None:
    if ns.workers is None and ns.group_size is None and ns.address is None:
        return None
    return DistributedArguments(
        workers=1 if ns.workers is None else ns.workers,
        group_size=1 if ns.group_size is None else ns.group_size, address=ns.address,
        backend=ns.backend, base_dtype=ns.base_dtype, max_group_restarts=ns.max_group_restarts,
    )


def _erase_arguments(ns: argparse.Namespace, distributed: DistributedArguments | None):
    # Exact HVPs need double backward, which a ZeRO-3-partitioned base does not allow.
    hvp = ns.hvp or ("exact" if distributed is None else "fd")
    return EraseArguments(
        hvp=hvp, curvature=ns.curvature, on_negative_curvature=ns.on_negative_curvature,
        damping=ns.damping, tol=ns.tol, max_iter=ns.max_iter,
        hessian_samples=ns.hessian_samples, batch_size=ns.batch_size, seed=ns.seed,
        step=ns.step, preconditioner=ns.preconditioner, gradient=ns.gradient,
        stages=ns.stages,
    )


def cmd_erase(ns: argparse.Namespace) -> None:
    from .. import api

    distributed = _distributed(ns)
    args = _erase_arguments(ns, distributed)
    report = api.erase(ns.base, ns.adapter, ns.data, ns.request, ns.out, args,
                       overwrite=ns.overwrite, progress=not ns.quiet, distributed=distributed,
                       device=ns.device)
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
    from .. import api

    result = api.evaluate(ns.base, ns.adapter, ns.data, batch_size=ns.batch_size,
                          device=ns.device)
    if ns.json:
        _print_json(result)
        return
    print(f"mean response loss {result['mean_loss']:.4f} over {result['n']} rows")
    for row_id, loss in result["losses"].items():
        print(f"{row_id}\t{loss:.4f}")


def cmd_demo(ns: argparse.Namespace) -> None:
    from ..experiments.demo import run_demo

    run_demo(ns.workdir, base=ns.base, rows=ns.rows, progress=not ns.quiet)


def cmd_data_llara(ns: argparse.Namespace) -> None:
    from ..experiments.llara import build_llara

    manifest = build_llara(ns.out, LlaraArguments(
        history=ns.history, candidates=ns.candidates, train_users=ns.train_users,
        valid_users=ns.valid_users, test_users=ns.test_users, seed=ns.seed))
    _print_json(manifest)


def cmd_data_genres(ns: argparse.Namespace) -> None:
    from ..experiments.genres import build_genres

    _print_json(build_genres(ns.out, GenreArguments(
        train_movies=ns.train_movies, valid_movies=ns.valid_movies,
        test_movies=ns.test_movies, candidates=ns.candidates, seed=ns.seed)))


def cmd_experiment(ns: argparse.Namespace) -> None:
    from ..experiments.runner import PRESETS, run_experiments

    names = None if ns.experiment == "all" else [ns.experiment]
    summary = run_experiments(ns.task_dir, names, PRESETS[ns.preset], ns.work,
                              progress=not ns.quiet)
    work = Path(ns.work)
    resumed = f"; read back: {', '.join(summary['resumed'])}" if summary["resumed"] else ""
    print(f"results: {work / 'results.json'}, {work / 'results.md'}, {work / 'results.png'} "
          f"({summary['seconds']:.0f} s{resumed})")


def cmd_plan(ns: argparse.Namespace) -> None:
    from dataclasses import asdict

    from ..distributed.plan import PlanArguments, format_plan, make_plan, parse_params

    plan = make_plan(PlanArguments(
        params=parse_params(ns.params), gpus=ns.gpus, group_size=ns.group_size,
        lora_rank=ns.lora_rank, targets=ns.targets, batch_size=ns.batch_size,
        seq_len=ns.seq_len, base_dtype=ns.base_dtype, gpu_memory_gb=ns.gpu_memory_gb,
    ))
    if ns.json:
        _print_json(asdict(plan))
    else:
        print(format_plan(plan))


def solver_options(p: argparse.ArgumentParser) -> None:
    """The options of the influence solve and of the distributed engine (erase, serve)."""
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
    p.add_argument("--step", choices=STEP_KINDS, default=EraseArguments.step,
                   help="CG's iterate (cg) or the least-residual vector of its Krylov space "
                   "(least_residual: robust where CG derails, keeps 2·max-iter vectors)")
    p.add_argument("--preconditioner", choices=PRECONDITIONERS,
                   default=EraseArguments.preconditioner,
                   help="fisher_diagonal: preconditioned CG with the empirical Fisher's "
                   "diagonal (one gradient per Hessian row; fewer iterations for the same "
                   "solve)")
    p.add_argument("--gradient", choices=RHS_GRADIENTS, default=EraseArguments.gradient,
                   help="b from the request's rows alone, assuming the adapter minimises its "
                   "objective (changed_rows), or from one pass over every row, which also "
                   "finishes a fit that training left short (all_rows)")
    p.add_argument("--stages", type=int, default=EraseArguments.stages,
                   help="apply the request in this many equal parts, each step taken from "
                   "where the last ended: follows large edits further, costs a solve per "
                   "stage (one process only)")
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
        p.add_argument("--device", default="cpu",
                       help="where the model runs in this process: cpu, cuda or cuda:N")
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
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=TrainArguments.lr_schedule,
                   help="constant, or linear decay to 0 at the last step")
    p.add_argument("--init-adapter", help="warm-start from this adapter (same rank and targets)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("erase", help="remove rows or correct them by one influence step")
    common(p)
    p.add_argument("--adapter", required=True, help="adapter trained on --data")
    p.add_argument("--request", required=True, help="request JSON (remove / modify_query / "
                   "correct_response)")
    solver_options(p)
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

    p = sub.add_parser("data", help="build experiment data sets")
    datasets = p.add_subparsers(dest="dataset", required=True)
    q = datasets.add_parser(
        "llara", help="MovieLens-100K next-movie rows (LLaRA style) and corrupted variants")
    d = LlaraArguments()
    q.add_argument("--out", required=True, help="folder for the Parquet files and requests")
    q.add_argument("--history", type=int, default=d.history, help="movies in the prompt")
    q.add_argument("--candidates", type=int, default=d.candidates)
    q.add_argument("--train-users", type=int, default=d.train_users)
    q.add_argument("--valid-users", type=int, default=d.valid_users)
    q.add_argument("--test-users", type=int, default=d.test_users)
    q.add_argument("--seed", type=int, default=d.seed)
    q.set_defaults(func=cmd_data_llara)
    q = datasets.add_parser("genres", help="MovieLens-100K genres from titles, and corrupted "
                            "variants (the CPU-sized task)")
    g = GenreArguments()
    q.add_argument("--out", required=True, help="folder for the Parquet files and requests")
    q.add_argument("--train-movies", type=int, default=g.train_movies)
    q.add_argument("--valid-movies", type=int, default=g.valid_movies)
    q.add_argument("--test-movies", type=int, default=g.test_movies)
    q.add_argument("--candidates", type=int, default=g.candidates)
    q.add_argument("--seed", type=int, default=g.seed)
    q.set_defaults(func=cmd_data_genres)

    p = sub.add_parser("experiment", help="the paper's erase experiments against retraining")
    p.add_argument("experiment", choices=("qm", "rc10", "rc40", "ir", "all"))
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: genre task on 2 cores; gpu: the LLaRA task, paper-sized")
    p.add_argument("--task-dir", default=None,
                   help="a task set (eraser data genres|llara); default: the preset's, built "
                   "in WORK/task")
    p.add_argument("--work", default="runs/experiments",
                   help="adapters, cached trainings and results (a rerun resumes)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)

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
    service_parsers(sub)
    return parser


# -- the erase service ---------------------------------------------------------------------

def _service(ns: argparse.Namespace):
    from ..service import EraseService

    return EraseService(ns.root)


def _read_request_file(path: str):
    from ..service.errors import BadRequest, TooLarge
    from ..service.http import MAX_BODY_BYTES

    file = Path(path)
    if not file.is_file():
        raise BadRequest(f"request file {path} does not exist")
    if file.stat().st_size > MAX_BODY_BYTES:
        raise TooLarge(f"request file {path} is over {MAX_BODY_BYTES} bytes; split it")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"request file {path} is not valid JSON: {err}") from None


def cmd_tenant_add(ns: argparse.Namespace) -> None:
    token = _service(ns).add_tenant(ns.name)
    print(token if not ns.json else json.dumps({"tenant": ns.name, "token": token}))
    print(f"tenant {ns.name} added; keep the token above: only its hash is stored",
          file=sys.stderr)


def cmd_dataset_add(ns: argparse.Namespace) -> None:
    _print_json(_service(ns).add_dataset(ns.token, ns.tenant, ns.name, ns.file, ns.holdout))


def cmd_adapter_add(ns: argparse.Namespace) -> None:
    _print_json(_service(ns).add_adapter(ns.token, ns.tenant, ns.name, ns.dir, ns.dataset))


def cmd_submit(ns: argparse.Namespace) -> None:
    result = _service(ns).submit(ns.token, ns.adapter, _read_request_file(ns.request),
                                 ns.idempotency_key, tenant=ns.tenant)
    if ns.json:
        _print_json(result)
    else:
        print(result["id"])


def cmd_status(ns: argparse.Namespace) -> None:
    _print_json(_service(ns).status(ns.token, ns.id))


def cmd_certificate(ns: argparse.Namespace) -> None:
    service = _service(ns)
    if ns.png:
        Path(ns.png).write_bytes(service.certificate_png(ns.token, ns.id))
    _print_json(service.certificate(ns.token, ns.id))


def cmd_queue(ns: argparse.Namespace) -> None:
    _print_json(_service(ns).queue(ns.token))


def cmd_serve(ns: argparse.Namespace) -> None:
    import logging

    from ..service.http import make_server, start_in_thread

    if not ns.quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            stream=sys.stderr)
    service = _service(ns)
    distributed = _distributed(ns)
    settings = ServiceArguments(max_batch_requests=ns.max_batch_requests,
                                max_batch_rows=ns.max_batch_rows,
                                poll_seconds=ns.poll_seconds)
    on_published = None
    if ns.replicas:
        from actors.cluster import connect
        from actors.replica import ReplicaFleet

        connect(ns.address, 0, 0.0, 0.0)
        on_published = ReplicaFleet.start(service.registry, ns.replicas)
    worker = service.worker(settings, _erase_arguments(ns, distributed), distributed,
                            on_published, progress=not ns.quiet)
    if ns.http:
        host, _, port = ns.http.rpartition(":")
        try:
            server = make_server(service, host or "127.0.0.1", int(port))
        except (ValueError, OSError) as err:
            raise EraserError(f"cannot listen on {ns.http!r}: {err}") from None
        start_in_thread(server)
        print(f"HTTP API on http://{server.server_address[0]}:{server.server_address[1]}"
              "/v1/openapi.json", file=sys.stderr)
    committed = worker.serve(drain=ns.drain)
    print(f"{committed} batch(es) committed", file=sys.stderr)


def service_parsers(sub) -> None:
    def root(p: argparse.ArgumentParser, token: bool = True) -> None:
        p.add_argument("--root", default=os.environ.get("ERASER_ROOT", "eraser-data"),
                       help="data root of the service (env ERASER_ROOT; default ./eraser-data)")
        if token:
            p.add_argument("--token", default=os.environ.get("ERASER_TOKEN"),
                           help="the tenant's token (env ERASER_TOKEN)")

    p = sub.add_parser("tenant", help="service: manage tenants")
    tenant = p.add_subparsers(dest="action", required=True)
    q = tenant.add_parser("add", help="register a tenant and print its token")
    root(q, token=False)
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tenant_add)

    p = sub.add_parser("dataset", help="service: register training sets")
    q = p.add_subparsers(dest="action", required=True).add_parser(
        "add", help="copy a Parquet training set into the registry as version 1")
    root(q)
    q.add_argument("name")
    q.add_argument("file", help="Parquet with id, query, response")
    q.add_argument("--tenant", required=True)
    q.add_argument("--holdout", help="rows the adapter never saw (same schema), used to verify "
                   "erasures")
    q.set_defaults(func=cmd_dataset_add)

    p = sub.add_parser("adapter", help="service: register adapters")
    q = p.add_subparsers(dest="action", required=True).add_parser(
        "add", help="copy an adapter (trained on the dataset's current version) as version 1")
    root(q)
    q.add_argument("name")
    q.add_argument("dir", help="adapter directory made by `eraser train`")
    q.add_argument("--tenant", required=True)
    q.add_argument("--dataset", required=True)
    q.set_defaults(func=cmd_adapter_add)

    p = sub.add_parser("submit", help="service: journal an erase request; prints its id")
    root(p)
    p.add_argument("request", help="request JSON file")
    p.add_argument("--tenant", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--idempotency-key", default=None,
                   help="the same key never runs twice (a replay answers the first id)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="service: state of a request")
    root(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("certificate", help="service: erasure certificate of a done request")
    root(p)
    p.add_argument("id")
    p.add_argument("--png", help="also write its plot here")
    p.set_defaults(func=cmd_certificate)

    p = sub.add_parser("queue", help="service: pending and running requests")
    root(p)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("serve", help="service: run batches (and the HTTP API)")
    root(p, token=False)
    p.add_argument("--drain", action="store_true",
                   help="exit when the queue is empty (default: keep polling)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="also serve the tenants' HTTP API here")
    s = ServiceArguments()
    p.add_argument("--max-batch-requests", type=int, default=s.max_batch_requests)
    p.add_argument("--max-batch-rows", type=int, default=s.max_batch_rows)
    p.add_argument("--poll-seconds", type=float, default=s.poll_seconds)
    p.add_argument("--replicas", type=int, default=0,
                   help="serving replicas per adapter (Ray actors) that receive every new "
                   "version as a delta")
    p.add_argument("--quiet", action="store_true")
    solver_options(p)
    p.set_defaults(func=cmd_serve)


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
