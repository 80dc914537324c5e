"""Grouped-query attention with RoPE, optional q/k norm, packing masks and a KV cache.

One function serves training, scoring, prefill and decoding, which is what makes sampler
log-probs equal trainer log-probs:

* training / scoring: keys are this call's tokens; with neither positions nor segment ids the
  fast path asks the kernel for a plain causal mask (`is_causal=True`, cuDNN's fused path);
* packed rows: query i sees key j iff segment(i) == segment(j) and position(j) ≤ position(i);
* with a KV cache: this call's keys/values are written into the cache at their absolute
  positions, and query i sees cache slot j iff j ≤ position(i). Slots past a row's current
  position may hold stale values (padding of a shorter prompt); they are never visible, and
  are overwritten before the row's position reaches them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from easyalign.model.config import ModelConfig
from easyalign.model.layers import Einsum, RMSNorm, apply_rope
from easyalign.sharding import constrain


def attention_mask(q_positions: jax.Array, kv_positions: jax.Array,
                   q_segments: jax.Array | None = None, kv_segments: jax.Array | None = None,
                   sliding_window: int | None = None) -> jax.Array:
    """Boolean mask `[B, 1, T, S]`: key position ≤ query position, same segment, in window."""
    mask = kv_positions[:, None, :] <= q_positions[:, :, None]
    if sliding_window is not None:
        mask &= kv_positions[:, None, :] > q_positions[:, :, None] - sliding_window
    if q_segments is not None:
        mask &= q_segments[:, :, None] == kv_segments[:, None, :]
    return mask[:, None, :, :]


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config

        def proj(heads, head_names, bias):
            return Einsum("btd,dhk->bthk", (d, heads, hd), ("embed", head_names, "head_dim"),
                          config=config, rngs=rngs,
                          bias_shape=(heads, hd) if bias else None,
                          bias_names=(head_names, "head_dim"))

        self.q_proj = proj(h, "heads", config.qkv_bias)
        self.k_proj = proj(kv, "kv_heads", config.qkv_bias)
        self.v_proj = proj(kv, "kv_heads", config.qkv_bias)
        self.o_proj = Einsum("bthk,hkd->btd", (h, hd, d), ("heads", "head_dim", "embed"),
                             config=config, rngs=rngs,
                             bias_shape=(d,) if config.o_bias else None, bias_names=("embed",))
        if config.qk_norm:
            self.q_norm = RMSNorm(hd, config=config, rngs=rngs, names=("head_dim",))
            self.k_norm = RMSNorm(hd, config=config, rngs=rngs, names=("head_dim",))

    def __call__(self, x: jax.Array, positions: jax.Array | None, segment_ids: jax.Array | None,
                 inv_freq: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None):
        """x `[B, T, d]` → (out `[B, T, d]`, updated `(k, v)` cache or None)."""
        cfg = self.config
        batch, length = x.shape[:2]
        q = checkpoint_name(self.q_proj(x), "query_proj")
        k = checkpoint_name(self.k_proj(x), "key_proj")
        v = checkpoint_name(self.v_proj(x), "value_proj")
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        rope_positions = (positions if positions is not None
                          else jnp.broadcast_to(jnp.arange(length), (batch, length)))
        q = apply_rope(q, rope_positions, inv_freq)
        k = apply_rope(k, rope_positions, inv_freq)
        q = constrain(q, ("batch", "length", "act_heads", None))
        k = constrain(k, ("batch", "length", "act_kv_heads", None))

        mask, is_causal, impl = None, False, cfg.attention_impl
        if cache is not None:
            # Write this call's keys/values at their absolute positions, attend over the cache.
            rows = jnp.arange(batch)[:, None]
            k_cache = cache[0].at[rows, rope_positions].set(k.astype(cache[0].dtype))
            v_cache = cache[1].at[rows, rope_positions].set(v.astype(cache[1].dtype))
            cache = (k_cache, v_cache)
            k, v = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
            slots = jnp.broadcast_to(jnp.arange(k.shape[1]), (batch, k.shape[1]))
            mask = attention_mask(rope_positions, slots, sliding_window=cfg.sliding_window)
            impl = "xla"  # single-token decode is bandwidth-bound; cuDNN brings nothing there
        elif positions is not None or segment_ids is not None:
            mask = attention_mask(rope_positions, rope_positions, segment_ids, segment_ids,
                                  cfg.sliding_window)
        else:
            is_causal = True

        window = None
        if is_causal and cfg.sliding_window is not None:
            window = (cfg.sliding_window - 1, 0)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                           local_window_size=window, implementation=impl)
        out = checkpoint_name(out, "attention")
        return checkpoint_name(self.o_proj(out), "attention_out"), cache
