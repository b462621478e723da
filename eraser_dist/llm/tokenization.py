"""Tokenisation of training rows: prompt template, response mask, and the two tokenizers.

Only the response tokens (and EOS) of a row are scored; the prompt is the query in a fixed
template, so the same row always gives the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..data import Example
from ..errors import EraserError


class TextTokenizer(Protocol):
    """What tokenisation needs from a tokenizer: text → ids without special tokens, and EOS."""

    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


def prompt_text(query: str) -> str:
    """The fixed template around a query: the same row always gives the same tokens."""
    return f"{query}\n"


def tokenize_example(tokenizer: TextTokenizer, example: Example, max_length: int):
    """Token ids of prompt + response + EOS and the number of prompt tokens.

    Only the response tokens (and EOS) are scored. When the row is longer than ``max_length``
    the prompt loses its oldest tokens first; the response is cut only if it alone is too long.
    Returns (ids: list[int] of length ≤ max_length, n_prompt: int ≥ 1).
    """
    if max_length < 2:
        raise EraserError(f"max_length must be at least 2, got {max_length}")
    prompt = tokenizer.encode(prompt_text(example.query)) or [tokenizer.eos_id]
    response = (tokenizer.encode(example.response) + [tokenizer.eos_id])[: max_length - 1]
    prompt = prompt[-(max_length - len(response)) :]
    return prompt + response, len(prompt)


class ByteTokenizer:
    """UTF-8 bytes as token ids 0–255; 256 = EOS, 257 = padding."""

    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer seen through :class:`TextTokenizer`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise EraserError("the base model's tokenizer has no EOS token")
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(self.eos_id if pad is None else pad)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
