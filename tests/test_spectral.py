"""The curvature index's maths (core/spectral.py) and CG from a first guess, against dense
linear algebra."""

import pytest
import torch

from eraser_dist.core.solve import conjugate_gradient, galerkin_split
from eraser_dist.core.spectral import lanczos, low_rank_curvature, ritz_pairs


def spiked(d: int, spikes: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A = D^½ (I + U diag(spikes) Uᵀ) D^½ [d, d] with a diagonal D [d] spread over six
    orders of magnitude, and D: the scaled matrix has len(spikes) large eigenvalues and the
    rest exactly 1, so a low-rank index of that many pairs inverts A exactly."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d, len(spikes), generator=g, dtype=torch.float64))
    scaled = torch.eye(d, dtype=torch.float64) + u @ torch.diag(
        torch.tensor(spikes, dtype=torch.float64)) @ u.T
    diagonal = torch.logspace(-3, 3, d, dtype=torch.float64)
    root = diagonal.sqrt()
    return root[:, None] * scaled * root[None, :], diagonal


def test_lanczos_run_to_the_dimension_finds_every_eigenvalue():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    eigenvalues = torch.logspace(-2, 2, 30, dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ q.T
    result = lanczos(lambda v: a @ v, torch.randn(30, generator=g, dtype=torch.float64), 30)
    values, vectors, asymmetry = ritz_pairs(result)
    assert asymmetry < 1e-12
    assert torch.allclose(values, eigenvalues.flip(0), rtol=1e-8)
    assert torch.allclose(vectors @ a @ vectors.T, torch.diag(values), atol=1e-8)


def test_lanczos_stops_when_the_krylov_space_closes():
    a, diagonal = spiked(40, [50.0, 9.0], seed=1)
    # Scaled, I + 2 spikes has 3 distinct eigenvalues: the space closes after 3 steps.
    root = diagonal.rsqrt()
    scaled = root[:, None] * a * root[None, :]
    result = lanczos(lambda v: scaled @ v, torch.ones(40, dtype=torch.float64), 10)
    assert result.breakdown and result.steps <= 4


def test_index_inverse_equals_a_dense_solve_where_it_is_exact():
    a, diagonal = spiked(50, [400.0, 80.0, 20.0, 5.0], seed=2)
    b = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    index = low_rank_curvature(lambda v: a @ v, diagonal, rank=5)
    assert torch.allclose(index.values[:4], torch.tensor([401.0, 81.0, 21.0, 6.0],
                                                    dtype=torch.float64), rtol=1e-8)
    direct = torch.linalg.solve(a, b)
    assert float((index.inverse(b) - direct).norm() / direct.norm()) < 1e-6


def test_an_index_preconditioner_needs_fewer_products_than_the_diagonal():
    """Where the index holds the large directions, CG from its step converges in few
    products; the diagonal preconditioner alone, given the same products, does not."""
    a, diagonal = spiked(80, [1e4, 3e3, 1e3, 300.0, 100.0, 30.0], seed=4)
    a = a + 0.5 * torch.diag(diagonal)  # the rest of the spectrum is no longer exactly 1
    b = torch.randn(80, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    direct = torch.linalg.solve(a, b)
    index = low_rank_curvature(lambda v: a @ v, diagonal, rank=8)
    with_index = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=6,
                                    preconditioner=index.inverse, x0=index.inverse(b))
    diagonal_only = conjugate_gradient(lambda v: a @ v, b, tol=1e-10, max_iter=6,
                                       preconditioner=lambda v: v / diagonal)
    assert float((with_index.x - direct).norm() / direct.norm()) < 1e-3
    assert float((diagonal_only.x - direct).norm() / direct.norm()) > 1e-2


def test_cg_from_a_first_guess_reports_its_true_residual():
    a, diagonal = spiked(40, [100.0, 10.0], seed=6)
    b = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    guess = b / diagonal
    only_guess = conjugate_gradient(lambda v: a @ v, b, max_iter=0, x0=guess)
    # the start is the multiple of the guess with the least residual
    scale = float((a @ guess) @ b / (a @ guess).square().sum())
    assert torch.allclose(only_guess.x, scale * guess, rtol=1e-10) and only_guess.iterations == 0
    assert only_guess.relative_residual == pytest.approx(
        float((a @ only_guess.x - b).norm() / b.norm()), rel=1e-10)
    assert only_guess.relative_residual == only_guess.start_residual
    assert only_guess.relative_residual < float((a @ guess - b).norm() / b.norm())
    solved = conjugate_gradient(lambda v: a @ v, b, tol=1e-11, max_iter=80, x0=guess,
                                preconditioner=lambda v: v / diagonal)
    assert solved.converged
    assert torch.allclose(solved.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-12)
    assert conjugate_gradient(lambda v: a @ v, b, tol=1e-11, x0=torch.linalg.solve(a, b)
                              ).iterations == 0


def test_a_batch_split_from_first_guesses_covers_each_guess():
    """A recorded solve that starts from one guess per request keeps each among its
    directions (a product each), so each request's part is found even when the sum of the
    guesses already solves the system and CG stops at once."""
    a, diagonal = spiked(30, [50.0, 5.0], seed=8)
    rhs = torch.randn(2, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    index = low_rank_curvature(lambda v: a @ v, diagonal, rank=3)
    calls = []

    def matvec(v):
        calls.append(v)
        return a @ v

    guesses = torch.stack([index.inverse(r) for r in rhs])
    cg = conjugate_gradient(matvec, rhs.sum(0), tol=1e-3, max_iter=60, record=True,
                            preconditioner=index.inverse, x0=guesses)
    assert cg.iterations == 0 and len(calls) == 2
    parts, residuals = galerkin_split(cg, rhs)
    direct = torch.linalg.solve(a, rhs.T).T
    assert float(((parts - direct).norm(dim=1) / direct.norm(dim=1)).max()) < 1e-3
    assert float(residuals.max()) < 1e-3


def test_pairs_a_noisy_product_cannot_resolve_are_dropped():
    """A product with a small asymmetric error (as a finite difference has): the Ritz
    values well above the error are kept, those within it are dropped, so that no
    direction is scaled by the inverse of noise; an exact product keeps every pair."""
    a, diagonal = spiked(40, [100.0, 30.0, 10.0], seed=10)
    root = diagonal.rsqrt()
    scaled = root[:, None] * a * root[None, :] - 0.999 * torch.eye(40, dtype=torch.float64)
    noise = 1e-2 * torch.randn(40, 40, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(11))
    unscale = diagonal.sqrt()
    noisy = unscale[:, None] * (scaled + noise) * unscale[None, :]
    index = low_rank_curvature(lambda v: noisy @ v, diagonal, rank=12)
    assert index.asymmetry > 1e-3 and index.rank == 3
    assert torch.allclose(index.values, torch.tensor([100.001, 30.001, 10.001],
                                                     dtype=torch.float64), rtol=1e-2)
    exact = unscale[:, None] * scaled * unscale[None, :]
    clean = low_rank_curvature(lambda v: exact @ v, diagonal, rank=12)
    # four distinct eigenvalues: the space closes after 4 steps, and all 4 pairs are kept,
    # the smallest (0.001) too
    assert clean.rank == 4 and float(clean.values[-1]) == pytest.approx(0.001, rel=1e-6)
