#!/usr/bin/env bash
# The test command: set up the environment, lint, run the default (CPU, offline) test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/core/test_topk.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check smart_hf tests scripts benchmarks examples
exec .venv/bin/python -m pytest "$@"
