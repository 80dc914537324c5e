"""One forward pass over G completions of each prompt that computes the prompt once.

A group rollout (GRPO, RLOO: G completions y_1..y_G of each prompt x) scores rows x ⊕ y_g: the
prompt's tokens pass through every layer G times, with identical results. Here each prompt's
group is one stream of tokens — the prompt block (P columns, the prompt in its first p_n) then
the G response blocks (R columns each):

    stream n = [x_n (P) | y_n1 (R) | … | y_nG (R)]     `[N, P + G·R]`

Every per-token operation (norms, projections, MLP) runs once per stream token, so the prompt's
cost is paid once instead of G times (Liu et al., "Prefix Grouper: Efficient GRPO Training
through Shared-Prefix Forward", arXiv 2506.05433). Attention restores the rows' semantics:

* prompt queries attend causally within the prompt block (as in the row they came from);
* response token j of completion g sits at position p_n + j and sees the prompt's keys
  0..p_n − 1 and its own response's keys 0..j — never another completion's, never the prompt
  block's columns past p_n (`response_visibility`).

Hidden states, log-probs and gradients equal those of the G assembled rows (the gradient of a
prompt position is the sum of the G rows' — what the shared computation's backward pass gives).
The per-token FLOPs fall from N·G·(P + R) to N·(P + G·R) tokens: at P = R and G = 8, to 56%.
(LoRA input dropout, when on, then draws one mask for a prompt's tokens instead of G: the same
distribution for each row, shared across its group.)

`SharedPrefix` describes the layout; `Transformer.trunk_with_router_loss(shared_prefix=…)` runs
it (`Attention` splits and joins the blocks); `response_logps` reads next-token log-probs of the
responses out of it, in the assembled rows' layout (`rollout.policy_logps` with a `Span`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from easyalign.model.scoring import (chunked, fit_chunk, picked_logprob_and_entropy,
                                     scaled_logits, span_to_columns)


class SharedPrefix(NamedTuple):
    """The stream layout (module docstring): `prompt_lengths [N]` int (p_n ≥ 1), static
    `group` G, `prompt_width` P and `response_width` R."""

    prompt_lengths: jax.Array
    group: int
    prompt_width: int
    response_width: int

    @property
    def stream_width(self) -> int:
        return self.prompt_width + self.group * self.response_width

    def positions(self) -> jax.Array:
        """Position of every stream token `[N, P + G·R]`: prompt column i at i, response token j
        of any completion at p_n + j (where it sits in its assembled row)."""
        n = self.prompt_lengths.shape[0]
        prompt = jnp.broadcast_to(jnp.arange(self.prompt_width), (n, self.prompt_width))
        response = self.prompt_lengths[:, None] + jnp.arange(self.response_width)[None, :]
        return jnp.concatenate([prompt, jnp.tile(response, (1, self.group))], axis=1)

    def split(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`[N, P + G·R, ...]` → prompt block `[N, P, ...]`, responses `[N·G, R, ...]` (row
        n·G + g = completion g of prompt n)."""
        n, rest = x.shape[0], x.shape[2:]
        return (x[:, :self.prompt_width],
                x[:, self.prompt_width:].reshape((n * self.group, self.response_width) + rest))

    def join(self, prompt: jax.Array, responses: jax.Array) -> jax.Array:
        """`split`'s inverse."""
        n = prompt.shape[0]
        return jnp.concatenate(
            [prompt, responses.reshape((n, self.group * self.response_width)
                                       + responses.shape[2:])], axis=1)

    def response_keys(self, prompt: jax.Array, responses: jax.Array) -> jax.Array:
        """The keys (or values) a response attends over: `[N·G, P + R, ...]`, its prompt's
        block (repeated per completion) then its own response block."""
        return jnp.concatenate([jnp.repeat(prompt, self.group, axis=0), responses], axis=1)

    def response_visibility(self, sliding_window: int | jax.Array | None = None) -> jax.Array:
        """Mask `[N·G, 1, R, P + R]` over `response_keys` (True = visible): prompt column i iff
        i < p_n; response key j' iff j' ≤ j; and within `sliding_window` positions if given."""
        starts = jnp.repeat(self.prompt_lengths, self.group)[:, None]           # [N·G, 1]
        query = starts + jnp.arange(self.response_width)[None, :]               # [N·G, R]
        prompt_cols = jnp.arange(self.prompt_width)[None, :]
        key = jnp.concatenate([jnp.broadcast_to(prompt_cols, (query.shape[0], self.prompt_width)),
                               query], axis=1)                                  # [N·G, P + R]
        valid = jnp.concatenate([prompt_cols < starts,
                                 jnp.ones_like(query, dtype=bool)], axis=1)
        visible = valid[:, None, :] & (key[:, None, :] <= query[:, :, None])
        if sliding_window is not None:
            visible &= key[:, None, :] > query[:, :, None] - sliding_window
        return visible[:, None]


