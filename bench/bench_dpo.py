"""DPO step at the Llama-3.2-1B shape, 4 pairs × 1024 tokens, live reference, against TRL.

The library's own step: `easyalign.algorithms.dpo.make_loss` with the frozen reference passed
as the step's `frozen` argument (run forward every step, as TRL's `ref_model`), through the
generic jitted train step (AdamW, clipping, donation). The reference is held in bf16 (it is
never updated, so it needs no fp32 master copy); the policy keeps fp32 master weights.

    python bench/bench_dpo.py [--pairs 4] [--seq 1024] [--cpu]
"""

import argparse

import common  # noqa: F401

import jax
import numpy as np
from flax import nnx

from configs import base
from configs import dpo as dpo_config
from easyalign import losses, sharding
from easyalign.algorithms import dpo
from easyalign.model import create_model, preset
from easyalign.train import optim
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--devices", type=int, default=0, help="mesh over the first N devices (0: all)")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    tiny = args.cpu
    numerics = dict(dtype="bfloat16", attention_impl="xla" if tiny else "cudnn",
                    scan_layers=False, logits_chunk=args.chunk)
    name = "tiny" if tiny else args.preset
    policy_config = preset(name, param_dtype="float32", **numerics)
    seq = 64 if tiny else args.seq
    devices = jax.devices()[:args.devices or None]
    mesh = sharding.make_mesh(1, -1, 1, devices=devices)
    graphdef, params = nnx.split(create_model(policy_config, mesh, seed=0))
    ref_graphdef, ref_params = nnx.split(
        create_model(preset(name, param_dtype="bfloat16", **numerics), mesh, seed=0))
    d = losses.DPOSettings.from_config(dpo_config.get_config().dpo)
    tx, schedule = optim.make_optimizer(base.get_config().optim, 1000)
    state = create_train_state(params, tx, 0, mesh)
    rng = np.random.RandomState(0)
    half = seq // 2  # prompt 512 + completion 512, as the TRL anchor
    mask = np.zeros((args.pairs, seq), np.float32)
    mask[:, half:] = 1.0
    host = {"chosen_tokens": rng.randint(0, policy_config.vocab_size, (args.pairs, seq)),
            "rejected_tokens": rng.randint(0, policy_config.vocab_size, (args.pairs, seq)),
            "chosen_loss_mask": mask, "rejected_loss_mask": mask}
    with sharding.use_mesh(mesh):
        batch = {k: jax.device_put(np.asarray(v, np.float32 if "mask" in k else np.int32),
                                   sharding.batch_sharding(mesh, 2)) for k, v in host.items()}
        step = make_train_step(dpo.make_loss(graphdef, d, ref_graphdef), tx, schedule,
                               state_shardings(state))
        holder = {"s": state}

        def run():
            holder["s"], metrics = step(holder["s"], batch, ref_params)
            return metrics["loss"]

        seconds = common.time_calls(run, repeats=args.steps)
    tokens = 2 * args.pairs * seq
    common.log(what="easyalign_dpo_step", preset=args.preset, pairs=args.pairs, seq=seq,
               reference="live (bf16)", devices=len(devices), step_s=seconds,
               policy_tokens_per_s=tokens / seconds,
               peak_gib=common.peak_gib(), device=common.device_name(),
               xla_flags=common.extra_flags())


if __name__ == "__main__":
    main()
