"""What a person reads of an experiment run: a Markdown table and a PNG chart.

Both are rendered from the summary :func:`eraser_dist.experiments.runner.run_experiments` returns
(and writes as ``results.json``), so they can be redrawn from that file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the order methods are listed in; any other method follows
METHOD_ORDER = ("corrupted", "erase-ggn", "erase-exact", "erase-fd", "paper", "warm", "retrain")


def ordered_methods(methods: dict[str, Any]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(set(methods) - set(known))


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # no "-0.00"


def _interval(figure: dict[str, float]) -> str:
    return f"{figure['mean']:.3f} [{figure['low']:.2f}, {figure['high']:.2f}]"


def results_table(summary: dict[str, Any]) -> str:
    """One Markdown table per experiment, a row per method with its figures and seconds,
    under a paragraph that says what the columns mean."""
    lines = ["Recovery is (m − m_corrupted)/(m_retrain − m_corrupted): 1 is retraining's figure, "
             "0 the corrupted model's; – where retraining's gap is inside the corrupted "
             "model's 95% interval. Cosine and norm ratio compare ΔΘ with the warm retrain's ΔΘ "
             "net of drift. Losses are mean nats per response token.", ""]
    for name, result in summary["experiments"].items():
        methods = result["methods"]
        retrain_s = methods["retrain"]["seconds"]
        lines += [f"### {name} ({result['kind']}, {result['n_affected']} of "
                  f"{result['n_train']} training rows; {result['n_test']} test rows)", "",
                  "| method | HR@1 [95% CI] | target log-lik [95% CI] | edited loss | kept loss"
                  " | recovery: log-lik / edited loss / HR@1 | cosine to warm | norm ratio"
                  " | seconds (× retrain) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label in ordered_methods(methods):
            f = methods[label]
            r = f["recovery"]
            recovered = " / ".join(_number(r[k], 2) for k in (
                "target_loglik", "edited_loss", "hit_rate_likelihood"))
            lines.append(
                f"| {label} | {_interval(f['hit_rate_likelihood'])} | "
                f"{_interval(f['target_loglik'])} | {f['edited_loss']:.3f} | "
                f"{f['kept_loss']:.3f} | {recovered} | {_number(f.get('cosine_to_warm'), 2)} | "
                f"{_number(f.get('norm_ratio_to_warm'), 2)} | "
                f"{f['seconds']:.0f} ({f['seconds'] / retrain_s:.2f}×) |")
        solver = "; ".join(
            f"{label}: {s['cg_iterations']} CG iterations with the {s['hvp_used']} HVP"
            + ("" if s.get("preconditioner", "none") == "none"
               else f" ({s['preconditioner'].replace('_', ' ')} preconditioner)")
            + (f" over {s['stages']} stages, each from where the last ended"
               if s.get("stages", 1) > 1 else "")
            + f", {'worst stage ' if s.get('stages', 1) > 1 else ''}residual "
            f"{s['relative_residual']:.2f}"
            + (" (negative curvature met)" if s["negative_curvature"] else "")
            # results written before --gradient existed took b from the changed rows
            + (f", b over every row (‖b‖ {s['rhs_norm']:.2f}, of which Θ̂'s own gradient "
               f"term {s['stationarity']['rhs_norm']:.2f})"
               if s.get("gradient") == "all_rows" else ", b from the changed rows")
            + (f", b in {s['rhs_seconds']:.0f} s and the solve in {s['solve_seconds']:.0f} s"
               if "rhs_seconds" in s else "")
            for label, s in result["solver"].items())
        lines += ["", f"Solver: {solver}."]
        ref = result.get("warm_reference")
        if ref is not None:
            lines.append(
                f"Reference: the warm retrain net of drift, rerun with another shuffle seed, has "
                f"cosine {ref['reseeded_cosine']:.2f} (norm ratio "
                f"{ref['reseeded_norm_ratio']:.2f}) to it; Θ̂ plus the net warm change alone has "
                f"edited loss {ref['edited_loss']:.3f} and kept loss {ref['kept_loss']:.3f}.")
        lines.append("")
    return "\n".join(lines)


def results_chart(summary: dict[str, Any], path: str | Path) -> None:
    """Three panels per run, grouped by experiment: recovery of the edited rows' loss,
    cosine to the warm retrain (with the reference's agreement with itself as a black bar),
    and wall seconds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiments = list(summary["experiments"])
    methods = ordered_methods({m: None for r in summary["experiments"].values()
                               for m in r["methods"]})
    panels = [("recovery of the edited rows' loss", lambda f: f["recovery"]["edited_loss"]),
              ("cosine of ΔΘ to warm retraining", lambda f: f.get("cosine_to_warm")),
              ("wall seconds", lambda f: f["seconds"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    width = 0.8 / len(methods)
    colours = plt.get_cmap("tab10")
    for ax, (title, value) in zip(axes, panels, strict=True):
        for j, label in enumerate(methods):
            heights = []
            for name in experiments:
                figures = summary["experiments"][name]["methods"].get(label)
                v = None if figures is None else value(figures)
                heights.append(0.0 if v is None else v)
            ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(experiments))],
                   heights, width, label=label, color=colours(j % 10))
        ax.set_xticks(range(len(experiments)), experiments)
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", lw=0.5)
    ceilings = [summary["experiments"][n].get("warm_reference", {}).get("reseeded_cosine")
                for n in experiments]
    if any(c is not None for c in ceilings):
        line = axes[1].plot([i for i, c in enumerate(ceilings) if c is not None],
                            [c for c in ceilings if c is not None], "k_", ms=30, mew=2,
                            label="the reference vs itself (reseeded)")
        axes[1].legend(handles=line, fontsize=7, loc="center right")
    axes[0].axhline(1, color="black", lw=0.8, ls="--")
    axes[1].axhline(0.9, color="black", lw=0.8, ls="--")
    axes[2].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(summary: dict[str, Any], folder: str | Path) -> list[Path]:
    """``results.md`` and ``results.png`` in ``folder``; returns their paths."""
    folder = Path(folder)
    table, chart = folder / "results.md", folder / "results.png"
    table.write_text(results_table(summary) + "\n")
    results_chart(summary, chart)
    return [table, chart]
