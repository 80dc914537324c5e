"""Shared benchmark plumbing: XLA flags, timing, memory, MFU, JSON lines.

Every benchmark prints one JSON line per figure (like the anchors in ../shared/anchors), so the
device call's output can be parsed into docs/benchmarks.md by `bench/report.py`.

Timing: each measured function is compiled and run twice before timing; then `repeats` calls
are timed with `jax.block_until_ready` around each, and the median is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

# Flags that help on one H100 (see ../shared/anchors/README.md); set before jax is imported.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true "
                 "--xla_gpu_enable_highest_priority_async_stream=true ")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
_USER_FLAGS = os.environ.get("XLA_FLAGS", "")
if "--cpu" not in sys.argv:
    os.environ["XLA_FLAGS"] = GPU_XLA_FLAGS + _USER_FLAGS

import jax  # noqa: E402

PEAK_FLOPS = 989e12  # H100 SXM dense bf16, the anchors' MFU denominator


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


def extra_flags() -> str:
    """XLA flags given on top of the defaults (recorded with every figure)."""
    return _USER_FLAGS


def on_cpu() -> bool:
    return "--cpu" in sys.argv


def device_name() -> str:
    return jax.devices()[0].device_kind


def peak_gib() -> float | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use", 0) / 2**30


def time_calls(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` (which must return device arrays) after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_flops_per_token(num_params: int, num_layers: int, hidden: int, seq: int) -> float:
    """The anchors' count: 6N + 6·L·d·S (causal attention as half of full)."""
    return 6 * num_params + 6 * num_layers * hidden * seq


def sft_step_and_batch(config, mesh, tx, schedule, batch: int, seq: int):
    """The library's own jitted SFT step (`make_train_step` with `sft.make_loss`, donated state)
    for a fresh model of `config` on `mesh`, its train state, and one random `[batch, seq]`
    token batch placed on the mesh: `(step, state, data)`. Call inside `sharding.use_mesh`."""
    import numpy as np
    from flax import nnx

    from easyalign import sharding
    from easyalign.algorithms import sft
    from easyalign.model import create_model
    from easyalign.train.state import create_train_state, state_shardings
    from easyalign.train.step import make_train_step

    model = create_model(config, mesh, seed=0)
    graphdef, params = nnx.split(model)
    del model
    state = create_train_state(params, tx, seed=0, mesh=mesh)
    step = make_train_step(sft.make_loss(graphdef, packed=False), tx, schedule,
                           state_shardings(state))
    rng = np.random.RandomState(0)
    host = {"tokens": rng.randint(0, config.vocab_size, (batch, seq)).astype(np.int32),
            "loss_mask": np.ones((batch, seq), np.float32)}
    data = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in host.items()}
    return step, state, data


def add_train_step_args(ap, batch: list[int]) -> None:
    """The flags of the train-step benchmarks (bench_sft, bench_moe): shape, remat, dtypes,
    timing, mesh, and `--cpu` for the tiny shape."""
    ap.add_argument("--batch", type=int, nargs="+", default=batch)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--param-dtype", default="float32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fsdp", type=int, default=-1, help="FSDP axis size (-1: all devices used)")
    ap.add_argument("--scan", type=int, default=0, help="1: lax.scan over layers; 0: unrolled")
    ap.add_argument("--chunk", type=int, default=2048, help="logits chunk (2048: no recompute)")
    ap.add_argument("--devices", type=int, default=0, help="mesh over the first N devices (0: all)")
    ap.add_argument("--cpu", action="store_true")
