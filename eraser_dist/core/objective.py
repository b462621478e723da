"""The training objective over a model whose trainable weights form one flat vector Θ.

:class:`LossModel` is the one abstraction the maths needs (compare kronfluence's ``Task``):
per-example losses L_i(Θ) from a batch of rows, the network outputs z they are computed from,
and the Hessian of the loss with respect to z (for Gauss-Newton). Everything else — gradients,
Hessian-vector products, training, influence — is written once over it, so the same code runs
for a LoRA adapter on an LLM and for a quadratic test model.

The objective of a weighted set of rows {(z_i, w_i)} is

    f(Θ) = (1/W) Σ_i w_i L_i(Θ) + (λ/2)‖Θ‖²,   W = Σ_i w_i.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import EraserError


class LossModel(ABC):
    """A model with trainable parameters Θ (flattened in a fixed order) and per-example losses.

    Subclasses define ``params`` (the trainable tensors, in flat order), ``collate`` (rows →
    batch), ``outputs`` (batch → network outputs z), ``losses`` (z, batch → per-example losses
    [B]) and ``output_hvp`` (the per-example loss Hessian in output space applied to a tangent u).
    """

    params: list[torch.nn.Parameter]

    @abstractmethod
    def collate(self, rows: Sequence[Any]) -> Any:
        """Turn rows (training instances) into one batch for ``outputs``."""

    @abstractmethod
    def outputs(self, batch: Any) -> torch.Tensor:
        """Network outputs z for a batch (e.g. logits [B, T, V])."""

    @abstractmethod
    def losses(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """Per-example losses L_i, shape [B]."""

    @abstractmethod
    def output_hvp(self, outputs: torch.Tensor, batch: Any, tangent: torch.Tensor) -> torch.Tensor:
        """∂²L_i/∂z_i² · u_i for every example i, same shape as ``outputs``."""

    # -- the flat vector Θ -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def compute_dtype(self) -> torch.dtype:
        """Precision of the forward pass; narrower than ``dtype`` under a bf16 base."""
        return self.dtype

    def zeros(self) -> torch.Tensor:
        """A zero vector [d] on the parameters' device, to sum gradients into."""
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)

    def get_flat(self) -> torch.Tensor:
        """Θ as one detached vector [d] (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    @torch.no_grad()
    def set_flat(self, theta: torch.Tensor) -> None:
        """Write a vector [d] into the trainable parameters in place."""
        if theta.numel() != self.dim:
            raise ValueError(f"vector has {theta.numel()} entries, the model has {self.dim}")
        offset = 0
        for p in self.params:
            n = p.numel()
            p.copy_(theta[offset : offset + n].view_as(p).to(p.dtype))
            offset += n

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (None → zeros) into a vector [d]."""
        return torch.cat(
            [
                (torch.zeros_like(p) if t is None else t).reshape(-1)
                for p, t in zip(self.params, tensors, strict=True)
            ]
        )

    def loss_sum(self, batch: Any, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i L_i over one batch (a scalar with a graph to Θ)."""
        losses = self.losses(self.outputs(batch), batch)
        return (weights.to(losses.dtype) * losses).sum()


def batches(
    rows: Sequence[Any], weights: torch.Tensor, batch_size: int
) -> Iterator[tuple[Sequence[Any], torch.Tensor]]:
    """Fixed-order chunks of (rows, weights); the order never depends on a random state."""
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size], weights[start : start + batch_size]


def check_finite(vector: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(vector).all():
        raise EraserError(
            f"{what} contains NaN or inf; the adapter or the data gives a non-finite loss"
        )
    return vector


def gradient_sum(
    model: LossModel, rows: Sequence[Any], weights: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Σ_i w_i ∇_Θ L_i(Θ), a vector [d] in the model's dtype; streamed, never per example."""
    total = model.zeros()
    for chunk, w in batches(rows, weights, batch_size):
        loss = model.loss_sum(model.collate(chunk), w)
        grads = torch.autograd.grad(loss, model.params, allow_unused=True)
        total += model.flatten(grads).detach()
    return check_finite(total, "the gradient")


@torch.no_grad()
def loss_values(model: LossModel, rows: Sequence[Any], batch_size: int) -> torch.Tensor:
    """Per-row losses L_i(Θ), a vector [n] in float64."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = model.collate(rows[start : start + batch_size])
        out.append(model.losses(model.outputs(batch), batch).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def objective_value(
    model: LossModel,
    rows: Sequence[Any],
    weights: torch.Tensor,
    weight_decay: float,
    batch_size: int,
) -> float:
    """f(Θ) = (1/W) Σ w_i L_i + (λ/2)‖Θ‖² as a float."""
    losses = loss_values(model, rows, batch_size)
    w = weights.double()
    theta = model.get_flat().double()
    return float((w * losses).sum() / w.sum() + 0.5 * weight_decay * theta.dot(theta))
