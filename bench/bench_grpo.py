"""One GRPO step at the Llama-3.2-1B shape against TRL's `GRPOTrainer` (`--only grpo` anchor).

The anchor's shapes and settings: 8 prompts × G = 8 completions, 256 prompt + 256 new tokens,
temperature 1, β = 0.04 (k3 KL to a live frozen reference), group advantages (r − mean)/(std + ε)
(TRL `scale_rewards="group"`), token-mean loss over the batch (TRL's default `loss_type="dapo"`),
ε = 0.2, one pass and one optimizer step per rollout (`num_iterations=1`, the whole rollout as
one batch), AdamW lr 1e-6 with clipping at 1.0, and its reward: the fraction of even-numbered
words in the decoded completion, a plain Python function (registered as a verifiable reward).
The anchor's tokenizer (one word `w<i>` per id; eos `w2`, pad `w0`) decodes the completions.

The library's own iteration (`easyalign.algorithms.grpo`, exactly what `easyalign grpo` runs per
iteration, without the loop or a run directory): `rollout_iteration` — the jitted sampler draws the
completions, one jitted pass scores them (reference log π_ref; policy log π_old only when μ > 1 or
in minibatches), the responses are decoded and rewarded on the host, advantages per group — then
`make_update(make_train_step(make_loss(...)))`, the jitted, donated train step. The policy keeps
fp32 master weights (bf16 compute); the reference is held as `easyalign grpo` holds a frozen
model: loaded in the policy's parameter dtype (`--ref-dtype` to change), then cast once to the
compute dtype (`hf.models.init_model(frozen=True)`, `layers.cast_for_compute`). Timing: after `--warmup` (2) iterations
(compilation), `--steps` iterations run back to back (no sync between rollout and update, nor
between iterations, beyond the sampler's output fetched for decoding); `step_s` is their
mean, as the anchor reports the mean of 6 steps after 2. The training loop also waits for
each update (`grpo.UpdateTimer`); `--sync-update` adds that wait (0.695 s against 0.692 /
0.699 s without, perf-notes 45). `sample_s` is the sampler as `rollout_batch` times it
(median; back to back it includes the wait for the previous update's parameters). With
`--phase-sync` each iteration runs alone with a sync after its rollout: `rollout_s` (sampling
+ scoring + decode + rewards + advantages), `update_s` and `step_s` are medians (`step_s_mean`
beside it), and the syncs expose dispatch latencies the loop hides. Sampled tokens/s counts
prompts × G × new tokens per step, as the anchor (a completion that stops early at `w2` still
counts; `generated_tokens_mean` says how many were drawn per iteration, over all completions).
`--profile` adds a kernel profile of each phase of one more iteration, `--trace-step` the GPU's
idle stretches over one whole iteration (`profile_trace.gaps`).

Where the work differs from the anchor's: both run the LM head on the 256 completion positions
alone (`rollout.response_span`; TRL's `logits_to_keep`), but easyalign's scoring and update run
each prompt's 256 tokens through the model once for its 8 completions (the shared-prefix
forward, `model.shared_prefix`; `--shared-prefix 0` runs every row whole, as TRL does); at μ = 1
both take log π_old from the loss forward's detached
log-probs (`grpo.detached_old_logps`: no policy forward in the rollout scoring); TRL checkpoints
gradients by default (`GRPOConfig.gradient_checkpointing=True`), the default run here keeps every
activation (`--remat full` is TRL's setting).

    python bench/bench_grpo.py [--prompts 8] [--group 8] [--prompt 256] [--new 256] [--cpu]
"""

import argparse
import statistics
import time

import common  # noqa: F401  (sets XLA flags before jax)

import jax
import numpy as np
from flax import nnx

from configs import grpo as grpo_config
from easyalign import sharding
from easyalign.algorithms import grpo, grpo_rewards, grpo_rollout, rollout, runsetup
from easyalign.data.chat_format import stop_token_ids
from easyalign.model import create_model, preset
from easyalign.model.layers import cast_for_compute
from easyalign.train import optim
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step


