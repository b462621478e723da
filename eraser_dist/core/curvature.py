"""Hessian-vector products of the data term Σ_i w_i ∇²L_i(Θ) · v, four back-ends.

- ``exact``: double backward (Pearlmutter). Exact, but needs every op to have a
  double-backward formula (eager attention, not SDPA) and fails under ZeRO-3, where the
  partitioned base weights are released before the second backward.
- ``fd``: central difference of gradients, (g(Θ+hv) − g(Θ−hv)) / 2h. Two first-order passes,
  so it runs wherever gradients run (ZeRO-3 included); error O(h²) + rounding/h.
- ``ggn``: Gauss-Newton Jᵀ H_z J v, positive semi-definite. Jv by a central difference of
  the outputs (forward passes only), H_z analytic, Jᵀ(·) by one backward; also ZeRO-3-safe.
  On a real model the difference's error shows (docs/RESULTS.md, "Curvature index").
- ``ggn_exact``: the same matrix with Jv exact by the double-backward trick
  (:func:`ggn_exact_hvp`): symmetric to rounding; like ``exact``, one process only.

Each returns Σ_i w_i (∇²L_i) v as a vector [d] in the model's dtype, unnormalised; the
caller divides by W and adds damping. Θ is always restored, also when a pass raises.

:func:`fisher_diagonal` is a cheap diagonal estimate of the same curvature, CG's
preconditioner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..arguments import HVP_KINDS
from ..errors import EraserError
from .objective import LossModel, batches, check_finite, gradient_sum

HessianVectorProduct = Callable[[torch.Tensor], torch.Tensor]


def default_fd_step(model: LossModel, v: torch.Tensor) -> float:
    """h such that hv moves each of the d weights by 0.15·ε^(1/3) (RMS; bf16 base: below).

    ε^(1/3) balances the O(h²) truncation of a central difference against the O(ε/h)
    rounding of the two passes it subtracts; ε is the dtype's, but never below float32's
    (transformers runs attention softmax, RMSNorm and rotary embeddings in float32 even in a
    float64 model), and it is the forward pass's when that is narrower (a bf16 base: the LoRA
    output is rounded to bf16 where it joins the base layer's). The shift is per weight, so
    it grows as √d: a fixed total length was too small for a large adapter. The errors each
    rule measured: docs/RESULTS.md, "fd step" and "bf16 base"; docs/DESIGN.md §2.2.
    """
    eps = max(torch.finfo(d).eps for d in (model.dtype, model.compute_dtype, torch.float32))
    if torch.finfo(model.compute_dtype).eps > torch.finfo(torch.float32).eps:
        # A bf16 base: the fp32 rule overshoots, and the best step grew with the weights
        # (bench/bf16_hvp.py against the fp32 model's exact HVP; docs/RESULTS.md, bf16 base).
        rms = float(model.get_flat().double().norm()) / math.sqrt(model.dim)
        per_weight = max(0.06 * eps ** (1.0 / 3.0), 0.03 * rms)
    else:
        per_weight = 0.15 * eps ** (1.0 / 3.0)
    shift = per_weight * math.sqrt(model.dim)
    return shift / max(float(v.double().norm()), 1e-30)


@contextmanager
def shifted(model: LossModel, theta: torch.Tensor, direction: torch.Tensor, step: float):
    """Temporarily set Θ ← theta + step·direction; restores theta on exit."""
    model.set_flat(theta + step * direction)
    try:
        yield
    finally:
        model.set_flat(theta)


def exact_hvp(
    model: LossModel, rows: Sequence[Any], weights: torch.Tensor, v: torch.Tensor, batch_size: int
) -> torch.Tensor:
    total = model.zeros()
    for chunk, w in batches(rows, weights, batch_size):
        loss = model.loss_sum(model.collate(chunk), w)
        grads = torch.autograd.grad(loss, model.params, create_graph=True, allow_unused=True)
        grad = model.flatten(grads)
        try:
            hv = torch.autograd.grad(grad @ v, model.params, allow_unused=True)
        except RuntimeError as err:
            raise EraserError(
                f"exact HVP failed ({err}); the model has an op without a double-backward "
                "formula (use eager attention) or its base is partitioned: use --hvp fd or ggn"
            ) from err
        total += model.flatten(hv).detach()
    return total


def fd_hvp(
    model: LossModel,
    rows: Sequence[Any],
    weights: torch.Tensor,
    v: torch.Tensor,
    batch_size: int,
    step: float | None = None,
) -> torch.Tensor:
    h = step if step is not None else default_fd_step(model, v)
    theta = model.get_flat()
    with shifted(model, theta, v, h):
        plus = gradient_sum(model, rows, weights, batch_size)
    with shifted(model, theta, v, -h):
        minus = gradient_sum(model, rows, weights, batch_size)
    return (plus - minus) / (2 * h)


def ggn_hvp(
    model: LossModel,
    rows: Sequence[Any],
    weights: torch.Tensor,
    v: torch.Tensor,
    batch_size: int,
    step: float | None = None,
) -> torch.Tensor:
    h = step if step is not None else default_fd_step(model, v)
    theta = model.get_flat()
    total = model.zeros()
    for chunk, w in batches(rows, weights, batch_size):
        batch = model.collate(chunk)
        with torch.no_grad():
            with shifted(model, theta, v, h):
                plus = model.outputs(batch)
            with shifted(model, theta, v, -h):
                minus = model.outputs(batch)
            jv = (plus - minus) / (2 * h)
        outputs = model.outputs(batch)
        w_shape = (-1,) + (1,) * (outputs.dim() - 1)
        hjv = model.output_hvp(outputs.detach(), batch, jv) * w.to(outputs.dtype).view(w_shape)
        grads = torch.autograd.grad((outputs * hjv).sum(), model.params, allow_unused=True)
        total += model.flatten(grads).detach()
    return total


def ggn_exact_hvp(
    model: LossModel, rows: Sequence[Any], weights: torch.Tensor, v: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Σ_i w_i J_iᵀ H_z,i J_i v with J v exact: Jᵀu is linear in a dummy u, so the gradient
    of (Jᵀu)·v with respect to u is J v (two backward passes, one of them double), then
    H_z analytic and Jᵀ(·) by one more backward over the same forward pass."""
    total = model.zeros()
    for chunk, w in batches(rows, weights, batch_size):
        batch = model.collate(chunk)
        outputs = model.outputs(batch)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        pulled = torch.autograd.grad(outputs, model.params, grad_outputs=dummy,
                                     create_graph=True, allow_unused=True)
        try:
            jv = torch.autograd.grad(model.flatten(pulled) @ v, dummy, retain_graph=True)[0]
        except RuntimeError as err:
            raise EraserError(
                f"the ggn_exact product failed ({err}); it needs double backward: use "
                "eager attention, or --hvp ggn on a partitioned base") from err
        w_shape = (-1,) + (1,) * (outputs.dim() - 1)
        hjv = model.output_hvp(outputs.detach(), batch, jv.detach()) * w.to(
            outputs.dtype).view(w_shape)
        grads = torch.autograd.grad(outputs, model.params, grad_outputs=hjv, allow_unused=True)
        total += model.flatten(grads).detach()
    return total


