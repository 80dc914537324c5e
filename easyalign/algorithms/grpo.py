"""GRPO and its relatives (Dr. GRPO, DAPO-style aggregation, RLOO, GSPO) on the generic loop.

Each *iteration* of `train.steps`:

1. **Group rollout**: for every one of the `train.batch_size` prompts x_b the jitted sampler
   draws `grpo.num_generations` = G completions at temperature `grpo.temperature` from
   π_old = the current policy, prefilling x_b once for its G samples (`rollout.sample`). The
   rows are assembled as PPO's (`rollout.assemble`: prompt + response + padding, mask on the response
   and its stop token) and scored in one jitted pass: log π_old (the trainer's own code path, so
   the first update starts at ratio 1), log π_ref when β > 0, the reward model's score when it
   is one of the rewards. With μ = 1 and the whole rollout as one minibatch
   (`detached_old_logps`), π_old *is* π_θ at the one update step, so the scorer skips the
   policy pass and the loss takes log π_old as the stop-gradient of its own log-probs (as TRL
   does): ratio exactly 1, the same loss and gradient, one policy forward fewer per iteration.
   With `grpo.shared_prefix` (`shared_prefix_group`) every log-prob pass, here and in the
   update, computes each prompt once for its G completions (`model.shared_prefix`: the same
   values and gradients).
2. **Rewards** (`grpo_rewards`): the responses are decoded on the host and every verifiable
   reward `fn(prompt record, response text)` is applied; r = Σ_k w_k r_k (`grpo.rewards`).
3. **Advantages** from the `grpo.advantage_estimator` registry over each group
   (`losses.grpo.ADVANTAGES`: grpo, dr_grpo, rloo). Groups with all rewards equal carry no
   signal: counted (`zero_signal_frac`) and, with `grpo.skip_zero_signal_groups`, dropped from
   the loss (their rows' masks are zeroed, so the batch shrinks). With `grpo.dynamic_sampling`
   (DAPO, Yu et al. 2025 §3.2) the rollout instead samples the loader's next prompt batches too,
   up to `grpo.max_sampling_rounds` rounds in all, until B groups carry signal, and the update
   takes B groups: those with signal first, zero-signal ones (masked out) only to fill a batch
   the rounds could not (`choose_groups`; metrics `sampling_rounds`, `signal_groups_frac`).
   The extra prompts are consumed from the loader, whose position is checkpointed.
4. **Update**: `grpo.num_iterations` (μ) passes over the B·G completions in shuffled
   minibatches of `grpo.minibatch_size` (0 = the whole rollout; whole groups shuffled when G
   divides it, `minibatch_group`), one optimizer step each, through
   the generic jitted step with the loss of `losses.grpo.grpo_policy_loss` (clipped ratio,
   ε_low/ε_high, token or GSPO sequence ratio, `grpo.loss_type` aggregation, β · KL to π_ref),
   its settings a frozen `losses.GRPOSettings` built once from the `grpo` block.

The loop is the generic one (`train.loop.run_loop` via `driver.fit`), exactly as PPO uses it:
its `rollout` hook is steps 1–3, its step the minibatch update, its `after_update` hook times
the update. Rollout randomness and minibatch order derive from (seed, iteration) and the
prompt loader's state is checkpointed, so a resumed run continues the identical trajectory.
One iteration outside the loop (no run directory; `bench/bench_grpo.py`) is the same two calls:
`rollout_iteration` (steps 1–3 and the minibatch order), then `make_update`'s update. Steps
1–3 are `grpo_rollout`'s (sampling rounds, scoring, rewards, advantages); this module holds the
config rules, the set-up, the loss and the loop.

Metrics per iteration (`logs/metrics.jsonl`): `reward` (combined), `reward/<name>` and
`reward_std/<name>` per reward function, `zero_signal_frac`, `clip_frac` (+ `_low`, `_high`),
`kl` (token mean of the KL estimator; 0 when β = 0), `ratio`, `pg_loss`, `entropy`,
`response_length`, `eos_rate`, `logprob_mismatch` (the largest |log π_old − the sampler's
log-prob| over response tokens; with `detached_old_logps` the update's forward measures it, as
the mean of the micro-batch maxima under `train.grad_accum`), `entropy_rollout` (only when the
rollout scores π_old), `sample_tokens_per_s` (generated tokens / sampling wall time) and
`update_tokens_per_s` (rows × width × μ / update wall time; both include compilation at
iteration 1). `eval/<name>` is the mean reward of greedy responses to the held-out prompts
(iteration 0 = the starting policy).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import sampler
from easyalign.algorithms import grpo_rewards, rollout, runsetup
from easyalign.algorithms.grpo_rollout import (decode_responses, make_score_fn, no_signal_warning,
                                              rewards_of, rollout_batch)
from easyalign.hf import models as hf_models
from easyalign.train import driver
from easyalign.data.chat_format import chat_format, stop_token_ids
from easyalign.data.records import prompt_text
from easyalign.losses import common as losses_common
from easyalign.losses import grpo as grpo_losses
from easyalign.sharding import to_global_batch
from easyalign.train import loop as train_loop

# The arrays an update reads (`old_logps` not with `detached_old_logps`, which reads
# `sampler_logps` instead, for the `logprob_mismatch` metric; `ref_logps` when β > 0).
TRAIN_KEYS = ("tokens", "mask", "old_logps", "advantages", "ref_logps", "sampler_logps")


def check_config(config) -> None:
    """Fail before any work when the `grpo` block is inconsistent."""
    g, t = config.grpo, config.train
    losses_common.get(grpo_losses.ADVANTAGES, g.advantage_estimator, "grpo.advantage_estimator")
    grpo_losses.GRPOSettings.from_config(g)  # the loss's names (ValueError listing valid ones)
    grpo_rewards.parse_rewards(g.rewards)
    if g.max_sampling_rounds < 1:
        raise ValueError(f"grpo.max_sampling_rounds {g.max_sampling_rounds} must be ≥ 1")
    if g.num_generations < 2:
        raise ValueError(f"grpo.num_generations {g.num_generations} must be ≥ 2 (a group)")
    rows, mb = t.batch_size * g.num_generations, minibatch_rows(config)
    if rows % mb:
        raise ValueError(f"grpo.minibatch_size {mb} must divide train.batch_size × "
                         f"grpo.num_generations = {rows}")
    if mb % t.grad_accum:
        raise ValueError(f"train.grad_accum {t.grad_accum} must divide the minibatch ({mb} rows)")
    if not 1 <= g.max_new_tokens < config.data.max_length:
        raise ValueError(f"grpo.max_new_tokens {g.max_new_tokens} must be in 1..data.max_length-1"
                         f" ({config.data.max_length - 1}): data.max_length holds prompt + "
                         "response")


def minibatch_rows(config) -> int:
    """Completions per optimizer step (`grpo.minibatch_size`, 0 = the whole rollout)."""
    return config.grpo.minibatch_size or config.train.batch_size * config.grpo.num_generations


def minibatch_group(config) -> int:
    """Rows the update's minibatches keep together: G (whole groups, permuted) when G divides
    the minibatch, else 1 (rows permuted). The same whether or not `grpo.shared_prefix` is
    used, so that switching it changes no trajectory."""
    G = config.grpo.num_generations
    return G if minibatch_rows(config) % G == 0 else 1


def shared_prefix_group(config, policy_config) -> int:
    """G when the log-probs compute each prompt once for its G completions
    (`grpo.shared_prefix`, `model.shared_prefix`), else 1: a dense policy, `train.grad_accum`
    1 (its micro-batches stride across rows) and minibatches of whole groups."""
    g, t = config.grpo, config.train
    usable = (g.shared_prefix and not policy_config.num_experts and t.grad_accum == 1
              and minibatch_group(config) > 1)
    return g.num_generations if usable else 1


def loss_settings(config, policy_config) -> grpo_losses.GRPOSettings:
    """The loss's static settings: the `grpo` block's, and the rows' `group` for the
    shared-prefix log-probs (`shared_prefix_group`)."""
    return dataclasses.replace(grpo_losses.GRPOSettings.from_config(config.grpo),
                               group=shared_prefix_group(config, policy_config))


def detached_old_logps(config) -> bool:
    """Whether π_old is the update's own π_θ, detached: one pass (μ = 1) in one minibatch, so
    the rollout's only optimizer step sees the parameters that sampled it. Then the rollout
    scores no log π_old (one policy forward fewer) and the loss uses stop_gradient of its own
    log-probs — the same ratio (exactly 1), loss and gradient."""
    g = config.grpo
    return (g.num_iterations == 1
            and minibatch_rows(config) == config.train.batch_size * g.num_generations)


# ----------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Setup:
    """Everything `train` needs (tests inspect it before and after training)."""

    run: runsetup.Run
    graphs: rollout.Graphs          # policy, reference (β > 0), reward (a reward-model reward)
    params: Any                     # the policy's (trained)
    frozen: dict                    # read only: "reference", "reward" when used
    loader: Any                     # prompt batches with `index` into `records`
    records: list[dict]             # prompt records of the training prompts, by loader index
    eval_batches: list[dict]        # held-out prompt batches with `valid`
    eval_records: list[dict]        # their records, in batch order
    weights: dict[str, float]       # reward name → weight
    settings: grpo_losses.GRPOSettings  # the loss's static settings, from the `grpo` block
    policy_config: Any
    stop_tokens: tuple[int, ...]


def _answer_key(run: runsetup.Run) -> dict[str, dict]:
    """The built-in world's prompt → {kind, answer} (empty for other sources)."""
    if run.config.data.source != "world" or "world" not in run.source_dirs:
        return {}
    from easyalign.data import world as world_lib
    from easyalign.data import world_source

    return world_lib.build_world(world_source.world_settings(run.config)).answer_key


