"""The registry: tenants, training-set versions, adapter versions and the audit log.

Metadata lives in one SQLite file under the data root (WAL, synchronous=FULL: a committed
transaction survives a crash); training sets are Parquet files and adapters peft directories
beside it, one folder per tenant::

    ROOT/eraser.sqlite
    ROOT/tenants/T/datasets/D/v0001.parquet   (+ holdout.parquet)
    ROOT/tenants/T/adapters/A/v0001/          (peft directory + eraser_adapter.json)
    ROOT/tenants/T/certificates/REQUEST.{json,png}

A version exists once its row is committed; files written for a version that was never
committed are leftovers of a crash, removed by the worker's recovery. A version older than
the newest ones kept is purged (:meth:`Registry.purge`): its files go, its row stays with its
hashes and the time it was purged. Names are checked against a strict pattern before they
touch a path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import examples_digest, read_examples, write_examples
from ..errors import EraserError
from ..llm.adapters import DELTA_FILE, adapter_version, check_fitted_on, read_meta
from ..llm.curvature_index import read_index_meta
from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOKEN_PREFIX = "ert_"
OPERATOR_TOKEN_PREFIX = "ero_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
    holdout TEXT, sha256 TEXT NOT NULL, n_rows INTEGER NOT NULL, batch_id INTEGER,
    created REAL NOT NULL, PRIMARY KEY (tenant, name, version));
CREATE TABLE IF NOT EXISTS adapters (
    tenant TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
    base TEXT NOT NULL, dataset TEXT NOT NULL, dataset_version INTEGER NOT NULL,
    weights_sha TEXT NOT NULL, batch_id INTEGER, created REAL NOT NULL,
    PRIMARY KEY (tenant, name, version));
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL,
    adapter TEXT NOT NULL, idempotency_key TEXT, body TEXT NOT NULL, body_sha256 TEXT NOT NULL,
    state TEXT NOT NULL, error TEXT, batch_id INTEGER, submitted REAL NOT NULL,
    finished REAL, certificate TEXT, UNIQUE (tenant, idempotency_key));
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, adapter TEXT NOT NULL,
    state TEXT NOT NULL, request_ids TEXT NOT NULL,
    adapter_version_before INTEGER NOT NULL, adapter_version_after INTEGER NOT NULL,
    dataset TEXT NOT NULL, dataset_version_before INTEGER NOT NULL,
    dataset_version_after INTEGER NOT NULL, started REAL NOT NULL, finished REAL,
    report TEXT);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, tenant TEXT, action TEXT NOT NULL,
    allowed INTEGER NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operator (
    id INTEGER PRIMARY KEY CHECK (id = 1), token_sha256 TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS certificate_keys (
    tenant TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS purged (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (tenant, kind, name, version));
CREATE TABLE IF NOT EXISTS serve_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, pid INTEGER NOT NULL,
    host TEXT NOT NULL, started REAL NOT NULL, updated REAL NOT NULL, stats TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS one_adapter_per_dataset ON adapters (tenant, dataset)
    WHERE version = 1;
"""


# a serve whose record is older than this many heartbeats reads as lost
LOST_AFTER_BEATS = 3


