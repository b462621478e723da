"""Where the erase step's sums are computed: the :class:`CurvatureBackend` protocol.

The Newton step (:mod:`eraser_dist.core.influence`) needs five things from the model and
its rows, and nothing else: Θ (read and set), gradient sums over given rows (for b), an HVP
and the Fisher diagonal over the current Hessian rows (for CG and its preconditioner), and
per-row losses (for checks and certificates). :class:`InProcessBackend` computes them in
this process on a :class:`~eraser_dist.core.objective.LossModel`; the distributed engine's
aggregator computes them on Ray worker groups over a ZeRO-3-partitioned base
(``actors/aggregator.py``). One pipeline drives either (docs/DESIGN.md §3).

Every sum is unnormalised (Σ_i w_i …); the pipeline divides by the weight total and adds
damping. Vectors cross the protocol as CPU float64 tensors [d].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from .curvature import fisher_diagonal, hessian_vector_product
from .objective import LossModel, gradient_sum, loss_values

RowTerms = Sequence[tuple[Sequence, torch.Tensor]]
"""Rows and their coefficients [n_t], one pair per term: each term's Σ_i c_i ∇L_i."""


@runtime_checkable
class CurvatureBackend(Protocol):
    """The model and its data, wherever they live.

    ``default_hvp`` is the HVP back-end that ``EraseArguments.hvp`` ``auto`` means here:
    the Gauss-Newton product, ``ggn_exact`` where double backward works, ``ggn`` on a
    partitioned base.
    """

    default_hvp: str

    def theta(self) -> torch.Tensor:
        """Θ [d] float64, a copy."""

    def set_theta(self, theta: torch.Tensor) -> None:
        """Move the model to Θ [d] (for a path of steps; the caller restores it)."""

    def gradient_sums(self, terms: RowTerms, batch_size: int) -> torch.Tensor:
        """Σ_i c_i ∇L_i(Θ) of each term [T, d] float64."""

    def use_hessian_rows(self, rows: Sequence, weights: torch.Tensor) -> None:
        """The rows [m] and weights [m] that :meth:`hvp` and :meth:`fisher_diagonal` sum
        over, until the next call."""

    def hvp(self, kind: str, v: torch.Tensor, batch_size: int,
            fd_step: float | None) -> torch.Tensor:
        """Σ_i w_i ∇²L_i(Θ) v [d] float64 over the Hessian rows (``kind``: exact, fd, ggn)."""

    def fisher_diagonal(self) -> torch.Tensor:
        """Σ_i w_i ∇L_i ⊙ ∇L_i [d] float64 over the Hessian rows."""

    def losses(self, rows: Sequence, batch_size: int) -> torch.Tensor:
        """L_i(Θ) of each row [n] float64, in the rows' order."""


class InProcessBackend:
    """The protocol on a model held by this process, on any device. Results come back to
    the CPU, or stay on the model's device with ``to_cpu`` False: a worker rank of the
    distributed engine uses it so on its share of the rows, and reduces the sums over its
    group before they leave the device."""

    default_hvp = "ggn_exact"  # the Gauss-Newton matrix, its Jv by double backward

    def __init__(self, model: LossModel, to_cpu: bool = True):
        self.model = model
        self.to_cpu = to_cpu
        self.hessian_rows: tuple[Sequence, torch.Tensor] = ([], torch.zeros(0))

    def _out(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.double()
        return tensor.cpu() if self.to_cpu else tensor

    def theta(self) -> torch.Tensor:
        return self.model.get_flat().double().cpu()

    def set_theta(self, theta: torch.Tensor) -> None:
        self.model.set_flat(theta.to(self.model.device))

    def gradient_sums(self, terms: RowTerms, batch_size: int) -> torch.Tensor:
        if not terms:
            return self._out(torch.zeros(0, self.model.dim, device=self.model.device))
        return self._out(torch.stack([gradient_sum(self.model, rows, coefficients, batch_size)
                                      for rows, coefficients in terms]))

    def use_hessian_rows(self, rows: Sequence, weights: torch.Tensor) -> None:
        self.hessian_rows = (list(rows), weights)

    def hvp(self, kind: str, v: torch.Tensor, batch_size: int,
            fd_step: float | None) -> torch.Tensor:
        product = hessian_vector_product(kind, self.model, *self.hessian_rows, batch_size,
                                         fd_step)
        return self._out(product(v))

    def fisher_diagonal(self) -> torch.Tensor:
        return self._out(fisher_diagonal(self.model, *self.hessian_rows))

    def losses(self, rows: Sequence, batch_size: int) -> torch.Tensor:
        return self._out(loss_values(self.model, rows, batch_size))
