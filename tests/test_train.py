"""The fine-tuning loop's learning-rate schedule, step by step on a quadratic model."""

import pytest
import torch
from conftest import QuadraticModel, regression_rows

from eraser_dist.arguments import TrainArguments
from eraser_dist.errors import EraserError
from eraser_dist.llm.train import train_adam


def iterates(schedule: str, monkeypatch) -> list[torch.Tensor]:
    """Θ after every optimizer step of 4 steps (2 epochs of 2 batches)."""
    model = QuadraticModel(3)
    seen = []
    step = torch.optim.lr_scheduler.LambdaLR.step

    def record(self, *args, **kwargs):
        seen.append(model.theta.detach().clone())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", record)
    train_adam(model, regression_rows(8, 3), TrainArguments(
        epochs=2, batch_size=4, lr=0.1, lr_schedule=schedule), progress=False)
    return seen[1:]  # the first call is LambdaLR's own, at construction


def test_linear_schedule_scales_each_adam_step_by_the_remaining_share(monkeypatch):
    constant, linear = iterates("constant", monkeypatch), iterates("linear", monkeypatch)
    assert len(constant) == len(linear) == 4
    # step 1 at the full rate; step 2 from the same Θ and moments at 3/4 of it
    torch.testing.assert_close(linear[0], constant[0], rtol=0, atol=0)
    torch.testing.assert_close(linear[1] - linear[0], 0.75 * (constant[1] - constant[0]))
    assert not torch.allclose(linear[3], constant[3])


def test_an_unknown_schedule_is_an_error():
    with pytest.raises(EraserError, match="unknown --lr-schedule 'cosine'"):
        train_adam(QuadraticModel(2), regression_rows(4, 2),
                   TrainArguments(lr_schedule="cosine"), progress=False)
