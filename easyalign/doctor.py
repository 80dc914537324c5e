"""`easyalign doctor --config=...`: will this run start, and will it fit? Checked before compiling.

Give it the run's own config and flags (`easyalign doctor --config=configs/sft.py:tiny
--config.mesh.tensor=2`), or `--config=configs/doctor.py:PHASE[:PRESET]` for the `doctor` block's
planning options (another machine's devices and memory, a JSON file). It never initialises the
distributed runtime (that blocks until every process has joined); it reports the processes the
flags or SLURM variables describe, this process's devices (memory from `Device.memory_stats()`;
on CPU the host RAM shared by the fake devices), the mesh `config.mesh` resolves to over
processes × local devices (or why it cannot), the model and its parameter count, an estimate of
memory per device against what a device has ("fits" / "does not fit (by X GiB)"), and whether
the coordinator is reachable (TCP connect with a timeout; process 0 checks its port is free),
and the run's own checks before it loads anything (`preflight`: values, the batch split over
the devices, every path it reads; a `@stage` not run yet is planned and listed as needed first).

Memory per device (bytes; `t` = mesh.tensor, `s` = data × fsdp, `bp`/`bc` = bytes of the
param / compute dtype; d, F, H, K, hd, V, L = hidden, MLP, heads, KV heads, head dim,
vocabulary, layers; r = sequences per device per micro-batch = ⌈batch·seqs / grad_accum / s⌉,
seqs = 2 for pairwise phases (reward, DPO); PPO's micro-batch is `ppo.minibatch_size` sequences,
GRPO's `grpo.minibatch_size` completions or, at 0, the whole rollout (batch · G), whose
trunk holds one P + G·R stream per group under `grpo.shared_prefix` and whose LM head sees the
R response positions only (`grpo_activation_bytes`); T = data.max_length):

    params        exact: Σ over weights of the per-device block (⌈dim / mesh axes⌉ per dim,
                  by the rules of `sharding.py`) × bp
    optimizer     exact: `optax` state of `optim.name` from `jax.eval_shape(tx.init)`; leaves
                  shaped like a weight are sharded like it (AdamW: μ and ν = 2 × params in the
                  param dtype), the rest replicated
    gradients     params' blocks in float32 (the step accumulates in fp32), ×2 with
                  grad_accum > 1 (accumulator + micro-batch gradient)
    fsdp gather   fsdp > 1: two layers' weights gathered in the compute dtype (current + next)
    activations   per layer and token, saved for the backward pass, in elements:
                    x    = d                                    the layer input (always kept)
                    proj = (H + 2K)·hd/t + 2F/t + 2d            q, k, v, gate, up, o/down outputs
                    attn = H·hd/t                               attention output
                    rest = 3d + (H + K)·hd/t + 2F/t             norms, roped q/k, silu, residual
                  a mixture of experts (E experts, k per token, width Fe) replaces F by k·Fe
                  and adds the k·d sorted token copies to proj and to rest (params above count
                  every expert: each fsdp shard stores E/fsdp whole experts)
                  saved = x (full) | x + proj (dots, save_proj) | x + proj + attn (save_proj_attn)
                          | x + proj + attn + rest (none), and with remat "none" and the xla
                          attention the fp32 scores and probabilities, H/t · T² · 8 bytes per
                          row and layer
                  L · r · T · saved · bc, plus one layer recomputed in the backward pass
                  (proj + attn + rest, and its T² probabilities) when remat ≠ none, plus two fp32
                  residual-stream gradients 2 · r · T · d · 4
    logits        the chunked LM head (`model/scoring.py`): logits and their gradient of one
                  chunk, 2 · r · min(T, c) · V/t · 4, c = `model.logits_chunk` as
                  `scoring.fit_chunk` shortens it for large batches
    frozen models DPO's live reference, PPO's reference and reward model, GRPO's reference
                  (β > 0) and reward model (a `reward_model` reward), the distillation
                  teacher: their params (× bc: held in the compute dtype); PPO's value model is trained (params, optimizer,
                  gradients, activations)
    LoRA          (`model.lora.rank` > 0) params count the base in `model.lora.base_dtype` and
                  the adapters; optimizer and gradients only the adapters (and a reward head);
                  a reference that is the policy's own base (DPO live, PPO's @sft) costs nothing
    KV cache      phases that sample (PPO, GRPO, on-policy distillation, generate,
                  teacher-data): 2 · L · r · (T + new tokens) · K/t · hd · bc, r the rows
                  sampled per device (GRPO: batch · G / s; its T holds the new tokens);
                  inference phases count params, cache and one prefill layer instead of the
                  training terms

Not counted: XLA's temporary workspace, fragmentation and the CUDA context (keep ~10% free).
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import jax
import numpy as np

from easyalign import sharding
from easyalign.doctor_models import (INFERENCE, TRAINING, divisibility, extra_models,
                                     main_model, step_sequences, uneven_weights)
from easyalign.model.config import ModelConfig

GiB = 1024 ** 3
# Bytes per attention-score element the xla attention keeps for the backward pass: fp32 scores
# and probabilities (fitted to XLA's memory analysis of compiled steps at T = 256 and 512).
SCORE_BYTES = 8


def options(config) -> dict:
    """The `doctor` block (configs/doctor.py) with its defaults; phase configs have none."""
    block = config.get("doctor") or {}
    return {"devices": block.get("devices", 0), "device_memory_gib": block.get(
        "device_memory_gib", 0.0), "json": block.get("json", ""),
        "timeout_s": block.get("timeout_s", 5.0)}


# ----------------------------------------------------------------------------- processes, devices
def processes(config) -> dict:
    d = config.distributed
    if d.coordinator:
        return {"count": max(d.num_processes, 1), "index": max(d.process_id, 0),
                "source": "flags", "coordinator": d.coordinator}
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return {"count": int(os.environ["SLURM_NTASKS"]),
                "index": int(os.environ.get("SLURM_PROCID", "0")), "source": "slurm",
                "coordinator": ""}
    return {"count": 1, "index": 0, "source": "single process", "coordinator": ""}


def devices(opts: dict) -> dict:
    """This process's devices, as the run will see them (see `_visible_count`)."""
    local = jax.local_devices()
    stats = local[0].memory_stats() or {}
    memory, source = stats.get("bytes_limit"), "memory_stats"
    if memory is None and local[0].platform == "cpu":
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(local)
        source = f"host RAM / {len(local)} devices"
    if opts["device_memory_gib"]:
        memory, source = int(opts["device_memory_gib"] * GiB), "doctor.device_memory_gib"
    return {"platform": local[0].platform, "kind": local[0].device_kind,
            "per_process": opts["devices"] or _visible_count(len(local), local[0].platform),
            "planned": bool(opts["devices"]), "memory_bytes": memory,
            "memory_source": source if memory else "unknown"}


