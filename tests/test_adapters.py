"""Adapters on disk: an erase needs the adapter's lineage to name the data it was fitted on."""

from __future__ import annotations

import json
import re

import pytest
from conftest import word_rows

from eraser_dist.arguments import LoraArguments
from eraser_dist.cli import main
from eraser_dist.data import examples_digest, write_examples
from eraser_dist.errors import EraserError
from eraser_dist.llm.adapters import AdapterMeta, check_fitted_on, save_adapter
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base
from eraser_dist.service.registry import Registry

NO_RECORDED_DATA = "its lineage does not record the data it was fitted on.*`eraser train`"


@pytest.fixture(scope="module")
def unrecorded(tmp_path_factory):
    """A training set and an adapter whose lineage lacks ``data_sha256`` (made by hand, not
    by ``eraser train``)."""
    work = tmp_path_factory.mktemp("unrecorded")
    rows = word_rows(12)
    data = work / "train.parquet"
    write_examples(data, rows)
    base = load_base("tiny-llama")
    model = LoraCausalLM(attach_lora(base, LoraArguments(rank=2)), base.tokenizer, 48)
    meta = AdapterMeta("tiny-llama", base.fingerprint, 0.01, 48, {"made_by": "train"})
    save_adapter(model, work / "adapter", meta)
    return work, data, rows


def test_check_fitted_on_wants_the_recorded_training_set(unrecorded):
    _, data, rows = unrecorded
    meta = AdapterMeta("tiny-llama", "x", 0.0, 48, {"data_sha256": examples_digest(rows)})
    check_fitted_on(meta, "a", data, rows)
    with pytest.raises(EraserError, match="is not the training set adapter a was fitted on"):
        check_fitted_on(meta, "a", data, rows[1:])
    meta.lineage = {}
    with pytest.raises(EraserError, match=NO_RECORDED_DATA):
        check_fitted_on(meta, "a", data, rows)


def test_erase_refuses_an_adapter_without_recorded_data(unrecorded, capsys):
    work, data, _ = unrecorded
    request = work / "request.json"
    request.write_text(json.dumps({"kind": "remove", "ids": ["r1"]}))
    out = work / "erased"
    capsys.readouterr()
    code = main(["erase", "--base", "tiny-llama", "--adapter", str(work / "adapter"),
                 "--data", str(data), "--request", str(request), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("eraser: error: adapter ")
    assert "Traceback" not in err
    assert re.search(NO_RECORDED_DATA, err), err
    assert not out.exists()


def test_the_registry_refuses_an_adapter_without_recorded_data(unrecorded, tmp_path):
    work, data, _ = unrecorded
    registry = Registry(tmp_path / "root")
    registry.add_tenant("acme")
    registry.add_dataset("acme", "words", data)
    with pytest.raises(EraserError, match=NO_RECORDED_DATA):
        registry.add_adapter("acme", "a1", work / "adapter", "words")
    assert registry.adapters("acme") == []
    assert not (tmp_path / "root" / "tenants" / "acme" / "adapters").exists()
