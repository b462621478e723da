"""Metrics of the recommendation experiments, on model outputs already computed.

- HitRatio@1 by likelihood: the target is the candidate the model scores highest (strictly:
  a tie with another candidate is a miss).
- HitRatio@1 by generation, as the paper does: a greedy generation is *valid* when it names
  exactly one candidate (case-insensitive substring; a title inside a longer named title
  counts only as the longer one), and a hit when that one is the target. ValidRatio is the
  share of valid generations.
- Percentile bootstrap intervals of a mean, seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def hit_by_likelihood(scores: Sequence[float], target: int) -> bool:
    """True when ``scores[target]`` is strictly the highest of the candidates' scores."""
    return all(scores[target] > s for i, s in enumerate(scores) if i != target)


def named_candidate(generation: str, candidates: Sequence[str]) -> int | None:
    """The index of the one candidate a generation names, or None (none or several)."""
    text = generation.casefold()
    found = [i for i, c in enumerate(candidates) if c.casefold() in text]
    # "Heat" inside "In the Heat of the Night": keep only titles not contained in another found
    named = [i for i in found if not any(
        i != j and candidates[i].casefold() in candidates[j].casefold() for j in found)]
    return named[0] if len(named) == 1 else None


def generation_figures(generations: Sequence[str], candidates: Sequence[Sequence[str]],
                       targets: Sequence[int]) -> dict[str, list[float]]:
    """Per row: ``valid`` (1/0) and ``hit`` (1/0) of greedy generations."""
    valid, hit = [], []
    for text, options, target in zip(generations, candidates, targets, strict=True):
        named = named_candidate(text, options)
        valid.append(float(named is not None))
        hit.append(float(named == target))
    return {"valid": valid, "hit": hit}


def bootstrap_interval(values: Sequence[float], level: float = 0.95, samples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not values:
        raise ValueError("no values to bootstrap")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    tail = (1 - level) / 2
    return means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1))]


def summary(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean and 95% bootstrap interval."""
    low, high = bootstrap_interval(values, seed=seed)
    return {"mean": sum(values) / len(values), "low": low, "high": high, "n": len(values)}
