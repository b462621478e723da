"""The curvature index's maths: top eigenpairs of the damped, diagonally scaled curvature, and
the low-rank preconditioner built from them (docs/DESIGN.md §7).

With A = H/W + λI the erase system's matrix [d, d] (H over the Hessian rows) and D = F/W + λ
the diagonal of the empirical Fisher plus damping [d] (today's preconditioner), the index
holds the top k eigenpairs (V [k, d], θ [k]) of the scaled matrix S = D^-½ A D^-½, found by
k steps of Lanczos (one product with A each). Its approximate inverse

    P⁻¹ = D^-½ ( V diag(1/θ) Vᵀ + (I − V Vᵀ) ) D^-½

is S's inverse restricted to the Krylov space (V diag(1/θ) Vᵀ = Q T⁻¹ Qᵀ), whose largest
Ritz pairs are S's top eigenpairs, and the diagonal preconditioner elsewhere: a symmetric
positive definite preconditioner for CG (spectral deflation), and a first step P⁻¹b that
costs no product to form. Every Ritz value is a Rayleigh quotient of S, so 1/θ never
exceeds ‖S⁻¹‖ for an exact product; a finite-difference product is not exactly symmetric,
and the pairs its error cannot resolve are dropped. S's spectrum measured on the demo:
docs/RESULTS.md, "Curvature index".

Everything here is a pure function over CPU float64 tensors; the products come from a
callable, so one process and the worker groups run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosResult:
    """k steps of Lanczos on a symmetric matrix S.

    ``basis`` Q [k, d] float64 orthonormal rows, ``products`` SQ [k, d] (each row S q_j, as
    the product returned it), ``alphas`` [k] and ``betas`` [k − 1] the recurrence's
    tridiagonal T. ``breakdown`` is True when the Krylov space closed early (then k is
    smaller than asked).
    """

    basis: torch.Tensor
    products: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    breakdown: bool

    @property
    def steps(self) -> int:
        return int(self.basis.shape[0])


def lanczos(matvec: Matvec, start: torch.Tensor, steps: int,
            callback: Callable[[int], None] | None = None) -> LanczosResult:
    """``steps`` steps of Lanczos on S (``matvec``: v [d] ↦ Sv [d]) from ``start`` [d].

    Full reorthogonalisation against every earlier vector (twice: Gram-Schmidt loses
    orthogonality in one pass once Ritz values converge): k·d floats and O(k²d) flops,
    small beside one product with a network. The products are kept, so that
    :func:`ritz_pairs` can use the whole projected matrix QᵀSQ rather than T, which only
    equals it for an exactly symmetric product.
    """
    q = start.double() / start.double().norm()
    vectors: list[torch.Tensor] = []
    products: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    breakdown = False
    for step in range(steps):
        vectors.append(q)
        w = matvec(q).double()
        products.append(w)
        alphas.append(float(q @ w))
        basis = torch.stack(vectors)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        if callback is not None:
            callback(step + 1)
        beta = float(w.norm())
        if step + 1 == steps:
            break
        if beta <= 1e-10 * max(abs(a) for a in alphas):
            breakdown = True
            break
        betas.append(beta)
        q = w / beta
    return LanczosResult(torch.stack(vectors), torch.stack(products),
                         torch.tensor(alphas, dtype=torch.float64),
                         torch.tensor(betas, dtype=torch.float64), breakdown)


def ritz_pairs(result: LanczosResult) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rayleigh-Ritz on the Krylov space: the eigenpairs of the symmetric part of
    M = QᵀSQ [k, k], mapped back. Returns the Ritz values θ [k] (descending), the vectors
    V [k, d], and the asymmetry ‖(M − Mᵀ)/2‖₂: zero for an exact product, the size of a
    finite-difference product's error otherwise, below which a Ritz value is not resolved.
    """
    projected = result.basis @ result.products.T
    symmetric = (projected + projected.T) / 2
    asymmetry = float(torch.linalg.matrix_norm((projected - projected.T) / 2, ord=2))
    values, vectors = torch.linalg.eigh(symmetric)
    order = values.argsort(descending=True)
    return values[order], (result.basis.T @ vectors[:, order]).T, asymmetry


@dataclass
class LowRankCurvature:
    """P⁻¹ of the module docstring: ``scaling`` D [d] (float64), the Ritz values θ [k]
    (descending) and vectors V [k, d] of S = D^-½ A D^-½ (float32 storage is enough for a
    preconditioner, and halves the index at 70B widths), with how it was built."""

    scaling: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor
    steps: int = 0  # Lanczos steps (products) it was built from
    asymmetry: float = 0.0  # the product's measured asymmetry (see low_rank_curvature)

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """P⁻¹ v [d] float64 (no product with A)."""
        root = self.scaling.double().rsqrt()
        y = root * v.double()
        vectors = self.vectors.double()
        coefficients = vectors @ y
        y = y + vectors.T @ (coefficients * (1.0 / self.values.double() - 1.0))
        return root * y

    @property
    def rank(self) -> int:
        return int(self.values.numel())


def low_rank_curvature(matvec: Matvec, diagonal: torch.Tensor, rank: int, seed: int = 0,
                       callback: Callable[[int], None] | None = None) -> LowRankCurvature:
    """Build P⁻¹ for A (``matvec``: v ↦ Av, damping included) and its diagonal D [d] > 0 by
    ``rank`` Lanczos steps on D^-½ A D^-½ from a seeded Gaussian start (fewer pairs if the
    Krylov space closes first).

    A Ritz value within twice the product's measured asymmetry of zero (or below it) is
    noise, not curvature: its pair is dropped and the diagonal alone scales that
    direction. An exact product keeps every pair; a finite-difference one on a real model
    loses the bottom of the Krylov space (docs/RESULTS.md, "Curvature index").
    """
    root = diagonal.double().rsqrt()
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(diagonal.numel(), generator=generator, dtype=torch.float64)
    result = lanczos(lambda v: root * matvec(root * v).double(), start, rank, callback)
    values, vectors, asymmetry = ritz_pairs(result)
    kept = values > 2 * asymmetry
    return LowRankCurvature(diagonal.double(), values[kept], vectors[kept].float(),
                            result.steps, asymmetry)
