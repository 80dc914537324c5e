"""PPO for language models: KL-shaped rewards, GAE, clipped policy and value losses, KL control.

A rollout is a `[B, T]` sequence (prompt then response then padding); `mask` marks the response
tokens (and the stop token) — one contiguous span per row. Each response token is an action, so everything
below is per token. Conventions follow TRL's PPOTrainer (Huang et al., "The N+ Implementation
Details of RLHF with PPO", 2024).

Rewards (`kl_penalty_rewards`): a KL penalty on every response token plus the reward-model score
on the last response token,

    r_t = -kl_coef * KL_t + [t = last response token] * score

with KL_t a per-token `KL_ESTIMATORS` estimate of KL(pi || pi_ref) (TRL uses k1).

GAE (Schulman et al. 2016), right to left over the response span, with V = 0 after its last token:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lambda * A_{t+1}
    R_t     = A_t + V_t                                  (the value targets, "returns")

Clipped surrogate, with rho_t = exp(log pi_new(y_t) - log pi_old(y_t)):

    L_pi = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))

Clipped value loss (TRL / OpenAI baselines):

    L_V = 1/2 mean_t max((V_t - R_t)^2, (clip(V_t, V_old,t - eps, V_old,t + eps) - R_t)^2)

All means are over the masked tokens of the whole batch (token-level, as TRL).

KL control (Ziegler et al. 2019): the adaptive controller moves the coefficient towards a target KL,

    e = clip(KL / KL_target - 1, -0.2, 0.2),    kl_coef <- kl_coef * (1 + e * n_steps / horizon)

where KL is the per-sequence KL summed over tokens, averaged over the batch (the "kl" metric of
`kl_penalty_rewards`), and n_steps the number of samples in the batch (TRL passes the batch size).

`PPOSettings` holds a run's coefficients of all of the above, built once from the `ppo` config
block and closed over by the jitted rollout and update.
"""

import dataclasses

import jax
import jax.numpy as jnp

from easyalign.losses.common import (
    KL_ESTIMATORS,
    entropy_from_logits,
    fp32,
    get,
    masked_mean,
    shift_to_tokens,
)

Array = jax.Array


def kl_penalty_rewards(
    scores: Array,
    logps: Array,
    ref_logps: Array,
    mask: Array,
    kl_coef: float | Array,
    estimator: str = "k1",
) -> tuple[Array, dict[str, Array]]:
    """Per-token rewards `[B, T]`: -kl_coef * KL_t on response tokens, + score on the last one.

    Args:
      scores: `[B]` reward-model scores of the full sequences.
      logps, ref_logps: `[B, T]` per-token log-probs of the sampled tokens under the rollout policy
        and the reference.
      mask: `[B, T]` response mask (one contiguous span per row; a row with an empty span gets 0).
      kl_coef: the current KL coefficient (from a KL controller).
      estimator: a `KL_ESTIMATORS` name.

    Returns:
      (rewards, {"kl", "non_score_reward", "score"}): "kl" is the batch mean of the per-sequence KL
      sum_t KL_t, the quantity the adaptive KL controller tracks.
    """
    mask = fp32(mask)
    kl = get(KL_ESTIMATORS, estimator, "KL estimator")(logps, ref_logps) * mask
    # Index of the last response token: the first 1 when the row is read right to left.
    T = mask.shape[1]
    last = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    has_response = jnp.any(mask > 0, axis=1)
    at_last = jax.nn.one_hot(last, T, dtype=jnp.float32) * fp32(has_response)[:, None]
    non_score = -kl_coef * kl
    rewards = non_score + fp32(scores)[:, None] * at_last
    metrics = {
        "kl": jnp.mean(jnp.sum(kl, axis=1)),
        "non_score_reward": jnp.mean(jnp.sum(non_score, axis=1)),
        "score": jnp.mean(fp32(scores)),
    }
    return rewards, metrics


