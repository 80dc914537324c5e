"""Model-side numbers for evaluation: continuation log-likelihoods and reward scores.

Both take rows of token ids on the host, pad them into fixed-shape batches and run one jitted
forward per batch:

* `continuation_logprobs(model, rows)` with rows `(prefix, continuation)`:

      ℓ = Σ_{t ∈ continuation} log π(x_t | x_<t)

  read off one full forward over prefix + continuation with `easyalign.model.scoring.
  token_logprobs` — the trainer's own log-prob code (chunked, fp32 log-softmax). It serves
  TruthfulQA MC (prefix = the question rendered with the chat template, continuation = an
  answer);
* `continuation_token_logprobs(model, rows)`: the same forward, the continuation's per-token
  log π(x_t | x_<t) kept apart (`[N, C]`, zero after each row's continuation) — the KL to the
  reference (prefix = the prompt, continuation = a sampled response, scored under the variant
  and under the reference; the k3 estimator needs the tokens' log-ratios one by one).
* `reward_scores(model, sequences)`: a scalar-head model's output r(x, y) at each sequence's
  read position, exactly as in training (`easyalign.algorithms.reward.sequence_scores`).

Padding. Rows are right-padded; under the causal mask padding after a row's last token cannot
change any earlier position, so no segment ids are needed (padded positions are masked out of
the sums). Batches are always `batch_size` rows and `bucket_length`-wide, so a run compiles a
handful of shapes; with a mesh, rows are sharded over ("data", "fsdp") and `batch_size` must be
divisible by that product.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.model.scoring import token_logprobs
from easyalign.sampler import bucket_length


def _masked_token_logprobs(graphdef, state, tokens, mask):
    model = nnx.merge(graphdef, state)
    hidden, _ = model.trunk(tokens)
    return token_logprobs(model, hidden, tokens) * mask


def _masked_logprob_sums(graphdef, state, tokens, mask):
    return jnp.sum(_masked_token_logprobs(graphdef, state, tokens, mask), axis=-1)


def _reward_scores(graphdef, state, tokens, mask):
    from easyalign.algorithms.reward import sequence_scores

    return sequence_scores(nnx.merge(graphdef, state), tokens, mask.astype(jnp.int32), {})


_logprob_sums_jit = jax.jit(_masked_logprob_sums, static_argnames=("graphdef",))
_token_logprobs_jit = jax.jit(_masked_token_logprobs, static_argnames=("graphdef",))
_reward_scores_jit = jax.jit(_reward_scores, static_argnames=("graphdef",))


def _run_batched(fn: Callable, model, sequences: Sequence[Sequence[int]],
                 masks: Sequence[Sequence[float]], *, batch_size: int, pad_id: int,
                 mesh: Mesh | None) -> list[np.ndarray]:
    """`fn(graphdef, state, tokens [B, W], mask [B, W]) -> [B, ...]` over all rows, in order:
    one host array per batch, its padding rows dropped (W varies from batch to batch)."""
    graphdef, state = nnx.split(model)
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = bucket_length(max(len(s) for s in chunk))
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.float32)
        for row, (seq, m) in enumerate(zip(chunk, masks[start:start + batch_size])):
            tokens[row, :len(seq)] = seq
            mask[row, :len(m)] = m
        if mesh is None:
            values = fn(graphdef=graphdef, state=state, tokens=tokens, mask=mask)
        else:
            with sharding.use_mesh(mesh):
                values = fn(graphdef=graphdef, state=state,
                            tokens=jax.device_put(tokens, sharding.batch_sharding(mesh, 2)),
                            mask=jax.device_put(mask, sharding.batch_sharding(mesh, 2)))
        # Host-device sync point: one small [B] transfer per batch.
        out.append(np.asarray(jax.device_get(values))[:len(chunk)])
    return out


def _check_rows(rows) -> None:
    for prefix, continuation in rows:
        if not prefix or not continuation:
            raise ValueError("continuation_logprobs: every row needs a non-empty prefix (the "
                             "first token has no prediction) and continuation")


def continuation_logprobs(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                          batch_size: int = 8, pad_id: int = 0,
                          mesh: Mesh | None = None) -> np.ndarray:
    """Σ log π(continuation | prefix) for each `(prefix, continuation)` row, float32 `[N]`."""
    _check_rows(rows)
    sequences = [list(p) + list(c) for p, c in rows]
    masks = [[0.0] * len(p) + [1.0] * len(c) for p, c in rows]
    out = _run_batched(_logprob_sums_jit, model, sequences, masks, batch_size=batch_size,
                       pad_id=pad_id, mesh=mesh)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def continuation_token_logprobs(model, rows: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                                batch_size: int = 8, pad_id: int = 0,
                                mesh: Mesh | None = None) -> np.ndarray:
    """Per-token log π(c_t | prefix, c_<t) of each row's continuation, float32 `[N, C]`.

    C = the longest continuation; entry [n, t] scores continuation token t of row n for
    t < len(continuation_n) and is 0 after it. Row sums equal `continuation_logprobs` up to
    float rounding (the same forward, summed on the host instead of the device).
    """
    _check_rows(rows)
    sequences = [list(p) + list(c) for p, c in rows]
    masks = [[0.0] * len(p) + [1.0] * len(c) for p, c in rows]
    batches = _run_batched(_token_logprobs_jit, model, sequences, masks, batch_size=batch_size,
                           pad_id=pad_id, mesh=mesh)
    width = max((len(c) for _, c in rows), default=0)
    out = np.zeros((len(rows), width), np.float32)
    for n, ((prefix, continuation), values) in enumerate(
            zip(rows, (row for batch in batches for row in batch))):
        out[n, :len(continuation)] = values[len(prefix):len(prefix) + len(continuation)]
    return out


def reward_scores(model, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                  pad_id: int = 0, mesh: Mesh | None = None) -> np.ndarray:
    """A scalar-head model's score of each sequence at its read position, float32 `[N]`."""
    if model.config.head != "scalar":
        raise ValueError(f"the reward model must have a scalar head, not {model.config.head!r}")
    masks = [[1.0] * len(s) for s in sequences]
    out = _run_batched(_reward_scores_jit, model, sequences, masks, batch_size=batch_size,
                       pad_id=pad_id, mesh=mesh)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
