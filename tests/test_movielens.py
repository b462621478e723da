"""The embedded MovieLens data and the demo's data builder."""

import torch
from conftest import tiny_lora

from eraser_dist.experiments.demo import corrupt_genres
from eraser_dist.experiments.movielens import genre_examples, read_movies
from eraser_dist.llm.adapters import AdapterMeta, adapter_vector, save_adapter


def test_movies_are_read_from_the_recbole_package():
    movies = read_movies()
    assert len(movies) == 1680  # 1,682 items less the two with genre "unknown"
    toy_story = next(m for m in movies if m.item_id == "1")
    assert (toy_story.title, toy_story.year) == ("Toy Story", "1995")
    assert toy_story.genres == ("Animation", "Children's", "Comedy")


def test_genre_examples_are_deterministic_and_distinct():
    a, b = genre_examples(50, seed=3), genre_examples(50, seed=3)
    assert a == b
    assert genre_examples(50, seed=4) != a
    assert len({e.id for e in a}) == 50
    assert all(e.query.startswith("Genres of the movie ") and e.response for e in a)


def test_corruption_touches_exactly_the_requested_rows():
    rows = genre_examples(60, seed=0)
    noisy, picked = corrupt_genres(rows, 7, seed=0)
    changed = [i for i, (r, n) in enumerate(zip(rows, noisy, strict=True)) if r != n]
    assert changed == picked and len(picked) == 7
    assert all(noisy[i].response != rows[i].response and noisy[i].id == rows[i].id
               for i in picked)
    assert corrupt_genres(rows, 7, seed=0) == (noisy, picked)


def test_adapter_vector_reads_back_the_saved_weights(tmp_path):
    model = tiny_lora(torch.float32)
    theta = model.get_flat() + torch.randn(model.dim, generator=torch.Generator().manual_seed(0))
    model.set_flat(theta)
    meta = AdapterMeta("tiny-llama", "x", 0.0, 64, {})
    save_adapter(model, tmp_path / "a", meta)
    model.set_flat(torch.zeros(model.dim))
    assert torch.equal(adapter_vector(model, tmp_path / "a"), theta)
