"""The proximal Bregman response (``core.reference.proximal_response``): the objective whose
minimiser an influence step estimates, against its closed form on a quadratic loss and
against the erase's own step on a real LoRA at an ε-edit."""

from __future__ import annotations

import pytest
import torch
from conftest import QuadraticModel, down_weighted, regression_rows, tiny_lora, word_rows

from eraser_dist.arguments import EraseArguments
from eraser_dist.core.influence import newton_rhs, newton_step
from eraser_dist.core.reference import proximal_objective, proximal_response
from eraser_dist.core.requests import apply_request, parse_request

WEIGHT_DECAY, DAMPING = 0.05, 0.2


@pytest.mark.parametrize("request_json", [
    {"kind": "remove", "ids": ["q3", "q11"]},
    {"kind": "correct_response", "edits": [{"id": "q5", "response": "4.5"}]}],
    ids=lambda r: r["kind"])
def test_on_a_quadratic_loss_the_proximal_response_is_its_closed_form(request_json):
    """Least squares with linear outputs: D_i = ½(z_i − ẑ_i)², so P is quadratic with
    Hessian XᵀWX/W + δ + Σ Δw_j x_j x_jᵀ/W' and gradient −b at Θ̂, and its minimiser is one
    solve. Θ̂ is off f's minimum, so dropping D's first-order term would show."""
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    theta_hat = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    model.set_flat(theta_hat)
    edited = apply_request(parse_request(request_json), rows)
    objective = proximal_objective(model, edited, WEIGHT_DECAY, DAMPING, batch_size=8)
    found = proximal_response(model, objective, max_iter=200, tol=1e-12)
    x_before = model.collate(edited.rows_before)[0]
    x_changed = model.collate(edited.changed_rows)[0]
    hessian = (x_before.T @ (edited.weights_before[:, None] * x_before) / edited.weight_before
               + DAMPING * torch.eye(5, dtype=torch.float64)
               + x_changed.T @ (edited.weight_changes[:, None] * x_changed)
               / edited.weight_after)
    b = newton_rhs(model, edited, WEIGHT_DECAY, batch_size=8).sum(0)
    expected = torch.linalg.solve(hessian, b)
    assert torch.allclose(found.delta, expected, rtol=1e-7, atol=1e-10)
    assert found.gradient_ratio <= 1e-8
    assert torch.equal(model.get_flat(), theta_hat)  # Θ̂ is left as it was
    # a quadratic falls by ½ bᵀΔ to its minimiser
    assert found.decrease == pytest.approx(0.5 * float(b @ expected), rel=1e-6)


@pytest.fixture(scope="module")
def lora_off_its_fit():
    """A real LoRA (cross-entropy over masked tokens) moved off its initialisation, so off
    any fit's minimum, with the rows of its objective."""
    torch.manual_seed(1)
    model = tiny_lora(torch.float64)
    model.set_flat(model.get_flat() + 0.3 * torch.randn(model.dim, dtype=torch.float64))
    return model, word_rows(8)


REQUESTS = [{"kind": "remove", "ids": ["r2", "r6"]},
            {"kind": "correct_response", "edits": [{"id": "r2", "response": "xyz"}]}]


@pytest.mark.parametrize("request_json", REQUESTS, ids=lambda r: r["kind"])
def test_the_proximal_objective_falls_along_b_at_theta_hat_wherever_theta_hat_is(
        lora_off_its_fit, request_json):
    """∇P(Θ̂) = −b, the erase's changed-rows b, though ∇f(Θ̂) ≠ 0: D_i's gradient vanishes
    at Θ̂ and the changed rows are weighted by Δw/W' with the removed weight's λΘ̂ term."""
    model, rows = lora_off_its_fit
    theta_hat = model.get_flat()
    edited = apply_request(parse_request(request_json), rows)
    proximal_objective(model, edited, WEIGHT_DECAY, DAMPING, batch_size=3)()
    gradient = model.flatten([p.grad for p in model.params]).detach()
    b = newton_rhs(model, edited, WEIGHT_DECAY, batch_size=3).sum(0)
    # to the rounding of tiny-llama's float32 RMSNorm; a D_i with its first-order term left
    # in would add ∇f(Θ̂), and W for W' the removed rows' share of b
    assert float((gradient + b).norm() / b.norm()) <= 1e-6
    assert torch.equal(model.get_flat(), theta_hat)


def test_at_an_eps_edit_the_proximal_response_is_the_gauss_newton_erase_step(lora_off_its_fit):
    """To first order in the edit's weight ε, P's minimiser is its Newton step, which is
    the erase's with the exact Gauss-Newton product on all rows and damping δ: the changed
    rows' own curvature and P's third derivatives enter at O(ε²), so the gap relative to
    the step grows as ε."""
    model, rows = lora_off_its_fit
    theta_hat = model.get_flat()
    steps = {}
    for eps in (1e-3, 1e-2):
        edited = down_weighted(rows, REQUESTS[1], eps)
        objective = proximal_objective(model, edited, WEIGHT_DECAY, DAMPING, batch_size=8)
        found = proximal_response(model, objective, tol=1e-8)
        assert found.gradient_ratio <= 1e-6
        assert torch.equal(model.get_flat(), theta_hat)
        args = EraseArguments(hvp="ggn_exact", hessian_samples=None, damping=DAMPING,
                              tol=1e-12, max_iter=200, step_control="none")
        step = newton_step(model, edited, WEIGHT_DECAY, args, progress=False).delta
        steps[eps] = float((found.delta - step).norm() / step.norm())
    assert steps[1e-3] <= 1e-3
    assert 8 <= steps[1e-2] / steps[1e-3] <= 12  # the gap is first order in ε
