"""The memorised-facts task: "In which city does Velora Tasken live?" → "Velora Tasken lives
in Brimholt.", one made-up fact per row, as a task set (:mod:`eraser_dist.experiments.tasksets`).

Why: the erase step is a Newton step on the quadratic model of the objective at the
adapter. Where the model is confident in an answer, the loss of that answer is far from
quadratic (its softmax saturates), and a Newton step taken there overshoots: it moves the
adapter further than retraining would. A small LM (SmolLM2-135M with a rank-8 q/v LoRA,
fine-tuned ~12 epochs) memorises a few dozen such facts to near certainty, so this task
shows the overshoot on a model that fits in minutes.

People and cities are made-up names from seeded syllables, so the base model has no prior
on any answer; people's names are unique, and every city of the pool is the answer of
some facts. The splits are disjoint people: ``train`` is learnt, ``valid`` and ``test`` are
never trained on (a held-out loss). Each fact's candidates are its response with every city
of the pool, in a seeded order.

- ``remove``: the training set is clean; the request removes ``remove`` rows.
- ``correct``: ``correct`` rows answer a wrong city of the pool; ``correct_response``
  restores the true one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..arguments import FactsArguments
from ..data import Example
from ..errors import EraserError
from .tasksets import write_task_set

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s",
          "st", "t", "th", "v", "z")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "l", "m", "n", "r", "s", "k")
CITY_ENDINGS = ("holt", "mere", "ford", "wick", "dale", "vale", "stead", "moor", "by",
                "ton")


def syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def made_up_names(count: int, rng: random.Random, make) -> list[str]:
    """``count`` distinct names, each ``make(rng)``, in the order drawn."""
    names: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * count + 1000):
        if len(names) == count:
            return list(names)
        names[make(rng)] = None
    raise EraserError(f"could not make {count} distinct made-up names; ask for fewer")


def person_name(rng: random.Random) -> str:
    return " ".join((syllable(rng) + syllable(rng)).capitalize() for _ in range(2))


def city_name(rng: random.Random) -> str:
    return (syllable(rng) + rng.choice(CITY_ENDINGS)).capitalize()


def fact_query(name: str) -> str:
    return f"In which city does {name} live?"


def fact_response(name: str, city: str) -> str:
    return f"{name} lives in {city}."


def fact_candidates(fact_id: str, name: str, city: str, pool: list[str],
                    seed: int) -> dict[str, Any]:
    """The fact's response with every city of ``pool``, in a seeded order."""
    options = [fact_response(name, c) for c in pool]
    random.Random(f"{seed}:{fact_id}").shuffle(options)
    return {"candidates": options, "target": options.index(fact_response(name, city))}


def seeded_picks(n: int, count: int, tag: str, seed: int) -> list[int]:
    """``count`` seeded row indices out of ``n``, sorted; ``tag`` names the experiment."""
    return sorted(random.Random(f"{seed}:{tag}").sample(range(n), count))


def build_facts(out: str | Path, args: FactsArguments | None = None) -> dict[str, Any]:
    """Write the facts task set; returns its manifest."""
    args = args or FactsArguments()
    sizes = {"train": args.train_facts, "valid": args.valid_facts, "test": args.test_facts}
    total = sum(sizes.values())
    people = made_up_names(total, random.Random(f"{args.seed}:names"), person_name)
    pool = made_up_names(args.cities, random.Random(f"{args.seed}:city-names"), city_name)
    # every city answers about as many facts as any other: no majority answer to learn
    rng = random.Random(f"{args.seed}:cities")
    cities = (pool * -(-total // len(pool)))[:total]
    rng.shuffle(cities)

    width = max(3, len(str(total - 1)))
    facts = [(f"fact-{i:0{width}d}", people[i], cities[i]) for i in range(total)]
    candidates = {fid: fact_candidates(fid, name, city, pool, args.seed)
                  for fid, name, city in facts}
    examples: dict[str, list[Example]] = {}
    start = 0
    for split, size in sizes.items():
        examples[split] = [Example(fid, fact_query(name), fact_response(name, city))
                           for fid, name, city in facts[start:start + size]]
        start += size

    clean = examples["train"]
    removed = [clean[i].id for i in seeded_picks(len(clean), args.remove, "remove",
                                                 args.seed)]
    corrupted, edits = list(clean), []
    rng = random.Random(f"{args.seed}:correct-edits")
    for i in seeded_picks(len(clean), args.correct, "correct", args.seed):
        _, name, city = facts[i]
        wrong = rng.choice([c for c in pool if c != city])
        corrupted[i] = replace(clean[i], response=fact_response(name, wrong))
        edits.append({"id": clean[i].id, "response": clean[i].response})
    experiments = {"remove": (clean, {"kind": "remove", "ids": removed}),
                   "correct": (corrupted, {"kind": "correct_response", "edits": edits})}
    return write_task_set(out, asdict(args), examples, candidates, experiments)
