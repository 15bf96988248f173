"""The benchmark scripts run end to end in smoke mode and write well-formed JSON (timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_TOPK = REPO_ROOT / "scripts" / "bench_topk.py"


def _positive_timing(entry: dict) -> None:
    assert entry["median_ms"] > 0 and entry["min_ms"] > 0
    assert entry["repeats"] >= 1 and len(entry["all_ms"]) == entry["repeats"]


def test_bench_topk_smoke(tmp_path):
    out = tmp_path / "x.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCH_TOPK), "--smoke", "--threads", "1", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
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

    variants = data["training_overhead"]["variants"]
    assert set(variants) == {"plain", "block_soft_search", "block_hard_finetune", "nm_2of4_soft_search"}
    for v in variants.values():
        _positive_timing(v)
        assert v["ratio_of_medians"] > 0 and v["median_paired_ratio"] > 0 and v["ratio_of_mins"] > 0
    assert variants["plain"]["ratio_of_medians"] == pytest.approx(1.0)

    assert {"topk_1e6_forward_ms_tau0.1", "search_step_overhead"} <= set(data["goals"])
    assert data["goals"]["search_step_overhead"]["measured"] > 0
