"""Influence against closed forms and against retraining."""

from types import SimpleNamespace

import pytest
import torch
from conftest import (
    QuadraticModel,
    down_weighted,
    regression_rows,
    ridge_solution,
    tiny_lora,
    word_rows,
)

from eraser_dist.arguments import EraseArguments
from eraser_dist.core.influence import newton_rhs, newton_step
from eraser_dist.core.objective import gradient_sum, loss_values
from eraser_dist.core.reference import cosine, explicit_hessian, newton_polish
from eraser_dist.core.requests import (
    EditedObjective,
    apply_request,
    apply_requests,
    parse_request,
)
from eraser_dist.data import Example
from eraser_dist.errors import EraserError
from eraser_dist.llm.train import fit_lbfgs

WEIGHT_DECAY = 0.05


# -- quadratic loss: influence is exact --------------------------------------------------

QUADRATIC_REQUESTS = [
    {"kind": "remove", "ids": ["q3", "q7", "q11"]},
    {"kind": "modify_query", "edits": [{"id": "q2", "query": "0.5,-1.0,2.0,0.25,1.5"}]},
    {"kind": "correct_response", "edits": [{"id": "q4", "response": "3.75"},
                                           {"id": "q9", "response": "-2.5"}]},
]


@pytest.mark.parametrize("preconditioner", ["none", "fisher_diagonal"])
@pytest.mark.parametrize("hvp", ["exact", "fd", "ggn"])
@pytest.mark.parametrize("request_json", QUADRATIC_REQUESTS, ids=lambda r: r["kind"])
def test_erase_is_exact_for_a_quadratic_loss(request_json, hvp, preconditioner):
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    edited = apply_request(parse_request(request_json), rows)
    # Exact for a quadratic needs H_new: the Hessian of the data the retrained optimum sees.
    args = EraseArguments(hvp=hvp, curvature="edited", tol=1e-13, max_iter=50,
                          preconditioner=preconditioner)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    erased = model.get_flat() + result.delta
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)
    assert result.cg.converged and not result.cg.negative_curvature
    assert float((erased - retrained).norm() / retrained.norm()) <= 1e-6
    # The paper's b = Σ_S G / n (no kλΘ̂, no 1/(n−k)) is measurably off for removals.
    if request_json["kind"] == "remove":
        paper_b = gradient_sum(model, edited.changed_rows, -edited.weight_changes, 8) / len(rows)
        assert float((paper_b - _rhs(model, edited)).norm()) > 1e-3 * float(paper_b.norm())


@pytest.mark.parametrize("hvp", ["exact", "ggn"])
def test_all_rows_gradient_makes_the_step_exact_from_short_of_the_minimum(hvp):
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    optimum = ridge_solution(model, rows, WEIGHT_DECAY)
    # training stopped short of the minimum: ∇f(Θ̂) ≠ 0
    theta_hat = optimum + 0.3 * torch.randn(5, generator=torch.Generator().manual_seed(3),
                                            dtype=torch.float64)
    model.set_flat(theta_hat)
    edited = apply_requests([parse_request(r) for r in QUADRATIC_REQUESTS[:2]], rows)
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)

    def step(gradient):
        args = EraseArguments(hvp=hvp, curvature="edited", tol=1e-13, max_iter=50,
                              gradient=gradient)
        return newton_step(model, edited, WEIGHT_DECAY, args, progress=False)

    full, shortcut = step("all_rows"), step("changed_rows")
    assert float((theta_hat + full.delta - retrained).norm() / retrained.norm()) <= 1e-6
    # The shortcut keeps training's shortfall.
    assert float((theta_hat + shortcut.delta - retrained).norm() / retrained.norm()) > 1e-2
    assert shortcut.stationarity is None
    # Each request's own part is the shortcut's; the rest is H_new⁻¹ of −(W/W')∇f(Θ̂).
    assert full.parts.shape == (2, 5)
    assert torch.allclose(full.parts, shortcut.parts, atol=1e-9)
    x, y = model.collate(edited.rows_after)
    h_new = x.T @ x / len(x) + WEIGHT_DECAY * torch.eye(5, dtype=torch.float64)
    x, y = model.collate(rows)
    grad_f = x.T @ (x @ theta_hat - y) / len(rows) + WEIGHT_DECAY * theta_hat
    expected = torch.linalg.solve(h_new, -grad_f * len(rows) / len(edited.rows_after))
    assert torch.allclose(full.stationarity, expected, atol=1e-9)
    assert full.stationarity_rhs_norm == pytest.approx(
        float(grad_f.norm()) * len(rows) / len(edited.rows_after))
    assert torch.allclose(full.parts.sum(0) + full.stationarity, full.delta, atol=1e-9)
    assert torch.equal(model.get_flat(), theta_hat)


