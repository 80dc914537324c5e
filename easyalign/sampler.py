"""Generation that stays on the device: prefill, a `while_loop` decode, sampling methods.

How one call of `generate` runs (all of it inside one `jax.jit`):

1. **Cache.** A `KVCache` of length `P + max_new_tokens` (or `max_length`) is allocated inside
   the jit, so it never crosses the host boundary and XLA updates it in place.
2. **Prefill.** One `model.trunk` call over the right-padded prompt block `[B, P]` at positions
   `0..P-1` fills the cache. Row b's first new token is sampled from the hidden state at its
   last real token, `P_b - 1` (`P_b = prompt_lengths[b]`); only those `B` rows go through the LM
   head. Padding written into slots `P_b..P-1` is never visible: a query at position p sees
   cache slots ≤ p only, and row b overwrites slot `P_b + i` with its i-th new token before any
   query of that row reaches it (see `easyalign.model.attention`).
3. **Decode.** `jax.lax.while_loop`: each iteration feeds every row's previous token at that
   row's own position (`P_b + step - 1`), samples one token per row, and records it. A row is
   *active* until it emits a stop token or uses up its budget (`max_new_tokens`, and
   `max_length - P_b` when `max_length` is given); inactive rows keep running (the batch has a
   static shape) but record `pad_id` and log-prob 0. The loop exits as soon as no row is
   active, so a batch that stops early costs no further forward passes.

Log-prob convention. `Generation.logprobs[b, i]` is `log_softmax(raw_logits)[token]`: the
log-probability of the sampled token under the model's *unmodified* fp32 distribution — not
the temperature-scaled or truncated (top-k / top-p) distribution it was drawn from. This is
exactly what the trainer computes from a forward pass over prompt + response (the same
`trunk` and `logits` code), so sampler and trainer log-probs agree up to float rounding; a
test holds them to 1e-5 in fp32.

Compilation. `generate` compiles once per (model graph, batch size, prompt width, sampling
method, `max_new_tokens`, stop tokens, `max_length`, `pad_id`, mesh): all of those are static
arguments of one module-level `jax.jit`, whose own cache then serves every later call with the
same shapes. Prompt *contents*, prompt lengths, the RNG key and the parameter values are
traced, so new prompts or updated weights never recompile. `Sampler` buckets prompt widths, gives
every batch of a call the same width and pads batches to a fixed size, so that a stream of prompts
hits a handful of shapes. The prefill runs the layers under one `lax.scan` (`scan_layers`), so
only the decode step's unrolled layers grow the compile time with depth.

Randomness. Step i draws from `fold_in(rng, i)`, so the same key gives the same samples. The
draw covers the whole `[B, V]` batch at once, so a row's sample depends on its batch (size and
row index), not only on its own prompt; greedy decoding does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from easyalign import sharding
from easyalign.data.chat_format import render_prompt, stop_token_ids
from easyalign.data.loader import make_eval_batches
from easyalign.data.tokenize import pad_token_id
from easyalign.model import KVCache

# ----------------------------------------------------------------------------- sampling methods


@dataclasses.dataclass(frozen=True)
class Greedy:
    """The most likely token (ties go to the lowest token id)."""

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        del rng
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """Sample from softmax(logits / temperature); temperature 1 is the model's distribution."""

    temperature: float = 1.0

    def __post_init__(self):
        _check_temperature(self.temperature)

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        return jax.random.categorical(rng, logits / self.temperature, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Sample among the k most likely tokens, from softmax(top-k logits / temperature).

    The draw is over the indices `lax.top_k` returns, so exactly k candidates exist even when
    logits tie at the k-th value (the tie is broken towards the lower token id). A `k` larger
    than the vocabulary means the whole vocabulary.
    """

    k: int
    temperature: float = 1.0

    def __post_init__(self):
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"TopK: k must be a positive integer, got {self.k!r}")
        _check_temperature(self.temperature)

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        values, indices = jax.lax.top_k(logits, min(self.k, logits.shape[-1]))
        choice = jax.random.categorical(rng, values / self.temperature, axis=-1)
        return jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Nucleus sampling: draw from the smallest set of most likely tokens whose mass is ≥ p.

    Temperature is applied first; the nucleus is taken from softmax(logits / temperature) and
    renormalised. Tokens are ranked by a stable descending sort; token j (in rank order) is kept
    iff the mass of the tokens ranked strictly above it is < p. Hence:

    * the most likely token is always kept (p → 0 is greedy);
    * the kept set is minimal: dropping its last member leaves mass < p;
    * tokens tied with the last kept one are ranked by token id, so the lower ids get in;
    * `p = 1` is plain temperature sampling (handled as such: a float32 cumulative sum can reach
      1.0 before the tail and would otherwise drop tokens of negligible mass).
    """

    p: float
    temperature: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"TopP: p must be in (0, 1], got {self.p!r}")
        _check_temperature(self.temperature)

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        scaled = logits / self.temperature
        if self.p >= 1.0:
            return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
        order = jnp.argsort(scaled, axis=-1, descending=True, stable=True)
        ranked = jnp.take_along_axis(scaled, order, axis=-1)
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_above = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumsum; exactly 0 at rank 0
        ranked = jnp.where(mass_above < self.p, ranked, -jnp.inf)
        choice = jax.random.categorical(rng, ranked, axis=-1)
        return jnp.take_along_axis(order, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use Greedy for argmax), got {temperature!r}")


