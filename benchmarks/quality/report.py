"""Tables, goals, JSON and the plot of the quality benchmark (``python -m benchmarks.quality``).

Rows are aggregated over seeds per (task, pattern, method, ablation) into mean +- sample std of the validation and
test *error* (1 - accuracy) and of the measured sparsity, plus the half-width of the 95% t-interval of the mean
(``*_ci95``). A row is ``valid`` when every seed's final weights reach the target sparsity in the pattern (structured
sparsity >= target - 0.01, N:M groups within n non-zeros).

Comparisons (``comparisons``): for every (task, pattern) SMART is compared, seed by seed (every method starts from
the same dense weights and sees the same batches), with its own frozen prior (``smart_frozen``) and with the best
baseline (lowest mean test error): the mean paired difference of the test error and its 95% t-interval. An interval
that contains 0 is a tie.

Ablations (``ablation_comparisons``): every SMART variant against the default SMART row and against its frozen prior,
paired by seed on the *validation* error (defaults are chosen on validation) and on the test error.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

GOAL_VS_BASELINE = ["block4x4@0.75", "block4x4@0.9", "nm2:4", "channel@0.5"]  # SMART err <= 0.8x best baseline
GOAL_VS_DENSE = ["nm2:4", "block4x4@0.5"]  # SMART err <= 1.1x dense


# two-sided 95% Student t quantiles by degrees of freedom (n - 1); 1.96 beyond the table
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ci95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean: ``t_{0.975, n-1} * s / sqrt(n)`` (NaN for one value)."""
    if len(values) < 2:
        return float("nan")
    return _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5


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
    check_one_validation_size(rows)
    groups = []
    for (task, pattern, method, ablation), items in sorted(buckets.items(), key=lambda kv: str(kv[0])):
        target = target_sparsity(pattern)
        val_err = _mean_std([1 - r["val_acc"] for r in items])
        test_err = _mean_std([1 - r["test_acc"] for r in items])
        ci = {f"{k}_err_ci95": ci95([1 - r[f"{k}_acc"] for r in items]) for k in ("val", "test")}
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
                **ci,
                "val_err_by_seed": {r["seed"]: 1 - r["val_acc"] for r in items},
                "test_err_by_seed": {r["seed"]: 1 - r["test_acc"] for r in items},
                "sparsity": sparsity,
                "target_sparsity": target,
                "valid": valid,
            }
        )
    return {
        "groups": groups,
        "goals": goals(groups),
        "comparisons": comparisons(groups),
        "ablation_comparisons": ablation_comparisons(groups),
        "failures": failures,
    }


def check_one_validation_size(rows: list[dict]) -> None:
    """Raise if one task's rows were evaluated on validation splits of different sizes (older rows carry no
    ``val_size``): their validation errors are not comparable, and the ablations are chosen on them."""
    sizes = defaultdict(set)
    for row in rows:
        if "error" not in row:
            sizes[row["task"]].add(row.get("val_size"))
    for task, found in sizes.items():
        if len(found) > 1:
            shown = sorted("unrecorded (older rows)" if s is None else str(s) for s in found)
            raise ValueError(
                f"rows of task {task!r} were evaluated on validation splits of different sizes ({', '.join(shown)}); "
                "summarise the journals of each size separately (--from-journal), or rerun the older rows."
            )


def paired(a: dict, b: dict, split: str = "test") -> dict | None:
    """Mean and 95% t-interval half-width of ``a - b`` error on ``split`` ("test" or "val") over the seeds both
    groups ran (None if < 2)."""
    key = f"{split}_err_by_seed"
    seeds = sorted(set(a[key]) & set(b[key]))
    if len(seeds) < 2:
        return None
    diffs = [a[key][s] - b[key][s] for s in seeds]
    mean, half = statistics.fmean(diffs), ci95(diffs)
    verdict = "tie" if abs(mean) <= half else ("better" if mean < 0 else "worse")
    return {"seeds": seeds, "diff": mean, "ci95": half, "verdict": verdict}


def comparisons(groups: list[dict]) -> list[dict]:
    """SMART vs its frozen prior and vs the best baseline, paired by seed, for every (task, pattern)."""
    out = []
    for smart in (g for g in groups if g["method"] == "smart" and g["ablation"] is None and g["pattern"]):
        task, pattern = smart["task"], smart["pattern"]
        row = {"task": task, "pattern": pattern, "smart": smart["test_err"][0]}
        frozen, dense = _find(groups, task, pattern, "smart_frozen"), _find(groups, task, None, "dense")
        if frozen:
            row["vs_frozen_prior"] = paired(smart, frozen)
        if frozen and dense:
            # the headroom: where the prior already matches the dense model, no search can show it beats the prior
            row["prior_vs_dense"] = paired(frozen, dense)
        baselines = [
            g
            for g in groups
            if (g["task"], g["pattern"], g["ablation"]) == (task, pattern, None)
            and g["method"] not in ("smart", "smart_frozen", "dense")
            and g["valid"]
        ]
        if baselines:
            best = min(baselines, key=lambda g: g["test_err"][0])
            row.update(best_baseline=best["method"], ratio=smart["test_err"][0] / max(best["test_err"][0], 1e-12))
            row["vs_best_baseline"] = paired(smart, best)
        out.append(row)
    return out


