"""The erase service: tenants kept apart, 200 requests in one serve, kills at every phase,
hostile input. tiny-llama adapters, one-process engine (the distributed one is in
test_distributed.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import delta_vector, http, word_rows
from safetensors.torch import load_file

from eraser_dist import api, cli
from eraser_dist.arguments import EraseArguments, LoraArguments, ServiceArguments, TrainArguments
from eraser_dist.core.requests import parse_request
from eraser_dist.data import examples_digest, read_examples, write_examples
from eraser_dist.llm.adapters import adapter_version
from eraser_dist.service import EraseService
from eraser_dist.service.auth_limit import FailedAuthLimit
from eraser_dist.service.batching import RoundRobin, plan_batch
from eraser_dist.service.errors import Conflict, Forbidden, NotFound, TooLarge, Unauthorized
from eraser_dist.service.http import HttpServer
from eraser_dist.service.journal import JournalEntry
from eraser_dist.service.worker import PHASES, BatchWorker

FLEET = {"acme": ["a1", "a2"], "globex": ["b1", "b2"], "initech": ["c1"]}
N_ROWS = 44
ERASE = EraseArguments(hvp="exact", damping=0.1, tol=1e-6, max_iter=30)
# every version kept: the tests replay the chain from v1 outside the service
SETTINGS = ServiceArguments(max_batch_requests=16, holdout_sample=8, retain_versions=0)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A data root with 3 tenants and 5 adapters, each fitted on its own 44 rows."""
    work = tmp_path_factory.mktemp("fleet")
    service = EraseService(work / "root")
    tokens = {}
    for tenant, adapters in FLEET.items():
        tokens[tenant] = service.add_tenant(tenant)
        for name in adapters:
            rows = word_rows(N_ROWS + 8, prefix=f"{name}-")
            write_examples(work / f"{name}.parquet", rows[:N_ROWS])
            write_examples(work / f"{name}-holdout.parquet", rows[N_ROWS:])
            api.train("tiny-llama", work / f"{name}.parquet", work / name, LoraArguments(rank=2),
                      TrainArguments(epochs=1, max_length=48), progress=False)
            service.add_dataset(tokens[tenant], tenant, f"{name}-data", work / f"{name}.parquet",
                                work / f"{name}-holdout.parquet")
            service.add_adapter(tokens[tenant], tenant, name, work / name, f"{name}-data")
    return work / "root", tokens


@pytest.fixture
def fleet(template, tmp_path):
    root, tokens = template
    shutil.copytree(root, tmp_path / "root")
    return EraseService(tmp_path / "root"), tokens


def weights(path: Path) -> torch.Tensor:
    tensors = load_file(str(path / "adapter_model.safetensors"))
    return torch.cat([tensors[k].flatten().double() for k in sorted(tensors)])


def requests_for(adapter: str, n: int, seed: int) -> list[dict]:
    """n requests on one adapter's rows: removals of distinct rows, and edits that come back
    to the same rows (so batches must split), never naming a removed row."""
    rng = random.Random(seed)
    ids = [f"{adapter}-{i}" for i in range(N_ROWS)]
    removable, editable = ids[: N_ROWS // 2], ids[N_ROWS // 2:]
    rng.shuffle(removable)
    out = []
    for j in range(n):
        if j % 3 == 0 and removable:
            take = [removable.pop() for _ in range(min(1 + j % 2, len(removable)))]
            out.append({"kind": "remove", "ids": take})
        elif j % 3 == 1:
            out.append({"kind": "correct_response",
                        "edits": [{"id": rng.choice(editable), "response": f"fix{j}"}]})
        else:
            out.append({"kind": "modify_query",
                        "edits": [{"id": rng.choice(editable), "query": f"rev new{j}"}]})
    return out


# -- batching policy (pure) ------------------------------------------------------------------

def entry(seq: int, request: dict) -> JournalEntry:
    return JournalEntry(seq, f"q{seq}", "t", "a", parse_request(request))


def test_batches_keep_order_split_at_a_shared_row_and_reject_stale_requests():
    rows = word_rows(10)
    pending = [entry(1, {"kind": "remove", "ids": ["r1"]}),
               entry(2, {"kind": "remove", "ids": ["gone"]}),
               entry(3, {"kind": "correct_response", "edits": [{"id": "r2", "response": "x"}]}),
               entry(4, {"kind": "remove", "ids": ["r2"]}),
               entry(5, {"kind": "remove", "ids": ["r3"]})]
    plan = plan_batch(pending, rows, max_requests=10, max_rows=100)
    assert [e.seq for e in plan.batch] == [1, 3]  # 4 names r2 again: it waits for the next
    assert [(e.seq, "unknown id" in why) for e, why in plan.rejected] == [(2, True)]
    assert [e.seq for e in plan_batch(pending, rows, 1, 100).batch] == [1]
    everything = [entry(i, {"kind": "remove", "ids": [f"r{i}"]}) for i in range(10)]
    assert len(plan_batch(everything, rows, 100, 100).batch) == 9  # not every row at once


def test_tenants_then_their_adapters_take_turns():
    """One request per batch: acme's backlog on a1 lets globex's later request and acme's
    other adapter in after one batch each (the old policy, oldest first, ran all of a1's)."""
    def queued(seq, tenant, adapter):
        return JournalEntry(seq, f"q{seq}", tenant, adapter,
                            parse_request({"kind": "remove", "ids": [f"r{seq}"]}))

    pending = [queued(i, "acme", "a1") for i in range(1, 5)] + [
        queued(5, "globex", "b1"), queued(6, "acme", "a2")]
    turns, served = RoundRobin(), []
    while (target := turns.next(pending)) is not None:
        first = next(e for e in pending if (e.tenant, e.adapter) == target)
        served.append(first.seq)
        pending.remove(first)
    assert served == [1, 5, 6, 2, 3, 4]


# -- tenants are kept apart --------------------------------------------------------------

def test_tenants_cannot_reach_each_others_things_through_the_api(fleet):
    service, tokens = fleet
    acme, globex = tokens["acme"], tokens["globex"]
    mine = service.submit(acme, "a1", {"kind": "remove", "ids": ["a1-3"]})["id"]
    with pytest.raises(NotFound):
        service.submit(globex, "a1", {"kind": "remove", "ids": ["a1-3"]})  # not its adapter
    with pytest.raises(NotFound, match="not in the training set"):
        service.submit(globex, "b1", {"kind": "remove", "ids": ["a1-3"]})  # not its rows
    with pytest.raises(NotFound):
        service.status(globex, mine)
    with pytest.raises(NotFound):
        service.certificate(globex, mine)
    with pytest.raises(Forbidden):
        service.submit(globex, "a1", {"kind": "remove", "ids": ["a1-3"]}, tenant="acme")
    with pytest.raises(Unauthorized):
        service.status("ert_forged", mine)
    assert service.adapters(globex) and {a["name"] for a in service.adapters(globex)} == {
        "b1", "b2"}
    # the queue: a tenant sees its own; everyone's needs the operator token, as hashes
    assert [q["id"] for q in service.queue(acme)] == [mine] and service.queue(globex) == []
    with pytest.raises(Unauthorized):
        service.queue()
    operator = service.new_operator_token()
    with pytest.raises(Unauthorized, match="needs the operator token"):
        service.queue(operator_token=acme)
    hashed = service.queue(operator_token=operator)
    assert [q["id"] for q in hashed] == [mine] and "a1-3" not in json.dumps(hashed)
    assert hashed[0]["request"]["kind"] == "remove" and hashed[0]["request"]["n_rows"] == 1
    shown = service.queue(operator_token=operator, show_bodies=True)
    assert shown[0]["request"] == {"kind": "remove", "ids": ["a1-3"]}
    assert service.new_operator_token() != operator
    with pytest.raises(Unauthorized):
        service.queue(operator_token=operator)  # replaced
    refused = [a for a in service.registry.audit_log() if not a["allowed"]]
    assert len(refused) >= 8 and any(a["action"] == "impersonate" for a in refused)
    assert [a["action"] for a in refused].count("queue") == 2


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tenants_cannot_reach_each_others_things_through_the_cli(fleet, tmp_path, capsys):
    service, tokens = fleet
    root = str(service.root)
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"kind": "remove", "ids": ["a1-5"]}))
    code, out, _ = run_cli(capsys, "submit", str(request), "--root", root, "--tenant", "acme",
                           "--adapter", "a1", "--token", tokens["acme"])
    assert code == 0 and out.strip().startswith("req_")
    request_id = out.strip()
    attempts = [
        ("submit", str(request), "--tenant", "acme", "--adapter", "a1"),  # wrong tenant
        ("submit", str(request), "--tenant", "globex", "--adapter", "a1"),  # not its adapter
        ("status", request_id),
        ("certificate", request_id),
    ]
    for argv in attempts:
        code, out, err = run_cli(capsys, *argv, "--root", root, "--token", tokens["globex"])
        assert code == 2 and out == "" and err.startswith("eraser: error: ")
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(capsys, "status", request_id, "--root", root, "--token",
                           tokens["acme"])
    assert code == 0 and json.loads(out)["state"] == "pending"
    assert len(service.journal.queue()) == 1


