"""Where the time goes: the SFT step and the decode step taken apart, on the Llama-3.2-1B shape.

Each row times one piece in isolation (median of repeats after compiling), so a change can be
aimed at the piece that costs. Run on the GPU: `python bench/profile_parts.py [--part sft|decode]`.
"""

import argparse

import common  # noqa: F401

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from easyalign import sharding
from easyalign.model import KVCache, create_model, preset
from easyalign.model.scoring import token_logprobs
from easyalign.sampler.methods import categorical


def sft_parts(args):
    B, T = args.batch, args.seq
    for variant in args.variants:
        kw = dict(v.split("=") for v in variant.split(",") if v)
        scan = kw.pop("scan", "1") == "1"
        chunk = int(kw.pop("chunk", "512"))
        remat = kw.pop("remat", "none")
        pdt = kw.pop("param_dtype", "float32")
        config = preset(args.preset, dtype="bfloat16", param_dtype=pdt,
                        attention_impl=kw.pop("attn", "xla" if args.cpu else "cudnn"), remat=remat, scan_layers=scan)
        mesh = sharding.make_mesh(1, -1, 1)
        model = create_model(config, mesh, seed=0)
        graphdef, params = nnx.split(model)
        tokens = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (B, T)),
                             jnp.int32)

        def trunk_sum(p):
            h, _ = nnx.merge(graphdef, p).trunk(tokens)
            return jnp.sum(h.astype(jnp.float32) ** 2)

        def loss(p):
            m = nnx.merge(graphdef, p)
            h, _ = m.trunk(tokens)
            return -jnp.mean(token_logprobs(m, h, tokens, chunk=chunk))

        hidden = jax.jit(lambda p: nnx.merge(graphdef, p).trunk(tokens)[0])(params)

        def head_loss(h, p):
            return -jnp.mean(token_logprobs(nnx.merge(graphdef, p), h, tokens, chunk=chunk))

        tx = optax.adamw(1e-4)
        opt_state = jax.jit(tx.init)(params)
        grads = jax.tree.map(jnp.zeros_like, params)
        pieces = {
            "trunk_fwd": jax.jit(lambda p: trunk_sum(p)),
            "trunk_fwd_bwd": jax.jit(jax.grad(trunk_sum)),
            "head_fwd_bwd": jax.jit(jax.grad(head_loss, argnums=(0, 1))),
            "loss_fwd_bwd": jax.jit(jax.grad(loss)),
            "adamw_update": jax.jit(lambda g, s, p: tx.update(g, s, p)),
        }
        inputs = {"head_fwd_bwd": (hidden, params), "adamw_update": (grads, opt_state, params)}
        if variant != args.variants[0]:
            pieces = {"loss_fwd_bwd": pieces["loss_fwd_bwd"]}  # variants: the total only
        with sharding.use_mesh(mesh):
            for name, fn in pieces.items():
                a = inputs.get(name, (params,))
                sec = common.time_calls(lambda: fn(*a), repeats=5)
                common.log(what="sft_part", variant=variant, part=name, ms=1000 * sec,
                           tokens_per_s=B * T / sec)
        del model, params, opt_state, grads, hidden


def decode_parts(args):
    for variant in args.variants:
        kw = dict(v.split("=") for v in variant.split(",") if v)
        scan = kw.pop("scan", "1") == "1"
        config = preset(args.preset, dtype="bfloat16", param_dtype="bfloat16",
                        scan_layers=scan)
        mesh = sharding.make_mesh(1, -1, 1)
        graphdef, params = nnx.split(create_model(config, mesh, seed=0))
        for B in args.decode_batch:
            S = 384
            cache = KVCache.zeros(config, B, S)
            tok = jnp.zeros((B, 1), jnp.int32)
            pos = jnp.full((B, 1), 200, jnp.int32)
            steps = 32

            def loop(p, cache, with_head, sample, tok0=tok):
                m = nnx.merge(graphdef, p)

                def body(c, i):
                    cache, tok = c
                    h, cache = m.trunk(tok, positions=pos + i, cache=cache)
                    if with_head:
                        logits = m.logits(h[:, 0])
                        if sample == "categorical":  # the sampler's random draw
                            nxt = categorical(jax.random.key(i), logits)
                        elif sample == "greedy":
                            nxt = jnp.argmax(logits, -1)
                        else:
                            nxt = jnp.argmax(logits, -1)
                        tok = nxt[:, None].astype(jnp.int32)
                    else:
                        tok = (h[:, :, 0] > 0).astype(jnp.int32)
                    return (cache, tok), None

                (cache, last), _ = jax.lax.scan(body, (cache, tok0), jnp.arange(steps))
                return last

            with sharding.use_mesh(mesh):
                for name, wh, smp in (("trunk_only", False, ""), ("trunk_head_argmax", True, "greedy"),
                                      ("trunk_head_sample", True, "categorical")):
                    fn = jax.jit(lambda p, c: loop(p, c, wh, smp))
                    sec = common.time_calls(lambda: fn(params, cache), repeats=5)
                    common.log(what="decode_part", variant=variant, batch=B, part=name,
                               ms_per_step=1000 * sec / steps)
        # Raw matvec bandwidth of the biggest projection shapes at batch 1.
        for shape in ((2048, 8192), (8192, 2048), (2048, 128256)):
            w = jnp.ones(shape, jnp.bfloat16)
            x = jnp.ones((1, shape[0]), jnp.bfloat16)
            f = jax.jit(lambda x, w: x @ w)
            sec = common.time_calls(lambda: f(x, w), repeats=20)
            common.log(what="matvec", shape=shape, us=1e6 * sec,
                       tb_per_s=shape[0] * shape[1] * 2 / sec / 1e12)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="sft")
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--decode-batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--variants", nargs="+", default=[""])
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    (sft_parts if a.part == "sft" else decode_parts)(a)
