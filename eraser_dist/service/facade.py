"""``EraseService``: the one object behind ``eraser tenant/dataset/adapter/submit/status/
queue/serve`` and the HTTP API. Every tenant-facing method takes the caller's token and
answers only about that tenant's things (others' are 404, a claim to be another tenant 403).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .certificate import certificate_png
from .errors import NotFound
from .journal import Journal
from .registry import Registry
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

    def queue(self, token: str | None = None) -> list[dict[str, Any]]:
        """Pending and running requests: all of them, or the token's tenant's."""
        tenant = None if token is None else self.registry.authenticate(token)
        return self.journal.queue(tenant)

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
        path = self._certificate_path(token, request_id)
        return json.loads(path.read_text(encoding="utf-8"))

    def certificate_png(self, token: str | None, request_id: str) -> bytes:
        return certificate_png(self._certificate_path(token, request_id))

    def _certificate_path(self, token: str | None, request_id: str) -> Path:
        status = self.status(token, request_id)
        if status["state"] != "done":
            raise NotFound(f"request {request_id} is {status['state']}: no certificate yet")
        row = self.registry.query("SELECT certificate FROM requests WHERE id = ?",
                                  (request_id,))[0]
        return self.root / row["certificate"]