def from_rows(tokens: jax.Array, starts: jax.Array, group: int, response_width: int
              ) -> tuple[SharedPrefix, jax.Array, jax.Array]:
    """The stream of assembled rows `tokens [N·G, T]` (row n·G + g: prompt n's p_n tokens, then
    completion g from column `starts[n·G + g]` = p_n, padding after), with the responses' first
    `response_width` = R tokens. Returns `(layout, stream tokens [N, P + G·R], response tokens
    [N·G, R])`, P = T − R (rows are a prompt block of P columns plus R, as `rollout.assemble`
    makes them). The G rows of a group must hold the same prompt. A group's prompt length is
    its rows' largest start: a row whose start was read off an all-zero loss mask (a group
    dropped from the loss: `rollout.response_span` then says 1) is scored at its group's."""
    rows, width = tokens.shape
    prompt_width = width - response_width
    lengths = jnp.max(starts.reshape(rows // group, group), axis=1)
    starts = jnp.repeat(lengths, group)
    columns = jnp.clip(starts[:, None] + jnp.arange(response_width)[None, :], 0, width - 1)
    responses = jnp.take_along_axis(tokens, columns, axis=1)
    layout = SharedPrefix(lengths, group, prompt_width, response_width)
    return layout, layout.join(tokens[::group, :prompt_width], responses), responses


def response_logps(model, tokens: jax.Array, starts: jax.Array, group: int, response_width: int,
                   *, temperature: float = 1.0, chunk: int | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(log π(y_t | x, y_<t), entropy of that prediction, router loss)` of the responses of
    assembled rows `tokens [N·G, T]` (`from_rows`), `[N·G, T]` each in the rows' layout: the
    values `rollout.policy_logps_and_router_loss(model, tokens, span=Span(starts, R))` gives,
    from one shared-prefix pass (0 outside the responses' R columns). Log-probs of
    softmax(z / τ) at `temperature` τ."""
    layout, stream, responses = from_rows(tokens, starts, group, response_width)
    starts = jnp.repeat(layout.prompt_lengths, group)
    hidden, _, router_loss = model.trunk_with_router_loss(stream, shared_prefix=layout)
    prompt_hidden, response_hidden = layout.split(hidden)
    # Token j of a response is predicted at position j − 1: the prompt's last token for j = 0.
    last = jnp.take_along_axis(prompt_hidden, (layout.prompt_lengths - 1)[:, None, None], axis=1)
    predicting = jnp.concatenate([jnp.repeat(last, group, axis=0), response_hidden[:, :-1]],
                                 axis=1)                                         # [N·G, R, d]

    def fn(h, targets):
        return jnp.stack(picked_logprob_and_entropy(scaled_logits(model, h, temperature),
                                                    targets), axis=-1)

    chunk = fit_chunk(chunk or model.config.logits_chunk, predicting.shape[0],
                      model.config.vocab_size, tensors=2)
    scored = chunked(fn, predicting, responses, chunk=chunk)                    # [N·G, R, 2]
    back = span_to_columns(scored, starts, tokens.shape[1])
    return back[..., 0], back[..., 1], router_loss