def prompt_records(run: runsetup.Run, split: str, width: int, kinds: tuple[str, ...]
                   ) -> tuple[list[dict], list[dict]]:
    """(tokenised prompts, their records) of `split`: a record is the prompt as its file writes
    it plus its other fields, with the world's `kind` and `answer` filled in for world prompts;
    only records of `kinds` when given."""
    examples = runsetup.load_examples(run, "prompt", split)
    key = _answer_key(run)
    records = []
    for ex in examples:
        record = {k: v for k, v in ex.items() if k != "prompt"}
        record["prompt"] = prompt_text(ex["prompt"])
        if isinstance(record["prompt"], str) and record["prompt"] in key:
            record = key[record["prompt"]] | record
        records.append(record)
    if kinds:
        present = sorted({str(r.get("kind")) for r in records if r.get("kind") is not None})
        unknown = [k for k in kinds if k not in present]
        if unknown and split == "train":  # a small held-out split may lack a kind
            from easyalign.config_keys import did_you_mean

            hint = did_you_mean(unknown[0], present)
            raise ValueError(f"grpo.prompt_kinds={','.join(kinds)!r}: no {split} prompt of kind "
                             f"{unknown[0]!r}" + (f" ({hint})" if hint else "") + "; kinds in "
                             f"data.source={run.config.data.source!r}: "
                             f"{', '.join(present) or 'none (its records have no kind field)'}")
        keep = [i for i, r in enumerate(records) if r.get("kind") in kinds]
        examples, records = [examples[i] for i in keep], [records[i] for i in keep]
    if not examples:
        return [], []
    by_source = {ex["source"]: r for ex, r in zip(examples, records)}
    tokens = runsetup.tokenize(run, examples, "prompt", max_length=width)
    return tokens, [by_source[t["source"]] for t in tokens]