def hessian_vector_product(
    kind: str,
    model: LossModel,
    rows: Sequence[Any],
    weights: torch.Tensor,
    batch_size: int,
    fd_step: float | None = None,
) -> HessianVectorProduct:
    """v ↦ Σ_i w_i ∇²L_i v (or its Gauss-Newton form) over the given rows, by ``kind``."""
    if kind not in HVP_KINDS:  # "auto" is resolved by the caller, by where the model lives
        raise EraserError(f"unknown HVP back-end {kind!r}; choose one of {', '.join(HVP_KINDS)}")

    def product(v: torch.Tensor) -> torch.Tensor:
        v = v.to(model.device, model.dtype)
        if kind == "exact":
            out = exact_hvp(model, rows, weights, v, batch_size)
        elif kind == "fd":
            out = fd_hvp(model, rows, weights, v, batch_size, fd_step)
        elif kind == "ggn_exact":
            out = ggn_exact_hvp(model, rows, weights, v, batch_size)
        else:
            out = ggn_hvp(model, rows, weights, v, batch_size, fd_step)
        return check_finite(out, "a Hessian-vector product")

    return product


def fisher_diagonal(model: LossModel, rows: Sequence[Any], weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i ∇L_i ⊙ ∇L_i [d] float64 (on the model's device): the diagonal of the empirical
    Fisher, unnormalised.

    Near a fitted Θ̂ it approximates the diagonal of the Gauss-Newton matrix, within a
    small factor, which is all a preconditioner needs. One gradient per row (batch 1:
    a batch's gradient would square the sum, not sum the squares), so it costs about one
    CG iteration's products. Rows of weight 0 (a rank's padding) add nothing but still run:
    under ZeRO-3 every rank of a group must make the same passes.
    """
    total = torch.zeros(model.dim, dtype=torch.float64, device=model.device)
    one = torch.ones(1)
    for row, w in zip(rows, weights, strict=True):
        total += float(w) * gradient_sum(model, [row], one, 1).double().square()
    return total