@pytest.mark.parametrize("request_json", QUADRATIC_REQUESTS[:2], ids=lambda r: r["kind"])
def test_stages_follow_the_path_of_optima(request_json):
    """Each stage starts at f_t's optimum when the one before was exact: with H_new every
    stage is (the quadratic's Newton step is exact for any Θ), and with the original H the
    error of the path shrinks as the stages get shorter."""
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    theta_hat = ridge_solution(model, rows, WEIGHT_DECAY)
    model.set_flat(theta_hat)
    edited = apply_request(parse_request(request_json), rows)
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)

    def error(curvature, stages):
        args = EraseArguments(hvp="exact", curvature=curvature, tol=1e-13, max_iter=50,
                              stages=stages, step_control="none")  # the path's own steps
        result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
        assert torch.equal(model.get_flat(), theta_hat)
        assert len(result.stages) == (stages if stages > 1 else 0)
        assert result.parts.sum(0).allclose(result.delta, atol=1e-12)
        return float((theta_hat + result.delta - retrained).norm() / retrained.norm())

    assert error("edited", 3) <= 1e-9
    one, three, nine = error("original", 1), error("original", 3), error("original", 9)
    assert one > 1e-3 and three < 0.6 * one and nine < 0.6 * three


def test_stages_refuse_all_rows_gradient():
    for settings, message in (({"stages": 2, "gradient": "all_rows"}, "changed_rows"),
                              ({"stages": 0}, "at least 1, got 0")):
        with pytest.raises(EraserError, match=message):
            EraseArguments(**settings)


def _rhs(model, edited):
    return newton_rhs(model, edited, WEIGHT_DECAY, 8).sum(0)


@pytest.mark.parametrize("preconditioner", ["none", "fisher_diagonal"])
def test_least_residual_step_is_the_best_vector_of_cgs_krylov_space(preconditioner):
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    edited = apply_request(parse_request(QUADRATIC_REQUESTS[0]), rows)

    def step(kind, iterations):
        args = EraseArguments(hvp="exact", tol=1e-13, max_iter=iterations, step=kind,
                              preconditioner=preconditioner)
        return newton_step(model, edited, WEIGHT_DECAY, args, progress=False)

    x, _ = model.collate(rows)
    a = x.T @ x / len(rows) + WEIGHT_DECAY * torch.eye(5, dtype=torch.float64)
    b = _rhs(model, edited)
    # PCG's space is that of M⁻¹A and M⁻¹b, M = diag(Σ_i g_i²)/n + λ (the residuals ∝ x_i)
    residuals = model.outputs(model.collate(rows)).detach() - model.collate(rows)[1]
    fisher = (x * residuals[:, None]).square().mean(0) + WEIGHT_DECAY
    m_inv = 1.0 / fisher if preconditioner == "fisher_diagonal" else torch.ones(5).double()
    z = m_inv * b
    krylov = torch.stack([z, m_inv * (a @ z)], 1)  # 2 of 5 dimensions: CG has not converged
    best = krylov @ torch.linalg.lstsq(a @ krylov, b[:, None]).solution[:, 0]
    cg, least = step("cg", 2), step("least_residual", 2)

    def residual(delta):
        return float((a @ delta - b).norm() / b.norm())

    assert float((least.delta - best).norm() / best.norm()) <= 1e-8
    assert least.cg.relative_residual == pytest.approx(residual(least.delta), abs=1e-10)
    assert residual(least.delta) < 0.99 * residual(cg.delta)
    # where CG converges the two steps are one
    assert torch.allclose(step("least_residual", 50).delta, step("cg", 50).delta, rtol=1e-8)


