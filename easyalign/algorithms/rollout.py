"""PPO rollouts: sample responses, score them with four models, shape rewards, estimate advantages.

One rollout turns a batch of prompts into a PPO training batch, entirely on the device:

1. **Sample** (`sample`): the jitted sampler draws a response per prompt from the current policy
   at temperature 1 (so the sampling distribution *is* π_old), stopping at a stop token
   (`chat_format.stop_token_ids`) or after `ppo.max_new_tokens` tokens.
2. **Assemble** (`assemble`): row b becomes `prompt[:P_b] + response[:L_b] + padding`, width
   T = P + N (P the prompt block, N the token budget). The response mask m covers exactly the L_b
   generated tokens, the stop token included. The reward model reads the same tokens in a block
   one column wider, laid out as its training data was, `prompt + response + end of turn`
   (`chat_format`): the stop token becomes the end-of-turn token, and a response cut by the
   budget gets one appended.
3. **Score** (`score`, one jitted pass with everything below): on the assembled tokens,

       log π_old(y_t)  policy, the same trunk + chunked log-prob code as the training loss, so the
                       first minibatch of an update starts at ratio exactly 1 (the sampler's own
                       log-probs are only compared with it: the `logprob_mismatch` metric);
       log π_ref(y_t)  frozen reference (the SFT model);
       V_old(t)        value model, read at the hidden state that predicts token t (like a
                       log-prob), i.e. the value of the state before the action y_t;
       score           frozen reward model at its read position (`reward.sequence_scores`).

   The policy's and reference's LM heads and the value head run on the N response columns
   P_b .. P_b + N − 1 of each row alone (`response_span`, `model.scoring.Span`): nothing reads
   a prompt column's log-prob or value, and the LM head (d × vocab) at the prompt's columns
   was most of the scoring cost. The trunks still run over all T columns (attention reads
   the prompt); the per-token arrays are 0 off the span.

4. **Rewards and advantages** (`advantages`): per-token KL-shaped rewards (`losses.ppo`)

       r_t = −β · KL_t + [t = last response token] · clip(score, ±c)
       KL_t = k1: log π_old(y_t) − log π_ref(y_t)     k3: exp(−d) − 1 + d,  d = the k1 value

   (β the KL coefficient of the controller; optionally whitened without shifting the mean), then
   GAE over the response span with V = 0 after its last token:

       δ_t = r_t + γ V_{t+1} − V_t,    A_t = δ_t + γ λ A_{t+1},    R_t = A_t + V_t

   and the advantages are whitened over all response tokens of the (global) batch.

Everything is a global array sharded over the batch axes, so the same code runs on one device,
one host or many.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from easyalign import losses, sampler, sharding
from easyalign.algorithms.reward import sequence_scores
from easyalign.model import lora, shared_prefix
from easyalign.model.scoring import Span, over_predictions, token_logprobs_and_entropy

# The arrays a PPO update reads, `[B, T]` each.
TRAIN_KEYS = ("tokens", "mask", "old_logps", "old_values", "advantages", "returns")


@dataclasses.dataclass(frozen=True)
class Graphs:
    """Graph definitions of the four models (static: they never change during a run)."""

    policy: Any
    value: Any
    reference: Any
    reward: Any


# ----------------------------------------------------------------------------- model outputs
def policy_logps(model, tokens: jax.Array, *, temperature: float = 1.0,
                 span: Span | None = None) -> tuple[jax.Array, jax.Array]:
    """`(log π(tokens[t] | <t), entropy of that prediction)`, `[B, T]` each, position 0 = 0.

    The one code path for rollout scoring and the loss. The entropy comes from the same chunked
    pass (`losses.entropy_bonus` would need the full `[B, T, vocab]` logits). `temperature` τ
    scores softmax(z / τ), the distribution a sampler at τ draws from (so that π_old is the
    sampling policy); `span` scores only the response columns (`model.scoring.Span`), 0 on
    the others."""
    return policy_logps_and_router_loss(model, tokens, temperature=temperature, span=span)[:2]


def policy_logps_and_router_loss(model, tokens: jax.Array, *, temperature: float = 1.0,
                                 span: Span | None = None
                                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`policy_logps` and the forward pass's MoE router loss (0 for a dense model): what the
    losses of PPO and GRPO train on."""
    hidden, _, router_loss = model.trunk_with_router_loss(tokens)
    return (*token_logprobs_and_entropy(model, hidden, tokens, temperature=temperature,
                                        span=span), router_loss)