def _visible_count(count: int, platform: str) -> int:
    """Devices `jax.distributed.initialize` will leave this process: JAX_LOCAL_DEVICE_IDS if
    set, else inside a SLURM step on GPU only device SLURM_LOCALID (JAX's own SLURM rule)."""
    if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        return len(os.environ["JAX_LOCAL_DEVICE_IDS"].split(","))
    slurm_step = all(v in os.environ for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST",
                                                "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"))
    return 1 if slurm_step and platform == "gpu" and count > 1 else count


def coordinator(address: str, is_coordinator: bool, timeout: float) -> dict:
    """Process 0 binds the port; the others must reach it. Never joins the runtime."""
    from easyalign.distributed import check_coordinator

    problem = check_coordinator(address)
    if problem:
        return {"ok": False, "detail": problem}
    host, _, port = address.rpartition(":")
    if is_coordinator:
        with socket.socket() as s:
            try:
                s.bind(("", int(port)))
            except OSError as e:
                return {"ok": False, "detail": f"process 0 cannot bind port {port}: {e}"}
        return {"ok": True, "detail": f"port {port} is free for process 0 to listen on"}
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return {"ok": True, "detail": f"{address} accepts connections"}
    except ConnectionRefusedError:
        return {"ok": True, "detail": f"{host} answers; nothing listens on {port} yet (fine "
                                      "before process 0 starts)"}
    except OSError as e:  # timeout, unknown host, no route
        return {"ok": False, "detail": f"cannot reach {address} within {timeout:g} s: {e}"}


def resolve_mesh(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[dict | None, str]:
    """`({"data", "fsdp", "tensor"}, "")`, or `(None, why not)` — `sharding.resolve_mesh_shape`."""
    try:
        shape = sharding.resolve_mesh_shape(data, fsdp, tensor, n_devices)
    except ValueError as e:
        return None, str(e)
    return dict(zip(sharding.MESH_AXES, shape)), ""


# ----------------------------------------------------------------------------- memory
def _axis_size(mesh: dict, axes) -> int:
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh[a] for a in axes)


