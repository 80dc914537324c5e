"""Decode attention alone at the GRPO shape: cuDNN against the shared-prefix Pallas kernel.

Llama-3.2-1B's attention (32 query heads, 8 KV heads, head dim 64), a decode batch of
8 prompts × G = 8 rows, a 256-token prompt shared by each group and a cache of 512 slots; each
row at `prompt + t` for several decode steps t. One timed call chains `--layers` attention
calls (each layer's output is the next one's query, so none is skipped or overlapped), as a
decode step runs them; reported per layer. `easyalign.model.decode_attention` is timed with
the prompt read from the group's first row (`shared`) and from every row's own copy (`own`).
Each call also writes the step's keys and values into the cache: two scatters before cuDNN,
inside the kernel for Pallas. `max_abs` is the largest difference from cuDNN's output (bf16).

    python bench/bench_decode_attention.py [--block-k 32 64 128] [--warps 4 8]
"""

import argparse
import time

import common  # noqa: F401  (sets XLA flags before jax)

import jax
import jax.numpy as jnp
import numpy as np

from easyalign.model.decode_attention import decode_attention


def time_chain(fn, *args, repeats=20):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--steps", type=int, nargs="+", default=[128])
    ap.add_argument("--block-k", type=int, nargs="+", default=[64])
    ap.add_argument("--warps", type=int, nargs="+", default=[2])
    ap.add_argument("--stages", type=int, nargs="+", default=[2])
    args = ap.parse_args()
    B = args.prompts * args.group
    S = args.prompt + args.new
    H, KV, hd = args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(0)
    k = rng.standard_normal((B, S, KV, hd))
    for b in range(B):  # each group's rows hold their prompt's keys, as a prefill writes them
        k[b, :args.prompt] = k[b // args.group * args.group, :args.prompt]
    v = jnp.asarray(np.roll(k, 1, axis=-1), jnp.bfloat16)  # shares like k
    k = jnp.asarray(k, jnp.bfloat16)
    q0 = jnp.asarray(rng.standard_normal((B, H, hd)), jnp.bfloat16)
    leaders = jnp.asarray(np.arange(B) // args.group * args.group, jnp.int32)
    own = jnp.arange(B, dtype=jnp.int32)
    prefix = jnp.full((B,), args.prompt, jnp.int32)
    k_new = jnp.asarray(rng.standard_normal((B, KV, hd)), jnp.bfloat16)
    v_new = jnp.asarray(rng.standard_normal((B, KV, hd)), jnp.bfloat16)
    for t in args.steps:
        positions = jnp.full((B,), args.prompt + t - 1, jnp.int32)

        def chain(attend):
            @jax.jit
            def run(q, k, v):
                def body(_, carry):
                    q, k, v = carry
                    out, k, v = attend(q, k, v)
                    return out.astype(q.dtype), k, v
                return jax.lax.fori_loop(0, args.layers, body, (q, k, v))[0]
            return run

        def cudnn(q, k, v):  # the model's path before the kernel: two scatters, then cuDNN
            at = (jnp.arange(B)[:, None], positions[:, None])
            k = k.at[at].set(k_new[:, None])
            v = v.at[at].set(v_new[:, None])
            out = jax.nn.dot_product_attention(q[:, None], k, v,
                                               key_value_seq_lengths=positions + 1,
                                               implementation="cudnn")[:, 0]
            return out, k, v

        reference = jax.jit(cudnn)(q0, k, v)[0]
        seconds = time_chain(chain(cudnn), q0, k, v)
        common.log(what="decode_attention", impl="cudnn+scatter", rows=B, step=t,
                   prompt=args.prompt, slots=S, us_per_layer=1e6 * seconds / args.layers,
                   device=common.device_name())
        for block_k in args.block_k:
            for warps in args.warps:
                for stages in args.stages:
                    for name, rows in (("shared", leaders), ("own", own)):
                        attend = lambda q, k, v, rows=rows: decode_attention(  # noqa: E731
                            jnp.concatenate([q, k_new, v_new], axis=1), k, v, positions, rows,
                            prefix, block_k=block_k, num_warps=warps, num_stages=stages)
                        diff = float(jnp.max(jnp.abs(
                            jax.jit(attend)(q0, k, v)[0].astype(jnp.float32)
                            - reference.astype(jnp.float32))))
                        seconds = time_chain(chain(attend), q0, k, v)
                        common.log(what="decode_attention", impl=f"pallas_{name}", rows=B,
                                   step=t, prompt=args.prompt, slots=S, block_k=block_k,
                                   warps=warps, stages=stages,
                                   us_per_layer=1e6 * seconds / args.layers, max_abs=diff,
                                   device=common.device_name())


if __name__ == "__main__":
    main()
