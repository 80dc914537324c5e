"""Shared building blocks for every loss: fp32 casting, masked reductions, log-probs, KL estimators.

Conventions (every module in `easyalign.losses` follows them):

* Token arrays are `[B, T]`. A per-token log-prob array is aligned with the tokens it scores:

      logps[b, t] = log p(tokens[b, t] | tokens[b, <t])      for t >= 1,   logps[b, 0] = 0,

  so logits at position t-1 score the token at position t. The shift happens in one function,
  `align_predictions` (predictions of tokens 1..T-1 → token positions, 0 at position 0), which
  every scorer uses (`logprobs_from_logits` here, `model.scoring.over_predictions`).
* A mask `[B, T]` (float or bool) is 1 where the token counts: response tokens and the end-of-turn token.
* Everything is cast to float32 before any arithmetic, whatever the compute dtype (bf16) was.
* Losses return `(loss_scalar, metrics)` where metrics is a flat dict of scalar arrays.
* Variants live in plain dict registries, name -> function; `get(registry, name, what)` looks a
  name up and raises `ValueError` listing the valid names (configs are validated with it).

KL estimators (Schulman, "Approximating KL Divergence", 2020), per token, for tokens sampled from
the policy pi, estimating KL(pi || pi_ref). With the log-ratio

      d = log pi(y_t) - log pi_ref(y_t)          (i.e. log r with r = pi / pi_ref)

      k1 = d                                      unbiased, high variance, can be negative
      k2 = d^2 / 2                                biased, low variance, >= 0
      k3 = (exp(-d) - 1) + d                      unbiased, low variance, >= 0 (e^x >= 1 + x)

These are exactly OpenRLHF's `compute_approx_kl(log_probs, log_probs_base, kl_estimator)` and, for
k3, TRL GRPO's `exp(ref - logp) - (ref - logp) - 1`. Note the argument order: policy first.
"""

from typing import Callable, Mapping, TypeVar

import jax
import jax.numpy as jnp

Array = jax.Array
Fn = TypeVar("Fn")


def get(registry: Mapping[str, Fn], name: str, what: str) -> Fn:
    """Looks `name` up in a registry; an unknown name is a `ValueError` listing the valid ones."""
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; valid: {valid}") from None


def add_router_loss(loss: Array, metrics: dict, router_loss: Array, num_experts: int
                    ) -> tuple[Array, dict]:
    """`loss + router_loss` and, for a mixture of experts, `metrics["router_loss"]`.

    `router_loss` = `router_aux_loss_coef · L_aux` of the trained model's forward pass
    (`Transformer.trunk_with_router_loss`; 0 for a dense model): every phase adds it to the loss
    of the model it trains, as HF's `*MoeForCausalLM` adds it to the LM loss and TRL's trainers
    to theirs (`aux_loss_coef`); frozen models' (reference, reward) are never added.
    """
    return loss + router_loss, (metrics | {"router_loss": router_loss} if num_experts else metrics)


def fp32(x: Array) -> Array:
    """Casts to float32 (bool masks too): losses compute in fp32 whatever dtype the model ran in."""
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------- masked reductions


def masked_sum(x: Array, mask: Array, axis: int | None = None) -> Array:
    """sum(x * mask) over `axis` (all axes when None)."""
    return jnp.sum(fp32(x) * fp32(mask), axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | None = None) -> Array:
    """sum(x * mask) / sum(mask) over `axis`; 0 where the mask is empty (no NaN value or grad)."""
    mask = fp32(mask)
    count = jnp.sum(mask, axis=axis)
    # Divide by 1 where empty so neither the value nor its gradient becomes NaN.
    safe = jnp.where(count > 0, count, 1.0)
    return jnp.where(count > 0, masked_sum(x, mask, axis) / safe, 0.0)


