"""`easyalign latency --config=configs/latency.py`: speed and memory of each variant on one machine.

What is timed is the real sampler: the jitted `easyalign.sampler.generate` (prefill and the
on-device `while_loop` decode), greedy, with no stop tokens so that every row decodes the full
budget, on a batch of `latency.batch_size` random prompts of exactly `latency.prompt_length`
tokens. Both programs are compiled and run once before any timing (warm-up). Then,
`latency.repeats` times,

    t_1  = wall time of generate(max_new_tokens=1)   prefill + the first token  (TTFT)
    t_N  = wall time of generate(max_new_tokens=N)   the same + N − 1 decode steps

each ended by `block_until_ready`. Decode steps run inside one device loop, so a single step
cannot be timed without a host sync per token that would measure dispatch rather than the
sampler; decode is therefore measured by difference, as serving benchmarks define time per
output token (TPOT = (latency − TTFT) / (N − 1), vLLM's benchmark convention):

    per-token decode latency  TPOT_r = (t_N,r − t_1,r) / (N − 1)   p50 / p90 over repeats (ms)
    decode tokens/s           B · (N − 1) / median_r (t_N,r − t_1,r)
    prefill tokens/s          B · P / median_r t_1,r              (includes the first token)

(The N = 1 program allocates a KV cache of P + 1 slots, not P + N: a zero-fill, negligible.)

Memory. Where the backend reports it (`jax.devices()[i].memory_stats()`, GPU/TPU), `peak_memory`
is the largest `peak_bytes_in_use` over the local devices — *measured*. That counter only grows
over a process's life, so with `latency.isolate` (the default) each variant is measured in a
fresh Python process and the number belongs to that variant alone; without isolation a variant
also sees the peaks of those before it (and the label says so). On CPU `memory_stats()` is None
and `peak_memory` is *estimated* as parameter bytes + KV-cache bytes
(2 · layers · B · (P + N) · kv_heads · head_dim · compute-dtype bytes), labelled as such.

Summary. With `latency.teacher` and `latency.student` naming variants, the run prints

    Student: X× faster, Y× memory, keeps Z% of the teacher's alignment score

X = student decode tokens/s / teacher decode tokens/s; Y = student peak memory / teacher peak
memory (below 1 means less memory); Z = 100 · student / teacher value of each metric of
`latency.keep_metrics` (default `alignment_score`; the real preset keeps `advbench_refusal` and
`reward_win_rate`) read from the eval `results.json` (`latency.results`); a metric either
variant lacks (or a teacher value of 0) is left out.
Outputs: `workdir/latency.json` and `workdir/latency.md`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from easyalign import distributed, sharding
from easyalign.eval.report import load_results
from easyalign.eval.suites import parse_named_paths
from easyalign.hf.autoload import load_model
from easyalign.sampler import Greedy, generate

_RESULT_MARK = "EASYALIGN_LATENCY_RESULT "
SETTINGS = ("batch_size", "prompt_length", "new_tokens", "repeats", "dtype", "seed")


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def measure(path: str, settings: dict, mesh=None) -> dict:
    """Load one variant and time it (see the module docstring); returns its latency entry."""
    batch, length, new = settings["batch_size"], settings["prompt_length"], settings["new_tokens"]
    if new < 2:
        raise ValueError(f"latency.new_tokens must be ≥ 2 (decode is timed by difference), "
                         f"got {new}")
    mesh = mesh or sharding.single_device_mesh()
    model = load_model(path, mesh, settings["dtype"])
    config = model.config
    graphdef, state = nnx.split(model)
    prompts = np.random.default_rng(settings["seed"]).integers(
        0, config.vocab_size, (batch, length), dtype=np.int32)
    lengths = np.full((batch,), length, np.int32)
    rng = jax.random.key(settings["seed"])

    def timed(n: int) -> float:
        start = time.perf_counter()
        out = generate(graphdef, state, prompts, lengths, rng, max_new_tokens=n, method=Greedy(),
                       stop_tokens=(), mesh=mesh)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    timed(1), timed(new)  # compile both programs and run them once
    first, full = [], []
    for _ in range(settings["repeats"]):
        first.append(timed(1))
        full.append(timed(new))
    decode = [max(f - t, 1e-9) for f, t in zip(full, first)]  # guard: noise on tiny models
    per_token_ms = [1e3 * d / (new - 1) for d in decode]

    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    param_count = int(sum(p.size for p in params))
    param_bytes = int(sum(p.size * p.dtype.itemsize for p in params))
    kv_bytes = int(2 * config.num_layers * batch * (length + new) * config.num_kv_heads
                   * config.head_dim * np.dtype(config.compute_dtype).itemsize)
    stats = [d.memory_stats() for d in jax.local_devices()]
    if all(s and "peak_bytes_in_use" in s for s in stats):
        peak, source = max(int(s["peak_bytes_in_use"]) for s in stats), "measured"
    else:
        peak, source = param_bytes + kv_bytes, "estimated (parameters + KV cache)"
    return {"path": str(path), "param_count": param_count, "param_bytes": param_bytes,
            "kv_cache_bytes": kv_bytes, "peak_memory_bytes": peak, "memory_source": source,
            "prefill_tokens_per_s": batch * length / float(np.median(first)),
            "decode_tokens_per_s": batch * (new - 1) / float(np.median(decode)),
            "decode_ms_per_token_p50": _percentile(per_token_ms, 50),
            "decode_ms_per_token_p90": _percentile(per_token_ms, 90),
            "ttft_ms_p50": 1e3 * _percentile(first, 50),
            "device": f"{len(jax.devices())}× {jax.devices()[0].device_kind}"}


def _measure_isolated(path: str, settings: dict, mesh_config: dict) -> dict:
    """`measure` in a fresh Python process, so its peak-memory counter starts at zero."""
    job = json.dumps({"path": str(path), "settings": settings, "mesh": mesh_config})
    # Allocate on demand rather than grabbing 75% of the GPU up front: the child must fit beside
    # whatever its parent holds, and the peak counter is the same either way.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    proc = subprocess.run([sys.executable, "-m", "easyalign.eval.latency", job],
                          stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"latency measurement of {path} failed (exit {proc.returncode}); "
                           f"its output:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(_RESULT_MARK):])


def summary_line(speedup: float, memory_ratio: float, kept: dict[str, float],
                 unrated: dict[str, float] | None = None) -> str:
    """`Student: X× faster, Y× memory, keeps Z% of the teacher's <metric>[, W% of its ...]`,
    then `; <metric>: the teacher's is 0 (the student's V)` for each metric in `unrated` (a
    teacher value of 0 has no ratio: said, not dropped)."""
    line = f"Student: {speedup:.1f}× faster, {memory_ratio:.2f}× memory"
    owners = ["the teacher's"] + ["its"] * (len(kept) - 1)
    clauses = [f"{pct:.0f}% of {owner} {metric.replace('_', ' ')}"
               for owner, (metric, pct) in zip(owners, kept.items())]
    line += ", keeps " + ", ".join(clauses) if clauses else ""
    for metric, student_value in (unrated or {}).items():
        line += (f"; {metric.replace('_', ' ')}: the teacher's is 0 (the student's "
                 f"{student_value:.3f})")
    return line


def student_summary(entries: dict, teacher: str, student: str, scores: dict[str, dict] | None,
                    metrics=("alignment_score",)) -> str:
    """The summary line from latency entries and eval metrics (module docstring)."""
    for name in (teacher, student):
        if name not in entries:
            raise ValueError(f"latency: {name!r} is not a measured variant ({sorted(entries)})")
    t, s = entries[teacher], entries[student]
    kept, unrated = {}, {}
    for metric in metrics:
        teacher_value = (scores or {}).get(teacher, {}).get(metric)
        student_value = (scores or {}).get(student, {}).get(metric)
        if student_value is None or teacher_value is None:
            continue
        if teacher_value:
            kept[metric] = 100.0 * student_value / teacher_value
        else:  # a teacher value of 0 keeps no ratio
            unrated[metric] = student_value
    return summary_line(s["decode_tokens_per_s"] / t["decode_tokens_per_s"],
                        s["peak_memory_bytes"] / t["peak_memory_bytes"], kept, unrated)


def markdown(entries: dict, settings: dict, summary: str | None) -> str:
    s = settings
    lines = ["# Latency", "",
             f"Batch {s['batch_size']}, prompt {s['prompt_length']} tokens, {s['new_tokens']} new "
             f"tokens, {s['repeats']} timed repeats after warm-up; greedy, no stop tokens. "
             "Decode is timed by difference (see `easyalign/eval/latency.py`).", "",
             "| variant | params | prefill tok/s | decode tok/s | ms/token p50 | ms/token p90 "
             "| TTFT ms p50 | peak memory (MiB) | memory | weights + KV cache (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, e in entries.items():
        lines.append(f"| {name} | {e['param_count']:,} | {e['prefill_tokens_per_s']:,.0f} | "
                     f"{e['decode_tokens_per_s']:,.0f} | {e['decode_ms_per_token_p50']:.3f} | "
                     f"{e['decode_ms_per_token_p90']:.3f} | {e['ttft_ms_p50']:.2f} | "
                     f"{e['peak_memory_bytes'] / 2**20:,.1f} | {e['memory_source']} | "
                     f"{(e['param_bytes'] + e['kv_cache_bytes']) / 2**20:,.1f} |")
    if entries:
        lines += ["", f"Device: {next(iter(entries.values()))['device']}. A measured peak also "
                  "holds the runtime's own buffers (BLAS workspaces, compilation scratch), which "
                  "dominate for small models; the last column is the model's own share."]
    if summary:
        lines += ["", f"**{summary}**"]
    return "\n".join(lines) + "\n"


def run(config) -> dict:
    """Measure every variant; write latency.json / latency.md; print the summary line."""
    from easyalign.algorithms.runsetup import stage_path
    from easyalign.config_check import validate

    c = config.latency
    validate(config)  # the workdir, and every `@stage` model is there (one line if not)
    variants = {name: stage_path(config, path)  # `@stage` = <parent of workdir>/<stage>/model
                for name, path in parse_named_paths(c.variants, "latency.variants").items()}
    if not variants:
        raise ValueError("latency.variants is empty: give 'name=path' entries")
    multi_process = distributed.initialize_from_config(config)
    settings = {k: c[k] for k in SETTINGS}
    # The parent of isolated measurements never touches a device: on GPU it would otherwise
    # pre-allocate most of the memory the child processes need.
    isolate = c.isolate and not multi_process
    mesh_config = {k: config.mesh[k] for k in ("data", "fsdp", "tensor")}
    mesh = None if isolate else sharding.mesh_from_config(config.mesh)
    entries = {}
    for name, path in variants.items():
        entry = (_measure_isolated(path, settings, mesh_config) if isolate
                 else measure(path, settings, mesh))
        if entry["memory_source"] == "measured":
            entry["memory_source"] = ("measured, isolated process" if isolate else
                                      "measured, shared process: includes earlier variants")
        entries[name] = entry
        print(f"[latency] {name}: decode {entry['decode_tokens_per_s']:,.0f} tok/s, "
              f"{entry['decode_ms_per_token_p50']:.3f} ms/token p50, "
              f"prefill {entry['prefill_tokens_per_s']:,.0f} tok/s, "
              f"peak {entry['peak_memory_bytes'] / 2**20:,.1f} MiB ({entry['memory_source']})")
    summary = None
    if c.teacher and c.student:
        results = Path(c.results) if c.results else None
        scores = load_results(results) if results and results.is_file() else None
        summary = student_summary(entries, c.teacher, c.student, scores, c.keep_metrics)
        print(summary)
        if "keeps" not in summary and "teacher's is 0" not in summary:
            print(f"[latency] no {'/'.join(c.keep_metrics)} for {c.teacher!r} and "
                  f"{c.student!r} in latency.results={c.results!r}")
    doc = {"settings": settings, "variants": entries, "summary": summary}
    if not multi_process or jax.process_index() == 0:
        from easyalign.algorithms.runsetup import models_read
        from easyalign.train.rundir import start_workdir, write_atomic

        workdir = start_workdir(config, identify=models_read(config))
        # latency.json marks the stage complete (`pipeline.stage_done`): written last.
        write_atomic(workdir / "latency.md", markdown(entries, settings, summary))
        write_atomic(workdir / "latency.json", json.dumps(doc, indent=2) + "\n")
        print(f"[latency] wrote {workdir / 'latency.json'}, latency.md")
    return doc


def _child_main(job: str) -> None:
    job = json.loads(job)
    mesh = sharding.make_mesh(**job["mesh"])
    print(_RESULT_MARK + json.dumps(measure(job["path"], job["settings"], mesh)), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1])
