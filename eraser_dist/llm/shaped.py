"""``llama70b-shaped:N``: a base with a 70B model's per-layer widths and random weights.

It puts the engine at the widths the users run (hidden 8192, intermediate 28672, 64 query
and 8 KV heads of 128) with N decoder layers instead of 80 and SmolLM2's tokenizer
(:func:`~eraser_dist.distributed.plan.shaped_70b_architecture`), without downloading
anything. Inside a worker group it is built straight into ZeRO-3 partitions and each rank
writes only its own partition, so no rank ever holds the whole model.

The weights depend only on the parameter's name and the element's position: element j of a
weight is drawn from a generator seeded by (the name's CRC-32, j // 2²⁰). Any group size,
dtype or rank layout therefore holds the same model, and an adapter trained on it in one
process loads on the partitioned copy (the base fingerprint reads the embedding's first rows).
"""

from __future__ import annotations

import zlib

import torch

from ..distributed.plan import shaped_70b_architecture
from ..distributed.zero import fill_parameter, partitioned_construction

#: Standard deviation of the random linear and embedding weights (Llama's initializer_range).
WEIGHT_STD = 0.02
#: Elements per seeded block of random values.
BLOCK = 1 << 20


def shaped_70b_config(layers: int):
    """The LlamaConfig of ``llama70b-shaped:<layers>`` (untied head, Llama-3's rope)."""
    from transformers import LlamaConfig

    arch = shaped_70b_architecture(layers)
    return LlamaConfig(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def seeded_values(name: str, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of the flattened random weight ``name`` (fp32, N(0, 0.02²))."""
    seed = zlib.crc32(name.encode("utf-8"))
    parts = []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        values = torch.randn(BLOCK, generator=generator)
        lo, hi = max(start - block * BLOCK, 0), min(stop - block * BLOCK, BLOCK)
        parts.append(values[lo:hi])
    return torch.cat(parts).mul_(WEIGHT_STD)


def shaped_70b(layers: int, dtype: torch.dtype):
    """The model of ``llama70b-shaped:<layers>`` (:func:`seeded_llama`)."""
    return seeded_llama(shaped_70b_config(layers), dtype)


def seeded_llama(config, dtype: torch.dtype):
    """A LlamaForCausalLM of ``config`` in ``dtype`` (ZeRO-3-partitioned when a loading
    config is alive), with RMSNorm weights 1 and every other weight seeded by its name
    (:func:`seeded_values`)."""
    from transformers import LlamaForCausalLM

    with partitioned_construction(dtype):
        model = LlamaForCausalLM(config)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            fill_parameter(param, lambda start, stop: torch.ones(stop - start))
        else:
            fill_parameter(param, lambda start, stop, name=name: seeded_values(name, start,
                                                                                stop))
    return model