def setup(config) -> Setup:
    check_config(config)
    g = config.grpo
    weights = grpo_rewards.parse_rewards(g.rewards)
    from easyalign.algorithms.ppo import model_block  # `@stage` → a loadable model block

    run_ = runsetup.prepare(config, identify=grpo_rewards.code_identity)
    width = config.data.max_length - g.max_new_tokens  # the prompt block
    kinds = tuple(k.strip() for k in g.prompt_kinds.split(",") if k.strip())
    prompts, records = prompt_records(run_, "train", width, kinds)
    if not prompts:
        raise ValueError(f"no training prompts (data.source={config.data.source!r}, "
                         f"grpo.prompt_kinds={g.prompt_kinds!r})")
    _warn_ungradeable(config, weights, records)
    held_out, eval_records = prompt_records(run_, "eval", width, kinds)
    eval_records = eval_records[:config.train.eval_batches * config.train.batch_size]
    eval_batches = [b | {"prompt_lengths": np.maximum(b["prompt_lengths"], 1)}  # padding rows
                    for b in runsetup.eval_batches(run_, held_out, "prompt", max_length=width,
                                                 limit=config.train.eval_batches)]
    models = {"policy": hf_models.init_model(run_, head="lm")}
    if g.beta:
        models["reference"] = runsetup.reference_model(run_, model_block(config, g.reference),
                                                       models["policy"])
    if grpo_rewards.REWARD_MODEL in weights:
        models["reward"] = hf_models.init_model(run_, model_block(config, g.reward_model),
                                                head="scalar", frozen=True)
    vocab = {name: m.config.vocab_size for name, m in models.items()}
    if len(set(vocab.values())) > 1:
        raise ValueError(f"the GRPO models must share one tokenizer; vocabulary sizes: {vocab}")
    split = {name: runsetup.split_frozen(m) for name, m in models.items()}
    policy_config = models["policy"].config
    graphs = rollout.Graphs(policy=split["policy"][0], value=None,
                            reference=split.get("reference", (None,))[0],
                            reward=split.get("reward", (None,))[0])
    return Setup(
        run=run_, graphs=graphs, params=split["policy"][1],
        frozen={k: v for k, (_, v) in split.items() if k != "policy"},
        loader=runsetup.train_loader(run_, prompts, "prompt", max_length=width),
        records=records, eval_batches=eval_batches, eval_records=eval_records, weights=weights,
        settings=loss_settings(config, policy_config), policy_config=policy_config,
        stop_tokens=stop_token_ids(run_.tokenizer, policy_config))


