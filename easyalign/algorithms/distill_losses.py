"""Distillation losses wired to models: on-policy sequences, full-vocabulary divergences over
chunked logits, the sampled-token reverse-KL estimator, offline KD, reward weights.

Notation: x a prompt, y a response, p_S = π_θ the student, p_T the frozen teacher, m_t the
response mask (response tokens and the stop token that ends them), w_b a per-sequence weight.

Token-level divergence of a sequence (GKD, Agarwal et al. 2024), at every response position:

    d_t = D(p_T(·|x, y_<t), p_S(·|x, y_<t)),  D one of (`losses.distill`, logits / temperature)
        forward_kl   KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S)        mode-covering
        reverse_kl   KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T)        mode-seeking
        jsd          JSD(β) = β KL(p_T ‖ M) + (1 − β) KL(p_S ‖ M),  M = β p_T + (1 − β) p_S

computed chunk by chunk over the sequence from both models' hidden states (`token_divergence`):
only `[B, chunk, V]` logits exist at a time, never `[B, T, V]`.

On-policy objective (GKD's λ, `distill.lmbda`):

    L(θ) = λ E_{x, y ~ p_S(·|x)} [D̄(x, y)] + (1 − λ) E_{(x, y) ~ teacher data} [D̄(x, y)]

with the samples y treated as constants (no gradient through the sampling, as in GKD). Each
step is one or the other (distill.py's `MixedLoader`); a batch reduces as

    loss = Σ_b w_b Σ_t m_bt d_bt / Σ_b w_b Σ_t m_bt                 (`distill_loss`)

Sampled-token reverse KL (`divergence="sampled_reverse_kl"`). The sequence-level reverse KL
KL(p_S ‖ p_T)(x) = E_{y ~ p_S} Σ_t [log p_S(y_t|·) − log p_T(y_t|·)] has the score-function
gradient E_y Σ_t ∇log p_S(y_t|·) Σ_{t' ≥ t} [log p_S(y_t'|·) − log p_T(y_t'|·)]. Keeping only
t' = t (discount 0, as in Thinking Machines' "On-Policy Distillation", 2025) gives a per-token
advantage and a policy-gradient loss

    A_t = log p_T(y_t) − log p_S(y_t)            (stop-gradient)
    L = − Σ_t m_t w_b A_t ρ_t / Σ_t m_t w_b,     ρ_t = exp(log p_S(y_t) − sg[log p_S(y_t)]) = 1

(one update per sample: the ratio is exactly 1, so there is no clip to set, and
∇L = −mean_t A_t ∇log p_S(y_t)). It raises log p_S(y_t) where the teacher gives y_t more
probability than the student and lowers it where less. Biased (it ignores y_t's effect on later
tokens' KL), but of far lower variance than the full return, and it needs the teacher's log-prob
of the sampled tokens only. On teacher-data steps (λ < 1) no student sample exists, so those use
the teacher tokens' cross-entropy −log p_S(y_t), sequence-level KD.

Offline (`distill.mode="offline"`): sequence-level KD (SFT on the teacher's responses), plus the
KL to the stored top-k teacher log-probs when `topk_weight > 0`:

    d_t = −log p_S(y_t | x, y_<t) + topk_weight · Σ_k q_k (log q_k − log p_S(v_k)),
    q = softmax_k(stored top-k teacher log-probs), v_k their token ids (`topk_forward_kl`).

Dispatch: which of these trains a batch is looked up, not branched on. `MODES[mode](divergence)`
gives a run's `Terms`, one term for the student's samples and one for teacher data (on-policy:
`DIVERGENCE_TERMS[divergence]`); the two registries' names are the valid config values.

Reward weighting (`distill.reward_model`): r_b is the reward model's score of (x, y_b) (scalar
head at its read position, `reward.read_index`, of prompt + response), standardised over the
B' rows of the batch that have a response, and

    z_b = (r_b − mean r) / (std r + 1e-6),      w_b = B' · softmax_b(z_b / τ_r)    (0 for the rest)

so Σ_b w_b = B', equal scores give w_b = 1 (exactly the unweighted loss), τ_r → ∞ is uniform and
τ_r → 0 puts all weight on the best-scored sequence. Standardised first, so that τ_r means the
same whatever the reward model's scale (raw scores spread over ±5 would hand a whole batch to a
couple of rows); softmax rather than a clipped z, so weights stay positive (a divergence is
never maximised) with no clipping threshold to choose. Weights are normalised within each
micro-batch. Rows are different prompts, whose rewards are not comparable: a large weight
spread starves whole prompt kinds whose responses score low (refusals, "I don't know"), hence a
mild default τ_r.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from easyalign import losses
from easyalign.losses.distill import SAMPLED_REVERSE_KL
from easyalign.algorithms.reward import sequence_scores
from easyalign.model.scoring import fit_chunk, over_predictions, token_divergence, token_logprobs
from easyalign.sampler import SamplingMethod, generate

# Off-mask weight logit: finite, so that a batch without any response gives weights 0, not NaN.
_NO_ROW = -1e30
# Equal scores have std 0; the floor makes their z exactly 0 (weights exactly 1).
_STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class Wiring:
    """Static settings of the distillation loss, closed over by the jitted step.

    teacher / reward are graphdefs; their params arrive in the step's `frozen` dict under the
    same names. `teacher` is None in offline training (the teacher is read only by evaluation).
    Raises ValueError, listing the valid names, for a `mode` not in `MODES` or a `divergence`
    not in `DIVERGENCE_TERMS`.
    """

    mode: str
    divergence: str
    beta: float
    temperature: float
    sampling: SamplingMethod
    max_new_tokens: int
    stop_tokens: tuple[int, ...]
    pad_id: int
    packed: bool = False
    topk_weight: float = 0.0
    reward_temperature: float = 1.0
    teacher: Any = None
    reward: Any = None
    chunk: int | None = None      # logits chunk override; None = the models' `logits_chunk`

    def __post_init__(self):
        # Unknown names fail here, once, listing the valid ones, not while the step is traced.
        # Evaluation reads the divergence in both modes, so offline checks it too.
        losses.get(DIVERGENCE_TERMS, self.divergence, "distill.divergence")
        self.terms()

    def terms(self) -> Terms:
        """The training terms of this mode and divergence (`MODES`, `DIVERGENCE_TERMS`)."""
        return losses.get(MODES, self.mode, "distill.mode")(self.divergence)

    @property
    def full_vocab_divergence(self) -> str:
        """The divergence evaluated over the vocabulary (the sampled estimator's is reverse KL)."""
        return "reverse_kl" if self.divergence == SAMPLED_REVERSE_KL else self.divergence

    def divergence_fn(self):
        """`(student_logits, teacher_logits) -> [...]` per-token divergence."""
        fn = losses.get(losses.DIVERGENCES, self.full_vocab_divergence, "distill.divergence")
        return lambda s, t: fn(s, t, beta=self.beta, temperature=self.temperature)


# ----------------------------------------------------------------------------- sequences
def join_prompt_response(prompt_tokens, prompt_lengths, response, response_lengths, pad_id):
    """Right-padded `[B, P]` prompts + `[B, N]` responses → `[B, P + N]` sequences.

    Row b is prompt[:P_b] + response[:n_b] then padding. Returns `tokens`, `loss_mask` (1 on the
    response, stop token included) and `segment_ids` (1 on real tokens), the teacher-batch layout.
    """
    batch, width = prompt_tokens.shape
    length = width + response.shape[1]
    pos = jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))
    start = prompt_lengths[:, None]
    in_prompt = pos < start
    in_response = (pos >= start) & (pos < start + response_lengths[:, None])
    from_prompt = jnp.take_along_axis(prompt_tokens, jnp.minimum(pos, width - 1), axis=1)
    from_response = jnp.take_along_axis(response, jnp.clip(pos - start, 0, response.shape[1] - 1),
                                        axis=1)
    tokens = jnp.where(in_prompt, from_prompt, jnp.where(in_response, from_response, pad_id))
    return {"tokens": tokens.astype(jnp.int32), "loss_mask": in_response.astype(jnp.float32),
            "segment_ids": (in_prompt | in_response).astype(jnp.int32)}


