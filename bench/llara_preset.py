"""Does a CPU-sized fine-tune learn the LLaRA task? (a probe for choosing issue 5's presets)

Builds the MovieLens rows with the given shape, scores the test users with the base model
(a fresh LoRA, B = 0, is the base), fine-tunes on the clean training set, scores again, and
prints HR@1 by likelihood and the target's mean log-likelihood with 95% bootstrap
intervals, beside a rule with no model: the candidate most rated by the training users.

    .venv/bin/python bench/llara_preset.py --candidates 5 --history 3 --train-users 300 \\
        --test-users 100 --epochs 2 [--out docs/llara_preset.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from json_report import print_and_write

from eraser_dist import api
from eraser_dist.arguments import LlaraArguments, LoraArguments, TrainArguments
from eraser_dist.cli import quiet_library_warnings
from eraser_dist.data import read_examples
from eraser_dist.experiments.llara import build_llara, read_sequences, read_titles
from eraser_dist.experiments.metrics import hit_by_likelihood, summary
from eraser_dist.experiments.recommend import evaluate_recommendations
from eraser_dist.llm.adapters import load_adapter
from eraser_dist.llm.models import LoraCausalLM, attach_lora, load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--history", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--train-users", type=int, default=300)
    parser.add_argument("--test-users", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--out", default=None)
    ns = parser.parse_args()
    quiet_library_warnings()
    torch.set_num_threads(2)
    args = LlaraArguments(history=ns.history, candidates=ns.candidates,
                          train_users=ns.train_users, valid_users=10,
                          test_users=ns.test_users)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_llara(work, args)
        train, test = read_examples(work / "train.parquet"), read_examples(work / "test.parquet")
        table = json.loads((work / "candidates.json").read_text())
        titles, sequences = read_titles(), read_sequences()
        popularity = Counter(titles[i] for r in train for i in sequences[r.id[1:]])
        popular = summary([float(hit_by_likelihood(
            [popularity[c] for c in table[r.id]["candidates"]], table[r.id]["target"]))
            for r in test])
        lora = LoraArguments(rank=ns.rank)
        training = TrainArguments(epochs=ns.epochs, lr=ns.lr, max_length=ns.max_length)
        base = load_base(ns.base)
        fresh = LoraCausalLM(attach_lora(base, lora, seed=0), base.tokenizer, ns.max_length)
        start = time.perf_counter()
        before = evaluate_recommendations(fresh, test, table, generate=ns.generate)
        score_seconds = time.perf_counter() - start
        start = time.perf_counter()
        api.train(ns.base, work / "train.parquet", work / "adapter", lora, training,
                  progress=True)
        train_seconds = time.perf_counter() - start
        model, _ = load_adapter(load_base(ns.base), work / "adapter")
        after = evaluate_recommendations(model, test, table, generate=ns.generate)
    result = {"arguments": vars(ns), "popularity_rule": popular, "base": before,
              "fine_tuned": after, "train_seconds": train_seconds,
              "score_seconds_per_model": score_seconds}
    print_and_write(result, ns.out)


if __name__ == "__main__":
    main()
