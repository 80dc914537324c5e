"""Pure, typed, fp32 loss functions and their registries.

Conventions (details and formulas in each module's docstring):
  * token arrays `[B, T]`; logps[b, t] = log p(tokens[b, t] | tokens[b, <t]), logps[:, 0] = 0;
  * masks `[B, T]`, 1 on response tokens and the end of turn;
  * every loss computes in float32 and returns `(loss_scalar, metrics_dict_of_scalars)`;
  * variants are registries (plain dicts) looked up with `get(registry, name, what)`, which raises
    `ValueError` listing the valid names: DPO_LOSSES, KL_ESTIMATORS, KL_CONTROLLERS,
    DIVERGENCES;
  * a run's static choices are frozen dataclasses built once from its config block
    (DPOSettings, PPOSettings, GRPOSettings), so a jitted loss never closes over a mutable ConfigDict.
"""

from easyalign.losses.common import (
    KL_ESTIMATORS,
    add_router_loss,
    entropy_from_logits,
    fp32,
    get,
    kl_k1,
    kl_k2,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sequence_logps,
    shift_to_tokens,
)
from easyalign.losses.distill import (
    DIVERGENCES,
    distill_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sampled_token_reverse_kl_advantage,
    topk_forward_kl,
)
from easyalign.losses.dpo import (DPO_LOSSES, LENGTH_AVERAGED_DPO_LOSSES, DPOSettings, dpo_hinge,
                                  dpo_ipo, dpo_loss, dpo_sigmoid)
from easyalign.losses.grpo import GRPOSettings
from easyalign.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    KL_CONTROLLERS,
    PPOSettings,
    entropy_bonus,
    gae,
    kl_penalty_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from easyalign.losses.reward import pairwise_reward_loss
from easyalign.losses.sft import sft_loss

__all__ = [
    "AdaptiveKLController",
    "DIVERGENCES",
    "DPO_LOSSES",
    "DPOSettings",
    "LENGTH_AVERAGED_DPO_LOSSES",
    "FixedKLController",
    "GRPOSettings",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS", "add_router_loss",
    "PPOSettings",
    "distill_loss",
    "dpo_hinge",
    "dpo_ipo",
    "dpo_loss",
    "dpo_sigmoid",
    "entropy_bonus",
    "entropy_from_logits",
    "forward_kl",
    "fp32",
    "gae",
    "generalized_jsd",
    "get",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty_rewards",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pairwise_reward_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reverse_kl",
    "sampled_token_reverse_kl_advantage",
    "sequence_logps",
    "sft_loss",
    "shift_to_tokens",
    "topk_forward_kl",
]
