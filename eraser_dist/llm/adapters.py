"""Adapters on disk: plain peft directories, published atomically, with our metadata beside.

A directory holds ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable by
``PeftModel.from_pretrained`` as is) and ``eraser_adapter.json``: the base it belongs to, the
objective it was trained on (weight decay λ, max_length) and its lineage. Erase results add
``erase_report.json``. A directory appears complete or not at all: it is written under a
temporary name next to its target and renamed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..data import examples_digest
from ..errors import EraserError
from ..files import publish_folder
from .models import GLOBAL_RNG, Base, LoraCausalLM

META_FILE = "eraser_adapter.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class AdapterMeta:
    """What erase needs to know about the objective an adapter minimises."""

    base: str
    base_fingerprint: str
    weight_decay: float
    max_length: int
    lineage: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "base_fingerprint": self.base_fingerprint,
            "weight_decay": self.weight_decay,
            "max_length": self.max_length,
            "lineage": self.lineage,
        }


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; called before any work is done."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise EraserError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise EraserError(f"output {out} exists and is not a directory")
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_adapter(
    model: LoraCausalLM,
    out: str | os.PathLike,
    meta: AdapterMeta,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Publish the model's current LoRA weights as a peft directory, with metadata files."""

    def write(tmp: Path) -> None:
        # No embedding layers are adapted; "auto" would look the base up on a model hub.
        model.peft_model.save_pretrained(tmp, save_embedding_layers=False)
        write_json(tmp / META_FILE, meta.to_json())
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)

    return publish_folder(check_output_dir(out, overwrite), write, overwrite)