# -- batches: one solve, each request's own ΔΘ_k -------------------------------------------

def test_batch_is_one_solve_whose_parts_are_each_requests_own_step():
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    batch = [parse_request(r) for r in QUADRATIC_REQUESTS]
    edited = apply_requests(batch, rows)
    args = EraseArguments(hvp="exact", curvature="edited", tol=1e-13, max_iter=50)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)
    assert float((model.get_flat() + result.delta - retrained).norm() / retrained.norm()) <= 1e-6
    # Each part is H_new⁻¹ b_k, with b_k request k's share of b (all over the batch's W').
    x, _ = model.collate(edited.rows_after)
    a = x.T @ x / edited.weight_after + WEIGHT_DECAY * torch.eye(5, dtype=torch.float64)
    parts_rhs = newton_rhs(model, edited, WEIGHT_DECAY, 8)
    assert parts_rhs.shape == (3, 5)
    for k in range(3):
        direct = torch.linalg.solve(a, parts_rhs[k])
        assert float((result.parts[k] - direct).norm() / direct.norm()) <= 1e-8
        assert float(result.part_residuals[k]) <= 1e-8
    assert float((result.parts.sum(0) - result.delta).norm() / result.delta.norm()) <= 1e-10
    # The removal's share carries its kλΘ̂ term, the edits' shares none.
    assert torch.allclose(edited.removed_weights(), torch.tensor([3.0, 0.0, 0.0],
                                                                 dtype=torch.float64))


def test_batch_parts_on_a_real_model_are_reported_with_their_true_residual(converged):
    """Where the batch's Krylov space does not hold each H⁻¹b_k (d = 224, 133 CG steps),
    the parts are estimates: their sum is the step applied, and each reported residual is
    the true one (measured: 1.5%, 4.1%, 1.2%; cosine to the separate solve 0.91, 0.98, 0.90)."""
    model, rows, theta_hat = converged
    model.set_flat(theta_hat)
    edited = apply_requests([parse_request(r) for r in TINY_REQUESTS], rows)
    args = EraseArguments(hvp="exact", tol=1e-10, max_iter=200, step_control="none")
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    hessian = explicit_hessian(model, rows, torch.ones(len(rows), dtype=torch.float64))
    a = hessian / len(rows) + WEIGHT_DECAY * torch.eye(model.dim, dtype=torch.float64)
    parts_rhs = newton_rhs(model, edited, WEIGHT_DECAY, 8)
    direct_total = torch.linalg.solve(a, parts_rhs.sum(0))
    assert float((result.delta - direct_total).norm() / direct_total.norm()) <= 1e-6
    assert float((result.parts.sum(0) - result.delta).norm() / result.delta.norm()) <= 1e-6
    for k in range(3):
        true_residual = float((a @ result.parts[k] - parts_rhs[k]).norm() / parts_rhs[k].norm())
        assert abs(float(result.part_residuals[k]) - true_residual) <= 1e-3
        assert true_residual <= 0.1
        assert cosine(result.parts[k], torch.linalg.solve(a, parts_rhs[k])) >= 0.85


def test_a_batch_refuses_a_row_named_twice():
    rows = word_rows(8)
    twice = [parse_request({"kind": "remove", "ids": ["r1"]}),
             parse_request({"kind": "correct_response", "edits": [{"id": "r1",
                                                                   "response": "x"}]})]
    with pytest.raises(EraserError, match="'r1' is named by requests 1 and 2"):
        apply_requests(twice, rows)


# -- tiny Llama at a converged optimum ---------------------------------------------------

@pytest.fixture(scope="module")
def converged():
    """(model, rows, Θ̂): rank-1 q/v LoRA on tiny-llama in float64, fitted to ‖∇f‖ < 1e-6."""
    model = tiny_lora(torch.float64, rank=1)
    rows = word_rows(16)
    ones = torch.ones(len(rows), dtype=torch.float64)
    fit_lbfgs(model, rows, ones, WEIGHT_DECAY, max_iter=300)
    grad_norm = newton_polish(model, rows, ones, WEIGHT_DECAY)
    assert grad_norm < 1e-6  # the float32 softmax/RMSNorm inside the model set the floor
    hessian = explicit_hessian(model, rows, ones) / len(rows)
    eigs = torch.linalg.eigvalsh(hessian + WEIGHT_DECAY * torch.eye(model.dim, dtype=torch.float64))
    assert float(eigs[0]) > 1e-3  # positive definite: influence is well posed here
    return model, rows, model.get_flat()


