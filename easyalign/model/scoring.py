"""Per-token quantities from hidden states without materialising `[B, T, vocab]` logits.

With a 128K vocabulary, fp32 logits of a 4×2048 batch are 4 GB, and their gradient as much
again. Every loss therefore goes through `chunked`: the sequence is cut into chunks of
`config.logits_chunk`, logits are computed chunk by chunk inside `jax.checkpoint` (so the
backward pass recomputes each chunk's logits instead of storing them), and only per-token
results `[B, T]` survive. A chunk as long as the sequence skips the recomputation (faster,
when memory allows: the H100 benchmark uses 2048).

Convention (see `easyalign.losses`): `logps[b, t] = log p(tokens[b, t] | tokens[b, <t])`,
read off the hidden state at t−1; position 0 has no prediction and is 0.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from easyalign import sharding
from easyalign.losses.common import align_predictions

DEFAULT_CHUNK = 512  # = ModelConfig.logits_chunk's default
# The float32 logits a loss may hold at once per device: at least this many bytes, and a
# `1 / LOGITS_MEMORY_SHARE` of the device's memory where that is more (`logits_budget`).
LOGITS_BUDGET_BYTES = 8 * 2**30
LOGITS_MEMORY_SHARE = 6


def local_device_memory() -> int | None:
    """Bytes this process's first device may allocate (`memory_stats()["bytes_limit"]`: the
    GPU allocator's limit), None where the device does not say (the CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 — a backend without memory statistics
        return None
    return (stats or {}).get("bytes_limit")