def _warn_ungradeable(config, weights: dict[str, float], records: list[dict]) -> None:
    """One line when some training prompts can be graded by no reward of `grpo.rewards`:
    their groups carry no signal (`grpo_rewards.ungradeable`), with the kinds they have."""
    bad = grpo_rewards.ungradeable(weights, records)
    if not bad or jax.process_index() != 0:
        return
    kinds: dict[str, int] = {}
    for i in bad:
        kind = str(records[i].get("kind", "no kind"))
        kinds[kind] = kinds.get(kind, 0) + 1
    shown = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    print(f"[grpo] warning: {len(bad)} of {len(records)} training prompts can be graded by no "
          f"reward of grpo.rewards={config.grpo.rewards!r} ({shown}): their groups carry no "
          "signal and only cost sampling; keep the gradeable ones with grpo.prompt_kinds or "
          "add a reward that grades them", flush=True)


# ----------------------------------------------------------------------------- loss
def make_loss(graphs: rollout.Graphs, settings: grpo_losses.GRPOSettings):
    """`loss_fn(params, batch, rng, frozen)` of the update (`losses.grpo.grpo_policy_loss` with
    `settings`). A batch without `old_logps` (`detached_old_logps`) takes log π_old as the
    stop-gradient of the loss's own log-probs, and reports `logprob_mismatch` against its
    `sampler_logps`."""

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen  # deterministic; the frozen models were used in the rollout
        mask = batch["mask"]
        # Metrics describe every sampled token, the loss only those it keeps (`response_mask`
        # is there when zero-signal groups are dropped from the loss).
        sampled = batch.get("response_mask", mask)
        policy = nnx.merge(graphs.policy, params)
        logps, entropy, router_loss = rollout.response_logps(
            policy, batch["tokens"], sampled, settings.max_length,
            temperature=settings.temperature, group=settings.group)
        extra = {}
        old_logps = batch.get("old_logps")
        if old_logps is None:  # π_old = π_θ now: ratio exactly 1, ∇ratio = ∇log π_θ
            old_logps = jax.lax.stop_gradient(logps)
            extra["logprob_mismatch"] = jnp.max(jnp.abs(old_logps - batch["sampler_logps"])
                                                * sampled)
        loss, metrics = settings.loss(logps, old_logps, batch["advantages"], mask,
                                      batch.get("ref_logps"), metrics_mask=sampled)
        return losses_common.add_router_loss(
            loss, {**metrics, **extra, "entropy": losses_common.masked_mean(entropy, sampled),
                   "loss_weight": grpo_losses.aggregation_weight(settings.loss_type, mask)},
            router_loss, policy.config.num_experts)

    return loss_fn


# ----------------------------------------------------------------------------- the loop
def _evaluate(s: Setup, score_fn, params) -> dict[str, float]:
    """Mean reward (each function and combined) and length of greedy responses to the held-out
    prompts, and their count (`prompts`)."""
    g, mesh = s.run.config.grpo, s.run.mesh
    sums: dict[str, float] = {}
    count, offset = 0, 0
    for host_batch in s.eval_batches:
        prompts = to_global_batch(host_batch, mesh)
        gen = rollout.sample(s.graphs, params, prompts, jax.random.key(0),
                             max_new_tokens=g.max_new_tokens, stop_tokens=s.stop_tokens,
                             pad_id=runsetup.pad_id(s.run), mesh=mesh, method=sampler.Greedy())
        got = rollout.host({"tokens": gen.tokens, "lengths": gen.lengths,
                            "valid": prompts["valid"]})
        scored = score_fn(params, s.frozen, prompts, gen, 1, logps=False)
        n = int(np.sum(got["valid"]))
        records = s.eval_records[offset:offset + n]
        offset += n
        responses = decode_responses(s.run.tokenizer, got["tokens"][:n], got["lengths"][:n])
        scores = rewards_of(s, records, responses, {k: v[:n] for k, v in scored.items()},
                            "in the held-out evaluation")
        scores = {k: v[:n] for k, v in scores.items()}
        scores["reward"] = grpo_rewards.combine(s.weights, scores)
        scores["response_length"] = got["lengths"][:n].astype(np.float32)
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + float(np.sum(v))
        count += n
    # `prompts`: how many were scored (train.eval_batches × train.batch_size at most, fewer
    # when the held-out split is smaller), so a 0.5 of two prompts reads as what it is.
    return {k: v / max(count, 1) for k, v in sums.items()} | {"prompts": float(count)}


