"""Which pending requests run next and together: tenants and adapters in turn; per adapter,
in submission order, disjoint rows.

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


@dataclass
class RoundRobin:
    """Whose batch is next: the tenants with pending work in turn, and within a tenant its
    adapters in turn (each cycle in name order), so that one tenant's backlog delays another
    tenant's request by at most one batch per tenant with work, and one adapter's backlog
    delays the tenant's other adapters likewise. ``last_tenant`` and ``last_adapter`` (per
    tenant) are whose turn it was; they start empty in each process."""

    last_tenant: str | None = None
    last_adapter: dict[str, str] = field(default_factory=dict)

    def next(self, pending: Sequence[JournalEntry]) -> tuple[str, str] | None:
        """(tenant, adapter) to serve now, and its turn taken; None when nothing is
        pending."""
        if not pending:
            return None
        tenant = _after(sorted({e.tenant for e in pending}), self.last_tenant)
        adapter = _after(sorted({e.adapter for e in pending if e.tenant == tenant}),
                         self.last_adapter.get(tenant))
        self.last_tenant, self.last_adapter[tenant] = tenant, adapter
        return tenant, adapter


def _after(names: list[str], last: str | None) -> str:
    """The first of ``names`` (sorted) after ``last``, wrapping round to the first."""
    return next((n for n in names if last is not None and n > last), names[0])


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
