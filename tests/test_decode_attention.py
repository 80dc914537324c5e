"""The shared-prefix decode kernel (`model.decode_attention`), run through Pallas's interpreter.

Its reference is the model's own cached decode path (`attention.write_cache` then
`attention.cached_attention`, plain XLA): the same attention and the same cache after the
write. Non-leader rows' copies of a shared prompt are overwritten with garbage, so a kernel
that read them instead of the leader's would fail. In the sampler, grouped sampling through
the kernel (static batch, and refilled slots whose group leaders get re-admitted) gives the
tokens of the prompts repeated G times through the XLA path.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from easyalign import sampler as S
from easyalign.model import create_model, decode_attention, preset
from easyalign.model.attention import cached_attention, write_cache
from easyalign.model.layers import apply_rope, rope_inverse_frequencies
from easyalign.sampler.decode import share_prompts
from easyalign.model.transformer import KVCache

pytestmark = pytest.mark.usefixtures("full_fp32_matmuls")


@pytest.mark.parametrize("rope", [False, True])
def test_kernel_equals_the_cached_decode_path(rope):
    """With `rope`, the kernel rotates q and k itself: the reference rotates them with
    `layers.apply_rope` (LongRoPE's cos/sin scale included) before the cached path."""
    rng = np.random.default_rng(0)
    B, slots, kv_heads, per_kv, hd = 8, 50, 2, 3, 16
    k = rng.standard_normal((B, slots, kv_heads, hd)).astype(np.float32)
    v = rng.standard_normal((B, slots, kv_heads, hd)).astype(np.float32)
    # two groups of three rows sharing a prompt of 20 and 7 tokens, then two rows alone: one
    # decoding into an empty cache (slot 0), one whose declared prefix passes its position
    leader = np.array([0, 0, 0, 3, 3, 3, 6, 7])
    prompt = np.array([20, 20, 20, 7, 7, 7, 0, 10])
    positions = np.array([25, 20, slots - 1, 30, 7, 12, 0, 5])
    for b in range(B):  # the group's rows hold their prompt's keys, as a prefill writes them
        k[b, :prompt[b]], v[b, :prompt[b]] = k[leader[b], :prompt[b]], v[leader[b], :prompt[b]]
    q = rng.standard_normal((B, kv_heads * per_kv, hd)).astype(np.float32)
    k_new = rng.standard_normal((B, kv_heads, hd)).astype(np.float32)
    v_new = rng.standard_normal((B, kv_heads, hd)).astype(np.float32)
    at = jnp.asarray(positions)[:, None]
    inv_freq, rope_scale = rope_inverse_frequencies(hd, 10_000.0, None), 1.25
    q_rot, k_rot = jnp.asarray(q), jnp.asarray(k_new)
    if rope:
        q_rot, k_rot = (apply_rope(x[:, None], at, inv_freq, rope_scale)[:, 0]
                        for x in (q_rot, k_rot))
    k_ref = write_cache(jnp.asarray(k), k_rot[:, None], at)
    v_ref = write_cache(jnp.asarray(v), jnp.asarray(v_new)[:, None], at)
    expected = cached_attention(q_rot[:, None], k_ref, v_ref, at)[:, 0]
    garbage_k, garbage_v = k.copy(), v.copy()
    for b in np.flatnonzero(leader != np.arange(B)):
        garbage_k[b, :prompt[b]] = garbage_v[b, :prompt[b]] = 1e3
    qkv = jnp.concatenate([jnp.asarray(q), jnp.asarray(k_new), jnp.asarray(v_new)], axis=1)
    for block_k in (16, 64):
        out, k_out, v_out = decode_attention.decode_attention(
            qkv, jnp.asarray(garbage_k), jnp.asarray(garbage_v), jnp.asarray(positions),
            jnp.asarray(leader), jnp.asarray(prompt), inv_freq if rope else None,
            rope_scale=rope_scale, block_k=block_k, interpret=True)
        np.testing.assert_allclose(out, expected, atol=2e-6)
        np.testing.assert_allclose(np.asarray(k_out)[np.arange(B), positions], k_rot,
                                   atol=1e-6)
        np.testing.assert_array_equal(np.asarray(v_out)[np.arange(B), positions], v_new)
        # every other slot untouched
        keep = np.ones((B, slots), bool)
        keep[np.arange(B), positions] = False
        np.testing.assert_array_equal(np.asarray(k_out)[keep], garbage_k[keep])
    with pytest.raises(ValueError, match="query heads"):
        decode_attention.decode_attention(
            jnp.zeros((B, 5 + 2 * kv_heads, hd)), jnp.asarray(k), jnp.asarray(v),
            jnp.asarray(positions), jnp.asarray(leader), jnp.asarray(prompt), interpret=True)


def test_share_prompts_points_groups_at_their_first_slot():
    """Admission declares each prompt's G slots readers of its first slot; a slot whose
    leader is re-admitted (another prompt's keys now) reads its own copy again."""
    config = preset("tiny", dtype="float32")
    cache = KVCache.zeros(config, 8, 16)
    cache = KVCache(cache.k, cache.v, jnp.arange(8, dtype=jnp.int32), jnp.zeros(8, jnp.int32))
    cache = share_prompts(cache, jnp.asarray([[0, 1], [2, 3], [8, 8]]), jnp.asarray([5, 7, 9]))
    np.testing.assert_array_equal(cache.prefix_rows, [0, 0, 2, 2, 4, 5, 6, 7])
    np.testing.assert_array_equal(cache.prefix_lengths, [5, 5, 7, 7, 0, 0, 0, 0])
    # slot 2 (leader of 3) is refilled with a prompt also placed in slot 5
    cache = share_prompts(cache, jnp.asarray([[5, 2]]), jnp.asarray([4]))
    np.testing.assert_array_equal(cache.prefix_rows, [0, 0, 5, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(cache.prefix_lengths, [5, 5, 4, 0, 0, 4, 0, 0])


@pytest.mark.parametrize("change", [{}, dict(qk_norm=True), dict(partial_rotary_factor=0.5)],
                         ids=["fused_qkv", "qk_norm", "partial_rotary"])
def test_grouped_sampling_through_the_kernel(monkeypatch, change):
    """G samples per prompt decoded through the kernel — a static batch, and 6 slots refilled
    one prompt at a time — equal the prompts repeated G times through the XLA path. With these
    prompts and stops a group's first slot is re-admitted while its other slots still decode
    (a `share_prompts` that kept them reading it fails here: checked by mutation). The kernel
    takes the fused q/k/v output and ropes it itself; with q/k norms (Qwen 3) the normed heads;
    with partial rotary (Phi-4-mini) heads rotated before it (those two on a static batch)."""
    graphdef, state = nnx.split(create_model(preset("tiny", dtype="float32", **change), seed=0))
    G, N = 3, 8
    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 9, N).astype(np.int32)
    tokens = rng.integers(3, 200, (N, 8)).astype(np.int32)
    run = lambda *a, **kw: S.generate(graphdef, state, *a, jax.random.key(5),  # noqa: E731
                                      max_new_tokens=12, method=S.Temperature(1.0), **kw)
    free = run(np.repeat(tokens, G, 0), np.repeat(lengths, G))
    stops = tuple(sorted({int(free.tokens[r, 1 + r % 4]) for r in range(0, N * G, 5)}))
    repeated = run(np.repeat(tokens, G, 0), np.repeat(lengths, G), stop_tokens=stops)
    monkeypatch.setattr(decode_attention, "INTERPRET", True)
    for slots in (None, 6) if not change else (None,):  # refills: the kernel's bookkeeping
        grouped = run(tokens, lengths, stop_tokens=stops, num_samples=G, slots=slots, refill=1)
        np.testing.assert_array_equal(grouped.tokens, repeated.tokens)
        np.testing.assert_array_equal(grouped.lengths, repeated.lengths)
        np.testing.assert_allclose(grouped.logprobs, repeated.logprobs, atol=1e-5)
    assert 0 < int(repeated.done.sum()) < N * G  # some rows stop early and free their slots



def test_only_models_the_kernel_tiles_declare_shared_prompts(monkeypatch):
    """The sampler declares shared prompts only for a model whose decode the kernel runs: not
    with a sliding window or a soft-cap, more than 16 query heads per KV head, or a head size
    Triton cannot tile (Phi-3's 96); nor where the kernel does not run (here: the CPU)."""
    from easyalign.model.attention import reads_shared_prompts

    assert not reads_shared_prompts(preset("tiny"))  # the CPU, no interpreter
    monkeypatch.setattr(decode_attention, "INTERPRET", True)
    assert reads_shared_prompts(preset("tiny"))
    for change in (dict(sliding_window=8), dict(attn_logit_softcapping=50.0),
                   dict(num_heads=34, num_kv_heads=2, head_dim=16), dict(head_dim=96)):
        assert not reads_shared_prompts(preset("tiny", **change)), change
