import pytest
import torch

from eraser_dist.core.solve import conjugate_gradient, galerkin_split


def random_spd(d: int, seed: int, cond: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eigs = torch.logspace(0, torch.log10(torch.tensor(cond)), d, dtype=torch.float64)
    return q @ torch.diag(eigs) @ q.T


def test_cg_matches_direct_solve_on_spd():
    a = random_spd(40, seed=0)
    b = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=200)
    direct = torch.linalg.solve(a, b)
    assert result.converged and not result.negative_curvature
    assert (result.x - direct).norm() / direct.norm() < 1e-9
    assert result.relative_residual <= 1e-12
    true_residual = (a @ result.x - b).norm() / b.norm()
    assert true_residual < 1e-9


def test_cg_damping_adds_lambda_identity():
    a = random_spd(30, seed=2)
    b = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = conjugate_gradient(lambda v: a @ v, b, damping=0.5, tol=1e-12, max_iter=200)
    direct = torch.linalg.solve(a + 0.5 * torch.eye(30, dtype=torch.float64), b)
    assert (result.x - direct).norm() / direct.norm() < 1e-9


def test_cg_reports_negative_curvature_on_indefinite_matrix():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    eigs = torch.linspace(-1.0, 5.0, 20, dtype=torch.float64)
    a = q @ torch.diag(eigs) @ q.T
    b = torch.randn(20, generator=g, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=200)
    assert result.negative_curvature
    assert not result.converged
    assert result.curvature is not None and result.curvature <= 0
    assert torch.isfinite(result.x).all()
    # Enough damping makes it positive definite: then the solve is exact again.
    damped = conjugate_gradient(lambda v: a @ v, b, damping=2.0, tol=1e-12, max_iter=200)
    assert damped.converged and not damped.negative_curvature
    direct = torch.linalg.solve(a + 2.0 * torch.eye(20, dtype=torch.float64), b)
    assert (damped.x - direct).norm() / direct.norm() < 1e-8


def test_cg_stops_at_max_iter_and_says_so():
    a = random_spd(50, seed=5, cond=1e4)
    b = torch.ones(50, dtype=torch.float64)
    calls = []
    result = conjugate_gradient(lambda v: a @ v, b, tol=1e-14, max_iter=3,
                                callback=lambda i, r: calls.append((i, r)))
    assert result.iterations == 3 and not result.converged
    assert [i for i, _ in calls] == [1, 2, 3]
    assert result.relative_residual == pytest.approx(calls[-1][1])


def test_cg_zero_rhs_returns_zero():
    result = conjugate_gradient(lambda v: v, torch.zeros(5, dtype=torch.float64))
    assert result.converged and result.iterations == 0 and float(result.x.abs().sum()) == 0.0


def test_galerkin_split_of_a_resumed_solve_equals_an_uninterrupted_one():
    """Each right-hand side's part, from the directions of one solve of their sum: exact
    once the Krylov space is the whole space, and unchanged by a checkpoint/resume."""
    a = random_spd(12, seed=4, cond=50.0)
    rhs = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    whole = conjugate_gradient(lambda v: a @ v, rhs.sum(0), tol=1e-13, max_iter=60, record=True)
    states = []
    conjugate_gradient(lambda v: a @ v, rhs.sum(0), tol=1e-13, max_iter=4, record=True,
                       checkpoint=states.append)
    resumed = conjugate_gradient(lambda v: a @ v, rhs.sum(0), tol=1e-13, max_iter=60,
                                 record=True, start=states[-1])
    assert torch.equal(resumed.directions, whole.directions)
    parts, residuals = galerkin_split(whole, rhs)
    for k in range(3):
        assert torch.allclose(parts[k], torch.linalg.solve(a, rhs[k]), rtol=1e-8, atol=1e-10)
    assert float(residuals.max()) <= 1e-8
    assert torch.allclose(galerkin_split(resumed, rhs)[0], parts)
    with pytest.raises(ValueError, match="record=True"):
        galerkin_split(conjugate_gradient(lambda v: a @ v, rhs.sum(0)), rhs)
    unrecorded = []
    conjugate_gradient(lambda v: a @ v, rhs.sum(0), max_iter=2, checkpoint=unrecorded.append)
    with pytest.raises(ValueError, match="saved without record"):
        conjugate_gradient(lambda v: a @ v, rhs.sum(0), record=True, start=unrecorded[-1])


def test_a_shifted_split_solves_another_damping_in_the_same_span_without_a_product():
    """One recorded solve of (A + 0.3I)x = b: the shifted split gives (A + 2.3I)⁻¹b exactly
    once the span is the whole space, and in a 4-direction span the least residual there,
    which the span's own basis confirms; no product is asked for."""
    a = random_spd(10, seed=8, cond=30.0)
    b = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    products = []

    def product(v):
        products.append(v)
        return a @ v

    whole = conjugate_gradient(product, b, damping=0.3, tol=1e-13, max_iter=40, record=True)
    asked = len(products)
    shifted, residual = galerkin_split(whole, b[None], shift=2.0)
    direct = torch.linalg.solve(a + 2.3 * torch.eye(10, dtype=torch.float64), b)
    assert torch.allclose(shifted[0], direct, rtol=1e-9, atol=1e-12)
    assert float(residual[0]) <= 1e-9 and len(products) == asked
    four = conjugate_gradient(lambda v: a @ v, b, damping=0.3, tol=1e-13, max_iter=4,
                              record=True)
    x, residual = galerkin_split(four, b[None], shift=2.0)
    basis = torch.linalg.qr(four.directions.T).Q  # [10, 4]
    matrix = a + 2.3 * torch.eye(10, dtype=torch.float64)
    best = basis @ torch.linalg.lstsq(matrix @ basis, b[:, None]).solution[:, 0]
    assert torch.allclose(x[0], best, rtol=1e-8, atol=1e-10)
    assert float(residual[0]) == pytest.approx(float((matrix @ best - b).norm() / b.norm()),
                                               rel=1e-8)
    assert float(residual[0]) > 1e-3  # four directions of ten: not the exact solve


def test_preconditioned_cg_solves_a_badly_scaled_system_in_fewer_steps_and_resumes_exactly():
    """A = D S D with S well conditioned and D spanning six decades (a LoRA adapter's A and B
    factors differ so): with M⁻¹ = 1/diag(A) PCG reaches the direct solve where plain CG,
    given as many products, is far from it; a resumed PCG solve is the uninterrupted one."""
    d = 60
    scales = torch.diag(torch.logspace(-3, 3, d, dtype=torch.float64) ** 0.5)
    a = scales @ random_spd(d, seed=6, cond=10.0) @ scales
    b = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    direct = torch.linalg.solve(a, b)
    inverse_diagonal = 1.0 / torch.diagonal(a)
    pcg = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=40,
                             preconditioner=lambda v: inverse_diagonal * v)
    plain = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=40)
    assert pcg.converged and pcg.iterations < 40
    assert (pcg.x - direct).norm() / direct.norm() < 1e-8
    assert float((a @ pcg.x - b).norm() / b.norm()) == pytest.approx(pcg.relative_residual,
                                                                      rel=1e-3, abs=1e-12)
    assert not plain.converged and (plain.x - direct).norm() / direct.norm() > 1e-3
    states = []
    conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=5, checkpoint=states.append,
                       preconditioner=lambda v: inverse_diagonal * v)
    resumed = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=40, start=states[-1],
                                 preconditioner=lambda v: inverse_diagonal * v)
    assert resumed.iterations == pcg.iterations and torch.equal(resumed.x, pcg.x)
