"""One GRPO group rollout: sample G completions per prompt, score, reward, advantages.

The steps 1–3 of an iteration (`easyalign.algorithms.grpo`, module docstring) as pieces:
`sample_round` draws B prompts × G completions with the jitted sampler (rows b·G + i),
runs the jitted scoring pass (`make_score_fn`: log π_old, log π_ref, reward-model scores)
on the device while the host decodes the responses and applies the verifiable rewards
(`rewards_of`); `rollout_batch` adds DAPO's dynamic sampling (more rounds until B groups
carry signal, `choose_groups`), the advantages of `grpo.advantage_estimator` and the
zero-signal masks, and returns the update batch with the rollout's metrics. `grpo.py` wires
them to a run (`make_scorer`, `rollout_iteration`) and the training loop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import sampler
from easyalign.algorithms import grpo_rewards, rollout, runsetup
from easyalign.algorithms.reward import sequence_scores
from easyalign.losses import common as losses_common
from easyalign.losses import grpo as grpo_losses
from easyalign.model import lora
from easyalign.sharding import to_global_batch

if TYPE_CHECKING:  # annotations only: grpo.py imports this module
    from easyalign.algorithms.grpo import Setup

def repeat_prompts(prompts: dict, G: int) -> dict:
    """Each prompt row G times in a row (row b·G + i = completion i of prompt b)."""
    return {k: jnp.repeat(prompts[k], G, axis=0) for k in ("prompt_tokens", "prompt_lengths")}


def make_score_fn(graphs: rollout.Graphs, pad_id: int, end_of_turn_id: int,
                  settings: grpo_losses.GRPOSettings, *, old_logps: bool = True):
    """`score(params, frozen, prompts, gen, group, logps=True) -> dict`, jitted: the assembled
    rows (`tokens`, `mask`, `sampler_logps`), `old_logps` and `entropy` `[N, T]` unless
    `old_logps=False` (`detached_old_logps`), `ref_logps` `[N, T]` when a reference is loaded,
    reward-model `scores [N]` when one is. Log-probs are at the sampler's temperature, over the
    response columns only (`rollout.response_logps`); `group` (static) G > 1 when the rows are G
    completions of each prompt in turn (`settings.group` for a rollout), so that each prompt is
    computed once. `logps=False` (static; held-out evaluation, which reads only rewards) skips
    every log-prob pass."""

    def score(params, frozen, prompts, gen, group, logps=True):
        frozen = lora.resolve(frozen, params)  # a LoRA policy's reference: adapters off
        seq = rollout.assemble(prompts["prompt_tokens"], prompts["prompt_lengths"], gen, pad_id,
                               end_of_turn_id)
        out = {k: seq[k] for k in ("tokens", "mask", "sampler_logps")}

        def response_logps(model):  # of the response columns, at the sampler's temperature
            return rollout.response_logps(model, seq["tokens"], seq["mask"], settings.max_length,
                                          temperature=settings.temperature, group=group)

        if logps and old_logps:
            out["old_logps"], out["entropy"], _ = response_logps(nnx.merge(graphs.policy, params))
        if logps and "reference" in frozen:
            out["ref_logps"], _, _ = response_logps(nnx.merge(graphs.reference,
                                                              frozen["reference"]))
        if "reward" in frozen:
            out["scores"] = sequence_scores(nnx.merge(graphs.reward, frozen["reward"]),
                                            seq["rm_tokens"], seq["rm_segment_ids"], {})
        return out

    return jax.jit(score, static_argnames=("group", "logps"))


def decode_responses(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    """The text of every row's response (the sampler's tokens `[R, M]`, the first `lengths[r]`
    of row r), special tokens — the stop token among them — dropped."""
    return [tokenizer.decode(tokens[b, :n], skip_special_tokens=True).strip()
            for b, n in enumerate(lengths.tolist())]


def rewards_of(s: Setup, records: list[dict], responses: list[str], scored: dict,
               during: str = "") -> dict[str, np.ndarray]:
    """{reward name: `[N]`} of every reward in `s.weights` (`during` names the pass in a
    failing reward's message)."""
    scores = grpo_rewards.verifiable_scores(s.weights, records, responses, during)
    if grpo_rewards.REWARD_MODEL in s.weights:
        scores[grpo_rewards.REWARD_MODEL] = np.asarray(rollout.host(scored["scores"]), np.float32)
    return scores


def _global_rows(x: np.ndarray, mesh) -> jax.Array:
    """A host array holding every global row (the same on each process) as a global array."""
    n = x.shape[0] // jax.process_count()
    local = x[jax.process_index() * n:(jax.process_index() + 1) * n]
    return to_global_batch({"x": local}, mesh)["x"]


@dataclasses.dataclass
class Round:
    """One sampled batch: B prompts × G completions, scored and rewarded (rows b·G + i)."""

    scored: dict                    # `make_score_fn`'s device arrays, `[B·G, ...]`
    prompt_lengths: jax.Array       # `[B·G]`
    lengths: np.ndarray             # `[B·G]` generated tokens (the stop token included)
    done: np.ndarray                # `[B·G]` stopped at a stop token
    scores: dict[str, np.ndarray]   # reward name → `[B·G]`
    rewards: np.ndarray             # `[B, G]` combined
    sample_time: float              # seconds of sampling (wall)


def sample_round(s: Setup, score_fn, params, prompts: dict, rng, during: str = "") -> Round:
    """Sample G completions of every prompt of a global batch, score and reward them
    (module docstring, steps 1–2); `during` names the rollout in a failing reward's message."""
    run_, g, mesh = s.run, s.run.config.grpo, s.run.mesh
    G = g.num_generations
    rep = repeat_prompts(prompts, G)
    start = time.perf_counter()
    gen = rollout.sample(s.graphs, params, prompts, rng, max_new_tokens=g.max_new_tokens,
                         stop_tokens=s.stop_tokens, pad_id=runsetup.pad_id(run_), mesh=mesh,
                         method=sampler.Temperature(g.temperature), num_samples=G)
    # A host-device sync point: sampling is done. The scoring pass runs on the device beside
    # the copy and while the host decodes and grades the responses (from the sampler's own
    # output, not the scoring pass's rows).
    got, scored = rollout.host_beside(
        {"tokens": gen.tokens, "lengths": gen.lengths, "done": gen.done,
         "index": prompts["index"]},
        lambda: score_fn(params, s.frozen, rep, gen, s.settings.group))
    sample_time = time.perf_counter() - start
    records = [s.records[int(i)] for i in got["index"] for _ in range(G)]
    responses = decode_responses(run_.tokenizer, got["tokens"], got["lengths"])
    scores = rewards_of(s, records, responses, scored, during)
    return Round(scored=scored, prompt_lengths=rep["prompt_lengths"], lengths=got["lengths"],
                 done=got["done"], scores=scores,
                 rewards=grpo_rewards.combine(s.weights, scores).reshape(-1, G),
                 sample_time=sample_time)


def choose_groups(zero_signal: list[np.ndarray], batch_size: int) -> np.ndarray:
    """DAPO's dynamic sampling (Yu et al. 2025, §3.2): the `batch_size` groups of an update,
    as indices into the groups of all rounds in order — every group with signal first (round
    by round), then, if too few were found, zero-signal groups to fill the batch (their rows
    are masked out of the loss)."""
    zero = np.concatenate(zero_signal)
    order = np.concatenate([np.flatnonzero(~zero), np.flatnonzero(zero)])
    return order[:batch_size]


_take_rows = rollout.make_take()
_concat_rows = jax.jit(lambda trees: jax.tree.map(lambda *v: jnp.concatenate(v, axis=0), *trees))


def rollout_batch(s: Setup, score_fn, params, prompts: dict, rng, more_prompts=None,
                  during: str = "") -> tuple[dict, dict, dict]:
    """One group rollout (module docstring, steps 1–3): (update batch, metrics, per-row rows for
    sample logging).

    With `grpo.dynamic_sampling`, while fewer than B groups carry signal and fewer than
    `grpo.max_sampling_rounds` rounds have run, `more_prompts()` (the next loader batch)
    is sampled too; the update takes B groups (`choose_groups`). Round r > 0 samples with
    `fold_in(rng, r)`."""
    g, t, mesh = s.run.config.grpo, s.run.config.train, s.run.mesh
    G = g.num_generations
    rounds = [sample_round(s, score_fn, params, prompts, rng, during)]
    zero = [np.asarray(grpo_losses.zero_signal_groups(rounds[0].rewards))]
    while (g.dynamic_sampling and more_prompts is not None
           and sum(int((~z).sum()) for z in zero) < t.batch_size
           and len(rounds) < g.max_sampling_rounds):
        rounds.append(sample_round(s, score_fn, params, more_prompts(),
                                   jax.random.fold_in(rng, len(rounds)), during))
        zero.append(np.asarray(grpo_losses.zero_signal_groups(rounds[-1].rewards)))
    # One round: its groups as they are (no reordering); several: `choose_groups`.
    groups = choose_groups(zero, t.batch_size) if len(rounds) > 1 else np.arange(t.batch_size)
    rows = (groups[:, None] * G + np.arange(G)[None, :]).reshape(-1)
    cat = lambda xs: np.concatenate(xs)[rows]  # noqa: E731
    rewards = np.concatenate([r.rewards for r in rounds])[groups]
    chosen_zero = np.concatenate(zero)[groups]
    scores = {name: cat([r.scores[name] for r in rounds]) for name in rounds[0].scores}
    lengths, done = cat([r.lengths for r in rounds]), cat([r.done for r in rounds])
    scored = {k: v for k, v in rounds[0].scored.items() if k != "scores"}
    prompt_lengths = rounds[0].prompt_lengths
    if len(rounds) > 1:
        scored = _take_rows(_concat_rows(
            [{**{k: v for k, v in r.scored.items() if k != "scores"},
              "prompt_lengths": r.prompt_lengths} for r in rounds]), jnp.asarray(rows))
        prompt_lengths = scored.pop("prompt_lengths")
    advantages = np.asarray(grpo_losses.ADVANTAGES[g.advantage_estimator](rewards), np.float32)
    mask = scored["mask"]
    batch = {"tokens": scored["tokens"]}
    if g.skip_zero_signal_groups or g.dynamic_sampling:
        keep = _global_rows(np.repeat(~chosen_zero, G).astype(np.float32), mesh)
        batch["response_mask"] = mask  # every sampled token: what the update's metrics describe
        mask = mask * keep[:, None]
    batch |= {"mask": mask, "advantages": _global_rows(advantages.reshape(-1), mesh)}
    response_mask = scored["mask"]
    sampled = sum(r.lengths.sum() for r in rounds)
    metrics = {"reward": jnp.float32(rewards.mean()),
               "reward_std": jnp.float32(rewards.std()),
               "zero_signal_frac": jnp.float32(np.concatenate(zero).mean()),
               "response_length": jnp.float32(lengths.mean()),
               "eos_rate": jnp.float32(done.mean()),
               "sample_tokens_per_s": jnp.float32(
                   sampled / max(sum(r.sample_time for r in rounds), 1e-9))}
    if g.dynamic_sampling:
        metrics["sampling_rounds"] = jnp.float32(len(rounds))
        metrics["signal_groups_frac"] = jnp.float32(1.0 - chosen_zero.mean())
    if "old_logps" in scored:
        batch["old_logps"] = scored["old_logps"]
        metrics["entropy_rollout"] = losses_common.masked_mean(scored["entropy"], response_mask)
        metrics["logprob_mismatch"] = jnp.max(
            jnp.abs(scored["old_logps"] - scored["sampler_logps"]) * response_mask)
    else:  # the update's loss measures the mismatch (`make_loss`)
        batch["sampler_logps"] = scored["sampler_logps"]
    if "ref_logps" in scored:
        batch["ref_logps"] = scored["ref_logps"]
    for name, v in scores.items():
        metrics[f"reward/{name}"] = jnp.float32(v.mean())
        metrics[f"reward_std/{name}"] = jnp.float32(v.std())
    rows_out = {"tokens": scored["tokens"], "lengths": _global_rows(lengths, mesh),
                "scores": jnp.asarray(rewards.reshape(-1)), "zero_signal": chosen_zero}
    return batch, metrics, rows_out | {"prompt_lengths": prompt_lengths}


def no_signal_warning(zero_signal: np.ndarray, it: int, rewards: str) -> str | None:
    """The line to print when every group of iteration `it`'s update got equal rewards
    (`zero_signal [B]` host bools): the update then has nothing to learn from — the policy
    solves none (or all) of its prompts under `rewards` (`grpo.rewards`). None otherwise."""
    if not zero_signal.size or not zero_signal.all():
        return None
    return (f"[grpo] warning: every group of iteration {it} got equal rewards under "
            f"grpo.rewards={rewards!r} (no signal: loss and gradient are 0); the policy solves "
            "none or all of its prompts — start from a better-trained model, sample more per "
            "prompt (grpo.num_generations), or add a reward that grades partial success")
