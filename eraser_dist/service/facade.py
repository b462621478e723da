"""``EraseService``: the one object behind ``eraser tenant/dataset/adapter/submit/status/
queue/serve`` and the HTTP API. Every tenant-facing method takes the caller's token and
answers only about that tenant's things (others' are 404, a claim to be another tenant 403).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .certificate import ROW_HASH, certificate_png
from .errors import NotFound
from .journal import Journal
from .registry import Registry, check_name, dumps
from .worker import BatchWorker


class EraseService:
    def __init__(self, root: str | Path):
        self.registry = Registry(root)
        self.journal = Journal(self.registry)

    @property
    def root(self) -> Path:
        return self.registry.root

    # -- operator --------------------------------------------------------------------------

    def add_tenant(self, name: str) -> str:
        """Register a tenant; returns its token (only its hash is stored)."""
        return self.registry.add_tenant(name)

    def new_operator_token(self) -> str:
        """Make the operator's token (replacing any earlier one); only its hash is stored."""
        return self.registry.new_operator_token()

    def queue(self, token: str | None = None, operator_token: str | None = None,
              show_bodies: bool = False) -> list[dict[str, Any]]:
        """Pending and running requests: a tenant's own (``token``), or every tenant's with
        the ``operator_token``. The operator sees each request's kind, row count and body
        hash; its text (ids, edited texts) only with ``show_bodies``, which is audited."""
        if operator_token is None:
            return self.journal.queue(self.registry.authenticate(token))
        self.registry.authenticate_operator(operator_token, "queue")
        self.registry.audit(None, "queue", True, "bodies shown" if show_bodies else "hashes")
        return self.journal.queue(None, show_bodies)

    def overview(self, operator_token: str | None) -> dict[str, Any]:
        """The operator's view of the service, all from the registry: requests waiting per
        tenant and adapter (pending, running), the running batches, the last committed
        batch's seconds by phase, and the serve process as it last recorded itself (None if
        none ran): its state, pid, host, batches, requests done and failed, bases loaded and
        the bases it holds warm (:meth:`Registry.serve_state`)."""
        self.registry.authenticate_operator(operator_token, "status")
        waiting = self.registry.query(
            "SELECT tenant, adapter, SUM(state = 'pending') AS pending, SUM(state = 'running') "
            "AS running FROM requests WHERE state IN ('pending', 'running') GROUP BY tenant, "
            "adapter ORDER BY tenant, adapter")
        running = self.registry.query("SELECT id, tenant, adapter, request_ids, started FROM "
                                      "batches WHERE state = 'running' ORDER BY id")
        last = self.registry.query("SELECT id, tenant, adapter, finished, report FROM batches "
                                   "WHERE state = 'committed' ORDER BY id DESC LIMIT 1")
        return {
            "waiting": [dict(r) for r in waiting],
            "running_batches": [{"id": r["id"], "tenant": r["tenant"], "adapter": r["adapter"],
                                 "requests": len(json.loads(r["request_ids"])),
                                 "started": r["started"]} for r in running],
            "last_batch": None if not last else {
                "id": last[0]["id"], "tenant": last[0]["tenant"],
                "adapter": last[0]["adapter"], "finished": last[0]["finished"],
                # batches committed before the phases were recorded have none
                "seconds_by_phase": json.loads(last[0]["report"]).get("seconds_by_phase")},
            "serve": self.registry.serve_state(),
        }

    def purge(self, tenant: str, adapter: str, keep: int = 1) -> dict[str, Any]:
        """Delete the adapter's versions older than its newest ``keep`` and what could
        rebuild them (:meth:`Registry.purge`); returns what was purged."""
        purged = self.registry.purge(check_name("tenant", tenant), check_name("adapter", adapter),
                                     keep)
        self.registry.audit(tenant, "purge", True, dumps(purged))
        return purged

    def worker(self, *args: Any, **kwargs: Any) -> BatchWorker:
        """The batch worker of this root (arguments as :class:`BatchWorker` after the
        registry: settings, erase arguments, distributed arguments, on_published, …)."""
        return BatchWorker(self.registry, *args, **kwargs)

    # -- tenant ----------------------------------------------------------------------------

    def add_dataset(self, token: str | None, tenant: str, name: str, data: str | Path,
                    holdout: str | Path | None = None) -> dict[str, Any]:
        tenant = self.registry.authenticate(token, tenant)
        v = self.registry.add_dataset(tenant, name, data, holdout)
        self.registry.audit(tenant, "dataset add", True, f"{name} v{v.version}")
        return {"tenant": tenant, "dataset": name, "version": v.version, "n_rows": v.n_rows,
                "sha256": v.sha256, "holdout": v.holdout is not None}

    def add_adapter(self, token: str | None, tenant: str, name: str, adapter_dir: str | Path,
                    dataset: str) -> dict[str, Any]:
        tenant = self.registry.authenticate(token, tenant)
        v = self.registry.add_adapter(tenant, name, adapter_dir, dataset)
        self.registry.audit(tenant, "adapter add", True, f"{name} v{v.version} on {dataset}")
        return {"tenant": tenant, "adapter": name, "version": v.version,
                "weights_sha": v.weights_sha, "dataset": dataset,
                "dataset_version": v.dataset_version}

    def adapters(self, token: str | None, tenant: str | None = None) -> list[dict[str, Any]]:
        return self.registry.adapters(self.registry.authenticate(token, tenant))

    def submit(self, token: str | None, adapter: str, request: Any,
               idempotency_key: str | None = None, tenant: str | None = None) -> dict[str, Any]:
        """Journal an erase request (the JSON of a request file); returns its id at once."""
        tenant = self.registry.authenticate(token, tenant)
        return self.journal.submit(tenant, adapter, request, idempotency_key)

    def status(self, token: str | None, request_id: str) -> dict[str, Any]:
        return self.journal.status(self.registry.authenticate(token), request_id)

    def certificate(self, token: str | None, request_id: str) -> dict[str, Any]:
        """The request's certificate, with ``purged``: when the versions it was erased from
        (adapter and dataset) were purged, None while they are kept."""
        path = self._certificate_path(token, request_id)
        certificate = json.loads(path.read_text(encoding="utf-8"))
        tenant, adapter = certificate["request"]["tenant"], certificate["adapter"]
        data = certificate["dataset"]
        certificate["purged"] = {
            "adapter_version_before": self.registry.purged_at(
                tenant, "adapter", adapter["name"], adapter["version_before"]),
            "dataset_version_before": self.registry.purged_at(
                tenant, "dataset", data["name"], data["version_before"])}
        return certificate

    def certificate_key(self, token: str | None) -> dict[str, str]:
        """The caller's certificate key, with which it can recompute its certificates' row
        hashes (``row_hash`` in a certificate says how)."""
        tenant = self.registry.authenticate(token)
        self.registry.audit(tenant, "certificate key", True, "read")
        return {"tenant": tenant, "certificate_key": self.registry.certificate_key(tenant).hex(),
                "row_hash": ROW_HASH}

    def certificate_png(self, token: str | None, request_id: str) -> bytes:
        return certificate_png(self._certificate_path(token, request_id))

    def _certificate_path(self, token: str | None, request_id: str) -> Path:
        status = self.status(token, request_id)
        if status["state"] != "done":
            raise NotFound(f"request {request_id} is {status['state']}: no certificate yet")
        row = self.registry.query("SELECT certificate FROM requests WHERE id = ?",
                                  (request_id,))[0]
        return self.root / row["certificate"]