def test_the_whole_flow_through_the_cli(template, tmp_path, capsys):
    """tenant add → dataset add → adapter add → submit → serve --drain → status → certificate."""
    work = template[0].parent
    root = str(tmp_path / "root")
    code, token, _ = run_cli(capsys, "tenant", "add", "umbrella", "--root", root)
    token = token.strip()
    assert code == 0 and token.startswith("ert_")
    assert token not in (tmp_path / "root" / "eraser.sqlite").read_bytes().decode("latin-1")
    auth = ("--root", root, "--token", token)
    assert run_cli(capsys, "dataset", "add", "words", str(work / "a1.parquet"), "--tenant",
                   "umbrella", "--holdout", str(work / "a1-holdout.parquet"), *auth)[0] == 0
    code, _, err = run_cli(capsys, "adapter", "add", "chat", str(work / "a1"), "--tenant",
                           "umbrella", "--dataset", "words", *auth)
    assert code == 0, err
    code, _, err = run_cli(capsys, "adapter", "add", "chat2", str(work / "a1"), "--tenant",
                           "umbrella", "--dataset", "words", *auth)
    assert code == 2 and "already backs adapter 'chat'" in err
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"kind": "correct_response",
                                   "edits": [{"id": "a1-30", "response": "new"}]}))
    code, out, _ = run_cli(capsys, "submit", str(request), "--tenant", "umbrella", "--adapter",
                           "chat", *auth)
    request_id = out.strip()
    operator = run_cli(capsys, "operator", "token", "--root", root)[1].strip()
    code, out, _ = run_cli(capsys, "queue", "--root", root, "--operator-token", operator)
    assert [q["id"] for q in json.loads(out)] == [request_id] and "a1-30" not in out
    code, _, err = run_cli(capsys, "queue", "--root", root)
    assert code == 2 and "token" in err
    code, _, err = run_cli(capsys, "serve", "--drain", "--quiet", "--root", root, "--damping",
                           "0.1", "--max-iter", "30")
    assert code == 0 and "1 batch(es) committed" in err
    code, out, _ = run_cli(capsys, "certificate", request_id, "--png",
                           str(tmp_path / "c.png"), *auth)
    certificate = json.loads(out)
    assert (certificate["adapter"]["version_before"], certificate["adapter"]["version_after"]) \
        == (1, 2)
    assert certificate["dataset"]["n_rows_after"] == N_ROWS  # an edit keeps the row
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    new = certificate["verification"]["new_rows_loss"]
    assert new["after"] < new["before"]  # the corrected response became likelier
    assert json.loads(run_cli(capsys, "status", request_id, *auth)[1])["state"] == "done"
    # the row is named by HMACs under the tenant's key, which the tenant can read; a plain
    # sha256 of its id (guessable) appears nowhere
    key = bytes.fromhex(json.loads(run_cli(capsys, "certificate-key", *auth)[1])
                        ["certificate_key"])
    old_row = next(r for r in read_examples(work / "a1.parquet") if r.id == "a1-30")
    joined = "\0".join((old_row.id, old_row.query, old_row.response)).encode()
    assert certificate["rows"] == [
        {"id_hmac": hmac.new(key, b"a1-30", hashlib.sha256).hexdigest(),
         "row_hmac": hmac.new(key, joined, hashlib.sha256).hexdigest()}]
    assert hashlib.sha256(b"a1-30").hexdigest() not in out
    other = run_cli(capsys, "tenant", "add", "hooli", "--root", root)[1].strip()
    assert json.loads(run_cli(capsys, "certificate-key", "--root", root, "--token", other)[1])[
        "certificate_key"] != key.hex()


@pytest.fixture
def api_server(fleet):
    service, tokens = fleet
    with HttpServer(service, "127.0.0.1", 0) as server:
        yield service, tokens, server.url


def test_http_isolation_and_hostile_input_change_nothing(api_server):
    service, tokens, base = api_server
    acme, globex = tokens["acme"], tokens["globex"]
    good = {"adapter": "a1", "request": {"kind": "remove", "ids": ["a1-7"]},
            "idempotency_key": "k1"}
    status, first = http(base, "POST", "/v1/requests", acme, good)
    assert status == 202 and first["state"] == "pending"
    status, again = http(base, "POST", "/v1/requests", acme, good)
    assert (status, again["id"], again["replayed"]) == (200, first["id"], True)
    before = service.journal.queue()
    hostile = [
        (401, None, "POST", "/v1/requests", good, None),
        (401, "ert_nope", "GET", f"/v1/requests/{first['id']}", None, None),
        (404, globex, "GET", f"/v1/requests/{first['id']}", None, None),
        (404, globex, "GET", f"/v1/requests/{first['id']}/certificate", None, None),
        (404, globex, "GET", f"/v1/requests/{first['id']}/certificate.png", None, None),
        (404, globex, "POST", "/v1/requests", good, None),
        (404, globex, "POST", "/v1/requests",
         {"adapter": "b1", "request": {"kind": "remove", "ids": ["a1-7"]}}, None),
        (409, acme, "POST", "/v1/requests", {**good, "request": {"kind": "remove",
                                                                   "ids": ["a1-8"]}}, None),
        (400, acme, "POST", "/v1/requests", None, b"{not json"),
        (400, acme, "POST", "/v1/requests", [1, 2], None),
        (400, acme, "POST", "/v1/requests", {**good, "idempotency_key": "k2", "admin": True},
         None),
        (400, acme, "POST", "/v1/requests", {"adapter": "a1", "request": {
            "kind": "remove", "ids": ["a1-7"], "also": 1}}, None),
        (400, acme, "POST", "/v1/requests", {"adapter": "../../etc/passwd",
                                             "request": good["request"]}, None),
        (400, acme, "POST", "/v1/requests", {"adapter": "a1", "request": {"kind": "drop"}},
         None),
        (413, acme, "POST", "/v1/requests", {"adapter": "a1", "request": {
            "kind": "remove", "ids": [f"x{i}" for i in range(10_001)]}}, None),
        (413, acme, "POST", "/v1/requests", None, b" " * ((1 << 20) + 1)),
        (404, acme, "GET", "/v1/requests/..%2F..%2Feraser.sqlite", None, None),
        (404, acme, "GET", "/v1/nothing", None, None),
        (405, acme, "DELETE", f"/v1/requests/{first['id']}", None, None),
    ]
    for expected, token, method, path, body, raw in hostile:
        status, payload = http(base, method, path, token, body, raw)
        assert status == expected, (expected, method, path, payload)
        assert payload["error"]["status"] == expected and payload["error"]["message"]
    # framing and parser attacks (the attack run: -1 read a 1.2 MB body past the cap, to the
    # end of the stream, and journaled it; two framings were accepted; deep nesting and a
    # 5,000-digit integer were 500s; a GET's body was answered as a second request)
    valid = json.dumps({**good, "idempotency_key": "k3"}).encode()
    framing = [
        (400, {"Content-Length": "-1"}, "POST", valid),
        (400, {"Transfer-Encoding": "chunked", "Content-Length": "2"}, "POST", b"{}"),
        (400, None, "POST", b"[" * 100_000 + b"]" * 100_000),
        (400, None, "POST", b'{"adapter": "a1", "idempotency_key": ' + b"1" * 5_000 + b"}"),
        (400, {"Content-Length": "2"}, "GET", b"{}"),
    ]
    for expected, headers, method, raw in framing:
        path = "/v1/requests" if method == "POST" else f"/v1/requests/{first['id']}"
        status, payload = http(base, method, path, acme, raw=raw, headers=headers)
        assert status == expected, (expected, headers, payload)
        assert payload["error"]["status"] == expected
    assert service.journal.queue() == before  # nothing journaled, nothing changed
    status, spec = http(base, "GET", "/v1/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.1")
    assert {"/v1/requests", "/v1/requests/{id}", "/v1/requests/{id}/certificate"} <= set(
        spec["paths"])


