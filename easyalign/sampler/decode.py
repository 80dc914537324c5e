"""Generation that stays on the device: a fixed set of decode slots, refilled from a prompt queue.

`generate` samples `num_samples` = G completions for each of N prompts inside one `jax.jit`:

1. **Slots and cache.** S decode slots (`slots`, default N·G: a static batch), each with its own
   row of a `KVCache` of length `P + max_new_tokens` (or `max_length`), allocated inside the jit
   so it never crosses the host boundary and XLA updates it in place.
2. **Admission** (prefill). A group of prompts is taken from the queue in order and prefilled in
   one `model.trunk` call over its right-padded block `[R, P]` at positions `0..P-1`. Prompt r's
   keys and values go straight into the cache rows of the G free slots its samples will use
   (`cache_rows`): a GRPO group's prompt is prefilled once, not G times. Each sample's first
   token is drawn from the hidden state at the prompt's last real token, `P_r - 1`; only those
   rows go through the LM head. Padding written into slots `P_r..P-1` is never visible: a query
   at position p sees cache slots ≤ p only, and the row overwrites slot `P_r + i` with its i-th
   new token before any of its queries reaches it (`easyalign.model.attention`). The same holds
   for whatever an earlier occupant of the slot left there.
3. **Decode.** `jax.lax.while_loop`: each iteration feeds every slot's previous token at its own
   position (`P_r + i - 1`), samples one token per slot and writes it into the output row the slot
   serves. A slot is *active* until its row emits a stop token or uses up its budget
   (`max_new_tokens`, the row's entry of `budgets`, and `max_length - P_r` when given); idle slots
   keep running (the batch has a static shape) and their outputs are dropped.
4. **Refill** (continuous batching). At the top of each iteration, when the queue is not empty
   and at least `refill` prompts' worth of slots (G each) are idle — or all the prompts left fit —
   the next prompts are admitted as in step 2, inside the loop: no host round trip. The loop
   exits when the queue is empty and no slot is active, so a batch that stops early costs no
   further forward passes. With S ≥ N·G every prompt is admitted before the loop (one prefill)
   and the refill branch is not compiled.

Outputs come back in prompt order: row `n·G + g` is sample g of prompt n, whichever slot ran it.

Log-prob convention. `Generation.logprobs[b, i]` is `log_softmax(raw_logits / τ)[token]`, τ the
method's temperature (1 for greedy): the log-probability of the sampled token under the
temperature-scaled fp32 distribution it was drawn from, *before* any top-k / top-p truncation.
This is exactly what a trainer at the same temperature computes from a forward pass over
prompt + response (the same `trunk` and `logits` code; `rollout.policy_logps(temperature=τ)`),
so sampler and trainer log-probs agree up to float rounding — the π_old of an RL update is the
sampling distribution (GRPO at τ ≠ 1, as TRL). A test holds them to 1e-5 in fp32, at τ = 1 and
τ ≠ 1.

Randomness. Token i of output row b is drawn with the key `fold_in(fold_in(rng, o + b), i)`
(`row_keys`; o = `row_offset`, 0 by default) — one uniform number, inverted through the
distribution's cumulative sum (`methods.categorical`): a row's samples depend on the key, its
row index and the model only — not on the slot count, the refill size or the other rows, so
continuous batching and a static batch sample the same tokens (up to float rounding of differently shaped
matmuls). A long list sampled in several calls passes each call's first row as `row_offset`,
so its samples do not depend on how it was cut (`front.sample_prompt_batches`).

Compilation. `generate` compiles once per (model graph, N, P, G, S, refill, sampling method,
`max_new_tokens`, stop tokens, `max_length`, `pad_id`, mesh): all static arguments of one
module-level `jax.jit`. Prompt contents and lengths, budgets, `num_prompts`, the RNG key and the
parameter values are traced, so new prompts or updated weights never recompile. The prefill runs
the layers under one `lax.scan` (`scan_layers`), so only the decode step's unrolled layers grow
the compile time with depth.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.model import KVCache
from easyalign.model.attention import reads_shared_prompts
from easyalign.model.layers import cast_for_compute
from easyalign.sampler.methods import Greedy, SamplingMethod, sampling_method


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Generation:
    """What `generate` returns; every field is a device array with a leading row axis (N·G rows,
    sample g of prompt n in row n·G + g).

    tokens    `[N·G, M]` int32 — generated tokens, the stop token included, then `pad_id`;
    logprobs  `[N·G, M]` float32 — log p(token) under softmax(logits / τ); 0 on padding;
    lengths   `[N·G]` int32 — number of generated tokens, the stop token included;
    done      `[N·G]` bool — the row emitted a stop token (False: it ran out of budget).
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Slots:
    """Per-slot state `[S]`: the output row served (N·G = none), the prompt length (the first
    generated token's position), tokens generated, the row's budget, the last token, active."""

    row: jax.Array
    start: jax.Array
    count: jax.Array
    budget: jax.Array
    token: jax.Array
    active: jax.Array


