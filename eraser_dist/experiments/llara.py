"""LLaRA-style sequential recommendation rows from MovieLens-100K, and their corruptions.

Each user's ratings, in time order, give a row: the prompt lists the titles of the last
``history`` movies before the user's final one and ``candidates`` titles (that final movie
and ``candidates − 1`` movies the user never rated, seeded per user, in a seeded order); the
response is the final movie's title. Users are split into train / validation / test, so no
user is in two splits.

The paper's three erase experiments start from a training set with something to undo, and
:func:`build_llara` writes each one with the request that undoes it:

- ``qm`` (query modification): a share of the training users get one movie inserted into, or
  replaced in, their history; the request ``modify_query`` restores the clean prompts.
- ``rc10`` / ``rc40`` (response correction): a share of the rows get a wrong target, another
  of their own candidates (the harder variant: a plausible answer); ``correct_response``
  restores the true titles.
- ``ir`` (instance removal): the training set is clean; ``remove`` drops a share of users.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..arguments import LlaraArguments
from ..data import Example
from .movielens import movielens_dir, read_items
from .tasksets import picked_rows, seeded_split, write_task_set


@dataclass(frozen=True)
class UserRow:
    """One user's row: item ids of the history (oldest first), the target, the candidates."""

    user: str
    history: tuple[str, ...]
    target: str
    candidates: tuple[str, ...]


def read_titles() -> dict[str, str]:
    """item id → title, for every movie of ml-100k.item."""
    return {m.item_id: m.title or f"movie {m.item_id}" for m in read_items()}


def read_sequences() -> dict[str, list[str]]:
    """user id → item ids in the order they were rated (timestamp, then item id)."""
    lines = (movielens_dir() / "ml-100k.inter").read_text(encoding="latin-1").splitlines()
    rated: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for line in lines[1:]:
        user, item, _, stamp = line.split("\t")
        rated[user].append((float(stamp), int(item), item))
    return {u: [item for *_, item in sorted(r)] for u, r in rated.items()}


def user_rows(args: LlaraArguments, sequences: dict[str, list[str]],
              items: list[str]) -> list[UserRow]:
    """A row for every user with at least ``history + 1`` ratings, in user-id order."""
    rows = []
    for user in sorted(sequences, key=int):
        sequence = sequences[user]
        if len(sequence) < args.history + 1:
            continue
        rng = random.Random(f"{args.seed}:{user}")
        seen = set(sequence)
        negatives = rng.sample([i for i in items if i not in seen], args.candidates - 1)
        candidates = [sequence[-1], *negatives]
        rng.shuffle(candidates)
        rows.append(UserRow(user, tuple(sequence[-args.history - 1:-1]), sequence[-1],
                            tuple(candidates)))
    return rows


def prompt(history: tuple[str, ...], candidates: tuple[str, ...], titles: dict[str, str]) -> str:
    watched = "; ".join(titles[i] for i in history)
    options = "; ".join(titles[i] for i in candidates)
    return (f"A user watched, in this order: {watched}. Which of these will the user watch "
            f"next? Candidates: {options}. Answer with one title.")


def to_example(row: UserRow, titles: dict[str, str]) -> Example:
    return Example(f"u{row.user}", prompt(row.history, row.candidates, titles),
                   titles[row.target])


def corrupt_queries(rows: list[UserRow], share: float, items: list[str], titles,
                    seed: int) -> tuple[list[Example], dict[str, Any]]:
    """Insert or replace one movie the user never rated in the histories of ``share`` of the
    rows; returns the corrupted set and the modify_query request that restores it."""
    out, edits = [to_example(r, titles) for r in rows], []
    rng = random.Random(f"{seed}:qm-edits")
    for i in picked_rows(len(rows), share, "qm", seed):
        row = rows[i]
        unseen = rng.choice([m for m in items if m not in row.history and m != row.target
                             and m not in row.candidates])
        history = list(row.history)
        if rng.random() < 0.5:
            history[rng.randrange(len(history))] = unseen  # replace one
        else:  # insert after at least one movie, then drop the oldest to keep the length
            at = rng.randrange(1, len(history) + 1)
            history = (history[:at] + [unseen] + history[at:])[1:]
        out[i] = replace(out[i], query=prompt(tuple(history), row.candidates, titles))
        edits.append({"id": out[i].id, "query": to_example(row, titles).query})
    return out, {"kind": "modify_query", "edits": edits}


def corrupt_responses(rows: list[UserRow], share: float, titles, seed: int, tag: str):
    """Give ``share`` of the rows another of their own candidates as the answer; returns the
    corrupted set and the correct_response request that restores it."""
    out, edits = [to_example(r, titles) for r in rows], []
    rng = random.Random(f"{seed}:{tag}-edits")
    for i in picked_rows(len(rows), share, tag, seed):
        wrong = rng.choice([c for c in rows[i].candidates
                            if titles[c] != titles[rows[i].target]])
        out[i] = replace(out[i], response=titles[wrong])
        edits.append({"id": out[i].id, "response": titles[rows[i].target]})
    return out, {"kind": "correct_response", "edits": edits}


def build_llara(out: str | Path, args: LlaraArguments | None = None) -> dict[str, Any]:
    """Write the clean splits, each experiment's training set and request, and a manifest
    (the layout of :mod:`eraser_dist.experiments.tasksets`); returns the manifest."""
    args = args or LlaraArguments()
    titles = read_titles()
    items = sorted(titles, key=int)
    splits = seeded_split(user_rows(args, read_sequences(), items),
                          (args.train_users, args.valid_users, args.test_users), args.seed,
                          f"users with at least {args.history + 1} ratings")
    candidates = {f"u{r.user}": {"candidates": [titles[c] for c in r.candidates],
                                 "target": r.candidates.index(r.target)}
                  for rows in splits.values() for r in rows}
    train = splits["train"]
    experiments = {"qm": corrupt_queries(train, args.query_share, items, titles, args.seed)}
    for share in args.response_shares:
        tag = f"rc{round(100 * share):02d}"
        experiments[tag] = corrupt_responses(train, share, titles, args.seed, tag)
    removed = [f"u{train[i].user}" for i in picked_rows(len(train), args.remove_share, "ir",
                                                         args.seed)]
    experiments["ir"] = ([to_example(r, titles) for r in train],
                         {"kind": "remove", "ids": removed})
    examples = {name: [to_example(r, titles) for r in rows] for name, rows in splits.items()}
    return write_task_set(out, asdict(args), examples, candidates, experiments)