def test_failed_authentication_is_audited_and_limited_per_address_and_token(fleet):
    """Every 401 is audited; the 4th failure within the window, from one address, is 429
    with Retry-After (whatever the token), until the window has passed."""
    service, tokens = fleet
    now = [1000.0]
    with HttpServer(service, "127.0.0.1", 0, FailedAuthLimit(3, 60.0, lambda: now[0])) as server:
        base = server.url
        statuses = [http(base, "GET", "/v1/adapters", token)[0]
                    for token in ("ert_a", None, "ert_b")]
        assert statuses == [401, 401, 401]
        status, payload = http(base, "GET", "/v1/adapters", "ert_c")
        assert status == 429 and "retry in 60 s" in payload["error"]["message"]
        assert http(base, "GET", "/v1/adapters", tokens["acme"])[0] == 429  # same address
        now[0] += 59.0
        assert http(base, "GET", "/v1/adapters", tokens["acme"])[0] == 429
        now[0] += 1.5  # the first failure has left the window
        assert http(base, "GET", "/v1/adapters", tokens["acme"])[0] == 200
    refused = [(a["action"], a["detail"]) for a in service.registry.audit_log()
               if not a["allowed"]]
    assert refused == [("authenticate", "unknown token"), ("authenticate", "no token"),
                       ("authenticate", "unknown token")] + [
        ("rate limit", f"client 127.0.0.1: retry in {s} s") for s in (60, 60, 1)]


def test_concurrent_submits_are_all_answered_and_a_stalled_connection_is_closed(fleet):
    """40 submits at once: each answered 202 (the old backlog of 5 reset some); a connection
    that sends nothing is closed after the idle timeout instead of holding a thread."""
    import socket

    service, tokens = fleet
    with HttpServer(service, "127.0.0.1", 0, idle_timeout_s=0.5) as server:
        base = server.url
        stalled = socket.create_connection(server.address, timeout=10)
        stalled.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\n")  # and no more
        def submit(i):
            return lambda: http(base, "POST", "/v1/requests", tokens["acme"], {
                "adapter": "a1", "request": {"kind": "correct_response", "edits": [
                    {"id": "a1-30", "response": f"r{i}"}]}})[0]

        assert race(*(submit(i) for i in range(40))) == [202] * 40
        assert len(service.journal.queue("acme")) == 40
        assert stalled.recv(1024) == b""  # closed by the server, well before the 10 s
        stalled.close()


def test_failed_authentication_limit_counts_each_key_in_its_own_window():
    now = [0.0]
    limit = FailedAuthLimit(2, 10.0, lambda: now[0])
    limit.failed("ip", "tok")
    now[0] = 4.0
    limit.failed("ip")
    assert limit.wait("ip") == pytest.approx(6.0) and limit.wait("tok") == 0.0
    assert limit.wait("other", "ip") == pytest.approx(6.0)
    now[0] = 10.0
    assert limit.wait("ip") == 0.0  # the failure at 0 has left the window
    with pytest.raises(ValueError):
        FailedAuthLimit(0, 10.0)


def test_too_large_and_replayed_requests_through_the_api(fleet):
    service, tokens = fleet
    with pytest.raises(TooLarge):
        service.submit(tokens["acme"], "a1", {"kind": "remove",
                                              "ids": [f"x{i}" for i in range(10_001)]})
    a = service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-1"]}, "key")
    b = service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-1"]}, "key")
    assert a["id"] == b["id"] and b["replayed"]
    with pytest.raises(Conflict):
        service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-2"]}, "key")
    # another tenant may use the same key for its own request
    assert not service.submit(tokens["globex"], "b1", {"kind": "remove", "ids": ["b1-1"]},
                              "key")["replayed"]
    assert len(service.journal.queue()) == 2


def test_concurrent_submits_with_one_idempotency_key_journal_one_request(fleet):
    from concurrent.futures import ThreadPoolExecutor

    service, tokens = fleet
    body = {"kind": "remove", "ids": ["a1-4"]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: service.submit(tokens["acme"], "a1", body, "same"),
                                range(16)))
    assert len({a["id"] for a in answers}) == 1
    assert sum(not a["replayed"] for a in answers) == 1
    assert len(service.journal.queue()) == 1


# -- 200 requests in one serve ---------------------------------------------------------------

def test_200_requests_over_3_tenants_and_5_adapters(fleet):
    """Bulk loads interleaved over tenants: every request done in one batch each, really
    batched, and each adapter's final weights those of its batches replayed in order
    outside the service. What is checked is bookkeeping and the replay's equality, not the
    solve's accuracy, so the erases are short (8 Gauss-Newton iterations instead of the
    fleet's 30 exact ones)."""
    erase = replace(ERASE, hvp="ggn", max_iter=8)
    service, tokens = fleet
    owner = {a: t for t, adapters in FLEET.items() for a in adapters}
    submitted: dict[str, tuple[str, dict]] = {}
    streams = {a: requests_for(a, 40, seed=i) for i, a in enumerate(owner)}
    for j in range(40):  # interleaved, as bulk loads from many tenants arrive
        for adapter, stream in streams.items():
            result = service.submit(tokens[owner[adapter]], adapter, stream[j])
            submitted[result["id"]] = (adapter, stream[j])
    assert len(submitted) == 200
    originals = {a: service.registry.adapter(owner[a], a) for a in owner}
    worker = service.worker(SETTINGS, erase)
    committed = worker.serve(drain=True)
    states = {i: service.status(tokens[owner[a]], i)["state"] for i, (a, _) in submitted.items()}
    assert set(states.values()) == {"done"}
    batches = service.registry.query("SELECT * FROM batches ORDER BY id")
    assert committed == len(batches) and {b["state"] for b in batches} == {"committed"}
    in_batches = [i for b in batches for i in json.loads(b["request_ids"])]
    assert sorted(in_batches) == sorted(submitted)  # every request in exactly one batch
    assert len(batches) < 200 / 2  # they really were batched
    for adapter, tenant in owner.items():
        # The same batches, applied one at a time in order outside the service.
        current_adapter, current_data = originals[adapter].path, service.registry.dataset(
            tenant, f"{adapter}-data", 1).path
        mine = [b for b in batches if b["adapter"] == adapter]
        for b in mine:
            batch = [parse_request(submitted[i][1]) for i in json.loads(b["request_ids"])]
            out = service.root.parent / f"replay-{adapter}-{b['id']}"
            api.erase("tiny-llama", current_adapter, current_data, batch, out, erase,
                      progress=False)
            from eraser_dist.core.requests import apply_requests
            write_examples(out.with_suffix(".parquet"),
                           apply_requests(batch, read_examples(current_data)).rows_after)
            current_adapter, current_data = out, out.with_suffix(".parquet")
        final = service.registry.adapter(tenant, adapter)
        assert final.version == 1 + len(mine)
        replayed, served = weights(current_adapter), weights(final.path)
        assert float((replayed - served).norm() / served.norm()) <= 1e-6
        data = service.registry.dataset(tenant, f"{adapter}-data")
        assert read_examples(data.path) == read_examples(current_data)
        removed = {i for a, r in submitted.values() if a == adapter and r["kind"] == "remove"
                   for i in r["ids"]}
        assert not removed & {e.id for e in read_examples(data.path)}
    some = next(iter(submitted))
    certificate = service.certificate(tokens[owner[submitted[some][0]]], some)
    assert certificate["erased_rows_absent_from_new_dataset"]
    assert certificate["request"]["id"] == some and "a1-" not in json.dumps(certificate["rows"])


