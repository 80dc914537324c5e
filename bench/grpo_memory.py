"""Compiled memory of each jitted piece of one GRPO iteration, without running it.

Every piece is lowered with abstract inputs (`jax.ShapeDtypeStruct`s: no weights are
allocated) and compiled; `compiled.memory_analysis()` gives its temporary bytes (buffers live
only inside the call), arguments and outputs. The pieces are those `bench/bench_grpo.py` runs:
the sampler (`sampler.generate`), the rollout scorer (`grpo.make_scorer`) and the train step of
the update (`make_train_step(grpo.make_loss(...))`), at its shapes (default: Llama-3.2-1B,
8 prompts × G = 8, 256 prompt + 256 new tokens, β = 0.04, μ = 1, one minibatch).

On the CPU (`--cpu`, which also selects XLA attention) the numbers are XLA:CPU's buffer
assignment, not the GPU's: XLA:CPU computes bf16 matrix products in float32 copies and the
XLA attention keeps `[B, heads, T, T]` float32 scores, so the update's temporaries there (about
190 GiB at the default shape) say little about an H200's (51 GiB before the remat fix, 47 GiB
after, 14 GiB with `--remat full`: docs/bench-results/grpo_memory_h200_20261130.jsonl).

    JAX_PLATFORMS=cpu python bench/grpo_memory.py --cpu [--remat full] [--pieces score,update]
"""

import argparse

import common  # noqa: F401  (sets XLA flags before jax)

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from configs import grpo as grpo_config
from easyalign import losses, sampler, sharding
from easyalign.algorithms import grpo, grpo_rollout, rollout
from easyalign.model import abstract_model, preset
from easyalign.train import optim
from easyalign.train.state import TrainState, opt_state_shardings, state_shardings
from easyalign.train.step import make_train_step

GIB = 2**30


def abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def spec(shape, dtype, mesh):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))


def report(name, compiled, **fields):
    m = compiled.memory_analysis()
    common.log(what="grpo_memory", piece=name, temp_gib=m.temp_size_in_bytes / GIB,
               argument_gib=m.argument_size_in_bytes / GIB, output_gib=m.output_size_in_bytes / GIB,
               alias_gib=m.alias_size_in_bytes / GIB, device=common.device_name(), **fields)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--scan", type=int, default=0, help="1: lax.scan over layers; 0: unrolled")
    ap.add_argument("--num-iterations", type=int, default=1)
    ap.add_argument("--pieces", default="sample,score,update")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    pieces = args.pieces.split(",")
    numerics = dict(dtype="bfloat16", attention_impl="xla" if args.cpu else "cudnn",
                    remat=args.remat, scan_layers=bool(args.scan), logits_chunk=args.chunk,
                    bos_token_id=1, eos_token_id=2)
    policy_config = preset(args.preset, param_dtype="float32", **numerics)
    c = grpo_config.get_config()
    g = c.grpo
    g.num_generations, g.max_new_tokens, g.beta = args.group, args.new, 0.04
    g.loss_type, g.num_iterations, g.minibatch_size = "token_mean", args.num_iterations, 0
    c.train.batch_size = args.prompts
    c.data.max_length = args.prompt + args.new
    grpo.check_config(c)
    rows, width = args.prompts * args.group, args.prompt + args.new
    shape = dict(preset=args.preset, rows=rows, width=width, remat=args.remat,
                 scan_layers=bool(args.scan), num_iterations=args.num_iterations)

    # Before/after: the code before this script's commit had neither (it scored log π_old).
    new_api = hasattr(grpo, "detached_old_logps")
    scored_old = not grpo.detached_old_logps(c) if new_api else True
    shape["scores_old_logps"] = scored_old
    mesh = sharding.make_mesh(1, -1, 1)
    graphdef, params, shardings = abstract_model(policy_config, mesh)
    params = abstract(params, shardings)
    ref_params = params  # the bench's reference: the same shapes, float32
    graphs = rollout.Graphs(policy=graphdef, value=None, reference=graphdef, reward=None)
    gen = sampler.Generation(tokens=spec((rows, args.new), jnp.int32, mesh),
                             logprobs=spec((rows, args.new), jnp.float32, mesh),
                             lengths=spec((rows,), jnp.int32, mesh),
                             done=spec((rows,), jnp.bool_, mesh))
    prompts = {"prompt_tokens": spec((rows, args.prompt), jnp.int32, mesh),
               "prompt_lengths": spec((rows,), jnp.int32, mesh)}
    with sharding.use_mesh(mesh):
        if "sample" in pieces:
            key = jax.eval_shape(jax.random.key, 0)
            per_prompt = {k: spec((args.prompts,) + v.shape[1:], v.dtype, mesh)
                          for k, v in prompts.items()}  # G samples of each prompt

            def sample(p, tokens, lengths, rng):
                return sampler.generate(graphdef, p, tokens, lengths, rng,
                                        max_new_tokens=args.new, method=sampler.Temperature(1.0),
                                        stop_tokens=(2,), pad_id=0, num_samples=args.group)

            compiled = jax.jit(sample).lower(params, per_prompt["prompt_tokens"],
                                             per_prompt["prompt_lengths"], key).compile()
            report("sample", compiled, **shape)
        if "score" in pieces:
            score_fn = (grpo_rollout.make_score_fn(graphs, 0, 2, losses.GRPOSettings.from_config(g),
                                           old_logps=scored_old)
                        if new_api else grpo_rollout.make_score_fn(graphs, 0, 2))
            compiled = (score_fn.lower(params, {"reference": ref_params}, prompts, gen, 1)
                        if new_api else score_fn.lower(params, {"reference": ref_params}, prompts,
                                                       gen)).compile()
            report("score", compiled, **shape)
        if "update" in pieces:
            tx, schedule = optim.make_optimizer(c.optim, 10)
            replicated = NamedSharding(mesh, PartitionSpec())
            opt_state = abstract(jax.eval_shape(tx.init, params),
                                 opt_state_shardings(tx, params, mesh))
            state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                               params=params, opt_state=opt_state,
                               rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
            batch = {k: spec((rows, width), dtype, mesh) for k, dtype in
                     [("tokens", jnp.int32), ("mask", jnp.float32), ("ref_logps", jnp.float32),
                      ("sampler_logps", jnp.float32)]}
            batch["advantages"] = spec((rows,), jnp.float32, mesh)
            if scored_old:
                batch["old_logps"] = spec((rows, width), jnp.float32, mesh)
            loss_fn = (grpo.make_loss(graphs, losses.GRPOSettings.from_config(g)) if new_api
                       else grpo.make_loss(graphs, g, g.max_new_tokens))
            step_fn = make_train_step(loss_fn, tx, schedule, state_shardings(state))
            compiled = step_fn.lower(state, batch, None).compile()
            report("update", compiled, **shape)


if __name__ == "__main__":
    main()
