#!/usr/bin/env bash
# A GPU smoke check of the embedded model: generate, 20 training steps, adapter merge, served chat,
# each with tokens/s, and the peak GPU memory (scripts/gpu_check.py says what each stage does).
#   scripts/gpu-check.sh            on CUDA (cuda:N or mps: --device NAME)
#   scripts/gpu-check.sh --cpu      the dry run the tests make (2 training steps, on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
HF_HUB_OFFLINE=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" scripts/gpu_check.py "$@"
