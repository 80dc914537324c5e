#!/usr/bin/env bash
# N GPUs of one host, one device call (kinds nvidia-h100-x2 / -x4 / -x8):
#   bash bench/run_multigpu.sh N [parts...]        parts (default: all, in this order):
#   scaling       SFT and DPO at the Llama-3.2-1B shape on 1 GPU and on N GPUs (FSDP, same
#                 per-GPU batch), in the same call: efficiency = tokens/s(N) / (N · tokens/s(1))
#   8b            an SFT step of the Llama-3.1-8B shape across the N GPUs (FSDP, AdamW, full
#                 fine-tune, full remat): bf16 params + AdamW state on 2 GPUs (fp32 does not
#                 fit 2 × 80 GB), fp32 master weights + fp32 AdamW state on 4 or more
#   multiprocess  one process per GPU (jax.distributed) vs one process over all N: same losses
#   distill64     on-policy distillation at batch 64 on one GPU (does it fit?)
#   profile       kernel profile and step timeline of the SFT step on N GPUs (exposed collectives)
# Output: JSON lines in $OUT/bench_x$N.jsonl (docs/bench-results/ keeps those of past calls).
set -uo pipefail
N=${1:?number of GPUs}; shift
parts=${*:-scaling 8b multiprocess distill64}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/bench PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
# MaxText's collective flags for H100 (pipelined, combined FSDP collectives).
COLLECTIVES="--xla_gpu_enable_pipelined_all_gather=true --xla_gpu_enable_pipelined_reduce_scatter=true --xla_gpu_enable_pipelined_all_reduce=true --xla_gpu_all_gather_combine_threshold_bytes=134217728 --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 --xla_gpu_all_reduce_combine_threshold_bytes=134217728"
log=${OUT:-/tmp}/bench_x$N.jsonl
run() { timeout "$1" "${@:2}" 2>&1 | grep '^{' | tee -a "$log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
for part in $parts; do case $part in
scaling)
  run 100 python3 bench/bench_sft.py --batch 8 --devices 1
  XLA_FLAGS=$COLLECTIVES run 120 python3 bench/bench_sft.py --batch $((8 * N)) --devices "$N"
  run 80 python3 bench/bench_dpo.py --pairs 4 --devices 1
  XLA_FLAGS=$COLLECTIVES run 100 python3 bench/bench_dpo.py --pairs $((4 * N)) --devices "$N" ;;
8b)
  dtype=float32; [ "$N" -lt 4 ] && dtype=bfloat16
  XLA_FLAGS=$COLLECTIVES run 240 python3 bench/bench_sft.py --preset llama-3.1-8b \
    --batch $((2 * N)) --devices "$N" --steps 3 --param-dtype $dtype --remat full --chunk 512 ;;
multiprocess)
  common="-m easyalign sft --config=configs/sft.py:tiny --config.train.steps=12
    --config.train.log_every=1 --config.train.progress_bar=False --config.train.plot=False
    --config.data.eval_source="
  timeout 150 python3 $common --config.workdir=/tmp/mp/single > /tmp/mp_single.log 2>&1
  for ((i = 0; i < N; i++)); do
    CUDA_VISIBLE_DEVICES=$i timeout 200 python3 $common --config.workdir=/tmp/mp/multi \
      --coordinator=127.0.0.1:29517 --num_processes="$N" --process_id=$i > /tmp/mp_$i.log 2>&1 &
  done
  wait
  python3 bench/compare_losses.py /tmp/mp/single /tmp/mp/multi | tee -a "$log"
  for f in /tmp/mp_*.log; do tail -n 3 "$f"; done ;;
distill64)
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 150 python3 bench/bench_distill.py \
    --batch 64 --steps 2 ;;
profile)
  XLA_FLAGS=$COLLECTIVES run 150 python3 bench/profile_trace.py --what sft --batch 8 \
    --devices "$N" --top 12 ;;
*) echo "unknown part $part" >&2; exit 2 ;;
esac; done