# -- kills ---------------------------------------------------------------------------------

KILLED_SERVE = """
import sys
from eraser_dist.arguments import EraseArguments, ServiceArguments
from eraser_dist.faults import FaultPlan
from eraser_dist.service import EraseService
root, phase, at, record = sys.argv[1:]
service = EraseService(root)
worker = service.worker(ServiceArguments(max_batch_requests=3, holdout_sample=8),
                        EraseArguments(hvp="exact", damping=0.1, tol=1e-6, max_iter=30),
                        faults=(FaultPlan("serve", phase, int(at), 1, record),))
worker.serve(drain=True)
"""


def submit_small_load(service, tokens) -> list[str]:
    ids = []
    for adapter, tenant in (("a1", "acme"), ("b1", "globex")):
        for request in requests_for(adapter, 5, seed=7):
            ids.append(service.submit(tokens[tenant], adapter, request)["id"])
    return ids


def final_state(service) -> dict:
    out = {}
    for adapter, tenant in (("a1", "acme"), ("b1", "globex")):
        a = service.registry.adapter(tenant, adapter)
        d = service.registry.dataset(tenant, f"{adapter}-data")
        out[adapter] = (a.version, weights(a.path), d.version, d.sha256)
    states = service.registry.query("SELECT state, COUNT(*) AS n FROM requests GROUP BY state")
    out["requests"] = {r["state"]: r["n"] for r in states}
    return out


@pytest.fixture(scope="module")
def reference_state(template, tmp_path_factory):
    root, tokens = template
    copy = tmp_path_factory.mktemp("reference") / "root"
    shutil.copytree(root, copy)
    service = EraseService(copy)
    submit_small_load(service, tokens)
    service.worker(ServiceArguments(max_batch_requests=3, holdout_sample=8), ERASE).serve()
    return final_state(service)


