"""The batch worker behind ``eraser serve``: recover, then batch, solve, publish, certify.

One batch is a short sequence of steps whose only commit point is one SQLite transaction::

    planned            batch row 'running', its requests 'running'        (committed)
    adapter_published  new adapter version folder written (atomic rename)
    dataset_written    new training-set version written (atomic rename)
    certified          one certificate per request written (atomic rename)
    committed          versions registered, requests 'done', batch 'committed' (one commit)

Files written before the commit belong to no registered version. If the process dies
anywhere before it, :meth:`BatchWorker.recover` (run first by every ``serve``) deletes them,
puts the requests back to 'pending' and marks the batch 'rolled_back'; the batch is then
redone from the same versions and gives the same result. After the commit nothing is left
to do but tell the serving replicas (``on_published``). So a kill loses no request and a
batch is applied once or not at all.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import api
from ..arguments import (
    DistributedArguments,
    EraseArguments,
    IndexArguments,
    ServiceArguments,
    check_engine,
)
from ..core.objective import loss_values
from ..core.requests import EditedObjective, apply_requests
from ..data import examples_digest, read_examples, write_examples
from ..distributed.shard_worker import WorkerSpec
from ..errors import EraserError
from ..faults import FaultPlan, check_all
from ..llm.adapters import adapter_version, read_meta
from ..llm.curvature_index import IndexCache, check_index
from ..llm.warm import WarmBase
from ..report import EraseReport
from .batching import RoundRobin, plan_batch
from .certificate import (
    CERTIFICATE_VERSION,
    ROW_HASH,
    row_hashes,
    verification,
    write_certificate,
)
from .engines import EnginePool
from .journal import Journal, JournalEntry
from .metrics import ServeStats
from .registry import AdapterVersion, DatasetVersion, Registry, dumps

if TYPE_CHECKING:
    from actors.driver import WarmGroups

log = logging.getLogger(__name__)
PHASES = ("planned", "adapter_published", "dataset_written", "certified", "committed")
OnPublished = Callable[[AdapterVersion], None]


class BatchWorker:
    """Runs the journal's pending requests as batches (one process per data root)."""

    def __init__(
        self,
        registry: Registry,
        settings: ServiceArguments | None = None,
        erase_args: EraseArguments | None = None,
        distributed: DistributedArguments | None = None,
        on_published: OnPublished | None = None,
        faults: tuple[FaultPlan, ...] = (),
        progress: bool = False,
    ):
        self.registry = registry
        self.journal = Journal(registry)
        self.settings = settings or ServiceArguments()
        self.erase_args = erase_args or EraseArguments()
        check_engine(self.erase_args, distributed)
        self.distributed = distributed
        self.on_published = on_published
        self.faults = faults
        self.progress = progress
        self.batches_here = 0
        self.index_builds = 0  # curvature indexes built by this worker
        self.turns = RoundRobin()
        # the warm engines, one per base: held in this process, or worker groups on Ray
        self.engines: EnginePool[WarmBase] | EnginePool[WarmGroups]
        if distributed is None:
            self.engines = EnginePool(WarmBase, self.settings.max_engines,
                                      self.settings.idle_seconds)
        else:
            from actors.driver import WarmGroups

            self.engines = EnginePool(lambda base: WarmGroups(distributed),
                                      self.settings.max_engines, self.settings.idle_seconds)
        self.indexes = IndexCache()  # the adapters' curvature indexes, read once each
        self.stats = ServeStats()
        self.started = time.time()
        self._recorded: tuple[str, dict[str, Any]] | None = None
        self._bases: dict[tuple[str, str], str] = {}  # (tenant, adapter) → its base
        self._lock = threading.Lock()  # the counters, updated by the batches' threads

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the data root's worker lock (released by the OS if the process dies)."""
        lock = open(self.registry.root / "serve.lock", "a+")  # noqa: SIM115 (held for the loop)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EraserError(f"another `eraser serve` is working on "
                                  f"{self.registry.root}") from None
            yield
        finally:
            lock.close()

    def serve(self, drain: bool = True, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Recover, then run batches until the queue is empty (``drain``) or ``should_stop``;
        returns the number of batches committed. The engines are given back on return, and
        the serve's state and counters are recorded in the registry as they change.

        Batches on different bases run side by side, up to ``max_engines`` at a time (a
        thread each; Ctrl-C then lets the running ones end), each on its base's engine: in
        this process, or its own worker groups with ``--workers``. Batches on one base take
        turns on its engine, and one adapter's batches run strictly one after another.
        """
        slots = self.settings.max_engines
        with self.exclusive():
            if self.distributed is not None:
                from actors.driver import join_cluster

                # room for every engine's ranks, or a one-line refusal before any batch
                join_cluster(self.distributed, slots)
            self.started = time.time()
            self.recover()
            self.record_state("serving")
            try:
                with self._beating():
                    if slots == 1:  # in this thread: Ctrl-C stops the batch itself
                        return self._schedule(_InThisThread(), 1, drain, should_stop)
                    with ThreadPoolExecutor(slots, thread_name_prefix="eraser-batch") as threads:
                        return self._schedule(threads, slots, drain, should_stop)
            finally:
                # give the memory, and the cluster's CPUs and GPUs, back
                self.engines.release_all("the serve stopped")
                self.indexes.clear()
                self.record_state("stopped")

    def _schedule(self, threads: Executor, slots: int, drain: bool,
                  should_stop: Callable[[], bool]) -> int:
        """Start batches while a slot is free and an adapter whose adapter and base are
        both idle has work; returns the batches committed."""
        committed = 0
        running: dict[Future, tuple[str, str, str]] = {}  # → tenant, adapter, base
        while True:
            stopping = should_stop()
            while not stopping and len(running) < slots:
                target = self._next_target(running.values())
                if target is None:
                    break
                running[threads.submit(self.run_target, *target[:2])] = target
            if running:
                try:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:  # batch threads: Python cannot stop them
                    log.warning("stopping once the %d running batch(es) end; kill the process "
                                "to stop at once (the next serve redoes them)", len(running))
                    raise
                for future in done:
                    del running[future]
                    outcome = future.result()
                    committed += outcome.get("state") == "committed"
            self.release_idle()
            self.record_state("serving")
            if not running:
                waiting = self.journal.pending()
                if stopping or (drain and not waiting):
                    return committed
                if not waiting:
                    time.sleep(self.settings.poll_seconds)

    def _next_target(self, running) -> tuple[str, str, str] | None:
        """(tenant, adapter, base) whose batch is next (tenants, then their adapters, in
        turn), leaving out the adapters and bases of the ``running`` batches; None when
        nothing else can start."""
        busy = {(tenant, name) for tenant, name, _ in running}
        busy_bases = {base for _, _, base in running}
        ready = [e for e in self.journal.pending() if (e.tenant, e.adapter) not in busy
                 and self._base_of(e.tenant, e.adapter) not in busy_bases]
        target = self.turns.next(ready)
        return None if target is None else (*target, self._base_of(*target))

    def _base_of(self, tenant: str, name: str) -> str | None:
        """The base an adapter is fitted on (every version keeps its first's); None for a
        name not registered (its requests fail when their batch runs)."""
        if (tenant, name) not in self._bases:
            rows = self.registry.query("SELECT base FROM adapters WHERE tenant = ? AND name = ? "
                                       "LIMIT 1", (tenant, name))
            if not rows:
                return None
            self._bases[tenant, name] = rows[0]["base"]
        return self._bases[tenant, name]

    def release_idle(self) -> None:
        """Release the engines and indexes unused for ``settings.idle_seconds``."""
        self.indexes.release_idle(self.settings.idle_seconds)
        self.engines.release_idle()

    @contextmanager
    def _beating(self) -> Iterator[None]:
        """While the block runs, a thread tells the registry every ``heartbeat_seconds``
        that this serve lives, also through a batch of many minutes. A failed beat is logged
        and the next one tried (the registry may be busy); the batches go on."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_seconds):
                try:
                    self.registry.beat()
                except Exception as err:  # noqa: BLE001 (a missed beat must not stop the serve)
                    log.warning("heartbeat not recorded: %s", err)

        heart = threading.Thread(target=beat, daemon=True, name="eraser-heartbeat")
        heart.start()
        try:
            yield
        finally:
            stop.set()
            heart.join()

    def record_state(self, state: str) -> None:
        """Record the serve's state and counters in the registry when they changed (an idle
        serve polling the queue writes nothing but its heartbeat)."""
        with self._lock:
            counters = {**self.stats.counters(self.base_loads, self.engines.held()),
                        "heartbeat_seconds": self.settings.heartbeat_seconds}
        if (state, counters) != self._recorded:
            self.registry.record_serve(state, self.started, counters)
            self._recorded = (state, counters)

    @property
    def base_loads(self) -> int:
        """Bases this worker loaded: into this process, or as worker-group starts (each
        loads its shards on every rank)."""
        return self.engines.base_loads

    def _engine_for(self, base: str) -> dict[str, Any]:
        """The keyword that puts an :mod:`eraser_dist.api` call on ``base``'s warm engine:
        ``models`` (the pool of warm bases) in one process, ``groups`` with ``--workers``."""
        if self.distributed is None:
            return {"models": self.engines}
        return {"groups": self.engines.engine(base)}

    # -- recovery ------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Roll back every batch a dead worker left 'running'; returns their ids.

        Its requests go back to 'pending' and are redone, unless the worker has now died
        ``settings.max_worker_deaths`` times in batches holding one of them: then they are
        parked ('failed', with that reason), so that a request that kills the worker (an
        out-of-memory solve, say) cannot stop the service in a crash loop.
        """
        rolled = []
        for b in self.registry.query("SELECT * FROM batches WHERE state = 'running'"):
            self._remove_outputs(b)
            with self.registry.transaction() as db:
                db.execute("UPDATE batches SET state = 'rolled_back', finished = ? "
                           "WHERE id = ?", (time.time(), b["id"]))
                deaths = db.execute(
                    "SELECT COUNT(DISTINCT batches.id) FROM batches, "
                    "json_each(batches.request_ids) AS r WHERE batches.state = 'rolled_back' "
                    "AND r.value IN (SELECT value FROM json_each(?))",
                    (b["request_ids"],)).fetchone()[0]
                parked = deaths >= self.settings.max_worker_deaths
                if parked:
                    self.stats.requests_failed += db.execute(
                        "UPDATE requests SET state = 'failed', error = ?, finished = ? "
                        "WHERE batch_id = ? AND state = 'running'",
                        (f"parked: the worker died {deaths} times while running a batch "
                         "that held this request; not retried", time.time(),
                         b["id"])).rowcount
                else:
                    db.execute("UPDATE requests SET state = 'pending', batch_id = NULL "
                               "WHERE batch_id = ? AND state = 'running'", (b["id"],))
            what = f"parked after {deaths} deaths" if parked else "its requests will be redone"
            self.registry.audit(b["tenant"], "recover", not parked,
                                f"batch {b['id']} on {b['adapter']!r} rolled back, {what}")
            log.warning("batch %d on %s/%s was left running by a dead worker: rolled back, "
                        "%s", b["id"], b["tenant"], b["adapter"], what)
            rolled.append(b["id"])
        return rolled

    def _remove_outputs(self, b) -> None:
        """Delete what a batch wrote before its commit (none of it is registered)."""
        adapter = self.registry.adapter_dir(b["tenant"], b["adapter"],
                              b["adapter_version_after"])
        data = self.registry.dataset_file(b["tenant"], b["dataset"],
                            b["dataset_version_after"])
        shutil.rmtree(adapter, ignore_errors=True)
        for leftover in adapter.parent.glob(f".{adapter.name}.*"):
            if not leftover.name.endswith(".cg-checkpoint"):  # kept: the redo resumes CG
                shutil.rmtree(leftover, ignore_errors=True)
        data.unlink(missing_ok=True)
        for leftover in data.parent.glob(f".{data.name}.*"):
            leftover.unlink(missing_ok=True)
        folder = self.registry.certificate_dir(b["tenant"])
        for request_id in json.loads(b["request_ids"]):
            for path in folder.glob(f"{request_id}.*"):
                path.unlink(missing_ok=True)
            for path in folder.glob(f".{request_id}.*"):
                path.unlink(missing_ok=True)

    # -- one batch -----------------------------------------------------------------------

    def run_target(self, tenant: str, name: str) -> dict[str, Any]:
        """Run one batch of the adapter ``name``'s pending requests.

        A batch that fails for any reason short of the process dying (its inputs are
        unreadable or do not match their registered hashes, the solve or a file write
        failed) fails its own requests with that reason, and the worker goes on with the
        other adapters: one tenant's damaged file never stops another tenant's work.
        """
        waiting = self.journal.pending(tenant, name)
        try:
            adapter, data, examples = self._verified_inputs(tenant, name)
        except Exception as err:  # noqa: BLE001 (any damage stops this adapter only)
            reason = f"adapter {name}: {self._describe(err)}"
            self._fail([e.id for e in waiting], [reason] * len(waiting))
            self.registry.audit(tenant, "batch", False, reason)
            log.error("%s/%s: %d request(s) failed: %s", tenant, name, len(waiting), reason)
            return {"state": "failed", "error": reason}
        plan = plan_batch(waiting, examples, self.settings.max_batch_requests,
                          self.settings.max_batch_rows)
        if plan.rejected:
            self._fail([e.id for e, _ in plan.rejected], [r for _, r in plan.rejected])
        if not plan.batch:
            return {"state": "rejected", "rejected": len(plan.rejected)}
        batch_id = self._start(adapter, data, plan.batch)
        with self._lock:
            self.batches_here += 1
        log.info("batch %d: %d request(s) on %s/%s v%d (%d rejected)", batch_id,
                 len(plan.batch), tenant, name, adapter.version, len(plan.rejected))
        self._fault("planned")
        row = self.registry.query("SELECT * FROM batches WHERE id = ?", (batch_id,))[0]
        out = self.registry.adapter_dir(tenant, name, adapter.version + 1)
        if out.exists():
            # no row names this version: a crash, or a lost WAL that forgot its commit, left
            # it; the batch is redone over it (same inputs, same result), never skipped
            log.warning("%s/%s v%d exists but is not registered: redoing its batch", tenant,
                        name, adapter.version + 1)
            self._remove_outputs(row)
        try:
            # the base's engine stays up for the batch's erase and certificates
            with self.engines.hold(adapter.base):
                outcome = self._run_batch(batch_id, plan.batch, adapter, data, examples, out)
        except Exception as err:  # noqa: BLE001 (nothing is committed: fail this batch only)
            self._remove_outputs(row)
            reason = f"batch {batch_id} failed: {self._describe(err)}"
            self._fail([e.id for e in plan.batch], [reason] * len(plan.batch), batch_id)
            log.error("%s", reason)
            return {"state": "failed", "batch": batch_id, "error": reason}
        # fold the commit into the database file at once: a WAL lost from here on (a crash,
        # then a careless clean-up) can no longer undo it, nor the purge that follows
        if not self.registry.checkpoint():
            log.warning("a reader kept the checkpoint after batch %d from finishing", batch_id)
        self._fault("committed")
        report, new_adapter = outcome["report"], outcome.pop("new_adapter")
        log.info("batch %d committed: %s/%s v%d, CG %d iterations (%s), erase %.1fs, "
                 "certificates %.1fs, in all %.1fs", batch_id, tenant, name,
                 new_adapter.version, report.cg_iterations, report.hvp_used, report.seconds,
                 outcome["certify_seconds"], outcome["batch_seconds"], extra={"fields": {
                     "event": "batch_committed", "batch": batch_id, "tenant": tenant,
                     "adapter": name, "version": new_adapter.version,
                     "requests": len(plan.batch), "seconds_by_phase": outcome["phases"]}})
        if report.index is not None and report.index.rebuild_advised:
            # derived data: the next batch builds a fresh one on its own version
            shutil.rmtree(self.registry.index_dir(tenant, name), ignore_errors=True)
        if self.on_published is not None:
            try:
                self.on_published(new_adapter)
            except Exception as err:  # replicas catch up from the registry; keep serving
                self.registry.audit(tenant, "broadcast", False, f"{name} v"
                                    f"{new_adapter.version}: {err!r}")
        if self.settings.retain_versions:
            self._retain(tenant, name)
        return outcome

    def _retain(self, tenant: str, name: str) -> None:
        """Purge the adapter's versions beyond ``retain_versions`` (after the broadcast: the
        replicas no longer need the delta). A failure is audited and retried after the next
        batch; the batch itself is committed."""
        try:
            purged = self.registry.purge(tenant, name, self.settings.retain_versions)
        except Exception as err:  # noqa: BLE001 (the batch is committed whatever happens here)
            self.registry.audit(tenant, "purge", False, f"{name}: {self._describe(err)}")
            log.error("purge of %s/%s failed: %s", tenant, name, err)
            return
        if purged["purged_adapter_versions"]:
            self.registry.audit(tenant, "purge", True, dumps(purged))

    def _run_batch(self, batch_id: int, batch: list[JournalEntry], adapter: AdapterVersion,
                   data: DatasetVersion, examples: list, out: Path) -> dict[str, Any]:
        """Solve, publish (to ``out``, the next version's folder), certify and commit one
        planned batch (its phases, module doc)."""
        started = time.perf_counter()
        tenant, name = adapter.tenant, adapter.name
        index = self._index_for(adapter, data)
        erase_start = time.perf_counter()
        report = api.erase(adapter.base, adapter.path, data.path, [e.request for e in batch],
                           out, self.erase_args, progress=self.progress,
                           distributed=self.distributed, index=index, indexes=self.indexes,
                           **self._engine_for(adapter.base))
        self._fault("adapter_published")
        edited = apply_requests([e.request for e in batch], examples)
        new_data = DatasetVersion(tenant, data.name, data.version + 1,
                                  self.registry.dataset_file(tenant, data.name,
                                                             data.version + 1),
                                  data.holdout, examples_digest(edited.rows_after),
                                  len(edited.rows_after))
        write_examples(new_data.path, edited.rows_after)
        self._fault("dataset_written")
        new_adapter = AdapterVersion(tenant, name, adapter.version + 1, out, adapter.base,
                                     data.name, new_data.version, adapter_version(out))
        certify_start = time.perf_counter()
        certificates = self._certify(batch_id, batch, edited, adapter, new_adapter, data,
                                     new_data, report)
        self._fault("certified")
        timing = {"certify_seconds": time.perf_counter() - certify_start,
                  "batch_seconds": time.perf_counter() - started}
        control = 0.0 if report.step_control is None else report.step_control.seconds
        phases = {"index": erase_start - started, "b": report.rhs_seconds,
                  "solve": report.solve_seconds, "step_control": control,
                  "load": report.seconds - report.rhs_seconds - report.solve_seconds - control,
                  "certificate": timing["certify_seconds"]}
        phases["publish"] = timing["batch_seconds"] - sum(phases.values())  # to the commit
        self._commit(batch_id, batch, new_adapter, new_data, certificates,
                     {**report.to_json(), **timing, "seconds_by_phase": phases})
        # committed: nothing may fail after it
        with self._lock:
            self.stats.committed(len(batch), phases)
        return {"state": "committed", "batch": batch_id, "requests": len(batch),
                "adapter_version": new_adapter.version, "report": report,
                "new_adapter": new_adapter, "phases": phases, **timing}

    def _verified_inputs(self, tenant: str, name: str
                         ) -> tuple[AdapterVersion, DatasetVersion, list]:
        """The adapter's current version, its training set and the set's rows, checked
        against the hashes registered with them: a file damaged or swapped since it was
        registered is refused, never erased from (the certificate names those hashes)."""
        adapter = self.registry.adapter(tenant, name)
        data = self.registry.dataset(tenant, adapter.dataset)
        on_disk = adapter_version(adapter.path)
        if on_disk != adapter.weights_sha:
            raise EraserError(f"the weights of v{adapter.version} have hash {on_disk}, not the "
                              f"registered {adapter.weights_sha}: restore that version")
        examples = read_examples(data.path)
        digest = examples_digest(examples)
        if digest != data.sha256:
            raise EraserError(f"training set {data.name} v{data.version} has sha256 "
                              f"{digest[:16]}, not the registered {data.sha256[:16]}: "
                              "restore that version")
        return adapter, data, examples

    def _describe(self, err: Exception) -> str:
        """A failure as a tenant may read it: the error's text without the data root's path
        (an unexpected error also names its type)."""
        text = str(err) if isinstance(err, EraserError) else f"{type(err).__name__}: {err}"
        return text.replace(str(self.registry.root), "<data root>")

    def _index_for(self, adapter: AdapterVersion, data: DatasetVersion) -> Path | None:
        """The adapter's curvature index (docs/DESIGN.md §7.5), built on this version when
        there is none or the one kept does not fit it; None without ``index_rank``.

        An index is derived data outside the batch's commit: it is published atomically,
        names the version it was built on, and is checked against the adapter's chain by
        every erase, so a crash or a rolled-back batch leaves nothing to undo.
        """
        if self.settings.index_rank == 0:
            return None
        path = self.registry.index_dir(adapter.tenant, adapter.name)
        if path.exists():
            try:
                check_index(self.indexes.load(path), path, read_meta(adapter.path),
                            adapter.path)
                return path
            except EraserError as err:
                log.info("curvature index of %s/%s does not fit v%d (%s): rebuilding",
                         adapter.tenant, adapter.name, adapter.version, err)
        started = time.perf_counter()
        meta = api.build_index(adapter.base, adapter.path, data.path, path, self.erase_args,
                               IndexArguments(self.settings.index_rank,
                                              self.settings.index_rebuild_growth),
                               overwrite=True, progress=self.progress,
                               distributed=self.distributed,
                               **self._engine_for(adapter.base))
        with self._lock:
            self.index_builds += 1
        log.info("curvature index of %s/%s v%d: %d pairs, %d HVPs, %.1fs", adapter.tenant,
                 adapter.name, adapter.version, meta.rank, meta.products,
                 time.perf_counter() - started)
        return path

    def _fault(self, phase: str) -> None:
        check_all(self.faults, "serve", phase, self.batches_here)

    def _start(self, adapter: AdapterVersion, data: DatasetVersion,
               batch: list[JournalEntry]) -> int:
        with self.registry.transaction() as db:
            cursor = db.execute(
                "INSERT INTO batches (tenant, adapter, state, request_ids, "
                "adapter_version_before, adapter_version_after, dataset, "
                "dataset_version_before, dataset_version_after, started) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (adapter.tenant, adapter.name, dumps([e.id for e in batch]), adapter.version,
                 adapter.version + 1, data.name, data.version, data.version + 1, time.time()))
            batch_id = int(cursor.lastrowid)
            db.executemany("UPDATE requests SET state = 'running', batch_id = ? WHERE id = ?",
                           [(batch_id, e.id) for e in batch])
        return batch_id

    def _fail(self, ids: list[str], reasons: list[str], batch_id: int | None = None) -> None:
        now = time.time()
        with self.registry.transaction() as db:
            db.executemany("UPDATE requests SET state = 'failed', error = ?, finished = ? "
                           "WHERE id = ?", [(r[:2000], now, i) for i, r in zip(ids, reasons,
                                                                                strict=True)])
            if batch_id is not None:
                db.execute("UPDATE batches SET state = 'failed', finished = ? WHERE id = ?",
                           (now, batch_id))
        with self._lock:
            self.stats.requests_failed += len(ids)

    def _commit(self, batch_id: int, batch: list[JournalEntry], adapter: AdapterVersion,
                data: DatasetVersion, certificates: list[Path], report: dict[str, Any]) -> None:
        now = time.time()
        with self.registry.transaction() as db:
            self.registry.insert_adapter(db, adapter, batch_id)
            self.registry.insert_dataset(db, data, batch_id)
            db.executemany("UPDATE requests SET state = 'done', finished = ?, certificate = ? "
                           "WHERE id = ?", [(now, self.registry.relative(c), e.id) for e, c in
                                            zip(batch, certificates, strict=True)])
            db.execute("UPDATE batches SET state = 'committed', finished = ?, report = ? "
                       "WHERE id = ?", (now, dumps(report), batch_id))

    # -- certificates --------------------------------------------------------------------

    def _certify(self, batch_id: int, batch: list[JournalEntry], edited: EditedObjective,
                 before: AdapterVersion, after: AdapterVersion, data: DatasetVersion,
                 new_data: DatasetVersion, report: EraseReport) -> list[Path]:
        """Losses of every request's rows and a held-out sample under both versions (on the
        erase's own warm engine: each version's weights switched in), then one certificate
        each."""
        parts = edited.request_parts()
        holdout = self._holdout_sample(data)
        rows = [r for part, _ in parts for r in part] + holdout
        losses_before = self._losses(before, rows)
        losses_after = self._losses(after, rows)
        n_held = len(holdout)
        held_before = losses_before[len(rows) - n_held:]
        held_after = losses_after[len(rows) - n_held:]
        key = self.registry.certificate_key(before.tenant)
        remaining = {row_hashes(r, key)["row_hmac"] for r in edited.rows_after}
        paths, offset = [], 0
        for position, (entry, (part_rows, changes)) in enumerate(zip(batch, parts,
                                                                     strict=True)):
            span = slice(offset, offset + len(part_rows))
            offset += len(part_rows)
            old = changes < 0
            b, a = losses_before[span], losses_after[span]
            own = report.requests[position]
            certificate = {
                "certificate_version": CERTIFICATE_VERSION,
                "request": {"id": entry.id, "tenant": entry.tenant, "adapter": entry.adapter,
                            "kind": entry.request.kind, "n_rows": len(entry.request.ids),
                            "completed": time.time()},
                "row_hash": ROW_HASH,
                "rows": [row_hashes(r, key) for r, o in zip(part_rows, old.tolist(),
                                                            strict=True) if o],
                "erased_rows_absent_from_new_dataset": not any(
                    row_hashes(r, key)["row_hmac"] in remaining
                    for r, o in zip(part_rows, old.tolist(), strict=True) if o),
                "adapter": {"name": before.name, "base": before.base,
                            "version_before": before.version, "version_after": after.version,
                            "weights_sha_before": before.weights_sha,
                            "weights_sha_after": after.weights_sha},
                "dataset": {"name": data.name, "version_before": data.version,
                            "version_after": new_data.version, "sha256_before": data.sha256,
                            "sha256_after": new_data.sha256, "n_rows_before": data.n_rows,
                            "n_rows_after": new_data.n_rows},
                "batch": {"id": batch_id, "n_requests": len(batch), "position": position},
                "solver": {
                    "hvp_used": report.hvp_used, "cg_iterations": report.cg_iterations,
                    "relative_residual": report.relative_residual,
                    "converged": report.cg_converged,
                    "negative_curvature": report.negative_curvature,
                    "truncated": report.truncated,
                    "damping": report.damping, "batch_delta_norm": report.delta_norm,
                    "own_delta_norm": own.delta_norm,
                    "own_relative_residual": own.relative_residual,
                    # a batch is one solve: the own ΔΘ_k is its projection onto that
                    # solve's Krylov space, exact only as far as the residual says
                    "own_delta_method": "least-residual in the batch's Krylov space"
                    if len(batch) > 1 else "own solve",
                    "seconds": report.seconds,
                    # how far along ΔΘ the erase went (None: the step as solved); a path's
                    # stages stop at their share of the iterations, so its "converged" is false
                    "step_control": None if report.step_control is None
                    else asdict(report.step_control),
                    # where CG started: zero, or a curvature index's step (and its residual)
                    "start": "zero" if report.index is None else {
                        "curvature_index_of_version": report.index.adapter_version,
                        "versions_behind": report.index.versions_behind,
                        "rank": report.index.rank,
                        "first_relative_residual": report.index.first_residual,
                        "fresh_relative_residual": report.index.fresh_residual},
                },
                "verification": verification(b[old], a[old], b[~old], a[~old], held_before,
                                             held_after),
            }
            paths.append(write_certificate(self.registry.certificate_dir(entry.tenant),
                                           certificate))
        return paths

    def _losses(self, version: AdapterVersion, rows: list) -> torch.Tensor:
        """L_i of an adapter version on each row [n], on the warm engine."""
        if self.distributed is None:
            model, _ = self.engines.adapter(version.base, version.path)
            return loss_values(model, rows, self.settings.eval_batch_size)
        spec = WorkerSpec(version.base, str(Path(version.path).resolve()),
                          self.distributed.base_dtype)
        return self.engines.engine(version.base).losses(spec, rows,
                                                        self.settings.eval_batch_size)

    def _holdout_sample(self, data: DatasetVersion) -> list:
        if data.holdout is None:
            return []
        rows = read_examples(data.holdout)
        generator = torch.Generator().manual_seed(0)
        picked = torch.randperm(len(rows), generator=generator)[: self.settings.holdout_sample]
        return [rows[i] for i in sorted(picked.tolist())]


class _InThisThread(Executor):
    """Runs each call at once in the calling thread: the serve's one slot, so that its
    batch behaves as a plain call (an exception, Ctrl-C included, leaves at once)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future