def ablation_comparisons(groups: list[dict]) -> list[dict]:
    """Every SMART ablation vs the default SMART row and vs its frozen prior of the same (task, pattern), paired by
    seed on validation (what a default is chosen on) and test error."""
    out = []
    for variant in (g for g in groups if g["method"] == "smart" and g["ablation"] is not None):
        task, pattern = variant["task"], variant["pattern"]
        row = {"task": task, "pattern": pattern, "ablation": variant["ablation"]}
        for name, other in (("default", _find(groups, task, pattern, "smart")),
                            ("frozen_prior", _find(groups, task, pattern, "smart_frozen"))):  # fmt: skip
            if other:
                row[f"val_vs_{name}"] = paired(variant, other, "val")
                row[f"test_vs_{name}"] = paired(variant, other, "test")
        out.append(row)
    return out


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
    """The benchmark's goals on the test error means, with the measured ratio (None where a row is missing)."""
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
            and g["method"] not in ("smart", "smart_frozen", "dense")
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


def _pct_ci(mean: float, half: float) -> str:
    return f"{100 * mean:.2f} ± {100 * half:.2f}" if half == half else f"{100 * mean:.2f}"


def _paired_text(p: dict | None) -> str:
    if p is None:
        return "-"
    return f"{100 * p['diff']:+.2f} ± {100 * p['ci95']:.2f} ({p['verdict']}, {len(p['seeds'])} seeds)"


def markdown_table(summary: dict) -> str:
    """Main rows (no ablations), then ablations, then the goals."""
    head = "| task | pattern | method | seeds | val err % | test err % | sparsity | valid |\n|---|---|---|---|---|---|---|---|"
    lines = ["**Quality (mean ± 95% t-interval over seeds; error = 1 - accuracy)**", "", head]
    ablations = ["", "**SMART ablations**", "", head.replace("| method |", "| variant |")]
    for g in summary["groups"]:
        name = g["method"] if g["ablation"] is None else g["ablation"]
        line = (
            f"| {g['task']} | {g['pattern'] or '-'} | {name} | {len(g['seeds'])} | "
            f"{_pct_ci(g['val_err'][0], g['val_err_ci95'])} | {_pct_ci(g['test_err'][0], g['test_err_ci95'])} | "
            f"{g['sparsity'][0]:.4f} | {'yes' if g['valid'] else 'NO'} |"
        )
        (lines if g["ablation"] is None else ablations).append(line)
    out = lines + (ablations if len(ablations) > 4 else [])
    out += ["", "**SMART - other, test error points, paired by seed (mean ± 95% t-interval)**", ""]
    out += [
        "| task | pattern | its prior - dense (headroom) | vs its frozen prior | best baseline | vs best baseline "
        "| ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary.get("comparisons", []):
        ratio = f"{c['ratio']:.3f}" if "ratio" in c else "-"
        out.append(
            f"| {c['task']} | {c['pattern']} | {_paired_text(c.get('prior_vs_dense'))} | "
            f"{_paired_text(c.get('vs_frozen_prior'))} | "
            f"{c.get('best_baseline', '-')} | {_paired_text(c.get('vs_best_baseline'))} | {ratio} |"
        )
    out += _ablation_lines(summary.get("ablation_comparisons", []))
    out += ["", "**Goals (test error ratios)**", "", "| goal | ratio | met |", "|---|---|---|"]
    for key, goal in summary["goals"].items():
        best = f" (best baseline: {goal['best_baseline']})" if "best_baseline" in goal else ""
        out.append(f"| {key} {goal['goal']}{best} | {goal['ratio']:.3f} | {'yes' if goal['met'] else 'no'} |")
    for f in summary["failures"]:
        out.append(f"\nFAILED: {f}")
    return "\n".join(out)


def _ablation_lines(rows: list[dict]) -> list[str]:
    """The ablations paired with the default SMART row and its prior (validation decides; test shown beside it)."""
    if not rows:
        return []
    out = ["", "**SMART ablations - default SMART / - its frozen prior, error points, paired by seed**", ""]
    out += [
        "| task | pattern | variant | val: - default | test: - default | val: - prior | test: - prior |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_paired_text(r.get(key)) for key in ("val_vs_default", "test_vs_default", "val_vs_frozen_prior",
                                                        "test_vs_frozen_prior")]  # fmt: skip
        out.append(f"| {r['task']} | {r['pattern']} | {r['ablation']} | " + " | ".join(cells) + " |")
    return out


METHOD_COLORS = {
    "dense": "k",
    "magnitude": "tab:orange",
    "gmp": "tab:blue",
    "wns": "tab:brown",
    "torch_pruning": "tab:pink",
    "wanda": "tab:purple",
    "movement": "tab:green",
    "smart": "tab:red",
    "smart_frozen": "tab:olive",
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
