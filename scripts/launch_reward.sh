#!/usr/bin/env bash
# Reward-model training on this host, or on several hosts (after SFT: `model.path=@sft`).
#
#   scripts/launch_reward.sh [flags...]                   # CONFIG=configs/reward.py:tiny by default
#
# Single host (default): one process drives every local GPU (or the CPU). For one process per
# GPU set NPROC; for several hosts set HOSTS, NODE_RANK and MASTER_ADDR on every host, e.g.
#   NPROC=8 HOSTS=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/launch_reward.sh
# (all settings: scripts/launch_multihost.sh --help).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export NPROC="${NPROC:-1}"
[[ "$NPROC" == "1" && -z "${CPU_DEVICES:-}" ]] && export GPUS_PER_PROC="${GPUS_PER_PROC:-all}"
exec "$HERE/launch_multihost.sh" reward --config="${CONFIG:-configs/reward.py:tiny}" "$@"