def anchor_tokenizer(vocab: int):
    """The anchor's tokenizer (`make_tokenizer` in trl_baseline.py): word `w<i>` is id i."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2",
                                pad_token="w0", unk_token="w3")
    t.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}"
                       "{% endfor %}{% if add_generation_prompt %} {% endif %}")
    return t


def even_words(record, response: str) -> float:
    """The anchor's reward: the fraction of even-numbered words `w<2k>` in the completion."""
    del record
    words = response.split()
    return float(sum(int(w[1:]) % 2 == 0 for w in words)) / max(1, len(words))


def profile_phases(s, score_fn, update, state, ids, prompt_len, group, new, mesh, top):
    """One more iteration, each phase under its own profiler trace: device time by kernel
    category, the top kernels, and the idle time between kernels (`profile_trace`)."""
    import tempfile

    import profile_trace
    from easyalign import sampler

    n = ids.shape[0]
    prompts = sharding.to_global_batch(
        {"prompt_tokens": ids, "prompt_lengths": np.full((n,), prompt_len, np.int32),
         "index": np.arange(n, dtype=np.int32)}, mesh)
    rep = grpo_rollout.repeat_prompts(prompts, group)
    holder = {"state": state}  # the update donates its state: keep the one it returns
    sample = lambda: rollout.sample(  # noqa: E731
        s.graphs, holder["state"].params, prompts, jax.random.key(9), max_new_tokens=new,
        stop_tokens=s.stop_tokens, pad_id=0, mesh=mesh, method=sampler.Temperature(1.0),
        num_samples=group)
    gen = sample()
    rolled, _, _ = grpo.rollout_iteration(s, score_fn, state.params, prompts, 99)

    def one_update():
        holder["state"], metrics = update(holder["state"], rolled, None)
        return metrics

    phases = {"sample": (sample, new),
              "score": (lambda: score_fn(holder["state"].params, s.frozen, rep, gen,
                                         s.settings.group), 1),
              "update": (one_update, 1)}
    for label, (fn, steps) in phases.items():
        jax.block_until_ready(fn())
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d):
                jax.block_until_ready(fn())
            profile_trace.summarize(d, f"grpo_{label}", steps, top)
            profile_trace.timeline(d, f"grpo_{label}", steps, 0)


