"""SFT train step at the Llama-3.2-1B shape, 2048-token sequences, against the PyTorch/HF anchor.

Measures the library's own jitted step (`easyalign.train.step.make_train_step` with the SFT loss,
AdamW, clipping, donated state): tokens/s, MFU (anchors' count), step time, peak memory.

    python bench/bench_sft.py [--batch 8] [--remat none] [--param-dtype float32] [--cpu]
"""

import argparse

import common  # noqa: F401  (sets XLA flags before jax)

import jax

from configs import base
from easyalign import sharding
from easyalign.model import preset
from easyalign.train import optim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    common.add_train_step_args(ap, batch=[4, 8])
    args = ap.parse_args()
    tiny = args.cpu
    config = preset("tiny" if tiny else args.preset, dtype="bfloat16", param_dtype=args.param_dtype,
                    attention_impl="xla" if tiny else "cudnn", remat=args.remat,
                    scan_layers=bool(args.scan), logits_chunk=args.chunk)
    seq = 64 if tiny else args.seq
    devices = jax.devices()[:args.devices or None]
    mesh = sharding.make_mesh(1, args.fsdp, 1, devices=devices)
    cfg = base.get_config()
    tx, schedule = optim.make_optimizer(cfg.optim, total_steps=1000)
    for batch in args.batch:
        with sharding.use_mesh(mesh):
            step, state, data = common.sft_step_and_batch(config, mesh, tx, schedule, batch, seq)
            holder = {"state": state}

            def run():
                holder["state"], metrics = step(holder["state"], data, None)
                return metrics["loss"]

            seconds = common.time_calls(run, repeats=args.steps)
        tokens = batch * seq
        flops = common.train_flops_per_token(config.param_count(), config.num_layers,
                                             config.hidden_size, seq)
        common.log(what="easyalign_sft_step", preset="tiny" if tiny else args.preset,
                   batch=batch, seq=seq, remat=args.remat, param_dtype=args.param_dtype,
                   scan_layers=bool(args.scan), logits_chunk=args.chunk,
                   xla_flags=common.extra_flags(),
                   devices=len(devices), step_s=seconds, tokens_per_s=tokens / seconds,
                   mfu=flops * tokens / seconds / (common.PEAK_FLOPS * len(devices)),
                   peak_gib=common.peak_gib(), device=common.device_name())
        del holder, state, step


if __name__ == "__main__":
    main()
