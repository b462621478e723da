"""The demo's pipeline on tiny-llama (the real demo runs SmolLM2-135M; too slow for CI)."""

import json

import pytest

from eraser_dist.arguments import EraseArguments, IndexArguments, LoraArguments, TrainArguments
from eraser_dist.core.reference import cosine
from eraser_dist.experiments.demo import DemoPreset, run_demo
from eraser_dist.llm.adapters import adapter_vector, load_adapter
from eraser_dist.llm.models import load_base


def recomputed_against_retrain(work, name: str) -> tuple[float, float]:
    """Cosine and norm ratio of the erase's ΔΘ against retraining's, recomputed from the
    adapters the demo wrote: retraining's ΔΘ net of the drift that continued training on
    the unedited data shows too."""
    model, _ = load_adapter(load_base("tiny-llama"), work / "adapter-v0")
    original = adapter_vector(model, work / "adapter-v0").double()
    drift = adapter_vector(model, work / "adapter-v0-continued").double() - original
    assert drift.norm() > 0  # else forgetting to subtract it would go unnoticed
    erased = adapter_vector(model, work / f"adapter-{name}-erased").double() - original
    retrained = adapter_vector(model, work / f"adapter-{name}-retrained").double() - original
    effect = retrained - drift
    return cosine(erased, effect), float(erased.norm() / effect.norm())


def test_demo_pipeline_erases_and_compares_with_retraining(tmp_path, capsys):
    preset = DemoPreset(
        rows=40, corrupted=4, removed=4, kept_sample=16,
        lora=LoraArguments(rank=2),
        training=TrainArguments(epochs=8, lr=1e-2, batch_size=8, weight_decay=0.05),
        retrain_epochs=2,
        erase=EraseArguments(hvp="ggn", tol=1e-6, max_iter=200),
        index=IndexArguments(rank=4),
    )
    summary = run_demo(tmp_path, base="tiny-llama", preset=preset, progress=False)
    table = summary["results"]
    out = capsys.readouterr().out
    assert "remove (4 rows)" in out and "correct_response (4 rows)" in out
    assert summary["index"]["products"] == 4 and "the curvature index" in out
    assert json.loads((tmp_path / "demo_results.json").read_text())["results"] == table
    for name in ("remove", "correct_response"):
        erased = table[name]["erased"]
        assert erased["relative_residual"] <= 1e-6 and not erased["negative_curvature"]
        assert erased["index_products"] == 1 and erased["first_residual"] < 1.0
        cosine_to_retrain, norm_ratio = recomputed_against_retrain(tmp_path, name)
        assert erased["cosine_to_retrain"] == pytest.approx(cosine_to_retrain, abs=1e-9)
        assert erased["norm_ratio"] == pytest.approx(norm_ratio, abs=1e-9)
    # The correction lowers the loss on the corrected responses; removal raises it on the
    # removed rows — both for the influence step and for retraining.
    correct, remove = table["correct_response"], table["remove"]
    for label in ("erased", "retrained"):
        assert correct[label]["affected_loss"] < correct["original"]["affected_loss"]
        assert remove[label]["affected_loss"] > remove["original"]["affected_loss"]