def student_samples(graphdef, params, batch: dict, rng, w: Wiring) -> dict:
    """Sample the student on a prompt batch (inside the caller's jit) and join the sequences.

    The parameters are stop-gradient-ed: the samples are data, and the decode `while_loop` then
    carries no tangents (it could not be reverse-differentiated anyway).
    """
    # Padding rows of evaluation batches have prompt length 0; one token keeps them valid.
    lengths = jnp.maximum(batch["prompt_lengths"], 1)
    out = generate(graphdef, jax.lax.stop_gradient(params), batch["prompt_tokens"], lengths, rng,
                   max_new_tokens=w.max_new_tokens, method=w.sampling,
                   stop_tokens=w.stop_tokens, pad_id=w.pad_id)
    return join_prompt_response(batch["prompt_tokens"], lengths, out.tokens, out.lengths,
                                w.pad_id)


# ----------------------------------------------------------------------------- weights
def reward_weights(scores, present, temperature: float):
    """w_b = B' softmax(z_b / τ), z the scores standardised over the rows with a response
    (`present`); 0 for the other rows; no gradient."""
    scores, count = losses.fp32(scores), jnp.maximum(jnp.sum(present), 1)
    mean = jnp.sum(jnp.where(present, scores, 0.0)) / count
    std = jnp.sqrt(jnp.sum(jnp.where(present, (scores - mean) ** 2, 0.0)) / count)
    z = (scores - mean) / (std + _STD_FLOOR)
    weights = jax.nn.softmax(jnp.where(present, z / temperature, _NO_ROW)) * jnp.sum(present)
    return jax.lax.stop_gradient(jnp.where(present, weights, 0.0))


