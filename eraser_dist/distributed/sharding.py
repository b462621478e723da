"""Which rows a rank works on: groups own rows by id, ranks of a group split them evenly.

Pure functions, so that the layout is testable without Ray. Every row list of an erase (the
changed rows, the Hessian rows, rows whose losses are asked for) is split the same way:

- group g of G owns the rows whose id hashes to g (``owner``), so a row stays with its group
  when the request edits it or a later data version drops other rows;
- the k ranks of a group take every k-th of those rows, and the shorter parts are padded with
  weight-0 copies: under ZeRO-3 each forward and backward gathers the base weights
  collectively, so all ranks of a group must run the same number of batches.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data import Example


@dataclass(frozen=True)
class RankPlace:
    """Where a rank sits: group ``group`` of ``groups``, rank ``rank`` of ``group_size``."""

    group: int
    groups: int
    rank: int
    group_size: int

    def __post_init__(self):
        if not (0 <= self.group < self.groups and 0 <= self.rank < self.group_size):
            raise ValueError(f"no such place: {self}")


def owner(row_id: str, groups: int) -> int:
    """The group that owns a row; stable across processes and Python versions."""
    return zlib.crc32(row_id.encode("utf-8")) % groups


def rank_share(rows: Sequence[Example], place: RankPlace) -> tuple[list[int], list[int]]:
    """Positions of this rank's rows in ``rows``, and of the copies that pad it to the
    length every rank of the group has (weight 0: they only keep the passes in step)."""
    mine = [i for i, row in enumerate(rows) if owner(row.id, place.groups) == place.group]
    if not mine:
        return [], []
    per_rank = -(-len(mine) // place.group_size)
    picked = mine[place.rank :: place.group_size]
    return picked, [mine[0]] * (per_rank - len(picked))


def rank_rows(
    rows: Sequence[Example], weights: torch.Tensor, place: RankPlace
) -> tuple[list[Example], torch.Tensor]:
    """This rank's rows and weights; the same length on every rank of the group."""
    picked, padding = rank_share(rows, place)
    out_rows = [rows[i] for i in picked + padding]
    return out_rows, torch.cat([weights[picked], weights.new_zeros(len(padding))])
