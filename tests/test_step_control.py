"""Step control: the line search and the chord Newton steps, as pure functions and through
the erase pipeline, on a quadratic loss (where the Newton step is already right) and on a
one-parameter logistic loss started on the wrong side (where it overshoots)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import QuadraticModel, down_weighted, regression_rows, ridge_solution

from eraser_dist import cli
from eraser_dist.arguments import EraseArguments
from eraser_dist.core.influence import newton_step
from eraser_dist.core.objective import LossModel
from eraser_dist.core.requests import apply_request, parse_request
from eraser_dist.core.step_control import chord_newton, line_search, parabola_vertex
from eraser_dist.data import Example
from eraser_dist.errors import EraserError

WEIGHT_DECAY = 0.05
LOGISTIC_DECAY = 0.02


def test_a_parabola_through_three_points_has_its_vertex_found():
    points = [(a, 3.0 * (a - 0.7) ** 2 - 1.0) for a in (0.25, 0.5, 1.25)]
    assert parabola_vertex(points) == pytest.approx(0.7, abs=1e-12)
    assert parabola_vertex([(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)]) is None  # opens downward


def test_the_line_search_keeps_the_step_of_a_quadratic_and_bounds_a_long_one():
    found = line_search(lambda a: -a + 0.5 * a * a, (0.25, 0.5, 0.75, 1.0, 1.25))
    assert found.alpha == 1.0
    assert [a for a, _ in found.tried] == [0.25, 0.5, 0.75, 1.0, 1.25]  # no refinement needed
    # a minimum beyond the grid is not chased: the largest α is taken
    assert line_search(lambda a: -a, (0.5, 1.0)).alpha == 1.0


def test_the_line_search_keeps_alpha_1_where_phi_differs_from_phi_1_only_below_resolution():
    """A minimum at α = 0.5 of depth 1e-9 under ripples of 3e-9: rescaled without a
    resolution, kept at 1 with a resolution above the ripples, and moved once the
    minimum's gain over α = 1 is above it (without refinements chasing the ripples)."""
    def phi(alpha):
        return 1e-9 * (alpha - 0.5) ** 2 + 3e-9 * math.sin(7 * alpha)

    grid = (0.25, 0.5, 0.75, 1.0, 1.25)
    assert line_search(phi, grid).alpha != 1.0
    kept = line_search(phi, grid, resolution=1e-8)
    assert kept.alpha == 1.0 and len(kept.tried) == 5
    scaled = line_search(lambda a: 1e-6 * (a - 0.5) ** 2, grid, resolution=1e-8)
    assert scaled.alpha == pytest.approx(0.5, abs=1e-9)
    # off the grid, α = 1 stays unless φ falls below φ(0) = 0 by more than the resolution
    assert line_search(lambda a: -1e-9 * a, (0.5, 2.0), resolution=1e-8).alpha == 1.0
    assert line_search(lambda a: -1e-7 * a, (0.5, 2.0), resolution=1e-8).alpha == 2.0


# -- a quadratic LossModel: the Newton step is already where retraining lands ---------------

QUADRATIC_REQUESTS = [{"kind": "remove", "ids": ["q3", "q11"]},
                      {"kind": "correct_response", "edits": [{"id": "q5", "response": "4.5"}]}]


@pytest.mark.parametrize("request_json", QUADRATIC_REQUESTS, ids=lambda r: r["kind"])
@pytest.mark.parametrize("control", ["line_search", "damping", "newton", "path"])
def test_on_a_quadratic_loss_the_line_search_keeps_alpha_1_and_newton_stops_after_one_step(
        request_json, control):
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    edited = apply_request(parse_request(request_json), rows)
    args = EraseArguments(hvp="exact", curvature="edited", tol=1e-12, max_iter=50,
                          hessian_samples=None, step_control=control, newton_steps=3,
                          line_search_rows=100)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)
    assert float((model.get_flat() + result.delta - retrained).norm()
                 / retrained.norm()) <= 1e-6
    if control == "line_search":
        assert result.control.alpha == pytest.approx(1.0, abs=1e-9)
    elif control == "damping":  # the objective's own λ: the search keeps it
        assert result.damping == WEIGHT_DECAY and result.control.kind == "damping"
        tried = [d for d, _ in result.control.evaluations]
        assert tried[:5] == pytest.approx([WEIGHT_DECAY * f for f in (8, 4, 2, 1, 0.5)])
        assert result.span_rhs is None and result.cg.directions is None  # not kept after
    elif control == "path":  # with the edited curvature every stage lands on f_t's optimum
        assert (result.control.kind, result.control.steps, len(result.stages)) == ("path", 4, 4)
    else:
        assert result.control.steps == 1
        assert result.control.gradient_norms[-1] <= 1e-9 * result.control.gradient_norms[0]
    assert torch.allclose(result.parts.sum(0), result.delta, atol=1e-12)


