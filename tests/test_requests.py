"""Erase requests: parsing, loading from a file, and the edited objective they define."""

from __future__ import annotations

import json

import pytest
import torch

from eraser_dist.core.requests import (
    EraseRequest,
    apply_request,
    apply_requests,
    load_request,
    parse_request,
)
from eraser_dist.data import Example
from eraser_dist.errors import EraserError


def rows(n: int = 6) -> list[Example]:
    return [Example(f"r{i}", f"What is {i} plus {i}?", str(2 * i)) for i in range(n)]


# -- parse_request: valid requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"kind": "remove", "ids": ["r2", "r0"]}, EraseRequest("remove", ("r2", "r0"))),
        (
            {"kind": "modify_query", "edits": [{"id": "r1", "query": "What is one plus one?"}]},
            EraseRequest("modify_query", ("r1",), ("What is one plus one?",)),
        ),
        (
            {
                "kind": "correct_response",
                "edits": [{"id": "r3", "response": "six"}, {"id": "r0", "response": "zero"}],
            },
            EraseRequest("correct_response", ("r3", "r0"), ("six", "zero")),
        ),
    ],
    ids=["remove", "modify_query", "correct_response"],
)
def test_parse_valid_request_and_round_trip(obj, expected):
    request = parse_request(obj)
    assert request == expected
    # to_json gives back the same JSON (order kept), and it survives a trip through text.
    assert request.to_json() == obj
    assert parse_request(json.loads(json.dumps(request.to_json()))) == request


def test_load_request_reads_a_file(tmp_path):
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"kind": "remove", "ids": ["é", "r1"]}), encoding="utf-8")
    assert load_request(path) == EraseRequest("remove", ("é", "r1"))
    assert load_request(str(path)) == EraseRequest("remove", ("é", "r1"))


# -- parse_request: invalid requests --------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (["r1"], "must be a JSON object"),
        ("remove r1", "must be a JSON object"),
        ({"ids": ["r1"]}, "unknown kind None"),
        ({"kind": "delete", "ids": ["r1"]}, "unknown kind 'delete'.*remove, modify_query"),
        ({"kind": "remove", "ids": []}, "'ids' is empty"),
        ({"kind": "remove"}, "'ids' must be a list"),
        ({"kind": "remove", "ids": "r1"}, "'ids' must be a list"),
        ({"kind": "remove", "ids": ["r1", 2]}, "every id must be a string"),
        ({"kind": "remove", "ids": [None]}, "every id must be a string"),
        ({"kind": "remove", "ids": ["r1", "r2", "r1"]}, "duplicate id.*r1"),
        ({"kind": "remove", "ids": ["r1"], "reason": "gdpr"}, "unknown field.*'reason'"),
        ({"kind": "remove", "edits": [{"id": "r1"}]}, "unknown field.*'edits'"),
        ({"kind": "modify_query", "edits": []}, "'edits' is empty"),
        ({"kind": "modify_query", "ids": ["r1"]}, "unknown field.*'ids'"),
        ({"kind": "modify_query"}, "'edits' must be a list"),
        ({"kind": "modify_query", "edits": ["r1"]}, "each edit must be an object"),
        ({"kind": "modify_query", "edits": [{"id": "r1", "query": ""}]},
         "edit of 'r1' needs a non-empty string 'query'"),
        ({"kind": "modify_query", "edits": [{"id": "r1"}]},
         "edit of 'r1' needs a non-empty string 'query'"),
        ({"kind": "modify_query", "edits": [{"id": "r1", "query": 5}]},
         "needs a non-empty string 'query'"),
        ({"kind": "modify_query", "edits": [{"id": "r1", "response": "x"}]},
         "unknown field.*'response'.*in an edit"),
        ({"kind": "correct_response", "edits": [{"id": 1, "response": "x"}]},
         "string 'id'"),
        ({"kind": "correct_response", "edits": [{"response": "x"}]}, "string 'id'"),
        ({"kind": "correct_response", "edits": [{"id": "r1", "response": ""}]},
         "non-empty string 'response'"),
        ({"kind": "correct_response",
          "edits": [{"id": "r1", "response": "a"}, {"id": "r1", "response": "b"}]},
         "duplicate id.*r1"),
        ({"kind": "correct_response", "edits": [{"id": "r1", "response": "a"}], "x": 1},
         "unknown field.*'x'"),
    ],
)
def test_parse_rejects_bad_request(obj, message):
    with pytest.raises(EraserError, match=message) as info:
        parse_request(obj)
    assert str(info.value).startswith("bad request: ")


def test_load_request_missing_file(tmp_path):
    with pytest.raises(EraserError, match=r"request file .*nope\.json does not exist"):
        load_request(tmp_path / "nope.json")


@pytest.mark.parametrize("content", [b"{'kind': 'remove'}", b"", b'{"kind": "remove", ',
                                     b"\xff\xfe\x00garbage"])
