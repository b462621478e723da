"""The genre task builder (MovieLens-100K titles → genres) and the task-set layout."""

import json

import pytest

from eraser_dist import cli
from eraser_dist.arguments import GenreArguments
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.data import read_examples
from eraser_dist.errors import EraserError
from eraser_dist.experiments.genres import build_genres
from eraser_dist.experiments.movielens import genre_question, read_movies
from eraser_dist.experiments.tasksets import read_task_set

SMALL = GenreArguments(train_movies=60, valid_movies=10, test_movies=20, candidates=4, seed=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("genres")
    return out, build_genres(out, SMALL)


def test_splits_are_disjoint_movies_with_their_true_genres_among_the_candidates(built):
    out, manifest = built
    task = read_task_set(out)
    splits = {name: task.split(name) for name in ("train", "valid", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "valid": 10, "test": 20}
    ids = [{e.id for e in rows} for rows in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    movies = {f"movie-{m.item_id}": m for m in read_movies()}
    train_answers = {e.response for e in splits["train"]}
    for row in splits["train"] + splits["test"]:
        movie = movies[row.id]
        assert row.query == genre_question(movie)
        assert row.response == ", ".join(movie.genres)
        entry = task.candidates[row.id]
        assert len(entry["candidates"]) == len(set(entry["candidates"])) == 4
        assert entry["candidates"][entry["target"]] == row.response
        assert set(entry["candidates"]) - {row.response} <= train_answers  # seen in training
    assert manifest["experiments"]["rc40"]["affected"] == 24


@pytest.mark.parametrize("name,share", [("qm", 0.1), ("rc10", 0.1), ("rc40", 0.4),
                                        ("ir", 0.05)])
def test_corruption_touches_exactly_the_share_and_its_request_undoes_it(built, name, share):
    out, _ = built
    task = read_task_set(out)
    clean = task.split("train")
    corrupted = read_examples(task.experiment_data(name))
    request = parse_request(json.loads(task.experiment_request(name).read_text()))
    assert len(request.ids) == round(share * len(clean))
    if name == "ir":
        assert corrupted == clean and request.kind == "remove"
        return
    changed = {c.id for c, d in zip(clean, corrupted, strict=True) if c != d}
    assert changed == set(request.ids)
    assert apply_requests([request], corrupted).rows_after == clean
    for c, d in zip(clean, corrupted, strict=True):
        if c.id in changed and name == "qm":  # another movie's title, with other genres
            assert d.query != c.query and d.response == c.response
        elif c.id in changed:  # another of its own candidates
            assert d.response != c.response
            assert d.response in task.candidates[c.id]["candidates"]


def test_same_seed_same_files_another_seed_other_files(built, tmp_path):
    out, manifest = built
    assert build_genres(tmp_path / "again", SMALL) == manifest
    for name in ("candidates.json", "rc10/request.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    other = build_genres(tmp_path / "other", GenreArguments(**{**SMALL.__dict__, "seed": 3}))
    assert other["splits"]["train"]["sha256"] != manifest["splits"]["train"]["sha256"]


def test_bad_settings_and_missing_task_sets_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(EraserError, match="movies asked for"):
        build_genres(tmp_path, GenreArguments(train_movies=5000))
    with pytest.raises(EraserError, match="at least 2"):
        build_genres(tmp_path, GenreArguments(candidates=1))
    with pytest.raises(EraserError, match="not a task set"):
        read_task_set(tmp_path / "nothing")
    build_genres(tmp_path / "t", SMALL)
    with pytest.raises(EraserError, match="no experiment 'qx'"):
        read_task_set(tmp_path / "t").experiment_data("qx")
    assert cli.main(["data", "genres", "--out", str(tmp_path / "c"), "--test-movies",
                     "9999"]) == 2
    assert "movies asked for" in capsys.readouterr().err
