"""PPO for RLHF: the policy maximises a reward model's score under a KL penalty to the reference.

The objective (Ziegler et al. 2019; Ouyang et al. 2022), per prompt x and response y ~ π_θ(·|x):

    max_θ  E[ r_φ(x, y) − β · KL(π_θ(·|x) ‖ π_ref(·|x)) ]

with r_φ the frozen reward model, π_ref the frozen SFT model and β the KL coefficient (fixed, or
adapted towards a target KL per sequence: `losses.AdaptiveKLController`). Each *iteration*:

1. **Rollout** (`rollout.py`): sample responses to `train.batch_size` prompts from π_old = the
   current policy, score them (log π_old, log π_ref, values V_old, reward-model score), turn the
   score and the per-token KL into rewards, GAE advantages A_t and returns R_t (formulas there).
2. **Update**: `ppo.epochs` passes over the batch in shuffled minibatches of `ppo.minibatch_size`
   rollouts, one optimizer step each, through the generic jitted step (`train.step`) with

       L = L_clip + c_v · L_V − c_H · H,          ρ_t = π_θ(y_t) / π_old(y_t)
       L_clip = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))
       L_V    = ½ mean_t max((V_t − R_t)², (clip(V_t, V_old,t ± ε_v) − R_t)²)
       H      = mean_t entropy of π_θ(·|x, y_<t)

   means over the response tokens (and the stop token) of the minibatch (`losses.ppo`).

Design: the policy (LM head) and the value model (scalar head, initialised from the reward
model) are separate networks trained together: ONE `TrainState` whose params are
`{"policy": ..., "value": ...}` and one optimizer over both, so the generic step, its gradient
accumulation (weighted by response tokens, exact for the token means above), clipping, donation
and the Orbax checkpoint of the train state serve PPO unchanged. With disjoint parameters Adam
normalises each tree separately, so c_v acts mostly through the shared global-norm clip. The
reference and reward model are frozen params (no optimizer state) used only by the rollout.

The outer loop is the generic one (`train.loop.run_loop`, through `driver.fit`): one loop step
is one iteration, its `rollout` hook the rollout, its step the minibatch update
(`train.loop.make_minibatch_update`), its `after_update` hook the update timer and the KL
controller. A checkpoint, every `train.checkpoint_every` iterations, holds the train state (both param trees, optimizer,
RNG, step) plus, as JSON, the prompt loader's state and the KL coefficient (`KLCoefficient`, the
loop's `extra` state); the iteration is its step number. Rollout randomness and minibatch order
are derived from (seed, iteration), so a killed run resumes on the identical trajectory.

Metrics per iteration (`logs/metrics.jsonl`): reward (mean reward-model score), kl (per-sequence
KL to the reference), kl_coef, pg_clipfrac, approx_kl, vf_loss, pg_loss, entropy,
response_length, eos_rate, logprob_mismatch (max |sampler − scoring log-prob|),
sample_tokens_per_s (generated tokens / sampling wall time) and update_tokens_per_s (rows ×
data.max_length × ppo.epochs / update wall time; both with compilation at iteration 1); `eval/reward`
is the mean score of greedy responses to held-out prompts (iteration 0 = the SFT policy).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import losses, sampler
from easyalign.algorithms import rollout
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.train import driver
from easyalign.data.chat_format import chat_format, stop_token_ids
from easyalign.train import loop as train_loop
from easyalign.sharding import to_global_batch


def check_config(config) -> None:
    """Fail before any work when the `ppo` block is inconsistent."""
    p, t = config.ppo, config.train
    if p.kl_controller not in losses.KL_CONTROLLERS:  # listed as the config lists them
        raise ValueError(f"unknown ppo.kl_controller {p.kl_controller!r}; valid: "
                         f"{', '.join(losses.KL_CONTROLLERS)}")
    losses.PPOSettings.from_config(p)  # the loss's names (ValueError listing the valid ones)
    if t.batch_size % p.minibatch_size:
        raise ValueError(f"ppo.minibatch_size {p.minibatch_size} must divide train.batch_size "
                         f"{t.batch_size}")
    if p.minibatch_size % t.grad_accum:
        raise ValueError(f"train.grad_accum {t.grad_accum} must divide ppo.minibatch_size "
                         f"{p.minibatch_size}")
    if not 1 <= p.max_new_tokens < config.data.max_length:
        raise ValueError(f"ppo.max_new_tokens {p.max_new_tokens} must be in 1..data.max_length-1 "
                         f"({config.data.max_length - 1}): data.max_length holds prompt + response")


def model_block(config, path: str):
    """The `model` block with another source — any model by path (`resolve_model_dir`: a
    checkpoint or phase workdir, an HF directory, a GGUF file or installed alias, `@stage`),
    its `init` the kind found there. A phase workdir has a `config.json` too (the run's): the
    old test of that file alone took it for an HF directory."""
    from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

    block = config.model.copy_and_resolve_references()
    block.path = runsetup.stage_path(config, path)
    try:
        block.init = resolve_model_dir(block.path)[1]
    except ModelDirError:  # the config check has named what is missing; the loader says it too
        block.init = "checkpoint"
    return block


# ----------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Setup:
    """Everything `train` needs (tests inspect it before and after training)."""

    run: runsetup.Run
    settings: losses.PPOSettings  # the rollout's and the loss's coefficients, from `ppo`
    graphs: rollout.Graphs
    params: dict                  # trained: {"policy", "value"}
    frozen: dict                  # read only: {"reference", "reward"}
    loader: Any                   # prompt batches (checkpointable)
    eval_batches: list[dict]      # held-out prompt batches with `valid`
    policy_config: Any
    stop_tokens: tuple[int, ...]


def setup(config) -> Setup:
    check_config(config)
    p = config.ppo
    blocks = {name: model_block(config, getattr(p, name))
              for name in ("value_model", "reference", "reward_model")}
    run_ = runsetup.prepare(config)
    width = config.data.max_length - p.max_new_tokens  # the prompt block
    prompts = runsetup.tokenize(run_, runsetup.load_examples(run_, "prompt", "train"), "prompt",
                                max_length=width)
    held_out = runsetup.tokenize(run_, runsetup.load_examples(run_, "prompt", "eval"), "prompt",
                                 max_length=width)
    eval_batches = [b | {"prompt_lengths": np.maximum(b["prompt_lengths"], 1)}  # padding rows
                    for b in runsetup.eval_batches(run_, held_out, "prompt", max_length=width,
                                                   limit=config.train.eval_batches)]
    built = {"policy": models.init_model(run_, head="lm"),
             "value": models.init_model(run_, blocks["value_model"], head="scalar"),
             "reward": models.init_model(run_, blocks["reward_model"], head="scalar",
                                         frozen=True)}
    # LoRA: the policy's own base with its adapters off, when the reference is that base.
    built["reference"] = runsetup.reference_model(run_, blocks["reference"], built["policy"])
    vocab = {name: m.config.vocab_size for name, m in built.items()}
    if len(set(vocab.values())) > 1:
        raise ValueError(f"the four PPO models must share one tokenizer; vocabulary sizes: {vocab}")
    split = {name: runsetup.split_frozen(m, "policy") for name, m in built.items()}
    policy_config = built["policy"].config
    return Setup(
        run=run_, settings=losses.PPOSettings.from_config(p),
        graphs=rollout.Graphs(**{k: g for k, (g, _) in split.items()}),
        params={k: split[k][1] for k in ("policy", "value")},
        frozen={k: split[k][1] for k in ("reference", "reward")},
        loader=runsetup.train_loader(run_, prompts, "prompt", max_length=width),
        eval_batches=eval_batches, policy_config=policy_config,
        stop_tokens=stop_token_ids(run_.tokenizer, policy_config))


# ----------------------------------------------------------------------------- loss
def make_loss(graphs: rollout.Graphs, p: losses.PPOSettings):
    """`loss_fn(params, batch, rng, frozen)` of the update; weighted by response tokens, so
    gradient accumulation reproduces the minibatch's token means exactly.

    `batch`: `tokens`, `mask` and the rollout's `old_logps`, `old_values`, `advantages`,
    `returns`, `[B, T]` each. Log-probs, entropy and values are computed over the
    `p.max_new_tokens` response columns alone, as the rollout scored them
    (`rollout.response_span`): the masked means see the same values as a full pass."""

    def loss_fn(params, batch, rng, frozen):
        del rng, frozen  # deterministic; the frozen models were used in the rollout
        tokens, mask = batch["tokens"], batch["mask"]
        policy = nnx.merge(graphs.policy, params["policy"])
        logps, entropy, router_loss = rollout.response_logps(policy, tokens, mask,
                                                             p.max_new_tokens)
        values = rollout.token_values(nnx.merge(graphs.value, params["value"]), tokens,
                                      rollout.response_span(mask, p.max_new_tokens))
        pg, pg_metrics = losses.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"],
                                                mask, p.clip_eps)
        vf, vf_metrics = losses.ppo_value_loss(values, batch["old_values"], batch["returns"],
                                               mask, p.value_clip_eps)
        entropy = losses.masked_mean(entropy, mask)
        loss = pg + p.vf_coef * vf - p.entropy_coef * entropy
        return losses.add_router_loss(
            loss, {**pg_metrics, **vf_metrics, "entropy": entropy, "loss_weight": jnp.sum(mask)},
            router_loss, policy.config.num_experts)

    return loss_fn


# ----------------------------------------------------------------------------- the loop
def _evaluate(s: Setup, rollout_fn, params, kl_coef) -> dict[str, float]:
    """Mean reward-model score and length of greedy responses to the held-out prompts."""
    p, mesh = s.run.config.ppo, s.run.mesh
    total = {"reward": 0.0, "response_length": 0.0}
    count = 0.0
    for host_batch in s.eval_batches:
        prompts = to_global_batch(host_batch, mesh)
        gen = rollout.sample(s.graphs, params["policy"], prompts, jax.random.key(0),
                             max_new_tokens=p.max_new_tokens, stop_tokens=s.stop_tokens,
                             pad_id=runsetup.pad_id(s.run), mesh=mesh, method=sampler.Greedy())
        _, rows, _ = rollout_fn(params, s.frozen, prompts, gen, kl_coef)
        valid = prompts["valid"].astype(jnp.float32)
        total["reward"] += float(jnp.sum(rows["scores"] * valid))
        total["response_length"] += float(jnp.sum(rows["lengths"] * valid))
        count += float(jnp.sum(valid))
    return {k: v / max(count, 1.0) for k, v in total.items()}


class KLCoefficient:
    """β of the KL penalty: adapted after every iteration by the `ppo.kl_controller`, and
    checkpointed with the loader (`get_state`/`set_state`, the loop's `extra` state)."""

    def __init__(self, p: losses.PPOSettings, batch_size: int):
        self.value = jnp.asarray(p.kl_coef, jnp.float32)
        self.controller, self.batch_size = p.make_kl_controller(), batch_size

    def update(self, step: int, metrics: dict) -> None:
        del step
        self.value = jnp.asarray(self.controller.update(self.value, metrics["kl"],
                                                        self.batch_size), jnp.float32)

    def get_state(self) -> dict:
        return {"kl_coef": float(self.value)}  # a host-device sync: at checkpoints only

    def set_state(self, state: dict) -> None:
        self.value = jnp.asarray(state["kl_coef"], jnp.float32)


def train(s: Setup) -> tuple[dict, rollout.Graphs]:
    """Run (or resume) PPO; returns `({"policy", "value"} params, graphs)` and writes
    `workdir/model/` (the policy)."""
    run_, mesh = s.run, s.run.mesh
    c = run_.config
    p, t = c.ppo, c.train
    kl = KLCoefficient(s.settings, t.batch_size)
    pad_id = runsetup.pad_id(run_)
    rollout_key = jax.random.key(t.seed)
    rollout_fn = rollout.make_rollout_fn(s.graphs, s.settings, pad_id,
                                         chat_format(run_.tokenizer).end_of_turn_id)

    timer = rollout.UpdateTimer(t.batch_size * c.data.max_length * p.epochs)

    def rollout_hook(it, state, prompts, writer):
        start = time.perf_counter()
        gen = rollout.sample(s.graphs, state.params["policy"], prompts,
                             jax.random.fold_in(rollout_key, it), max_new_tokens=p.max_new_tokens,
                             stop_tokens=s.stop_tokens, pad_id=pad_id, mesh=mesh)
        # The lengths' copy waits for the sampler alone: the scoring pass runs meanwhile.
        got, (batch, rows, metrics) = rollout.host_beside(
            {"lengths": gen.lengths},
            lambda: rollout_fn(state.params, s.frozen, prompts, gen, kl.value))
        metrics["sample_tokens_per_s"] = jnp.float32(
            got["lengths"].sum() / max(time.perf_counter() - start, 1e-9))
        if p.sample_every and it % p.sample_every == 0:
            writer.write_text(it, "samples",
                              rollout.sample_text(run_.tokenizer, prompts, rows, p.num_samples))
        minibatches = rollout.minibatch_indices(t.batch_size, p.minibatch_size, p.epochs,
                                                (t.seed, it))
        timer.start = time.perf_counter()
        return ({k: batch[k] for k in rollout.TRAIN_KEYS}, minibatches), metrics

    def after_update(step, metrics):
        timer.after_update(step, metrics)
        kl.update(step, metrics)

    hooks = train_loop.StepHooks(
        evaluate=((lambda state: _evaluate(s, rollout_fn, state.params, kl.value))
                  if s.eval_batches else None),
        tokens=lambda batch: 0, rollout=rollout_hook, after_update=after_update, extra=kl)
    loop = driver.loop_config(run_, t.steps, eval_at_start=True,
                              hint="Lower optim.lr or ppo.kl_coef.")
    params, s.params = s.params, None  # the state owns (and donates) these buffers now
    state, history = driver.fit(
        run_, params=params, loss_fn=make_loss(s.graphs, s.settings), loader=s.loader, loop=loop,
        model_config=s.policy_config, hooks=hooks,
        optimizer_steps=t.steps * p.epochs * (t.batch_size // p.minibatch_size),
        update_for=lambda step_fn: train_loop.make_minibatch_update(step_fn,
                                                                    rollout.make_take()))
    if history is not None:
        out = models.save_model(run_, state.params["policy"], s.graphs.policy)
        driver.finish(run_, out, history, "reward")
    return state.params, s.graphs


def run(config):
    return train(setup(config))
