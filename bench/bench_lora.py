"""LoRA train step (SFT or DPO) at the Llama-3.2-1B / Llama-3.1-8B shapes, against HF + PEFT.

The library's own LoRA step, built as the `sft` and `dpo` phases build it: the phase's
`hf.models.init_model` makes the base model (random init, `model.init=scratch`) and attaches fresh
adapters (`lora.attach`: A drawn as PEFT draws it, B = 0), and
`driver.with_frozen_base` splits the params into the trainable adapters (the train state: AdamW,
clipping, donation) and the frozen base (the step's `frozen` argument: no gradient, no optimizer
state, never donated); the step is `make_train_step` with `sft.make_loss` or `dpo.make_loss`.
DPO's live reference is `lora.live_reference(model)`: the policy's own base with the adapters
off (a `BaseReference` the step resolves; no second copy of the weights).

Adapters: rank 16, alpha 32 (s = 2), dropout 0, on all seven linear projections of every layer
(q, k, v, o, gate, up, down; not the embedding or LM head), `model.param_dtype=float32` (the
master dtype; the JSON's `adapter_dtype` is read from the trained params, i.e. what the phase
actually built), bf16 compute; the frozen base stored bf16 (`model.lora.base_dtype=bfloat16`) or
fp32 (`--base-dtype float32`). The peer is `bench/peft_baseline.py` (same shapes and adapters).

MFU, two counts per token (÷ 989 TFLOP/s per GPU, as the anchors; recomputation under remat is
not counted, as in the anchors):
  mfu_6n    the anchors' count, as if every weight were trained: 6·N + 6·L·d·S, N = all
            parameters (base + adapters; a tied head counted once), S the sequence length
  mfu_lora  what a LoRA step computes: 4·N_base + 6·N_adapter + 6·L·d·S. The frozen base runs
            forward (2·N) and passes activation gradients back (2·N) but gets no weight gradient
            (the third 2·N of 6·N); attention has no weights, so its 6·L·d·S stays. NVIDIA NeMo
            Automodel's PEFT count is the same idea: 6·N × (2 + N_adapter/N_base)/3 ≈ 4·N_base
            (NVIDIA-NeMo/Automodel PR #786).
DPO adds the reference forward, 2·N_base + 2·L·d·S per policy token, to both counts, and its
tokens/s counts policy tokens (chosen + rejected), as bench_dpo.py's policy_tokens_per_s.

    python bench/bench_lora.py [--preset llama-3.2-1b] [--phase sft|dpo] [--batch 4]
        [--base-dtype bfloat16 float32] [--rank 16] [--alpha 32] [--targets all]
        [--remat none] [--scan 0] [--cpu]
"""

import argparse
import time
from types import SimpleNamespace

START = time.perf_counter()

import common  # noqa: F401  (sets XLA flags before jax)

import jax
import numpy as np
from flax import nnx

from configs import base
from configs import dpo as dpo_config
from easyalign import losses, sharding
from easyalign.algorithms import dpo, sft
from easyalign.hf import models
from easyalign.model import PRESETS, lora
from easyalign.train import driver, optim
from easyalign.train import loop as train_loop
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step


def phase_model(args, name: str, base_dtype: str, chunk: int, mesh):
    """The model the `sft` / `dpo` phase starts from, built by the phase's own
    `hf.models.init_model` from a `model` config block (init=scratch: the base, random, in
    `model.lora.base_dtype`, then fresh adapters attached with B = 0)."""
    c = base.get_config()
    m = c.model
    m.preset, m.init, m.vocab_size = name, "scratch", PRESETS[name]["vocab_size"]
    m.dtype, m.param_dtype = "bfloat16", "float32"
    m.attention_impl = "xla" if args.cpu else "cudnn"
    m.remat, m.scan_layers, m.logits_chunk = args.remat, bool(args.scan), chunk
    m.lora.rank, m.lora.alpha, m.lora.dropout = args.rank, args.alpha, 0.0
    m.lora.targets, m.lora.base_dtype = args.targets, base_dtype
    c.train.seed = 0
    tokenizer = SimpleNamespace(eos_token_id=PRESETS[name].get("eos_token_id"),
                                bos_token_id=PRESETS[name].get("bos_token_id"), pad_token_id=0)
    return models.init_model(SimpleNamespace(config=c, tokenizer=tokenizer, mesh=mesh), head="lm")


def flops_per_token(config, seq: int, phase: str) -> tuple[float, float]:
    """`(anchors' 6N count, LoRA-aware count)` per policy token (module docstring)."""
    n_base, n_adapter = config.param_count(), lora.param_count(config)
    attention = config.num_layers * config.hidden_size * seq  # L·d·S
    six_n = 6 * (n_base + n_adapter) + 6 * attention
    aware = 4 * n_base + 6 * n_adapter + 6 * attention
    reference = 2 * n_base + 2 * attention if phase == "dpo" else 0
    return six_n + reference, aware + reference