def response_span(mask: jax.Array, width: int | None) -> Span | None:
    """The `Span` of rows whose response mask `[B, T]` starts at its first nonzero column and
    holds at most `width` tokens (a row with an empty mask gets column 1: its scores are
    masked out anyway); None — every column — when `width` is None or 0."""
    if not width:
        return None
    return Span(jnp.maximum(jnp.argmax(mask > 0, axis=1), 1).astype(jnp.int32), width)


def response_logps(model, tokens: jax.Array, mask: jax.Array, width: int | None, *,
                   temperature: float = 1.0, group: int = 1
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(log π, entropy, router loss)` of the response tokens of `tokens [B, T]`: `[B, T]`,
    `[B, T]` float32 and a scalar. The LM head runs on the `width` response columns alone
    (`response_span(mask, width)`; 0 on the other columns, `width` None = every column), at
    the sampler's temperature τ. What PPO and GRPO score and train on, rollout and loss alike
    (so the first update starts at ratio exactly 1).

    `group` G > 1: rows n·G … n·G + G − 1 are G completions of one prompt, and a dense model
    computes that prompt once for the G of them (`model.shared_prefix.response_logps`; the same
    values and gradients). A mixture of experts, or `width` None, takes the rows one by one."""
    span = response_span(mask, width)
    if group > 1 and span is not None and not model.config.num_experts:
        return shared_prefix.response_logps(model, tokens, span.starts, group, width,
                                            temperature=temperature)
    return policy_logps_and_router_loss(model, tokens, temperature=temperature, span=span)


def token_values(model, tokens: jax.Array, span: Span | None = None) -> jax.Array:
    """Value of the state before each token, `[B, T]` float32: the scalar head read at
    position t − 1 (position 0 = 0). The head is per position, so with a `span` it runs on the
    hidden states gathered at the span's columns alone (`over_predictions`; 0 elsewhere)."""
    hidden, _ = model.trunk(tokens)
    # A [d, 1] head: chunking (for [.., vocab] logits) buys nothing, one chunk is the width.
    return over_predictions(model.scores, [hidden], chunk=tokens.shape[1], span=span)


# ----------------------------------------------------------------------------- rollout pieces
def sample(graphs: Graphs, policy_params, prompts: dict, rng: jax.Array, *, max_new_tokens: int,
           stop_tokens, pad_id: int, mesh, method=sampler.Temperature(1.0),
           num_samples: int = 1) -> sampler.Generation:
    """`num_samples` = G responses to each prompt of a global batch (`prompt_tokens [B, P]`,
    `prompt_lengths [B]`), rows b·G + g, every prompt prefilled once (`sampler.generate`)."""
    return sampler.generate(graphs.policy, policy_params, prompts["prompt_tokens"],
                            prompts["prompt_lengths"], rng, max_new_tokens=max_new_tokens,
                            method=method, stop_tokens=stop_tokens, pad_id=pad_id,
                            num_samples=num_samples, mesh=mesh)


def assemble(prompt_tokens, prompt_lengths, gen: sampler.Generation, pad_id: int,
             end_of_turn_id: int) -> dict[str, jax.Array]:
    """Prompt + response rows (module docstring, step 2).

    Returns `tokens [B, T]`, `mask [B, T]` (response + stop token), `sampler_logps [B, T]` (the
    sampler's log-probs moved onto the tokens they score), and the reward model's `rm_tokens`,
    `rm_segment_ids` `[B, T + 1]`.
    """
    batch, width = prompt_tokens.shape
    total = width + gen.tokens.shape[1]
    j = jnp.arange(total + 1)[None, :]
    start, length = prompt_lengths[:, None], gen.lengths[:, None]
    in_prompt = j < start
    in_response = (j >= start) & (j < start + length)
    # Column j reads column `src` of [prompt block | response block | one spare column].
    src = jnp.clip(jnp.where(in_prompt, j, width + j - start), 0, total)
    spare = jnp.zeros((batch, 1), jnp.int32)
    tokens = jnp.take_along_axis(
        jnp.concatenate([prompt_tokens, gen.tokens, spare], axis=1), src, axis=1)
    tokens = jnp.where(in_prompt | in_response, tokens, pad_id)
    logps = jnp.take_along_axis(jnp.concatenate(
        [jnp.zeros_like(prompt_tokens, jnp.float32), gen.logprobs, spare.astype(jnp.float32)],
        axis=1), src, axis=1)
    # The reward model's end of turn: the stop token's column, or the one after a cut response.
    end = start + length - gen.done[:, None].astype(jnp.int32)
    return {"tokens": tokens[:, :total], "mask": in_response[:, :total].astype(jnp.float32),
            "sampler_logps": jnp.where(in_response, logps, 0.0)[:, :total],
            "rm_tokens": jnp.where(j == end, end_of_turn_id, tokens),
            "rm_segment_ids": (j <= end).astype(jnp.int32)}


def score(graphs: Graphs, params: dict, frozen: dict, seq: dict, width: int | None = None
          ) -> dict[str, jax.Array]:
    """`old_logps`, `ref_logps`, `old_values`, `entropy` `[B, T]` and reward-model `scores [B]`.

    The heads run on the `width` response columns of `seq["mask"]` alone (`response_span`;
    `width` None = every column): the per-token arrays are 0 on the other columns."""
    frozen = lora.resolve(frozen, params)  # a LoRA policy's reference: its base, adapters off
    tokens, mask = seq["tokens"], seq["mask"]
    old_logps, entropy, _ = response_logps(nnx.merge(graphs.policy, params["policy"]), tokens,
                                           mask, width)
    # The policy's own code path, so that policy == reference gives exactly KL = 0.
    ref_logps, _, _ = response_logps(nnx.merge(graphs.reference, frozen["reference"]), tokens,
                                     mask, width)
    old_values = token_values(nnx.merge(graphs.value, params["value"]), tokens,
                              response_span(mask, width))
    scores = sequence_scores(nnx.merge(graphs.reward, frozen["reward"]), seq["rm_tokens"],
                             seq["rm_segment_ids"], {})
    return {"old_logps": old_logps, "ref_logps": ref_logps, "old_values": old_values,
            "entropy": entropy, "scores": scores}


def advantages(scored: dict, mask: jax.Array, kl_coef: jax.Array, p: losses.PPOSettings
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """KL-shaped rewards, GAE advantages and returns (module docstring, step 4)."""
    scores = scored["scores"]
    if p.score_clip > 0:
        scores = jnp.clip(scores, -p.score_clip, p.score_clip)
    rewards, metrics = losses.kl_penalty_rewards(scores, scored["old_logps"], scored["ref_logps"],
                                                 mask, kl_coef, p.kl_estimator)
    if p.whiten_rewards:
        rewards = losses.masked_whiten(rewards, mask, shift_mean=False)
    adv, returns = losses.gae(rewards, scored["old_values"], mask, p.gamma, p.lam)
    if p.whiten_advantages:
        adv = losses.masked_whiten(adv, mask)
    out = {"advantages": adv, "returns": returns}
    return out, {"kl": metrics["kl"], "non_score_reward": metrics["non_score_reward"],
                 "returns": losses.masked_mean(returns, mask)}


def make_rollout_fn(graphs: Graphs, p: losses.PPOSettings, pad_id: int, end_of_turn_id: int):
    """`rollout(params, frozen, prompts, gen, kl_coef) -> (train batch, per-row, metrics)`, jitted.

    `per-row` holds what sample logging and evaluation read: `scores`, `lengths` `[B]` and the
    assembled `tokens`. Metrics are batch means (`logprob_mismatch` the maximum).
    """

    def rollout(params, frozen, prompts, gen, kl_coef):
        seq = assemble(prompts["prompt_tokens"], prompts["prompt_lengths"], gen, pad_id, end_of_turn_id)
        mask = seq["mask"]
        scored = score(graphs, params, frozen, seq, p.max_new_tokens)
        shaped, metrics = advantages(scored, mask, kl_coef, p)
        batch = {"tokens": seq["tokens"], "mask": mask, **shaped,
                 "old_logps": scored["old_logps"], "old_values": scored["old_values"]}
        mismatch = jnp.max(jnp.abs(scored["old_logps"] - seq["sampler_logps"]) * mask)
        metrics |= {"reward": jnp.mean(scored["scores"]),
                    "entropy_rollout": losses.masked_mean(scored["entropy"], mask),
                    "response_length": jnp.mean(gen.lengths.astype(jnp.float32)),
                    "eos_rate": jnp.mean(gen.done.astype(jnp.float32)),
                    "value": losses.masked_mean(scored["old_values"], mask),
                    "logprob_mismatch": mismatch, "kl_coef": jnp.asarray(kl_coef, jnp.float32)}
        rows = {"scores": scored["scores"], "lengths": gen.lengths, "tokens": seq["tokens"]}
        return batch, rows, metrics

    return jax.jit(rollout)


# ----------------------------------------------------------------------------- minibatches
def minibatch_indices(batch_size: int, minibatch_size: int, epochs: int, seed: tuple[int, ...],
                      group: int = 1) -> list[np.ndarray]:
    """Row indices of every minibatch of an update: each epoch a fresh permutation of the batch,
    cut into `batch_size / minibatch_size` pieces. Seeded by (run seed, iteration), so every
    process draws the same minibatches and a resumed run the same as an uninterrupted one.
    `group` G > 1 permutes whole groups of G consecutive rows, kept together and in order (a
    shared-prefix loss computes each group's prompt once); G must divide `minibatch_size`."""
    rng = np.random.default_rng(seed)

    def permutation():
        groups = rng.permutation(batch_size // group)
        return (groups[:, None] * group + np.arange(group)[None, :]).reshape(-1)

    return [perm[i:i + minibatch_size] for perm in (permutation() for _ in range(epochs))
            for i in range(0, batch_size, minibatch_size)]


def make_take():
    """`take(batch, rows)`: a minibatch of a global batch, again sharded over the batch axes
    (`rows` is the same on every process)."""

    def take(batch, rows):
        return {k: sharding.constrain(v[rows], ("batch",) + (None,) * (v.ndim - 1))
                for k, v in batch.items()}

    return jax.jit(take)


# ----------------------------------------------------------------------------- host side
def host(tree):
    """Global arrays → numpy on every process (a collective under several processes)."""
    return multihost_utils.process_allgather(tree, tiled=True)


def host_beside(tree, work: Callable[[], Any]) -> tuple[Any, Any]:
    """`(host(tree), work())` with the device running `work` (device work that does not need
    the copy) while the host waits for the copy. On one process `work` is dispatched first:
    the copy waits only for the tree's producers, and the device goes on to `work` with no
    host round trip between. On several processes the fetch is itself a computation (a
    gather) that would queue behind `work`, so it is dispatched first."""
    if jax.process_count() == 1:
        done = work()
        return host(tree), done
    fetched = host(tree)
    return fetched, work()


class UpdateTimer:
    """Times each update of a rollout loop (PPO, GRPO) and adds `update_tokens_per_s` (the
    update's `tokens_per_update` / its wall time, compilation included at iteration 1) to its
    metrics. The rollout hook sets `start` as it hands over the batch; `after_update` (the
    loop's hook) waits for the update — a host-device sync the next rollout makes anyway."""

    def __init__(self, tokens_per_update: int):
        self.tokens, self.start = tokens_per_update, None

    def after_update(self, step: int, metrics: dict) -> None:
        del step
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - self.start
        metrics["update_tokens_per_s"] = jnp.float32(self.tokens / max(elapsed, 1e-9))


def sample_text(tokenizer, prompts: dict, rows: dict, n: int) -> str:
    """`prompt → response  [reward]` for the first `n` rows of a rollout (process 0 writes it)."""
    got = host({"prompt_lengths": prompts["prompt_lengths"][:n], "tokens": rows["tokens"][:n],
                "lengths": rows["lengths"][:n], "scores": rows["scores"][:n]})
    lines = []
    for b in range(len(got["lengths"])):
        start = int(got["prompt_lengths"][b])
        prompt = tokenizer.decode(got["tokens"][b, :start], skip_special_tokens=True)
        response = tokenizer.decode(got["tokens"][b, start:start + int(got["lengths"][b])],
                                    skip_special_tokens=True)
        lines.append(f"{' '.join(prompt.split())!r} → {response.strip()!r}  "
                     f"[reward {float(got['scores'][b]):+.3f}]")
    return "\n".join(lines)
