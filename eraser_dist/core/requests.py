"""Erase requests (what to delete or correct) and the edited objective they define.

A request is JSON, one of::

    {"kind": "remove", "ids": ["a", "b"]}
    {"kind": "modify_query", "edits": [{"id": "a", "query": "new prompt"}]}
    {"kind": "correct_response", "edits": [{"id": "a", "response": "new answer"}]}

Applying it to a training set D gives the edited objective f_new over D': the same rows with
some weights changed (removed: 1 → 0; edited: the old row 1 → 0 and the new row 0 → 1).
:class:`EditedObjective` records D' and the changes, which is all the influence step needs.
Several requests against one adapter apply as one batch (:func:`apply_requests`): their rows
must be disjoint, and each changed row remembers which request it came from, so that the
batch's one solve can still report each request's own ΔΘ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data import Example
from ..errors import EraserError

REQUEST_KINDS = ("remove", "modify_query", "correct_response")
EDITED_FIELD = {"modify_query": "query", "correct_response": "response"}


@dataclass(frozen=True)
class EraseRequest:
    """A validated request. ``new_texts[i]`` is the new query/response of ``ids[i]`` (edits)."""

    kind: str
    ids: tuple[str, ...]
    new_texts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "remove":
            return {"kind": "remove", "ids": list(self.ids)}
        field = EDITED_FIELD[self.kind]
        return {
            "kind": self.kind,
            "edits": [{"id": i, field: t} for i, t in zip(self.ids, self.new_texts, strict=True)],
        }


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise EraserError(f"bad request: {message}")


def _check_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    _require(not unknown, f"unknown field(s) {', '.join(map(repr, unknown))} in {where}")


def parse_request(obj: Any) -> EraseRequest:
    """Validate the JSON form of a request (not yet against data)."""
    _require(isinstance(obj, dict), "a request must be a JSON object")
    kind = obj.get("kind")
    _require(
        kind in REQUEST_KINDS,
        f"unknown kind {kind!r}; expected one of {', '.join(REQUEST_KINDS)}",
    )
    if kind == "remove":
        _check_keys(obj, {"kind", "ids"}, "a remove request")
        ids = obj.get("ids")
        _require(isinstance(ids, list), "'ids' must be a list of row ids")
        _require(len(ids) > 0, "'ids' is empty: nothing to remove")
        _require(all(isinstance(i, str) for i in ids), "every id must be a string")
        texts: list[str] = []
    else:
        field = EDITED_FIELD[kind]
        _check_keys(obj, {"kind", "edits"}, f"a {kind} request")
        edits = obj.get("edits")
        _require(isinstance(edits, list), f"'edits' must be a list of {{id, {field}}} objects")
        _require(len(edits) > 0, "'edits' is empty: nothing to change")
        ids, texts = [], []
        for edit in edits:
            _require(isinstance(edit, dict), f"each edit must be an object with 'id' and '{field}'")
            _check_keys(edit, {"id", field}, "an edit")
            _require(isinstance(edit.get("id"), str), "every edit needs a string 'id'")
            text = edit.get(field)
            _require(isinstance(text, str) and text != "", f"edit of {edit['id']!r} needs a "
                     f"non-empty string '{field}'")
            ids.append(edit["id"])
            texts.append(text)
    seen: set[str] = set()
    dups = sorted({i for i in ids if i in seen or seen.add(i)})
    _require(not dups, f"duplicate id(s) {', '.join(dups[:5])}")
    return EraseRequest(kind, tuple(ids), tuple(texts))


def load_request(path: str | os.PathLike) -> EraseRequest:
    path = Path(path)
    if not path.is_file():
        raise EraserError(f"request file {path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EraserError(f"request file {path} is not valid JSON: {err}") from err
    return parse_request(obj)


@dataclass
class EditedObjective:
    """f_new relative to f: both weighted row sets, and the rows whose weight changed.

    ``rows_before``/``weights_before`` [n] are D (the objective the adapter was fitted on),
    ``rows_after``/``weights_after`` [n'] are D' (the objective after the request);
    ``changed_rows``/``weight_changes`` are the rows whose weight moved and by how much
    (−1 for a removed row or the old version of an edited row, +1 for the new version).
    ``segments`` [n_changed] int64 says which request of a batch each changed row came
    from (None: all from one request).
    """

    rows_before: list[Example]
    weights_before: torch.Tensor
    rows_after: list[Example]
    weights_after: torch.Tensor
    changed_rows: list[Example]
    weight_changes: torch.Tensor
    segments: torch.Tensor | None = None

    @property
    def weight_before(self) -> float:
        return float(self.weights_before.sum())

    @property
    def weight_after(self) -> float:
        return float(self.weights_after.sum())

    def _segments(self) -> torch.Tensor:
        if self.segments is None:
            return torch.zeros(len(self.changed_rows), dtype=torch.int64)
        return self.segments

    @property
    def n_requests(self) -> int:
        return int(self._segments().max()) + 1 if self.changed_rows else 1

    def request_parts(self) -> list[tuple[list[Example], torch.Tensor]]:
        """Per request of the batch: its changed rows and their weight changes."""
        segments = self._segments()
        parts = []
        for k in range(self.n_requests):
            picked = (segments == k).nonzero().flatten().tolist()
            parts.append(([self.changed_rows[i] for i in picked], self.weight_changes[picked]))
        return parts

    def added_rows(self) -> tuple[list[Example], torch.Tensor]:
        """The changed rows whose weight grew (the new versions of edited rows) and their
        weight changes [n_added]; none for a removal."""
        picked = [i for i, w in enumerate(self.weight_changes.tolist()) if w > 0]
        return [self.changed_rows[i] for i in picked], self.weight_changes[picked].double()

    def at(self, t: float) -> tuple[list[Example], torch.Tensor]:
        """Rows and weights [m] of f_t = f + t·(f_new − f), weights w + t·Δw, 0 ≤ t ≤ 1: D at
        t = 0 and D' at 1 (same order); in between an edited row's old and new versions are
        both there, with weights 1 − t and t."""
        change = dict(zip(self.changed_rows, self.weight_changes.tolist(), strict=True))
        new_versions = {row.id: (row, w) for row, w in change.items() if w > 0}
        rows, weights = [], []
        for row, w in zip(self.rows_before, self.weights_before.tolist(), strict=True):
            versions = [(row, w + t * change.get(row, 0.0))]
            if row.id in new_versions:
                new, dw = new_versions[row.id]
                versions.append((new, t * dw))
            for version, weight in versions:
                if weight > 0:
                    rows.append(version)
                    weights.append(weight)
        return rows, torch.tensor(weights, dtype=torch.float64)

    def stage(self, index: int, stages: int) -> EditedObjective:
        """Part ``index`` (1 … ``stages``) of the edit cut into equal parts along f_t: the
        edit from f at t = (index − 1)/stages to f at t = index/stages, with weight changes
        Δw/stages."""
        if not 1 <= index <= stages:
            raise EraserError(f"stage {index} of {stages} does not exist")
        before, after = self.at((index - 1) / stages), self.at(index / stages)
        return EditedObjective(*before, *after, self.changed_rows,
                               self.weight_changes / stages, self.segments)

    def removed_weights(self) -> torch.Tensor:
        """W − W' per request [K] float64: the weight it takes out of the objective."""
        return -torch.zeros(self.n_requests, dtype=torch.float64).index_add(
            0, self._segments(), self.weight_changes.double())


def apply_request(request: EraseRequest, examples: Sequence[Example]) -> EditedObjective:
    """Check one request against the training set and build f_new; the input is not changed."""
    return apply_requests([request], examples)


def apply_requests(
    requests: Sequence[EraseRequest], examples: Sequence[Example]
) -> EditedObjective:
    """f_new after a batch of requests with disjoint rows, applied together."""
    _require(len(requests) > 0, "a batch needs at least one request")
    by_id = {e.id: e for e in examples}
    named: dict[str, int] = {}
    for k, request in enumerate(requests):
        for i in request.ids:
            _require(i not in named, f"row {i!r} is named by requests {named.get(i, 0) + 1} "
                     f"and {k + 1} of one batch")
            named[i] = k
    unknown = [i for i in named if i not in by_id]
    _require(not unknown, f"unknown id(s) {', '.join(unknown[:5])} not in the training set")
    removed: set[str] = set()
    new_rows: dict[str, Example] = {}
    changed: list[Example] = []
    changes: list[float] = []
    segments: list[int] = []
    for k, request in enumerate(requests):
        changed += [by_id[i] for i in request.ids]
        changes += [-1.0] * len(request.ids)
        segments += [k] * len(request.ids)
        if request.kind == "remove":
            removed.update(request.ids)
            continue
        field = EDITED_FIELD[request.kind]
        for i, text in zip(request.ids, request.new_texts, strict=True):
            _require(getattr(by_id[i], field) != text, f"edit of {i!r} equals the current {field}")
            new_rows[i] = replace(by_id[i], **{field: text})
        changed += [new_rows[i] for i in request.ids]
        changes += [1.0] * len(request.ids)
        segments += [k] * len(request.ids)
    _require(len(removed) < len(examples), "it would remove every row of the training set")
    after = [new_rows.get(e.id, e) for e in examples if e.id not in removed]
    return EditedObjective(
        rows_before=list(examples),
        weights_before=torch.ones(len(examples), dtype=torch.float64),
        rows_after=after,
        weights_after=torch.ones(len(after), dtype=torch.float64),
        changed_rows=changed,
        weight_changes=torch.tensor(changes, dtype=torch.float64),
        segments=torch.tensor(segments, dtype=torch.int64),
    )
