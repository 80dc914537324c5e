"""Direct Preference Optimisation and its variants (sigmoid / IPO / hinge), TRL conventions.

Inputs are sequence log-probs `[B]` (sum over response tokens, `sequence_logps`) of the chosen y_w
and rejected y_l responses under the policy pi and the frozen reference pi_ref. With the log-ratio
difference

    z = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))       (TRL's "logits")
    h = beta * z

the per-pair losses are

    sigmoid  -(1 - eps) log sigma(h) - eps log sigma(-h)     Rafailov et al. 2023; eps > 0 is the
                                                             conservative DPO / label smoothing of
                                                             TRL (labels flipped with prob. eps)
    ipo      (z - 1 / (2 beta))^2  = (h/beta - 1/(2 beta))^2  Azar et al. 2023; beta is IPO's tau
    hinge    max(0, 1 - h)                                   SLiC (Zhao et al. 2023)

and the loss is their mean over the batch. IPO is defined on length-averaged log-likelihoods
(Azar et al. 2023; TRL and torchtune divide by the response lengths for "ipo"), which
`LENGTH_AVERAGED_DPO_LOSSES` records for callers choosing a default; this module takes whatever
the caller passes (`sequence_logps(..., average=True)` gives the average).

The implicit rewards are r(y) = beta (log pi(y) - log pi_ref(y)); the metrics report them.

`DPOSettings` holds a run's choices (the variant, beta, eps, and the two the DPO phase adds
around this loss: length averaging and the RPO NLL weight), built once from the `dpo` config
block and closed over by the jitted step.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from easyalign.losses.common import fp32, get

Array = jax.Array


def dpo_sigmoid(z: Array, beta: float, label_smoothing: float) -> Array:
    """-(1 - eps) log sigma(beta z) - eps log sigma(-beta z), per pair."""
    h = beta * z
    eps = label_smoothing
    return -(1.0 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)


def dpo_ipo(z: Array, beta: float, label_smoothing: float) -> Array:
    """(z - 1/(2 beta))^2, per pair: regresses the log-ratio gap onto 1/(2 beta)."""
    del label_smoothing  # dpo_loss rejects smoothing for this variant.
    return jnp.square(z - 1.0 / (2.0 * beta))


def dpo_hinge(z: Array, beta: float, label_smoothing: float) -> Array:
    """max(0, 1 - beta z), per pair."""
    del label_smoothing  # dpo_loss rejects smoothing for this variant.
    return jax.nn.relu(1.0 - beta * z)


DPOVariant = Callable[[Array, float, float], Array]

DPO_LOSSES: dict[str, DPOVariant] = {"sigmoid": dpo_sigmoid, "ipo": dpo_ipo, "hinge": dpo_hinge}
# The variants defined on length-averaged sequence log-probs rather than sums.
LENGTH_AVERAGED_DPO_LOSSES = frozenset({"ipo"})


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    """The static settings of a DPO run's loss: frozen, so hashable (safe as a jit static
    argument) and never changed under a compiled step, unlike the mutable config block.

      beta             β > 0 (IPO's τ)
      loss_type        a `DPO_LOSSES` name
      label_smoothing  ε of conservative DPO (sigmoid only)
      average_logps    sequence log-probs averaged over the response tokens (True) or summed
      sft_weight       α ≥ 0 of the NLL anchor on the chosen responses (RPO; `algorithms.dpo`)

    Raises ValueError (one line, named as the `dpo.*` config key) for an unknown loss_type
    (listing the valid ones), beta ≤ 0, sft_weight < 0, or label_smoothing with another variant.
    """

    beta: float
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    average_logps: bool = False
    sft_weight: float = 0.0

    def __post_init__(self):
        get(DPO_LOSSES, self.loss_type, "dpo.loss_type")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"dpo.sft_weight must be >= 0, got {self.sft_weight}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"dpo.label_smoothing applies only to loss_type 'sigmoid', "
                             f"not {self.loss_type!r}")

    @classmethod
    def from_config(cls, block) -> "DPOSettings":
        """From the `dpo` config block; `average_logps=None` there means the loss's own
        convention (True for the `LENGTH_AVERAGED_DPO_LOSSES`, False otherwise)."""
        average = block.average_logps
        if average is None:
            average = block.loss_type in LENGTH_AVERAGED_DPO_LOSSES
        return cls(beta=block.beta, loss_type=block.loss_type,
                   label_smoothing=block.label_smoothing, average_logps=bool(average),
                   sft_weight=block.sft_weight)


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """Mean DPO-family loss over `[B]` pairs, dispatched through `DPO_LOSSES[loss_type]`.

    Returns:
      (loss, metrics) with metrics
        rewards/chosen, rewards/rejected   mean implicit rewards beta (log pi - log pi_ref)
        rewards/accuracy                   fraction of pairs with chosen reward > rejected reward
        rewards/margin                     mean(chosen reward - rejected reward)
        log_ratio                          mean of log pi - log pi_ref over chosen and rejected
        logps/chosen, logps/rejected       mean policy sequence log-probs
    """
    variant = get(DPO_LOSSES, loss_type, "DPO loss_type")
    if label_smoothing and loss_type != "sigmoid":
        # Silently ignoring it would run a different experiment than the config says.
        raise ValueError(f"label_smoothing applies only to loss_type 'sigmoid', not {loss_type!r}")

    pi_w, pi_l = fp32(policy_chosen_logps), fp32(policy_rejected_logps)
    ratio_w = pi_w - fp32(ref_chosen_logps)
    ratio_l = pi_l - fp32(ref_rejected_logps)
    loss = jnp.mean(variant(ratio_w - ratio_l, beta, label_smoothing))

    reward_w, reward_l = beta * ratio_w, beta * ratio_l
    metrics = {
        "rewards/chosen": jnp.mean(reward_w),
        "rewards/rejected": jnp.mean(reward_l),
        "rewards/accuracy": jnp.mean(fp32(reward_w > reward_l)),
        "rewards/margin": jnp.mean(reward_w - reward_l),
        "log_ratio": 0.5 * (jnp.mean(ratio_w) + jnp.mean(ratio_l)),
        "logps/chosen": jnp.mean(pi_w),
        "logps/rejected": jnp.mean(pi_l),
    }
    return loss, metrics