def test_the_path_shares_the_cg_budget_and_reads_the_fisher_diagonal_once(monkeypatch):
    """``path`` over 4 stages with --max-iter 7: each stage at most ⌈7/4⌉ = 2 iterations
    after its first step, and the Fisher diagonal computed once at Θ̂, not per stage."""
    from eraser_dist.core.backend import InProcessBackend

    calls = []
    fisher = InProcessBackend.fisher_diagonal
    monkeypatch.setattr(InProcessBackend, "fisher_diagonal",
                        lambda self: calls.append(1) or fisher(self))
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    edited = apply_request(parse_request(QUADRATIC_REQUESTS[1]), rows)
    args = EraseArguments(hvp="exact", tol=1e-12, max_iter=7, hessian_samples=None,
                          step_control="path", path_stages=4)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    assert len(calls) == 1
    assert [stage.cg_iterations for stage in result.stages] == [2, 2, 2, 2]
    assert result.first_products == 4  # each stage's first step, from the diagonal


@pytest.mark.parametrize("request_json", QUADRATIC_REQUESTS, ids=lambda r: r["kind"])
@pytest.mark.parametrize("gradient", ["changed_rows", "all_rows"])
@pytest.mark.parametrize("control", ["line_search", "damping"])
def test_off_the_minimum_the_check_measures_the_objective_the_step_aims_at(request_json,
                                                                           gradient, control):
    """Θ̂ away from f's minimum (a fine-tune stopped early). The changed_rows step is the
    exact minimiser of f_new tilted by Θ̂'s own gradient, the all_rows step that of f_new:
    the check of each keeps α = 1 and the objective's damping. Checked against f_new alone,
    the changed_rows step would be cut short or stretched by how far Θ̂ is from the
    minimum."""
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    offset = torch.tensor([0.3, -0.2, 0.25, 0.1, -0.15], dtype=torch.float64)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY) + offset)
    edited = apply_request(parse_request(request_json), rows)
    args = EraseArguments(hvp="exact", curvature="edited", tol=1e-12, max_iter=50,
                          hessian_samples=None, step_control=control, gradient=gradient,
                          line_search_rows=100)
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False)
    if control == "line_search":
        assert result.control.alpha == pytest.approx(1.0, abs=1e-6)
    else:
        assert result.damping == pytest.approx(WEIGHT_DECAY, rel=1e-6)


def test_the_held_out_check_stands_for_every_kept_row():
    """20 rows with one loss, H on 5 of them, the check on 8 held-out rows: their sample is
    scaled to all 19 kept rows' weight, so the check equals f_new's true change."""
    from eraser_dist.core.backend import InProcessBackend
    from eraser_dist.core.influence import edited_objective_change

    rows = [Example(f"q{i}", "1.0,0.0", "0.0") for i in range(20)]
    model = QuadraticModel(2)
    edited = apply_request(parse_request({"kind": "remove", "ids": ["q0"]}), rows)
    args = EraseArguments(hessian_samples=5, line_search_rows=8)
    check = edited_objective_change(InProcessBackend(model), edited, WEIGHT_DECAY,
                                    model.get_flat(), args)
    delta = torch.tensor([0.6, -0.8], dtype=torch.float64)
    assert check.change(delta) == pytest.approx(0.5 * 0.36 + 0.5 * WEIGHT_DECAY * 1.0, rel=1e-12)