SamplingMethod = Greedy | Temperature | TopK | TopP

SAMPLING_METHODS: dict[str, type] = {
    "greedy": Greedy,
    "temperature": Temperature,
    "top_k": TopK,
    "top_p": TopP,
}


def sampling_from_config(name: str, **kwargs: Any) -> SamplingMethod:
    """A sampling method by registry name, e.g. `sampling_from_config("top_p", p=0.9)`."""
    if name not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {name!r}; valid: {sorted(SAMPLING_METHODS)}")
    cls = SAMPLING_METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"sampling method {name!r}: unknown argument(s) {unknown}; "
                         f"valid: {sorted(fields)}")
    return cls(**kwargs)


def sampling_method(name: str, temperature: float = 1.0, top_k: int = 40,
                    top_p: float = 0.9) -> SamplingMethod:
    """The method a config names, from the flat fields configs carry (unused ones ignored)."""
    arguments = {"greedy": {}, "temperature": {"temperature": temperature},
                 "top_k": {"k": top_k, "temperature": temperature},
                 "top_p": {"p": top_p, "temperature": temperature}}
    if name not in arguments:
        raise ValueError(f"unknown sampling method {name!r}; valid: {sorted(arguments)}")
    return sampling_from_config(name, **arguments[name])


def method_from_config(block) -> SamplingMethod:
    """`sampling_method` of a config block with `sampling`, `temperature`, `top_k`, `top_p`."""
    return sampling_method(block.sampling, block.temperature, block.top_k, block.top_p)


