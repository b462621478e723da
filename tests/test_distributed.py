"""The distributed engine on a local Ray cluster: 2 groups × 2 ranks, tiny-llama, gloo.

One module-scoped cluster and adapter; each erase starts its own aggregator and groups.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import ray
import torch
from conftest import delta_vector, http, word_rows

from actors import driver
from actors.aggregator import Aggregator
from actors.replica import ServingReplica, broadcast_delta
from eraser_dist import api
from eraser_dist.arguments import (
    DistributedArguments,
    EraseArguments,
    IndexArguments,
    LoraArguments,
    TrainArguments,
)
from eraser_dist.core.objective import loss_values
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.core.solve import conjugate_gradient
from eraser_dist.data import Example, read_examples, write_examples
from eraser_dist.distributed import checkpoint as checkpoint_module
from eraser_dist.distributed.checkpoint import CheckpointFile
from eraser_dist.distributed.sharding import RankPlace, owner, rank_rows
from eraser_dist.errors import EraserError
from eraser_dist.faults import FaultPlan
from eraser_dist.llm.adapters import adapter_version, load_adapter
from eraser_dist.llm.curvature_index import load_index
from eraser_dist.llm.models import load_base

REQUESTS = {
    "remove": {"kind": "remove", "ids": ["r1", "r5", "r6"]},
    "modify_query": {"kind": "modify_query", "edits": [{"id": "r2", "query": "rev gnu"},
                                                       {"id": "r9", "query": "rev koi"}]},
    "correct_response": {"kind": "correct_response",
                         "edits": [{"id": "r3", "response": "xyz"}]},
}
ARGS = EraseArguments(hvp="ggn", max_iter=8, tol=1e-8, batch_size=4)
TWO_BY_TWO = DistributedArguments(workers=2, group_size=2, collective_timeout_s=60)


@pytest.fixture(scope="module")
def cluster():
    # address="local": a private cluster, never one that a stale session or `ray start` left
    ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_examples(root / "train.parquet", word_rows(16))
    api.train("tiny-llama", root / "train.parquet", root / "adapter", LoraArguments(rank=2),
              TrainArguments(epochs=2, max_length=64), progress=False)
    for kind, request in REQUESTS.items():
        (root / f"{kind}.json").write_text(json.dumps(request))
    return root


def run_erase(root, kind, out, args=ARGS, distributed=TWO_BY_TWO):
    api.erase("tiny-llama", root / "adapter", root / "train.parquet", root / f"{kind}.json",
              root / out, args, progress=False, distributed=distributed)
    return delta_vector(root / out)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_rank_rows_cover_each_row_once_and_pad_to_equal_length():
    rows = word_rows(23)
    weights = torch.arange(1.0, 24.0, dtype=torch.float64)
    seen: dict[str, float] = {}
    for g in range(3):
        parts = [rank_rows(rows, weights, RankPlace(g, 3, r, 2)) for r in range(2)]
        assert len({len(p[0]) for p in parts}) == 1  # same batch count on every rank
        for part_rows, part_weights in parts:
            for row, w in zip(part_rows, part_weights, strict=True):
                assert owner(row.id, 3) == g
                if w > 0:
                    assert row.id not in seen
                    seen[row.id] = float(w)
    assert seen == {r.id: float(w) for r, w in zip(rows, weights, strict=True)}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_distributed_delta_equals_single_process(cluster, fitted, kind):
    single = run_erase(fitted, kind, f"single-{kind}", distributed=None)
    distributed = run_erase(fitted, kind, f"dist-{kind}")
    assert rel(distributed, single) <= 1e-3
    report = json.loads((fitted / f"dist-{kind}" / "erase_report.json").read_text())
    assert report["distributed"]["workers"] == 2 and report["distributed"]["group_size"] == 2
    assert report["distributed"]["group_restarts"] == [0, 0]
    assert 0 < report["rhs_seconds"] + report["solve_seconds"] <= report["seconds"]
    # Only adapter-sized vectors move: v out once, one total back per group.
    assert report["distributed"]["bytes_per_iteration"] == 3 * 4 * single.numel()


def test_fd_backend_matches_single_process(cluster, fitted):
    args = EraseArguments(hvp="fd", damping=20.0, max_iter=6, tol=1e-8, batch_size=4)
    single = run_erase(fitted, "remove", "single-fd", args, distributed=None)
    distributed = run_erase(fitted, "remove", "dist-fd", args)
    assert rel(distributed, single) <= 1e-3


def test_all_rows_gradient_matches_single_process(cluster, fitted):
    args = replace(ARGS, gradient="all_rows")
    single = run_erase(fitted, "correct_response", "single-all-rows", args, distributed=None)
    distributed = run_erase(fitted, "correct_response", "dist-all-rows", args)
    assert rel(distributed, single) <= 1e-3
    reports = [json.loads((fitted / out / "erase_report.json").read_text())
               for out in ("single-all-rows", "dist-all-rows")]
    # every row's gradient counted once over the 2 × 2 ranks: the same ∇f(Θ̂) term
    assert reports[1]["stationarity"]["rhs_norm"] == pytest.approx(
        reports[0]["stationarity"]["rhs_norm"], rel=1e-5)
    assert reports[0]["stationarity"]["rhs_norm"] > 0
    # and the step differs from the shortcut's
    shortcut = run_erase(fitted, "correct_response", "single-changed", distributed=None)
    assert rel(single, shortcut) > 1e-2


def test_stages_run_distributed_and_match_single_process(cluster, fitted):
    """--stages 2 with --workers: the same path of two steps, each from where the last
    ended, with Θ moved on every rank between them."""
    args = replace(ARGS, stages=2)
    single = run_erase(fitted, "correct_response", "single-stages", args, distributed=None)
    distributed = run_erase(fitted, "correct_response", "dist-stages", args,
                            DistributedArguments(workers=2, collective_timeout_s=60))
    assert rel(distributed, single) <= 1e-3
    one_stage = run_erase(fitted, "correct_response", "single-one-stage", distributed=None)
    assert rel(single, one_stage) > 1e-3  # the second stage was taken from elsewhere
    reports = [json.loads((fitted / out / "erase_report.json").read_text())
               for out in ("single-stages", "dist-stages")]
    for report in reports:
        assert report["stages"] == 2 and len(report["stage_steps"]) == 2
    for mine, theirs in zip(reports[1]["stage_steps"], reports[0]["stage_steps"], strict=True):
        assert mine["rhs_norm"] == pytest.approx(theirs["rhs_norm"], rel=1e-4)


def test_ranks_hold_only_their_partition_and_whole_lora_and_answer_losses(cluster, fitted,
                                                                         tmp_path):
    rows = read_examples(fitted / "train.parquet")
    edited = apply_requests([parse_request(REQUESTS["remove"])], rows)
    aggregator = Aggregator.options(num_cpus=0).remote(
        spec_for(fitted), driver.layout_for(DistributedArguments(workers=1, group_size=2)),
        str(tmp_path / "ckpt"), 0)
    # by position, not id: an edited row's old and new versions share one; 5 rows on 2
    # ranks, so one rank's share is padded
    asked = rows[:4] + [replace(rows[2], response="xyz")]
    try:
        found = ray.get(aggregator.erase.remote(edited, 0.01,
                                                EraseArguments(hvp="ggn", max_iter=1)))
        losses = ray.get(aggregator.losses.remote(asked, 2))
    finally:
        ray.kill(aggregator)
    local, _ = load_adapter(load_base("tiny-llama"), fitted / "adapter")
    expected = loss_values(local, asked, 8)
    assert losses.shape == expected.shape and losses[2] != losses[4]
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    ranks = found["partition"][0]
    assert len(ranks) == 2
    lora_numel = sum(math.prod(s) for s in found["shapes"])
    for report in ranks:
        base = [p for p in report if not p["trainable"]]
        lora = [p for p in report if p["trainable"]]
        assert base and all(p["partitioned"] for p in base)
        assert all(p["local_numel"] == -(-p["numel"] // 2) for p in base)
        assert sum(p["local_numel"] for p in base) < 0.51 * sum(p["numel"] for p in base)
        assert not any(p["partitioned"] for p in lora)
        assert sum(p["local_numel"] for p in lora) == lora_numel


def spec_for(root):
    from eraser_dist.distributed.shard_worker import WorkerSpec

    return WorkerSpec("tiny-llama", str(root / "adapter"))


def with_faults(monkeypatch, *plans):
    original = driver.distributed_erase

    def faulty(*args, **kwargs):
        return original(*args, **kwargs, faults=plans)

    monkeypatch.setattr(driver, "distributed_erase", faulty)


def test_killed_worker_is_restarted_and_gives_the_fault_free_delta(
        cluster, fitted, tmp_path, monkeypatch):
    clean = run_erase(fitted, "remove", "clean-worker")
    with_faults(monkeypatch, FaultPlan("worker 1.1", "hvp", 3, 1, str(tmp_path)))
    recovered = run_erase(fitted, "remove", "killed-worker")
    report = json.loads((fitted / "killed-worker" / "erase_report.json").read_text())
    assert report["distributed"]["group_restarts"] == [0, 1]
    assert len(list(tmp_path.glob("death-*"))) == 1
    assert rel(recovered, clean) <= 1e-10


def test_killed_aggregator_resumes_from_its_checkpoint(cluster, fitted, tmp_path, monkeypatch):
    # the least-residual step: its checkpoint also carries the recorded steps; one group of
    # two ranks: the resume is the aggregator's, whatever the groups are
    args = replace(ARGS, step="least_residual")
    layout = DistributedArguments(workers=1, group_size=2, collective_timeout_s=60)
    clean = run_erase(fitted, "modify_query", "clean-aggregator", args, layout)
    with_faults(monkeypatch, FaultPlan("aggregator", "iteration", 3, 1, str(tmp_path)))
    recovered = run_erase(fitted, "modify_query", "killed-aggregator", args, layout)
    report = json.loads((fitted / "killed-aggregator" / "erase_report.json").read_text())
    assert report["distributed"]["resumed_at_iteration"] == [3]
    assert report["cg_iterations"] == ARGS.max_iter
    assert rel(recovered, clean) <= 1e-10
    assert not (fitted / ".killed-aggregator.cg-checkpoint").exists()


def test_checkpoint_writes_each_recorded_step_once_and_resumes_the_same_solve(
        tmp_path, monkeypatch):
    """A recorded solve (least-residual step, batches) checkpointed every iteration: each
    save writes the small state and only the new step, never the earlier ones again, and a
    solve resumed from the files takes the same steps as an uninterrupted one."""
    q = torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = q @ q.T + torch.eye(12, dtype=torch.float64), q[0]
    whole = conjugate_gradient(lambda v: a @ v, b, tol=0.0, max_iter=8, record=True)
    written: list[list[str]] = []
    save = checkpoint_module.atomic_save
    monkeypatch.setattr(checkpoint_module, "atomic_save",
                        lambda obj, path: (written[-1].append(path.name), save(obj, path)))
    checkpoint = CheckpointFile(str(tmp_path), "key")

    def saved(state):
        written.append([])
        checkpoint.save(state)

    conjugate_gradient(lambda v: a @ v, b, tol=0.0, max_iter=4, record=True, checkpoint=saved)
    assert written == [[f"step-{i:05d}.pt", "state.pt"] for i in range(4)]
    # a crash after a step's file and before its state: that step file is not read back
    torch.save((torch.ones(12), torch.ones(12)), checkpoint.step_file(4))
    state = CheckpointFile(str(tmp_path), "key").load()
    assert state.iterations == 4 and len(state.directions) == len(state.products) == 4
    resumed = conjugate_gradient(lambda v: a @ v, b, tol=0.0, max_iter=8, record=True,
                                 start=state)
    assert torch.equal(resumed.directions, whole.directions)
    assert torch.equal(resumed.products, whole.products) and torch.equal(resumed.x, whole.x)


def test_permanently_failing_worker_ends_with_a_clear_error_and_publishes_nothing(
        cluster, fitted, tmp_path, monkeypatch):
    with_faults(monkeypatch, FaultPlan("worker 0.0", "hvp", 2, 100, str(tmp_path)))
    distributed = DistributedArguments(workers=2, group_size=2, max_group_restarts=1,
                                       collective_timeout_s=60)
    with pytest.raises(EraserError, match="worker group 0.*failed 2 times.*nothing was publ"):
        run_erase(fitted, "remove", "never", distributed=distributed)
    assert not (fitted / "never").exists()
    assert not [p for p in fitted.iterdir() if p.name.startswith(".never.tmp")]


def test_exact_hvp_is_refused_on_a_partitioned_base(fitted):
    with pytest.raises(EraserError, match="exact.*ZeRO-3.*fd or ggn"):
        run_erase(fitted, "remove", "exact", args=EraseArguments(hvp="exact"))
    assert not (fitted / "exact").exists()


def test_replica_after_broadcast_answers_as_the_published_adapter(cluster, fitted):
    out = fitted / "served"
    run_erase(fitted, "correct_response", "served")
    replicas = [ServingReplica.remote("tiny-llama", str(fitted / "adapter")) for _ in range(2)]
    rows = [{"id": "r3", "query": "rev elk", "response": "xyz"},
            {"id": "r4", "query": "rev bee", "response": "eeb"}]
    before = ray.get(replicas[0].losses.remote(rows))
    assert broadcast_delta(replicas, str(out)) == [adapter_version(out)] * 2
    after = ray.get([r.losses.remote(rows) for r in replicas])
    local, _ = load_adapter(load_base("tiny-llama"), out)
    published = loss_values(local, [Example(**r) for r in rows], 8).tolist()
    for losses in after:
        assert losses == pytest.approx(published, rel=1e-6, abs=1e-7)
    assert after[0] != pytest.approx(before, rel=1e-4)
    assert ray.get(replicas[0].generate.remote("rev elk", 8)) == local.generate("rev elk", 8)
    # A replica refuses a delta that was computed from another version.
    with pytest.raises(EraserError, match="delta is for adapter version"):
        broadcast_delta(replicas[:1], str(out))


def test_cli_runs_the_distributed_engine_in_a_fresh_process(cluster, fitted):
    """``eraser erase --workers 1 --group-size 2`` from a shell: Ray is started (or found) by
    the command itself, and the result equals the one-process erase's."""
    import subprocess
    import sys

    in_process = run_erase(fitted, "remove", "cli-reference", distributed=None)
    argv = [sys.executable, "-m", "eraser_dist.cli", "erase", "--base", "tiny-llama",
            "--adapter", str(fitted / "adapter"), "--data", str(fitted / "train.parquet"),
            "--request", str(fitted / "remove.json"), "--out", str(fitted / "cli-out"),
            "--hvp", "ggn", "--max-iter", str(ARGS.max_iter), "--tol", str(ARGS.tol),
            "--batch-size", str(ARGS.batch_size), "--workers", "1", "--group-size", "2",
            "--quiet", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert (report["distributed"]["workers"], report["distributed"]["group_size"]) == (1, 2)
    assert rel(delta_vector(fitted / "cli-out"), in_process) <= 1e-3


def test_service_batch_runs_on_the_distributed_engine_and_reaches_replicas(cluster, fitted,
                                                                           tmp_path):
    """One serve batch of two requests on 1 group × 2 ranks: the published version equals
    the one-process erase of the same batch, and a replica fleet ends at that version."""
    from actors.replica import ReplicaFleet
    from eraser_dist.arguments import ServiceArguments
    from eraser_dist.core.requests import parse_request
    from eraser_dist.service import EraseService

    service = EraseService(tmp_path / "root")
    token = service.add_tenant("acme")
    service.add_dataset(token, "acme", "words", fitted / "train.parquet")
    service.add_adapter(token, "acme", "a", fitted / "adapter", "words")
    batch = [REQUESTS["remove"], REQUESTS["correct_response"]]
    ids = [service.submit(token, "a", r)["id"] for r in batch]
    fleet = ReplicaFleet.start(service.registry, per_adapter=1)
    # retain_versions=0: the delta compared below would otherwise be purged after broadcast
    worker = service.worker(ServiceArguments(holdout_sample=4, retain_versions=0), ARGS,
                            DistributedArguments(workers=1, group_size=2,
                                                 collective_timeout_s=60), fleet)
    assert worker.serve(drain=True) == 1
    assert [service.status(token, i)["state"] for i in ids] == ["done", "done"]
    published = service.registry.adapter("acme", "a")
    api.erase("tiny-llama", fitted / "adapter", fitted / "train.parquet",
              [parse_request(r) for r in batch], tmp_path / "single", ARGS, progress=False)
    assert rel(delta_vector(published.path), delta_vector(tmp_path / "single")) <= 1e-3
    report = json.loads((published.path / "erase_report.json").read_text())
    assert (report["distributed"]["workers"], report["distributed"]["group_size"],
            len(report["requests"])) == (1, 2, 2)
    replica = fleet.replicas[("acme", "a")][0]
    assert ray.get(replica.current_version.remote()) == published.weights_sha


def service_of_two_adapters(fitted, tmp_path, other_base: str):
    """A service at ``tmp_path/root`` whose tenant acme has the fixture's adapter ``a`` (on
    tiny-llama) and ``o``, fitted here on ``other_base`` over other rows; (service, token)."""
    from eraser_dist.service import EraseService

    write_examples(tmp_path / "other.parquet", word_rows(16, prefix="o"))
    api.train(other_base, tmp_path / "other.parquet", tmp_path / "other",
              LoraArguments(rank=2), TrainArguments(epochs=2, max_length=64), progress=False)
    service = EraseService(tmp_path / "root")
    token = service.add_tenant("acme")
    service.add_dataset(token, "acme", "words", fitted / "train.parquet")
    service.add_adapter(token, "acme", "a", fitted / "adapter", "words")
    service.add_dataset(token, "acme", "others", tmp_path / "other.parquet")
    service.add_adapter(token, "acme", "o", tmp_path / "other", "others")
    return service, token


def test_warm_worker_groups_serve_interleaved_adapters_on_one_start(cluster, fitted,
                                                                    tmp_path):
    """Two adapters of one base take turns on 1 group × 2 ranks kept up across batches: the
    groups start once, each published ΔΘ is the one-process erase of the same request on
    the same version, each certificate's losses (computed on the ranks, each version's
    weights switched in) are the one-process losses, and the groups stop with the serve."""
    from eraser_dist.arguments import ServiceArguments
    from eraser_dist.llm.adapters import load_adapter
    from eraser_dist.llm.models import load_base

    service, token = service_of_two_adapters(fitted, tmp_path, "tiny-llama")
    requests = [("a", REQUESTS["remove"]),
                ("o", {"kind": "correct_response", "edits": [{"id": "o4", "response": "q"}]}),
                ("a", REQUESTS["correct_response"])]
    ids = [service.submit(token, adapter, r)["id"] for adapter, r in requests]
    worker = service.worker(ServiceArguments(max_batch_requests=1, holdout_sample=4,
                                             retain_versions=0), ARGS,
                            DistributedArguments(workers=1, group_size=2,
                                                 collective_timeout_s=60))
    started = kept_started(worker)
    assert worker.serve(drain=True) == 3
    assert worker.base_loads == 1 and len(started) == 1
    assert worker.engines.held() == [] and started[0].held is None  # stopped with the serve
    data_names = {"a": "words", "o": "others"}
    versions = {"a": 1, "o": 1}
    for request_id, (adapter, request) in zip(ids, requests, strict=True):
        before = service.registry.adapter("acme", adapter, versions[adapter])
        after = service.registry.adapter("acme", adapter, versions[adapter] + 1)
        data = service.registry.dataset("acme", data_names[adapter], versions[adapter])
        out = tmp_path / f"single-{request_id}"
        api.erase("tiny-llama", before.path, data.path, parse_request(request), out, ARGS,
                  progress=False)
        assert rel(delta_vector(after.path), delta_vector(out)) <= 1e-3
        erased = service.certificate(token, request_id)["verification"]["erased_rows_loss"]
        named = set(parse_request(request).ids)
        old_rows = [r for r in read_examples(data.path) if r.id in named]
        for version, side in ((before, "per_row_before"), (after, "per_row_after")):
            model, _ = load_adapter(load_base("tiny-llama"), version.path)
            assert sorted(erased[side]) == pytest.approx(
                sorted(loss_values(model, old_rows, 4).tolist()), abs=1e-5)
        versions[adapter] += 1


def kept_started(worker) -> list:
    """The engines ``worker``'s pool starts, in order (kept after the pool releases them)."""
    started, start = [], worker.engines.start
    worker.engines.start = lambda base: started.append(start(base)) or started[-1]
    return started


def test_two_bases_run_side_by_side_on_worker_groups_of_their_own(cluster, fitted,
                                                                   tmp_path):
    """--workers 1 --group-size 2 --max-engines 2: an adapter on tiny-llama and one on a
    second base (a Hugging Face directory, loaded by the ranks) are served at the same
    time, each on its own aggregator and groups, started once each; each published ΔΘ is
    the one-process erase of its request, and both groups stop with the serve. A budget
    whose ranks the cluster cannot hold is refused in one line before any batch."""
    from conftest import make_other_base

    from eraser_dist.arguments import ServiceArguments

    other_base = tmp_path / "other-base"
    make_other_base(other_base)
    service, token = service_of_two_adapters(fitted, tmp_path, str(other_base))
    requests = {"a": REQUESTS["remove"],
                "o": {"kind": "correct_response", "edits": [{"id": "o4", "response": "q"}]}}
    ids = {adapter: service.submit(token, adapter, r)["id"] for adapter, r in requests.items()}
    two_ranks = DistributedArguments(workers=1, group_size=2, collective_timeout_s=60)
    settings = ServiceArguments(holdout_sample=4, retain_versions=0, max_engines=2)
    too_many = service.worker(replace(settings, max_engines=4), ARGS, two_ranks)
    with pytest.raises(EraserError, match="the Ray cluster has 6 CPU"):
        too_many.serve(drain=True)  # 4 engines × 2 ranks: 8 CPUs
    assert service.status(token, ids["a"])["state"] == "pending"
    worker = service.worker(settings, ARGS, two_ranks)
    started = kept_started(worker)
    assert worker.serve(drain=True) == 2
    batches = [dict(b) for b in service.registry.query("SELECT * FROM batches ORDER BY id")]
    assert len(batches) == 2 and all(b["state"] == "committed" for b in batches)
    first, second = batches
    assert first["started"] < second["finished"] and second["started"] < first["finished"]
    assert worker.base_loads == 2 and [g.base_loads for g in started] == [1, 1]
    assert all(g.held is None for g in started)  # both stopped with the serve
    bases = {"a": "tiny-llama", "o": str(other_base)}
    data_names = {"a": "words", "o": "others"}
    for adapter, request in requests.items():
        before = service.registry.adapter("acme", adapter, 1)
        assert before.base == bases[adapter]
        data = service.registry.dataset("acme", data_names[adapter], 1)
        out = tmp_path / f"single-{adapter}"
        api.erase(bases[adapter], before.path, data.path, parse_request(request), out, ARGS,
                  progress=False)
        after = service.registry.adapter("acme", adapter, 2)
        assert rel(delta_vector(after.path), delta_vector(out)) <= 1e-3


def test_the_api_on_ray_serve_answers_as_the_one_process_api(cluster, fitted, tmp_path,
                                                             capsys):
    """Two Ray Serve replicas of the API over one data root (`serve --workers --http`):
    a submit through them is journaled; good and bad requests get the answers of the
    one-process server, byte for byte (the framing and authentication guard runs in the
    replicas); after a batch, the certificate and GET /v1/status equal the facade's, the
    serve's counters included (recorded in the registry, not held by the replicas)."""
    import socket

    from ray import serve

    from actors.api import APP_NAME, start_api, stop_api
    from eraser_dist import cli
    from eraser_dist.arguments import ServiceArguments
    from eraser_dist.service import EraseService
    from eraser_dist.service.http import HttpServer

    service = EraseService(tmp_path / "root")
    token = service.add_tenant("acme")
    other = service.add_tenant("globex")
    service.add_dataset(token, "acme", "words", fitted / "train.parquet")
    service.add_adapter(token, "acme", "a", fitted / "adapter", "words")
    operator = service.new_operator_token()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = start_api(str(service.root), "127.0.0.1", port, replicas=2)
    try:
        replicas = serve.status().applications[APP_NAME].deployments["EraseApi"]
        assert replicas.replica_states == {"RUNNING": 2}
        status, submitted = http(url, "POST", "/v1/requests", token,
                                 {"adapter": "a", "request": REQUESTS["remove"]})
        assert status == 202 and service.status(token, submitted["id"])["state"] == "pending"
        request_path = f"/v1/requests/{submitted['id']}"
        cases = [("GET", request_path, token, {}),
                 ("GET", request_path, other, {}),  # another tenant's: 404
                 ("GET", request_path, "ert_nonsense", {}),  # 401
                 ("GET", "/v1/adapters", token, {}),
                 ("POST", "/v1/requests", token, {"body": {"adapter": "a", "request": {
                     "kind": "remove", "ids": []}}}),  # 400
                 ("POST", "/v1/requests", token, {"raw": b"x" * ((1 << 20) + 1)}),  # 413
                 ("GET", "/v1/status", token, {})]  # a tenant token: 401
        with HttpServer(service, "127.0.0.1", 0) as local:
            for method, path, who, extra in cases:
                assert http(url, method, path, who, **extra) == \
                    http(local.url, method, path, who, **extra), (method, path)
        worker = service.worker(ServiceArguments(holdout_sample=4, retain_versions=0), ARGS)
        assert worker.serve(drain=True) == 1
        status, certificate = http(url, "GET", request_path + "/certificate", token)
        assert status == 200 and certificate == service.certificate(token, submitted["id"])
        status, overview = http(url, "GET", "/v1/status", operator)
        assert status == 200 and overview == service.overview(operator)
        assert (overview["serve"]["state"], overview["serve"]["requests_done"]) == ("stopped", 1)
    finally:
        stop_api()
    assert APP_NAME not in serve.status().applications
    # the CLI refuses what Serve cannot do, in one line
    code = cli.main(["serve", "--root", str(service.root), "--drain", "--workers", "1",
                     "--group-size", "1", "--http", "127.0.0.1:0", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "needs a fixed port (not 0)" in err and "Traceback" not in err


def test_distributed_index_equals_single_process_and_gives_the_same_step(cluster, fitted):
    """The groups build the index by map-reduced products (Lanczos on the aggregator): the
    same Fisher scaling and Ritz values as one process, and an erase from either index,
    one in each engine, takes the same step."""
    args = EraseArguments(hvp="ggn", batch_size=4)
    two_groups = DistributedArguments(workers=2, collective_timeout_s=60)
    for name, distributed in (("single", None), ("dist", two_groups)):
        api.build_index("tiny-llama", fitted / "adapter", fitted / "train.parquet",
                        fitted / f"index-{name}", args, IndexArguments(rank=6), progress=False,
                        distributed=distributed)
    single, dist = (load_index(fitted / f"index-{name}") for name in ("single", "dist"))
    assert rel(dist.curvature.scaling, single.curvature.scaling) <= 1e-5
    assert rel(dist.curvature.values, single.curvature.values) <= 1e-5
    assert single.meta.adapter_version == dist.meta.adapter_version
    step = EraseArguments(hvp="ggn", max_iter=8, tol=1e-8, batch_size=4)
    steps = {}
    for name, distributed in (("single", None), ("dist", two_groups)):
        report = api.erase("tiny-llama", fitted / "adapter", fitted / "train.parquet",
                           fitted / "remove.json", fitted / f"from-index-{name}", step,
                           progress=False, distributed=distributed,
                           index=fitted / f"index-{name}")
        assert report.index.first_products == 1
        steps[name] = delta_vector(fitted / f"from-index-{name}")
    assert rel(steps["dist"], steps["single"]) <= 1e-3