def read_meta(adapter_dir: str | os.PathLike) -> AdapterMeta:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise EraserError(f"adapter directory {adapter_dir} does not exist")
    for name in (*PEFT_FILES, META_FILE):
        if not (adapter_dir / name).is_file():
            raise EraserError(f"{adapter_dir} is not an eraser adapter: {name} is missing")
    try:
        raw = json.loads((adapter_dir / META_FILE).read_text(encoding="utf-8"))
        return AdapterMeta(
            base=str(raw["base"]),
            base_fingerprint=str(raw["base_fingerprint"]),
            weight_decay=float(raw["weight_decay"]),
            max_length=int(raw["max_length"]),
            lineage=dict(raw.get("lineage", {})),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise EraserError(f"{adapter_dir / META_FILE} is malformed: {err}") from err


def check_fitted_on(meta: AdapterMeta, adapter, data, examples) -> None:
    """Influence needs exactly the training set the adapter was fitted on, so an adapter
    whose lineage does not name that set cannot be erased from."""
    recorded = meta.lineage.get("data_sha256")
    if recorded is None:
        raise EraserError(
            f"adapter {adapter}: its lineage does not record the data it was fitted on "
            "(no data_sha256 in eraser_adapter.json), and influence needs exactly that set; "
            "retrain it with `eraser train`"
        )
    if recorded != examples_digest(examples):
        raise EraserError(
            f"{data} is not the training set adapter {adapter} was fitted on (its rows or "
            "their order differ); influence needs exactly that set"
        )


def check_trained_on(meta: AdapterMeta, base: Base, adapter_dir: str | os.PathLike) -> None:
    """Refuse an adapter trained on other base weights than ``base``'s."""
    if meta.base_fingerprint != base.fingerprint:
        raise EraserError(
            f"adapter {adapter_dir} was trained on base {meta.base!r}, not on {base.name!r} "
            "(the base weights differ)"
        )


def load_adapter(base: Base, adapter_dir: str | os.PathLike) -> tuple[LoraCausalLM, AdapterMeta]:
    """Attach a saved adapter to ``base`` (trainable, eval mode); refuse a foreign adapter."""
    from peft import PeftModel

    meta = read_meta(adapter_dir)
    check_trained_on(meta, base, adapter_dir)
    try:
        with GLOBAL_RNG:  # it draws LoRA A's init before loading the saved weights
            peft_model = PeftModel.from_pretrained(base.model, str(adapter_dir),
                                                   is_trainable=True)
    except (ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EraserError(
            f"adapter {adapter_dir} does not fit base {base.name!r} "
            f"(other target modules or shapes): {first}"
        ) from err
    model = LoraCausalLM(peft_model, base.tokenizer, meta.max_length)
    with safe_open(str(Path(adapter_dir) / PEFT_FILES[1]), framework="pt") as f:
        saved = set(f.keys())
    created = {file_key(n) for n in model.names}
    if saved != created:
        raise EraserError(
            f"adapter {adapter_dir}: its adapter_config.json and its weights disagree on the "
            f"target modules ({len(saved ^ created)} tensors differ)"
        )
    return model, meta


def adapter_vector(model: LoraCausalLM, adapter_dir: str | os.PathLike):
    """The LoRA weights of a saved adapter as a flat vector [d] in ``model``'s order.

    The adapter must have the model's shape (same targets and rank), e.g. another version
    of the same adapter; used to compare versions without loading a second model.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(Path(adapter_dir) / PEFT_FILES[1]))
    try:
        parts = [tensors[file_key(n)] for n in model.names]
    except KeyError as err:
        raise EraserError(f"adapter {adapter_dir} has another shape than the model: {err}") from err
    return model.flatten(parts)


DELTA_FILE = "adapter_delta.safetensors"


def file_key(param_name: str) -> str:
    """The safetensors key peft saves a LoRA parameter under (its name without the adapter)."""
    return param_name.replace(".default.", ".")


def adapter_version(adapter_dir: str | os.PathLike) -> str:
    """Content hash of an adapter's weights; names the version a delta applies to."""
    digest = hashlib.sha256((Path(adapter_dir) / PEFT_FILES[1]).read_bytes()).hexdigest()
    return digest[:16]


def split_delta(delta: torch.Tensor, keys: list[str], shapes: list[tuple[int, ...]]):
    """A flat ΔΘ [d] (float64, the model's parameter order) as {safetensors key: tensor}."""
    out, offset = {}, 0
    for key, shape in zip(keys, shapes, strict=True):
        n = math.prod(shape)
        out[key] = delta[offset : offset + n].reshape(shape)
        offset += n
    if offset != delta.numel():
        raise ValueError(f"ΔΘ has {delta.numel()} entries, the adapter {offset}")
    return out


def add_delta(weights: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]):
    """Θ + ΔΘ per tensor, summed in float64 and stored in each weight's own dtype."""
    if set(delta) != set(weights):
        raise EraserError(f"the delta does not match the adapter ({len(set(delta) ^ set(weights))}"
                          " tensors differ)")
    return {k: (w.double() + delta[k].double()).to(w.dtype).contiguous()
            for k, w in weights.items()}


def publish_erased(
    adapter_dir: str | os.PathLike,
    out: str | os.PathLike,
    delta: dict[str, torch.Tensor],
    meta: AdapterMeta,
    extra: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Publish adapter + ΔΘ as a new version, and ΔΘ alone as ``adapter_delta.safetensors``.

    File-level, so the publisher needs no base model (the erase may have run on a cluster).
    The delta file records the parent and child versions, so that a replica applies it only
    to the version it was computed from.
    """
    from safetensors.torch import load_file, save_file

    source = Path(adapter_dir)
    weights = load_file(str(source / PEFT_FILES[1]))
    updated = add_delta(weights, delta)
    parent = adapter_version(source)

    def write(tmp: Path) -> None:
        shutil.copyfile(source / PEFT_FILES[0], tmp / PEFT_FILES[0])
        save_file(updated, str(tmp / PEFT_FILES[1]), metadata={"format": "pt"})
        child = adapter_version(tmp)
        save_file({k: v.double().contiguous() for k, v in delta.items()}, str(tmp / DELTA_FILE),
                  metadata={"parent_version": parent, "child_version": child})
        write_json(tmp / META_FILE, meta.to_json())
        for name, obj in extra.items():
            write_json(tmp / name, obj)

    return publish_folder(check_output_dir(out, overwrite), write, overwrite)


def read_delta(adapter_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, str]:
    """(ΔΘ per tensor in float64, parent version, child version) of a published erase."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / DELTA_FILE
    if not path.is_file():
        raise EraserError(f"{adapter_dir} has no {DELTA_FILE}: it was not made by an erase")
    with safe_open(str(path), framework="pt") as f:
        info = f.metadata() or {}
    if "parent_version" not in info or "child_version" not in info:
        raise EraserError(f"{path} lacks its parent/child versions")
    return load_file(str(path)), info["parent_version"], info["child_version"]