def trace_iteration(s, score_fn, update, state, ids, prompt_len, mesh, top):
    """One more iteration (rollout, then update, no sync between them) under one profiler
    trace: its span and the GPU's idle stretches (`profile_trace.gaps`). Returns the state."""
    import tempfile

    import profile_trace

    n = ids.shape[0]
    prompts = sharding.to_global_batch(
        {"prompt_tokens": ids, "prompt_lengths": np.full((n,), prompt_len, np.int32),
         "index": np.arange(n, dtype=np.int32)}, mesh)
    jax.block_until_ready(state.params)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            rolled, _, _ = grpo.rollout_iteration(s, score_fn, state.params, prompts, 98)
            state, metrics = update(state, rolled, None)
            jax.block_until_ready((state.params, metrics))
        profile_trace.gaps(d, "grpo_iteration", top)
    return state


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b", help="model shape (model.presets)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="sampled tokens per completion")
    ap.add_argument("--steps", type=int, default=6, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first (compiles)")
    ap.add_argument("--remat", default="none", help="model.remat: none | full | dots | ...")
    ap.add_argument("--grad-accum", type=int, default=1, help="train.grad_accum")
    ap.add_argument("--chunk", type=int, default=512, help="logits chunk (library default 512)")
    ap.add_argument("--scan", type=int, default=0, help="1: lax.scan over layers; 0: unrolled")
    ap.add_argument("--ref-dtype", default="float32", help="reference parameter dtype")
    ap.add_argument("--shared-prefix", type=int, default=1, help="grpo.shared_prefix: 1 = each "
                    "prompt computed once for its G completions in scoring and update")
    ap.add_argument("--top", type=int, default=12, help="kernels listed per profiled phase")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed steps, a kernel profile of each phase of one more "
                    "iteration (sampling, scoring, update; bench/profile_trace.py's summary)")
    ap.add_argument("--trace-step", action="store_true",
                    help="after the timed steps, one more iteration as the training loop runs "
                    "it (no sync between rollout and update) under one trace: the GPU's idle "
                    "stretches, longest first, with the kernels around them")
    ap.add_argument("--logits-budget-gib", type=float, default=0,
                    help="override model.scoring.LOGITS_BUDGET_BYTES (the float32 logits a "
                    "loss may hold at once; a larger budget means fewer chunks recomputed)")
    ap.add_argument("--phase-sync", action="store_true",
                    help="time each iteration alone, with a sync between rollout and update "
                    "(reports rollout_s and update_s; their dispatch latencies are exposed); "
                    "without it the timed iterations run back to back as `easyalign grpo` "
                    "runs them and step_s is their mean")
    ap.add_argument("--sync-update", action="store_true",
                    help="wait for each update before the next rollout, as the training "
                    "loop's update timer does (`grpo.UpdateTimer`)")
    ap.add_argument("--cpu", action="store_true",
                    help="a smoke run on the CPU: the tiny model at the anchor's tiny shape (2 "
                    "prompts x 4, 16 + 16 tokens), whatever the shape flags say")
    args = ap.parse_args()
    if args.logits_budget_gib:
        from easyalign.model import scoring
        scoring.LOGITS_BUDGET_BYTES = int(args.logits_budget_gib * 2**30)
    tiny = args.cpu
    name = "tiny" if tiny else args.preset
    # The anchor's tiny GRPO shape: 2 prompts × 4, 16 prompt + 16 new tokens.
    prompts_n, group = (2, 4) if tiny else (args.prompts, args.group)
    prompt_len, new = (16, 16) if tiny else (args.prompt, args.new)
    numerics = dict(dtype="bfloat16", attention_impl="xla" if tiny else "cudnn",
                    remat=args.remat, scan_layers=bool(args.scan), logits_chunk=args.chunk,
                    bos_token_id=1, eos_token_id=2)  # the anchor's LlamaConfig ids
    policy_config = preset(name, param_dtype="float32", **numerics)
    ref_config = preset(name, param_dtype=args.ref_dtype, **numerics)

    c = grpo_config.get_config()
    g = c.grpo
    grpo_rewards.register("even_words", even_words)
    g.rewards = "even_words:1.0"
    g.num_generations = group
    g.max_new_tokens = new
    g.temperature = 1.0
    g.beta = 0.04
    g.kl_estimator = "k3"
    g.advantage_estimator = "grpo"
    g.loss_type = "token_mean"
    g.epsilon, g.epsilon_high = 0.2, 0.0
    g.num_iterations = 1
    g.minibatch_size = 0
    g.shared_prefix = bool(args.shared_prefix)
    c.train.batch_size = prompts_n
    c.train.grad_accum = args.grad_accum
    c.data.max_length = prompt_len + new
    grpo.check_config(c)

    mesh = sharding.make_mesh(1, -1, 1)
    tokenizer = anchor_tokenizer(policy_config.vocab_size)
    graphdef, params = nnx.split(create_model(policy_config, mesh, seed=0))
    reference = create_model(ref_config, mesh, seed=0)
    cast_for_compute(reference, ref_config.compute_dtype)  # as init_model(frozen=True)
    ref_graphdef, ref_params = nnx.split(reference)
    del reference
    total = prompts_n * (args.warmup + args.steps)
    rng = np.random.RandomState(2)
    ids = rng.randint(4, policy_config.vocab_size, (total, prompt_len)).astype(np.int32)
    records = [{"prompt": " ".join(f"w{i}" for i in row)} for row in ids]
    s = grpo.Setup(
        run=runsetup.Run(config=c, mesh=mesh, workdir=None, tokenizer=tokenizer),
        graphs=rollout.Graphs(policy=graphdef, value=None, reference=ref_graphdef, reward=None),
        params=None, frozen={"reference": ref_params}, loader=None, records=records,
        eval_batches=[], eval_records=[], weights=grpo_rewards.parse_rewards(g.rewards),
        settings=grpo.loss_settings(c, policy_config), policy_config=policy_config,
        stop_tokens=stop_token_ids(tokenizer, policy_config))
    tx, schedule = optim.make_optimizer(c.optim, args.warmup + args.steps)
    state = create_train_state(params, tx, c.train.seed, mesh)
    del params
    rows = prompts_n * group
    times = {"sample_s": [], "step_s": []} | (
        {"rollout_s": [], "update_s": []} if args.phase_sync else {})
    generated = []
    with sharding.use_mesh(mesh):
        step_fn = make_train_step(grpo.make_loss(s.graphs, s.settings), tx, schedule,
                                  state_shardings(state), grad_accum=c.train.grad_accum)
        update = grpo.make_update(step_fn)
        score_fn = grpo.make_scorer(s)
        def batch_of(it):
            lo = (it - 1) * prompts_n
            return sharding.to_global_batch(
                {"prompt_tokens": ids[lo:lo + prompts_n],
                 "prompt_lengths": np.full((prompts_n,), prompt_len, np.int32),
                 "index": np.arange(lo, lo + prompts_n, dtype=np.int32)}, mesh)

        rollout_metrics = []
        for it in range(1, args.warmup + args.steps + 1):
            timed = it > args.warmup
            if it == args.warmup + 1 or args.phase_sync:
                jax.block_until_ready(state.params)
                start = time.perf_counter()
            if it == args.warmup + 1:
                loop_start = start
            rolled, metrics, _ = grpo.rollout_iteration(s, score_fn, state.params,
                                                        batch_of(it), it)
            if args.phase_sync:
                jax.block_until_ready(rolled[0])
                rolled_at = time.perf_counter()
            state, update_metrics = update(state, rolled, None)
            if args.phase_sync:
                jax.block_until_ready((state.params, update_metrics))
                end = time.perf_counter()
                if timed:
                    times["rollout_s"].append(rolled_at - start)
                    times["update_s"].append(end - rolled_at)
                    times["step_s"].append(end - start)
            if args.sync_update:  # as `grpo.UpdateTimer.after_update` in the training loop
                jax.block_until_ready(update_metrics)
            if timed:
                rollout_metrics.append(metrics)
            elif not args.phase_sync:
                jax.block_until_ready((state.params, update_metrics))
        jax.block_until_ready((state.params, update_metrics))
        if not args.phase_sync:  # back to back, as the training loop runs them
            times["step_s"] = [(time.perf_counter() - loop_start) / args.steps]
        for m in jax.device_get(rollout_metrics):
            tokens = float(m["response_length"]) * rows  # generated, the stop token included
            times["sample_s"].append(tokens / float(m["sample_tokens_per_s"]))
            generated.append(tokens)
        loss = float(jax.device_get(update_metrics["loss"]))
        # |sampler log p − trainer log p| over the last rollout (bf16 sampler, fp32 masters)
        mismatch = float(jax.device_get(update_metrics.get("logprob_mismatch", np.nan)))
        if args.trace_step:
            state = trace_iteration(s, score_fn, update, state, ids[:prompts_n], prompt_len,
                                    mesh, args.top)
        if args.profile:
            profile_phases(s, score_fn, update, state, ids[:prompts_n], prompt_len, group, new,
                           mesh, args.top)
    med = {k: statistics.median(v) for k, v in times.items()}
    sampled = rows * new  # counted as the anchor counts: every completion at full length
    seq = prompt_len + new
    flops = common.train_flops_per_token(policy_config.param_count(), policy_config.num_layers,
                                         policy_config.hidden_size, seq)
    common.log(what="easyalign_grpo_step", preset=name, prompts=prompts_n, group=group,
               prompt=prompt_len, new_tokens=new, beta=g.beta, loss_type=g.loss_type,
               advantage=g.advantage_estimator, num_iterations=g.num_iterations,
               reward="even_words", remat=args.remat, grad_accum=args.grad_accum,
               logits_chunk=args.chunk, scan_layers=bool(args.scan), ref_dtype=args.ref_dtype,
               shared_prefix_group=s.settings.group, steps=args.steps, **med,
               step_s_mean=statistics.mean(times["step_s"]), phase_sync=args.phase_sync,
               sync_update=args.sync_update,
               sampled_tokens_per_s=sampled / med["step_s"],
               sampler_tokens_per_s=sampled / med["sample_s"],
               **({"update_tokens_per_s": rows * seq / med["update_s"],
                   "update_mfu": flops * rows * seq / med["update_s"] / common.PEAK_FLOPS}
                  if args.phase_sync else {}),
               generated_tokens_mean=statistics.mean(generated), final_loss=loss,
               logprob_mismatch=mismatch,
               peak_gib=common.peak_gib(), device=common.device_name(),
               xla_flags=common.extra_flags())


if __name__ == "__main__":
    main()
