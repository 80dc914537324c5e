#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment with the test extras, then pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k sampler`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh test
export JAX_PLATFORMS=cpu
# LLVM at -O1 instead of XLA's default: the tiny test models spend much of their time compiling,
# and -O1 took ~10% less CPU for compile-heavy and training tests alike (2-core machine,
# 2026-11-30); floating-point semantics are the same (no fast-math at any level).
# No Eigen thread pool inside an XLA computation: two workers on two cores otherwise contend
# with each other's intra-op threads on tiny models (same-machine subsets with -n 2, 2026-11-30:
# 129 → 118 s and 81 → 75 s).
# XLA's classic CPU fusion emitters instead of the MLIR-based ones: XLA compilation is about half
# of the suite's time, and the classic emitters compile the same programs in 40% less time
# (sampler, model and family tests: backend compile 217 → 131 s, wall 192 → 144 s, -n 2 on an
# AVX-512 2-core machine, 2026-12-01). Same numbers: the SFT tiny preset's eval loss after 120
# steps is identical to the last digit (0.9934874718086337); its step runs 5–10% slower.
export XLA_FLAGS="--xla_backend_optimization_level=1 --xla_cpu_multi_thread_eigen=false --xla_cpu_use_fusion_emitters=false ${XLA_FLAGS:-}"
# Two workers (pytest-xdist): compilation and Python run on one core each; tests that share a
# trained session fixture stay on one worker (tests/conftest.py groups them).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup "$@"