def test_the_check_weighs_an_old_version_that_an_edit_only_down_weights():
    """An ε-edit keeps the corrected row's old version at weight 1 − ε in f_new: the check
    (``all_rows``: f_new itself, every kept row measured) equals f_new's change over every
    row of D' at its weight, the old version included."""
    from eraser_dist.core.backend import InProcessBackend
    from eraser_dist.core.influence import edited_objective_change

    rows = regression_rows(12, 2)
    edited = down_weighted(rows, {"kind": "correct_response",
                                  "edits": [{"id": "q3", "response": "9.0"}]}, 1e-2)
    model = QuadraticModel(2)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    theta = model.get_flat()
    backend = InProcessBackend(model)
    args = EraseArguments(hessian_samples=None, line_search_rows=100, gradient="all_rows")
    check = edited_objective_change(backend, edited, WEIGHT_DECAY, theta, args)
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    at_start = backend.losses(edited.rows_after, 8)
    model.set_flat(theta + delta)
    moved = backend.losses(edited.rows_after, 8)
    model.set_flat(theta)
    exact = float(edited.weights_after.dot(moved - at_start)) / edited.weight_after + (
        0.5 * WEIGHT_DECAY * float((theta + delta).dot(theta + delta) - theta.dot(theta)))
    assert check.change(delta) == pytest.approx(exact, rel=1e-10)


# -- one logistic parameter, started on the wrong side ----------------------------------------

class LogisticModel(LossModel):
    """L = softplus(−s·θ) with s = ±1 from the row's response ("1" or "0")."""

    def __init__(self, theta: float):
        self.theta = torch.nn.Parameter(torch.tensor([theta], dtype=torch.float64))
        self.params = [self.theta]

    def collate(self, rows):
        return torch.tensor([1.0 if r.response == "1" else -1.0 for r in rows],
                            dtype=torch.float64)

    def outputs(self, batch):
        return batch * self.theta

    def losses(self, outputs, batch):
        return torch.nn.functional.softplus(-outputs)

    def output_hvp(self, outputs, batch, tangent):
        p = torch.sigmoid(outputs)
        return p * (1 - p) * tangent


def _logistic_case():
    """The adapter fitted to label 0 (θ̂ < 0, σ(θ̂) + λθ̂ = 0); the request corrects it to 1,
    whose minimiser is −θ̂. The Newton step from θ̂ uses the curvature there, where the new
    label's loss is nearly flat."""
    low, high = -10.0, 0.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (low, middle) if 1 / (1 + math.exp(-middle)) + LOGISTIC_DECAY * middle > 0 \
            else (middle, high)
    theta_hat = (low + high) / 2
    rows = [Example("r", "x", "0")]
    edited = apply_request(parse_request({"kind": "correct_response",
                                          "edits": [{"id": "r", "response": "1"}]}), rows)
    return LogisticModel(theta_hat), edited, theta_hat, -theta_hat


def _logistic_step(control: str) -> tuple[float, float, float]:
    model, edited, theta_hat, optimum = _logistic_case()
    args = EraseArguments(hvp="exact", tol=1e-12, max_iter=10, hessian_samples=None,
                          step_control=control, newton_steps=3)
    result = newton_step(model, edited, LOGISTIC_DECAY, args, progress=False)
    assert float(model.get_flat()) == theta_hat  # Θ is back at Θ̂
    return float(result.delta), optimum - theta_hat, result


def _logistic_b() -> float:
    """b = −f_new'(θ̂) = σ(−θ̂) − λθ̂."""
    theta_hat = _logistic_case()[2]
    return 1 / (1 + math.exp(theta_hat)) - LOGISTIC_DECAY * theta_hat


def _logistic_curvature() -> float:
    """The loss's curvature at θ̂, σ(θ̂)σ(−θ̂) (without λ)."""
    p = 1 / (1 + math.exp(-_logistic_case()[2]))
    return p * (1 - p)


def test_one_newton_step_overshoots_the_logistic_minimiser_by_the_known_factor():
    step, needed, _ = _logistic_step("none")
    assert step == pytest.approx(_logistic_b() / (_logistic_curvature() + LOGISTIC_DECAY),
                                 rel=1e-9)
    assert step / needed == pytest.approx(2.424, abs=1e-3)


