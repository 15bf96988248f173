#!/usr/bin/env python
"""The shipped recipes, run in full as a user runs them, over several seeds: every shipped recipe run in full with 3
seeds, and no collapse (0 of 5 seeds of any recipe ends within 5 points of the majority class).

Each (recipe, seed) is one ``python -m smart_hf.cli train --config <recipe> --seed S --output_dir <tmp>`` in its own process
(what the README tells users to type; a `SearchCollapsedError` or any other failure is recorded with its last line,
not lost). The run's ``smart_summary.json`` gives the dense and pruned accuracies, the sparsity and the share of the
test split's most common class; a run is **collapsed** when its pruned test accuracy is within ``--collapse-margin``
(5 points) of that share. The table gives mean ± 95% t-interval over the seeds.

    HF_HUB_OFFLINE=1 python -m benchmarks.recipes --seeds 0 1 2        # the offline recipes, in full
    HF_HUB_OFFLINE=1 python -m benchmarks.recipes --smoke              # one recipe at smoke size; what CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import REPO_ROOT, environment, result_header, write_json
from .quality.report import ci95

# the recipes that run offline on the data and weights that ship in packages (the others need the Hub or your data)
OFFLINE_RECIPES = [
    "deit_digits_block",
    "vit_digits_channel",
    "resnet_digits_block",
    "deit_digits_coupled",
    "minilm_tweets_2of4",
]
SMOKE_OVERRIDES = ["--max_steps", "12", "--pretrain_steps", "4", "--search_steps", "4", "--eval_strategy", "no"]


def run_recipe(recipe: str, seed: int, out_dir: str, extra: list[str], threads: int) -> dict:
    """One full run of ``recipes/<recipe>.yaml`` with ``--seed seed``; the summary it wrote, or the error."""
    command = [
        sys.executable,
        "-m",
        "smart_hf.cli",
        "train",
        "--config",
        str(REPO_ROOT / "recipes" / f"{recipe}.yaml"),
    ]
    command += ["--seed", str(seed), "--output_dir", out_dir, "--save_plots", "false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    row = {"recipe": recipe, "seed": seed, "seconds": time.perf_counter() - start, "returncode": done.returncode}
    summary_file = Path(out_dir) / "smart_summary.json"
    if done.returncode != 0 or not summary_file.is_file():
        tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        row["error"] = tail[-1] if tail else f"exit code {done.returncode}"
        return row
    summary = json.loads(summary_file.read_text())
    row.update(
        dense_val=summary["dense"]["validation_accuracy"],
        dense_test=summary["dense"]["test_accuracy"],
        pruned_val=summary["pruned"]["validation_accuracy"],
        pruned_test=summary["pruned"]["test_accuracy"],
        sparsity=summary["targeted_sparsity"],
        pattern_valid=summary["pattern_valid"],
        majority=summary.get("test_majority_share"),
    )
    return row


def mark_collapse(row: dict, margin: float) -> dict:
    """``collapsed``: the pruned test accuracy is within ``margin`` of always predicting the most common class."""
    if "error" not in row and row.get("majority") is not None:
        row["collapsed"] = row["pruned_test"] <= row["majority"] + margin
    return row


def summarise(rows: list[dict]) -> dict:
    """Per recipe: runs, failures, collapses, and mean ± 95% t-interval of each accuracy over the finished seeds."""
    out = {}
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        mine = [row for row in rows if row["recipe"] == recipe]
        done = [row for row in mine if "error" not in row]
        entry = {
            "runs": len(mine),
            "failed": len(mine) - len(done),
            "collapsed": sum(bool(row.get("collapsed")) for row in done),
            "minutes_per_run": sum(row["seconds"] for row in mine) / 60 / max(1, len(mine)),
        }
        for key in ("dense_val", "dense_test", "pruned_val", "pruned_test", "sparsity"):
            values = [row[key] for row in done if row.get(key) is not None]
            if values:
                entry[key] = {"mean": sum(values) / len(values), "ci95": ci95(values), "n": len(values)}
        out[recipe] = entry
    return out


def format_table(summary: dict) -> str:
    def cell(entry, key):
        value = entry.get(key)
        if value is None:
            return "n/a"
        half = value["ci95"]
        return f"{100 * value['mean']:.2f}" + ("" if half != half else f" ± {100 * half:.2f}")  # NaN: one seed

    head = "| recipe | seeds | dense test % | pruned val % | pruned test % | sparsity | collapsed | failed | min/run |"
    lines = [head, "|" + "---|" * 9]
    for recipe, entry in summary.items():
        sparsity = entry.get("sparsity", {}).get("mean")
        lines.append(
            f"| {recipe} | {entry['runs']} | {cell(entry, 'dense_test')} | {cell(entry, 'pruned_val')} | "
            f"{cell(entry, 'pruned_test')} | {'n/a' if sparsity is None else f'{sparsity:.3f}'} | "
            f"{entry['collapsed']} | {entry['failed']} | {entry['minutes_per_run']:.1f} |"
        )
    return "\n".join(lines)


def previous_results(path: str) -> tuple[list[dict], dict | None]:
    """The rows of an earlier results file (``--append``) and the command and environment of its first run (kept
    beside the new run's); ``([], None)`` when there is no such file yet."""
    if not Path(path).is_file():
        return [], None
    earlier = json.loads(Path(path).read_text())
    header = earlier.get("appended_to") or {
        key: earlier.get(key) for key in ("command", "environment", "wall_seconds")
    }
    return earlier["rows"], header


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=OFFLINE_RECIPES, help="names in recipes/ (no .yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each run")
    parser.add_argument("--collapse-margin", type=float, default=0.05)
    parser.add_argument("--smoke", action="store_true", help="deit_digits_block, 12 steps, one seed")
    parser.add_argument("--out", default="docs/results/recipes/recipes.json")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the runs already in --out and skip their (recipe, seed); for adding seeds to a published file",
    )
    args, extra = parser.parse_known_args(argv)  # anything else goes to every `smart-hf train` (e.g. --max_steps)
    for recipe in args.recipes:
        if not (REPO_ROOT / "recipes" / f"{recipe}.yaml").is_file():
            parser.error(f"no recipes/{recipe}.yaml; pick from {', '.join(OFFLINE_RECIPES)}")
    if args.smoke:
        args.recipes, args.seeds, extra = ["deit_digits_block"], args.seeds[:1], [*SMOKE_OVERRIDES, *extra]
    payload = result_header("recipes", args.smoke, argv, environment(threads_per_run=args.threads))
    rows, (earlier, first_run) = [], previous_results(args.out) if args.append else ([], None)
    if first_run:
        payload["appended_to"] = first_run  # read before this run overwrites the file
    start = time.perf_counter()

    def save() -> None:
        payload.update(rows=earlier + rows, summary=summarise(earlier + rows), extra_args=extra)
        payload.update(wall_seconds=time.perf_counter() - start)
        write_json(payload, args.out)

    with tempfile.TemporaryDirectory(prefix="bench_recipes_") as tmp:
        for recipe in args.recipes:
            for seed in args.seeds:
                if any(row["recipe"] == recipe and row["seed"] == seed for row in earlier):
                    continue
                row = run_recipe(recipe, seed, os.path.join(tmp, f"{recipe}_s{seed}"), extra, args.threads)
                rows.append(mark_collapse(row, args.collapse_margin))
                status = row.get("error") or f"pruned test {row['pruned_test']:.4f} (collapsed: {row['collapsed']})"
                print(f"[{recipe} seed {seed}] {status} ({row['seconds']:.0f}s)", flush=True)
                save()  # after every run: a long sweep stopped half-way keeps what it finished
    if not rows:
        save()  # --append had every run already: still a results file (the loop wrote it otherwise)
    print(format_table(payload["summary"]))
    print(f"wall {payload['wall_seconds']:.0f}s; wrote {args.out}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
