"""The request journal: durable erase requests and the batches that carry them out.

``submit`` returns once the request is committed to SQLite (it survives any crash after
that). A request moves ``pending`` → ``running`` (in a batch) → ``done`` or ``failed``; a
batch moves ``running`` → ``committed``, or ``rolled_back`` when the worker died during it
(its requests go back to ``pending``). An idempotency key names one request per tenant: the
same key with the same body answers with that request, with another body is refused.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from ..core.requests import EraseRequest, parse_request
from ..errors import EraserError
from .errors import BadRequest, Conflict, NotFound, TooLarge
from .registry import Registry, check_name, dumps

MAX_REQUEST_IDS = 10_000
MAX_TEXT_CHARS = 65_536
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    id: str
    tenant: str
    adapter: str
    request: EraseRequest


class Journal:
    def __init__(self, registry: Registry):
        self.registry = registry

    def submit(self, tenant: str, adapter: str, body: Any,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Validate a request against the tenant's adapter and its current training set and
        journal it; refusals are logged in the audit log."""
        try:
            result = self._submit(tenant, adapter, body, idempotency_key)
        except EraserError as err:
            self.registry.audit(tenant, "submit", False, f"adapter {str(adapter)[:80]!r}: {err}")
            raise
        self.registry.audit(tenant, "submit", True, f"{result['id']} on {adapter!r}"
                            + (" (replayed)" if result["replayed"] else ""))
        return result

    def _submit(self, tenant, adapter, body, idempotency_key) -> dict[str, Any]:
        check_name("adapter", adapter)
        if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                            or not 0 < len(idempotency_key) <= MAX_KEY_CHARS):
            raise BadRequest(f"an idempotency key is a string of 1–{MAX_KEY_CHARS} characters")
        current = self.registry.adapter(tenant, adapter)  # 404 for another tenant's
        request = _parse(body)
        data = self.registry.dataset(tenant, current.dataset)
        known = set(pq.read_table(data.path, columns=["id"]).column("id").to_pylist())
        unknown = [i for i in request.ids if i not in known]
        if unknown:
            raise NotFound(f"{len(unknown)} row id(s) not in the training set of adapter "
                           f"{adapter!r}: {', '.join(repr(i[:40]) for i in unknown[:3])}")
        text = dumps(request.to_json())
        digest = hashlib.sha256(f"{adapter}\n{text}".encode()).hexdigest()
        with self.registry.transaction() as db:
            if idempotency_key is not None:
                found = db.execute("SELECT id, body_sha256, state FROM requests WHERE tenant = ? "
                                   "AND idempotency_key = ?", (tenant, idempotency_key)).fetchone()
                if found is not None:
                    if found["body_sha256"] != digest:
                        raise Conflict("idempotency key already used for a different request "
                                       f"({found['id']})")
                    return {"id": found["id"], "state": found["state"], "replayed": True}
            request_id = "req_" + secrets.token_hex(12)
            db.execute("INSERT INTO requests (id, tenant, adapter, idempotency_key, body, "
                       "body_sha256, state, submitted) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                       (request_id, tenant, adapter, idempotency_key, text, digest, time.time()))
        return {"id": request_id, "state": "pending", "replayed": False}

    def status(self, tenant: str, request_id: Any) -> dict[str, Any]:
        """A tenant's own request; any other id (another tenant's included) is 404."""
        if not isinstance(request_id, str) or len(request_id) > 64:
            raise NotFound("no such request")
        rows = self.registry.query("SELECT * FROM requests WHERE id = ? AND tenant = ?",
                                   (request_id, tenant))
        if not rows:
            self.registry.audit(tenant, "status", False, f"unknown request {request_id[:64]!r}")
            raise NotFound(f"no request {request_id!r} for tenant {tenant!r}")
        return public_request(rows[0])

    def queue(self, tenant: str | None = None, bodies: bool = True) -> list[dict[str, Any]]:
        """Pending and running requests in submission order (one tenant's, or all); without
        ``bodies`` each request is its kind, row count and body hash, not its text."""
        sql = "SELECT * FROM requests WHERE state IN ('pending', 'running')"
        args: tuple = ()
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", (tenant,)
        rows = self.registry.query(sql + " ORDER BY seq", args)
        found = [public_request(r) for r in rows]
        if not bodies:
            for entry, row in zip(found, rows, strict=True):
                request = parse_request(entry["request"])
                entry["request"] = {"kind": request.kind, "n_rows": len(request.ids),
                                    "body_sha256": row["body_sha256"]}
        return found

    def pending(self, tenant: str | None = None, adapter: str | None = None
                ) -> list[JournalEntry]:
        """The pending requests in journal order: all, or those of ``tenant``'s
        ``adapter``."""
        where, args = "state = 'pending'", ()
        if tenant is not None:
            where, args = f"{where} AND tenant = ? AND adapter = ?", (tenant, adapter)
        rows = self.registry.query("SELECT seq, id, tenant, adapter, body FROM requests "
                                   f"WHERE {where} ORDER BY seq", args)
        return [JournalEntry(r["seq"], r["id"], r["tenant"], r["adapter"],
                             parse_request(json.loads(r["body"]))) for r in rows]


def _parse(body: Any) -> EraseRequest:
    if isinstance(body, dict):
        n = len(body.get("ids") or body.get("edits") or [])
        if isinstance(body.get("ids") or body.get("edits"), list) and n > MAX_REQUEST_IDS:
            raise TooLarge(f"a request may name at most {MAX_REQUEST_IDS} rows, this one {n}; "
                           "split it")
    request = parse_request(body)
    for i, text in zip(request.ids, request.new_texts or [""] * len(request.ids), strict=True):
        if len(i) > 512:
            raise BadRequest(f"row id {i[:40]!r}… is longer than 512 characters")
        if len(text) > MAX_TEXT_CHARS:
            raise TooLarge(f"the new text of {i[:40]!r} is longer than {MAX_TEXT_CHARS} "
                           "characters")
    return request


def public_request(row) -> dict[str, Any]:
    """What a tenant may see of a request."""
    return {"id": row["id"], "tenant": row["tenant"], "adapter": row["adapter"],
            "state": row["state"], "error": row["error"], "batch": row["batch_id"],
            "submitted": row["submitted"], "finished": row["finished"],
            "request": json.loads(row["body"]),
            "certificate": row["certificate"] is not None}
