"""Sampler throughput at the Llama-3.2-1B shape: prompt 128, 256 new tokens, batch 1 and 64.

Times `easyalign.sampler.generate` (prefill + on-device while_loop decode) with temperature-1
sampling (HF `generate(do_sample=True)` in the anchor) and no stop tokens, so every row produces
all 256 tokens. Reports new tokens/s = batch · 256 / seconds per call.

    python bench/bench_sampler.py [--batch 1 64] [--check] [--cpu]
"""

import argparse

import common  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import sharding
from easyalign.algorithms.rollout import policy_logps
from easyalign.model import create_model, preset
from easyalign.sampler import Temperature, generate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan", type=int, default=1, help="1: lax.scan over layers; 0: unrolled")
    ap.add_argument("--attention", default="cudnn", help="attention_impl on the GPU: cudnn "
                    "(decode through cuDNN's fused kernel) or xla (einsum over the cache)")
    ap.add_argument("--check", action="store_true", help="also report |Δ log p| between the "
                    "sampler's log-probs and one full forward over prompt + sampled tokens")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    tiny = args.cpu
    config = preset("tiny" if tiny else args.preset, dtype="bfloat16", param_dtype="bfloat16",
                    attention_impl="xla" if tiny else args.attention,
                    scan_layers=bool(args.scan))
    new = 16 if tiny else args.new
    mesh = sharding.make_mesh(1, -1, 1)
    graphdef, params = nnx.split(create_model(config, mesh, seed=0))
    for batch in args.batch:
        rng = np.random.RandomState(batch)
        prompts = rng.randint(0, config.vocab_size, (batch, args.prompt)).astype(np.int32)
        lengths = np.full((batch,), args.prompt, np.int32)

        def run():
            return generate(graphdef, params, prompts, lengths, jax.random.key(0),
                            max_new_tokens=new, method=Temperature(1.0), stop_tokens=(),
                            mesh=mesh).tokens

        seconds = common.time_calls(run, repeats=args.repeats)
        common.log(what="easyalign_generate", preset=args.preset, batch=batch,
                   prompt=args.prompt, new=new, s=seconds, new_tokens_per_s=batch * new / seconds,
                   ms_per_step=1000 * seconds / new, peak_gib=common.peak_gib(),
                   scan_layers=bool(args.scan), attention=config.attention_impl,
                   xla_flags=common.extra_flags(),
                   device=common.device_name())
        if args.check:
            check_logprobs(graphdef, params, prompts, lengths, new, mesh, config, batch)


def check_logprobs(graphdef, params, prompts, lengths, new, mesh, config, batch):
    """Log max and mean |log p_sampler − log p_forward| over the sampled tokens: the decode
    path (cache, fused projections, grouped decode attention) against the training forward
    (`rollout.policy_logps`) on the same tokens, both in the model's compute dtype."""
    out = generate(graphdef, params, prompts, lengths, jax.random.key(0), max_new_tokens=new,
                   method=Temperature(1.0), stop_tokens=(), mesh=mesh)
    tokens = jnp.concatenate([jnp.asarray(prompts), out.tokens], axis=1)
    logps, _ = jax.jit(lambda p, t: policy_logps(nnx.merge(graphdef, p), t))(params, tokens)
    diff = np.abs(np.asarray(logps[:, prompts.shape[1]:]) - np.asarray(out.logprobs))
    common.log(what="easyalign_decode_logprob_check", batch=batch,
               attention=config.attention_impl, max_abs=float(diff.max()),
               mean_abs=float(diff.mean()), device=common.device_name())


if __name__ == "__main__":
    main()
