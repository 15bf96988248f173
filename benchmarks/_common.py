"""What every benchmark shares: the environment block, the result header and the JSON writer.

Every result file starts with ``{"benchmark", "smoke", "command", "environment"}`` so a number can always be traced
to the code, the machine and its load. Timing helpers that a benchmark needs stay in that benchmark.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import transformers

import smart_hf

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "docs" / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_state(*files: str) -> dict:
    """Which smart_hf code was measured: sha256 of ``files`` (paths under smart_hf/) and whether smart_hf/ has
    local edits."""
    info = {}
    for name in files:
        info[f"sha256_{name}"] = hashlib.sha256((REPO_ROOT / "smart_hf" / name).read_bytes()).hexdigest()[:16]
    status = _git("status", "--porcelain", "--", "smart_hf")
    info["smart_hf_dirty"] = None if status is None else bool(status)
    return info


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(**extra) -> dict:
    """Versions, machine, threads, git commit and the load average at the start (``extra`` is merged in)."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "smart_hf": smart_hf.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "loadavg_start": load_average(),
        **extra,
    }


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces a run of ``python -m benchmarks.<module>``."""
    return " ".join(["python -m", f"benchmarks.{module}", *(sys.argv[1:] if argv is None else argv)])


def result_header(module: str, smoke: bool, argv: list[str] | None, env: dict) -> dict:
    return {"benchmark": module, "smoke": smoke, "command": command_line(module, argv), "environment": env}


def write_json(payload: dict, out: str | os.PathLike) -> None:
    """Write ``payload`` to ``out`` (folders created), with the load average at the end added to its environment."""
    payload.get("environment", {})["loadavg_end"] = load_average()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(f"{out}.partial")  # written whole, then renamed: a stopped run never leaves half a results file
    partial.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, out)