TINY_REQUESTS = [
    {"kind": "remove", "ids": ["r2", "r9"]},
    {"kind": "modify_query", "edits": [{"id": "r5", "query": "rev yak"}]},
    {"kind": "correct_response", "edits": [{"id": "r3", "response": "wol"}]},
]


@pytest.mark.parametrize("curvature", ["original", "edited"])
@pytest.mark.parametrize("request_json", TINY_REQUESTS, ids=lambda r: r["kind"])
def test_first_order_influence_matches_retraining(converged, request_json, curvature):
    model, rows, theta_hat = converged
    eps = 1e-3
    edited = down_weighted(rows, request_json, eps)
    model.set_flat(theta_hat)
    args = EraseArguments(hvp="exact", curvature=curvature, tol=1e-6, max_iter=100)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    assert result.cg.converged and not result.cg.negative_curvature
    if request_json["kind"] == "remove":
        assert result.control is None  # the default control leaves removals as solved
    else:  # an ε-edit moves the check's φ by less than its rounding: α = 1 is kept
        assert result.control.kind == "line_search" and result.control.alpha == 1.0
    newton_polish(model, edited.rows_after, edited.weights_after, WEIGHT_DECAY, steps=3)
    retrained_change = model.get_flat() - theta_hat
    model.set_flat(theta_hat)
    assert cosine(result.delta / eps, retrained_change / eps) >= 0.99
    ratio = float(result.delta.norm() / retrained_change.norm())
    assert 0.95 <= ratio <= 1.05


@pytest.fixture(scope="module")
def retrained(converged):
    """Per request: the edited objective and the fully retrained Θ (warm-started from Θ̂)."""
    model, rows, theta_hat = converged
    out = {}
    for request_json in TINY_REQUESTS:
        edited = apply_request(parse_request(request_json), rows)
        model.set_flat(theta_hat)
        fit_lbfgs(model, edited.rows_after, edited.weights_after, WEIGHT_DECAY, max_iter=200)
        newton_polish(model, edited.rows_after, edited.weights_after, WEIGHT_DECAY, steps=2)
        out[request_json["kind"]] = (edited, model.get_flat())
    model.set_flat(theta_hat)
    return out


def affected_loss(model, theta, edited: EditedObjective) -> float:
    """Loss on the rows the request touched: the removed rows, or the new versions of edits."""
    rows: list[Example] = edited.changed_rows
    new_rows = [r for r, w in zip(rows, edited.weight_changes.tolist(), strict=True) if w > 0]
    model.set_flat(theta)
    return float(loss_values(model, new_rows or rows, 8).mean())


@pytest.mark.parametrize("hvp", ["exact", "fd", "ggn"])
@pytest.mark.parametrize("kind", [r["kind"] for r in TINY_REQUESTS])
def test_real_erase_moves_affected_loss_like_retraining(converged, retrained, kind, hvp):
    model, _, theta_hat = converged
    edited, theta_retrained = retrained[kind]
    model.set_flat(theta_hat)
    result = newton_step(model, edited, WEIGHT_DECAY, EraseArguments(hvp=hvp, tol=1e-8),
                         progress=False)
    before = affected_loss(model, theta_hat, edited)
    after_retrain = affected_loss(model, theta_retrained, edited)
    after_erase = affected_loss(model, theta_hat + result.delta, edited)
    model.set_flat(theta_hat)
    moved_retrain, moved_erase = after_retrain - before, after_erase - before
    # Removal raises the loss on the removed rows, an edit lowers it on the new text.
    assert (moved_retrain > 0) == (kind == "remove")
    assert moved_erase * moved_retrain > 0
    assert 0.1 <= moved_erase / moved_retrain <= 10.0


