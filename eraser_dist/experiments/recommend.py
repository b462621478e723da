"""Asking a LoRA model for next-movie recommendations, scored by :mod:`recmetrics`.

A candidate's score is the mean log-likelihood per token of its title as the response to
the row's prompt (the training loss, negated), so that long titles are not penalised for
their length. Greedy generation continues the training prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.objective import loss_values
from ..data import Example
from ..llm.models import LoraCausalLM
from .metrics import generation_figures, hit_by_likelihood, summary


def candidate_scores(model: LoraCausalLM, rows: Sequence[Example],
                     candidates: Sequence[Sequence[str]], batch_size: int = 8):
    """Mean per-token log-likelihood of every candidate of every row: a list [n][C]."""
    expanded = [Example(f"{row.id}#{j}", row.query, title)
                for row, options in zip(rows, candidates, strict=True)
                for j, title in enumerate(options)]
    with torch.no_grad():
        scores = (-loss_values(model, expanded, batch_size)).tolist()
    out, start = [], 0
    for options in candidates:
        out.append(scores[start:start + len(options)])
        start += len(options)
    return out


def evaluate_recommendations(model: LoraCausalLM, rows: Sequence[Example],
                             candidates: dict[str, Any], batch_size: int = 8,
                             generate: bool = False, seed: int = 0) -> dict[str, Any]:
    """HR@1 by likelihood and the target's mean log-likelihood, with 95% bootstrap intervals;
    with ``generate`` also HR@1 by greedy generation and ValidRatio.

    ``candidates`` maps a row id to ``{"candidates": [titles], "target": index}`` (the
    ``candidates.json`` of :func:`eraser_dist.experiments.llara.build_llara`).
    """
    options = [candidates[r.id]["candidates"] for r in rows]
    targets = [candidates[r.id]["target"] for r in rows]
    scores = candidate_scores(model, rows, options, batch_size)
    result = {
        "hit_rate_likelihood": summary([float(hit_by_likelihood(s, t))
                                        for s, t in zip(scores, targets, strict=True)], seed),
        "target_loglik": summary([s[t] for s, t in zip(scores, targets, strict=True)], seed),
    }
    if generate:
        with torch.no_grad():
            texts = [model.generate(r.query, max_new_tokens=24) for r in rows]
        figures = generation_figures(texts, options, targets)
        result["hit_rate_generation"] = summary(figures["hit"], seed)
        result["valid_ratio"] = summary(figures["valid"], seed)
    return result
