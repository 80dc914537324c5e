#!/usr/bin/env bash
# The single-GPU benchmark, in device calls of under 10 minutes each, every easyalign figure
# beside its peer anchor from ../shared/anchors (copied to .anchors/):
#   bash bench/run_h100.sh part1   # PyTorch/HF anchor; easyalign SFT step and sampler
#   bash bench/run_h100.sh part2   # TRL DPO and GKD anchors; easyalign DPO and distillation
#   bash bench/run_h100.sh grpo    # TRL GRPO anchor; easyalign GRPO step (no remat, full remat)
#   bash bench/run_h100.sh grpo-profile  # GRPO step, then a kernel profile of each phase
#   bash bench/run_h100.sh lora    # HF+PEFT LoRA SFT peer; easyalign LoRA SFT (Llama-3.2-1B, bf16
#                                  # and fp32 base), Llama-3.1-8B LoRA SFT and DPO (one H200)
#   bash bench/run_h100.sh moe     # MoE SFT step: Qwen3-30B-A3B layers × 8, 4×2048 (one H200)
#   bash bench/run_h100.sh decode  # batch-1/8/64 decode and the batch-1 kernel profile (no peer)
#   bash bench/run_h100.sh rollout # HF generate peer; sampler b1/8/64, decode kernel profile,
#                                  # continuous batching vs static batches (Alpaca lengths, from
#                                  # .real/data or ../shared/data), GRPO-shape group prefill
# Output: JSON lines in $OUT/bench_<part>.jsonl (bench/report.py turns them into the table).
set -uo pipefail
part=${1:?part1, part2, grpo, grpo-profile, lora, moe, decode or rollout}  # a 2nd argument no-peer: no anchor
wheels=(.whl/*.whl); [ -d .anchors/wheels ] && wheels+=(.anchors/wheels/*.whl)  # lora: no TRL
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "${wheels[@]}" || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/bench PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
log=${OUT:-/tmp}/bench_${part}.jsonl
run() { timeout "$1" "${@:2}" 2>&1 | grep '^{' | tee -a "$log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
if [ "$part" = part1 ]; then
  run 200 python3 .anchors/torch_baseline.py
  run 160 python3 bench/bench_sft.py --batch 4 8
  run 100 python3 bench/bench_sft.py --batch 8 --param-dtype bfloat16
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 100 python3 bench/bench_sampler.py --scan 0
elif [ "$part" = lora ]; then
  # r=16, alpha=32, all 7 projections, fp32 adapters, bf16 compute (bench/bench_lora.py).
  # 1B: 4x2048, no remat, unrolled (as part1). 8B on one GPU: 4x2048 SFT and 4 pairs x 1024 DPO
  # (8,192 policy tokens each), bf16 base, remat save_proj (projection outputs kept, the rest
  # recomputed), layers under lax.scan (compile time independent of depth).
  run 110 python3 bench/peft_baseline.py --base-dtype bfloat16 float32
  run 150 python3 bench/bench_lora.py --base-dtype bfloat16 float32
  run 120 python3 bench/bench_lora.py --preset llama-3.1-8b --remat save_proj --scan 1 --steps 5
  run 140 python3 bench/bench_lora.py --preset llama-3.1-8b --phase dpo --remat save_proj \
    --scan 1 --steps 5
elif [ "$part" = moe ]; then
  # 8 of Qwen3-30B-A3B's 48 layers (5.6B params, 1.08B active; doctor: 103 GiB with fp32 AdamW),
  # 128 experts top-8, router loss on; layers scanned (compile time). XLA lowers ragged_dot
  # densely on GPU (out of memory), so the experts run on capacity buffers (factor 1.25).
  run 200 python3 bench/bench_moe.py --layers 8 --batch 4 --seq 2048 --scan 1 \
    --capacity-factor 1.25
elif [ "$part" = decode ]; then
  export XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
  run 100 python3 bench/bench_sampler.py --scan 0 --batch 1 8 64
  run 90 python3 bench/profile_trace.py --what decode --batch 1 --top 30
  unset XLA_FLAGS
elif [ "$part" = rollout ]; then
  data=../shared/data; [ -d .real/data/alpaca ] && data=.real/data
  [ "${2:-}" = no-peer ] || run 90 python3 bench/hf_generate.py --batch 1 64
  export XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
  run 120 python3 bench/bench_sampler.py --scan 0 --batch 1 8 64
  run 90 python3 bench/bench_sampler.py --scan 0 --batch 1 64 --attention xla
  run 90 python3 bench/profile_trace.py --what decode --batch 1 --top 30
  run 200 python3 bench/bench_rollout.py --data "$data" --refill 2 4 8 16
  unset XLA_FLAGS
elif [ "$part" = grpo-profile ]; then
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 240 python3 bench/bench_grpo.py --profile
elif [ "$part" = grpo ]; then
  [ "${2:-}" = no-peer ] || run 200 python3 .anchors/trl_baseline.py --only grpo
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 170 python3 bench/bench_grpo.py
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 130 python3 bench/bench_grpo.py --remat full
else
  run 150 python3 .anchors/trl_baseline.py --only dpo
  run 90 python3 bench/bench_dpo.py
  run 170 python3 .anchors/trl_baseline.py --only gkd --gkd-batch 4
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run 150 python3 bench/bench_distill.py --batch 4 64
fi
