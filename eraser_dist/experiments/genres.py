"""The genre task from MovieLens-100K: "Genres of the movie T (Y)?" → "G1, G2", and the
paper's three corruptions of it, as a task set (:mod:`eraser_dist.experiments.tasksets`).

Movies are split into train / validation / test. Each movie's candidates are its own genre
list and ``candidates − 1`` other genre lists seen in training, seeded per movie.

- ``qm``: a share of the training rows ask about another training movie (one with other
  genres) while keeping their own answer; ``modify_query`` restores the right title.
- ``rc10`` / ``rc40``: a share of the rows answer another of their candidates;
  ``correct_response`` restores the true genres.
- ``ir``: the training set is clean; ``remove`` drops a share of the movies.
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..arguments import GenreArguments
from ..data import Example
from ..errors import EraserError
from .movielens import Movie, genre_answer, genre_question, read_movies
from .tasksets import picked_rows, seeded_split, write_task_set


def to_example(movie: Movie) -> Example:
    return Example(f"movie-{movie.item_id}", genre_question(movie), genre_answer(movie.genres))


def movie_candidates(movie: Movie, pool: list[str], count: int, seed: int) -> dict[str, Any]:
    """The movie's genre list and ``count − 1`` others from ``pool``, in a seeded order."""
    rng = random.Random(f"{seed}:{movie.item_id}")
    answer = genre_answer(movie.genres)
    options = [answer, *rng.sample([g for g in pool if g != answer], count - 1)]
    rng.shuffle(options)
    return {"candidates": options, "target": options.index(answer)}


def build_genres(out: str | Path, args: GenreArguments | None = None) -> dict[str, Any]:
    """Write the genre task set; returns its manifest."""
    args = args or GenreArguments()
    splits = seeded_split(read_movies(), (args.train_movies, args.valid_movies,
                                          args.test_movies), args.seed, "movies with known genres")
    train = splits["train"]
    pool = sorted({genre_answer(m.genres) for m in train})
    if len(pool) < args.candidates:
        raise EraserError(f"the training movies have {len(pool)} distinct genre lists, fewer "
                          f"than {args.candidates} candidates")
    candidates = {f"movie-{m.item_id}": movie_candidates(m, pool, args.candidates, args.seed)
                  for rows in splits.values() for m in rows}
    clean = [to_example(m) for m in train]

    qm, edits = list(clean), []
    rng = random.Random(f"{args.seed}:qm-edits")
    for i in picked_rows(len(train), args.query_share, "qm", args.seed):
        other = rng.choice([m for m in train if m.genres != train[i].genres])
        qm[i] = replace(clean[i], query=genre_question(other))
        edits.append({"id": clean[i].id, "query": clean[i].query})
    experiments = {"qm": (qm, {"kind": "modify_query", "edits": edits})}

    for share in args.response_shares:
        tag = f"rc{round(100 * share):02d}"
        rc, edits = list(clean), []
        rng = random.Random(f"{args.seed}:{tag}-edits")
        for i in picked_rows(len(train), share, tag, args.seed):
            options = candidates[clean[i].id]["candidates"]
            rc[i] = replace(clean[i], response=rng.choice(
                [c for c in options if c != clean[i].response]))
            edits.append({"id": clean[i].id, "response": clean[i].response})
        experiments[tag] = (rc, {"kind": "correct_response", "edits": edits})

    removed = [clean[i].id for i in picked_rows(len(train), args.remove_share, "ir", args.seed)]
    experiments["ir"] = (clean, {"kind": "remove", "ids": removed})
    examples = {name: [to_example(m) for m in rows] for name, rows in splits.items()}
    return write_task_set(out, asdict(args), examples, candidates, experiments)
