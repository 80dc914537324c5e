"""Grouped-query attention with RoPE, optional q/k norm, packing masks and a KV cache.

One function serves training, scoring, prefill and decoding, which is what makes sampler
log-probs equal trainer log-probs:

* training / scoring: keys are this call's tokens; with neither positions nor segment ids the
  fast path asks the kernel for a plain causal mask (`is_causal=True`, cuDNN's fused path);
* packed rows: query i sees key j iff segment(i) == segment(j) and position(j) ≤ position(i);
* prefill (`mode="prefill"`, an empty cache): exactly the training computation; this call's
  keys/values are handed back so the caller writes them into the cache;
* decode (`mode="decode"`): this call's keys and values are written into the layer's cache
  buffer at their positions, then query t of row b attends over the cache slots j ≤ p_bt (its
  own position) — one attention over one buffer, no concatenation. With `attention_impl="cudnn"`
  (bf16), one token per row, no soft-cap and no window, that is cuDNN's fused kernel with
  per-row key lengths p_b + 1; otherwise `einsum_attention` under the slot mask. When the
  cache declares rows that share a prompt (a sampler's G samples, `KVCache.prefix_rows`) and
  the kernel runs (`decode_kernel`: one GPU), one Pallas kernel writes the keys and values and
  attends, reading each shared prompt once per group (`decode_attention`). Decoding runs
  the layers as a Python loop (`Transformer.trunk`), so each layer updates its own buffer in
  place. Slots > p_b may hold stale values (padding of a shorter prompt, an earlier occupant of
  a sampler slot); they are never visible, and are overwritten before the row's position
  reaches them.

LongRoPE (Phi-3 128K) chooses its frequencies by the length of the sequence, so when decoding
crosses the original context every earlier key and value would change (their hidden states were
computed with the short factors). The cache keeps them as computed: steps after the crossing use
the long factors for the new token only, and differ from a full forward over the sequence.
(HF's `Phi3ForCausalLM.prepare_inputs_for_generation` means to recompute the cache there; in
transformers 5.17 it then decodes the last token alone. Re-prefilling at the crossing belongs
in the sampler: not done yet.)

Gemma 2/3 (HF `modeling_gemma2.py` `eager_attention_forward`, arXiv 2408.00118 §2): scores are
s = (q·k) · query_pre_attn_scalar^(−1/2), soft-capped s → c·tanh(s / c) before the mask, and
layers alternate between a sliding window and global attention. The layer's `local` flag is a
traced scalar (scanned per-layer data): on the causal fast path `lax.cond` picks between two
static-window kernel calls; mask paths and the cached decode path use the window
W if local else ∞ as a traced number. A soft-cap has no fused kernel: those models always run
`einsum_attention` (XLA), whatever `attention_impl` says.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from easyalign.model import decode_attention
from easyalign.model import lora as lora_lib
from easyalign.model.config import ModelConfig
from easyalign.model.layers import (Einsum, RMSNorm, apply_rope, rope_attention_scaling,
                                    separate_operands, split_fused)
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


NO_WINDOW = 2 ** 30  # a window no sequence reaches: the global layers' "window"


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     scale: float, softcap: float | None = None) -> jax.Array:
    """softmax(cap(q·kᵀ · scale) masked) · v in plain XLA, for what fused kernels cannot do.

    q `[B, T, H, hd]`, k/v `[B, S, KV, hd]`, mask `[B, 1, T, S]` (True = visible); cap(s) =
    c·tanh(s / c) (Gemma 2, HF `eager_attention_forward`). Scores and softmax in float32.
    Returns `[B, T, H, hd]`.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    qg = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(batch, length, heads, head_dim)