def row_keys(rng: jax.Array, rows: jax.Array, steps: jax.Array) -> jax.Array:
    """`[S]` keys `fold_in(fold_in(rng, rows[s]), steps[s])`: one per (output row, token index)."""
    return jax.vmap(lambda r, i: jax.random.fold_in(jax.random.fold_in(rng, r), i))(rows, steps)


def draw(method: SamplingMethod, logits: jax.Array, keys: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
    """One token per row of `logits [S, V]` (float32), each with its own key, and its
    log-probability `log_softmax(logits / τ)[token]`, τ the method's temperature (module
    docstring)."""
    if isinstance(method, Greedy):
        token = method.sample(logits, keys)
    else:
        token = jax.vmap(lambda row, key: method.sample(row[None], key)[0])(logits, keys)
    temperature = getattr(method, "temperature", 1.0)
    scaled = logits / temperature if temperature != 1.0 else logits
    logprob = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None],
                                  axis=-1)[:, 0]
    return token, logprob


HEAD_MIN_ROWS = 8


def head_logits(model, hidden: jax.Array) -> jax.Array:
    """`model.logits(hidden)` for `hidden [S, d]`, run on at least `HEAD_MIN_ROWS` rows.

    With fewer rows XLA lowers the bf16 LM-head matmul with a float32 result as a conversion of
    the whole vocabulary matrix to float32 plus a float32 GEMV — measured on an H200 at the
    Llama-3.2-1B shape: 0.6 ms of a 2.4 ms batch-1 decode step, which is why batch 1 stepped
    slower than batch 8. Zero rows pad the input to 8 and are sliced off the output; the
    optimisation barriers keep XLA from folding the padding back into a one-row matmul.
    """
    rows = hidden.shape[0]
    if rows >= HEAD_MIN_ROWS:
        return model.logits(hidden)
    padded = jax.lax.optimization_barrier(jnp.pad(hidden, ((0, HEAD_MIN_ROWS - rows), (0, 0))))
    return jax.lax.optimization_barrier(model.logits(padded))[:rows]


def share_prompts(cache: KVCache, slots: jax.Array, lengths: jax.Array) -> KVCache:
    """Declare that prompt r's G slots `slots[r]` (`[R, G]`; out-of-range entries are unused
    admissions) share its first `lengths[r]` cache positions, read from slot `slots[r, 0]`.

    Every slot also holds its own copy (the prefill writes all G), so a slot whose group leader
    is being re-admitted here falls back to reading itself: a refill never leaves a slot
    pointing at a row that now holds another prompt."""
    S = cache.prefix_rows.shape[0]
    own = jnp.arange(S, dtype=jnp.int32)
    flat = slots.reshape(-1)
    readmitted = jnp.zeros((S + 1,), bool).at[flat].set(True)[:S]   # slot S: the drop slot
    rows = jnp.where(readmitted[cache.prefix_rows], own, cache.prefix_rows)
    lengths_ = jnp.where(readmitted[cache.prefix_rows], 0, cache.prefix_lengths)
    leaders = jnp.repeat(slots[:, 0], slots.shape[1])
    rows = rows.at[flat].set(leaders.astype(jnp.int32), mode="drop")
    lengths_ = lengths_.at[flat].set(jnp.repeat(lengths, slots.shape[1]).astype(jnp.int32),
                                     mode="drop")
    return dataclasses.replace(cache, prefix_rows=rows, prefix_lengths=lengths_)


