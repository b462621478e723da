"""MovieLens-100K as shipped by the PyPI package ``recbole`` (no download), as training rows.

``ml-100k.item`` holds 1,682 movies: title, release year and genres; ``ml-100k.inter`` the
100,000 ratings. The demo's task asks a movie's genres from its title.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Example
from ..llm.models import package_dir


@dataclass(frozen=True)
class Movie:
    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]


def movielens_dir() -> Path:
    return package_dir("recbole") / "dataset_example" / "ml-100k"


def read_items() -> list[Movie]:
    """Every line of ``ml-100k.item`` as it stands, in file order (missing fields empty)."""
    lines = (movielens_dir() / "ml-100k.item").read_text(encoding="latin-1").splitlines()
    items = []
    for line in lines[1:]:  # the first line names the columns
        item_id, title, year, genres = (line.split("\t") + ["", "", ""])[:4]
        items.append(Movie(item_id, title.strip(), year, tuple(genres.split())))
    return items


def read_movies() -> list[Movie]:
    """Movies with a known year and genres, in file order."""
    return [m for m in read_items() if m.year and m.genres and m.genres != ("unknown",)]


def genre_question(movie: Movie) -> str:
    return f"Genres of the movie {movie.title} ({movie.year})?"


def genre_answer(genres: tuple[str, ...]) -> str:
    return ", ".join(genres)


def genre_examples(n: int, seed: int = 0) -> list[Example]:
    """n movies drawn with a seed, each a row "Genres of the movie T (Y)?" → "G1, G2"."""
    movies = read_movies()
    order = torch.randperm(len(movies), generator=torch.Generator().manual_seed(seed))
    return [
        Example(f"movie-{m.item_id}", genre_question(m), genre_answer(m.genres))
        for m in (movies[i] for i in order[:n].tolist())
    ]
