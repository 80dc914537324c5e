"""Continuous batching against the static-batch sampler on a mixed-length rollout workload.

The workload (issue 21): 256 Alpaca prompts with the response lengths of their own Alpaca
outputs (GPT-2 tokens, capped at 512) at the Llama-3.2-1B shape. A randomly initialised model
never stops on its own, so each prompt's response length is its budget (`generate(budgets=)`),
the same for both samplers; temperature-1 sampling, no stop tokens.

* static: the prompts in batches of `--slots` rows, one `generate` call each (the sampler before
  continuous batching: every batch runs until its longest row is done);
* engine: one `generate` call over all prompts with `slots=--slots`, finished slots refilled from
  the queue inside the loop (`refill` prompts at a time).

Both report generated tokens/s (the sum of the budgets / wall seconds, median of `--repeats`
after a warm-up). A second figure, `group`: 8 prompts × G = 8 samples of 256 + 256 tokens (the
GRPO benchmark's shape), the prompts repeated 8 times (as before) against `num_samples=8`
(each prompt prefilled once).

    python bench/bench_rollout.py [--slots 64] [--prompts 256] [--cpu]
"""

import argparse
import json
from pathlib import Path

import common  # noqa: F401

import jax
import numpy as np
from flax import nnx

from easyalign import sharding
from easyalign.model import create_model, preset
from easyalign.sampler import Temperature, bucket_length, generate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def alpaca_lengths(path: Path, tokenizer_dir: Path, n: int, cap: int):
    """`(prompt lengths, response lengths)` in GPT-2 tokens of the first `n` Alpaca records."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(tokenizer_dir / "encoder.json"),
                                         str(tokenizer_dir / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    count = lambda text: len(tok.encode(text).ids)  # noqa: E731
    records = json.loads(path.read_text())[:n]
    prompts = [count(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""))
               for r in records]
    # The response and its end-of-text token, as a sampler that stops would emit it.
    responses = [min(cap, count(r["output"]) + 1) for r in records]
    return np.array(prompts, np.int32), np.array(responses, np.int32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--refill", type=int, nargs="+", default=[0],
                    help="prompts per refill, one engine figure each (0: the default)")
    ap.add_argument("--cap", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    tiny = args.cpu
    data = Path(args.data)
    config = preset("tiny" if tiny else args.preset, dtype="bfloat16", param_dtype="bfloat16",
                    attention_impl="xla" if tiny else "cudnn", scan_layers=False)
    n, slots, cap = (32, 8, 24) if tiny else (args.prompts, args.slots, args.cap)
    prompt_lengths, budgets = alpaca_lengths(data / "alpaca" / "alpaca_5000.json",
                                             data / "gpt2-tokenizer", n, cap)
    width = bucket_length(int(prompt_lengths.max()))
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, config.vocab_size, (n, width)).astype(np.int32)
    mesh = sharding.make_mesh(1, -1, 1)
    graphdef, params = nnx.split(create_model(config, mesh, seed=0))
    common_args = dict(max_new_tokens=int(budgets.max()), method=Temperature(1.0),
                       stop_tokens=(), mesh=mesh)

    def static():
        return [generate(graphdef, params, tokens[i:i + slots], prompt_lengths[i:i + slots],
                         jax.random.key(i), budgets=budgets[i:i + slots], **common_args).lengths
                for i in range(0, n, slots)]

    def engine(refill):
        return lambda: generate(graphdef, params, tokens, prompt_lengths, jax.random.key(0),
                                budgets=budgets, slots=slots, refill=refill or None,
                                **common_args).lengths

    generated = int(budgets.sum())
    runs = [("static", None, static)] + [("engine", r, engine(r)) for r in args.refill]
    with sharding.use_mesh(mesh):
        seconds = {}
        for name, refill, fn in runs:
            got = jax.device_get(fn())
            got = np.concatenate(got) if isinstance(got, list) else got
            assert np.array_equal(got, budgets), f"{name}: a row did not use its budget"
            s = seconds[name, refill] = common.time_calls(fn, repeats=args.repeats, warmup=1)
            common.log(what=f"rollout_{name}", preset=args.preset, prompts=n, slots=slots,
                       refill=refill or max(1, slots // 8) if name == "engine" else None,
                       width=width, budget_mean=float(budgets.mean()),
                       budget_max=int(budgets.max()), generated=generated, s=s,
                       tokens_per_s=generated / s, device=common.device_name())
            if name == "engine":
                common.log(what="rollout_speedup", refill=refill,
                           engine_over_static=seconds["static", None] / s)

    # GRPO shape: 8 prompts × G = 8, 256 + 256 tokens, every row at full length.
    P, N, G, B = (16, 16, 4, 2) if tiny else (256, 256, 8, 8)
    group_tokens = rng.randint(0, config.vocab_size, (B, P)).astype(np.int32)
    group_lengths = np.full((B,), P, np.int32)
    group_args = dict(max_new_tokens=N, method=Temperature(1.0), stop_tokens=(), mesh=mesh)

    def repeated():
        return generate(graphdef, params, np.repeat(group_tokens, G, 0),
                        np.repeat(group_lengths, G), jax.random.key(1), **group_args).tokens

    def grouped():
        return generate(graphdef, params, group_tokens, group_lengths, jax.random.key(1),
                        num_samples=G, **group_args).tokens

    with sharding.use_mesh(mesh):
        same = np.mean(jax.device_get(repeated()) == jax.device_get(grouped()))
        for name, fn in (("repeated", repeated), ("grouped", grouped)):
            s = common.time_calls(fn, repeats=args.repeats)
            common.log(what=f"group_{name}", prompts=B, group=G, prompt=P, new=N, s=s,
                       tokens_per_s=B * G * N / s, same_tokens_frac=float(same),
                       peak_gib=common.peak_gib(), device=common.device_name())


if __name__ == "__main__":
    main()