def parameter_bytes(model: ModelConfig, mesh: dict) -> dict:
    """Exact parameter sizes on `mesh`: `{count, layer_count, total, per_device}` (bytes in bp),
    plus the abstract state and each weight's per-device fraction for the optimizer."""
    from flax import nnx

    from easyalign.model import abstract_model

    _, state, _ = abstract_model(model)  # shapes only, on a 1-device mesh: no memory used

    def fraction(value, spec) -> float:
        axes = tuple(sharding.logical_spec(tuple(spec)))
        axes += (None,) * (len(value.shape) - len(axes))
        return math.prod(math.ceil(n / _axis_size(mesh, a)) / n for n, a in zip(value.shape, axes))

    fractions = jax.tree.map(fraction, state, nnx.get_partition_spec(state))
    out = {"count": 0, "layer_count": 0, "total": 0, "per_device": 0, "state": state,
           "fractions": fractions}
    leaves = jax.tree_util.tree_leaves_with_path(state)
    for (path, value), frac in zip(leaves, jax.tree.leaves(fractions)):
        size = math.prod(value.shape)
        out["count"] += size
        out["layer_count"] += size if getattr(path[0], "key", None) == "layers" else 0
        out["total"] += size * value.dtype.itemsize
        out["per_device"] += round(size * frac) * value.dtype.itemsize
    return out


def trainable_bytes(params: dict) -> dict:
    """`parameter_bytes`' `{state, fractions, per_device}` of a LoRA model's trained part
    only (adapters and a scalar head, `lora.split`): its optimizer state and gradients."""
    from easyalign.model import lora

    state = lora.split(params["state"])[0]
    fractions = lora.split(params["fractions"])[0]
    per_device = sum(round(math.prod(v.shape) * f) * v.dtype.itemsize
                     for v, f in zip(jax.tree.leaves(state), jax.tree.leaves(fractions)))
    return {"state": state, "fractions": fractions, "per_device": per_device}


def optimizer_bytes(optim_config, params: dict) -> int:
    """Per-device optimizer state: param-shaped leaves sharded like their weight, the rest
    replicated (the rule of `train.state.opt_state_shardings`)."""
    import optax

    from easyalign.train import optim

    tx, _ = optim.make_optimizer(optim_config, 1)
    abstract = jax.eval_shape(tx.init, params["state"])

    def nbytes(leaf, param, frac):
        scale = frac if leaf.shape == param.shape else 1.0
        return round(math.prod(leaf.shape) * scale) * leaf.dtype.itemsize

    sizes = optax.tree_map_params(
        tx, nbytes, abstract, params["state"], params["fractions"],
        transform_non_params=lambda leaf: math.prod(leaf.shape) * leaf.dtype.itemsize)
    return int(sum(jax.tree.leaves(sizes)))


def layer_elements(model: ModelConfig, t: int) -> dict:
    """Per-token element counts of one layer's activations (module docstring)."""
    d, f, h, k, hd = (model.hidden_size, model.intermediate_size, model.num_heads,
                      model.num_kv_heads, model.head_dim)
    routed = 0
    if model.num_experts:  # k·Fe wide per token, plus its k sorted copies (module docstring)
        f, routed = model.num_experts_per_tok * model.moe_intermediate_size, \
            model.num_experts_per_tok * d
    return {"x": d, "proj": (h + 2 * k) * hd / t + 2 * f / t + 2 * d + routed,
            "attn": h * hd / t, "rest": 3 * d + (h + k) * hd / t + 2 * f / t + routed}


SAVED = {"full": ("x",), "dots": ("x", "proj"), "save_proj": ("x", "proj"),
         "save_proj_attn": ("x", "proj", "attn"), "none": ("x", "proj", "attn", "rest")}


def activation_bytes(model: ModelConfig, rows: int, length: int, t: int, shards: int = 1,
                     device_memory: int | None = None) -> dict:
    """Training activations per device: `{layers, recompute, residual_grads, logits}` bytes
    (the logits as chunked for devices of `device_memory` bytes: `scoring.logits_budget`)."""
    e, bc = layer_elements(model, t), np.dtype(model.dtype).itemsize
    # The xla attention materialises fp32 scores and probabilities [H/t, T, T] per row.
    scores = (SCORE_BYTES * model.num_heads / t * length ** 2
              if model.attention_impl == "xla" else 0)
    saved = sum(e[name] for name in SAVED[model.remat]) * bc * length
    one_layer = (e["proj"] + e["attn"] + e["rest"]) * bc * length + scores
    per_row_layers = model.num_layers * (saved + (scores if model.remat == "none" else 0))
    return {"layers": rows * per_row_layers,
            "recompute": rows * one_layer if model.remat != "none" else 0,
            "residual_grads": 2 * rows * length * model.hidden_size * 4,
            "logits": 2 * rows * logits_chunk(model, rows, length, shards, device_memory)
            * model.vocab_size / t * 4}


