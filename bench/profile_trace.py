"""Device-kernel time of one SFT step and of decode steps, from a JAX profiler trace.

Runs the measured function under `jax.profiler.trace`, then reads the trace back with
`jax.profiler.ProfileData` and prints the GPU time per kernel (top N) and per category, as JSON
lines — a profile that fits in a device call's output, no TensorBoard needed.

    python bench/profile_trace.py --what sft --batch 8
    python bench/profile_trace.py --what decode --batch 1
"""

import argparse
import collections
import glob
import os
import re
import tempfile

import common  # noqa: F401

import jax
import numpy as np
from flax import nnx

from configs import base
from easyalign import sharding
from easyalign.algorithms import sft
from easyalign.model import create_model, preset
from easyalign.sampler import Temperature, generate
from easyalign.train import optim
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step

CATEGORIES = (("attention", r"cudnn|flash|fmha|attention"), ("gemm", r"gemm|cutlass|sm90|xmma|cublas|matmul|dot"),
              ("reduce", r"reduce"), ("copy/transpose", r"copy|transpose|memcpy|memset"),
              ("fusion", r"fusion|loop|input"), ("other", r"."))


def device_events(trace_dir: str):
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                yield event.name, event.duration_ns


def summarize(trace_dir: str, label: str, divide: int, top: int) -> None:
    per_kernel = collections.Counter()
    counts = collections.Counter()
    for name, ns in device_events(trace_dir):
        per_kernel[name] += ns
        counts[name] += 1
    total = sum(per_kernel.values())
    common.log(what="profile_total", label=label, ms=total / 1e6 / divide,
               kernels=sum(counts.values()) // divide)
    by_cat = collections.Counter()
    for name, ns in per_kernel.items():
        cat = next(c for c, rx in CATEGORIES if re.search(rx, name, re.I))
        by_cat[cat] += ns
    for cat, ns in by_cat.most_common():
        common.log(what="profile_category", label=label, category=cat, ms=ns / 1e6 / divide,
                   share=ns / total)
    for name, ns in per_kernel.most_common(top):
        common.log(what="profile_kernel", label=label, kernel=name[:90], ms=ns / 1e6 / divide,
                   calls=counts[name] // divide)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="sft")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--scan", type=int, default=0)
    args = ap.parse_args()
    mesh = sharding.make_mesh(1, -1, 1)
    if args.what == "sft":
        config = preset("llama-3.2-1b", dtype="bfloat16", attention_impl="cudnn",
                        scan_layers=bool(args.scan))
        graphdef, params = nnx.split(create_model(config, mesh, seed=0))
        tx, schedule = optim.make_optimizer(base.get_config().optim, 1000)
        state = create_train_state(params, tx, 0, mesh)
        step = make_train_step(sft.make_loss(graphdef, packed=False), tx, schedule,
                               state_shardings(state))
        tokens = np.random.RandomState(0).randint(0, config.vocab_size, (args.batch, 2048))
        batch = {"tokens": jax.numpy.asarray(tokens, jax.numpy.int32),
                 "loss_mask": jax.numpy.ones((args.batch, 2048), jax.numpy.float32)}
        holder = {"s": state}

        def run():
            holder["s"], m = step(holder["s"], batch, None)
            return m["loss"]
        reps = 3
    else:
        config = preset("llama-3.2-1b", dtype="bfloat16", param_dtype="bfloat16",
                        attention_impl="cudnn", scan_layers=bool(args.scan))
        graphdef, params = nnx.split(create_model(config, mesh, seed=0))
        prompts = np.zeros((args.batch, 128), np.int32)
        lengths = np.full((args.batch,), 128, np.int32)

        def run():
            return generate(graphdef, params, prompts, lengths, jax.random.key(0),
                            max_new_tokens=64, method=Temperature(1.0), mesh=mesh).tokens
        reps = 64  # per generated token
    with sharding.use_mesh(mesh):
        for _ in range(2):
            jax.block_until_ready(run())
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d):
                for _ in range(3 if args.what == "sft" else 1):
                    jax.block_until_ready(run())
            summarize(d, f"{args.what}_b{args.batch}_scan{args.scan}", reps, args.top)


if __name__ == "__main__":
    main()
