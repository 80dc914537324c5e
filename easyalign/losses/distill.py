"""Distillation divergences between a student p_S and a teacher p_T over the vocabulary.

Per token, from logits `[..., V]` (fp32, divided by `temperature` first; no T^2 factor, as in
TRL's GKD — scale the loss yourself if you want Hinton's gradient magnitude):

    forward_kl       KL(p_T || p_S) = sum_v p_T (log p_T - log p_S)      mode-covering (classic KD)
    reverse_kl       KL(p_S || p_T) = sum_v p_S (log p_S - log p_T)      mode-seeking
    generalized_jsd  JSD(beta) = beta KL(p_T || m) + (1 - beta) KL(p_S || m),
                     m = beta p_T + (1 - beta) p_S

JSD(beta) is GKD's generalised JSD (Agarwal et al. 2024, eq. 1) with TRL's `generalized_jsd_loss`
convention: beta weighs the teacher in the mixture. It tends to 0 at both ends (m collapses onto
one distribution), but JSD(beta) / beta -> KL(p_T || p_S) as beta -> 0 and
JSD(beta) / (1 - beta) -> KL(p_S || p_T) as beta -> 1; so, like TRL, beta = 0 *is* forward KL and
beta = 1 *is* reverse KL, computed exactly by those branches. The mixture is formed in log space,
log m = logaddexp(log p_T + log beta, log p_S + log(1 - beta)), so no probability underflows.

Each divergence returns per-token values `[...]` without reduction, so the caller can chunk over
the sequence (a `[B, T, V]` fp32 array is the largest thing in distillation) and reduce with
`distill_loss`. `DIVERGENCES` holds them under one signature `(s_logits, t_logits, *, beta,
temperature)`; only "jsd" uses beta.

Offline KD against stored teacher top-k log-probs (`topk_forward_kl`): the teacher is renormalised
over its K stored tokens, q_k = softmax_k(log p_T(v_k) / T), and compared with the student's full
softmax at those tokens:

    sum_k q_k (log q_k - log p_S(v_k))  =  KL(q || p_S / Z) - log Z  >= 0,   Z = sum_k p_S(v_k)

so it is 0 only when the student puts all its mass on the top-k set, distributed as q.
(Renormalising the student too would let it keep arbitrary mass outside the teacher's top-k at no
cost.)

On-policy distillation (`sampled_token_reverse_kl_advantage`): tokens y_t ~ p_S; the per-token
single-sample estimate of the reverse KL is log p_S(y_t) - log p_T(y_t), and its negative,

    A_t = -(log p_S(y_t) - log p_T(y_t)) = log p_T(y_t) - log p_S(y_t),

used as a per-token advantage (no discounting) in a policy-gradient update, e.g. as `advantages`
of `ppo_policy_loss`, minimises the reverse KL (Agarwal et al. 2024; Thinking Machines, "On-Policy
Distillation", 2025). It needs only the teacher's log-prob of the sampled tokens, not its logits.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from easyalign.losses.common import fp32, masked_mean

Array = jax.Array


def _log_softmax(logits: Array, temperature: float) -> Array:
    return jax.nn.log_softmax(fp32(logits) / temperature, axis=-1)


def _kl(logp: Array, logq: Array) -> Array:
    """sum_v p (log p - log q) over the last axis from log-probs, with 0 log 0 = 0.

    The `where` keeps -inf logits (masked or padded vocabulary entries) from making 0 * inf = NaN
    in the value or the gradient.
    """
    p = jnp.exp(logp)
    diff = jnp.where(p > 0, logp - logq, 0.0)
    return jnp.sum(p * diff, axis=-1)


def forward_kl(student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0) -> Array:
    """KL(p_T || p_S) per token: `[..., V] -> [...]`."""
    return _kl(_log_softmax(teacher_logits, temperature), _log_softmax(student_logits, temperature))


def reverse_kl(student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0) -> Array:
    """KL(p_S || p_T) per token: `[..., V] -> [...]`."""
    return _kl(_log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature))


def generalized_jsd(
    student_logits: Array, teacher_logits: Array, *, beta: float = 0.5, temperature: float = 1.0
) -> Array:
    """JSD(beta) = beta KL(p_T || m) + (1 - beta) KL(p_S || m), m = beta p_T + (1 - beta) p_S.

    beta = 0 is forward KL(p_T || p_S) and beta = 1 reverse KL(p_S || p_T), exactly (see module
    docstring). JSD(0.5) is the symmetric Jensen-Shannon divergence, bounded by log 2.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"JSD beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature)
    log_s = _log_softmax(student_logits, temperature)
    log_t = _log_softmax(teacher_logits, temperature)
    log_m = _log_mixture(log_t + jnp.log(beta), log_s + jnp.log1p(-beta))
    return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def _log_mixture(a: Array, b: Array) -> Array:
    """log(exp(a) + exp(b)), -inf where both are -inf, with finite gradients there too.

    `logaddexp(-inf, -inf)` has a NaN gradient; an entry absent from both distributions (a masked
    vocabulary slot) must instead contribute nothing.
    """
    present = (a > -jnp.inf) | (b > -jnp.inf)
    safe = jnp.logaddexp(jnp.where(present, a, 0.0), jnp.where(present, b, 0.0))
    return jnp.where(present, safe, -jnp.inf)


