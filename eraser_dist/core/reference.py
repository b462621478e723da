"""Slow, exact reference computations for small models, to check the engine against.

Explicit Hessians by ``torch.func`` on the flattened LoRA vector (independent of the HVP
back-ends) and Newton refinement of a fit to the float32-smooth limit of the model, only
feasible for a few thousand trainable parameters; and the proximal Bregman response, the
objective whose minimiser an influence step estimates, minimised by L-BFGS (any size whose
training set's outputs fit in memory twice). Tests and benchmarks use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..data import Example
from ..llm.models import LoraCausalLM
from .objective import LossModel, batches, gradient_sum
from .requests import EditedObjective


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


@dataclass
class ProximalResponse:
    """The proximal Bregman response found from Θ̂: ``delta`` Θ − Θ̂ [d] float64,
    ``decrease`` P(Θ̂) − P(Θ̂ + delta), ``gradient_ratio`` ‖∇P‖/‖∇P(Θ̂)‖ where L-BFGS
    stopped (‖∇P(Θ̂)‖ = ‖b‖), ``evaluations`` of P and its gradient, and ``seconds``."""

    delta: torch.Tensor
    decrease: float
    gradient_ratio: float
    evaluations: int
    seconds: float


def proximal_objective(
    model: LossModel,
    edited: EditedObjective,
    weight_decay: float,
    damping: float,
    batch_size: int,
) -> Callable[[], torch.Tensor]:
    """P, the proximal Bregman response objective (PBRF) of the request around Θ̂ (the
    model's Θ when called), as a closure: it returns P(Θ) up to a constant at the model's
    Θ and leaves ∇P in the parameters' ``grad`` (an L-BFGS closure).

        P(Θ) = (1/W) Σ_i w_i D_i(Θ) + (δ/2)‖Θ − Θ̂‖²
               + (1/W') [Σ_changed Δw_j L_j(Θ) − (W − W') λ Θ̂ᵀΘ],
        D_i(Θ) = L_i(z_i(Θ)) − L_i(ẑ_i) − ∇_z L_i(ẑ_i)ᵀ(z_i(Θ) − ẑ_i),   ẑ_i = z_i(Θ̂),

    over D's rows and weights w_i (W = Σ w_i, W' = Σ w'_i after the request), δ the
    erase's damping and λ the objective's weight decay. D_i is row i's loss with its
    first-order term in the outputs taken off (for cross-entropy, KL(p̂_i ‖ p_i)), so D's
    fit counts only as far as Θ moves its outputs, while the changed rows count with
    their whole loss.

    Why this: P's gradient at Θ̂ is −b, the erase's changed-rows b, whether Θ̂ minimises f
    or not, and its Hessian there is f's Gauss-Newton matrix over W, plus δ, plus the
    changed rows' own (1/W') Σ Δw_j ∇²L_j. So the erase's step (``hvp`` ``ggn_exact`` on
    all rows, damping δ) is P's Newton step short of that last term. Bae et al. (2022, "If
    influence functions are the answer, then what is the question?") show that influence
    estimates approximate this minimiser rather than retraining; measuring both tells how
    much of an erase's distance from retraining is the step's and how much the target's.

    Keeps ∇_z L_i(ẑ_i) for every row of D ([n, R, V] for an LLM): a reference for small
    training sets.
    """
    anchors = [p.detach().clone() for p in model.params]
    total, total_after = edited.weight_before, edited.weight_after
    tilt = (total - total_after) * weight_decay / total_after
    fitted = []  # per batch of D: the batch, its weights over W, and ∇_z L(ẑ)
    for chunk, w in batches(edited.rows_before, edited.weights_before, batch_size):
        batch = model.collate(chunk)
        with torch.no_grad():
            z_hat = model.outputs(batch)
        z_hat.requires_grad_(True)
        slope = torch.autograd.grad(model.losses(z_hat, batch).sum(), z_hat)[0]
        fitted.append((batch, w.to(slope.dtype) / total, slope))

    def closure() -> torch.Tensor:
        for p in model.params:
            p.grad = None
        value = sum(0.5 * damping * ((p - a) ** 2).sum() - tilt * (a * p).sum()
                    for p, a in zip(model.params, anchors, strict=True))
        value.backward()
        value = value.detach()
        for batch, w, slope in fitted:  # D_i less its constant L_i(ẑ_i) − ∇L_i(ẑ_i)ᵀẑ_i
            z = model.outputs(batch)
            part = (w * (model.losses(z, batch) - (slope * z).reshape(len(w), -1).sum(1))).sum()
            part.backward()
            value = value + part.detach()
        for chunk, dw in batches(edited.changed_rows, edited.weight_changes, batch_size):
            part = model.loss_sum(model.collate(chunk), dw) / total_after
            part.backward()
            value = value + part.detach()
        return value

    return closure


def proximal_response(
    model: LossModel,
    objective: Callable[[], torch.Tensor],
    max_iter: int = 100,
    tol: float = 1e-6,
) -> ProximalResponse:
    """argmin P near Θ̂ (``objective``, built at Θ̂ by :func:`proximal_objective`; Θ̂ is the
    model's Θ on entry, where it is left), by L-BFGS from Θ̂ until ‖∇P‖∞ ≤
    ``tol``·‖∇P(Θ̂)‖∞ or ``max_iter`` iterations.

    With a strong-Wolfe line search, which keeps the iterates safe where P is not convex (a
    removal's −L_j). Where that search stalls before ``max_iter``, L-BFGS goes on with unit
    quasi-Newton steps that read the gradient only, kept if they lower ‖∇P‖: the line
    search compares values of P, and a model that computes in float32 (RMSNorm and softmax
    in a float64 Llama too) has P only to about 1e-7 of its loss, which near the minimiser
    is more than P still falls.
    """
    start = time.perf_counter()
    theta_hat = model.get_flat()
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        return objective()

    def gradient() -> torch.Tensor:
        """∇P where ``closure`` last ran."""
        return model.flatten([p.grad for p in model.params]).detach().double()

    start_value = float(closure())
    start_gradient = gradient()
    first = max(float(start_gradient.norm()), 1e-300)
    stop = tol * float(start_gradient.abs().max())

    def lbfgs(line_search: str | None) -> tuple[int, float, float]:
        """(iterations run, P and ‖∇P‖/‖∇P(Θ̂)‖ where they ended)."""
        optimizer = torch.optim.LBFGS(
            model.params, lr=1.0, max_iter=max_iter, tolerance_grad=stop,
            tolerance_change=0.0, history_size=20, line_search_fn=line_search)
        optimizer.step(closure)
        value = float(closure())
        return optimizer.state[model.params[0]]["n_iter"], value, float(gradient().norm()) / first

    iterations, value, ratio = lbfgs("strong_wolfe")
    if iterations < max_iter and ratio > tol:
        searched = model.get_flat()
        _, polished_value, polished = lbfgs(None)
        if polished < ratio:
            value, ratio = polished_value, polished
        else:
            model.set_flat(searched)
    delta = model.get_flat().double() - theta_hat.double()
    model.set_flat(theta_hat)
    for p in model.params:
        p.grad = None
    return ProximalResponse(delta, start_value - value, ratio, evaluations,
                            time.perf_counter() - start)
