#!/usr/bin/env bash
# Build the guide and the API reference into site/ in strict mode: a broken link or anchor, a docstring the
# reference cannot render, or a public name (smart_hf.__all__) missing from docs/api.md fails the build.
# Offline: the theme loads no web fonts and no plugin downloads anything.
# `bash scripts/docs.sh serve` previews the site at http://127.0.0.1:8000 instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "serve" ]; then
  exec "$VENV/bin/mkdocs" serve
fi
exec "$VENV/bin/mkdocs" build --strict --clean
