"""The LLaRA data builder (MovieLens-100K) and the recommendation metrics."""

import json
import math

import pytest

from eraser_dist import cli
from eraser_dist.arguments import LlaraArguments
from eraser_dist.core.requests import apply_requests, parse_request
from eraser_dist.data import read_examples
from eraser_dist.errors import EraserError
from eraser_dist.experiments.llara import build_llara, read_sequences, read_titles
from eraser_dist.experiments.metrics import (
    bootstrap_interval,
    generation_figures,
    hit_by_likelihood,
    named_candidate,
    summary,
)

SMALL = LlaraArguments(history=4, candidates=6, train_users=80, valid_users=20,
                       test_users=30, seed=3, query_share=0.1, response_shares=(0.1, 0.4),
                       remove_share=0.05)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("llara")
    return out, build_llara(out, SMALL)


def test_splits_are_disjoint_users_and_each_row_is_the_users_last_movie(built):
    out, manifest = built
    splits = {name: read_examples(out / f"{name}.parquet") for name in ("train", "valid",
                                                                        "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 80, "valid": 20, "test": 30}
    ids = [{e.id for e in rows} for rows in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    titles, sequences = read_titles(), read_sequences()
    candidates = json.loads((out / "candidates.json").read_text())
    for row in splits["test"] + splits["train"][:20]:
        sequence = sequences[row.id[1:]]
        assert row.response == titles[sequence[-1]]
        watched = row.query.split("in this order: ")[1].split(". Which")[0]
        assert watched == "; ".join(titles[i] for i in sequence[-5:-1])
        entry = candidates[row.id]
        assert len(entry["candidates"]) == 6
        assert entry["candidates"][entry["target"]] == row.response
        rated = {titles[i] for i in sequence}
        assert sum(c in rated for c in entry["candidates"]) == 1  # negatives never rated
    assert manifest["splits"]["test"]["rows"] == 30


@pytest.mark.parametrize("name,share", [("qm", 0.1), ("rc10", 0.1), ("rc40", 0.4),
                                        ("ir", 0.05)])
def test_corruption_touches_exactly_the_share_and_its_request_undoes_it(built, name, share):
    out, _ = built
    clean = read_examples(out / "train.parquet")
    corrupted = read_examples(out / name / "train.parquet")
    request = parse_request(json.loads((out / name / "request.json").read_text()))
    assert len(request.ids) == round(share * len(clean))
    if name == "ir":
        assert corrupted == clean and request.kind == "remove"
        return
    changed = {c.id for c, d in zip(clean, corrupted, strict=True) if c != d}
    assert changed == set(request.ids)
    assert apply_requests([request], corrupted).rows_after == clean
    field = "query" if name == "qm" else "response"
    assert all(getattr(c, field) != getattr(d, field) for c, d in
               zip(clean, corrupted, strict=True) if c.id in changed)


def test_same_seed_same_files_another_seed_other_files(built, tmp_path):
    out, manifest = built
    again = build_llara(tmp_path / "again", SMALL)
    assert again == manifest
    assert (tmp_path / "again" / "qm" / "request.json").read_text() == (
        out / "qm" / "request.json").read_text()
    other = build_llara(tmp_path / "other", LlaraArguments(**{**SMALL.__dict__, "seed": 4}))
    assert other["splits"]["train"]["sha256"] != manifest["splits"]["train"]["sha256"]


def test_builder_refuses_impossible_settings(tmp_path, capsys):
    with pytest.raises(EraserError, match="users asked for"):
        build_llara(tmp_path, LlaraArguments(train_users=5000))
    with pytest.raises(EraserError, match="share"):
        build_llara(tmp_path, LlaraArguments(train_users=50, valid_users=5, test_users=5,
                                             query_share=0.0))
    assert cli.main(["data", "llara", "--out", str(tmp_path / "c"), "--train-users", "9999"]) == 2
    assert "users asked for" in capsys.readouterr().err


# -- metrics on hand-made outputs ------------------------------------------------------------

def test_hit_by_likelihood_counts_a_tie_as_a_miss():
    assert hit_by_likelihood([-1.0, -0.5, -2.0], 1)
    assert not hit_by_likelihood([-1.0, -0.5, -2.0], 0)
    assert not hit_by_likelihood([-0.5, -0.5, -2.0], 1)


def test_generation_is_valid_only_when_it_names_exactly_one_candidate():
    options = ["Heat", "In the Heat of the Night", "Fargo", "Alien"]
    assert named_candidate("I think: In the Heat of the Night", options) == 1
    assert named_candidate("fargo", options) == 2
    assert named_candidate("Fargo or Alien", options) is None
    assert named_candidate("Titanic", options) is None
    figures = generation_figures(["Fargo", "Alien, surely", "Fargo and Heat", "no idea"],
                                 [options] * 4, [2, 2, 2, 0])
    assert figures == {"valid": [1.0, 1.0, 0.0, 0.0], "hit": [1.0, 0.0, 0.0, 0.0]}


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    small = [1.0, 0.0] * 10
    large = [1.0, 0.0] * 500
    lo_s, hi_s = bootstrap_interval(small, seed=1)
    lo_l, hi_l = bootstrap_interval(large, seed=1)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    # half-width ≈ 1.96·sqrt(p(1−p)/n): 0.22 for n = 20, 0.031 for n = 1000
    assert abs((hi_s - lo_s) / 2 - 1.96 * math.sqrt(0.25 / 20)) < 0.05
    assert abs((hi_l - lo_l) / 2 - 1.96 * math.sqrt(0.25 / 1000)) < 0.006
    assert bootstrap_interval(small, seed=1) == (lo_s, hi_s)
    assert summary(small)["mean"] == 0.5


def test_candidate_scores_are_the_negated_training_loss_of_each_title():
    import torch
    from conftest import tiny_lora

    from eraser_dist.core.objective import loss_values
    from eraser_dist.data import Example
    from eraser_dist.experiments.recommend import candidate_scores, evaluate_recommendations

    model = tiny_lora(torch.float32)
    rows = [Example("u1", "watched: a; b", "cat"), Example("u2", "watched: c", "owl")]
    options = [["dog", "cat", "emu"], ["owl", "bee"]]
    scores = candidate_scores(model, rows, options, batch_size=2)
    direct = -loss_values(model, [Example("x", rows[0].query, "emu")], 1)
    assert [len(s) for s in scores] == [3, 2]
    assert scores[0][2] == pytest.approx(float(direct), rel=1e-5)
    table = {"u1": {"candidates": options[0], "target": 1},
             "u2": {"candidates": options[1], "target": 0}}
    result = evaluate_recommendations(model, rows, table, batch_size=2, generate=True)
    hits = [float(hit_by_likelihood(s, t)) for s, t in zip(scores, [1, 0], strict=True)]
    assert result["hit_rate_likelihood"]["mean"] == sum(hits) / 2
    assert result["target_loglik"]["mean"] == pytest.approx((scores[0][1] + scores[1][0]) / 2)
    texts = [model.generate(r.query, max_new_tokens=24) for r in rows]
    expected = generation_figures(texts, options, [1, 0])
    assert result["valid_ratio"]["mean"] == sum(expected["valid"]) / 2
    assert result["hit_rate_generation"]["mean"] == sum(expected["hit"]) / 2
