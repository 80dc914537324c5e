"""Device-kernel time of one SFT step and of decode steps, from a JAX profiler trace.

Runs the measured function under `jax.profiler.trace`, then reads the trace back with
`jax.profiler.ProfileData` and prints the GPU time per kernel (top N) and per category, as JSON
lines — a profile that fits in a device call's output, no TensorBoard needed.

    python bench/profile_trace.py --what sft --batch 8
    python bench/profile_trace.py --what decode --batch 1
    python bench/profile_trace.py --what sft --batch 8 --devices 2   # FSDP, 8 rows per GPU

With several devices it also prints, for GPU 0, a timeline of one step: its span, the time some
kernel runs, and how much collective time is *exposed* (no compute kernel running beside it) —
the scaling loss FSDP should hide — plus the largest collectives by XLA op.
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

CATEGORIES = (("collective", r"nccl|all-?gather|reduce-?scatter|all-?reduce|all-to-all"),
              ("attention", r"cudnn|flash|fmha|attention"), ("gemm", r"gemm|cutlass|sm90|xmma|cublas|matmul|dot"),
              ("reduce", r"reduce"), ("copy/transpose", r"copy|transpose|memcpy|memset"),
              ("fusion", r"fusion|loop|input"), ("other", r"."))


def device_events(trace_dir: str, plane_prefix: str = "/device:GPU"):
    """Kernel events (name, start_ns, end_ns, hlo_op) on the GPU planes named by the prefix."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    for plane in data.planes:
        if not plane.name.startswith(plane_prefix):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                stats = dict(event.stats)
                yield event.name, event.start_ns, event.end_ns, str(stats.get("hlo_op", ""))


def union_ns(intervals) -> float:
    """Total length of the union of [start, end) intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def dump_kernels(trace_dir: str, path: str) -> None:
    """Every kernel of GPU 0 as TSV (start and end in µs from the first, name, XLA op)."""
    events = sorted(device_events(trace_dir, "/device:GPU:0"), key=lambda e: e[1])
    t0 = events[0][1]
    with open(path, "w") as f:
        for name, start, end, op in events:
            f.write(f"{(start - t0) / 1e3:.1f}\t{(end - t0) / 1e3:.1f}\t{name[:80]}\t{op}\n")


def timeline(trace_dir: str, label: str, steps: int, top: int) -> None:
    """GPU 0's step: span, busy time, and collective time not overlapped by compute.

    exposed = |collective ∪ compute| − |compute|: the time the GPU only waits on communication.
    """
    events = list(device_events(trace_dir, "/device:GPU:0"))
    is_coll = [re.search(CATEGORIES[0][1], n + " " + op, re.I) is not None
               for n, _, _, op in events]
    compute = [(s, e) for (_, s, e, _), c in zip(events, is_coll) if not c]
    coll = [(s, e) for (_, s, e, _), c in zip(events, is_coll) if c]
    span = max(e for _, _, e, _ in events) - min(s for _, s, _, _ in events)
    busy_compute = union_ns(compute)
    exposed = union_ns(compute + coll) - busy_compute
    common.log(what="profile_timeline", label=label, step_span_ms=span / 1e6 / steps,
               compute_busy_ms=busy_compute / 1e6 / steps,
               collective_ms=sum(e - s for s, e in coll) / 1e6 / steps,
               collective_exposed_ms=exposed / 1e6 / steps,
               idle_ms=(span - union_ns(compute + coll)) / 1e6 / steps)
    per_op = collections.Counter()
    for (name, s, e, op), c in zip(events, is_coll):
        if c:
            per_op[op or name] += e - s
    for op, ns in per_op.most_common(top):
        common.log(what="profile_collective", label=label, op=op[:120], ms=ns / 1e6 / steps)


def gaps(trace_dir: str, label: str, top: int, at_least_us: float = 50.0) -> None:
    """GPU 0's idle stretches of at least `at_least_us`, longest first: where a traced
    iteration waits on its host (a sync, a dispatch, host work between jitted calls), each
    with the kernels (and their XLA ops) on either side and its start in ms from the first
    kernel."""
    events = sorted(device_events(trace_dir, "/device:GPU:0"), key=lambda e: e[1])
    if not events:
        common.log(what="profile_gaps", label=label, error="no GPU kernels in the trace")
        return
    t0, end, last = events[0][1], events[0][2], events[0]
    found = []
    for event in events[1:]:
        if event[1] - end >= at_least_us * 1e3:
            found.append((event[1] - end, end, last, event))
        if event[2] > end:
            end, last = event[2], event
    common.log(what="profile_gaps", label=label, gaps=len(found),
               idle_in_gaps_ms=sum(g[0] for g in found) / 1e6,
               span_ms=(end - t0) / 1e6)
    for ns, start, before, after in sorted(found, key=lambda g: -g[0])[:top]:
        common.log(what="profile_gap", label=label, ms=ns / 1e6, at_ms=(start - t0) / 1e6,
                   before=f"{before[0][:60]} [{before[3][:40]}]",
                   after=f"{after[0][:60]} [{after[3][:40]}]")


def summarize(trace_dir: str, label: str, divide: int, top: int) -> None:
    per_kernel = collections.Counter()
    counts = collections.Counter()
    for name, start, end, _ in device_events(trace_dir):
        per_kernel[name] += end - start
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
    ap.add_argument("--chunk", type=int, default=2048,
                    help="logits chunk of the SFT loss (2048 = one chunk, as bench_sft)")
    ap.add_argument("--devices", type=int, default=1, help="FSDP over the first N GPUs (sft)")
    ap.add_argument("--dump", default="", help="directory: write the optimized HLO of the step "
                    "and GPU 0's kernel timeline (TSV) there")
    args = ap.parse_args()
    devices = jax.devices()[:args.devices]
    mesh = sharding.make_mesh(1, -1, 1, devices=devices)
    rows = args.batch * len(devices)
    if args.what == "sft":
        config = preset("llama-3.2-1b", dtype="bfloat16", attention_impl="cudnn",
                        scan_layers=bool(args.scan), logits_chunk=args.chunk)
        graphdef, params = nnx.split(create_model(config, mesh, seed=0))
        tx, schedule = optim.make_optimizer(base.get_config().optim, 1000)
        state = create_train_state(params, tx, 0, mesh)
        step = make_train_step(sft.make_loss(graphdef, packed=False), tx, schedule,
                               state_shardings(state))
        host = {"tokens": np.random.RandomState(0).randint(0, config.vocab_size, (rows, 2048))
                .astype(np.int32), "loss_mask": np.ones((rows, 2048), np.float32)}
        batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
                 for k, v in host.items()}
        holder = {"s": state}
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with sharding.use_mesh(mesh):
                text = step.lower(state, batch, None).compile().as_text()
            with open(os.path.join(args.dump, f"sft_step_x{len(devices)}.hlo.txt"), "w") as f:
                f.write(text)

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
            label = f"{args.what}_b{args.batch}_scan{args.scan}_c{args.chunk}_x{len(devices)}"
            summarize(d, label, reps * len(devices), args.top)
            timeline(d, label, reps, args.top)  # decode: idle_ms is the launch gaps per token
            if args.dump:
                dump_kernels(d, os.path.join(args.dump, f"{label}.kernels.tsv"))


if __name__ == "__main__":
    main()