def grpo_activation_bytes(config, model: ModelConfig, t: int, shards: int = 1,
                          device_memory: int | None = None) -> dict:
    """`activation_bytes` of GRPO's update, by the library's own rules
    (`algorithms.grpo.minibatch_rows`, `shared_prefix_group`): the trunk over each micro-batch's
    completions, P + R positions each, or — with the shared prefix — over one stream per group
    of G, P + G·R positions (P = data.max_length − R, R = grpo.max_new_tokens); the LM head
    over each completion's R response positions alone (`rollout.response_span`)."""
    from easyalign.algorithms import grpo

    R = config.grpo.max_new_tokens
    P = config.data.max_length - R
    completions = math.ceil(grpo.minibatch_rows(config) / config.train.grad_accum / shards)
    G = grpo.shared_prefix_group(config, model)
    trunk = activation_bytes(model, math.ceil(completions / G), P + G * R, t, shards,
                             device_memory)
    trunk["logits"] = activation_bytes(model, completions, R, t, shards, device_memory)["logits"]
    return trunk


def logits_chunk(model: ModelConfig, rows: int, length: int, shards: int = 1,
                 device_memory: int | None = None) -> int:
    """The sequence chunk the losses project to the vocabulary at a time: the library's own
    `scoring.fit_chunk` of `model.logits_chunk` (`rows` per device of `shards`, devices of
    `device_memory` bytes), at most T."""
    from easyalign.model.scoring import fit_chunk

    return min(length, fit_chunk(model.logits_chunk, rows * shards, model.vocab_size,
                                 shards=shards, device_memory=device_memory))


def kv_cache_bytes(model: ModelConfig, rows: int, length: int, t: int) -> float:
    return (2 * model.num_layers * rows * length * model.num_kv_heads / t * model.head_dim
            * np.dtype(model.dtype).itemsize)


def estimate(config, model: ModelConfig, extras: list[dict], mesh: dict,
             device_memory: int | None = None) -> dict:
    """Memory per device by component (bytes) for the phase, on devices of `device_memory`
    bytes (they size the logits' chunks); see the module docstring."""
    t, shards, length = mesh["tensor"], mesh["data"] * mesh["fsdp"], config.data.max_length
    params = parameter_bytes(model, mesh)
    out = {"params": params["per_device"]}
    if config.phase in INFERENCE:
        block = config[INFERENCE[config.phase][0]]
        rows = math.ceil(block.batch_size / shards)
        out["kv_cache"] = kv_cache_bytes(model, rows, length + block.max_new_tokens, t)
        e = layer_elements(model, t)
        out["prefill"] = rows * length * (sum(e.values()) * np.dtype(model.dtype).itemsize
                                         + SCORE_BYTES * model.num_heads / t * length)
        return out
    train = config.train
    rows = math.ceil(step_sequences(config) / train.grad_accum / shards)
    out.update(dict.fromkeys(("optimizer", "gradients", "activations", "logits"), 0))
    for m in [model] + [x["config"] for x in extras if x["trained"]]:
        p = params if m is model else parameter_bytes(m, mesh)
        out["params"] += 0 if m is model else p["per_device"]
        trained = trainable_bytes(p) if m.lora is not None else p
        out["optimizer"] += optimizer_bytes(config.optim, trained)
        fp32_grads = trained["per_device"] / np.dtype(m.param_dtype).itemsize * 4
        out["gradients"] += fp32_grads * (2 if train.grad_accum > 1 else 1)
        act = (grpo_activation_bytes(config, m, t, shards, device_memory)
               if config.phase == "grpo" else activation_bytes(m, rows, length, t, shards,
                                                                device_memory))
        out["logits"] += act.pop("logits")
        out["activations"] += sum(act.values())
    if mesh["fsdp"] > 1:
        out["fsdp_gather"] = (2 * params["layer_count"] / model.num_layers / t
                              * np.dtype(model.dtype).itemsize)
    frozen = [x["config"] for x in extras if not x["trained"]]
    if frozen:
        # Held in the compute dtype (`layers.cast_for_compute`; the few weights read in
        # float32 — MoE routers, Gemma's norm scales — counted at bc too: a rounding error).
        out["frozen_models"] = sum(parameter_bytes(m.replace(param_dtype=m.dtype), mesh)
                                   ["per_device"] for m in frozen)
    if config.phase == "ppo" or (config.phase == "distill" and config.distill.mode == "on_policy"):
        out["kv_cache"] = kv_cache_bytes(model, math.ceil(train.batch_size / shards), length, t)
    if config.phase == "grpo":  # G completions of each prompt, the new tokens inside T
        sampled = train.batch_size * config.grpo.num_generations
        out["kv_cache"] = kv_cache_bytes(model, math.ceil(sampled / shards), length, t)
    return out


