"""Critic-free policy gradients: group advantages and the clipped GRPO-family policy loss.

A *group* is the G completions y_1..y_G sampled for one prompt x; r_i is the (combined) reward
of y_i. Rewards are `[B, G]` (B prompts), per-token arrays `[B·G, T]` with the rows of a group
adjacent (row b·G + i is completion i of prompt b). `valid [B, G]` marks real completions: a
*padded group* (fewer than G real members) keeps its statistics over its valid members only.

Advantages (`ADVANTAGES`, one scalar per completion, broadcast over its tokens):

    grpo     A_i = (r_i − mean_j r_j) / (std_j r_j + ε)        Shao et al. 2024 (DeepSeekMath,
             std with Bessel's correction and ε = 1e-4,          eq. 3 / §4.1.2), as TRL's
             as TRL's GRPOTrainer (`scale_rewards="group"`)      GRPOTrainer
    dr_grpo  A_i = r_i − mean_j r_j                             Liu et al. 2025 (Dr. GRPO): the
                                                                 std division biases towards
                                                                 too-easy / too-hard questions
    rloo     A_i = r_i − 1/(G−1) Σ_{j≠i} r_j                    Ahmadian et al. 2024 (RLOO,
                                                                 Kool et al. 2019): leave-one-out
                                                                 baseline, unbiased

A group whose rewards are all equal has A = 0 for every member under all three: it carries no
signal (`zero_signal_groups`).

Policy loss per token t of completion i (Schulman et al. 2017 clipped surrogate, as GRPO eq. 3):

    ρ_{i,t} = π_θ(y_{i,t}) / π_old(y_{i,t})
    ℓ_{i,t} = −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) + β · KL_{i,t}

with ε_high = ε_low unless set (DAPO's "clip-higher", Yu et al. 2025), and KL_{i,t} a per-token
estimator of KL(π_θ ‖ π_ref) (`losses.common.KL_ESTIMATORS`; GRPO uses k3). With GSPO's
sequence-level ratio (Zheng et al. 2025) every token of completion i uses

    ρ_i = exp( 1/|y_i| Σ_t (log π_θ(y_{i,t}) − log π_old(y_{i,t})) )

the length-normalised sequence likelihood ratio (its gradient flows through the mean).

Aggregation (`AGGREGATIONS`) of ℓ over the masked tokens of a batch of N completions:

    sequence_mean  1/N Σ_i 1/|y_i| Σ_t ℓ_{i,t}        GRPO (Shao et al. 2024 eq. 3)
    token_mean     Σ_i Σ_t ℓ_{i,t} / Σ_i |y_i|         DAPO (Yu et al. 2025 eq. 8), TRL "dapo"/"bnpo"
    constant       Σ_i Σ_t ℓ_{i,t} / (N · L_max)       Dr. GRPO (Liu et al. 2025): a constant
                                                       normaliser, no length bias

Every function computes in float32.

`GRPOSettings` holds a run's choices of the loss (ε_low/ε_high, the ratio level, the
aggregation and its L_max, β and the KL estimator), built once from the `grpo` config block and
closed over by the jitted step; `GRPOSettings.loss` is `grpo_policy_loss` with them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from easyalign.losses.common import KL_ESTIMATORS, fp32, get, masked_mean, masked_sum

Array = jax.Array

GRPO_EPS = 1e-4  # ε of the group std, as TRL's GRPOTrainer


def _group_stats(rewards: Array, valid: Array | None) -> tuple[Array, Array, Array]:
    """(rewards, valid, count per group `[B, 1]`) in fp32; all members valid when None."""
    rewards = fp32(rewards)
    valid = jnp.ones_like(rewards) if valid is None else fp32(valid)
    return rewards, valid, jnp.sum(valid, axis=1, keepdims=True)


def _group_mean(rewards: Array, valid: Array, n: Array) -> Array:
    return jnp.sum(rewards * valid, axis=1, keepdims=True) / jnp.maximum(n, 1.0)


def grpo_advantages(rewards: Array, valid: Array | None = None, eps: float = GRPO_EPS) -> Array:
    """(r − mean) / (std + ε) within each group: `[B, G]` → `[B, G]`, 0 on invalid members.

    std is Bessel-corrected over the valid members (0 for a group of one)."""
    rewards, valid, n = _group_stats(rewards, valid)
    mean = _group_mean(rewards, valid, n)
    sq = jnp.sum(jnp.square(rewards - mean) * valid, axis=1, keepdims=True)
    std = jnp.sqrt(sq / jnp.maximum(n - 1.0, 1.0))
    return (rewards - mean) / (std + eps) * valid


def dr_grpo_advantages(rewards: Array, valid: Array | None = None) -> Array:
    """r − mean within each group (Dr. GRPO: no std division): `[B, G]` → `[B, G]`."""
    rewards, valid, n = _group_stats(rewards, valid)
    return (rewards - _group_mean(rewards, valid, n)) * valid


def rloo_advantages(rewards: Array, valid: Array | None = None) -> Array:
    """r_i − mean of the other valid members of its group (0 for a group of one): `[B, G]`."""
    rewards, valid, n = _group_stats(rewards, valid)
    total = jnp.sum(rewards * valid, axis=1, keepdims=True)
    baseline = (total - rewards) / jnp.maximum(n - 1.0, 1.0)
    return jnp.where(n > 1, rewards - baseline, 0.0) * valid


AdvantageFn = Callable[[Array, Array | None], Array]

ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def zero_signal_groups(rewards: Array, valid: Array | None = None) -> Array:
    """`[B]` bool: the group's valid rewards are all equal (max == min), so every advantage is 0."""
    rewards, valid, _ = _group_stats(rewards, valid)
    hi = jnp.max(jnp.where(valid > 0, rewards, -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(valid > 0, rewards, jnp.inf), axis=1)
    return ~(hi > lo)


# ----------------------------------------------------------------------------- aggregation
def sequence_mean(per_token: Array, mask: Array, max_length: int) -> Array:
    """1/N Σ_i (Σ_t m ℓ / Σ_t m): each completion's token mean, then the mean over completions
    (rows with an empty mask count as 0 in the numerator and in N, as in TRL)."""
    del max_length
    return jnp.mean(masked_mean(per_token, mask, axis=-1))


def token_mean(per_token: Array, mask: Array, max_length: int) -> Array:
    """Σ m ℓ / Σ m over every token of the batch (DAPO)."""
    del max_length
    return masked_mean(per_token, mask)


def constant(per_token: Array, mask: Array, max_length: int) -> Array:
    """Σ m ℓ / (N · max_length) (Dr. GRPO), N the number of rows."""
    return masked_sum(per_token, mask) / (per_token.shape[0] * max_length)


AGGREGATIONS: dict[str, Callable[[Array, Array, int], Array]] = {
    "sequence_mean": sequence_mean,
    "token_mean": token_mean,
    "constant": constant,
}

IMPORTANCE_LEVELS = ("token", "sequence")  # per-token ratio (GRPO) | GSPO's sequence ratio


def aggregation_weight(loss_type: str, mask: Array) -> Array:
    """The weight of one micro-batch under gradient accumulation (`train.step`): its tokens for
    `token_mean`, its rows otherwise — so accumulation reproduces the whole batch's loss exactly
    for `token_mean` and `constant`, and for `sequence_mean` weights rows equally."""
    return jnp.sum(fp32(mask)) if loss_type == "token_mean" else jnp.asarray(mask.shape[0],
                                                                            jnp.float32)


def grpo_policy_loss(
    new_logps: Array,
    old_logps: Array,
    advantages: Array,
    mask: Array,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "sequence_mean",
    importance_sampling_level: str = "token",
    ref_logps: Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    max_length: int | None = None,
    metrics_mask: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The clipped GRPO-family loss (module docstring) of `[N, T]` log-probs.

    Args:
      new_logps, old_logps: `[N, T]` log-probs (nats) of the sampled tokens under π_θ and the
        rollout policy π_old (aligned with the tokens, `losses.common`).
      advantages: `[N]` one advantage per completion.
      mask: `[N, T]` 1 on completion tokens (the stop token included).
      epsilon, epsilon_high: ε_low and ε_high of the ratio clip (ε_high None = ε_low).
      loss_type: an `AGGREGATIONS` name.
      importance_sampling_level: "token" (GRPO) or "sequence" (GSPO).
      ref_logps, beta, kl_estimator: the KL penalty β · KL_t to π_ref (skipped when β = 0).
      max_length: L_max of the `constant` normaliser (default T).
      metrics_mask: `[N, T]` the tokens `ratio`, the clip fractions and `kl` describe (default
        `mask`): GRPO passes every sampled token, so a group dropped from the loss (zero
        signal) is still measured — as TRL measures every completion — and an update whose
        loss keeps no token does not report a ratio and KL of 0.

    Returns:
      (loss, {"pg_loss", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio", "kl"}):
      pg_loss the policy term as the loss aggregates it (over `mask`); clip fractions over the
      measured tokens where the clip is active (ratio outside the band on the side that the
      advantage's sign makes binding); kl the measured tokens' mean of KL_t (0 without a
      reference).
    """
    aggregate = get(AGGREGATIONS, loss_type, "grpo.loss_type")
    if importance_sampling_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown grpo.importance_sampling_level {importance_sampling_level!r}; "
                         f"valid: {', '.join(IMPORTANCE_LEVELS)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = fp32(mask)

    def ratio_over(tokens):
        log_ratio = (fp32(new_logps) - fp32(old_logps)) * tokens
        if importance_sampling_level == "sequence":
            log_ratio = masked_mean(log_ratio, tokens, axis=-1)[:, None] * jnp.ones_like(
                log_ratio)
        return jnp.exp(log_ratio)

    ratio = ratio_over(mask)
    adv = fp32(advantages)[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    kl = jnp.zeros_like(per_token)
    if beta and ref_logps is not None:
        kl = get(KL_ESTIMATORS, kl_estimator, "grpo.kl_estimator")(new_logps, ref_logps)
        per_token = per_token + beta * kl
    L = per_token.shape[1] if max_length is None else max_length
    loss = aggregate(per_token, mask, L)
    seen = mask if metrics_mask is None else fp32(metrics_mask)
    seen_ratio = ratio if metrics_mask is None else ratio_over(seen)
    low = fp32((seen_ratio < 1.0 - epsilon) & (adv < 0))
    high = fp32((seen_ratio > 1.0 + eps_high) & (adv > 0))
    metrics = {"pg_loss": aggregate(-jnp.minimum(unclipped, clipped), mask, L),
               "clip_frac": masked_mean(low + high, seen),
               "clip_frac_low": masked_mean(low, seen),
               "clip_frac_high": masked_mean(high, seen),
               "ratio": masked_mean(seen_ratio, seen),
               "kl": masked_mean(kl, seen)}
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """The static settings of a GRPO-family loss: frozen, so hashable (safe as a jit static
    argument) and never changed under a compiled step, unlike the mutable config block. Field
    names are those of the `grpo` block (`max_length` is its `max_new_tokens`).

      epsilon, epsilon_high       ε_low and ε_high of the ratio clip (ε_high None = ε_low)
      loss_type                   an `AGGREGATIONS` name
      importance_sampling_level   "token" (GRPO) or "sequence" (GSPO)
      beta, kl_estimator          β and the `KL_ESTIMATORS` name of the KL penalty (β = 0: none)
      max_length                  L_max of the `constant` normaliser (None = the token width);
                                  also the response width the log-probs are computed over
      temperature                 τ of the rollout's sampler: log-probs are those of
                                  softmax(z / τ), π_θ's and π_ref's alike, so that π_old is the
                                  distribution the completions were drawn from (as TRL)
      group                       G when the rows come in groups of G completions of one
                                  prompt that the log-probs may compute once (the phase's
                                  `shared_prefix_group`); 1 = every row on its own

    Raises ValueError (one line, named as the `grpo.*` config key, listing the valid names) for
    an unknown loss_type, importance_sampling_level or kl_estimator.
    """

    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "sequence_mean"
    importance_sampling_level: str = "token"
    beta: float = 0.0
    kl_estimator: str = "k3"
    max_length: int | None = None
    temperature: float = 1.0
    group: int = 1

    def __post_init__(self):
        get(AGGREGATIONS, self.loss_type, "grpo.loss_type")
        get(KL_ESTIMATORS, self.kl_estimator, "grpo.kl_estimator")
        if self.importance_sampling_level not in IMPORTANCE_LEVELS:
            raise ValueError(f"unknown grpo.importance_sampling_level "
                             f"{self.importance_sampling_level!r}; valid: "
                             f"{', '.join(IMPORTANCE_LEVELS)}")

    @classmethod
    def from_config(cls, block) -> "GRPOSettings":
        """From the `grpo` config block (`epsilon_high = 0` there means ε_low; its other keys —
        rewards, models, budgets, epochs — are the phase's, not the loss's)."""
        return cls(epsilon=float(block.epsilon), epsilon_high=float(block.epsilon_high) or None,
                   loss_type=block.loss_type,
                   importance_sampling_level=block.importance_sampling_level,
                   beta=float(block.beta), kl_estimator=block.kl_estimator,
                   max_length=int(block.max_new_tokens), temperature=float(block.temperature))

    def loss(self, new_logps: Array, old_logps: Array, advantages: Array, mask: Array,
             ref_logps: Array | None = None, metrics_mask: Array | None = None
             ) -> tuple[Array, dict[str, Array]]:
        """`grpo_policy_loss` of these settings."""
        return grpo_policy_loss(
            new_logps, old_logps, advantages, mask, epsilon=self.epsilon,
            epsilon_high=self.epsilon_high, loss_type=self.loss_type,
            importance_sampling_level=self.importance_sampling_level, ref_logps=ref_logps,
            beta=self.beta, kl_estimator=self.kl_estimator, max_length=self.max_length,
            metrics_mask=metrics_mask)