def check_name(kind: str, name: Any) -> str:
    """A tenant, dataset or adapter name: 1–64 of [A-Za-z0-9_.-], starting alphanumeric."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise BadRequest(f"invalid {kind} name {str(name)[:80]!r}: use 1–64 letters, digits, "
                         "'_', '.' or '-', starting with a letter or digit")
    return name


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DatasetVersion:
    tenant: str
    name: str
    version: int
    path: Path
    holdout: Path | None
    sha256: str
    n_rows: int


@dataclass(frozen=True)
class AdapterVersion:
    tenant: str
    name: str
    version: int
    path: Path
    base: str
    dataset: str
    dataset_version: int
    weights_sha: str


class Registry:
    """Tenants, versions and the audit log of one data root (safe across processes)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "eraser.sqlite"
        db = sqlite3.connect(self.db_path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
            db.executescript(SCHEMA)
        finally:
            db.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue, readers go on)."""
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def checkpoint(self) -> bool:
        """Copy every committed transaction from the WAL into the database file
        (``wal_checkpoint(FULL)``: waits for readers); False when a reader kept it from
        finishing (the rest is copied at the next one)."""
        db = sqlite3.connect(self.db_path, timeout=60)
        try:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        finally:
            db.close()
        return busy == 0

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.db_path, timeout=60)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def _version_row(self, table: str, kind: str, tenant: str, name: str,
                     version: int | None) -> sqlite3.Row:
        """The newest (or the given) version's row of a tenant's dataset or adapter."""
        rows = self.query(
            f"SELECT * FROM {table} WHERE tenant = ? AND name = ? "
            + ("AND version = ? " if version is not None else "")
            + "ORDER BY version DESC LIMIT 1",
            (tenant, name) + ((version,) if version is not None else ()))
        if not rows:
            raise NotFound(f"tenant {tenant!r} has no {kind} {str(name)[:80]!r}")
        return rows[0]

    def tenant_dir(self, tenant: str) -> Path:
        return self.root / "tenants" / check_name("tenant", tenant)

    def adapter_dir(self, tenant: str, adapter: str, version: int) -> Path:
        return self.tenant_dir(tenant) / "adapters" / adapter / f"v{version:04d}"

    def index_dir(self, tenant: str, adapter: str) -> Path:
        """The adapter's curvature index: one per adapter, replaced atomically when rebuilt;
        it names the version it was built on and fits that version's descendants."""
        return self.tenant_dir(tenant) / "adapters" / adapter / "curvature-index"

    def dataset_file(self, tenant: str, dataset: str, version: int) -> Path:
        return self.tenant_dir(tenant) / "datasets" / dataset / f"v{version:04d}.parquet"

    def certificate_dir(self, tenant: str) -> Path:
        return self.tenant_dir(tenant) / "certificates"

    def audit(self, tenant: str | None, action: str, allowed: bool, detail: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO audit (at, tenant, action, allowed, detail) VALUES "
                       "(?, ?, ?, ?, ?)", (time.time(), tenant, action, int(allowed),
                                           detail[:2000]))

    def record_serve(self, state: str, started: float, stats: dict[str, Any]) -> None:
        """The serve process's own state ('serving', 'stopped') and counters, so that any
        process reads them: ``eraser queue --summary``, ``/metrics`` and ``/v1/status`` of
        an API served elsewhere (Ray Serve replicas). One row: one serve per data root.
        ``stats["heartbeat_seconds"]`` says how often the serve beats (:meth:`beat`)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO serve_state (id, state, pid, host, started, "
                       "updated, stats) VALUES (1, ?, ?, ?, ?, ?, ?)",
                       (state, os.getpid(), socket.gethostname(), started, time.time(),
                        dumps(stats)))

    def beat(self) -> None:
        """Mark this process's 'serving' record as heard from now (its ``updated`` time);
        nothing if another process's record replaced it."""
        with self.transaction() as db:
            db.execute("UPDATE serve_state SET updated = ? WHERE id = 1 AND state = 'serving' "
                       "AND pid = ? AND host = ?",
                       (time.time(), os.getpid(), socket.gethostname()))

    def serve_state(self) -> dict[str, Any] | None:
        """What :meth:`record_serve` last wrote (None if no serve ever ran on this root):
        state, pid, host, started, updated (when it was last heard from) and the counters.
        A 'serving' record not heard from for ``LOST_AFTER_BEATS`` heartbeats reads as
        'lost': its serve was killed outright (or hangs), and the next serve rolls back its
        running batches. (A record from before heartbeats has none and never reads as lost.)
        """
        rows = self.query("SELECT * FROM serve_state")
        if not rows:
            return None
        row = dict(rows[0])
        stats = json.loads(row["stats"])
        state, beats = row["state"], stats.get("heartbeat_seconds")
        if (state == "serving" and beats is not None
                and time.time() - row["updated"] > LOST_AFTER_BEATS * beats):
            state = "lost"
        return {"state": state, **{k: row[k] for k in ("pid", "host", "started", "updated")},
                **stats}

    def audit_log(self, tenant: str | None = None) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM audit ORDER BY id") if tenant is None else self.query(
            "SELECT * FROM audit WHERE tenant = ? ORDER BY id", (tenant,))
        return [dict(r) for r in rows]

    # -- tenants ---------------------------------------------------------------------------

    def add_tenant(self, name: str) -> str:
        """Register a tenant; returns its bearer token (shown once, stored only hashed)."""
        check_name("tenant", name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO tenants VALUES (?, ?, ?)",
                           (name, token_hash(token), time.time()))
        except sqlite3.IntegrityError:
            raise Conflict(f"tenant {name!r} already exists") from None
        self.tenant_dir(name).mkdir(parents=True, exist_ok=True)
        return token

    def authenticate(self, token: str | None, claimed_tenant: str | None = None) -> str:
        """The tenant a token belongs to; 401 without a valid token, 403 (logged) when the
        token belongs to another tenant than ``claimed_tenant``."""
        if not token:
            self.audit(None, "authenticate", False, "no token")
            raise Unauthorized("a tenant token is required (--token, ERASER_TOKEN or an "
                               "'Authorization: Bearer' header)")
        # A lookup by hash leaks nothing usable by timing: the token has 256 random bits.
        rows = self.query("SELECT name FROM tenants WHERE token_sha256 = ?",
                          (token_hash(token),))
        tenant = rows[0]["name"] if rows else None
        if tenant is None:
            self.audit(None, "authenticate", False, "unknown token")
            raise Unauthorized("invalid tenant token")
        if claimed_tenant is not None and claimed_tenant != tenant:
            self.audit(tenant, "impersonate", False, f"token of {tenant!r} used for tenant "
                       f"{str(claimed_tenant)[:80]!r}")
            raise Forbidden(f"this token does not belong to tenant {str(claimed_tenant)[:80]!r}")
        return tenant

    def new_operator_token(self) -> str:
        """Make the operator's token, replacing any earlier one; returns it (stored only
        hashed). Whoever can write the data root is its operator, so making one needs
        nothing more; using the operator views needs the token."""
        token = OPERATOR_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO operator VALUES (1, ?, ?)",
                       (token_hash(token), time.time()))
        self.audit(None, "operator token", True, "made (any earlier one no longer works)")
        return token

    def authenticate_operator(self, token: str | None, action: str) -> None:
        """401 (audited) unless ``token`` is the operator's token."""
        rows = self.query("SELECT token_sha256 FROM operator")
        if not token or not rows or not hmac.compare_digest(rows[0]["token_sha256"],
                                                           token_hash(token)):
            self.audit(None, action, False, "no or invalid operator token")
            raise Unauthorized(f"{action} needs the operator token (--operator-token or "
                               "ERASER_OPERATOR_TOKEN; make one with `eraser operator token`)")

    def certificate_key(self, tenant: str) -> bytes:
        """The tenant's secret key of its certificates' row hashes (32 random bytes, made at
        first use). It is kept in clear: the worker needs it to hash, and the tenant to
        verify."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO certificate_keys VALUES (?, ?)",
                       (tenant, secrets.token_hex(32)))
            return bytes.fromhex(db.execute("SELECT key FROM certificate_keys WHERE tenant = ?",
                                            (tenant,)).fetchone()["key"])

    def tenants(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM tenants ORDER BY name")]

    # -- datasets --------------------------------------------------------------------------

    def add_dataset(self, tenant: str, name: str, data: str | Path,
                    holdout: str | Path | None = None) -> DatasetVersion:
        """Copy a Parquet training set (and optionally a held-out set of the same schema,
        used only to verify erasures) into the registry as version 1."""
        check_name("dataset", name)
        examples = read_examples(data)
        held = read_examples(holdout) if holdout is not None else None
        folder = self.dataset_file(tenant, name, 1).parent
        version = DatasetVersion(tenant, name, 1, folder / "v0001.parquet",
                                 None if held is None else folder / "holdout.parquet",
                                 examples_digest(examples), len(examples))

        def write(stage: Path) -> None:
            write_examples(stage / version.path.name, examples)
            if held is not None:
                write_examples(stage / "holdout.parquet", held)

        def insert(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM datasets WHERE tenant = ? AND name = ?",
                          (tenant, name)).fetchone():
                raise Conflict(f"dataset {name!r} already exists for tenant {tenant!r}")
            self.insert_dataset(db, version, None)

        self._register(tenant, folder, write, insert)
        return version

    def relative(self, path: Path) -> str:
        """Paths are stored relative to the root, so a root can be moved or copied whole."""
        return str(Path(path).relative_to(self.root))

    def insert_dataset(self, db: sqlite3.Connection, v: DatasetVersion,
                       batch_id: int | None) -> None:
        db.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (v.tenant, v.name, v.version, self.relative(v.path),
                    None if v.holdout is None else self.relative(v.holdout), v.sha256,
                    v.n_rows, batch_id, time.time()))

    def dataset(self, tenant: str, name: str, version: int | None = None) -> DatasetVersion:
        """The current (or a given) version of a tenant's dataset; 404 for any other's."""
        r = self._version_row("datasets", "dataset", tenant, name, version)
        return DatasetVersion(r["tenant"], r["name"], r["version"], self.root / r["path"],
                              self.root / r["holdout"] if r["holdout"] else None, r["sha256"],
                              r["n_rows"])

    # -- adapters --------------------------------------------------------------------------

    def add_adapter(self, tenant: str, name: str, adapter_dir: str | Path,
                    dataset: str) -> AdapterVersion:
        """Copy a trained eraser adapter into the registry as version 1, bound to the current
        version of ``dataset``, which must be exactly the set it was fitted on and back no
        other adapter (a row erased through one adapter would stay learnt by the other)."""
        check_name("adapter", name)
        data = self.dataset(tenant, check_name("dataset", dataset))
        source = Path(adapter_dir)
        if not source.is_dir():
            raise EraserError(f"{source} is not a directory")
        meta = read_meta(source)
        check_fitted_on(meta, source, data.path, read_examples(data.path))
        target = self.adapter_dir(tenant, name, 1)
        version: AdapterVersion | None = None

        def write(stage: Path) -> None:
            nonlocal version
            shutil.copytree(source, stage, dirs_exist_ok=True)
            version = AdapterVersion(tenant, name, 1, target, meta.base, dataset, data.version,
                                     adapter_version(stage))

        def insert(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM adapters WHERE tenant = ? AND name = ?",
                          (tenant, name)).fetchone():
                raise Conflict(f"adapter {name!r} already exists for tenant {tenant!r}")
            bound = db.execute("SELECT name FROM adapters WHERE tenant = ? AND dataset = ? "
                               "AND version = 1", (tenant, dataset)).fetchone()
            if bound:
                raise Conflict(f"dataset {dataset!r} already backs adapter {bound['name']!r}; "
                               "register a copy of the data under another name")
            self.insert_adapter(db, version, None)

        self._register(tenant, target, write, insert)
        return version

    def _register(self, tenant: str, target: Path, write: Callable[[Path], None],
                  insert: Callable[[sqlite3.Connection], None]) -> None:
        """Stage, register, place, as one unit against concurrent adds: ``write(stage)``
        fills a private folder; then, inside one write transaction, ``insert(db)`` checks
        and inserts the rows and the folder is renamed to ``target`` before the commit.
        Adds queue on the transaction, so the check, the row and the files on disk agree,
        and a loser gets its Conflict and leaves nothing. A ``target`` found there has no
        row (the insert saw none under the lock): a crash left it, and it is replaced."""
        self.tenant_dir(tenant).mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=self.tenant_dir(tenant), prefix=".staging-"))
        try:
            stage.chmod(0o755)  # mkdtemp makes it private; a registered folder is readable
            write(stage)
            with self.transaction() as db:
                insert(db)
                shutil.rmtree(target, ignore_errors=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def insert_adapter(self, db: sqlite3.Connection, v: AdapterVersion,
                       batch_id: int | None) -> None:
        db.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (v.tenant, v.name, v.version, self.relative(v.path), v.base, v.dataset,
                    v.dataset_version, v.weights_sha, batch_id, time.time()))

    def adapter(self, tenant: str, name: str, version: int | None = None) -> AdapterVersion:
        """The current (or a given) version of a tenant's adapter; 404 for any other's."""
        r = self._version_row("adapters", "adapter", tenant, name, version)
        return AdapterVersion(r["tenant"], r["name"], r["version"], self.root / r["path"],
                              r["base"],
                              r["dataset"], r["dataset_version"], r["weights_sha"])

    def adapters(self, tenant: str) -> list[dict[str, Any]]:
        """Each adapter of a tenant with its current version (one query, however many)."""
        rows = self.query(
            "SELECT name, version, weights_sha, dataset, dataset_version, base FROM adapters AS a "
            "WHERE tenant = ? AND version = (SELECT MAX(version) FROM adapters "
            "WHERE tenant = a.tenant AND name = a.name) ORDER BY name", (tenant,))
        return [dict(r) for r in rows]

    # -- purge -----------------------------------------------------------------------------

    def purge(self, tenant: str, adapter: str, keep: int) -> dict[str, Any]:
        """Delete an adapter's versions older than its newest ``keep``, and everything that
        could rebuild them or the rows they were erased of: their folders, the delta of the
        oldest kept version (it rebuilds its parent), the dataset versions older than the
        oldest kept adapter's, and the curvature index when it was built on a purged
        version (it holds that version's Θ). The registry keeps their rows (hashes and
        version numbers) and records when each was purged; the record is committed before
        the files go, so a crash between leaves files that the next purge removes.
        Returns the versions kept and those purged by this call."""
        if not isinstance(keep, int) or keep < 1:
            raise BadRequest(f"keep must be at least 1 (the current version is never purged), "
                             f"not {keep!r}")
        self.adapter(tenant, adapter)  # 404 for an unknown adapter
        versions = self.query("SELECT * FROM adapters WHERE tenant = ? AND name = ? "
                              "ORDER BY version", (tenant, adapter))
        kept, gone = versions[-keep:], versions[:-keep]
        dataset = kept[0]["dataset"]
        old_data = self.query("SELECT * FROM datasets WHERE tenant = ? AND name = ? AND "
                              "version < ? ORDER BY version",
                              (tenant, dataset, kept[0]["dataset_version"]))
        done = {(r["kind"], r["version"]) for r in self.query(
            "SELECT kind, version FROM purged WHERE tenant = ? AND ((kind = 'adapter' AND "
            "name = ?) OR (kind = 'dataset' AND name = ?))", (tenant, adapter, dataset))}
        new_adapters = [r["version"] for r in gone if ("adapter", r["version"]) not in done]
        new_data = [r["version"] for r in old_data if ("dataset", r["version"]) not in done]
        now = time.time()
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO purged VALUES (?, ?, ?, ?, ?)",
                           [(tenant, "adapter", adapter, v, now) for v in new_adapters]
                           + [(tenant, "dataset", dataset, v, now) for v in new_data])
        for r in gone:
            shutil.rmtree(self.root / r["path"], ignore_errors=True)
        if gone:
            (self.root / kept[0]["path"] / DELTA_FILE).unlink(missing_ok=True)
        for r in old_data:
            (self.root / r["path"]).unlink(missing_ok=True)
        index = self.index_dir(tenant, adapter)
        if index.exists():
            try:
                built_on = read_index_meta(index).adapter_version
            except EraserError:
                built_on = None  # damaged: derived data, rebuilt when needed
            if built_on not in {r["weights_sha"] for r in kept}:
                shutil.rmtree(index, ignore_errors=True)
        return {"tenant": tenant, "adapter": adapter,
                "kept_versions": [r["version"] for r in kept],
                "purged_adapter_versions": new_adapters,
                "dataset": dataset, "purged_dataset_versions": new_data}

    def purged_at(self, tenant: str, kind: str, name: str, version: int) -> float | None:
        """When a version (``kind`` adapter or dataset) was purged; None while it is kept."""
        rows = self.query("SELECT at FROM purged WHERE tenant = ? AND kind = ? AND name = ? "
                          "AND version = ?", (tenant, kind, name, version))
        return rows[0]["at"] if rows else None


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
