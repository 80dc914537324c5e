#!/usr/bin/env bash
# Supervised fine-tuning on this host, or on several hosts.
#
#   scripts/launch_sft.sh [flags...]                      # CONFIG=configs/sft.py:tiny by default
#   CONFIG=configs/sft.py scripts/launch_sft.sh --config.model.init=hf --config.model.path=DIR
#
# Single host (default): one process drives every local GPU (or the CPU). For one process per
# GPU set NPROC; for several hosts set HOSTS, NODE_RANK and MASTER_ADDR on every host, e.g.
#   NPROC=8 HOSTS=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/launch_sft.sh
# (all settings: scripts/launch_multihost.sh --help). Check the plan first with
#   easyalign doctor --config="$CONFIG" [same flags]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export NPROC="${NPROC:-1}"
[[ "$NPROC" == "1" && -z "${CPU_DEVICES:-}" ]] && export GPUS_PER_PROC="${GPUS_PER_PROC:-all}"
exec "$HERE/launch_multihost.sh" sft --config="${CONFIG:-configs/sft.py:tiny}" "$@"
