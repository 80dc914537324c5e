#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then run the whole pipeline on the
# built-in world (SFT → reward → DPO, PPO → teacher data → distillation → eval → latency) and
# print the results table. Extra arguments go to `easyalign pipeline`, e.g.
#   scripts/demo.sh --config.workdir=runs/mine
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/easyalign pipeline --config=configs/pipeline.py:tiny "$@"
