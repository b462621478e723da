"""Erasure certificates: what was erased, from which versions, how well, as JSON and PNG.

A certificate names rows only by keyed hashes (HMAC-SHA256 under the tenant's certificate key
of the id, and of id, query and response together), never by content. Keyed, so that a third
party holding only a certificate cannot test guesses (a plain sha256 id was recovered in
≤ 26k guesses); the tenant, who can fetch its key (``eraser certificate-key``,
``GET /v1/certificate-key``), can recompute them. Its verification compares the adapter
before and after:

- the loss on the erased rows (the removed rows, or the old versions of edited rows) and,
  for edits, on their new versions;
- the loss on a held-out sample (rows the adapter never saw), the reference for
- a loss-threshold membership-inference check (Yeom et al.): a row counts as "member-like"
  when its loss is below the median held-out loss under the same adapter version. About
  half of the held-out rows are member-like by construction; a training row typically is.
  ``member_like_share`` is that share among the erased rows, before and after, and ``auc``
  the probability that an erased row has a lower loss than a held-out row (0.5: no signal).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import Example
from ..files import atomic_write

CERTIFICATE_VERSION = 2  # 2: keyed row hashes


ROW_HASH = ("HMAC-SHA256 under the tenant's certificate key, hex: id_hmac of the id, row_hmac "
            "of id, query and response joined by NUL (UTF-8)")


def row_hashes(row: Example, key: bytes) -> dict[str, str]:
    """The row's keyed hashes (``ROW_HASH``) under the tenant's certificate ``key``."""
    joined = "\0".join((row.id, row.query, row.response))
    return {"id_hmac": hmac.new(key, row.id.encode(), hashlib.sha256).hexdigest(),
            "row_hmac": hmac.new(key, joined.encode(), hashlib.sha256).hexdigest()}


def membership(erased: torch.Tensor, holdout: torch.Tensor) -> dict[str, float | None]:
    """Loss-threshold membership figures of erased rows [k] against held-out rows [m]."""
    if erased.numel() == 0 or holdout.numel() == 0:
        return {"threshold": None, "member_like_share": None, "auc": None}
    threshold = float(holdout.median())
    lower = (erased[:, None] < holdout[None, :]).double()
    ties = (erased[:, None] == holdout[None, :]).double()
    return {"threshold": threshold,
            "member_like_share": float((erased < threshold).double().mean()),
            "auc": float((lower + 0.5 * ties).mean())}


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def verification(old_before: torch.Tensor, old_after: torch.Tensor, new_before: torch.Tensor,
                 new_after: torch.Tensor, holdout_before: torch.Tensor,
                 holdout_after: torch.Tensor) -> dict[str, Any]:
    """The figures of one request from per-row losses (nats per response token)."""
    return {
        "erased_rows_loss": {"before": _mean(old_before), "after": _mean(old_after),
                             "per_row_before": old_before.tolist(),
                             "per_row_after": old_after.tolist()},
        "new_rows_loss": {"before": _mean(new_before), "after": _mean(new_after)},
        "holdout_loss": {"before": _mean(holdout_before), "after": _mean(holdout_after),
                         "n": int(holdout_before.numel()),
                         "per_row_before": holdout_before.tolist(),
                         "per_row_after": holdout_after.tolist()},
        "membership_inference": {"before": membership(old_before, holdout_before),
                                 "after": membership(old_after, holdout_after)},
    }


def write_certificate(folder: Path, certificate: dict[str, Any]) -> Path:
    """Write ``ID.json`` atomically; returns its path. The plot is drawn on first demand
    (:func:`certificate_png`): it is a pure function of the JSON, and drawing it took
    most of a batch's time when drawn for every request (docs/RESULTS.md, erase service)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{certificate['request']['id']}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(certificate, indent=2,
                                                             sort_keys=True) + "\n"))
    return path


def certificate_png(json_path: Path) -> bytes:
    """The plot of a certificate (``ID.png`` beside its JSON, drawn once and kept)."""
    png = json_path.with_suffix(".png")
    if not png.is_file():
        certificate = json.loads(json_path.read_text(encoding="utf-8"))
        atomic_write(png, lambda tmp: plot_certificate(certificate, tmp))
    return png.read_bytes()


def plot_certificate(certificate: dict[str, Any], path: Path) -> None:
    """Two panels: mean losses before/after (erased vs held-out), and each erased row's loss
    before → after against the held-out rows' spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = certificate["verification"]
    erased, held = v["erased_rows_loss"], v["holdout_loss"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    labels = ["erased rows", "held-out rows"]
    before = [erased["before"] or 0.0, held["before"] or 0.0]
    after = [erased["after"] or 0.0, held["after"] or 0.0]
    x = range(len(labels))
    left.bar([i - 0.2 for i in x], before, 0.4, label="before", color="#999999")
    left.bar([i + 0.2 for i in x], after, 0.4, label="after", color="#1f77b4")
    left.set_xticks(list(x), labels)
    left.set_ylabel("mean loss (nats/token)")
    left.legend(fontsize=8)
    left.set_title("loss before and after", fontsize=10)
    if held["per_row_after"]:
        lo, hi = _quantiles(held["per_row_after"])
        right.axhspan(lo, hi, color="#dddddd", label="held-out 10–90% (after)")
        right.axhline(v["membership_inference"]["after"]["threshold"], color="#777777",
                      lw=1, ls="--", label="member threshold (after)")
    for b, a in zip(erased["per_row_before"], erased["per_row_after"], strict=True):
        right.plot([0, 1], [b, a], "-o", color="#d62728", ms=3, lw=1)
    right.set_xticks([0, 1], ["before", "after"])
    right.set_ylabel("loss per erased row")
    right.set_title("erased rows vs held-out", fontsize=10)
    right.legend(fontsize=7, loc="best")
    mi = v["membership_inference"]
    share = [mi[k]["member_like_share"] for k in ("before", "after")]
    r = certificate["request"]
    fig.suptitle(f"{r['id']} · {r['kind']} of {r['n_rows']} row(s) · adapter "
                 f"{r['adapter']} v{certificate['adapter']['version_before']}→"
                 f"v{certificate['adapter']['version_after']} · member-like "
                 + " → ".join("n/a" if s is None else f"{s:.0%}" for s in share), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _quantiles(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.quantile(0.1)), float(t.quantile(0.9))
