"""On-policy distillation step (GKD, λ = 1, JSD β = 0.5) against TRL's `GKDTrainer`.

Teacher: Llama-3.2-1B shape (frozen, bf16). Student: 8 layers × 1024 (the anchors' student,
fp32 master weights). Each step: the student samples 256 tokens for each of `batch` prompts of
256 tokens (the jitted sampler, inside the step), the teacher scores the student's tokens, and the
generalized JSD over the full vocabulary (chunked) updates the student — one jitted function.
Reports seconds per step and sampled tokens/s; also tries batch 64 to check it fits.

    python bench/bench_distill.py [--batch 4 64] [--cpu]
"""

import argparse

import common  # noqa: F401

import jax
import numpy as np
from flax import nnx

from configs import base
from easyalign import sharding
from easyalign.algorithms import distill_losses as DL
from easyalign.model import create_model, preset
from easyalign.sampler import Temperature
from easyalign.train import optim
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 64])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    tiny = args.cpu
    numerics = dict(dtype="bfloat16", attention_impl="xla" if tiny else "cudnn",
                    scan_layers=False, logits_chunk=512)
    teacher_cfg = preset("tiny" if tiny else "llama-3.2-1b", param_dtype="bfloat16", **numerics)
    student_cfg = preset("tiny" if tiny else "llama-student-8x1024", param_dtype="float32",
                         **numerics)
    new = 8 if tiny else args.new
    prompt = 16 if tiny else args.prompt
    mesh = sharding.make_mesh(1, -1, 1)
    teacher_graphdef, teacher_params = nnx.split(create_model(teacher_cfg, mesh, seed=1))
    graphdef, params = nnx.split(create_model(student_cfg, mesh, seed=0))
    wiring = DL.Wiring(mode="on_policy", divergence="jsd", beta=0.5, temperature=1.0,
                       sampling=Temperature(1.0), max_new_tokens=new, stop_tokens=(), pad_id=0,
                       teacher=teacher_graphdef)
    tx, schedule = optim.make_optimizer(base.get_config().optim, 1000)
    frozen = {"teacher": teacher_params, "reward": None}
    for batch_size in args.batch:
        state = create_train_state(params, tx, 0, mesh)
        rng = np.random.RandomState(batch_size)
        host = {"prompt_tokens": rng.randint(0, student_cfg.vocab_size, (batch_size, prompt)),
                "prompt_lengths": np.full((batch_size,), prompt)}
        try:
            with sharding.use_mesh(mesh):
                batch = {k: jax.device_put(np.asarray(v, np.int32),
                                           sharding.batch_sharding(mesh, np.ndim(v)))
                         for k, v in host.items()}
                step = make_train_step(DL.make_loss(graphdef, wiring), tx, schedule,
                                       state_shardings(state), donate=False)
                holder = {"s": state}

                def run():
                    holder["s"], metrics = step(holder["s"], batch, frozen)
                    return metrics["loss"]

                seconds = common.time_calls(run, repeats=args.steps, warmup=1)
            common.log(what="easyalign_distill_on_policy", batch=batch_size, prompt=prompt,
                       new_tokens=new, divergence="jsd(0.5)", step_s=seconds,
                       sampled_tokens_per_s=batch_size * new / seconds,
                       peak_gib=common.peak_gib(), device=common.device_name(),
                       xla_flags=common.extra_flags())
        except Exception as e:  # e.g. out of memory at large batch: report, do not hide
            common.log(what="easyalign_distill_fail", batch=batch_size, error=repr(e)[:300])


if __name__ == "__main__":
    main()
