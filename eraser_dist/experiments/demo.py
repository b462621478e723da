"""``eraser demo``: the whole method end to end on a small real setting, in minutes on a laptop.

SmolLM2-135M-Instruct learns the genres of a few hundred MovieLens movies from their titles.
Some training rows carry wrong genres. The adapter's curvature index is built once
(``eraser index``). Two requests follow: remove some rows (a deletion request) and correct
the wrong ones (a correction request). Each is applied by one influence step that starts
from the index (``erase --index``) and, for comparison, by warm-started retraining on the
edited data; the table shows the loss on the affected and on kept rows, the cosine between
the influence ΔΘ and the retraining ΔΘ, and the time of each, with the index's build time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import api
from ..arguments import EraseArguments, IndexArguments, LoraArguments, TrainArguments
from ..core.objective import loss_values
from ..core.reference import cosine
from ..core.requests import apply_request, parse_request
from ..data import Example, write_examples
from ..llm.adapters import adapter_vector, load_adapter, write_json
from ..llm.models import load_base
from .movielens import genre_examples

DEMO_RANK = 8
DEMO_CG = 2


@dataclass
class DemoPreset:
    """Sizes chosen so that the demo runs in under 10 minutes on 2 CPU cores."""

    rows: int = 240
    corrupted: int = 8
    removed: int = 8
    kept_sample: int = 48
    lora: LoraArguments = field(default_factory=lambda: LoraArguments(rank=8))
    training: TrainArguments = field(
        default_factory=lambda: TrainArguments(epochs=3, lr=3e-3, batch_size=8, weight_decay=0.01)
    )
    retrain_epochs: int = 1
    # The erase's default matrix, Gauss-Newton with its exact product: Adam leaves the
    # adapter short of a minimum, where the exact Hessian is indefinite (docs/RESULTS.md,
    # demo). The index is built on the same matrix; each erase then takes its step and CG's
    # iterations up to max_iter (docs/RESULTS.md, "Curvature index").
    erase: EraseArguments = field(
        default_factory=lambda: EraseArguments(hessian_samples=32, max_iter=DEMO_CG, tol=1e-2)
    )
    index: IndexArguments = field(default_factory=lambda: IndexArguments(rank=DEMO_RANK))
    seed: int = 0


def corrupt_genres(rows: list[Example], count: int, seed: int) -> tuple[list[Example], list[int]]:
    """Give ``count`` seeded rows the genres of another row (a different answer)."""
    g = torch.Generator().manual_seed(seed + 1)
    picked = sorted(torch.randperm(len(rows), generator=g)[:count].tolist())
    out = list(rows)
    for i in picked:
        donor = next(r for r in rows[i + 1 :] + rows[:i] if r.response != rows[i].response)
        out[i] = replace(rows[i], response=donor.response)
    return out, picked


def demo_data(preset: DemoPreset) -> tuple[list[Example], dict[str, dict[str, Any]]]:
    """The demo's training rows (``preset.corrupted`` of them with wrong genres) and its two
    requests as JSON: remove ``preset.removed`` other rows, and correct the wrong ones."""
    clean = genre_examples(preset.rows, seed=preset.seed)
    noisy, corrupted = corrupt_genres(clean, preset.corrupted, preset.seed)
    others = [i for i in range(len(clean)) if i not in set(corrupted)]
    g = torch.Generator().manual_seed(preset.seed + 2)
    removed = [others[i] for i in torch.randperm(len(others), generator=g)[: preset.removed]]
    return noisy, {
        "remove": {"kind": "remove", "ids": [noisy[i].id for i in removed]},
        "correct_response": {
            "kind": "correct_response",
            "edits": [{"id": clean[i].id, "response": clean[i].response} for i in corrupted],
        },
    }


def run_demo(
    workdir: str | Path = "runs/demo",
    base: str = "smollm2-135m",
    rows: int | None = None,
    preset: DemoPreset | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    preset = preset or DemoPreset()
    if rows is not None:
        preset = replace(preset, rows=rows)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *a, **k: None)

    noisy, requests = demo_data(preset)
    data = work / "train.parquet"
    write_examples(data, noisy)
    say(f"[demo] {len(noisy)} MovieLens rows ({preset.corrupted} with wrong genres) → {data}")

    say(f"[demo] fine-tuning a LoRA adapter on {base} ...")
    original = work / "adapter-v0"
    trained = api.train(base, data, original, preset.lora, preset.training, overwrite=True,
                        progress=progress)
    # Warm-started retraining also keeps optimising an adapter that is not fully converged;
    # the same run on the unedited data measures that drift, so that ΔΘ_retrain is the
    # request's own effect.
    continued = work / "adapter-v0-continued"
    retrain_args = replace(preset.training, epochs=preset.retrain_epochs)
    api.train(base, data, continued, None, retrain_args, init_adapter=original, overwrite=True,
              progress=progress)

    say(f"[demo] building the adapter's curvature index ({preset.index.rank} Lanczos "
        f"steps, {preset.erase.hvp} HVP) ...")
    index = work / "index-v0"
    index_meta = api.build_index(base, original, data, index, preset.erase, preset.index,
                                 overwrite=True, progress=progress)

    results = {}
    for name, request_json in requests.items():
        request = parse_request(request_json)
        (work / f"{name}.json").write_text(json.dumps(request_json, indent=2))
        say(f"[demo] {name}: erase by influence from the index ...")
        erased = work / f"adapter-{name}-erased"
        report = api.erase(base, original, data, request, erased, preset.erase, overwrite=True,
                           progress=progress, index=index).to_json()
        say(f"[demo] {name}: warm-started retraining on the edited data ...")
        edited_data = work / f"train-{name}.parquet"
        write_examples(edited_data, apply_request(request, noisy).rows_after)
        retrained = work / f"adapter-{name}-retrained"
        start = time.perf_counter()
        api.train(base, edited_data, retrained, None, retrain_args, init_adapter=original,
                  overwrite=True, progress=progress)
        retrain_seconds = time.perf_counter() - start
        results[name] = {
            "request": request_json,
            "erase_report": report,
            "retrain_seconds": retrain_seconds,
            "adapters": {"original": original, "erased": erased, "retrained": retrained},
        }

    table = measure(base, noisy, results, continued, preset)
    summary = {"preset": asdict(preset), "train_seconds": trained["seconds"],
               "index": {"seconds": index_meta.seconds, "products": index_meta.products,
                         "rank": index_meta.rank},
               "results": table}
    write_json(work / "demo_results.json", summary)
    print(format_table(table, trained["seconds"], summary["index"]))
    print(f"(details: {work / 'demo_results.json'})")
    return summary


def measure(base_name, rows, results, continued, preset) -> dict[str, Any]:
    """Losses and ΔΘ cosines of every adapter version, on one loaded model."""
    model, _ = load_adapter(load_base(base_name), results["remove"]["adapters"]["original"])
    theta0 = model.get_flat().double()
    drift = adapter_vector(model, continued).double() - theta0
    table = {}
    for name, result in results.items():
        request = parse_request(result["request"])
        edited = apply_request(request, rows)
        affected = [r for r, w in zip(edited.changed_rows, edited.weight_changes.tolist(),
                                      strict=True) if w > 0] or edited.changed_rows
        touched = set(request.ids)
        kept = [r for r in rows if r.id not in touched][: preset.kept_sample]
        deltas = {}
        row = {}
        for label, path in result["adapters"].items():
            theta = adapter_vector(model, path).double()
            deltas[label] = theta - theta0
            model.set_flat(theta)
            row[label] = {"affected_loss": float(loss_values(model, affected, 8).mean()),
                          "kept_loss": float(loss_values(model, kept, 8).mean())}
        model.set_flat(theta0)
        retrain_effect = deltas["retrained"] - drift
        report = result["erase_report"]
        row["erased"].update(
            cosine_to_retrain=cosine(deltas["erased"], retrain_effect),
            norm_ratio=float(deltas["erased"].norm() / retrain_effect.norm()),
            cosine_to_raw_retrain=cosine(deltas["erased"], deltas["retrained"]),
            seconds=report["seconds"],
            cg_iterations=report["cg_iterations"],
            index_products=report["index"]["first_products"],
            first_residual=report["index"]["first_residual"],
            relative_residual=report["relative_residual"],
            negative_curvature=report["negative_curvature"],
        )
        row["retrained"]["seconds"] = result["retrain_seconds"]
        row["n_affected"] = len(request.ids)
        table[name] = row
    return table


def format_table(table: dict[str, Any], train_seconds: float, index: dict[str, Any]) -> str:
    lines = [
        f"fine-tuning took {train_seconds:.0f}s; the curvature index, built once for every "
        f"erase of this version, {index['seconds']:.0f}s ({index['products']} HVPs)",
        f"{'request':<27}{'adapter':<11}{'loss affected':>14}{'loss kept':>11}"
        f"{'cos ΔΘ':>8}{'‖ΔΘ‖ ratio':>11}{'seconds':>9}",
    ]
    for name, row in table.items():
        title = f"{name} ({row['n_affected']} rows)"
        for label in ("original", "erased", "retrained"):
            r = row[label]
            cos = f"{r['cosine_to_retrain']:.3f}" if "cosine_to_retrain" in r else ""
            ratio = f"{r['norm_ratio']:.2f}" if "norm_ratio" in r else ""
            secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
            lines.append(f"{title:<27}{label:<11}{r['affected_loss']:>14.4f}"
                         f"{r['kept_loss']:>11.4f}{cos:>8}{ratio:>11}{secs:>9}")
            title = ""
    lines.append("loss affected: on the removed rows (remove) or on the corrected responses "
                 "(correct_response); cos ΔΘ: influence step against warm-started retraining, "
                 "net of the drift of continued training on unedited data; seconds: the "
                 "erase from the index (b, its step, CG) and the retraining")
    return "\n".join(lines)