def masked_var(x: Array, mask: Array, unbiased: bool = True) -> Array:
    """Variance of the masked entries over all axes; Bessel-corrected (n / (n-1)) when `unbiased`.

    Matches TRL's `masked_var`. With fewer than two entries the correction is skipped.
    """
    x, mask = fp32(x), fp32(mask)
    var = masked_mean(jnp.square(x - masked_mean(x, mask)), mask)
    if unbiased:
        n = jnp.sum(mask)
        var = var * jnp.where(n > 1, n / jnp.where(n > 1, n - 1, 1.0), 1.0)
    return var


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True) -> Array:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries; masked-out entries come back as 0.

    Used to whiten PPO advantages. With `shift_mean=False` the mean is added back (only the scale
    changes), as TRL does for rewards. Inside `jit` over a data-sharded batch the statistics are
    those of the whole global batch, not of one device's shard.
    """
    x, mask = fp32(x), fp32(mask)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ----------------------------------------------------------------------------- log-probs


def sequence_logps(logps: Array, mask: Array, average: bool = False) -> Array:
    """Per-sequence log-prob `[B]`: sum_t mask * logps, or the per-token mean when `average`.

    The sum is log pi(y | x) for DPO; the mean is the length-normalised form IPO usually uses.
    """
    if average:
        return masked_mean(logps, mask, axis=-1)
    return masked_sum(logps, mask, axis=-1)


def align_predictions(predictions: Array) -> Array:
    """`[B, T-1, ...]` values of the predictions of tokens 1..T-1 → `[B, T, ...]` aligned with
    the tokens they score; position 0 (no prediction) is 0. The one next-token shift."""
    return jnp.pad(predictions, [(0, 0), (1, 0)] + [(0, 0)] * (predictions.ndim - 2))


def shift_to_tokens(x: Array) -> Array:
    """Moves per-position values `[B, T, ...]` computed from logits onto the tokens they score.

    out[:, t] = x[:, t-1] for t >= 1 and out[:, 0] = 0: logits at position t-1 predict token t.
    """
    return align_predictions(x[:, :-1])


def logprobs_from_logits(logits: Array, tokens: Array) -> Array:
    """Per-token log-probs `[B, T]` in the convention above, from logits `[B, T, V]`.

    log p(tokens[t]) = logits[t-1, tokens[t]] - logsumexp(logits[t-1]). Gathering first and
    subtracting the logsumexp avoids materialising a full fp32 `[B, T, V]` log-softmax.
    """
    logits = fp32(logits[:, :-1])
    picked = jnp.take_along_axis(logits, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    return align_predictions(picked - jax.nn.logsumexp(logits, axis=-1))


def entropy_from_logits(logits: Array) -> Array:
    """Entropy H(p) = -sum_v p_v log p_v of softmax(logits) over the last axis: `[..., V] -> [...]`.

    No shift: entry [..., t] is the entropy of the distribution predicting token t+1 (use
    `shift_to_tokens` to align it with tokens).
    """
    logp = jax.nn.log_softmax(fp32(logits), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# ----------------------------------------------------------------------------- KL estimators


def kl_k1(logps: Array, ref_logps: Array) -> Array:
    """k1 = d = log pi - log pi_ref per token (unbiased for KL(pi || pi_ref) when y ~ pi)."""
    return fp32(logps) - fp32(ref_logps)


def kl_k2(logps: Array, ref_logps: Array) -> Array:
    """k2 = d^2 / 2 with d = log pi - log pi_ref per token (biased, low variance, >= 0)."""
    return 0.5 * jnp.square(kl_k1(logps, ref_logps))


def kl_k3(logps: Array, ref_logps: Array) -> Array:
    """k3 = (pi_ref/pi - 1) - log(pi_ref/pi) = exp(-d) - 1 + d per token (unbiased, >= 0)."""
    d = kl_k1(logps, ref_logps)
    # expm1 keeps precision when the policy is still close to the reference (d ~ 0).
    return jnp.expm1(-d) + d


KLEstimator = Callable[[Array, Array], Array]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