def sequence_weights(seq: dict, frozen: dict, w: Wiring):
    """Reward weights of the batch's sequences, or None when reward weighting is off."""
    if w.reward is None:
        return None
    reward_model = nnx.merge(w.reward, frozen["reward"])
    scores = sequence_scores(reward_model, seq["tokens"], seq["segment_ids"], {})
    return reward_weights(scores, jnp.sum(seq["loss_mask"], axis=1) > 0, w.reward_temperature)


# ----------------------------------------------------------------------------- per-token terms
def teacher_hidden(frozen: dict, tokens, inputs: dict, w: Wiring):
    teacher = nnx.merge(w.teacher, frozen["teacher"])
    hidden, _ = teacher.trunk(tokens, **inputs)
    return teacher, jax.lax.stop_gradient(hidden)


def full_vocab_divergence(student, s_hidden, teacher, t_hidden, w: Wiring):
    """`[B, T]` divergence per predicted token, from chunked logits of both models."""
    return token_divergence(student, s_hidden, teacher, t_hidden, w.divergence_fn(),
                            chunk=w.chunk)


def sampled_reverse_kl(student, s_hidden, teacher, t_hidden, tokens, mask, weights,
                       chunk=None):
    """The sampled-token reverse-KL policy-gradient loss (module docstring)."""
    s_logps = token_logprobs(student, s_hidden, tokens, chunk=chunk)
    t_logps = token_logprobs(teacher, t_hidden, tokens, chunk=chunk)
    advantages = losses.sampled_token_reverse_kl_advantage(s_logps, t_logps)
    token_weights = mask if weights is None else mask * weights[:, None]
    # One update per sample: the importance ratio p_S / p_S,old is exactly 1 (a clip would never
    # act), and its gradient is ∇ log p_S — the plain policy gradient of the advantages.
    ratio = jnp.exp(s_logps - jax.lax.stop_gradient(s_logps))
    loss = losses.masked_mean(-losses.fp32(advantages) * ratio, token_weights)
    return loss, losses.masked_mean(-advantages, mask)