@pytest.mark.parametrize("control", ["line_search", "damping"])
def test_the_line_search_and_the_damping_search_land_within_5_percent_of_the_logistic_minimiser(
        control):
    step, needed, result = _logistic_step(control)
    assert abs(step / needed - 1) <= 0.05
    assert result.control.kind == control
    assert len(result.control.evaluations) <= 8  # the grid's 5 and at most 3 refinements
    if control == "line_search":
        assert 0 < result.control.alpha < 1
    else:  # a shorter step by more damping: 1/2.424 of the Newton step needs about 4.5 λ
        assert 4 * LOGISTIC_DECAY < result.damping < 8 * LOGISTIC_DECAY
        assert step == pytest.approx(_logistic_b() / (_logistic_curvature() + result.damping),
                                     rel=1e-9)


def test_chord_newton_steps_pull_an_overshoot_back_but_slowly_on_a_saturated_loss():
    """The chord keeps the first step's slope, too steep where the step landed (there the
    curvature is λ alone): three steps recover part of the overshoot, not all of it."""
    step, needed, result = _logistic_step("newton")
    assert result.control.steps == 3
    norms = result.control.gradient_norms
    assert norms[2] < norms[1]  # each step brings the gradient down
    assert 1.05 < step / needed < 2.424


def test_the_path_follows_the_logistic_loss_in_closed_form():
    """On the logistic started on the wrong side, each of the K stages is one Newton step
    for 1/K of the correction from where the last ended: b = −(∇L_new − ∇L_old)/K = 1/K
    (∇softplus(−θ) = −σ(−θ), ∇softplus(θ) = σ(θ)), over the curvature σ(θ)σ(−θ) + λ read
    where the stage starts. Re-reading the curvature on the way shortens the overshoot
    from 2.42× to 1.82× at K = 4 (K = 2 gives 3.58×, K = 8 1.10×): on this saturated loss
    the path alone does not land, where the line search does (above)."""
    model, edited, theta_hat, optimum = _logistic_case()
    stages = 4
    theta = theta_hat
    for _ in range(stages):
        p = 1 / (1 + math.exp(-theta))
        theta += (1 / stages) / (p * (1 - p) + LOGISTIC_DECAY)
    args = EraseArguments(hvp="exact", tol=1e-12, max_iter=40, hessian_samples=None,
                          step_control="path", path_stages=stages)
    result = newton_step(model, edited, LOGISTIC_DECAY, args, progress=False)
    assert float(result.delta) == pytest.approx(theta - theta_hat, rel=1e-9)
    assert float(result.delta) / (optimum - theta_hat) == pytest.approx(1.818, abs=1e-3)


def test_chord_newton_as_a_pure_function_converges_on_a_smooth_1d_problem():
    # f(x) = x²/2 + x⁴/4 − x from 0, b = −f'(0) = 1, a fixed slope A = 2 (f'' runs 1 … 2.4
    # up to the root): the chord converges to the root of x³ + x − 1
    gradient = lambda d: d ** 3 + d - 1.0  # noqa: E731
    chord = chord_newton(torch.tensor([0.5]), torch.tensor([1.0]), gradient,
                         lambda g: g / 2, steps=40, tol=1e-10)
    assert float(chord.delta) == pytest.approx(0.6823278, abs=1e-7)
    assert 3 < len(chord.steps) < 40 and chord.gradient_norms[0] == 1.0


def test_a_chord_step_that_raises_the_gradient_is_not_taken():
    # A far too flat (0.1 where f'' is 0.75 … 3 ⋅ 9²): the chord step from 0.5 would land
    # at 9.25, where the gradient is 900× larger
    chord = chord_newton(torch.tensor([0.5]), torch.tensor([1.0]), lambda d: d ** 3 - 1.0,
                         lambda g: g / 0.1, steps=3)
    assert float(chord.delta) == 0.5 and len(chord.steps) == 1
    assert chord.gradient_norms == [1.0, 0.875]


