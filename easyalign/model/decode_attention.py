"""Decode attention over a KV cache whose rows share prompts: a Pallas (Triton) GPU kernel.

One new token per cache row b: its queries attend over the row's cache slots 0..p_b (its own
position included; caches `[B, S, KV, hd]`, the model's decode layout). When a sampler draws G
completions of one prompt (GRPO), the G rows hold identical keys and values in slots 0..P−1 —
the prompt was prefilled once and written into all G rows. Reading those slots from one row for
all G ("cascade" or shared-prefix decoding: FlashInfer's cascade attention, Ye et al. 2024;
Hydragen, Juravsky et al. 2024, arXiv 2402.05109) cuts the cache bytes a step reads from B·p̄
slots to (B/G)·P + B·(p̄ − P): for 256 prompt + 256 sampled tokens at G = 8, about 42% of the
unshared reads.

`prefix_rows[b]` names the row whose slots 0..prefix_lengths[b]−1 row b reads instead of its
own; the later slots come from row b itself. `prefix_rows[b] = b` (or length 0) is plain
decode attention. The result is the same attention either way: the prefix slots hold the same
values in both rows (the caller's guarantee: `sampler.decode.share_prompts`, which points a
slot back at itself when its group's first slot is refilled with another prompt).

The kernel. One program per (row b, KV head h). It reads the token's query, key and value
heads straight out of the q/k/v projection's output, rotates q and k (RoPE, when asked: then
no fusion runs between the projection and the kernel), writes the key and value into the
cache at slot p_b (the buffers are aliased in and out: no scatter kernel beside it), then the
row's n = H/KV query heads of that KV head (padded to 16 rows, the smallest tensor-core dot)
run one loop over the prompt's blocks of `block_k` slots (from the group's row) and then the
row's own (so Triton's pipeline prefetches across both), with the online softmax of
FlashAttention-2 (Dao 2023, arXiv 2307.08691, Alg. 1), and finally the new token from
registers:
  s = (q · kᵀ) · scale,  m' = max(m, max_j s_j),  l' = e^(m − m')·l + Σ_j e^(s_j − m'),
  o' = e^(m − m')·o + Σ_j e^(s_j − m')·v_j,       out = o / l   (float32 throughout; the
probabilities are rounded to the cache dtype for the p·v dot, as in FlashAttention and cuDNN).
The G programs of a group run side by side (row is the fastest grid axis), so the prompt
blocks the first reads from HBM the others read from L2. No split over the sequence: a
decode batch of ≥ 16 rows already gives ≥ 128 programs, and a split would need a second
kernel to merge the partial softmaxes. Measured on an H200 at the GRPO shape (64 rows,
Llama-3.2-1B heads): 12.3 µs per layer against cuDNN's 20.8 µs plus two 2.4 µs scatters
(perf-notes 33); 12.9 µs with RoPE inside, which removes a 1.7 µs fusion and its launch gap
per layer (perf-notes 37).

`decode_attention(..., interpret=True)` runs the same kernel through Pallas's interpreter
(any backend): the CPU tests check it against `attention.cached_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# Run the kernel through Pallas's interpreter wherever the model decodes with shared prefixes
# (`attention.decode_kernel`): set by tests to check the kernel inside the sampler on the CPU.
INTERPRET = False

BLOCK_ROWS = 16  # the query rows of a program: tensor-core dots need M ≥ 16


def _kernel(prefix_rows_ref, prefix_lengths_ref, positions_ref, qkv_ref, *refs, scale: float,
            block_k: int, heads_per_kv: int, heads: int, kv_heads: int, rope: bool,
            rope_scale: float):
    inv_freq_ref = refs[0] if rope else None
    k_out_ref, v_out_ref = refs[-2:]                  # aliased with the cache inputs
    o_ref = refs[-3]
    b, h = pl.program_id(0), pl.program_id(1)
    source = prefix_rows_ref[b]
    position = positions_ref[b]              # this token's slot; slots < position are cached
    shared = jnp.minimum(prefix_lengths_ref[b], position)
    rows = jnp.arange(BLOCK_ROWS)
    query_rows = pl.ds(h * heads_per_kv, BLOCK_ROWS)
    q = pl_triton.load(qkv_ref.at[b, query_rows, :], mask=(rows < heads_per_kv)[:, None],
                       other=0.0)
    k_new = pl_triton.load(qkv_ref.at[b, heads + h, :])
    v_new = pl_triton.load(qkv_ref.at[b, heads + kv_heads + h, :])
    if rope:
        # rotate_half(x) = [−x₂, x₁] is x read with its halves swapped (a gather load of the
        # same few bytes), one sign per lane: q and k keep their layout, so the loop below
        # runs one whole-head dot per block.
        head_dim = q.shape[-1]
        lanes = jnp.arange(head_dim)
        swapped = (lanes + head_dim // 2) % head_dim
        sign = jnp.where(lanes < head_dim // 2, -1.0, 1.0)
        q_swapped = pl_triton.load(
            qkv_ref.at[b, h * heads_per_kv + rows[:, None], swapped[None, :]],
            mask=(rows < heads_per_kv)[:, None], other=0.0)
        k_swapped = pl_triton.load(qkv_ref.at[b, heads + h, swapped])
        angles = position.astype(jnp.float32) * pl_triton.load(
            inv_freq_ref.at[lanes % (head_dim // 2)])
        q = _rope(q, q_swapped, sign, angles, rope_scale)
        k_new = _rope(k_new, k_swapped, sign, angles, rope_scale)
    # This token's keys and values go into the cache (no scatter kernel outside); the loop
    # below reads only slots < position, so no program reads what another writes.
    pl_triton.store(k_out_ref.at[b, position, h, :], k_new.astype(k_out_ref.dtype))
    pl_triton.store(v_out_ref.at[b, position, h, :], v_new.astype(v_out_ref.dtype))
    # One loop over the prompt's blocks (from the group's row) and then the row's own blocks,
    # so Triton's software pipeline (`num_stages`) prefetches across both: a program's time
    # is then about one memory latency plus its blocks' compute, not one latency per block.
    prompt_blocks = pl.cdiv(shared, block_k)
    own_base = (shared // block_k) * block_k
    offsets = jnp.arange(block_k)

    def body(i, carry):
        o, m, l = carry
        in_prompt = i < prompt_blocks
        row = jnp.where(in_prompt, source, b)
        start = pl.multiple_of(
            jnp.where(in_prompt, i * block_k, own_base + (i - prompt_blocks) * block_k), block_k)
        slots = start + offsets
        visible = (slots < position) & jnp.where(in_prompt, slots < shared, slots >= shared)
        k = pl_triton.load(k_out_ref.at[row, pl.ds(start, block_k), h, :],
                           mask=visible[:, None], other=0.0)
        v = pl_triton.load(v_out_ref.at[row, pl.ds(start, block_k), h, :],
                           mask=visible[:, None], other=0.0)
        s = pl_triton.dot(q, k, trans_b=True)                         # [16, block_k] f32
        s = jnp.where(visible[None, :], s * scale, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l_new = correction * l + p.sum(axis=-1)
        o_new = correction[:, None] * o + pl_triton.dot(p.astype(v.dtype), v)
        return o_new, m_new, l_new

    o = jnp.zeros((BLOCK_ROWS, q.shape[-1]), jnp.float32)
    # A finite start (not −inf) keeps e^(m − m') defined before the first visible slot.
    m = jnp.full((BLOCK_ROWS,), -1e30, jnp.float32)
    l = jnp.zeros((BLOCK_ROWS,), jnp.float32)
    blocks = prompt_blocks + pl.cdiv(position - own_base, block_k)
    o, m, l = jax.lax.fori_loop(0, blocks, body, (o, m, l))
    # The new token itself, from registers.
    s = jnp.sum(q.astype(jnp.float32) * k_new.astype(jnp.float32)[None, :], axis=-1) * scale
    m_new = jnp.maximum(m, s)
    correction = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    l = correction * l + p
    o = correction[:, None] * o + p[:, None] * v_new.astype(jnp.float32)[None, :]
    pl_triton.store(o_ref.at[b, pl.ds(h * heads_per_kv, BLOCK_ROWS), :],
                    (o / l[:, None]).astype(o_ref.dtype), mask=(rows < heads_per_kv)[:, None])


def _rope(x, x_swapped, sign, angles, rope_scale: float):
    """`layers.apply_rope` of one token: x·cos + rotate_half(x)·sin, rotate_half(x) =
    sign · x_swapped; `angles` (float32, position · inv_freq per lane) as `apply_rope` makes
    them, cos and sin scaled and rounded to x's dtype first as it rounds them."""
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if rope_scale != 1.0:
        cos, sin = cos * rope_scale, sin * rope_scale
    cos = cos.astype(x.dtype).astype(jnp.float32)
    sin = sin.astype(x.dtype).astype(jnp.float32)
    rotated = sign * x_swapped.astype(jnp.float32)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("rope_scale", "scale", "block_k", "num_warps",
                                             "num_stages", "interpret"),
                   donate_argnames=("k_cache", "v_cache"))