def nll_and_topk_kl(student, s_hidden, batch: dict, w: Wiring):
    """Per-token `−log p_S(y_t)` and top-k KL `[B, T]` each, from one chunked pass of logits."""

    def fn(h, target, ids, logps):
        logits = student.logits(h)
        # The cross-entropy is the student's own likelihood (temperature 1), as in SFT.
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        topk = losses.topk_forward_kl(logits, logps, ids, temperature=w.temperature)
        return jnp.stack([-picked, topk], axis=-1)

    # Row t of the stored top-k predicts token t, from the hidden state at t − 1.
    chunk = fit_chunk(w.chunk or student.config.logits_chunk, s_hidden.shape[0],
                      student.config.vocab_size, tensors=3)
    out = over_predictions(fn, [s_hidden], [batch["tokens"], batch["teacher_topk_ids"],
                                            batch["teacher_topk_logprobs"]], chunk=chunk)
    return out[..., 0], out[..., 1]


# ----------------------------------------------------------------------------- training terms
# A term trains one batch: `term(student, s_hidden, seq, inputs, weights, frozen, w) -> (loss,
# divergence, metrics)`, with `seq` the sampled sequences or the teacher-data batch (`tokens`,
# `loss_mask`, ...), `inputs` the trunk's packing inputs, `weights` `[B]` or None; divergence is
# the unweighted token mean of the per-token term, metrics the term's own extra metrics.
Term = Callable[..., tuple[jax.Array, jax.Array, dict]]


def full_vocab_term(student, s_hidden, seq, inputs, weights, frozen, w: Wiring):
    """`w.divergence` (forward_kl | reverse_kl | jsd) to the live teacher over the vocabulary."""
    teacher, t_hidden = teacher_hidden(frozen, seq["tokens"], inputs, w)
    per_token = full_vocab_divergence(student, s_hidden, teacher, t_hidden, w)
    loss, m = losses.distill_loss(per_token, seq["loss_mask"], weights)
    return loss, m["divergence"], {}


def sampled_reverse_kl_term(student, s_hidden, seq, inputs, weights, frozen, w: Wiring):
    """The sampled-token reverse-KL policy gradient on the student's own samples."""
    teacher, t_hidden = teacher_hidden(frozen, seq["tokens"], inputs, w)
    loss, divergence = sampled_reverse_kl(student, s_hidden, teacher, t_hidden, seq["tokens"],
                                          seq["loss_mask"], weights, w.chunk)
    return loss, divergence, {}


def teacher_nll_term(student, s_hidden, seq, inputs, weights, frozen, w: Wiring):
    """−log p_S(y_t) of the teacher's tokens: sequence-level KD (no teacher forward)."""
    del inputs, frozen
    nll = -token_logprobs(student, s_hidden, seq["tokens"], chunk=w.chunk)
    loss, m = losses.distill_loss(nll, seq["loss_mask"], weights)
    return loss, m["divergence"], {}


def offline_term(student, s_hidden, seq, inputs, weights, frozen, w: Wiring):
    """Offline KD: −log p_S(y_t), + topk_weight × the top-k KL when > 0; metrics nll, topk_kl."""
    if not w.topk_weight:  # the divergence is the NLL itself
        loss, nll, _ = teacher_nll_term(student, s_hidden, seq, inputs, weights, frozen, w)
        return loss, nll, {"nll": nll}
    mask = seq["loss_mask"]
    nll, topk = nll_and_topk_kl(student, s_hidden, seq, w)
    loss, m = losses.distill_loss(nll + w.topk_weight * topk, mask, weights)
    return loss, m["divergence"], {"nll": losses.masked_mean(nll, mask),
                                   "topk_kl": losses.masked_mean(topk, mask)}


@dataclasses.dataclass(frozen=True)
class Terms:
    """What trains each kind of batch: the student's samples (on-policy steps) or teacher data
    (offline, and the 1 − λ steps of on-policy). None: that mode never gets such a batch."""

    on_samples: Term | None
    on_teacher_data: Term


