"""Which pending requests run together: per adapter, in submission order, disjoint rows.

Pure functions over journal entries and a training set, so the policy is testable alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..core.requests import apply_requests
from ..data import Example
from ..errors import EraserError
from .journal import JournalEntry


@dataclass
class BatchPlan:
    """``batch``: the requests of one solve, in order; ``rejected``: (entry, reason) of
    requests that can no longer run on the current training set (e.g. a row an earlier
    request removed)."""

    batch: list[JournalEntry] = field(default_factory=list)
    rejected: list[tuple[JournalEntry, str]] = field(default_factory=list)


def next_adapter(pending: Sequence[JournalEntry]) -> tuple[str, str] | None:
    """(tenant, adapter) whose oldest pending request is the oldest of all: no adapter's work
    waits behind a later request for another adapter."""
    return (pending[0].tenant, pending[0].adapter) if pending else None


def plan_batch(
    pending: Sequence[JournalEntry],
    examples: Sequence[Example],
    max_requests: int,
    max_rows: int,
) -> BatchPlan:
    """The longest prefix of one adapter's pending requests (in order) that forms a valid
    batch: at most ``max_requests`` requests and ``max_rows`` rows, no row named twice.

    A request that conflicts with one already in the batch ends the batch (it runs in the
    next one, on the data the batch leaves), so the result equals applying the requests
    one at a time in submission order.
    """
    plan = BatchPlan()
    claimed: set[str] = set()
    rows = 0
    for entry in pending:
        try:
            apply_requests([entry.request], examples)
        except EraserError as err:
            plan.rejected.append((entry, str(err)))
            continue
        ids = set(entry.request.ids)
        if plan.batch and (len(plan.batch) >= max_requests or ids & claimed
                           or rows + len(ids) > max_rows):
            break
        try:
            apply_requests([e.request for e in plan.batch] + [entry.request], examples)
        except EraserError:
            break  # e.g. together they would remove every row: the next batch says so
        plan.batch.append(entry)
        claimed |= ids
        rows += len(ids)
    return plan