def decode_attention(qkv: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     positions: jax.Array, prefix_rows: jax.Array, prefix_lengths: jax.Array,
                     inv_freq: jax.Array | None = None, *, rope_scale: float = 1.0,
                     scale: float | None = None, block_k: int = 64, num_warps: int = 2,
                     num_stages: int = 3, interpret: bool = False
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Write one token's keys and values per row into the cache and attend over slots
    0 .. positions[b] of the row.

    qkv `[B, H + 2·KV, hd]`: the token's H queries, KV keys and KV values in that order — a
    fused q/k/v projection's output is passed as it is (no slice or RoPE fusion beside the
    kernel). With `inv_freq [hd/2]` (float32, this layer's `layers.rope_inverse_frequencies`)
    the kernel applies RoPE to the queries and keys at positions[b] (`layers.apply_rope`, cos
    and sin times `rope_scale`); without it they arrive rotated. k_cache, v_cache
    `[B, S, KV, hd]` (updated in place: donated under a jit, aliased by the kernel);
    positions, prefix_rows, prefix_lengths `[B]` int32, 0 ≤ positions[b] < S (module
    docstring: row b reads slots 0 .. prefix_lengths[b] − 1 from row prefix_rows[b]); H a
    multiple of KV with H/KV ≤ 16; scale = 1/√hd unless given. Returns `(out [B, H, hd]` in
    qkv's dtype, `k_cache, v_cache)`. Raises ValueError for unsupported head counts.
    """
    batch, _, head_dim = qkv.shape
    kv_heads = k_cache.shape[2]
    heads = qkv.shape[1] - 2 * kv_heads
    if heads <= 0 or heads % kv_heads or heads // kv_heads > BLOCK_ROWS:
        raise ValueError(f"decode_attention: {heads} query heads over {kv_heads} KV heads "
                         f"(needs a multiple, at most {BLOCK_ROWS} per KV head)")
    rope = inv_freq is not None
    if rope and inv_freq.shape != (head_dim // 2,):
        raise ValueError(f"decode_attention: inv_freq of shape {inv_freq.shape} for head size "
                         f"{head_dim} (RoPE in the kernel rotates the whole head)")
    scale = head_dim ** -0.5 if scale is None else scale
    kernel = functools.partial(_kernel, scale=scale, block_k=block_k,
                               heads_per_kv=heads // kv_heads, heads=heads, kv_heads=kv_heads,
                               rope=rope, rope_scale=rope_scale)
    length = k_cache.shape[1]
    if interpret:
        # Pallas's interpreter clamps a slice that runs past an array's end (dynamic_slice),
        # where the GPU kernel only masks it: room past the ends keeps every slice in place.
        qkv = jnp.pad(qkv, ((0, 0), (0, BLOCK_ROWS), (0, 0)))
        room = ((0, 0), (0, block_k), (0, 0), (0, 0))
        k_cache, v_cache = jnp.pad(k_cache, room), jnp.pad(v_cache, room)
    whole = lambda a: pl.BlockSpec(a.shape, lambda b, h: (0,) * a.ndim)  # noqa: E731
    operands = (prefix_rows.astype(jnp.int32), prefix_lengths.astype(jnp.int32),
                positions.astype(jnp.int32), qkv) + (
                    (inv_freq.astype(jnp.float32),) if rope else ()) + (k_cache, v_cache)
    out_rows = heads + (BLOCK_ROWS if interpret else 0)  # the interpreter's room again
    shapes = [jax.ShapeDtypeStruct((batch, out_rows, head_dim), qkv.dtype),
              jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
              jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype)]
    params = {} if interpret else {"compiler_params": pl_triton.CompilerParams(
        num_warps=num_warps, num_stages=num_stages)}
    cache_at = len(operands) - 2
    out, k_cache, v_cache = pl.pallas_call(
        kernel, grid=(batch, kv_heads), in_specs=[whole(a) for a in operands],
        out_specs=[whole(s) for s in shapes], out_shape=shapes,
        input_output_aliases={cache_at: 1, cache_at + 1: 2}, interpret=interpret,
        name="cascade_decode_attention", **params)(*operands)
    if interpret:
        out, k_cache, v_cache = out[:, :heads], k_cache[:, :length], v_cache[:, :length]
    return out, k_cache, v_cache
