"""The sampler's per-token draw alone: `decode.draw` against the Gumbel-max draw it replaced.

At the GRPO benchmark's decode shape (64 rows × the Llama-3 vocabulary of 128,256, float32
logits, temperature 1) one draw is a token per row plus its log-probability. Two draws are
timed, each inside a `lax.scan` of `--steps` draws whose logits depend on the previous draw's
tokens (so nothing is hoisted out of the loop; the one-element update costs ~2 µs per step):

* `inverse_cdf` — the library's (`sampler.methods.categorical`: one uniform per row, inverted
  through a two-level cumulative sum);
* `gumbel` — `jax.random.categorical` per row with its own key (one threefry draw per
  vocabulary entry), as the sampler drew before perf-notes 48.

Prints one JSON line per variant: microseconds per draw.

    python bench/bench_draw.py [--rows 64] [--vocab 128256] [--steps 256]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (sets the XLA flags before jax is imported)
import jax
import jax.numpy as jnp

from easyalign.sampler.decode import draw, row_keys
from easyalign.sampler.methods import Temperature


def gumbel_draw(logits, keys):
    token = jax.vmap(lambda row, key: jax.random.categorical(key, row))(logits, keys)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None],
                                  axis=-1)[:, 0]
    return token.astype(jnp.int32), logprob


def library_draw(logits, keys):
    return draw(Temperature(1.0), logits, keys)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke test)")
    args = ap.parse_args()
    if min(args.rows, args.vocab, args.steps) < 1:
        ap.error("--rows, --vocab and --steps must be ≥ 1")
    logits = 2.0 * jax.random.normal(jax.random.key(0), (args.rows, args.vocab), jnp.float32)
    rows = jnp.arange(args.rows)

    for name, fn in (("inverse_cdf", library_draw), ("gumbel", gumbel_draw)):
        @jax.jit
        def chain(logits, fn=fn):
            def body(carry, step):
                logits, total = carry
                token, logprob = fn(logits, row_keys(jax.random.key(1), rows,
                                                     jnp.full_like(rows, step)))
                logits = logits.at[:, 0].add(1e-3 * token.astype(jnp.float32))
                return (logits, total + jnp.sum(logprob)), None
            return jax.lax.scan(body, (logits, jnp.float32(0)), jnp.arange(args.steps))[0]

        sec = common.time_calls(lambda chain=chain: chain(logits), repeats=5)
        common.log(what="draw", variant=name, rows=args.rows, vocab=args.vocab,
                   us_per_draw=1e6 * sec / args.steps, device=common.device_name())


if __name__ == "__main__":
    main()
