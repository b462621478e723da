"""Fitting the adapter: minibatch Adam (the product's fine-tuning) and full-batch L-BFGS.

Both minimise f(Θ) = (1/W) Σ w_i L_i(Θ) + (λ/2)‖Θ‖² over any :class:`LossModel`, so the
same code fine-tunes the LLM adapter, retrains it on edited data for comparison, and fits
the small test models to convergence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..arguments import TrainArguments
from ..core.objective import LossModel, batches
from ..errors import EraserError


def l2_term(model: LossModel, weight_decay: float) -> torch.Tensor:
    return 0.5 * weight_decay * sum((p * p).sum() for p in model.params)


def train_adam(
    model: LossModel, rows: Sequence[Any], args: TrainArguments, progress: bool = True
) -> list[float]:
    """Adam over shuffled minibatches (seeded), at a constant rate or decaying linearly to 0
    (``args.lr_schedule``); returns the mean objective of each epoch."""
    if not rows:
        raise EraserError("cannot train on an empty training set")
    optimizer = torch.optim.Adam(model.params, lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * math.ceil(len(rows) / args.batch_size)
    linear = args.lr_schedule == "linear"
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 - step / steps if linear else 1.0)
    history = []
    with tqdm(total=steps, desc="train", disable=not progress, leave=False) as bar:
        for _ in range(args.epochs):
            order = torch.randperm(len(rows), generator=generator).tolist()
            shuffled = [rows[i] for i in order]
            total = 0.0
            ones = torch.ones(len(rows))
            for chunk, w in batches(shuffled, ones, args.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss_sum(model.collate(chunk), w) / len(chunk)
                objective = loss + l2_term(model, args.weight_decay)
                if not torch.isfinite(objective):
                    raise EraserError("training diverged (non-finite loss); lower --lr")
                objective.backward()
                optimizer.step()
                schedule.step()
                total += objective.item() * len(chunk)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            history.append(total / len(rows))
    return history


def fit_lbfgs(
    model: LossModel,
    rows: Sequence[Any],
    weights: torch.Tensor,
    weight_decay: float,
    *,
    batch_size: int = 64,
    max_iter: int = 500,
    grad_tol: float = 1e-9,
) -> float:
    """Full-batch L-BFGS with strong-Wolfe line search to ‖∇f‖∞ ≤ grad_tol; returns ‖∇f‖₂."""
    optimizer = torch.optim.LBFGS(
        model.params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=grad_tol,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    total_weight = float(weights.sum())

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = l2_term(model, weight_decay)
        value.backward()
        value = value.detach()
        for chunk, w in batches(rows, weights, batch_size):
            loss = model.loss_sum(model.collate(chunk), w) / total_weight
            loss.backward()
            value = value + loss.detach()
        return value

    optimizer.step(closure)
    closure()
    return float(model.flatten([p.grad for p in model.params]).double().norm())
