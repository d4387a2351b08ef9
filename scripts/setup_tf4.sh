#!/usr/bin/env bash
# Creates .venv-tf4: a second virtualenv with transformers 4.x, the older major that pyproject still allows
# (transformers>=4.45). tests/test_export_tf4.py loads `slm export --format hf` output with it, so an export that
# only transformers 5 reads is caught. It holds torch, transformers and their dependencies, not slmkit.
#
# Idempotent: a venv made with the same pins is left as it is (a stamp file records them); otherwise it is rebuilt
# from scratch. Honours the Makefile's PY, TORCH_VERSION and TORCH_INDEX_URL. About 2 minutes from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
VENV=.venv-tf4
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
TF4_VERSION=4.57.6  # the newest 4.x release
PINS="torch==$TORCH_VERSION transformers==$TF4_VERSION"
STAMP=$VENV/slmkit-tf4-pins
INSTALLED="from importlib.metadata import version
for name in ('torch', 'transformers', 'tokenizers', 'safetensors'): version(name)"

if [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ] && "$VENV/bin/python" -c "$INSTALLED" 2>/dev/null; then
    echo "$VENV: up to date ($PINS)"
    exit 0
fi

rm -rf "$VENV"
"$PY" -m venv "$VENV"
# torch first, pinned, so the local CPU wheel is used and no CUDA build is pulled (as `make setup` does); then the
# constraints keep that torch while transformers' dependencies resolve
"$VENV/bin/pip" install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q -c constraints.txt "transformers==$TF4_VERSION" safetensors tokenizers
"$VENV/bin/python" -c "import torch, transformers; print('$VENV: transformers', transformers.__version__, '| torch', torch.__version__)"
echo "$PINS" >"$STAMP"