@pytest.mark.parametrize("phase,at", [(p, 1) for p in PHASES] + [("adapter_published", 3)])
def test_a_kill_at_any_phase_ends_in_the_state_of_a_run_without_it(fleet, reference_state,
                                                                   tmp_path, phase, at):
    service, tokens = fleet
    ids = submit_small_load(service, tokens)
    child = subprocess.run([sys.executable, "-c", KILLED_SERVE, str(service.root), phase,
                            str(at), str(tmp_path / "deaths")], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 1, child.stderr[-2000:]  # it died at the fault
    assert len(list((tmp_path / "deaths").glob("death-*"))) == 1
    in_flight = service.registry.query("SELECT state FROM batches WHERE state = 'running'")
    assert len(in_flight) == (0 if phase == "committed" else 1)
    rolled = service.worker(ServiceArguments(max_batch_requests=3, holdout_sample=8),
                            ERASE).recover()
    assert len(rolled) == len(in_flight)
    service.worker(ServiceArguments(max_batch_requests=3, holdout_sample=8), ERASE).serve()
    state = final_state(service)
    assert state["requests"] == {"done": len(ids)}
    for adapter in ("a1", "b1"):
        version, w, data_version, sha = state[adapter]
        ref_version, ref_w, ref_data_version, ref_sha = reference_state[adapter]
        assert (version, data_version, sha) == (ref_version, ref_data_version, ref_sha)
        assert float((w - ref_w).norm() / ref_w.norm()) <= 1e-9
    leftovers = [p for p in service.root.rglob(".*") if p.name != ".cg-checkpoint"]
    assert not leftovers, leftovers
    versions = service.registry.query(  # the versions kept (serve purges the older ones)
        "SELECT tenant, name, COUNT(*) AS n FROM adapters AS a WHERE NOT EXISTS (SELECT 1 FROM "
        "purged AS p WHERE p.tenant = a.tenant AND p.kind = 'adapter' AND p.name = a.name AND "
        "p.version = a.version) GROUP BY tenant, name")
    on_disk = {(p.parts[-4], p.parts[-2]): 0 for p in service.root.glob("tenants/*/adapters/*/v*")}
    for p in service.root.glob("tenants/*/adapters/*/v*"):
        on_disk[(p.parts[-4], p.parts[-2])] += 1
    assert {(r["tenant"], r["name"]): r["n"] for r in versions} == on_disk  # no torn version


def test_sigkill_of_the_serve_command_at_an_arbitrary_moment(fleet, reference_state):
    """The real command, killed by SIGKILL once its first batch is committed (wherever the
    second one then is), and started again: the same end state as a run without the kill."""
    import os
    import signal
    import time

    service, tokens = fleet
    submit_small_load(service, tokens)
    argv = [sys.executable, "-m", "eraser_dist.cli", "serve", "--drain", "--quiet", "--root",
            str(service.root), "--max-batch-requests", "3", "--hvp", "exact", "--damping", "0.1",
            "--tol", "1e-6", "--max-iter", "30", "--heartbeat-seconds", "0.2"]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not service.registry.query("SELECT 1 FROM batches WHERE state = 'committed'"):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    # the killed serve's row still says 'serving'; three missed beats later it reads as lost
    assert service.registry.serve_state()["pid"] == child.pid
    time.sleep(3 * 0.2 + 0.1)
    assert service.registry.serve_state()["state"] == "lost"
    subprocess.run(argv, check=True, timeout=300)
    assert service.registry.serve_state()["state"] == "stopped"
    state = final_state(service)
    assert state["requests"] == {"done": 10}
    for adapter in ("a1", "b1"):
        version, w, data_version, sha = state[adapter]
        ref_version, ref_w, ref_data_version, ref_sha = reference_state[adapter]
        assert (version, data_version, sha) == (ref_version, ref_data_version, ref_sha)
        assert float((w - ref_w).norm() / ref_w.norm()) <= 1e-9


@pytest.mark.parametrize("rebuild_growth, builds", [(1e6, 1), (1e-12, 2)])
def test_batches_start_from_the_adapters_curvature_index(fleet, rebuild_growth, builds):
    """--index-rank: the first batch builds the adapter's index, the next one (on the
    version that batch published) reuses it, and each certificate names where CG started;
    an index whose step's residual has grown past --index-rebuild-growth times its fresh
    one is rebuilt (1e-12: at once, the first batch's own residual is above the bar). The
    worker holds each index in memory: its tensors are read once per build, not at every
    batch's check and erase. The published weights are those of the same erases run
    without an index, to the solver's precision."""
    service, tokens = fleet
    erase = EraseArguments(hvp="ggn", damping=0.1, tol=1e-6, max_iter=60)
    settings = ServiceArguments(max_batch_requests=1, holdout_sample=4, index_rank=6,
                                index_rebuild_growth=rebuild_growth, retain_versions=0)
    requests = [{"kind": "remove", "ids": ["a1-3"]},
                {"kind": "correct_response", "edits": [{"id": "a1-30", "response": "xy"}]}]
    ids = [service.submit(tokens["acme"], "a1", r)["id"] for r in requests]
    original = service.registry.adapter("acme", "a1")
    worker = service.worker(settings, erase)
    assert worker.serve(drain=True) == 2
    assert worker.index_builds == builds and worker.indexes.tensor_reads == builds
    starts = [service.certificate(tokens["acme"], i)["solver"]["start"] for i in ids]
    assert starts[0]["curvature_index_of_version"] == original.weights_sha
    assert starts[0]["versions_behind"] == 0 and 0 < starts[0]["rank"] <= 6
    assert starts[1]["versions_behind"] == (1 if builds == 1 else 0)
    # the fresh residual is the first batch's on each index's own version
    fresh = starts[0 if builds == 1 else 1]["first_relative_residual"]
    assert starts[1]["fresh_relative_residual"] == fresh
    current, data = original.path, service.registry.dataset("acme", "a1-data", 1).path
    for position, request in enumerate(requests):
        out = service.root.parent / f"no-index-{builds}-{position}"
        cold = api.erase("tiny-llama", current, data, parse_request(request), out, erase,
                         progress=False)
        # the certificate says what the step control did: none on the removal, the line
        # search's α on the correction, as the cold erase's report has it
        control = service.certificate(tokens["acme"], ids[position])["solver"]["step_control"]
        assert (control is None) == (cold.step_control is None) == (position == 0)
        if control is not None:
            assert control["kind"] == cold.step_control.kind == "line_search"
            assert control["alpha"] == pytest.approx(cold.step_control.alpha, rel=1e-3)
            assert len(control["evaluations"]) == len(cold.step_control.evaluations)
        from eraser_dist.core.requests import apply_request

        edited = apply_request(parse_request(request), read_examples(data))
        data = service.root.parent / f"no-index-{builds}-{position}.parquet"
        write_examples(data, edited.rows_after)
        current = out
    served = weights(service.registry.adapter("acme", "a1").path)
    replayed = weights(current)
    # the same solution to the float32 model's finite-difference products (2.6e-4 seen)
    assert float((served - replayed).norm() / replayed.norm()) < 1e-3


# -- one adapter's failure stays with it ---------------------------------------------------

def truncate_weights(root):
    target = root / "tenants/acme/adapters/a1/v0001/adapter_model.safetensors"
    target.write_bytes(target.read_bytes()[:100])


def swap_weights(root):
    """Valid weights of another adapter (the fleet's adapters learnt the same texts, so
    their files are equal: these are scaled)."""
    from safetensors.torch import save_file

    path = root / "tenants/acme/adapters/a1/v0001/adapter_model.safetensors"
    save_file({k: v * 1.01 for k, v in load_file(str(path)).items()}, str(path))


def change_rows(root):
    path = root / "tenants/acme/datasets/a1-data/v0001.parquet"
    rows = read_examples(path)
    write_examples(path, rows[:-1])


@pytest.mark.parametrize("damage, reason", [
    (truncate_weights, "not the registered"),
    (swap_weights, "not the registered"),
    (change_rows, "has sha256"),
    (lambda root: (root / "tenants/acme/datasets/a1-data/v0001.parquet").unlink(),
     "does not exist"),
    (lambda root: (root / "tenants/acme/datasets/a1-data/holdout.parquet").unlink(),
     "batch 1 failed"),  # found only when the certificate reads it, after the solve
])
def test_a_damaged_input_fails_its_adapter_only_and_the_other_tenant_is_served(
        fleet, damage, reason):
    service, tokens = fleet
    ours = service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-3"]})["id"]
    theirs = service.submit(tokens["globex"], "b1", {"kind": "remove", "ids": ["b1-3"]})["id"]
    damage(service.root)
    assert service.worker(SETTINGS, ERASE).serve(drain=True) == 1
    failed = service.status(tokens["acme"], ours)
    assert failed["state"] == "failed" and reason in failed["error"], failed
    assert str(service.root) not in failed["error"]  # no server paths in a tenant's view
    assert service.status(tokens["globex"], theirs)["state"] == "done"
    assert service.registry.adapter("acme", "a1").version == 1
    assert service.registry.adapter("globex", "b1").version == 2
    assert not (service.root / "tenants/acme/adapters/a1/v0002").exists()
    assert not (service.root / "tenants/acme/datasets/a1-data/v0002.parquet").exists()
    assert [p for p in service.root.rglob(".*") if p.name != ".cg-checkpoint"] == []


CRASHING_SERVE = """
import sys
from eraser_dist.arguments import EraseArguments, ServiceArguments
from eraser_dist.faults import FaultPlan
from eraser_dist.service import EraseService
root, record = sys.argv[1:]
worker = EraseService(root).worker(
    ServiceArguments(max_batch_requests=3, holdout_sample=8, max_worker_deaths=3),
    EraseArguments(hvp="exact", damping=0.1, tol=1e-6, max_iter=30),
    faults=(FaultPlan("serve", "planned", 1, 3, record),))
worker.serve(drain=True)
"""


def test_a_batch_that_kills_the_worker_three_times_is_parked_and_the_rest_is_served(
        fleet, tmp_path):
    """The first batch of each start (acme's, first in turn) kills the worker; after the
    third death it is parked and globex's request still finishes."""
    service, tokens = fleet
    ours = service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-3"]})["id"]
    theirs = service.submit(tokens["globex"], "b1", {"kind": "remove", "ids": ["b1-3"]})["id"]
    for death in range(3):
        child = subprocess.run([sys.executable, "-c", CRASHING_SERVE, str(service.root),
                                str(tmp_path / "deaths")], capture_output=True, text=True,
                               timeout=300)
        assert child.returncode == 1, child.stderr[-2000:]
        assert len(list((tmp_path / "deaths").glob("death-*"))) == death + 1
        assert service.status(tokens["acme"], ours)["state"] == "running"
    settings = ServiceArguments(max_batch_requests=3, holdout_sample=8, max_worker_deaths=3)
    assert service.worker(settings, ERASE).serve(drain=True) == 1
    parked = service.status(tokens["acme"], ours)
    assert parked["state"] == "failed" and "the worker died 3 times" in parked["error"]
    assert service.status(tokens["globex"], theirs)["state"] == "done"
    assert service.registry.adapter("acme", "a1").version == 1
    recoveries = [e for e in service.registry.audit_log("acme") if e["action"] == "recover"]
    assert [bool(e["allowed"]) for e in recoveries] == [True, True, False]


# -- concurrent registration ---------------------------------------------------------------

def race(*calls) -> list:
    """Start the calls at the same moment in threads; each one's result or service error."""
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(position, call):
        barrier.wait()
        try:
            results[position] = call()
        except Conflict as err:
            results[position] = err

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def one_won(results) -> bool:
    return sorted(isinstance(r, Conflict) for r in results) == [False, True]


def test_concurrent_registrations_leave_one_winner_and_files_that_match_the_registry(
        template, fleet, tmp_path):
    """Raced 20 times each: one dataset name with two different files; one adapter name on
    two datasets; two adapter names on one dataset (a row erased through one would stay in
    the other). One add wins, the other gets a Conflict, and the registry's hashes are those
    of the files on disk."""
    service, tokens = fleet
    work, acme = template[0].parent, tokens["acme"]
    write_examples(tmp_path / "other.parquet", word_rows(20, prefix="other-"))
    adapter = work / "a1"

    def add_dataset(name, file):
        return lambda: service.add_dataset(acme, "acme", name, file)

    def add_adapter(name, dataset):
        return lambda: service.add_adapter(acme, "acme", name, adapter, dataset)

    for attempt in range(20):
        name = f"d{attempt}"
        assert one_won(race(add_dataset(name, work / "a1.parquet"),
                            add_dataset(name, tmp_path / "other.parquet")))
        registered = service.registry.dataset("acme", name)
        assert examples_digest(read_examples(registered.path)) == registered.sha256
        service.add_dataset(acme, "acme", f"e{attempt}", work / "a1.parquet")
        if registered.n_rows != N_ROWS:  # the other file won: bind the adapter to a1's rows
            service.add_dataset(acme, "acme", name + "x", work / "a1.parquet")
            name += "x"
        assert one_won(race(add_adapter(f"same{attempt}", name),
                            add_adapter(f"same{attempt}", f"e{attempt}")))
        bound = service.registry.adapter("acme", f"same{attempt}")
        assert adapter_version(bound.path) == bound.weights_sha
        service.add_dataset(acme, "acme", f"f{attempt}", work / "a1.parquet")
        assert one_won(race(add_adapter(f"x{attempt}", f"f{attempt}"),
                            add_adapter(f"y{attempt}", f"f{attempt}")))
        on_f = service.registry.query("SELECT name FROM adapters WHERE tenant = 'acme' AND "
                                      "dataset = ?", (f"f{attempt}",))
        assert len(on_f) == 1
    on_disk = {p.name for p in (service.root / "tenants/acme/adapters").iterdir()}
    assert on_disk == {r["name"] for r in service.registry.query(
        "SELECT DISTINCT name FROM adapters WHERE tenant = 'acme'")}
    assert list((service.root / "tenants/acme").glob(".staging-*")) == []


def _warm_child(seconds: float) -> None:
    import eraser_dist.service  # noqa: F401 (paid here, not inside a race)

    time.sleep(seconds)


def _add_at(start_at: float, root: str, token: str, what: str, name: str, source: str,
            dataset: str | None) -> str:
    """In a child process, with its own SQLite connection: wait for ``start_at``, then add a
    dataset or an adapter; "added" or "conflict"."""
    service = EraseService(root)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        if what == "dataset":
            service.add_dataset(token, "acme", name, source)
        else:
            service.add_adapter(token, "acme", name, source, dataset)
    except Conflict:
        return "conflict"
    return "added"


def test_registrations_raced_by_processes_leave_one_winner(template, fleet, tmp_path):
    """The attack run's process races, 20 times each: two processes, each with its own
    connection to the registry, add one dataset name with two files, and two adapter names
    on one dataset. One wins, the other gets a Conflict, and the registry matches the files."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    service, tokens = fleet
    work, acme, root = template[0].parent, tokens["acme"], str(service.root)
    write_examples(tmp_path / "other.parquet", word_rows(20, prefix="other-"))
    files = (str(work / "a1.parquet"), str(tmp_path / "other.parquet"))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm_child, [2.0, 2.0]))  # both children up and imported

        def race_in_processes(*calls) -> list[str]:
            start_at = time.time() + 0.15  # both tasks reach their child before it
            return sorted(f.result() for f in [pool.submit(_add_at, start_at, root, acme, *c)
                                               for c in calls])

        for attempt in range(20):
            name = f"p{attempt}"
            assert race_in_processes(("dataset", name, files[0], None),
                                     ("dataset", name, files[1], None)) == ["added", "conflict"]
            registered = service.registry.dataset("acme", name)
            assert examples_digest(read_examples(registered.path)) == registered.sha256
            service.add_dataset(acme, "acme", f"q{attempt}", files[0])
            assert race_in_processes(
                ("adapter", f"px{attempt}", str(work / "a1"), f"q{attempt}"),
                ("adapter", f"py{attempt}", str(work / "a1"), f"q{attempt}")) == [
                "added", "conflict"]
            assert len(service.registry.query("SELECT name FROM adapters WHERE tenant = 'acme' "
                                              "AND dataset = ?", (f"q{attempt}",))) == 1
    assert list((service.root / "tenants/acme").glob(".staging-*")) == []


# -- purge and retention -------------------------------------------------------------------

def test_purge_leaves_nothing_that_rebuilds_the_erased_rows_or_the_old_weights(fleet, capsys):
    service, tokens = fleet
    acme, root = tokens["acme"], service.root
    original = service.registry.adapter("acme", "a1")
    removed = service.submit(acme, "a1", {"kind": "remove", "ids": ["a1-3"]})["id"]
    service.submit(acme, "a1", {"kind": "correct_response",
                                "edits": [{"id": "a1-30", "response": "xy"}]})
    settings = ServiceArguments(max_batch_requests=1, holdout_sample=4, index_rank=4,
                                retain_versions=0)
    assert service.worker(settings, ERASE).serve(drain=True) == 2
    adapters, datasets = root / "tenants/acme/adapters/a1", root / "tenants/acme/datasets/a1-data"
    assert {p.name for p in adapters.glob("v*")} == {"v0001", "v0002", "v0003"}
    assert service.certificate(acme, removed)["purged"] == {
        "adapter_version_before": None, "dataset_version_before": None}
    base = ["purge", "--root", str(root), "--tenant", "acme", "--adapter", "a1"]
    assert cli.main(base + ["--keep", "1", "--json"]) == 0
    purged = json.loads(capsys.readouterr().out)
    assert (purged["kept_versions"], purged["purged_adapter_versions"],
            purged["purged_dataset_versions"]) == ([3], [1, 2], [1, 2])
    assert {p.name for p in adapters.iterdir()} == {"v0003"}  # the index of v1 went too
    assert sorted(p.name for p in (adapters / "v0003").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "erase_report.json",
        "eraser_adapter.json"]  # no delta: it rebuilds v2
    assert {p.name for p in datasets.iterdir()} == {"v0003.parquet", "holdout.parquet"}
    # nothing left names the erased row or holds the pre-erasure weights
    for table in root.rglob("*.parquet"):
        assert "a1-3" not in {row.id for row in read_examples(table)}
    lineage = (adapters / "v0003" / "eraser_adapter.json").read_text()
    assert "a1-3" not in lineage and str(root) not in lineage
    # (the fleet's other adapters learnt the same texts: their weights equal a1's v1)
    shas = {adapter_version(p.parent) for p in adapters.rglob("adapter_model.safetensors")}
    assert original.weights_sha not in shas
    certificate = service.certificate(acme, removed)
    assert certificate["purged"]["adapter_version_before"] is not None
    assert certificate["purged"]["dataset_version_before"] is not None
    # again: nothing more to purge; refusals are one line
    assert cli.main(base + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["purged_adapter_versions"] == []
    for argv, message in ((base + ["--keep", "0"], "keep must be at least 1"),
                          (["purge", "--root", str(root), "--tenant", "acme", "--adapter",
                            "nope"], "has no adapter 'nope'")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_serve_takes_tenants_in_turn_and_keeps_one_version_by_default(fleet):
    """acme's three removals on a1 let globex's later request in after one batch; with the
    default --retain-versions 1 only the current versions stay on disk."""
    service, tokens = fleet
    ours = [service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": [f"a1-{i}"]})["id"]
            for i in range(3)]
    theirs = service.submit(tokens["globex"], "b1", {"kind": "remove", "ids": ["b1-3"]})["id"]
    settings = ServiceArguments(max_batch_requests=1, holdout_sample=4)
    assert service.worker(settings, ERASE).serve(drain=True) == 4
    finished = {i: service.status(tokens["acme" if i in ours else "globex"], i)["finished"]
                for i in [*ours, theirs]}
    assert sum(finished[i] < finished[theirs] for i in ours) == 1
    assert {p.name for p in (service.root / "tenants/acme/adapters/a1").glob("v*")} == {"v0004"}
    assert {p.name for p in (service.root / "tenants/globex/adapters/b1").glob("v*")} == {
        "v0002"}
    assert service.certificate(tokens["acme"], ours[0])["purged"]["adapter_version_before"]


# -- a lost WAL ----------------------------------------------------------------------------

def test_a_commit_the_registry_lost_is_redone_and_the_erased_row_stays_erased(fleet, tmp_path):
    """The database file alone holds a batch's commit (checkpointed); and where a registry
    forgot one (here: a copy from before it), the next serve redoes the batch over the
    unregistered files instead of failing it (which put the erased row back)."""
    service, tokens = fleet
    acme = tokens["acme"]
    removed = service.submit(acme, "a1", {"kind": "remove", "ids": ["a1-3"]})["id"]
    shutil.copytree(service.root, tmp_path / "forgot")
    assert service.worker(SETTINGS, ERASE).serve(drain=True) == 1
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(service.root / "eraser.sqlite", alone / "eraser.sqlite")  # no -wal file
    db = sqlite3.connect(alone / "eraser.sqlite")
    assert db.execute("SELECT state FROM requests WHERE id = ?", (removed,)).fetchall() == [
        ("done",)]
    db.close()
    for part in ("tenants/acme/adapters/a1/v0002", "tenants/acme/datasets/a1-data/v0002.parquet"):
        source, target = service.root / part, tmp_path / "forgot" / part
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    forgot = EraseService(tmp_path / "forgot")
    assert forgot.status(acme, removed)["state"] == "pending"
    assert forgot.worker(SETTINGS, ERASE).serve(drain=True) == 1
    assert forgot.status(acme, removed)["state"] == "done"
    redone, served = forgot.registry.adapter("acme", "a1"), service.registry.adapter("acme", "a1")
    assert redone.version == served.version == 2
    assert float((weights(redone.path) - weights(served.path)).norm()
                 / weights(served.path).norm()) <= 1e-9
    current = forgot.registry.dataset("acme", "a1-data")
    assert current.version == 2 and "a1-3" not in {r.id for r in read_examples(current.path)}


# -- warm engines ----------------------------------------------------------------------------

def test_two_adapters_of_one_base_interleaved_load_the_base_once_and_match_cold_erases(
        fleet, monkeypatch):
    """acme's a1 and a2 take turns, one request per batch: four batches, erases and
    certificates alike on one base loaded once (counted at every load_base in the process);
    each published ΔΘ is the cold erase's (a base loaded for it) of the same request on
    the same version."""
    import eraser_dist.llm.models as models

    loads = []
    fingerprint = models.base_fingerprint
    monkeypatch.setattr(models, "base_fingerprint", lambda m: loads.append(1) or fingerprint(m))
    service, tokens = fleet
    requests = {"a1": [{"kind": "remove", "ids": ["a1-3"]},
                       {"kind": "correct_response", "edits": [{"id": "a1-30", "response": "y"}]}],
                "a2": [{"kind": "correct_response", "edits": [{"id": "a2-31", "response": "z"}]},
                       {"kind": "remove", "ids": ["a2-5", "a2-6"]}]}
    for j in range(2):
        for adapter, stream in requests.items():
            service.submit(tokens["acme"], adapter, stream[j])
    worker = service.worker(replace(SETTINGS, max_batch_requests=1), ERASE)
    assert worker.serve(drain=True) == 4
    assert len(loads) == 1 and worker.engines.base_loads == 1
    assert worker.engines.releases == 1 and worker.engines.held() == []  # given back at the end
    order = [b["adapter"] for b in service.registry.query("SELECT adapter FROM batches "
                                                          "ORDER BY id")]
    assert order == ["a1", "a2", "a1", "a2"]  # interleaved: every batch switched adapters
    monkeypatch.setattr(models, "base_fingerprint", fingerprint)
    for adapter, stream in requests.items():
        for j, request in enumerate(stream):
            before = service.registry.adapter("acme", adapter, j + 1)
            data = service.registry.dataset("acme", f"{adapter}-data", j + 1)
            out = service.root.parent / f"cold-{adapter}-{j}"
            api.erase("tiny-llama", before.path, data.path, parse_request(request), out, ERASE,
                      progress=False)
            warm = delta_vector(service.registry.adapter("acme", adapter, j + 2).path)
            cold = delta_vector(out)
            assert float((warm - cold).norm() / cold.norm()) <= 1e-6


def test_an_idle_base_is_released_and_loaded_again_for_the_next_batch(fleet):
    service, tokens = fleet
    for i in (3, 4):
        service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": [f"a1-{i}"]})
    worker = service.worker(replace(SETTINGS, max_batch_requests=1, idle_seconds=1e-9), ERASE)
    assert worker.serve(drain=True) == 2
    assert worker.engines.base_loads == 2 and worker.engines.releases == 2
    assert worker.engines.held() == []


def test_a_budget_of_one_engine_releases_the_base_used_longest_ago(template):
    """Three bases by name (each a real tiny-llama) asked for in turn with room for one: each
    waits for the one before to be released, and every adapter still loads right."""
    from eraser_dist.llm.adapters import adapter_vector
    from eraser_dist.llm.warm import WarmBase
    from eraser_dist.service.engines import EnginePool

    root, _ = template
    adapter = next((root / "tenants/acme/adapters/a1").glob("v*"))
    now = [0.0]
    pool = EnginePool(lambda name: WarmBase("tiny-llama"), max_engines=1, idle_seconds=30.0,
                      clock=lambda: now[0])
    for name in ("base-a", "base-b", "base-a"):
        model, _ = pool.adapter(name, adapter)
        assert torch.equal(model.get_flat(), adapter_vector(model, adapter))
        assert pool.held() == [name]
        now[0] += 10.0
    assert pool.base_loads == 3 and pool.releases == 2
    assert pool.release_idle() == [] and pool.held() == ["base-a"]  # used 10 s ago
    now[0] += 20.0
    assert pool.release_idle() == ["base-a"] and pool.held() == []


def serve_on_two_bases(root: Path, tokens: dict, max_engines: int) -> tuple[EraseService,
                                                                             BatchWorker]:
    """acme's a1 on the fleet's base and globex's b1 moved to a second base name (the same
    tiny-llama weights, loaded by the pool's loader), two single-row batches each, served
    with room for ``max_engines`` bases."""
    from eraser_dist.llm.warm import WarmBase

    service = EraseService(root)
    with service.registry.transaction() as db:
        db.execute("UPDATE adapters SET base = 'tiny-llama-b' WHERE name = 'b1'")
    for adapter, tenant in (("a1", "acme"), ("b1", "globex")):
        for i in (3, 4):
            service.submit(tokens[tenant], adapter, {"kind": "remove", "ids": [f"{adapter}-{i}"]})
    worker = service.worker(replace(SETTINGS, max_batch_requests=1, max_engines=max_engines),
                            ERASE)
    worker.engines.start = lambda name: WarmBase("tiny-llama")
    assert worker.serve(drain=True) == 4
    return service, worker


def test_two_bases_run_side_by_side_and_each_adapter_stays_in_order(template, tmp_path):
    """--max-engines 2: the batches of a1 and b1 (two bases) run at the same time, one
    thread each, while each adapter's own batches still run one after the other on the
    version before. With room for one base (the budget) the second base waits: no batches
    overlap, the bases load in turn, and everything still finishes. Both serves publish
    the same weights."""
    root, tokens = template
    runs = {}
    for engines in (2, 1):
        shutil.copytree(root, tmp_path / f"root-{engines}")
        runs[engines] = serve_on_two_bases(tmp_path / f"root-{engines}", tokens, engines)
    for engines, (service, worker) in runs.items():
        batches = {a: [dict(b) for b in service.registry.query(
            "SELECT * FROM batches WHERE adapter = ? ORDER BY id", (a,))] for a in ("a1", "b1")}
        for chain in batches.values():
            assert [(b["state"], b["adapter_version_before"]) for b in chain] == [
                ("committed", 1), ("committed", 2)]
            assert chain[1]["started"] >= chain[0]["finished"]  # one adapter: in order
        overlaps = [(x["id"], y["id"]) for x in batches["a1"] for y in batches["b1"]
                    if x["started"] < y["finished"] and y["started"] < x["finished"]]
        if engines == 2:
            assert overlaps and worker.engines.base_loads == 2
        else:  # a1, b1, a1, b1 in turn, each batch loading its base
            assert overlaps == [] and worker.engines.base_loads == 4
        assert worker.engines.held() == []
    for adapter, tenant in (("a1", "acme"), ("b1", "globex")):
        side_by_side = weights(runs[2][0].registry.adapter(tenant, adapter).path)
        in_turn = weights(runs[1][0].registry.adapter(tenant, adapter).path)
        assert float((side_by_side - in_turn).norm() / in_turn.norm()) <= 1e-6


# -- what the operator sees --------------------------------------------------------------------

def test_metrics_and_status_match_the_journal_after_a_run(fleet, capsys):
    """Two adapters, a request that fails (its row removed by the one before): GET
    /metrics (operator token; 401 without) counts what the journal holds, its phase
    seconds add up to the batches' recorded wall times, and GET /v1/status gives the last
    batch's phases. The serve's state comes from the registry: the API's thread, read
    mid-serve, sees it serving with the base held, and after the drain `eraser queue
    --summary` (no serve process behind it) gives the same overview as GET /v1/status."""
    from prometheus_client.parser import text_string_to_metric_families

    service, tokens = fleet
    for adapter, tenant in (("a1", "acme"), ("b1", "globex")):
        for request in requests_for(adapter, 3, seed=2):
            service.submit(tokens[tenant], adapter, request)
    for _ in range(2):
        service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-43"]})
    operator = service.new_operator_token()
    worker = service.worker(replace(SETTINGS, max_batch_requests=2), ERASE)
    mid_serve = []
    with HttpServer(service, "127.0.0.1", 0) as server:
        status, waiting = http(server.url, "GET", "/v1/status", operator)
        assert status == 200 and {(w["adapter"], w["pending"]) for w in waiting["waiting"]} \
            == {("a1", 5), ("b1", 3)} and waiting["serve"] is None
        committed = worker.serve(drain=True, should_stop=lambda: bool(
            worker.stats.batches == 1 and not mid_serve
            and mid_serve.append(http(server.url, "GET", "/v1/status", operator)[1])))
        assert http(server.url, "GET", "/metrics", tokens["acme"])[0] == 401
        status, text = http(server.url, "GET", "/metrics", operator)
        assert status == 200
        _, overview = http(server.url, "GET", "/v1/status", operator)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text.decode())
               for s in family.samples}
    journal = {r["state"]: r["n"] for r in service.registry.query(
        "SELECT state, COUNT(*) AS n FROM requests GROUP BY state")}
    batches = service.registry.query("SELECT report FROM batches WHERE state = 'committed' "
                                     "ORDER BY id")
    assert journal == {"done": 7, "failed": 1} and committed == len(batches) >= 4
    assert samples[("eraser_requests_done_total", ())] == journal["done"]
    assert samples[("eraser_requests_failed_total", ())] == journal["failed"]
    assert samples[("eraser_batches_total", ())] == len(batches)
    assert samples[("eraser_base_loads_total", ())] == 1
    assert samples[("eraser_engines_held", ())] == 0  # given back when the serve returned
    assert samples[("eraser_serve_running", ())] == 0
    assert not [k for k in samples if k[0] == "eraser_queue_depth"]  # nothing waits
    phases = {dict(k[1])["phase"]: v for k, v in samples.items()
              if k[0] == "eraser_batch_seconds_total"}
    walls = [json.loads(b["report"])["batch_seconds"] for b in batches]
    assert sum(phases.values()) == pytest.approx(sum(walls), rel=1e-9)
    assert phases["solve"] > 0 and phases["b"] > 0 and phases["certificate"] > 0
    last = json.loads(batches[-1]["report"])["seconds_by_phase"]
    assert overview["last_batch"]["seconds_by_phase"] == last
    serve = {k: overview["serve"][k] for k in ("state", "pid", "batches", "requests_done",
                                               "requests_failed", "base_loads",
                                               "engines_held")}
    assert serve == {"state": "stopped", "pid": os.getpid(), "batches": len(batches),
                     "requests_done": 7, "requests_failed": 1, "base_loads": 1,
                     "engines_held": []}
    assert overview["waiting"] == [] and overview["running_batches"] == []
    [during] = mid_serve
    assert (during["serve"]["state"], during["serve"]["batches"],
            during["serve"]["engines_held"]) == ("serving", 1, ["tiny-llama"])
    code, out, _ = run_cli(capsys, "queue", "--summary", "--root", str(service.root),
                           "--operator-token", operator)
    assert code == 0 and json.loads(out) == overview


def test_the_serve_beats_through_a_long_batch_and_reads_as_serving(fleet, monkeypatch):
    """--heartbeat-seconds 0.05 and a batch whose certificates take 0.5 s (ten beats, and
    nothing else recorded since the batch began): the registry still reads 'serving' then,
    and its last beat is recent. Without the heartbeat it would read 'lost' there."""
    import time

    service, tokens = fleet
    service.submit(tokens["acme"], "a1", {"kind": "remove", "ids": ["a1-3"]})
    worker = service.worker(replace(SETTINGS, heartbeat_seconds=0.05), ERASE)
    seen = []
    certify = worker._certify

    def slow_certify(*args):
        time.sleep(0.5)
        seen.append((service.registry.serve_state(), time.time()))
        return certify(*args)

    monkeypatch.setattr(worker, "_certify", slow_certify)
    assert worker.serve(drain=True) == 1
    [(during, when)] = seen
    assert during["state"] == "serving" and during["batches"] == 0
    assert when - during["updated"] <= 3 * 0.05
    assert service.registry.serve_state()["state"] == "stopped"


def test_ctrl_c_in_serve_says_what_stays_and_the_next_serve_redoes_the_cut_batch(
        fleet, capsys, monkeypatch):
    """Ctrl-C during the second batch's certificates: the command exits 130 and says the
    first batch stays published; the second is left 'running', and the next serve rolls it
    back and redoes it."""
    from eraser_dist.service.worker import BatchWorker

    service, tokens = fleet
    for request in requests_for("a1", 2, seed=4):
        service.submit(tokens["acme"], "a1", request)
    certify, calls = BatchWorker._certify, []

    def certify_then_ctrl_c(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return certify(self, *args)

    monkeypatch.setattr(BatchWorker, "_certify", certify_then_ctrl_c)
    code, _, err = run_cli(capsys, "serve", "--drain", "--quiet", "--root", str(service.root),
                           "--damping", "0.1", "--max-iter", "30", "--max-batch-requests", "1")
    assert code == 130 and err.strip() == (
        "eraser: interrupted; 1 batch(es) committed and published stay; a batch that was "
        "running is rolled back and redone by the next serve")
    states = [b["state"] for b in service.registry.query("SELECT state FROM batches ORDER BY id")]
    assert states == ["committed", "running"]
    assert service.registry.serve_state()["state"] == "stopped"
    monkeypatch.setattr(BatchWorker, "_certify", certify)
    worker = service.worker(replace(SETTINGS, max_batch_requests=1), ERASE)
    assert worker.serve(drain=True) == 1
    states = [b["state"] for b in service.registry.query("SELECT state FROM batches ORDER BY id")]
    assert states == ["committed", "rolled_back", "committed"]


def test_serve_log_json_ends_with_the_drained_summary(fleet, capsys):
    service, tokens = fleet
    for request in requests_for("a1", 2, seed=3):
        service.submit(tokens["acme"], "a1", request)
    code, _, err = run_cli(capsys, "serve", "--drain", "--log-json", "--root",
                           str(service.root), "--damping", "0.1", "--max-iter", "30",
                           "--max-batch-requests", "1")
    lines = [json.loads(line) for line in err.splitlines()]  # every line is a JSON object
    committed = [line for line in lines if line.get("event") == "batch_committed"]
    assert code == 0 and len(committed) == 2
    assert set(committed[0]["seconds_by_phase"]) == {
        "index", "load", "b", "solve", "step_control", "certificate", "publish"}
    summary = lines[-1]
    assert summary["event"] == "drained" and summary["batches"] == 2
    assert (summary["requests_done"], summary["requests_failed"], summary["base_loads"]) \
        == (2, 0, 1)
    assert summary["seconds_by_phase"]["solve"] == pytest.approx(
        sum(c["seconds_by_phase"]["solve"] for c in committed), abs=1e-5)
