"""Accuracy of the finite-difference HVP against the exact one, as a function of the step.

On SmolLM2-135M (fp32) with a rank-8 q/v LoRA moved off its initialisation (seeded), over 16
MovieLens genre rows: relative error ‖Hv_fd − Hv_exact‖/‖Hv_exact‖ and the symmetry error of
the Gauss-Newton product |uᵀGv − vᵀGu|/|uᵀGv| for shifts ‖hv‖ of several lengths, and for the
default step (``eraser_dist.core.curvature.default_fd_step``). Prints JSON::

    .venv/bin/python bench/fd_step.py [--base smollm2-135m] [--rows 16]
"""

from __future__ import annotations

import argparse
import json

import torch

from eraser_dist.arguments import LoraArguments
from eraser_dist.core.curvature import default_fd_step, exact_hvp, fd_hvp, ggn_hvp
from eraser_dist.experiments.movielens import genre_examples
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    ns = parser.parse_args()
    torch.set_num_threads(2)
    base = load_base(ns.base)
    model = LoraCausalLM(attach_lora(base, LoraArguments(rank=8)), base.tokenizer, 256)
    g = torch.Generator().manual_seed(0)
    # B = 0 at initialisation; a seeded point with both factors non-zero is a generic one.
    model.set_flat(model.get_flat() + 0.01 * torch.randn(model.dim, generator=g))
    rows = genre_examples(ns.rows)
    weights = torch.ones(len(rows), dtype=torch.float64)
    v = torch.randn(model.dim, generator=g)
    u = torch.randn(model.dim, generator=g)
    exact = exact_hvp(model, rows, weights, v, 16).double()
    default_shift = default_fd_step(model, v) * float(v.norm())
    results = []
    for shift in sorted({0.005, 0.05, 0.5, 2.0, default_shift}):
        fd = fd_hvp(model, rows, weights, v, 16, step=shift / float(v.norm())).double()
        gv = ggn_hvp(model, rows, weights, v, 16, step=shift / float(v.norm())).double()
        gu = ggn_hvp(model, rows, weights, u, 16, step=shift / float(u.norm())).double()
        results.append({
            "shift": shift,
            "is_default": shift == default_shift,
            "fd_relative_error": float((fd - exact).norm() / exact.norm()),
            "ggn_symmetry_error": abs(float(u.double() @ gv - v.double() @ gu))
            / abs(float(u.double() @ gv)),
        })
    print(json.dumps({"base": ns.base, "dim": model.dim, "rows": len(rows),
                      "theta_norm": float(model.get_flat().norm()), "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