# ----------------------------------------------------------------------------- the report
def diagnose(config) -> dict:
    """Everything the doctor checks, as a JSON-ready dict; `problems` lists what stops the run."""
    opts = options(config)
    procs, devs = processes(config), devices(opts)
    devs["total"] = devs["per_process"] * procs["count"]
    report = {"phase": config.phase, "processes": procs, "devices": devs, "problems": [],
              "notes": []}
    problems, notes = report["problems"], report["notes"]
    if procs["coordinator"]:
        check = coordinator(procs["coordinator"], procs["index"] == 0, opts["timeout_s"])
        report["coordinator"] = check
        if not check["ok"]:
            problems.append(f"coordinator: {check['detail']}")
    elif procs["source"] == "slurm":
        notes.append("coordinator: JAX derives it from SLURM_STEP_NODELIST (first node) and "
                     "SLURM_JOB_ID; not checked")
    mesh, why = resolve_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                             devs["total"])
    report["mesh"] = {"asked": dict(config.mesh), "resolved": mesh}
    if why:
        problems.append(why)
    elif config.phase in TRAINING or config.phase in INFERENCE:
        report["needs"] = preflight(config, devs["total"], problems, notes)
    if config.phase not in TRAINING and config.phase not in INFERENCE:
        notes.append(f"no memory estimate for phase {config.phase!r} (doctor sizes "
                     f"{', '.join([*TRAINING, *INFERENCE])})")
        return report
    try:
        model, source = main_model(config)
    except (ValueError, FileNotFoundError) as e:
        problems.append(f"model: {e}")
        return report
    report["model"] = {"source": source, "params": model.param_count(), "layers":
                       model.num_layers, "hidden": model.hidden_size, "vocab": model.vocab_size,
                       "param_dtype": model.param_dtype, "dtype": model.dtype,
                       "remat": model.remat, "attention_impl": model.attention_impl}
    if model.lora is not None:
        from easyalign.model import lora

        report["model"]["lora"] = {"rank": model.lora.rank, "targets": list(model.lora.targets),
                                   "adapter_params": lora.param_count(model),
                                   "base_dtype": str(model.weight_dtype)}
    extras = extra_models(config, model)
    report["extra_models"] = [{"role": x["role"], "params": x["config"].param_count(),
                               "trained": x["trained"], "note": x["note"]} for x in extras]
    if mesh is None:
        return report
    uneven = uneven_weights(model, mesh)
    if uneven:
        problems.append(f"mesh: {uneven} (the run would stop when it places the weights)")
    if config.phase in TRAINING:
        notes.extend(divisibility(model, mesh, step_sequences(config) // config.train.grad_accum))
    # The logits' chunks follow the device memory the library itself would see: the GPU's
    # allocator limit, or the memory the plan names (on the CPU it budgets its fixed floor).
    chunk_memory = devs["memory_bytes"] if devs["memory_source"] in (
        "memory_stats", "doctor.device_memory_gib") else None
    memory = {k: int(v) for k, v in estimate(config, model, extras, mesh, chunk_memory).items()}
    total, capacity = sum(memory.values()), devs["memory_bytes"]
    report["memory"] = {"per_device": memory, "total": total, "capacity": capacity}
    if devs["platform"] == "cpu":  # measured: SFT real at 4×256 planned 4.27 GiB, peaked at 5.83
        notes.append("memory on the CPU: the estimate is fitted to the GPU's buffer reuse; "
                     "XLA's CPU backend may need more (keep headroom)")
    if capacity is None:
        report["memory"]["verdict"] = "unknown (the device reports no memory size)"
    elif total <= capacity:
        report["memory"]["verdict"] = f"fits ({(capacity - total) / GiB:.2f} GiB to spare)"
    else:
        report["memory"]["verdict"] = f"does not fit (by {(total - capacity) / GiB:.2f} GiB)"
        problems.append(f"memory: {report['memory']['verdict']}")
    return report


def preflight(config, n_devices: int, problems: list[str], notes: list[str]) -> list[str]:
    """The run's own checks before it loads anything (`config_check.validate`: values, the
    batch split over `n_devices`, every path it reads): a run they stop is not ready (one entry
    in `problems`). A `@stage` that has not run yet is planned instead — the doctor sizes a
    pipeline's later stages before the first has run — and returned: what the run needs first,
    each line as the run itself would print it."""
    from easyalign.config_check import ConfigError, validate
    from easyalign.config_paths import MissingStage, planned_stages

    needs: list[MissingStage] = []
    while True:
        try:
            with planned_stages(e.stage_dir for e in needs):
                notes.extend(f"config: {w}" for w in validate(config, devices=n_devices))
            return [str(e) for e in needs]
        except MissingStage as e:
            if any(e.stage_dir == n.stage_dir for n in needs):  # planning did not take: stop
                problems.append(f"config: {e}")
                return [str(n) for n in needs]
            needs.append(e)
        except ConfigError as e:
            problems.append(f"config: {e}")
            return [str(e) for e in needs]


def format_report(report: dict) -> str:
    procs, devs = report["processes"], report["devices"]
    lines = [f"easyalign doctor — phase {report['phase']}",
             f"processes  {procs['count']} (this is process {procs['index']}; "
             f"{procs['source']})"]
    if "coordinator" in report:
        lines.append(f"coordinator {procs['coordinator']}: {report['coordinator']['detail']}")
    memory = (f"{devs['memory_bytes'] / GiB:.2f} GiB each ({devs['memory_source']})"
              if devs["memory_bytes"] else "memory unknown")
    kind = (f"planned (doctor.devices; this machine has {devs['kind']})" if devs["planned"]
            else f"{devs['kind']} ({devs['platform']})")
    lines.append(f"devices    {devs['per_process']} per process, {devs['total']} in all, {kind}; "
                 f"{memory}")
    asked, resolved = report["mesh"]["asked"], report["mesh"]["resolved"]
    lines.append("mesh       " + " ".join(f"{k}={v}" for k, v in asked.items()) + " → " + (
        " ".join(f"{k}={v}" for k, v in resolved.items()) if resolved else "does not fit"))
    if "model" in report:
        m = report["model"]
        lines.append(f"model      {m['source']}: {m['params']:,} params, {m['layers']} layers × "
                     f"{m['hidden']}, vocab {m['vocab']}; {m['param_dtype']} weights, "
                     f"{m['dtype']} compute, remat {m['remat']}, attention {m['attention_impl']}")
        if "lora" in m:
            a = m["lora"]
            lines.append(f"lora       rank {a['rank']} on {','.join(a['targets'])}: "
                         f"{a['adapter_params']:,} trained params; frozen base in "
                         f"{a['base_dtype']}")
        for x in report["extra_models"]:
            kind = "trained" if x["trained"] else "frozen"
            lines.append(f"  + {x['role']} ({kind}): {x['params']:,} params ({x['note']})")
    if "memory" in report:
        mem = report["memory"]
        lines.append("memory per device (estimate; formulas in easyalign/doctor.py)")
        lines += [f"  {name:<16}{size / GiB:8.3f} GiB" for name, size in mem["per_device"].items()]
        capacity = f" of {mem['capacity'] / GiB:.2f} GiB" if mem["capacity"] else ""
        lines.append(f"  {'total':<16}{mem['total'] / GiB:8.3f} GiB{capacity} → {mem['verdict']}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"needs first: {n}" for n in report.get("needs", [])]
    lines += [f"PROBLEM: {p}" for p in report["problems"]]
    if report["problems"]:
        verdict = f"{len(report['problems'])} problem(s)"
    elif report.get("needs"):
        verdict = "ready once the stages it reads have run (needs first, above)"
    else:
        verdict = "ready"
    lines.append("verdict: " + verdict)
    return "\n".join(lines)


def run(config) -> dict:
    """Print the report (and its JSON); exit with status 1 when there is a problem. A key the
    phase does not have stops it first (`config_check.check_keys`): the plan would not be the
    run's."""
    from easyalign.config_check import check_keys

    check_keys(config, "doctor")
    report = diagnose(config)
    print(format_report(report))
    path = options(config)["json"]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report))  # the last line of stdout, for scripts
    if report["problems"]:
        raise SystemExit(1)
    return report
