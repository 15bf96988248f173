"""Tables, goals, JSON and the plot of the quality benchmark (``python -m benchmarks.quality``).

Rows are aggregated over seeds per (task, pattern, method, ablation) into mean +- sample std of the validation and
test *error* (1 - accuracy) and of the measured sparsity. A row is ``valid`` when every seed's final weights reach
the target sparsity in the pattern (structured sparsity >= target - 0.01, N:M groups within n non-zeros).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

GOAL_VS_BASELINE = ["block4x4@0.75", "block4x4@0.9", "nm2:4", "channel@0.5"]  # SMART err <= 0.8x best baseline
GOAL_VS_DENSE = ["nm2:4", "block4x4@0.5"]  # SMART err <= 1.1x dense


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def target_sparsity(pattern: str | None) -> float:
    if pattern is None:
        return 0.0
    if pattern.startswith("nm"):
        n, m = pattern[2:].split(":")
        return 1 - int(n) / int(m)
    return float(pattern.split("@")[1])


def summarise(rows: list[dict]) -> dict:
    """``{"groups": [aggregated row, ...], "goals": {...}, "failures": [...]}``."""
    buckets = defaultdict(list)
    failures = []
    for row in rows:
        if "error" in row:
            failures.append({k: row[k] for k in ("task", "seed", "pattern", "method", "ablation", "error")})
            continue
        buckets[(row["task"], row["pattern"], row["method"], row["ablation"])].append(row)
    groups = []
    for (task, pattern, method, ablation), items in sorted(buckets.items(), key=lambda kv: str(kv[0])):
        target = target_sparsity(pattern)
        val_err = _mean_std([1 - r["val_acc"] for r in items])
        test_err = _mean_std([1 - r["test_acc"] for r in items])
        sparsity = _mean_std([r["sparsity"] for r in items])
        valid = all(r["structured_sparsity"] >= target - 0.01 and r["nm_valid"] for r in items)
        groups.append(
            {
                "task": task,
                "pattern": pattern,
                "method": method,
                "ablation": ablation,
                "seeds": sorted(r["seed"] for r in items),
                "val_err": val_err,
                "test_err": test_err,
                "sparsity": sparsity,
                "target_sparsity": target,
                "valid": valid,
            }
        )
    return {"groups": groups, "goals": goals(groups), "failures": failures}


def _find(groups, task, pattern, method, ablation=None):
    return next(
        (
            g
            for g in groups
            if (g["task"], g["pattern"], g["method"], g["ablation"]) == (task, pattern, method, ablation)
        ),
        None,
    )


def goals(groups: list[dict], task: str = "digits") -> dict:
    """The issue's goals on the test error means, with the measured ratio (None where a row is missing)."""
    out = {}
    dense = _find(groups, task, None, "dense")
    for pattern in GOAL_VS_BASELINE:
        smart = _find(groups, task, pattern, "smart")
        baselines = [
            g
            for g in groups
            if g["task"] == task
            and g["pattern"] == pattern
            and g["ablation"] is None
            and g["method"] not in ("smart", "dense")
            and g["valid"]
        ]
        if smart and baselines:
            best = min(baselines, key=lambda g: g["test_err"][0])
            ratio = smart["test_err"][0] / max(best["test_err"][0], 1e-12)
            out[f"smart_vs_best_baseline@{pattern}"] = {
                "goal": "<= 0.8",
                "ratio": ratio,
                "met": ratio <= 0.8,
                "best_baseline": best["method"],
            }
    for pattern in GOAL_VS_DENSE:
        smart = _find(groups, task, pattern, "smart")
        if smart and dense:
            ratio = smart["test_err"][0] / max(dense["test_err"][0], 1e-12)
            out[f"smart_vs_dense@{pattern}"] = {"goal": "<= 1.1", "ratio": ratio, "met": ratio <= 1.1}
    return out


def _pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"


def markdown_table(summary: dict) -> str:
    """Main rows (no ablations), then ablations, then the goals."""
    head = "| task | pattern | method | seeds | val err % | test err % | sparsity | valid |\n|---|---|---|---|---|---|---|---|"
    lines = ["**Quality (mean ± std over seeds; error = 1 - accuracy)**", "", head]
    ablations = ["", "**SMART ablations (digits)**", "", head.replace("| method |", "| variant |")]
    for g in summary["groups"]:
        name = g["method"] if g["ablation"] is None else g["ablation"]
        line = (
            f"| {g['task']} | {g['pattern'] or '-'} | {name} | {len(g['seeds'])} | {_pct(g['val_err'])} | "
            f"{_pct(g['test_err'])} | {g['sparsity'][0]:.4f} | {'yes' if g['valid'] else 'NO'} |"
        )
        (lines if g["ablation"] is None else ablations).append(line)
    out = lines + (ablations if len(ablations) > 4 else [])
    out += ["", "**Goals (test error ratios)**", "", "| goal | ratio | met |", "|---|---|---|"]
    for key, goal in summary["goals"].items():
        best = f" (best baseline: {goal['best_baseline']})" if "best_baseline" in goal else ""
        out.append(f"| {key} {goal['goal']}{best} | {goal['ratio']:.3f} | {'yes' if goal['met'] else 'no'} |")
    for f in summary["failures"]:
        out.append(f"\nFAILED: {f}")
    return "\n".join(out)


METHOD_COLORS = {
    "dense": "k",
    "magnitude": "tab:orange",
    "gmp": "tab:blue",
    "wns": "tab:brown",
    "torch_pruning": "tab:pink",
    "wanda": "tab:purple",
    "movement": "tab:green",
    "smart": "tab:red",
}


def _family(pattern: str) -> str:
    return "nm" if pattern.startswith("nm") else pattern.split("@")[0]


def plot(summary: dict, path: str) -> None:
    """Test error (log scale) vs target sparsity per method, one panel per (task, pattern family); dense dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [g for g in summary["groups"] if g["ablation"] is None and g["pattern"]]
    panels = sorted({(g["task"], _family(g["pattern"])) for g in main})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (task, family) in zip(axes[0], panels):
        dense = _find(summary["groups"], task, None, "dense")
        if dense:
            ax.axhline(100 * dense["test_err"][0], color="k", ls="--", lw=1, label="dense")
        rows = [g for g in main if g["task"] == task and _family(g["pattern"]) == family]
        for method in sorted({g["method"] for g in rows}):
            pts = sorted((g["target_sparsity"], g["pattern"], g) for g in rows if g["method"] == method)
            ax.errorbar(
                [100 * p[0] for p in pts],
                [100 * p[2]["test_err"][0] for p in pts],
                yerr=[100 * p[2]["test_err"][1] for p in pts],
                marker="o",
                capsize=3,
                color=METHOD_COLORS.get(method),
                lw=2.5 if method == "smart" else 1,
                label=method,
            )
        ax.set_yscale("log")
        ax.set_title(f"{task}: {family}", fontsize=9)
        ax.set_xlabel("target sparsity (%)")
        ax.set_ylabel("test error (%), mean ± std")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(payload: dict, json_path: str, png_path: str) -> None:
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1)
    plot(payload["summary"], png_path)
    print(markdown_table(payload["summary"]))
