"""Pairwise (Bradley-Terry) reward-model loss.

The reward model scores a whole sequence with one scalar r(x, y). Under Bradley-Terry,
P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)), so the negative log-likelihood of the labels is

    loss = mean_b  -log sigma(r_w[b] - r_l[b] - margin[b])

`margin` (optional, [B]) is the Llama-2 / TRL margin: pairs rated as more clearly different must be
separated by more. `log_sigmoid` is used instead of log(sigmoid(.)) so large negative differences
give a finite, linear loss instead of log(0).
"""

import jax
import jax.numpy as jnp

from easyalign.losses.common import fp32

Array = jax.Array


def pairwise_reward_loss(
    r_chosen: Array, r_rejected: Array, margin: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Bradley-Terry loss on `[B]` chosen/rejected rewards.

    Returns:
      (loss, {"accuracy", "reward_margin", "reward_chosen", "reward_rejected"}): accuracy is the
      fraction of pairs with r_w > r_l (ties count as wrong), reward_margin = mean(r_w - r_l).
    """
    r_chosen, r_rejected = fp32(r_chosen), fp32(r_rejected)
    diff = r_chosen - r_rejected
    target = diff if margin is None else diff - fp32(margin)
    loss = -jnp.mean(jax.nn.log_sigmoid(target))
    metrics = {
        "accuracy": jnp.mean(fp32(diff > 0)),
        "reward_margin": jnp.mean(diff),
        "reward_chosen": jnp.mean(r_chosen),
        "reward_rejected": jnp.mean(r_rejected),
    }
    return loss, metrics
