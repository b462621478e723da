"""Shared test helpers: tiny LoRA models, explicit Hessians, and a quadratic LossModel."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from eraser_dist.arguments import LoraArguments
from eraser_dist.core.objective import LossModel
from eraser_dist.core.requests import EditedObjective, apply_request, parse_request
from eraser_dist.data import Example
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_lora(dtype=torch.float64, rank=2, targets=("q_proj", "v_proj"), max_length=64):
    base = load_base("tiny-llama", dtype)
    peft_model = attach_lora(base, LoraArguments(rank=rank, targets=targets), seed=0)
    return LoraCausalLM(peft_model, base.tokenizer, max_length)


def make_other_base(path: Path) -> None:
    """A Llama of tiny-llama's shape (vocab 258) with other weights and a byte-level
    Hugging Face tokenizer, saved as an ordinary model directory; built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"</s>": 256, "<pad>": 257})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                            pad_token="<pad>").save_pretrained(path)


def delta_vector(adapter_dir) -> torch.Tensor:
    """The ΔΘ a published erase wrote (adapter_delta.safetensors), flattened in key order."""
    from eraser_dist.llm.adapters import read_delta

    delta = read_delta(adapter_dir)[0]
    return torch.cat([delta[k].reshape(-1) for k in sorted(delta)])


def word_rows(n: int, prefix: str = "r") -> list[Example]:
    """Short rows with a learnable pattern: the response is the query's word reversed."""
    words = ["cat", "dog", "owl", "elk", "bee", "ant", "cow", "pig", "rat", "emu",
             "yak", "fox", "bat", "hen", "ram", "eel", "gnu", "jay", "koi", "doe"]
    return [Example(f"{prefix}{i}", f"rev {words[i % len(words)]}{i // len(words) or ''}",
                    words[i % len(words)][::-1]) for i in range(n)]


class QuadraticModel(LossModel):
    """Least squares L_i = ½(x_iᵀθ − y_i)², rows as Examples: query "x1,x2,…", response "y".

    The loss is quadratic in θ, so one Newton step is exact and influence must equal the
    closed-form retrained optimum.
    """

    def __init__(self, dim: int):
        self.theta = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.params = [self.theta]

    def collate(self, rows):
        x = torch.tensor([[float(v) for v in r.query.split(",")] for r in rows],
                         dtype=torch.float64)
        y = torch.tensor([float(r.response) for r in rows], dtype=torch.float64)
        return x, y

    def outputs(self, batch):
        return batch[0] @ self.theta

    def losses(self, outputs, batch):
        return 0.5 * (outputs - batch[1]) ** 2

    def output_hvp(self, outputs, batch, tangent):
        return tangent


def regression_rows(n: int, dim: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = x @ torch.randn(dim, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        n, generator=g, dtype=torch.float64)
    return [Example(f"q{i}", ",".join(repr(float(v)) for v in x[i]), repr(float(y[i])))
            for i in range(n)]


def ridge_solution(model: QuadraticModel, rows, weight_decay: float) -> torch.Tensor:
    """argmin (1/n) Σ ½(xθ − y)² + (λ/2)‖θ‖², closed form."""
    x, y = model.collate(rows)
    n = len(rows)
    a = x.T @ x / n + weight_decay * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(a, x.T @ y / n)


@pytest.fixture
def tiny_float32():
    torch.manual_seed(1)
    model = tiny_lora(torch.float32)
    # Move off the LoRA initialisation (B = 0), where half the Hessian blocks vanish.
    model.set_flat(model.get_flat() + 0.3 * torch.randn(model.dim))
    return model


def down_weighted(rows, request_json, eps):
    """f_ε: the request applied with weight ε instead of 1 (rows kept, new rows at weight ε)."""
    full = apply_request(parse_request(request_json), rows)
    n_changed_old = int((full.weight_changes < 0).sum())
    old_ids = {r.id for r in full.changed_rows[:n_changed_old]}
    after = list(rows) + full.changed_rows[n_changed_old:]
    weights = torch.tensor([1.0 - eps if r.id in old_ids else 1.0 for r in rows]
                           + [eps] * (len(after) - len(rows)), dtype=torch.float64)
    return EditedObjective(full.rows_before, full.weights_before, after, weights,
                           full.changed_rows, eps * full.weight_changes)


def http(base: str, method: str, path: str, token: str | None = None, body=None,
         raw: bytes | None = None, headers: dict | None = None):
    """One HTTP exchange: (status, the JSON answer or the raw bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            payload = answer.read()
            status, kind = answer.status, answer.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        payload, status, kind = err.read(), err.code, err.headers["Content-Type"]
    return status, (json.loads(payload) if kind == "application/json" else payload)
