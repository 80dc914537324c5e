"""Supervised fine-tuning loss: token-weighted negative log-likelihood of the response.

    loss = - sum_{b,t} m[b,t] * logps[b,t] / sum_{b,t} m[b,t]

Every response token in the batch weighs the same (a long answer counts more than a short one),
which is the usual LM convention and what HF's `CrossEntropyLoss(ignore_index=-100)` gives on one
batch. Across gradient-accumulation micro-batches the train step must weight each micro-batch by
its `tokens` metric to keep that property.
"""

import jax
import jax.numpy as jnp

from easyalign.losses.common import fp32, masked_mean

Array = jax.Array


def sft_loss(logps: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """Mean per-token NLL over the masked tokens of the batch.

    Args:
      logps: `[B, T]` per-token log-probs (`logprobs_from_logits` convention).
      mask: `[B, T]`, 1 on response tokens and the end of turn.

    Returns:
      (nll, {"nll", "tokens", "perplexity"}); perplexity = exp(nll) of this batch.
    """
    nll = masked_mean(-fp32(logps), mask)
    metrics = {"nll": nll, "tokens": jnp.sum(fp32(mask)), "perplexity": jnp.exp(nll)}
    return nll, metrics