def compute_weights(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """The model with its weights cast to the compute dtype once (`layers.cast_for_compute`:
    those read in float32 stay as stored), and q/k/v and gate/up fused into one kernel each
    (`Transformer.fuse_for_inference`). Every use of a weight casts it anyway: casting outside
    the decode loop gives the same numbers and halves the bytes each step reads for fp32
    master weights."""
    model = nnx.merge(graphdef, state)
    cast_for_compute(model, model.config.compute_dtype)
    model.fuse_for_inference()
    return model


def _generate(state, prompt_tokens, prompt_lengths, budgets, num_prompts, rng, row_offset, *,
              graphdef,
              method, max_new_tokens, num_samples, slots, refill, stop_tokens, max_length,
              pad_id, mesh) -> Generation:
    """The jitted body of `generate` (see the module docstring for the algorithm)."""
    del mesh  # static only so that it is part of the compile-cache key; layout comes from context
    model = compute_weights(graphdef, state)
    n_prompts, width = prompt_tokens.shape
    G, S = num_samples, slots
    n_rows = n_prompts * G
    cache_length = width + max_new_tokens if max_length is None else min(
        width + max_new_tokens, max_length)
    stops = jnp.asarray(stop_tokens, jnp.int32)
    budget = jnp.clip(budgets, 0, max_new_tokens)
    if max_length is not None:
        budget = jnp.clip(jnp.minimum(budget, max_length - prompt_lengths), 0, max_new_tokens)

    def constrain_cache(cache):
        names = ("batch", "cache_length", "act_kv_heads", None)
        return dataclasses.replace(cache, k=tuple(sharding.constrain(k, names) for k in cache.k),
                                   v=tuple(sharding.constrain(v, names) for v in cache.v))

    def record(out: Generation, rows, column, token, logprob, live):
        """Write each live slot's token into its output row; `rows` of dead slots are dropped."""
        rows = jnp.where(live, rows, n_rows)
        hit_stop = jnp.any(token[:, None] == stops[None, :], axis=-1)
        out = Generation(tokens=out.tokens.at[rows, column].set(token, mode="drop"),
                         logprobs=out.logprobs.at[rows, column].set(logprob, mode="drop"),
                         lengths=out.lengths.at[rows].set(column + 1, mode="drop"),
                         done=out.done.at[rows].set(hit_stop, mode="drop"))
        return out, hit_stop

    def admit(loop, count: int):
        """Admit the next `count` prompts of the queue (fewer at its end) into idle slots."""
        cache, slot, out, next_prompt = loop
        offsets = jnp.arange(count)
        admitted = jnp.clip(num_prompts - next_prompt, 0, count)
        prompt = jnp.minimum(next_prompt + offsets, n_prompts - 1)
        real = jnp.repeat(offsets < admitted, G)                                   # [count·G]
        # Sample g of prompt r goes to the (r·G + g)-th idle slot; unused admissions to slot S,
        # which every write below drops.
        idle = jnp.nonzero(~slot.active, size=count * G, fill_value=S)[0]
        target = jnp.where(real, idle, S)
        lengths = prompt_lengths[prompt]
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (count, width))
        hidden, cache = model.trunk(prompt_tokens[prompt], positions=positions, cache=cache,
                                    prefill=True, cache_rows=target.reshape(count, G))
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
        logits = jnp.repeat(head_logits(model, last), G, axis=0)                 # [count·G, V]
        rows = (prompt[:, None] * G + jnp.arange(G)).reshape(-1)
        token, logprob = draw(method, logits, row_keys(rng, row_offset + rows, jnp.zeros_like(rows)))
        row_budget = jnp.repeat(budget[prompt], G)
        live = real & (row_budget > 0)
        out, hit_stop = record(out, rows, 0, token, logprob, live)
        put = lambda a, v: a.at[target].set(v, mode="drop")  # noqa: E731
        if cache.prefix_rows is not None:
            cache = share_prompts(cache, target.reshape(count, G), lengths)
        slot = _Slots(row=put(slot.row, jnp.where(real, rows, n_rows)),
                      start=put(slot.start, jnp.repeat(lengths, G)),
                      count=put(slot.count, live.astype(jnp.int32)),
                      budget=put(slot.budget, row_budget), token=put(slot.token, token),
                      active=put(slot.active, live & ~hit_stop & (row_budget > 1)))
        return constrain_cache(cache), slot, out, next_prompt + admitted

    def decode(loop):
        """One token for every active slot."""
        cache, slot, out, next_prompt = loop
        # A slot's previous token sits at position P_r + i - 1; idle slots decode padding at a
        # position clamped into the cache (their outputs are dropped, their cache row is
        # rewritten whole by the next admission's prefill up to the new prompt's end).
        positions = jnp.clip(slot.start + slot.count - 1, 0, cache_length - 1)[:, None]
        hidden, cache = model.trunk(slot.token[:, None], positions=positions, cache=cache)
        logits = head_logits(model, hidden[:, 0])
        token, logprob = draw(method, logits, row_keys(rng, row_offset + slot.row, slot.count))
        out, hit_stop = record(out, slot.row, slot.count, token, logprob, slot.active)
        count = slot.count + slot.active
        slot = dataclasses.replace(
            slot, count=count, token=jnp.where(slot.active, token, slot.token),
            active=slot.active & ~hit_stop & (count < slot.budget))
        return constrain_cache(cache), slot, out, next_prompt

    out = Generation(tokens=jnp.full((n_rows, max_new_tokens), pad_id, jnp.int32),
                     logprobs=jnp.zeros((n_rows, max_new_tokens), jnp.float32),
                     lengths=jnp.zeros((n_rows,), jnp.int32),
                     done=jnp.zeros((n_rows,), bool))
    idle = _Slots(row=jnp.full((S,), n_rows, jnp.int32), start=jnp.zeros((S,), jnp.int32),
                  count=jnp.zeros((S,), jnp.int32), budget=jnp.zeros((S,), jnp.int32),
                  token=jnp.full((S,), pad_id, jnp.int32), active=jnp.zeros((S,), bool))
    cache = KVCache.zeros(model.config, S, cache_length)
    if G > 1 and reads_shared_prompts(model.config):
        # every slot its own prompt's keys until an admission groups them
        cache = dataclasses.replace(cache, prefix_rows=jnp.arange(S, dtype=jnp.int32),
                                    prefix_lengths=jnp.zeros((S,), jnp.int32))
    cache = constrain_cache(cache)
    first = min(n_prompts, S // G)
    loop = admit((cache, idle, out, jnp.int32(0)), first)

    def pending(next_prompt):
        return next_prompt < num_prompts

    def step(loop):
        if first < n_prompts:  # static: a queue longer than the slots needs refills
            _, slot, _, next_prompt = loop
            wanted = G * jnp.clip(num_prompts - next_prompt, 0, refill)
            loop = jax.lax.cond(pending(next_prompt) & (jnp.sum(~slot.active) >= wanted),
                                lambda l: admit(l, refill), lambda l: l, loop)
        return decode(loop)

    def running(loop):
        # Evaluated on the device; XLA's GPU runtime reads back this one predicate per step to
        # decide whether to iterate — no Python and no token data cross per step.
        _, slot, _, next_prompt = loop
        return jnp.any(slot.active) | pending(next_prompt)

    _, _, out, _ = jax.lax.while_loop(running, step, loop)
    return Generation(tokens=sharding.constrain(out.tokens, ("batch", None)),
                      logprobs=sharding.constrain(out.logprobs, ("batch", None)),
                      lengths=sharding.constrain(out.lengths, ("batch",)),
                      done=sharding.constrain(out.done, ("batch",)))


# No donate_argnums: the only large buffer, the KV cache, is created and consumed inside the
# jit (XLA already updates it in place), and the caller keeps the params and prompts.
_generate_jit = jax.jit(_generate, static_argnames=(
    "graphdef", "method", "max_new_tokens", "num_samples", "slots", "refill", "stop_tokens",
    "max_length", "pad_id", "mesh"))


def generate(graphdef: nnx.GraphDef, state: nnx.State, prompt_tokens, prompt_lengths,
             rng: jax.Array, *, max_new_tokens: int, method: SamplingMethod | str = Greedy(),
             stop_tokens: Sequence[int] = (), max_length: int | None = None,
             pad_id: int | None = None, num_samples: int = 1, slots: int | None = None,
             refill: int | None = None, budgets=None, num_prompts=None, row_offset=0,
             mesh: Mesh | None = None) -> Generation:
    """Sample `num_samples` completions of up to `max_new_tokens` tokens for each prompt.

    prompt_tokens  `[N, P]` int, right-padded (pad values are irrelevant);
    prompt_lengths `[N]` int, each in `1..P`;
    rng            a PRNG key (ignored by `Greedy`); row b's token i uses `row_keys`;
    method         a sampling method (`Greedy()`, `TopP(0.9)`, ...) or its registry name;
    stop_tokens    a row stops after emitting any of these (`chat_format.stop_token_ids`); its
                   stop token is part of the output;
    max_length     optional cap on prompt length + generated tokens per row (HF's meaning);
                   must be ≥ P; also bounds the KV cache;
    pad_id         written after a row stops; default the model's `pad_token_id` — the id the
                   data pipeline pads with (`data.tokenize.pad_token_id`) — or 0 without one;
    num_samples    G completions per prompt, prefilled once (rows n·G .. n·G + G − 1);
    slots          decode slots S (a multiple of G; default N·G, every row at once). With fewer,
                   finished slots are refilled from the queue inside the loop;
    refill         prompts admitted per refill (default `max(1, S / G / 8)`, at most S / G);
    budgets        optional `[N]` int: prompt n's own cap on new tokens (≤ `max_new_tokens`);
    num_prompts    optional traced count: only prompts `0..num_prompts − 1` are sampled (the rest
                   are padding of a fixed-shape call; their rows come back empty);
    row_offset     traced: row b draws with the keys of row `row_offset + b` (module docstring);
    mesh           when given, the slots are sharded over ("data", "fsdp") and the call runs
                   under `sharding.use_mesh(mesh)`; params keep the shardings they have.

    Returns a `Generation` of device arrays with N·G rows; nothing is copied to the host.
    Raises ValueError for inconsistent shapes or sizes.
    """
    if isinstance(method, str):  # a registry name: its defaults (`methods.sampling_method`)
        method = sampling_method(method)
    if pad_id is None:
        pad_id = nnx.merge(graphdef, state).config.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
        raise ValueError(f"prompt_tokens must be [N, P] and prompt_lengths [N]; got "
                         f"{prompt_tokens.shape} and {prompt_lengths.shape}")
    if max_length is not None and max_length < prompt_tokens.shape[1]:
        raise ValueError(f"max_length {max_length} is shorter than the prompt block "
                         f"{prompt_tokens.shape[1]}")
    n_prompts, G = prompt_tokens.shape[0], int(num_samples)
    S = n_prompts * G if slots is None else int(slots)
    if G < 1 or S < G or S % G:
        raise ValueError(f"slots ({S}) must be a positive multiple of num_samples ({G})")
    R = max(1, S // G // 8) if refill is None else int(refill)
    if not 1 <= R <= S // G:
        raise ValueError(f"refill must be in 1..slots/num_samples = {S // G}, got {R}")
    budgets = jnp.full((n_prompts,), max_new_tokens, jnp.int32) if budgets is None else \
        jnp.asarray(budgets, jnp.int32)
    num_prompts = jnp.int32(n_prompts) if num_prompts is None else \
        jnp.asarray(num_prompts, jnp.int32)
    static = dict(graphdef=graphdef, method=method, max_new_tokens=int(max_new_tokens),
                  num_samples=G, slots=S, refill=R,
                  # Canonical order, so that the same set of stop tokens compiles once.
                  stop_tokens=tuple(sorted({int(t) for t in stop_tokens})),
                  max_length=max_length, pad_id=int(pad_id), mesh=mesh)
    args = (prompt_tokens, prompt_lengths, budgets, num_prompts, rng,
            jnp.asarray(row_offset, jnp.int32))
    if mesh is None:
        return _generate_jit(state, *args, **static)
    with sharding.use_mesh(mesh):
        return _generate_jit(state, *args, **static)