def measure(args, name: str, base_dtype: str, batch: int, seq: int, chunk: int, mesh):
    """`(median step seconds, model config, adapter dtypes)` of one LoRA train step."""
    tx, schedule = optim.make_optimizer(base.get_config().optim, total_steps=1000)
    model = phase_model(args, name, base_dtype, chunk, mesh)
    config = model.config
    graphdef, params = nnx.split(model)
    if args.phase == "dpo":  # as the dpo phase's live reference (dpo.setup)
        settings = losses.DPOSettings.from_config(dpo_config.get_config().dpo)
        frozen, ref_graphdef = lora.live_reference(model)
        loss_fn = dpo.make_loss(graphdef, settings, ref_graphdef)
    else:
        frozen, loss_fn = None, sft.make_loss(graphdef, packed=False)
    del model
    # As driver.fit: only the adapters are trained; the base rides in `frozen`.
    trainable, loss_fn, frozen, _, _ = driver.with_frozen_base(
        params, loss_fn, frozen, train_loop.StepHooks())
    del params
    adapter_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(trainable)})
    state = create_train_state(trainable, tx, seed=0, mesh=mesh)
    del trainable
    rng = np.random.RandomState(0)
    if args.phase == "dpo":
        mask = np.zeros((batch, seq), np.float32)
        mask[:, seq // 2:] = 1.0  # prompt + completion halves, as bench_dpo / the TRL anchor
        host = {"chosen_tokens": rng.randint(0, config.vocab_size, (batch, seq)),
                "rejected_tokens": rng.randint(0, config.vocab_size, (batch, seq)),
                "chosen_loss_mask": mask, "rejected_loss_mask": mask}
    else:
        host = {"tokens": rng.randint(0, config.vocab_size, (batch, seq)),
                "loss_mask": np.ones((batch, seq), np.float32)}
    with sharding.use_mesh(mesh):
        step = make_train_step(loss_fn, tx, schedule, state_shardings(state))
        data = {k: jax.device_put(np.asarray(v, np.float32 if "mask" in k else np.int32),
                                  sharding.batch_sharding(mesh, 2))
                for k, v in host.items()}
        holder = {"state": state}
        del state

        def run():
            holder["state"], metrics = step(holder["state"], data, frozen)
            return metrics["loss"]

        seconds = common.time_calls(run, repeats=args.steps)
    return seconds, config, adapter_dtypes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--phase", default="sft", choices=("sft", "dpo"))
    ap.add_argument("--batch", type=int, nargs="+", default=[4],
                    help="SFT sequences (DPO: pairs) per step")
    ap.add_argument("--seq", type=int, default=0, help="0: 2048 (SFT), 1024 (DPO, 512 + 512)")
    ap.add_argument("--base-dtype", nargs="+", default=["bfloat16"],
                    help="frozen base storage dtype(s), measured in turn")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="all")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--scan", type=int, default=0, help="1: lax.scan over layers; 0: unrolled")
    ap.add_argument("--chunk", type=int, default=0, help="logits chunk (0: the sequence length)")
    ap.add_argument("--devices", type=int, default=0, help="mesh over the first N devices (0: all)")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    tiny = args.cpu
    name = "tiny" if tiny else args.preset
    seq = 64 if tiny else (args.seq or (2048 if args.phase == "sft" else 1024))
    chunk = args.chunk or seq
    devices = jax.devices()[:args.devices or None]
    mesh = sharding.make_mesh(1, -1, 1, devices=devices)
    for base_dtype in args.base_dtype:
        for batch in args.batch:
            seconds, config, adapter_dtype = measure(args, name, base_dtype, batch, seq, chunk,
                                                     mesh)
            # Policy tokens per step (DPO: chosen + rejected, bench_dpo's policy_tokens_per_s).
            tokens = (2 if args.phase == "dpo" else 1) * batch * seq
            six_n, aware = flops_per_token(config, seq, args.phase)
            peak = common.PEAK_FLOPS * len(devices)
            rows = ({"pairs": batch, "reference": "live: the base, adapters off"}
                    if args.phase == "dpo" else {"batch": batch})
            common.log(what=f"easyalign_lora_{args.phase}_step", preset=name, seq=seq, **rows,
                       rank=args.rank, alpha=args.alpha, targets=",".join(config.lora.targets),
                       base_dtype=str(config.weight_dtype), adapter_dtype=",".join(adapter_dtype),
                       compute_dtype=config.dtype,
                       params=config.param_count() + lora.param_count(config),
                       adapter_params=lora.param_count(config),
                       remat=args.remat, scan_layers=bool(args.scan), logits_chunk=chunk,
                       xla_flags=common.extra_flags(), devices=len(devices), step_s=seconds,
                       tokens_per_s=tokens / seconds, mfu_6n=six_n * tokens / seconds / peak,
                       mfu_lora=aware * tokens / seconds / peak, peak_gib=common.peak_gib(),
                       device=common.device_name(), wall_s=time.perf_counter() - START)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line the device call's log keeps (it greps for '{')
        common.log(what="easyalign_lora_fail", err=f"{type(e).__name__}: {str(e)[:300]}",
                   wall_s=time.perf_counter() - START)
        raise