def gae(
    rewards: Array, values: Array, mask: Array, gamma: float, lam: float
) -> tuple[Array, Array]:
    """Generalised advantage estimation over `[B, T]`; returns (advantages, returns), 0 off-mask.

    Scans right to left. Off the mask the carried (V_{t+1}, A_{t+1}) resets to 0, so the last
    response token bootstraps from V = 0 (the episode ends there) and padding after the response,
    or a prompt before it, never leaks into the span. The mask must be 0/1.
    """
    rewards, values, mask = fp32(rewards), fp32(values), fp32(mask)

    def step(carry: tuple[Array, Array], xs: tuple[Array, Array, Array]):
        next_value, next_adv = carry
        r, v, m = xs
        delta = r + gamma * next_value - v
        adv = (delta + gamma * lam * next_adv) * m
        return (v * m, adv), adv

    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
    advantages = adv.T
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    new_logps: Array, old_logps: Array, advantages: Array, mask: Array, clip_eps: float
) -> tuple[Array, dict[str, Array]]:
    """Clipped surrogate loss over the masked tokens.

    Returns:
      (loss, {"pg_loss", "pg_clipfrac", "approx_kl", "ratio"}):
        pg_clipfrac  fraction of tokens where the clipped branch is the larger loss (it is the one
                     taken, and its gradient is 0), as TRL counts it;
        approx_kl    mean 1/2 (log pi_new - log pi_old)^2, the k2 estimator of KL(pi_old || pi_new)
                     on tokens sampled from pi_old (TRL's `approxkl`), a drift diagnostic;
        ratio        mean importance ratio rho.
    """
    log_ratio = fp32(new_logps) - fp32(old_logps)
    ratio = jnp.exp(log_ratio)
    advantages = fp32(advantages)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    metrics = {
        "pg_loss": loss,
        "pg_clipfrac": masked_mean(fp32(clipped > unclipped), mask),
        "approx_kl": masked_mean(0.5 * jnp.square(log_ratio), mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, metrics


def ppo_value_loss(
    new_values: Array, old_values: Array, returns: Array, mask: Array, clip_eps: float
) -> tuple[Array, dict[str, Array]]:
    """Clipped value loss 1/2 max((V - R)^2, (V_clipped - R)^2) over the masked tokens.

    Clipping V around the rollout-time values keeps the value head from jumping in one update.

    Returns:
      (loss, {"vf_loss", "vf_clipfrac"}): vf_clipfrac is the fraction of tokens where the clipped
      error is the larger one.
    """
    new_values, old_values, returns = fp32(new_values), fp32(old_values), fp32(returns)
    clipped_values = jnp.clip(new_values, old_values - clip_eps, old_values + clip_eps)
    err = jnp.square(new_values - returns)
    err_clipped = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), mask)
    metrics = {"vf_loss": loss, "vf_clipfrac": masked_mean(fp32(err_clipped > err), mask)}
    return loss, metrics


def entropy_bonus(logits: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """Negative mean policy entropy over the masked tokens, from logits `[B, T, V]`.

    The entropy at token t is that of the distribution that sampled it (logits at t-1). Add
    `ent_coef * loss` to the objective to encourage exploration.

    Returns:
      (-entropy, {"entropy"}).
    """
    entropy = masked_mean(shift_to_tokens(entropy_from_logits(logits)), mask)
    return -entropy, {"entropy": entropy}


@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """Keeps the KL coefficient constant."""

    def update(self, coef: float | Array, kl: float | Array, n_steps: int) -> float | Array:
        del kl, n_steps
        return coef


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Ziegler et al. (2019) proportional controller towards `target` KL (nats per sequence).

    The controller holds only hyperparameters; the coefficient is state the caller threads through
    `update`, so it can live in the train state and be checkpointed.
    """

    target: float
    horizon: float

    def update(self, coef: float | Array, kl: float | Array, n_steps: int) -> Array:
        """coef * (1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon)."""
        error = jnp.clip(fp32(kl) / self.target - 1.0, -0.2, 0.2)
        return fp32(coef) * (1.0 + error * n_steps / self.horizon)


# `ppo.kl_controller` name -> `(PPOSettings) -> controller`.
KL_CONTROLLERS = {
    "fixed": lambda s: FixedKLController(),
    "adaptive": lambda s: AdaptiveKLController(target=s.kl_target, horizon=s.kl_horizon),
}


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    """The static coefficients of a PPO run (module docstring for each formula): frozen, so
    hashable (safe as a jit static argument) and never changed under a compiled function,
    unlike the mutable config block. Field names and meanings are those of the `ppo` block.

      clip_eps, value_clip_eps   ε of the policy ratio clip, of the value clip (value units)
      vf_coef, entropy_coef      weights of L_V and of the entropy bonus in the summed loss
      gamma, lam                 γ and λ of GAE
      kl_estimator               a `KL_ESTIMATORS` name, for KL_t of the rewards
      kl_coef                    the KL coefficient β (the adaptive controller's start value)
      kl_controller              a `KL_CONTROLLERS` name
      kl_target, kl_horizon      the adaptive controller's target (nats per sequence), horizon
      score_clip                 reward-model scores clipped to ±score_clip (0 = off)
      whiten_rewards             rewards scaled to unit variance over the batch (mean kept)
      whiten_advantages          advantages to zero mean, unit variance over the batch
      max_new_tokens             the response budget N: log-probs and values of the rollout
                                 and the loss are computed over N response columns per row
                                 (`rollout.response_span`; None = every column)

    Raises ValueError (one line, listing the valid names) for an unknown kl_estimator or
    kl_controller.
    """

    clip_eps: float
    value_clip_eps: float
    vf_coef: float
    entropy_coef: float
    gamma: float
    lam: float
    kl_estimator: str
    kl_coef: float
    kl_controller: str
    kl_target: float
    kl_horizon: float
    score_clip: float
    whiten_rewards: bool
    whiten_advantages: bool
    max_new_tokens: int | None = None

    def __post_init__(self):
        get(KL_ESTIMATORS, self.kl_estimator, "ppo.kl_estimator")
        get(KL_CONTROLLERS, self.kl_controller, "ppo.kl_controller")

    @classmethod
    def from_config(cls, block) -> "PPOSettings":
        """From the `ppo` config block (its other keys — models, epochs, minibatches, sample
        logging — are the phase's, not the loss's)."""
        return cls(**{f.name: block[f.name] for f in dataclasses.fields(cls)})

    def make_kl_controller(self):
        """The `kl_controller`'s controller; ValueError listing the valid names if unknown."""
        return get(KL_CONTROLLERS, self.kl_controller, "ppo.kl_controller")(self)
