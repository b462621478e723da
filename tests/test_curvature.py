"""Each HVP back-end against an explicit matrix built independently with torch.func."""

import torch
from conftest import tiny_lora, word_rows

from eraser_dist.core.curvature import (
    exact_hvp,
    fd_hvp,
    fisher_diagonal,
    ggn_hvp,
    hessian_vector_product,
)
from eraser_dist.core.objective import gradient_sum
from eraser_dist.core.reference import explicit_gauss_newton, explicit_hessian, flat_loss_fn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_exact_and_fd_hvp_match_explicit_hessian(tiny_float32):
    model = tiny_float32
    rows = word_rows(6)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0], dtype=torch.float64)
    hessian = explicit_hessian(model, rows, weights)
    theta = model.get_flat()
    for seed in range(3):
        v = torch.randn(model.dim, generator=torch.Generator().manual_seed(seed))
        reference = hessian @ v
        assert rel_err(exact_hvp(model, rows, weights, v, batch_size=4), reference) <= 1e-5
        assert rel_err(fd_hvp(model, rows, weights, v, batch_size=4), reference) <= 1e-3
    assert torch.equal(model.get_flat(), theta)  # the shifts were undone


def test_ggn_matches_explicit_jacobian_form(tiny_float32):
    model = tiny_float32
    rows = word_rows(3)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    batch = model.collate(rows)
    shapes = [p.shape for p in model.params]

    def logits_of(theta):
        params, offset = {}, 0
        for name, shape in zip(model.names, shapes, strict=True):
            params[name] = theta[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return torch.func.functional_call(
            model.peft_model, params, (), model.model_inputs(batch)).logits

    theta = model.get_flat()
    jacobian = torch.func.jacrev(logits_of)(theta)  # [B, R, V, d]: the scored positions
    jacobian = jacobian.reshape(-1, model.dim)
    logits = logits_of(theta).detach()

    def loss_of_logits(z):
        return (weights.float() * model.losses(z, batch)).sum()

    def reference_ggn(v):
        jv = (jacobian @ v).view_as(logits)
        _, hjv = torch.func.jvp(torch.func.grad(loss_of_logits), (logits,), (jv,))
        return jacobian.T @ hjv.reshape(-1)

    u = torch.randn(model.dim, generator=torch.Generator().manual_seed(0))
    v = torch.randn(model.dim, generator=torch.Generator().manual_seed(1))
    gv = ggn_hvp(model, rows, weights, v, batch_size=2)
    gu = ggn_hvp(model, rows, weights, u, batch_size=2)
    assert rel_err(gv, reference_ggn(v)) <= 1e-3
    # Symmetric and positive semi-definite, unlike the exact Hessian here.
    assert abs(float(u @ gv) - float(v @ gu)) <= 1e-3 * abs(float(u @ gv))
    assert float(v @ gv) > 0 and float(u @ gu) > 0
    hessian_v = explicit_hessian(model, rows, weights) @ v
    assert rel_err(gv, hessian_v) > 0.05  # it is a different matrix (no residual term)


def test_flat_reference_is_the_engine_loss(tiny_float32):
    """Guards the helper above: its value is the engine's Σ w_i L_i."""
    rows = word_rows(4)
    weights = torch.ones(4, dtype=torch.float64)
    f = flat_loss_fn(tiny_float32, rows, weights)
    engine = tiny_float32.loss_sum(tiny_float32.collate(rows), weights)
    assert abs(float(f(tiny_float32.get_flat())) - float(engine)) < 1e-5


def test_fd_hvp_with_a_bf16_base_stays_within_bf16_noise_of_fp32(tiny_float32):
    """LoRA in fp32 on a bf16 base: the step rule for a narrow compute dtype keeps the error
    near the bf16 floor (the bf16 model's own exact HVP is 2% off here); the fp32 rule
    (0.15·ε^(1/3) per weight) is several times worse."""
    from conftest import tiny_lora

    from eraser_dist.core.curvature import default_fd_step

    bf16 = tiny_lora(torch.bfloat16)
    assert bf16.dtype == torch.float32 and bf16.compute_dtype == torch.bfloat16
    bf16.set_flat(tiny_float32.get_flat())
    rows = word_rows(8)
    weights = torch.ones(len(rows), dtype=torch.float64)
    v = torch.randn(bf16.dim, generator=torch.Generator().manual_seed(0))
    reference = exact_hvp(tiny_float32, rows, weights, v, batch_size=8)
    step = default_fd_step(bf16, v)
    assert step > 4 * default_fd_step(tiny_float32, v)  # a wider step than fp32's
    error = rel_err(fd_hvp(bf16, rows, weights, v, batch_size=8), reference)
    eps_third = torch.finfo(torch.bfloat16).eps ** (1 / 3)
    fp32_step = 0.15 * eps_third * bf16.dim**0.5 / float(v.norm())
    fp32_rule = rel_err(fd_hvp(bf16, rows, weights, v, batch_size=8, step=fp32_step), reference)
    print(f"bf16 base: fd HVP error {error:.3g} (fp32 step rule {fp32_rule:.3g})")
    assert error <= 0.07
    assert fp32_rule > 2 * error


def test_fisher_diagonal_sums_each_rows_squared_gradient(tiny_float32):
    """Σ_i w_i ∇L_i ⊙ ∇L_i from one gradient per row, not the square of a batch's gradient;
    a weight-0 row (a rank's padding) adds nothing."""
    model = tiny_float32
    rows = word_rows(4)
    weights = torch.tensor([1.0, 2.0, 0.0, 0.5], dtype=torch.float64)
    expected = torch.zeros(model.dim, dtype=torch.float64)
    for row, w in zip(rows, weights, strict=True):
        loss = model.losses(model.outputs(model.collate([row])), model.collate([row])).sum()
        grad = model.flatten(torch.autograd.grad(loss, model.params, allow_unused=True))
        expected += w * grad.double() ** 2
    found = fisher_diagonal(model, rows, weights)
    assert found.dtype == torch.float64 and rel_err(found, expected) <= 1e-6
    batch_gradient = gradient_sum(model, rows, weights, batch_size=4).double()
    assert rel_err(batch_gradient**2, expected) > 0.1


def test_exact_gauss_newton_product_is_the_dense_matrix_and_symmetric():
    """ggn_exact: the Gauss-Newton product with Jv by double backward equals Jᵀ H_z J
    formed from the logits' Jacobian (torch.func) to float32 rounding, and so is symmetric,
    where the finite-difference ggn is off by more (its truncation and rounding)."""
    torch.manual_seed(3)
    model = tiny_lora(torch.float64, rank=1, targets=("q_proj",))
    with torch.no_grad():
        for p in model.params:
            p.normal_(0, 0.3)
    rows = word_rows(6)
    weights = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    dense = explicit_gauss_newton(model, rows, weights)
    exact = hessian_vector_product("ggn_exact", model, rows, weights, 4)
    fd = hessian_vector_product("ggn", model, rows, weights, 4)
    g = torch.Generator().manual_seed(5)
    u, v = (torch.randn(model.dim, dtype=torch.float64, generator=g) for _ in range(2))
    # transformers keeps softmax and RMSNorm in float32 even in a float64 model: 1e-7
    exact_error = float((exact(v) - dense @ v).norm() / (dense @ v).norm())
    assert exact_error < 1e-6
    assert abs(float(u @ exact(v) - v @ exact(u))) < 1e-6 * float((dense @ v).norm())
    assert float((fd(v) - dense @ v).norm() / (dense @ v).norm()) > 10 * exact_error