def make_scorer(s: Setup):
    """The jitted scoring pass of `s`'s models (`make_score_fn`) with the run's pad and
    end-of-turn ids; log π_old only when the update cannot take it from its own forward
    (`detached_old_logps`)."""
    return make_score_fn(s.graphs, runsetup.pad_id(s.run),
                         chat_format(s.run.tokenizer).end_of_turn_id, s.settings,
                         old_logps=not detached_old_logps(s.run.config))


def rollout_iteration(s: Setup, score_fn, params, prompts: dict, it: int, more_prompts=None
                      ) -> tuple[tuple[dict, list[np.ndarray]], dict, dict]:
    """Everything iteration `it` does before its update, without a loop or a run directory:
    the group rollout (`rollout_batch`, module docstring steps 1–3, its randomness from
    (train.seed, it)) and the minibatch order of the update (seeded the same way). Returns
    `((batch, minibatches), metrics, rows)`; `(batch, minibatches)` is what `make_update`'s
    update takes. The training loop's rollout hook and `bench/bench_grpo.py` both call it;
    `more_prompts` (the loop's: the loader's next batch) feeds dynamic sampling."""
    c = s.run.config
    g, t = c.grpo, c.train
    batch, metrics, rows = rollout_batch(s, score_fn, params, prompts,
                                         jax.random.fold_in(jax.random.key(t.seed), it),
                                         more_prompts, f"in the rollout of iteration {it}")
    minibatches = rollout.minibatch_indices(t.batch_size * g.num_generations, minibatch_rows(c),
                                            g.num_iterations, (t.seed, it), minibatch_group(c))
    return (batch, minibatches), metrics, rows


def make_update(step_fn):
    """`update(state, (batch, minibatches), frozen) -> (state, metrics)`: the update of one
    iteration, one call of the jitted train step `step_fn` (built from `make_loss`) per
    minibatch."""
    return train_loop.make_minibatch_update(step_fn, rollout.make_take())


def train(s: Setup) -> tuple[Any, rollout.Graphs]:
    """Run (or resume) GRPO; returns `(policy params, graphs)` and writes `workdir/model/`."""
    run_ = s.run
    c = run_.config
    g, t = c.grpo, c.train
    rows = t.batch_size * g.num_generations
    mb = minibatch_rows(c)
    score_fn = make_scorer(s)
    timer = rollout.UpdateTimer(rows * c.data.max_length * g.num_iterations)

    warned = False

    def rollout_hook(it, state, prompts, writer):
        nonlocal warned
        rolled, metrics, rows_ = rollout_iteration(
            s, score_fn, state.params, prompts, it,
            more_prompts=lambda: to_global_batch(next(s.loader), run_.mesh))
        line = None if warned else no_signal_warning(rows_["zero_signal"], it, g.rewards)
        if line:  # once per run
            warned = True
            if jax.process_index() == 0:
                print(line, flush=True)
        if g.sample_every and it % g.sample_every == 0:
            writer.write_text(it, "samples", rollout.sample_text(
                run_.tokenizer, {"prompt_lengths": rows_["prompt_lengths"]}, rows_,
                g.num_samples))
        timer.start = time.perf_counter()
        return rolled, metrics

    hooks = train_loop.StepHooks(
        evaluate=((lambda state: _evaluate(s, score_fn, state.params))
                  if s.eval_batches else None),
        tokens=lambda batch: 0, rollout=rollout_hook, after_update=timer.after_update)
    loop = driver.loop_config(run_, t.steps, eval_at_start=True,
                              hint="Lower optim.lr, or raise grpo.beta.")
    params, s.params = s.params, None  # the state owns (and donates) these buffers now
    state, history = driver.fit(
        run_, params=params, loss_fn=make_loss(s.graphs, s.settings), loader=s.loader,
        loop=loop, model_config=s.policy_config, hooks=hooks,
        optimizer_steps=t.steps * g.num_iterations * (rows // mb),
        update_for=make_update)
    if history is not None:
        out = hf_models.save_model(run_, state.params, s.graphs.policy)
        driver.finish(run_, out, history, "reward")
    return state.params, s.graphs


def run(config):
    return train(setup(config))
