"""``eraser tenant | dataset | adapter | submit | status | certificate | certificate-key |
operator | purge | queue | serve``: the multi-tenant erase service
(:class:`eraser_dist.service.EraseService`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..arguments import ServiceArguments
from ..errors import EraserError, Interrupted
from .common import print_json
from .engine import engine_options, solver_options
from .options import add_options, options_from

log = logging.getLogger("eraser_dist.serve")


def _service(ns: argparse.Namespace):
    from ..service import EraseService

    return EraseService(ns.root)


def _read_request_file(path: str):
    from ..service.app import MAX_BODY_BYTES
    from ..service.errors import BadRequest, TooLarge

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
    print_json(_service(ns).add_dataset(ns.token, ns.tenant, ns.name, ns.file, ns.holdout))


def cmd_adapter_add(ns: argparse.Namespace) -> None:
    print_json(_service(ns).add_adapter(ns.token, ns.tenant, ns.name, ns.dir, ns.dataset))


def cmd_submit(ns: argparse.Namespace) -> None:
    result = _service(ns).submit(ns.token, ns.adapter, _read_request_file(ns.request),
                                 ns.idempotency_key, tenant=ns.tenant)
    if ns.json:
        print_json(result)
    else:
        print(result["id"])


def cmd_status(ns: argparse.Namespace) -> None:
    print_json(_service(ns).status(ns.token, ns.id))


def cmd_certificate(ns: argparse.Namespace) -> None:
    service = _service(ns)
    if ns.png:
        Path(ns.png).write_bytes(service.certificate_png(ns.token, ns.id))
    print_json(service.certificate(ns.token, ns.id))


def cmd_certificate_key(ns: argparse.Namespace) -> None:
    print_json(_service(ns).certificate_key(ns.token))


def cmd_purge(ns: argparse.Namespace) -> None:
    purged = _service(ns).purge(ns.tenant, ns.adapter, ns.keep)
    if ns.json:
        print_json(purged)
        return
    print(f"{ns.tenant}/{ns.adapter}: kept v{', v'.join(map(str, purged['kept_versions']))}; "
          f"purged adapter versions {purged['purged_adapter_versions'] or 'none'} and "
          f"{purged['dataset']} versions {purged['purged_dataset_versions'] or 'none'}")


def cmd_queue(ns: argparse.Namespace) -> None:
    if ns.summary:
        print_json(_service(ns).overview(ns.operator_token))
    else:
        print_json(_service(ns).queue(ns.token, ns.operator_token, ns.show_bodies))


def cmd_operator_token(ns: argparse.Namespace) -> None:
    print(_service(ns).new_operator_token())
    print("operator token made; keep it (only its hash is stored; any earlier one no longer "
          "works)", file=sys.stderr)


def cmd_serve(ns: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from ..service.logs import service_logs

    args, distributed = engine_options(ns)
    settings = options_from(ns, ServiceArguments)
    service = _service(ns)
    address = _http_address(ns.http) if ns.http else None
    with ExitStack() as stack:
        if ns.log_json or not ns.quiet:
            stack.enter_context(service_logs(ns.log_json))
        if distributed is not None:
            from actors.driver import join_cluster

            # before any actor: a local cluster sized for every engine's ranks
            join_cluster(distributed, settings.max_engines)
        on_published = None
        if ns.replicas:
            from actors.cluster import connect
            from actors.replica import ReplicaFleet

            if distributed is None:
                connect(None, 0, 0.0, 0.0)  # a local cluster for the replicas alone
            on_published = ReplicaFleet.start(service.registry, ns.replicas)
        worker = service.worker(settings, args, distributed, on_published,
                                progress=not (ns.quiet or ns.log_json))
        if address is not None:
            url = _start_http(stack, service, address, distributed is not None,
                              settings.api_replicas)
            say(ns, f"HTTP API on {url}/v1/openapi.json", {"event": "http_started", "url": url})
        try:
            committed = worker.serve(drain=ns.drain)
        except KeyboardInterrupt:
            raise Interrupted(f"{worker.stats.batches} batch(es) committed and published "
                              "stay; a batch that was running is rolled back and redone by "
                              "the next serve") from None
        say(ns, f"{committed} batch(es) committed",
            worker.stats.summary(worker.base_loads))


def _http_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise EraserError(f"--http {text!r}: expected HOST:PORT, for example 127.0.0.1:8080")
    return host or "127.0.0.1", int(port)


def _start_http(stack, service, address: tuple[str, int], on_ray: bool, replicas: int) -> str:
    """The tenants' API: Ray Serve replicas with --workers (actors/api.py), else a thread of
    this process; taken down when the serve returns. Returns its URL."""
    if on_ray:
        from actors.api import start_api, stop_api

        url = start_api(str(service.root), *address, replicas)
        stack.callback(stop_api)
        return url
    from ..service.http import HttpServer

    return stack.enter_context(HttpServer(service, *address)).url


def say(ns: argparse.Namespace, text: str, fields: dict) -> None:
    """A line for the operator on stderr: as a JSON log line with --log-json, else as text."""
    if ns.log_json:
        log.info(text, extra={"fields": fields})
    else:
        print(text, file=sys.stderr)


def register(sub) -> None:
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

    p = sub.add_parser("certificate-key", help="service: the key of your certificates' row "
                       "hashes (HMAC-SHA256), to recompute them")
    root(p)
    p.set_defaults(func=cmd_certificate_key)

    p = sub.add_parser("operator", help="service: the operator's credential")
    q = p.add_subparsers(dest="action", required=True).add_parser(
        "token", help="make the operator token (replacing any earlier one) and print it")
    root(q, token=False)
    q.set_defaults(func=cmd_operator_token)

    p = sub.add_parser("purge", help="service (operator): delete an adapter's superseded "
                       "versions, the deltas that rebuild them and their old training data")
    root(p, token=False)
    p.add_argument("--tenant", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--keep", type=int, default=1,
                   help="newest versions kept (at least 1, the current one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("queue", help="service: pending and running requests (yours with "
                       "--token, everyone's with --operator-token)")
    root(p)
    p.add_argument("--operator-token", default=os.environ.get("ERASER_OPERATOR_TOKEN"),
                   help="the operator's token (env ERASER_OPERATOR_TOKEN): every tenant's "
                   "requests, as hashes")
    p.add_argument("--show-bodies", action="store_true",
                   help="with --operator-token: the requests' text too (audited)")
    p.add_argument("--summary", action="store_true",
                   help="with --operator-token: requests waiting per tenant and adapter, "
                   "running batches, the last batch's seconds by phase, and the serve's "
                   "state, counters and engines held (as GET /v1/status)")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("serve", help="service: run batches (and the HTTP API)")
    root(p, token=False)
    p.add_argument("--drain", action="store_true",
                   help="exit when the queue is empty (default: keep polling)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="also serve the tenants' HTTP API here")
    add_options(p, ServiceArguments, "batches and certificates")
    p.add_argument("--replicas", type=int, default=0,
                   help="serving replicas per adapter (Ray actors) that receive every new "
                   "version as a delta")
    p.add_argument("--quiet", action="store_true", help="no logs or progress bars")
    p.add_argument("--log-json", action="store_true",
                   help="logs as one JSON object per line on stderr (no progress bars); a "
                   "drain ends with the summary {\"event\": \"drained\", …}")
    solver_options(p)
    p.set_defaults(func=cmd_serve)