def test_negative_curvature_policies(converged):
    """Removing 1/8 of the rows makes H_new indefinite at Θ̂ (measured: CG meets pᵀAp ≤ 0)."""
    model, rows, theta_hat = converged
    edited = apply_request(parse_request(TINY_REQUESTS[0]), rows)
    model.set_flat(theta_hat)

    def run(policy, hvp="exact"):
        args = EraseArguments(hvp=hvp, curvature="edited", tol=1e-8, max_iter=100,
                              on_negative_curvature=policy)
        return newton_step(model, edited, WEIGHT_DECAY, args, progress=False)

    truncated = run("truncate")
    assert truncated.negative_curvature and truncated.cg.negative_curvature
    assert truncated.hvp == "exact" and not truncated.cg.converged
    with pytest.raises(EraserError, match="negative curvature"):
        run("fail")
    fallback = run("ggn")
    assert fallback.negative_curvature and fallback.hvp == "ggn" and fallback.cg.converged
    assert torch.allclose(fallback.delta, run("fail", hvp="ggn").delta)
    assert torch.equal(model.get_flat(), theta_hat)


@pytest.mark.parametrize(("field", "message"), [
    ("step", "unknown --step 'newton'; choose one of cg, least_residual"),
    ("gradient", "unknown --gradient 'newton'; choose one of changed_rows, all_rows"),
])
def test_an_unknown_choice_is_refused_before_anything_is_read(tmp_path, field, message):
    from eraser_dist import api

    with pytest.raises(EraserError, match=message):
        api.erase("tiny-llama", tmp_path / "none", tmp_path / "none.parquet",
                  tmp_path / "none.json", tmp_path / "out", EraseArguments(**{field: "newton"}))


class ConcaveModel(QuadraticModel):
    """L_i = −½(x_iᵀθ − y_i)²: every curvature, Gauss-Newton's included, is negative."""

    def losses(self, outputs, batch):
        return -0.5 * (outputs - batch[1]) ** 2

    def output_hvp(self, outputs, batch, tangent):
        return -tangent


def test_a_gauss_newton_fallback_that_finds_no_step_is_refused():
    """The fallback solve is held to the same rule as the first: stopping at negative
    curvature before its first step leaves no iterate, so the erase is refused instead of
    publishing a zero step said to be solved with Gauss-Newton."""
    rows = regression_rows(12, 3)
    model = QuadraticModel(3)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    concave = ConcaveModel(3)
    concave.set_flat(model.get_flat())
    edited = apply_request(parse_request(QUADRATIC_REQUESTS[0]), rows)
    args = EraseArguments(hvp="exact", damping=0.0, on_negative_curvature="ggn")
    with pytest.raises(EraserError, match="the ggn matrix .* negative curvature along b"):
        newton_step(concave, edited, WEIGHT_DECAY, args, progress=False)


def test_a_truncated_fallback_is_reported_as_truncated():
    """A fallback that stops at negative curvature after some steps keeps its iterate and
    says so (``truncated``), and the CLI tells the user the step is not a solution."""
    from eraser_dist.cli.engine import solve_notes
    from eraser_dist.core.influence import influence_result, solve_with_policy
    from eraser_dist.core.solve import CGResult

    def outcome(iterations):
        return CGResult(torch.ones(3, dtype=torch.float64), iterations, 0.5, False, True, -1.0)

    with pytest.raises(EraserError, match="ggn matrix"):
        solve_with_policy({"exact": outcome(3), "ggn": outcome(0)}.__getitem__, "exact", "ggn")
    cg, kind = solve_with_policy({"exact": outcome(3), "ggn": outcome(2)}.__getitem__, "exact",
                                 "ggn")
    assert (kind, cg.iterations) == ("ggn", 2)
    result = influence_result(cg, "exact", kind, torch.ones(1, 3, dtype=torch.float64), 0.0, 5,
                              EraseArguments(), (0.0, 0.0))
    assert result.negative_curvature and result.truncated and result.hvp == "ggn"
    report = SimpleNamespace(hvp="exact", hvp_used="ggn", negative_curvature=True,
                             truncated=True, distributed=None)
    (note,) = solve_notes(report)
    assert "solved with the ggn matrix instead, which also met negative curvature" in note
    assert "not a solution" in note