@pytest.mark.parametrize("argv, message", [
    (["--step-alphas", ""], "--step-alphas is empty; give at least one step length α > 0"),
    (["--step-alphas", "0.5,-1"], "--step-alphas must be positive, got -1.0"),
    (["--stages", "0"], "--stages must be at least 1, got 0"),
    (["--newton-steps", "0"], "--newton-steps must be at least 1, got 0"),
    (["--damping-factors", ""], "--damping-factors is empty; give at least one factor > 0"),
    (["--damping-factors", "1,0"], "--damping-factors must be positive, got 0.0"),
    (["--step-control", "damping", "--stages", "2"],
     "--step-control damping needs --stages 1"),
    (["--step-control", "bisect"], "invalid choice: 'bisect'"),
    (["--step-control", "path", "--stages", "2"],
     "--step-control path makes its own stages (--path-stages); leave --stages at 1"),
    (["--path-stages", "1"], "--path-stages must be at least 2, got 1"),
    (["--step-control", "path", "--gradient", "all_rows"],
     "--step-control path needs --gradient changed_rows"),
])
def test_nonsense_step_control_settings_are_one_line_errors(argv, message, tmp_path, capsys):
    code = cli.main(["erase", "--base", "tiny-llama", "--adapter", str(tmp_path / "a"),
                     "--data", str(tmp_path / "d.parquet"), "--request",
                     str(tmp_path / "r.json"), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize("requests_json, chosen", [
    ([QUADRATIC_REQUESTS[0]], "none"),
    ([QUADRATIC_REQUESTS[1]], "line_search"),
    (QUADRATIC_REQUESTS, "line_search"),  # a batch that adds a row
])
def test_auto_searches_the_step_length_where_the_request_adds_rows(requests_json, chosen):
    from eraser_dist.core.influence import chosen_control
    from eraser_dist.core.requests import apply_requests

    edited = apply_requests([parse_request(r) for r in requests_json], regression_rows(20, 5))
    assert chosen_control(EraseArguments(), edited) == chosen
    assert chosen_control(EraseArguments(step_control="damping"), edited) == "damping"


def test_newton_step_control_refuses_a_batch_of_requests():
    rows = regression_rows(20, 5)
    model = QuadraticModel(5)
    from eraser_dist.core.requests import apply_requests

    edited = apply_requests([parse_request(r) for r in QUADRATIC_REQUESTS], rows)
    with pytest.raises(EraserError, match="one request at a time"):
        newton_step(model, edited, WEIGHT_DECAY, EraseArguments(step_control="newton"),
                    progress=False)


def test_the_erase_report_says_which_control_ran_and_reads_back(tmp_path):
    """Through ``api.erase`` on tiny-llama: the default (``auto``) runs the line search on a
    correction, the report gives the α it chose and what it tried, the published ΔΘ is that
    α times the plain step, and the report reads back."""
    from conftest import delta_vector, word_rows

    from eraser_dist import api
    from eraser_dist.arguments import LoraArguments, TrainArguments
    from eraser_dist.data import write_examples
    from eraser_dist.report import EraseReport

    write_examples(tmp_path / "d.parquet", word_rows(24))
    api.train("tiny-llama", tmp_path / "d.parquet", tmp_path / "a", LoraArguments(rank=2),
              TrainArguments(epochs=2, max_length=48), progress=False)
    request = parse_request({"kind": "correct_response",
                             "edits": [{"id": "r3", "response": "zzz"}]})
    settings = {"hvp": "ggn_exact", "damping": 0.1, "tol": 1e-8, "max_iter": 40}
    plain = api.erase("tiny-llama", tmp_path / "a", tmp_path / "d.parquet", request,
                      tmp_path / "plain", EraseArguments(**settings, step_control="none"),
                      progress=False)
    searched = api.erase("tiny-llama", tmp_path / "a", tmp_path / "d.parquet", request,
                         tmp_path / "searched", EraseArguments(**settings), progress=False)
    assert plain.step_control is None
    control = searched.step_control
    assert control.kind == "line_search" and len(control.evaluations) >= 5
    best = min(value for _, value in control.evaluations)
    assert dict(map(tuple, control.evaluations))[control.alpha] == best
    assert torch.allclose(delta_vector(tmp_path / "searched"),
                          control.alpha * delta_vector(tmp_path / "plain"), rtol=1e-4, atol=1e-7)
    assert EraseReport.read(tmp_path / "searched").step_control == control