def test_load_request_invalid_json(tmp_path, content):
    path = tmp_path / "req.json"
    path.write_bytes(content)
    with pytest.raises(EraserError, match=r"req\.json is not valid JSON"):
        load_request(path)


def test_load_request_validates_content(tmp_path):
    path = tmp_path / "req.json"
    path.write_text('{"kind": "forget", "ids": ["r1"]}', encoding="utf-8")
    with pytest.raises(EraserError, match="unknown kind 'forget'"):
        load_request(path)


# -- apply_request --------------------------------------------------------------------------


def test_apply_remove():
    data = rows(6)
    snapshot = list(data)
    edited = apply_request(EraseRequest("remove", ("r4", "r1")), data)

    assert [e.id for e in edited.rows_after] == ["r0", "r2", "r3", "r5"]
    assert edited.rows_after == [data[0], data[2], data[3], data[5]]
    assert torch.equal(edited.weights_after, torch.ones(4, dtype=torch.float64))
    assert edited.changed_rows == [data[4], data[1]]  # in request order
    assert edited.weight_changes.tolist() == [-1.0, -1.0]
    assert edited.weight_before == 6.0
    assert edited.weight_after == 4.0
    assert data == snapshot  # the input list is untouched


@pytest.mark.parametrize(("kind", "field"), [("modify_query", "query"),
                                             ("correct_response", "response")])
def test_apply_edit(kind, field):
    data = rows(5)
    snapshot = list(data)
    request = EraseRequest(kind, ("r3", "r0"), ("new three", "new zero"))
    edited = apply_request(request, data)

    other = "response" if field == "query" else "query"
    after = edited.rows_after
    assert [e.id for e in after] == [e.id for e in data]  # same rows, same positions
    assert getattr(after[3], field) == "new three"
    assert getattr(after[0], field) == "new zero"
    assert getattr(after[3], other) == getattr(data[3], other)  # the other field is kept
    assert getattr(after[0], other) == getattr(data[0], other)
    assert [after[i] for i in (1, 2, 4)] == [data[i] for i in (1, 2, 4)]

    # old rows (request order), then their new versions (same order)
    assert edited.changed_rows == [data[3], data[0], after[3], after[0]]
    assert edited.weight_changes.tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert edited.weight_before == 5.0
    assert edited.weight_after == 5.0
    assert torch.equal(edited.weights_after, torch.ones(5, dtype=torch.float64))
    assert data == snapshot
    assert getattr(data[3], field) != "new three"


def test_stages_walk_from_d_to_d_prime_in_equal_parts():
    data = rows(5)
    edited = apply_requests([EraseRequest("remove", ("r4",)),
                             EraseRequest("correct_response", ("r1",), ("three",))], data)
    new_r1 = edited.rows_after[1]
    # f_t keeps an edited row's old and new versions side by side, weights 1 − t and t
    middle, weights = edited.at(0.25)
    assert middle == [data[0], data[1], new_r1, data[2], data[3], data[4]]
    assert weights.tolist() == [1.0, 0.75, 0.25, 1.0, 1.0, 0.75]
    for t, expected_rows, expected_weights in ((0.0, data, edited.weights_before),
                                               (1.0, edited.rows_after, edited.weights_after)):
        at_t, weights_t = edited.at(t)
        assert at_t == expected_rows and torch.equal(weights_t, expected_weights)

    parts = [edited.stage(i, 4) for i in range(1, 5)]
    assert parts[0].rows_before == data and parts[-1].rows_after == edited.rows_after
    for earlier, later in zip(parts, parts[1:], strict=False):  # each starts where one ended
        assert later.rows_before == earlier.rows_after
        assert torch.equal(later.weights_before, earlier.weights_after)
    assert [p.weight_after for p in parts] == [4.75, 4.5, 4.25, 4.0]
    assert torch.equal(sum(p.weight_changes for p in parts), edited.weight_changes)
    assert torch.equal(parts[2].removed_weights(),
                       torch.tensor([0.25, 0.0], dtype=torch.float64))
    with pytest.raises(EraserError, match="stage 5 of 4 does not exist"):
        edited.stage(5, 4)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (EraseRequest("remove", ("r1", "x9", "y7")), r"unknown id\(s\) x9, y7 not in"),
        (EraseRequest("modify_query", ("nope",), ("q",)), r"unknown id\(s\) nope"),
        (EraseRequest("correct_response", ("r2",), ("4",)),
         "edit of 'r2' equals the current response"),
        (EraseRequest("modify_query", ("r1", "r2"), ("changed", "What is 2 plus 2?")),
         "edit of 'r2' equals the current query"),
        (EraseRequest("remove", ("r0", "r1", "r2", "r3")), "would remove every row"),
    ],
)
def test_apply_rejects(request_, message):
    data = rows(4)
    snapshot = list(data)
    with pytest.raises(EraserError, match=message):
        apply_request(request_, data)
    assert data == snapshot