# ----------------------------------------------------------------------------- generate


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
    """What `generate` returns; every field is a device array with a leading batch axis.

    tokens    `[B, N]` int32 — generated tokens, the stop token included, then `pad_id`;
    logprobs  `[B, N]` float32 — log p(token) under the raw model distribution; 0 on padding;
    lengths   `[B]` int32 — number of generated tokens, the stop token included;
    done      `[B]` bool — the row emitted a stop token (False: it ran out of budget).
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array


def _generate(state, prompt_tokens, prompt_lengths, rng, *, graphdef, method, max_new_tokens,
              stop_tokens, max_length, pad_id, mesh) -> Generation:
    """The jitted body of `generate` (see the module docstring for the algorithm)."""
    del mesh  # static only so that it is part of the compile-cache key; layout comes from context
    config = nnx.merge(graphdef, state).config
    # Every use of a weight casts it to the compute dtype; casting once here, outside the decode
    # loop, gives the same numbers and halves the bytes each step reads for fp32 master weights.
    state = jax.tree.map(lambda x: x.astype(config.compute_dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    model = nnx.merge(graphdef, state)
    batch, width = prompt_tokens.shape
    cache_length = width + max_new_tokens if max_length is None else min(
        width + max_new_tokens, max_length)
    stops = jnp.asarray(stop_tokens, jnp.int32)
    budget = jnp.full((batch,), max_new_tokens, jnp.int32)
    if max_length is not None:
        budget = jnp.clip(max_length - prompt_lengths, 0, max_new_tokens)

    def constrain_cache(cache):
        names = ("batch", "cache_length", "act_kv_heads", None)
        return KVCache(tuple(sharding.constrain(k, names) for k in cache.k),
                       tuple(sharding.constrain(v, names) for v in cache.v))

    def choose(step, logits, carry):
        """Sample token `step` for every row and record it; inactive rows record padding."""
        tokens, logprobs, lengths, done = carry
        token = method.sample(logits, jax.random.fold_in(rng, step))
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None],
                                      axis=-1)[:, 0]
        active = ~done & (lengths < budget)
        token = jnp.where(active, token, pad_id)
        tokens = tokens.at[:, step].set(token)
        logprobs = logprobs.at[:, step].set(jnp.where(active, logprob, 0.0))
        hit_stop = jnp.any(token[:, None] == stops[None, :], axis=-1)
        return token, (tokens, logprobs, lengths + active, done | (active & hit_stop))

    # Prefill: the whole prompt block at positions 0..P-1; LM head only at each row's last token.
    prompt_tokens = sharding.constrain(prompt_tokens, ("batch", "length"))
    cache = constrain_cache(KVCache.zeros(model.config, batch, cache_length))
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
    hidden, cache = model.trunk(prompt_tokens, positions=positions, cache=cache, prefill=True)
    last_hidden = jnp.take_along_axis(hidden, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    carry = (jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
             jnp.zeros((batch, max_new_tokens), jnp.float32),
             jnp.zeros((batch,), jnp.int32),
             jnp.zeros((batch,), bool))
    token, carry = choose(0, model.logits(last_hidden), carry)

    def any_active(loop):
        step, _, _, (_, _, lengths, done) = loop
        # Evaluated on the device; XLA's GPU runtime reads back this one predicate per step to
        # decide whether to iterate — no Python and no token data cross per step.
        return (step < max_new_tokens) & jnp.any(~done & (lengths < budget))

    def decode(loop):
        step, token, cache, carry = loop
        # Row b's previous token sits at position P_b + step - 1. Inactive rows keep decoding
        # padding; clamp their positions into the cache (their outputs are discarded).
        positions = jnp.minimum(prompt_lengths + step - 1, cache_length - 1)[:, None]
        hidden, cache = model.trunk(token[:, None], positions=positions, cache=cache)
        token, carry = choose(step, model.logits(hidden[:, 0]), carry)
        return step + 1, token, constrain_cache(cache), carry

    _, _, _, (tokens, logprobs, lengths, done) = jax.lax.while_loop(
        any_active, decode, (jnp.int32(1), token, cache, carry))
    return Generation(tokens=sharding.constrain(tokens, ("batch", None)),
                      logprobs=sharding.constrain(logprobs, ("batch", None)),
                      lengths=sharding.constrain(lengths, ("batch",)),
                      done=sharding.constrain(done, ("batch",)))


# No donate_argnums: the only large buffer, the KV cache, is created and consumed inside the
# jit (XLA already updates it in place), and the caller keeps the params and prompts.
_generate_jit = jax.jit(_generate, static_argnames=(
    "graphdef", "method", "max_new_tokens", "stop_tokens", "max_length", "pad_id", "mesh"))


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_tokens, prompt_lengths,
             rng: jax.Array, *, max_new_tokens: int, method: SamplingMethod = Greedy(),
             stop_tokens: Sequence[int] = (), max_length: int | None = None,
             pad_id: int | None = None, mesh: Mesh | None = None) -> Generation:
    """Sample up to `max_new_tokens` tokens for each row of a right-padded prompt batch.

    prompt_tokens  `[B, P]` int, right-padded (pad values are irrelevant);
    prompt_lengths `[B]` int, each in `1..P`;
    rng            a PRNG key (ignored by `Greedy`);
    stop_tokens    a row stops after emitting any of these (`chat_format.stop_token_ids`); its stop token is
                   part of the output;
    max_length     optional cap on prompt length + generated tokens per row (HF's meaning);
                   must be ≥ P; also bounds the KV cache;
    pad_id         written after a row stops; default the model's `pad_token_id` — the id the
                   data pipeline pads with (`data.tokenize.pad_token_id`) — or 0 without one;
    mesh           when given, the batch is sharded over ("data", "fsdp") and the call runs
                   under `sharding.use_mesh(mesh)`; params keep the shardings they have.

    Returns a `Generation` of device arrays; nothing is copied to the host.
    """
    if pad_id is None:
        pad_id = nnx.merge(graphdef, state).config.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
        raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B]; got "
                         f"{prompt_tokens.shape} and {prompt_lengths.shape}")
    if max_length is not None and max_length < prompt_tokens.shape[1]:
        raise ValueError(f"max_length {max_length} is shorter than the prompt block "
                         f"{prompt_tokens.shape[1]}")
    static = dict(graphdef=graphdef, method=method, max_new_tokens=int(max_new_tokens),
                  # Canonical order, so that the same set of stop tokens compiles once.
                  stop_tokens=tuple(sorted({int(t) for t in stop_tokens})),
                  max_length=max_length, pad_id=int(pad_id), mesh=mesh)
    if mesh is None:
        return _generate_jit(state, prompt_tokens, prompt_lengths, rng, **static)
    prompt_tokens = jax.device_put(prompt_tokens, sharding.batch_sharding(mesh, 2))
    prompt_lengths = jax.device_put(prompt_lengths, sharding.batch_sharding(mesh, 1))
    with sharding.use_mesh(mesh):
        return _generate_jit(state, prompt_tokens, prompt_lengths, rng, **static)


# ----------------------------------------------------------------------------- text in, text out


def bucket_length(length: int) -> int:
    """Prompt-block width for `length` tokens: a power of two up to 64, then a multiple of 64."""
    if length <= 64:
        return max(8, 1 << (max(length, 1) - 1).bit_length())
    return -(-length // 64) * 64


def sample_prompt_batches(graphdef: nnx.GraphDef, params: nnx.State, prompts: list[dict], *,
                          mesh: Mesh, batch_size: int, max_new_tokens: int,
                          method: SamplingMethod, stop_tokens: Sequence[int], pad_id: int,
                          seed: int) -> Iterator[list[tuple[int, list[int], bool]]]:
    """Sample every tokenised prompt (`prompt_tokens`) of a list, one global batch at a time:
    per batch, `(prompt index, generated ids, finished)` of its real rows (the ids include the
    stop token when `finished`).

    Every batch is `batch_size` rows (global over processes, each contributing its share as the
    data pipeline's eval batches do) of one prompt width, the `bucket_length` of the longest
    prompt, so the decode loop compiles once; batch j draws from `fold_in(key(seed), j)`. The
    outputs come back replicated, so every process can read every row.
    """
    width = bucket_length(max(len(p["prompt_tokens"]) for p in prompts))

    def sample(params, batch, rng):
        # Padding rows have prompt length 0; one token keeps their prefill index valid.
        out = generate(graphdef, params, batch["prompt_tokens"],
                       jnp.maximum(batch["prompt_lengths"], 1), rng,
                       max_new_tokens=max_new_tokens, method=method, stop_tokens=stop_tokens,
                       pad_id=pad_id)
        return out.tokens, out.lengths, out.done, batch["index"], batch["valid"]

    jitted = jax.jit(sample, out_shardings=NamedSharding(mesh, PartitionSpec()))
    batches = make_eval_batches(prompts, kind="prompt", batch_size=batch_size, max_length=width,
                                pad_id=pad_id)
    key = jax.random.key(seed)
    with sharding.use_mesh(mesh):
        for j, batch in enumerate(batches):
            # Host-device sync point, once per batch, after the whole batch is decoded.
            tokens, lengths, done, index, valid = jax.device_get(
                jitted(params, sharding.to_global_batch(batch, mesh), jax.random.fold_in(key, j)))
            yield [(int(index[row]), tokens[row, :int(lengths[row])].tolist(), bool(done[row]))
                   for row in np.nonzero(valid)[0]]


def as_messages(prompt: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as a message list: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class Sampler:
    """Chat prompts in, responses out: tokenise with the chat template, batch, generate, decode.

    Batches are always `batch_size` rows (the last one padded with dummy rows) and every batch
    of one `sample_texts` call shares one prompt width, the `bucket_length` of its longest
    prompt, so a call compiles at most once (and not at all for shapes seen before).
    """

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
        rng = jax.random.key(seed)
        all_encoded = [self.encode(p) for p in prompts]
        # One prompt width for every batch of the call (the bucket of its longest prompt): one
        # compile per call, where a width per batch compiled up to one program per bucket — 45 s
        # each for a 30-layer model on an H200. Wider blocks only add masked prefill positions.
        width = bucket_length(max((len(ids) for ids in all_encoded), default=1))
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            encoded = all_encoded[start:start + self.batch_size]
            tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
            lengths = np.ones((self.batch_size,), np.int32)  # dummy rows: one pad token
            for row, ids in enumerate(encoded):
                tokens[row, :len(ids)] = ids
                lengths[row] = len(ids)
            out = generate(self.graphdef, self.state, tokens, lengths,
                           jax.random.fold_in(rng, start), max_new_tokens=max_new_tokens,
                           method=method, stop_tokens=self.stop_tokens, pad_id=self.pad_id,
                           mesh=self.mesh)
            # Host-device sync point: one transfer per batch, after the whole batch is decoded.
            out = jax.device_get(out)
            for row, prompt in enumerate(chunk):
                n, finished = int(out.lengths[row]), bool(out.done[row])
                ids = out.tokens[row, :n].tolist()
                response = self.tokenizer.decode(ids[:n - 1] if finished else ids,
                                                 skip_special_tokens=True)
                results.append(dict(prompt=prompt, response=response, tokens=ids,
                                    logprobs=out.logprobs[row, :n].tolist(), finished=finished))
        return results