class Attention(nnx.Module):
    """GQA self-attention `[B, T, d] → [B, T, d]` (HF `LlamaAttention`, `Gemma2Attention`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.config = config
        self.rope_scale = rope_attention_scaling(config.rope_scaling)

        def proj(heads, head_names, bias, name):
            return Einsum("btd,dhk->bthk", (d, heads, hd), ("embed", head_names, "head_dim"),
                          config=config, rngs=rngs,
                          bias_shape=(heads, hd) if bias else None,
                          bias_names=(head_names, "head_dim"), lora=adapter(config, name))

        self.q_proj = proj(h, "heads", config.qkv_bias, "q")
        self.k_proj = proj(kv, "kv_heads", config.qkv_bias, "k")
        self.v_proj = proj(kv, "kv_heads", config.qkv_bias, "v")
        # Stored `[embed, heads, head_dim]`, FSDP's axis leading: see MLP.down_proj.
        self.o_proj = Einsum("bthk,dhk->btd", (d, h, hd), ("embed", "heads", "head_dim"),
                             config=config, rngs=rngs,
                             bias_shape=(d,) if config.o_bias else None, bias_names=("embed",),
                             lora=adapter(config, "o"))
        if config.qk_norm:
            self.q_norm = RMSNorm(hd, config=config, rngs=rngs, names=("head_dim",))
            self.k_norm = RMSNorm(hd, config=config, rngs=rngs, names=("head_dim",))

    def __call__(self, x: jax.Array, positions: jax.Array | None, segment_ids: jax.Array | None,
                 inv_freq: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None,
                 mode: str | None = None, local: jax.Array | None = None,
                 dropout_key: jax.Array | None = None, shared_prefix=None):
        """x `[B, T, d]` → (out `[B, T, d]`, this call's `(k, v)` for a prefill, the updated
        cache buffers `(k_cache, v_cache)` for a decode).

        `inv_freq [r/2]` is this layer's RoPE; `local` (a traced bool, only when the config has
        `layer_types`) says whether this layer attends within `sliding_window`; `dropout_key`
        draws the LoRA adapters' input dropout (training). With `shared_prefix` (a
        `shared_prefix.SharedPrefix`; no cache) x is its stream `[N, P + G·R, d]`: the prompt
        block attends causally, each response over its prompt and itself.
        """
        cfg = self.config
        batch, length = x.shape[:2]
        keys = lora_lib.split_key(dropout_key, 4)
        fused = getattr(self, "qkv_kernel", None)  # the sampler's (`fuse_for_inference`)
        qkv = None
        if fused is not None:
            qkv = jnp.einsum("btd,dhk->bthk", x.astype(self.q_proj.dtype), fused[...])
            q, k, v = split_fused(qkv, (cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_heads), 2)
        else:
            x_q, x_k, x_v = separate_operands(x, 3, mode == "decode")  # no merged q/k/v weights
            q = checkpoint_name(self.q_proj(x_q, keys[0]), "query_proj")
            k = checkpoint_name(self.k_proj(x_k, keys[1]), "key_proj")
            v = checkpoint_name(self.v_proj(x_v, keys[2]), "value_proj")
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if shared_prefix is not None:
            positions = shared_prefix.positions()
        rope_positions = (positions if positions is not None
                          else jnp.broadcast_to(jnp.arange(length), (batch, length)))
        # The window as a number: static (one for every layer) or traced (per layer).
        window = cfg.sliding_window
        if cfg.layer_types is not None and window is not None:
            window = jnp.where(local, window, NO_WINDOW)
        scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar ** -0.5
        impl = attention_implementation(cfg.attention_impl, q.dtype)
        plain_decode = (mode == "decode" and length == 1 and window is None
                        and cfg.attn_logit_softcapping is None)
        use_kernel = plain_decode and cache[2] is not None and decode_kernel(impl) is not None
        if not use_kernel:  # (the kernel path ropes q and k as one array, below)
            q = constrain(apply_rope(q, rope_positions, inv_freq, self.rope_scale),
                          ("batch", "length", "act_heads", None))
            k = constrain(apply_rope(k, rope_positions, inv_freq, self.rope_scale),
                          ("batch", "length", "act_kv_heads", None))
        if use_kernel:
            # Rows that share a prompt: one kernel writes this token's keys and values and
            # attends, reading each shared prompt once per group (`decode_attention`). It
            # takes q, k and v as one array — the fused projection's output itself when
            # nothing changes them on the way — and applies RoPE when it rotates whole heads
            # (partial rotary: q and k arrive rotated, as one fusion).
            rope_inside = 2 * inv_freq.shape[-1] == cfg.head_dim
            if qkv is not None and rope_inside and not cfg.qk_norm:
                packed = qkv
            else:
                qk = jnp.concatenate([q, k], axis=2)
                if not rope_inside:
                    qk = apply_rope(qk, rope_positions, inv_freq, self.rope_scale)
                packed = jnp.concatenate([qk, v.astype(qk.dtype)], axis=2)
            out, k, v = decode_attention.decode_attention(
                packed[:, 0], cache[0], cache[1], rope_positions[:, 0], *cache[2],
                inv_freq if rope_inside else None, rope_scale=self.rope_scale, scale=scale,
                interpret=decode_kernel(impl) == "interpret")
            out = out[:, None]
        elif mode == "decode":
            # Write this call's keys and values first, then attend over the cache alone.
            k, v = (write_cache(cache[0], k, rope_positions),
                    write_cache(cache[1], v, rope_positions))
            if impl == "cudnn" and plain_decode:
                # One new token per row: the cache's first position + 1 slots are its keys.
                out = jax.nn.dot_product_attention(
                    q, k, v, scale=scale, key_value_seq_lengths=rope_positions[:, 0] + 1,
                    implementation="cudnn")
            else:
                out = cached_attention(q, k, v, rope_positions, window, scale,
                                       cfg.attn_logit_softcapping)
        elif shared_prefix is not None:
            (qp, qr), (kp, kr), (vp, vr) = (shared_prefix.split(a) for a in (q, k, v))
            out_prompt = self._causal(qp, kp, vp, rope_positions[:, :shared_prefix.prompt_width],
                                      scale, impl, window, local)
            out_responses = self._masked(
                qr, shared_prefix.response_keys(kp, kr), shared_prefix.response_keys(vp, vr),
                shared_prefix.response_visibility(window), scale, impl)
            out = shared_prefix.join(out_prompt, out_responses)
        elif mode == "prefill" or (positions is None and segment_ids is None):
            out = self._causal(q, k, v, rope_positions, scale, impl, window, local)
        else:
            mask = attention_mask(rope_positions, rope_positions, segment_ids, segment_ids,
                                  window)
            out = self._masked(q, k, v, mask, scale, impl)
        out = checkpoint_name(out, "attention")
        # prefill: this call's keys and values (the caller writes them); decode: the cache.
        new_kv = None if mode is None else (k, v)
        return checkpoint_name(self.o_proj(out, keys[3]), "attention_out"), new_kv

    def _causal(self, q, k, v, positions, scale, impl, window, local):
        """Causal attention of a call whose positions are 0..T−1 (index order is position
        order): the fused kernel's causal mask, per-layer windows through `lax.cond`; a
        soft-cap through `einsum_attention` under the position mask."""
        cfg = self.config
        if cfg.attn_logit_softcapping is not None:  # no fused kernel soft-caps
            return self._masked(q, k, v, attention_mask(positions, positions,
                                                        sliding_window=window), scale, impl)

        def causal(local_window):
            return jax.nn.dot_product_attention(
                q, k, v, is_causal=True, scale=scale, local_window_size=local_window,
                implementation=impl)

        if cfg.sliding_window is None:
            return causal(None)
        if cfg.layer_types is None:
            return causal((cfg.sliding_window - 1, 0))
        # per-layer: two static-window calls, one runs (a conditional in the scan)
        return jax.lax.cond(local, lambda: causal((cfg.sliding_window - 1, 0)),
                            lambda: causal(None))

    def _masked(self, q, k, v, mask, scale, impl):
        """Attention under a boolean `mask [B, 1, T, S]` (True = visible); soft-capped scores
        through `einsum_attention` (XLA), whatever `attention_impl` says."""
        softcap = self.config.attn_logit_softcapping
        if softcap is not None:
            return einsum_attention(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None
                                    else scale, softcap)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                            implementation=impl)


def adapter(config: ModelConfig, name: str) -> lora_lib.LoraConfig | None:
    """The LoRA config for projection `name` ("q", "up", ...) if the model adapts it."""
    lora = config.lora
    return lora if lora is not None and name in lora.targets else None


def attention_implementation(requested: str, dtype) -> str:
    """The `jax.nn.dot_product_attention` implementation for `requested` at compute `dtype`.

    cuDNN's fused kernel takes fp16/bf16 (and fp8) only: a model trained with
    `attention_impl="cudnn"` and then run in float32 (eval and latency compute in the stored
    dtype unless told otherwise) uses XLA's attention, which computes the same function.
    """
    if requested == "cudnn" and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16),
                                                          jnp.dtype(jnp.float16)):
        return "xla"
    return requested


def decode_kernel(impl: str) -> str | None:
    """How the shared-prefix decode kernel runs for `impl`: "gpu" (Triton) for the fused
    "cudnn" path on one device (a Pallas call is not partitioned: a sharded cache would be
    gathered whole), "interpret" when `decode_attention.INTERPRET` is set (tests on the CPU),
    None otherwise (the cuDNN or XLA path, which reads every row's own copy)."""
    if decode_attention.INTERPRET:
        return "interpret"
    mesh = jax.sharding.get_abstract_mesh()
    if impl == "cudnn" and jax.default_backend() == "gpu" and (mesh.empty or mesh.size == 1):
        return "gpu"
    return None


def reads_shared_prompts(config: ModelConfig) -> bool:
    """Whether this model's decode steps go through the shared-prompt kernel when a cache
    declares rows that share a prompt: no window, no soft-cap, heads the kernel tiles (at most
    16 query heads per KV head, a power-of-two head size: Triton's blocks) and `decode_kernel`
    runs. The sampler declares shared prompts only then."""
    impl = attention_implementation(config.attention_impl, config.compute_dtype)
    per_kv, rest = divmod(config.num_heads, config.num_kv_heads)
    head_dim = config.head_dim
    return (config.sliding_window is None and config.attn_logit_softcapping is None
            and rest == 0 and per_kv <= decode_attention.BLOCK_ROWS
            and head_dim >= 16 and head_dim & (head_dim - 1) == 0
            and decode_kernel(impl) is not None)


def cached_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     positions: jax.Array, sliding_window: int | jax.Array | None = None,
                     scale: float | None = None, softcap: float | None = None) -> jax.Array:
    """Attention of this call's queries over a cache that already holds their own keys.

    q `[B, T, H, hd]`, caches `[B, S, KV, hd]`, positions `[B, T]`: query t of row b sees the
    cache slots j ≤ positions[b, t] (and > positions[b, t] − window). scale = 1/√hd unless given
    (Gemma: query_pre_attn_scalar^−½); `softcap` as `einsum_attention`, which computes it.
    Returns `[B, T, H, hd]`.
    """
    slots = jnp.arange(k_cache.shape[1])
    visible = slots[None, None, :] <= positions[:, :, None]                    # [B, T, S]
    if sliding_window is not None:
        visible &= slots[None, None, :] > positions[:, :, None] - sliding_window
    return einsum_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype),
                            visible[:, None], q.shape[-1] ** -0.5 if scale is None else scale,
                            softcap)


def write_cache(buffer: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """`buffer [B, S, KV, hd]` with row b's `new [B, T, KV, hd]` written at `positions [B, T]`."""
    rows = jnp.arange(buffer.shape[0])[:, None]
    return buffer.at[rows, positions].set(new.astype(buffer.dtype), mode="drop")
