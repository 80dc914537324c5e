"""Prompts in, completions out: chunked calls of the slot engine (`decode.generate`) over a list.

Two front-ends share one driver, `sample_prompt_batches`:

* token ids → `Completion`s, for phases that tokenise their own prompts (teacher data,
  `easyalign generate`);
* `Sampler`: chat prompts → text, for evaluation and `easyalign sample`.

A list of N prompts is cut into chunks of at most `8 · slots` prompts; each chunk is one jitted
call in which `slots` decode slots are refilled from the chunk's queue as rows finish
(continuous batching), so a short answer never waits for the longest one of its batch. Every
chunk has the same shape — the last one is padded and says how many of its prompts are real
(`num_prompts`) — and every prompt of the list is laid out at one width, the `bucket_length` of
the longest, so a list compiles one program (none for shapes seen before). Prompt n of the list
draws from the keys of row n under one key (`decode.row_keys` with the chunk's first index as
`row_offset`): its samples depend on the seed, n and the model only — not on `batch_size` or
the chunking.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from easyalign import sharding
from easyalign.data.chat_format import render_prompt, stop_token_ids
from easyalign.data.tokenize import pad_token_id
from easyalign.sampler.decode import generate
from easyalign.sampler.methods import Greedy, SamplingMethod

CHUNK_SLOTS = 8  # prompts per engine call, in units of the slot count


def bucket_length(length: int) -> int:
    """Prompt-block width for `length` tokens: a power of two up to 64, then a multiple of 64."""
    if length <= 64:
        return max(8, 1 << (max(length, 1) - 1).bit_length())
    return -(-length // 64) * 64


class Completion(NamedTuple):
    """One prompt's sample: its index in the list, the generated ids (the stop token included
    when `finished`), their log-probs (under softmax(z / τ), `decode.draw`), and whether a
    stop token ended it."""

    index: int
    tokens: list[int]
    logprobs: list[float]
    finished: bool


def sample_prompt_batches(graphdef: nnx.GraphDef, params: nnx.State,
                          prompts: Sequence[Sequence[int]], *, mesh: Mesh | None,
                          batch_size: int, max_new_tokens: int, method: SamplingMethod,
                          stop_tokens: Sequence[int], pad_id: int, seed: int
                          ) -> Iterator[list[Completion]]:
    """Sample every prompt (token ids) of a list with `batch_size` decode slots; per chunk, the
    `Completion`s of its prompts in order (module docstring).

    `batch_size` is global over processes; every process passes the same list and reads every
    completion (the outputs come back replicated). Raises ValueError on an empty prompt.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("sample_prompt_batches: empty prompt (no tokens)")
    width = bucket_length(max((len(p) for p in prompts), default=1))
    chunk = min(CHUNK_SLOTS * batch_size, -(-len(prompts) // batch_size) * batch_size)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    def on_device(array: np.ndarray):
        if replicated is None:
            return array
        # Every process holds the whole list; each places its devices' (replicated) copies.
        return jax.make_array_from_callback(array.shape, replicated, lambda index: array[index])

    def sample(params, tokens, lengths, count, rng, offset):
        out = generate(graphdef, params, tokens, lengths, rng, max_new_tokens=max_new_tokens,
                       method=method, stop_tokens=stop_tokens, pad_id=pad_id, slots=batch_size,
                       num_prompts=count, row_offset=offset)
        return out.tokens, out.logprobs, out.lengths, out.done

    jitted = jax.jit(sample, out_shardings=replicated)
    # One key for the whole list, each prompt drawing with its index in the list: samples do
    # not depend on `batch_size` or the chunking.
    key = jax.random.fold_in(jax.random.key(seed), 0)
    with sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            tokens = np.full((chunk, width), pad_id, np.int32)
            lengths = np.ones((chunk,), np.int32)  # padding prompts: one token, never admitted
            for row, ids in enumerate(part):
                tokens[row, :len(ids)] = ids
                lengths[row] = len(ids)
            # Host-device sync point, once per chunk, after the whole chunk is decoded.
            ids, logps, n, done = jax.device_get(jitted(
                params, on_device(tokens), on_device(lengths), np.int32(len(part)), key,
                np.int32(start)))
            yield [Completion(start + row, ids[row, :n[row]].tolist(),
                              logps[row, :n[row]].tolist(), bool(done[row]))
                   for row in range(len(part))]


def as_messages(prompt: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as a message list: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class Sampler:
    """Chat prompts in, responses out: tokenise with the chat template, sample with
    `batch_size` decode slots (`sample_prompt_batches`), decode the text."""

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State, tokenizer, *,
                 batch_size: int = 8, stop_tokens: Sequence[int] | None = None,
                 pad_id: int | None = None, mesh: Mesh | None = None):
        self.graphdef, self.state, self.tokenizer = graphdef, state, tokenizer
        self.config = nnx.merge(graphdef, state).config
        self.batch_size, self.mesh = batch_size, mesh
        if stop_tokens is None:
            stop_tokens = stop_token_ids(tokenizer, self.config)
        self.stop_tokens = tuple(sorted(set(stop_tokens)))
        self.pad_id = pad_token_id(tokenizer) if pad_id is None else pad_id

    @classmethod
    def from_model(cls, model: nnx.Module, tokenizer, **kwargs) -> "Sampler":
        graphdef, state = nnx.split(model)
        return cls(graphdef, state, tokenizer, **kwargs)

    def encode(self, prompt: str | Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a prompt — a user turn's text or a conversation so far (`{role,
        content}` messages) — ready for the assistant's reply (rendered exactly as training
        renders prompts)."""
        return render_prompt(self.tokenizer, as_messages(prompt))

    def sample_texts(self, prompts: Sequence[str | Sequence[dict[str, str]]], *,
                     max_new_tokens: int = 128, method: SamplingMethod = Greedy(),
                     seed: int = 0) -> list[dict[str, Any]]:
        """One dict per prompt: `prompt`, `response` (text, stop token excluded), `tokens` and
        `logprobs` (every generated token, the stop token included), `finished` (stopped on a
        stop token rather than on `max_new_tokens`)."""
        results = []
        encoded = [self.encode(p) for p in prompts]
        for chunk in sample_prompt_batches(
                self.graphdef, self.state, encoded, mesh=self.mesh, batch_size=self.batch_size,
                max_new_tokens=max_new_tokens, method=method, stop_tokens=self.stop_tokens,
                pad_id=self.pad_id, seed=seed):
            for c in chunk:
                ids = c.tokens[:-1] if c.finished else c.tokens
                results.append(dict(prompt=prompts[c.index],
                                    response=self.tokenizer.decode(ids, skip_special_tokens=True),
                                    tokens=c.tokens, logprobs=c.logprobs, finished=c.finished))
        return results
