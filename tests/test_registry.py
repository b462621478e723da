"""The service registry's reads, on hand-made adapters (no training)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest
import torch
from conftest import tiny_lora, word_rows

from eraser_dist.data import examples_digest, write_examples
from eraser_dist.llm.adapters import AdapterMeta, save_adapter
from eraser_dist.service.registry import Registry


@pytest.fixture
def registry(tmp_path):
    """Tenant acme with adapters a1, a2, a3 (a2 at version 2) and tenant globex with b1."""
    registry = Registry(tmp_path / "root")
    model = tiny_lora(torch.float32)
    registry.add_tenant("acme")
    registry.add_tenant("globex")
    for seed, (tenant, name) in enumerate([("acme", "a3"), ("acme", "a1"), ("acme", "a2"),
                                           ("globex", "b1")]):
        rows = word_rows(6, prefix=f"{name}-")
        write_examples(tmp_path / f"{name}.parquet", rows)
        registry.add_dataset(tenant, f"{name}-data", tmp_path / f"{name}.parquet")
        # Weights of their own, so that each adapter has its own weights_sha.
        model.set_flat(torch.randn(model.dim, generator=torch.Generator().manual_seed(seed)))
        save_adapter(model, tmp_path / name, AdapterMeta(
            "tiny-llama", "x", 0.0, 48, {"data_sha256": examples_digest(rows)}))
        registry.add_adapter(tenant, name, tmp_path / name, f"{name}-data")
    first = registry.adapter("acme", "a2")
    with registry.transaction() as db:
        registry.insert_adapter(db, replace(first, version=2, weights_sha="after-an-erase",
                                            dataset_version=2), None)
    return registry


def test_adapters_lists_the_current_versions_in_one_query(registry, monkeypatch):
    # What the listing answered when it read each adapter by itself.
    expected = [{"name": a.name, "version": a.version, "weights_sha": a.weights_sha,
                 "dataset": a.dataset, "dataset_version": a.dataset_version, "base": a.base}
                for a in (registry.adapter("acme", n) for n in ("a1", "a2", "a3"))]
    assert (expected[1]["version"], expected[1]["weights_sha"]) == (2, "after-an-erase")
    assert len({a["weights_sha"] for a in expected}) == 3
    statements = []
    connect = sqlite3.connect

    def traced_connect(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    listed = registry.adapters("acme")
    monkeypatch.undo()
    assert listed == expected
    assert [s.split()[0].upper() for s in statements] == ["SELECT"]
