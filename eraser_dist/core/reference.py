"""Slow, exact reference computations for small models, to check the engine against.

Explicit Hessians by ``torch.func`` on the flattened LoRA vector (independent of the HVP
back-ends) and Newton refinement of a fit to the float32-smooth limit of the model. Only
feasible for a few thousand trainable parameters; tests and benchmarks use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import Example
from ..llm.models import LoraCausalLM
from .objective import gradient_sum


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two parameter changes, in float64 (0 when either is zero)."""
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def flat_outputs_fn(model: LoraCausalLM, batch):
    """θ [d] ↦ the logits of ``batch`` as a pure function (torch.func.functional_call)."""
    shapes = [p.shape for p in model.params]

    def f(theta):
        params, offset = {}, 0
        for name, shape in zip(model.names, shapes, strict=True):
            params[name] = theta[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return torch.func.functional_call(
            model.peft_model, params, (), model.model_inputs(batch)).logits

    return f


def flat_loss_fn(model: LoraCausalLM, rows: Sequence[Example], weights: torch.Tensor):
    """θ [d] ↦ Σ w_i L_i(θ) as a pure function."""
    batch = model.collate(rows)
    outputs = flat_outputs_fn(model, batch)

    def f(theta):
        logits = outputs(theta)
        return (weights.to(logits.dtype) * model.losses(logits, batch)).sum()

    return f


def explicit_gauss_newton(model: LoraCausalLM, rows, weights) -> torch.Tensor:
    """Σ_i w_i J_iᵀ H_z,i J_i as a dense [d, d] matrix: the logits' Jacobian by
    ``torch.func.jacrev`` (not the finite difference the ``ggn`` product uses), and the
    loss's Hessian in logit space applied to each of its d columns."""
    batch = model.collate(rows)
    theta = model.get_flat()
    jacobian = torch.func.jacrev(flat_outputs_fn(model, batch))(theta)  # [B, T, V, d]
    with torch.no_grad():
        outputs = flat_outputs_fn(model, batch)(theta)
        columns = torch.stack([model.output_hvp(outputs, batch, jacobian[..., j])
                               for j in range(theta.numel())], -1)
    w = weights.to(jacobian.dtype).view(-1, *([1] * (jacobian.dim() - 1)))
    return torch.einsum("...i,...j->ij", w * jacobian, columns)


def explicit_hessian(model: LoraCausalLM, rows, weights) -> torch.Tensor:
    """∇²_θ Σ w_i L_i as a dense [d, d] matrix."""
    return torch.func.hessian(flat_loss_fn(model, rows, weights))(model.get_flat())


def objective_gradient(model, rows, weights, weight_decay) -> torch.Tensor:
    """∇f = (1/W) Σ w_i ∇L_i + λΘ, float64 [d]."""
    g = gradient_sum(model, rows, weights, 16).double() / float(weights.sum())
    return g + weight_decay * model.get_flat().double()


def newton_polish(model, rows, weights, weight_decay, steps: int = 4) -> float:
    """Full Newton steps with the explicit Hessian of f; returns the final ‖∇f‖.

    A line search cannot resolve the objective below its float32 rounding; Newton steps
    converge on the gradient instead, to about 1e-7 here. The step is taken only in the
    Hessian's range: a LoRA of rank r ≥ 2 has an exact symmetry (A → RA, B → BRᵀ for any
    rotation R of the rank space leaves BA and ‖A‖² + ‖B‖² unchanged), so ∇²f is singular
    along its generators, and inverting the rounding noise of g there would send Θ far along
    the valley of equal solutions.
    """
    total = float(weights.sum())
    eye = torch.eye(model.dim, dtype=torch.float64)
    for _ in range(steps):
        g = objective_gradient(model, rows, weights, weight_decay)
        h = explicit_hessian(model, rows, weights) / total + weight_decay * eye
        eigenvalues, vectors = torch.linalg.eigh(h)
        keep = eigenvalues.abs() > 1e-7 * eigenvalues.abs().max()
        inverse = torch.where(keep, 1.0 / eigenvalues, torch.zeros_like(eigenvalues))
        model.set_flat(model.get_flat().double() - vectors @ (inverse * (vectors.T @ g)))
    return float(objective_gradient(model, rows, weights, weight_decay).norm())
