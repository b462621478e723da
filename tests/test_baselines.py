"""The paper's solver, reproduced as a baseline: what it converges to and how far 20 steps go."""

import torch

from eraser_dist.experiments.baselines import PAPER_LR, PAPER_STEPS, paper_adam


def spd_system(d: int = 6):
    g = torch.Generator().manual_seed(0)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    return m @ m.T + d * torch.eye(d, dtype=torch.float64), torch.randn(d, generator=g,
                                                                         dtype=torch.float64)


def test_undifferentiated_hvp_makes_adam_converge_to_twice_the_influence_estimate():
    a, b = spd_system()
    delta = paper_adam(lambda _, v: a @ v, b, steps=6000, lr=1e-2)
    assert torch.allclose(delta, 2 * torch.linalg.solve(a, b), rtol=1e-3, atol=1e-6)


def test_the_papers_twenty_steps_are_a_sign_step_of_about_steps_times_lr():
    a, b = spd_system()
    delta = paper_adam(lambda _, v: a @ v, b)
    # Adam's first steps move every coordinate by ≈ lr along sign(b), whatever its size
    assert torch.equal(torch.sign(delta), torch.sign(b))
    assert torch.allclose(delta.abs(), torch.full_like(delta, PAPER_STEPS * PAPER_LR),
                          rtol=0.05)
    steps_seen = []
    paper_adam(lambda step, v: steps_seen.append(step) or a @ v, b)
    assert steps_seen == list(range(PAPER_STEPS))  # each step may sample its own batch
