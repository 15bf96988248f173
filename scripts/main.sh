#!/usr/bin/env bash
# The main job: set up the environment, then run the embedded default recipe (DeiT on scikit-learn digits, SMART 4x4
# blocks at 50%). Extra arguments override recipe keys, e.g. `bash scripts/main.sh --max_steps 100`; a shorter or
# longer run keeps the recipe's stage shares (pretrain_steps, search_steps, ... scale with --max_steps unless given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_env.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
exec .venv/bin/smart-hf train --config recipes/deit_digits_block.yaml "$@"