# `distill.divergence` → its terms in on-policy training. The names are `losses.distill`'s
# DIVERGENCE_NAMES and DISTILL_MODES: config_check validates against those, as it cannot import
# this module (algorithms imports config_check; test_layering forbids the cycle).
DIVERGENCE_TERMS: dict[str, Terms] = {
    **{name: Terms(full_vocab_term, full_vocab_term) for name in losses.DIVERGENCES},
    # The estimator needs the student's own samples; teacher data gets sequence-level KD.
    SAMPLED_REVERSE_KL: Terms(sampled_reverse_kl_term, teacher_nll_term),
}
# Offline training never samples nor runs the teacher: the divergence is evaluation's alone.
OFFLINE_TERMS = Terms(on_samples=None, on_teacher_data=offline_term)
# `distill.mode` → `(distill.divergence) -> Terms`.
MODES: dict[str, Callable[[str], Terms]] = {
    "on_policy": lambda divergence: losses.get(DIVERGENCE_TERMS, divergence, "distill.divergence"),
    "offline": lambda divergence: OFFLINE_TERMS,
}


# ----------------------------------------------------------------------------- the loss
def make_loss(graphdef, w: Wiring):
    """`loss_fn(params, batch, rng, frozen)` for the generic step.

    A batch with `prompt_tokens` is an on-policy step (sample, then score); one with `tokens`
    is teacher data; `w.terms()` says which term trains each. `frozen` = {"teacher": params |
    None, "reward": params | None}. Metrics: divergence (unweighted token mean of the training
    term), length (response tokens per row), on_policy (1 for a sampled batch), weight_max (the
    largest sequence weight; 1 unweighted), and loss_weight Σ w m (so accumulation keeps the
    weighted token mean), plus the term's own (offline: nll, topk_kl).
    """
    terms = w.terms()

    def loss_fn(params, batch, rng, frozen):
        student = nnx.merge(graphdef, params)
        on_policy = "prompt_tokens" in batch
        if on_policy:
            seq, inputs = student_samples(graphdef, params, batch, rng, w), {}
        else:
            seq = batch
            inputs = ({"positions": batch["positions"], "segment_ids": batch["segment_ids"]}
                      if w.packed else {})
        mask = seq["loss_mask"]
        weights = sequence_weights(seq, frozen, w)
        s_hidden, _, router_loss = student.trunk_with_router_loss(seq["tokens"], **inputs)
        term = terms.on_samples if on_policy else terms.on_teacher_data
        loss, divergence, metrics = term(student, s_hidden, seq, inputs, weights, frozen, w)
        present = jnp.sum(mask, axis=1) > 0
        row_weights = present.astype(jnp.float32) if weights is None else weights
        return losses.add_router_loss(loss, dict(
            metrics, divergence=divergence,
            length=jnp.sum(mask) / jnp.maximum(jnp.sum(present), 1),
            on_policy=jnp.float32(on_policy),
            # The mean weight is 1 by construction; the largest one shows how peaked they are.
            weight_max=jnp.max(row_weights),
            loss_weight=jnp.sum(mask * row_weights[:, None])),
            router_loss, student.config.num_experts)

    return loss_fn


def make_eval_metrics(graphdef, w: Wiring, rng):
    """Held-out `{name_sum, name_count}` per prompt batch: the student samples (fixed `rng`, the
    training sampling method), the teacher scores them, and the full-vocabulary divergence is
    summed over their tokens; `length` is the mean response length (stop token included)."""

    def metric_fn(params, batch, frozen):
        student = nnx.merge(graphdef, params)
        seq = student_samples(graphdef, params, batch, rng, w)
        valid = batch["valid"].astype(jnp.float32)
        mask = seq["loss_mask"] * valid[:, None]
        s_hidden, _ = student.trunk(seq["tokens"])
        teacher, t_hidden = teacher_hidden(frozen, seq["tokens"], {}, w)
        per_token = full_vocab_divergence(student, s_hidden, teacher, t_hidden, w)
        return {"divergence_sum": jnp.sum(per_token * mask), "divergence_count": jnp.sum(mask),
                "length_sum": jnp.sum(mask), "length_count": jnp.sum(valid)}

    return metric_fn
