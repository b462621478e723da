"""How far gradients and HVPs with a bf16 base are from the fp32 model's (one process).

The LoRA weights stay fp32; only the base is bf16. At a seeded point off the LoRA
initialisation, over n MovieLens genre rows: relative error of the gradient sum, of the fd
HVP (against the fp32 exact HVP) and of the Gauss-Newton HVP (against the fp32 GGN), at the
default step and at multiples of it. Prints JSON::

    .venv/bin/python bench/bf16_hvp.py [--base smollm2-135m] [--rows 8] [--out F]
"""

from __future__ import annotations

import argparse

import torch
from json_report import print_and_write

from eraser_dist.arguments import LoraArguments
from eraser_dist.core.curvature import default_fd_step, exact_hvp, fd_hvp, ggn_hvp
from eraser_dist.core.objective import gradient_sum
from eraser_dist.experiments.movielens import genre_examples
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base

MULTIPLES = (0.3, 1.0, 3.0, 10.0)


def lora_model(base: str, dtype: torch.dtype) -> LoraCausalLM:
    loaded = load_base(base, dtype)
    return LoraCausalLM(attach_lora(loaded, LoraArguments(rank=8)), loaded.tokenizer, 64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    torch.set_num_threads(2)
    rows = genre_examples(ns.rows)
    weights = torch.ones(len(rows), dtype=torch.float64)
    fp32 = lora_model(ns.base, torch.float32)
    g = torch.Generator().manual_seed(0)
    fp32.set_flat(fp32.get_flat() + 0.01 * torch.randn(fp32.dim, generator=g))
    bf16 = lora_model(ns.base, torch.bfloat16)
    bf16.set_flat(fp32.get_flat())
    v = torch.randn(fp32.dim, generator=g)
    exact = exact_hvp(fp32, rows, weights, v, 8)
    ggn = ggn_hvp(fp32, rows, weights, v, 8)
    step = default_fd_step(bf16, v)
    result = {
        "base": ns.base, "rows": ns.rows, "dim": fp32.dim,
        "gradient_error": rel(gradient_sum(bf16, rows, weights, 8),
                              gradient_sum(fp32, rows, weights, 8)),
        "fp32_fd_error": rel(fd_hvp(fp32, rows, weights, v, 8), exact),
        "default_shift_per_weight": step * float(v.norm()) / fp32.dim**0.5,
        "by_step_multiple": {
            str(m): {"fd_error": rel(fd_hvp(bf16, rows, weights, v, 8, step=m * step), exact),
                     "ggn_error": rel(ggn_hvp(bf16, rows, weights, v, 8, step=m * step), ggn)}
            for m in MULTIPLES
        },
    }
    print_and_write(result, ns.out)


if __name__ == "__main__":
    main()
