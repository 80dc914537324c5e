#!/usr/bin/env bash
# Start the processes of one multi-process easyalign run on this host and wait for them.
#
#   scripts/launch_multihost.sh <command> [flags...]
#
# runs `python -m easyalign <command> [flags...] --coordinator=ADDR:PORT --num_processes=N
# --process_id=I` once per local process. Every process runs the same program (DESIGN decision
# 11); JAX's multi-controller runtime connects them through the coordinator (process 0).
#
# One host, one process per GPU (the default on a GPU machine: NPROC = number of GPUs):
#   scripts/launch_multihost.sh sft --config=configs/sft.py:tiny
# One host, CPU only: NPROC processes of CPU_DEVICES fake devices each, gloo collectives:
#   NPROC=2 CPU_DEVICES=2 scripts/launch_multihost.sh sft --config=configs/sft.py:tiny
# Several hosts: run the same line on every host, with HOSTS (number of hosts), NODE_RANK
# (0 on the host of process 0) and MASTER_ADDR (an address of that host every host reaches):
#   HOSTS=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/launch_multihost.sh sft --config=...
#   HOSTS=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/launch_multihost.sh sft --config=...
# Process ids are NODE_RANK * NPROC + i, so every host must use the same NPROC.
#
# Environment (all optional):
#   NPROC        processes on this host (default: GPUs from nvidia-smi, or 1 on a CPU host)
#   GPUS_PER_PROC  1 (default): process i sees only GPU i (CUDA_VISIBLE_DEVICES=i);
#                all: one process per host drives every local GPU (NPROC must be 1)
#   CPU_DEVICES  run on CPU with this many fake devices per process (JAX_PLATFORMS=cpu)
#   PORT         coordinator port (default 12355)    MASTER_ADDR  default 127.0.0.1
#   HOSTS        default 1                           NODE_RANK    default 0
#   PYTHON       interpreter (default: .venv/bin/python if present, else python)
#   LOG_DIR      if set, process i writes its output to LOG_DIR/process_<i>.log
#
# Failure: when any process exits non-zero, the others on this host are killed and the script
# exits with that first non-zero status (processes on other hosts stop on their own: JAX's
# coordination service ends them when a peer disappears). Ctrl-C kills all local processes.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi
HOSTS="${HOSTS:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
PORT="${PORT:-12355}"
GPUS_PER_PROC="${GPUS_PER_PROC:-1}"
if [[ -z "${NPROC:-}" ]]; then
  if [[ -z "${CPU_DEVICES:-}" && "$GPUS_PER_PROC" == "1" ]] && command -v nvidia-smi >/dev/null; then
    NPROC="$(nvidia-smi -L | grep -c '^GPU')"
  else
    NPROC=1
  fi
fi
if [[ "$GPUS_PER_PROC" == "all" && "$NPROC" != "1" ]]; then
  echo "launch_multihost.sh: GPUS_PER_PROC=all needs NPROC=1 (one process drives all GPUs)" >&2
  exit 2
fi
WORLD=$((HOSTS * NPROC))

# Never enable NVLink multicast (NVLS): on a shared host a program using it can put every GPU
# of the host out of service.
export NCCL_NVLS_ENABLE=0
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES"
fi

# A single process needs no coordinator: run it directly.
if [[ "$WORLD" == "1" ]]; then
  exec "$PYTHON" -m easyalign "$@"
fi

[[ -n "${LOG_DIR:-}" ]] && mkdir -p "$LOG_DIR"
declare -A rank_of=()  # pid -> process id, for the processes still running
kill_all() {
  for pid in "${!rank_of[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'kill_all; exit 130' INT TERM

for ((i = 0; i < NPROC; i++)); do
  rank=$((NODE_RANK * NPROC + i))
  (
    if [[ -z "${CPU_DEVICES:-}" && "$GPUS_PER_PROC" == "1" ]]; then
      # One GPU per process. JAX_LOCAL_DEVICE_IDS overrides the device JAX would pick from
      # SLURM_LOCALID when this script runs inside a SLURM allocation.
      export CUDA_VISIBLE_DEVICES="$i" JAX_LOCAL_DEVICE_IDS=0
    elif [[ -z "${CPU_DEVICES:-}" ]] && command -v nvidia-smi >/dev/null; then
      # One process drives every local GPU (not only GPU $SLURM_LOCALID inside SLURM).
      gpus="$(nvidia-smi -L | grep -c '^GPU')"
      export JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((gpus - 1)))"
    fi
    args=("$@" "--coordinator=$MASTER_ADDR:$PORT" "--num_processes=$WORLD" "--process_id=$rank")
    if [[ -n "${LOG_DIR:-}" ]]; then
      exec "$PYTHON" -m easyalign "${args[@]}" >"$LOG_DIR/process_$rank.log" 2>&1
    fi
    exec "$PYTHON" -m easyalign "${args[@]}"
  ) &
  rank_of[$!]=$rank
done

# Reap processes as they finish; the first failure ends the run for everyone on this host.
status=0
while ((${#rank_of[@]} > 0)); do
  finished=""
  code=0
  wait -n -p finished "${!rank_of[@]}" || code=$?
  rank="${rank_of[$finished]}"
  unset "rank_of[$finished]"
  if ((code != 0)); then
    where=""
    [[ -n "${LOG_DIR:-}" ]] && where=" (log: $LOG_DIR/process_$rank.log)"
    echo "launch_multihost.sh: process $rank exited with status $code$where; stopping the" \
      "${#rank_of[@]} other local process(es)" >&2
    status=$code
    kill_all
    wait || true
    break
  fi
done
exit "$status"