def topk_forward_kl(
    student_logits: Array,
    teacher_topk_logps: Array,
    teacher_topk_ids: Array,
    *,
    temperature: float = 1.0,
) -> Array:
    """Forward KL against the teacher renormalised over its stored top-k tokens, per token.

    Args:
      student_logits: `[..., V]`.
      teacher_topk_logps: `[..., K]` teacher log-probs (full-vocabulary normalised or not: they are
        renormalised over K here).
      teacher_topk_ids: `[..., K]` vocabulary ids of those log-probs.

    Returns:
      `[...]` sum_k q_k (log q_k - log p_S(v_k)), q = softmax_k(teacher_topk_logps / T); >= 0.
    """
    log_q = _log_softmax(teacher_topk_logps, temperature)
    log_s = _log_softmax(student_logits, temperature)
    log_s_topk = jnp.take_along_axis(log_s, teacher_topk_ids.astype(jnp.int32), axis=-1)
    return _kl(log_q, log_s_topk)


def sampled_token_reverse_kl_advantage(student_logps: Array, teacher_logps: Array) -> Array:
    """Per-token advantage log p_T(y_t) - log p_S(y_t) `[B, T]` for on-policy distillation.

    Both inputs are per-token log-probs of the student's sampled tokens (`logprobs_from_logits`
    convention). The result is an advantage, a constant of the update, so its gradient is stopped.
    Off-mask entries are meaningless: the policy loss masks them.
    """
    return jax.lax.stop_gradient(fp32(teacher_logps) - fp32(student_logps))


def distill_loss(
    per_token: Array, mask: Array, weights: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Reduces a per-token divergence `[B, T]` to a scalar: (weighted) mean over masked tokens.

        loss = sum_{b,t} w_b m_bt d_bt / sum_{b,t} w_b m_bt

    `weights` `[B]` (e.g. reward weighting of teacher samples) re-weigh whole sequences; their
    overall scale cancels. Without weights this is the plain token mean.

    Returns:
      (loss, {"divergence", "tokens"}): divergence is the unweighted masked token mean.
    """
    mask = fp32(mask)
    token_weights = mask if weights is None else mask * fp32(weights)[:, None]
    loss = masked_mean(per_token, token_weights)
    return loss, {"divergence": masked_mean(per_token, mask), "tokens": jnp.sum(mask)}


Divergence = Callable[..., Array]

# One call signature for every entry: fn(student_logits, teacher_logits, *, beta, temperature).
DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": lambda s, t, *, beta, temperature: forward_kl(s, t, temperature=temperature),
    "reverse_kl": lambda s, t, *, beta, temperature: reverse_kl(s, t, temperature=temperature),
    "jsd": generalized_jsd,
}
# The sampled-token estimator of reverse KL (on-policy only: it needs the student's own samples).
SAMPLED_REVERSE_KL = "sampled_reverse_kl"
DIVERGENCE_NAMES = (*DIVERGENCES, SAMPLED_REVERSE_KL)  # every `distill.divergence` value
DISTILL_MODES = ("on_policy", "offline")  # student samples (λ-mixed) | teacher data only
