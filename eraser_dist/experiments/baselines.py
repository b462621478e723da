"""The paper's solver as its public code runs it: a baseline for benchmarks, not an option of
the product (docs/DESIGN.md §1.4 says what is wrong with it).

It takes b = (1/n) Σ_changed (−Δw_i) G_i — no (W − W')λΘ̂ term and 1/n where 1/W' belongs —
and "solves" ½ΔᵀHΔ − bᵀΔ by a few Adam steps from Δ = 0 with the Hessian-vector product not
differentiated, so that Adam follows ½HΔ − b (whose zero is twice the influence estimate)
and, at lr 1e-5 for 20 steps, moves every coordinate by about the same amount: a sign step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.objective import LossModel, gradient_sum
from ..core.requests import EditedObjective

PAPER_STEPS, PAPER_LR = 20, 1e-5


def paper_rhs(model: LossModel, edited: EditedObjective, batch_size: int) -> torch.Tensor:
    """The paper's b [d] float64: the changed rows' −Δw-weighted gradients over n."""
    n = len(edited.rows_before)
    return gradient_sum(model, edited.changed_rows, -edited.weight_changes,
                        batch_size).double().cpu() / n


def paper_adam(matvec: Callable[[int, torch.Tensor], torch.Tensor], b: torch.Tensor,
               steps: int = PAPER_STEPS, lr: float = PAPER_LR) -> torch.Tensor:
    """Δ [d] after ``steps`` Adam steps on ½ΔᵀAΔ − bᵀΔ seen through a detached product.

    ``matvec(step, v)`` is A v for that step (the damped Hessian, of one sampled row when the
    paper's batch of 1 is reproduced), in float64 on the CPU.
    """
    delta = torch.zeros_like(b, requires_grad=True)
    adam = torch.optim.Adam([delta], lr=lr)
    for step in range(steps):
        current = delta.detach()
        delta.grad = 0.5 * matvec(step, current) - b  # the HVP carries no graph: ½AΔ − b
        adam.step()
    return delta.detach()