def logits_budget(device_memory: int | None = None) -> int:
    """The bytes of float32 logits a loss may hold at once on one device of `device_memory`
    bytes (default: this process's, `local_device_memory`): `LOGITS_BUDGET_BYTES`, or a
    `1 / LOGITS_MEMORY_SHARE` of the device where that is more. The logits are a small
    model's largest activation, and a budget they do not fit in costs a recomputation of
    the vocabulary projection in the backward pass (`chunked`): measured at the GRPO
    benchmark's shape (64 rows × 256 responses × 128K vocabulary, two float32 tensors =
    16.8 GB) on an H200, one chunk instead of two recomputed ones took 29 ms off a 0.74 s
    iteration for 4.2 GiB more peak memory."""
    if device_memory is None:
        device_memory = local_device_memory()
    return max(LOGITS_BUDGET_BYTES, (device_memory or 0) // LOGITS_MEMORY_SHARE)


def fit_chunk(requested: int, batch: int, vocab: int, tensors: int = 1,
              shards: int | None = None, device_memory: int | None = None) -> int:
    """The chunk length: `requested`, shortened so that `tensors` float32 `[rows, chunk, vocab]`
    arrays stay within `logits_budget(device_memory)` per device (an on-policy batch of 64
    rows must not hold 64 × 512 × 128K logits several times over).

    `batch` is the global batch seen while tracing; each device holds `rows = batch / shards`
    of it under the current mesh. (Budgeting the global batch chunked — and recomputed — the
    logits of a 4-GPU FSDP step whose per-device batch fits in one chunk.) A batch the mesh
    cannot split evenly is budgeted whole: it may be replicated. `shards` and `device_memory`
    override the current mesh's batch split and this process's device (`easyalign doctor`
    plans for a mesh and devices it does not build).
    """
    shards = sharding.batch_shards() if shards is None else shards
    rows = batch // shards if batch % shards == 0 else batch
    budget = logits_budget(device_memory)
    return max(1, min(requested, budget // (tensors * rows * vocab * 4)))


@jax.custom_vjp
def picked_logprob(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[target] = logits[target] − logsumexp(logits), in float32.

    The hand-written backward, g · (onehot(target) − softmax(logits)), is one elementwise pass
    over the logits; autodiff would add a scatter of the gather's cotangent into a zero
    `[..., V]` array and a separate softmax pass.
    """
    return _picked_forward(logits, targets)[0]


def _picked_forward(logits, targets):
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - lse, lse


def _picked_fwd(logits, targets):
    out, lse = _picked_forward(logits, targets)
    return out, (logits, targets, lse)


def _picked_bwd(residuals, g):
    logits, targets, lse = residuals
    onehot = jnp.arange(logits.shape[-1]) == targets[..., None]
    grad = g[..., None] * (onehot.astype(logits.dtype) - jnp.exp(logits - lse[..., None]))
    return grad, None


picked_logprob.defvjp(_picked_fwd, _picked_bwd)


@jax.custom_vjp
def picked_logprob_and_entropy(logits: jax.Array, targets: jax.Array
                               ) -> tuple[jax.Array, jax.Array]:
    """`(log softmax(logits)[target], H)` in float32, H = −Σ_v p_v log p_v the entropy.

    Forward: reductions over the logits alone, two passes — the row max m, then together
    s = Σ_v e^(z_v − m) and t = Σ_v e^(z_v − m)(z_v − m) (sibling reductions XLA fuses into
    one read) — and the picked logit; lse = m + log s and H = log s − t / s (from
    H = lse − Σ p z). No `[..., V]` log-softmax array beside the logits, and one read of the
    logits fewer than H taken from the log-softmax: measured on an H200 at the GRPO
    benchmark's shape (64 × 256 × 128K float32 logits), the forward's reductions took 4.3 ms
    instead of 5.8 ms, in scoring and in the update alike (perf-notes 45). Backward, one
    elementwise pass as `picked_logprob`'s: with p = softmax(z), ∂ log p_y/∂z = onehot(y) − p and
    ∂H/∂z = −p (log p + H), so

        ∇z = g_y · onehot(y) − p · (g_y + g_H · (z − lse + H))

    where autodiff would keep the log-softmax, its exponent and their cotangents (several
    `[..., V]` float32 arrays) alive together.
    """
    return _picked_entropy_forward(logits, targets)[0]


def _picked_entropy_forward(logits, targets):
    top = jnp.max(logits, axis=-1, keepdims=True)
    shifted = logits - top
    weights = jnp.exp(shifted)
    total = jnp.sum(weights, axis=-1)
    # A −inf logit has weight 0: its term is 0 (not 0 · −inf).
    weighted = jnp.sum(jnp.where(weights > 0, weights * shifted, 0.0), axis=-1)
    log_total = jnp.log(total)
    lse = top[..., 0] + log_total
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    entropy = log_total - weighted / total
    return (picked - lse, entropy), (lse, entropy)


def _picked_entropy_fwd(logits, targets):
    out, (lse, entropy) = _picked_entropy_forward(logits, targets)
    return out, (logits, targets, lse, entropy)


def _picked_entropy_bwd(residuals, cotangents):
    logits, targets, lse, entropy = residuals
    g_picked, g_entropy = cotangents
    logp = logits - lse[..., None]
    onehot = jnp.arange(logits.shape[-1]) == targets[..., None]
    grad = (g_picked[..., None] * onehot.astype(logits.dtype)
            - jnp.exp(logp) * (g_picked[..., None]
                               + g_entropy[..., None] * (logp + entropy[..., None])))
    return grad, None


picked_logprob_and_entropy.defvjp(_picked_entropy_fwd, _picked_entropy_bwd)


def chunked(fn: Callable[..., jax.Array], *arrays: jax.Array, chunk: int = DEFAULT_CHUNK
            ) -> jax.Array:
    """Apply `fn(*chunks) -> [B, c, ...]` over length-chunks of `[B, L, ...]` arrays → `[B, L, ...]`.

    `fn` runs under `jax.checkpoint`: its internals (e.g. a chunk's logits) are recomputed in
    the backward pass rather than kept alive across the whole sequence.
    """
    length = arrays[0].shape[1]
    if length <= chunk:
        return fn(*arrays)
    n = -(-length // chunk)
    pad = n * chunk - length

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((x.shape[0], n, chunk) + x.shape[2:]), 1, 0)

    out = jax.lax.map(lambda xs: jax.checkpoint(fn)(*xs), tuple(split(a) for a in arrays))
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape((out.shape[0], n * chunk) + out.shape[3:])[:, :length]


class Span(NamedTuple):
    """The token columns a score is needed at: `starts[b] + j` for j in [0, width) of row b.

    `starts` `[B]` int (≥ 1: column 0 has no prediction), `width` static. An RL completion
    (prompt of P_b tokens, then at most N response tokens) is `Span(P_b, N)`: the LM head then
    runs on B·N positions instead of B·T — the prompt's logits are never needed.
    """

    starts: jax.Array
    width: int


def over_predictions(fn: Callable, inputs: Sequence[jax.Array], targets: Sequence[jax.Array] = (),
                     *, chunk: int, span: Span | None = None) -> jax.Array:
    """`fn` at every next-token prediction, chunked, aligned with the tokens it scores.

    `inputs` (hidden states) are read at positions 0..T−2, `targets` (token ids, stored
    per-token teacher values) at 1..T−1 — position t−1 predicts token t —, and the result
    `[B, T, ...]` is 0 at position 0 (`losses.align_predictions`, the one next-token shift).

    With a `span`, only the tokens of `span` are scored: inputs are gathered at columns
    starts + j − 1, targets at starts + j, `fn` runs on `[B, width]`, and the result is put
    back at the scored tokens' columns, 0 elsewhere (same layout, same values there).
    """
    if span is None:
        return align_predictions(chunked(fn, *(x[:, :-1] for x in inputs),
                                         *(y[:, 1:] for y in targets), chunk=chunk))
    length = (list(inputs) + list(targets))[0].shape[1]
    columns = jnp.clip(span.starts[:, None] + jnp.arange(span.width)[None, :], 1, length - 1)

    def at(x, cols):
        index = cols.reshape(cols.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    scored = chunked(fn, *(at(x, columns - 1) for x in inputs),
                     *(at(y, columns) for y in targets), chunk=chunk)
    return span_to_columns(scored, span.starts, length)


def span_to_columns(scored: jax.Array, starts: jax.Array, length: int) -> jax.Array:
    """Per-token results of spans `scored [B, W, ...]` (entry j of row b belongs to column
    starts[b] + j) put back into the rows' layout `[B, length, ...]`: column c of row b holds
    `scored[b, c − starts[b]]` where 0 ≤ c − starts[b] < W and c ≥ 1, 0 elsewhere."""
    width = scored.shape[1]
    columns = jnp.arange(length)[None, :]
    j = columns - starts[:, None]                                # the span index of each column
    inside = (j >= 0) & (j < width) & (columns >= 1)
    index = jnp.clip(j, 0, width - 1)
    back = jnp.take_along_axis(scored, index.reshape(index.shape + (1,) * (scored.ndim - 2)),
                               axis=1)
    return jnp.where(inside.reshape(inside.shape + (1,) * (back.ndim - 2)), back, 0)


def scaled_logits(model, hidden: jax.Array, temperature: float) -> jax.Array:
    """The logits z / τ of the distribution softmax(z / τ) a sampler at temperature τ draws
    from (z unchanged at τ = 1)."""
    logits = model.logits(hidden)
    return logits / temperature if temperature != 1.0 else logits


def token_logprobs(model, hidden: jax.Array, tokens: jax.Array, *,
                   chunk: int | None = None, temperature: float = 1.0) -> jax.Array:
    """`log p(tokens[t] | <t)` for every position, `[B, T]` float32 (position 0 = 0)."""

    def fn(h, targets):
        return picked_logprob(scaled_logits(model, h, temperature), targets)

    chunk = fit_chunk(chunk or model.config.logits_chunk, hidden.shape[0],
                      model.config.vocab_size)
    return over_predictions(fn, [hidden], [tokens], chunk=chunk)


def token_logprobs_and_entropy(model, hidden: jax.Array, tokens: jax.Array, *,
                               chunk: int | None = None, temperature: float = 1.0,
                               span: Span | None = None) -> tuple[jax.Array, jax.Array]:
    """Log-probs as `token_logprobs`, plus the entropy H_t = −Σ_v p log p of each prediction.

    `temperature` τ scores the distribution softmax(z / τ) a sampler at temperature τ draws
    from; `span` scores only its tokens (`over_predictions`), 0 elsewhere.
    """

    def fn(h, targets):
        return jnp.stack(picked_logprob_and_entropy(scaled_logits(model, h, temperature),
                                                    targets), axis=-1)

    chunk = fit_chunk(chunk or model.config.logits_chunk, hidden.shape[0],
                      model.config.vocab_size, tensors=2)
    out = over_predictions(fn, [hidden], [tokens], chunk=chunk, span=span)
    return out[..., 0], out[..., 1]


def token_divergence(student, student_hidden: jax.Array, teacher, teacher_hidden: jax.Array,
                     divergence: Callable[[jax.Array, jax.Array], jax.Array], *,
                     chunk: int | None = None) -> jax.Array:
    """Per-token `divergence(student_logits, teacher_logits)` at every predicted position.

    Both models' logits exist one chunk at a time; the teacher's hidden states should be
    `stop_gradient`-ed by the caller. Returns `[B, T]` aligned like `token_logprobs`.
    """

    def fn(hs, ht):
        return divergence(student.logits(hs), teacher.logits(ht))

    # Student and teacher logits, their softmaxes and the mixture live together: ~6 arrays.
    chunk = fit_chunk(chunk or student.config.logits_chunk, student_hidden.shape[0],
                      student.config.vocab_size, tensors=6)
    return over_predictions(fn, [student_hidden, teacher_hidden], chunk=chunk)
