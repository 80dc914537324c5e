"""The decoder: one implementation for the Llama family, with an LM head or a scalar head.

    h_0 = embed(tokens)
    h'_l = h_l + Attn(RMSNorm(h_l))            (GQA, RoPE, optional q/k norm and biases)
    h_{l+1} = h'_l + W_down(silu(W_gate RMSNorm(h'_l)) ⊙ W_up RMSNorm(h'_l))
    out = RMSNorm(h_L) → logits = out·W_head (W_head = embeddingᵀ when tied) | reward = out·w

Gemma 2/3 (HF `modeling_gemma2.py` `Gemma2DecoderLayer`, arXiv 2408.00118) put a norm on each
branch's output as well ("sandwich" norms, `sandwich_norms`), scale the embeddings by √d, use
GeGLU, and soft-cap the logits: logits → c·tanh(logits / c) (`final_logit_softcapping`):

    h'_l = h_l + RMSNorm_attn_out(Attn(RMSNorm(h_l)))
    h_{l+1} = h'_l + RMSNorm_mlp_out(MLP(RMSNorm(h'_l)))

Per-layer differences (sliding or global attention, the layer's RoPE frequencies) are arrays
with a leading `layers` axis, scanned with the weights (`Transformer.layer_data`).

Layers are stored stacked (a leading `layers` axis on every block weight, built with
`nnx.vmap`) and run under `jax.lax.scan` (`scan_layers=True`: compile time independent of
depth) or a Python loop over the same stacked weights (faster on GPU: XLA schedules and fuses
across layers; always used with a KV cache). `remat` chooses what the backward pass
keeps (see `REMAT_POLICIES`). The same `trunk` serves training, scoring, prefill and one-token
decoding with a KV cache, so sampler and trainer compute identical log-probs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from easyalign.model import lora as lora_lib
from easyalign.model.attention import Attention, adapter
from easyalign.model.config import ModelConfig
from easyalign.model.layers import (Einsum, Embed, RMSNorm, compute_copy, fuse_kernels,
                                    rope_inverse_frequencies, separate_operands, split_fused)
from easyalign.model.moe import MoE, RouterStats, load_balancing_loss
from easyalign.model.shared_prefix import SharedPrefix
from easyalign.sharding import constrain

_SAVED_PROJECTIONS = ("query_proj", "key_proj", "value_proj", "attention_out",
                      "mlp_gate", "mlp_up", "mlp_out")

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_proj": jax.checkpoint_policies.save_only_these_names(*_SAVED_PROJECTIONS),
    "save_proj_attn": jax.checkpoint_policies.save_only_these_names(
        *_SAVED_PROJECTIONS, "attention"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values, one `[batch, max_length, kv_heads, head_dim]` array per layer.

    Per-layer buffers rather than one stacked array: each layer reads and updates its own
    buffer in place, where slicing a stacked cache would copy every layer's slice every step.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    # Rows that share a prompt (a sampler's G samples): row b's slots 0 .. prefix_lengths[b] − 1
    # hold the same keys and values as row prefix_rows[b]'s, and decode attention may read them
    # there (`decode_attention`). None: no sharing declared.
    prefix_rows: jax.Array | None = None
    prefix_lengths: jax.Array | None = None

    def shared_prefix(self) -> tuple[jax.Array, jax.Array] | None:
        """`(prefix_rows, prefix_lengths)` when declared, else None."""
        return None if self.prefix_rows is None else (self.prefix_rows, self.prefix_lengths)

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_length: int, dtype=None) -> "KVCache":
        shape = (batch, max_length, config.num_kv_heads, config.head_dim)
        dtype = dtype or config.compute_dtype
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def head_matmul(hidden: jax.Array, kernel: jax.Array, kernel_axes: str = "dv") -> jax.Array:
    """`hidden @ kernel` accumulated and returned in float32 (log-probs need the precision).

    `kernel_axes` names the kernel's layout: `"dv"` for a `[d, vocab]` LM head, `"vd"` for a
    tied embedding table used as it is stored (no transpose of the table or its gradient).
    The backward pass casts the float32 cotangent back to the compute dtype before its two
    matmuls: left to autodiff, a float32 cotangent would promote them to float32 matmuls —
    the largest matmuls of a small model (the vocabulary projection), several times slower
    on tensor cores for no useful precision in the gradient. The kernel's gradient is likewise
    returned straight from the matmul in the kernel's dtype (accumulated in float32 inside it):
    under FSDP its partial sums over the batch are reduce-scattered from the matmul's output,
    and a float32 output would send twice the bytes of every other weight's gradient — the
    vocabulary matrix is the largest of a small model (measured: a 1 GB float32 reduce-scatter
    per step at the Llama-3.2-1B shape).
    """
    return jnp.einsum(f"...d,{kernel_axes}->...v", hidden, kernel,
                      preferred_element_type=jnp.float32)


def _head_matmul_fwd(hidden, kernel, kernel_axes):
    return head_matmul(hidden, kernel, kernel_axes), (hidden, kernel)


def _head_matmul_bwd(kernel_axes, residuals, cotangent):
    hidden, kernel = residuals
    cotangent = cotangent.astype(hidden.dtype)
    d_hidden = jnp.einsum(f"...v,{kernel_axes}->...d", cotangent, kernel)
    d_kernel = jnp.einsum(f"...d,...v->{kernel_axes}", hidden, cotangent,
                          preferred_element_type=kernel.dtype)
    return d_hidden, d_kernel


head_matmul.defvjp(_head_matmul_fwd, _head_matmul_bwd)


# The MLP's gate: SwiGLU (Llama, arXiv 2002.05202) or GeGLU with the tanh approximation of GELU
# (Gemma's `gelu_pytorch_tanh`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))).
ACTIVATIONS = {"silu": jax.nn.silu,
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class MLP(nnx.Module):
    """down(act(gate(x)) ⊙ up(x)), `[B, T, d] → [B, T, d]` (HF `LlamaMLP`, `Gemma2MLP`)."""


    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        bias = config.mlp_bias
        self.act = config.hidden_act
        self.gate_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), config=config,
                                rngs=rngs, bias_shape=(f,) if bias else None, bias_names=("mlp",),
                                lora=adapter(config, "gate"))
        self.up_proj = Einsum("btd,df->btf", (d, f), ("embed", "mlp"), config=config,
                              rngs=rngs, bias_shape=(f,) if bias else None, bias_names=("mlp",),
                              lora=adapter(config, "up"))
        # Stored `[embed, mlp]` (HF's own order), not `[mlp, embed]`: every kernel keeps the
        # axis FSDP shards (`embed`) leading, so the gradient's reduce-scatter cuts contiguous
        # rows and the optimizer updates the shard in place. Sharded along its minor axis, the
        # gradient shard arrives transposed and AdamW's fused update transposes the fp32 state
        # every step (measured on 2 × H200: 4.5 ms per step for this kernel at Llama-3.2-1B).
        self.down_proj = Einsum("btf,df->btd", (d, f), ("embed", "mlp"), config=config,
                                rngs=rngs, bias_shape=(d,) if bias else None,
                                bias_names=("embed",), lora=adapter(config, "down"))

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 decoding: bool = False) -> jax.Array:
        """`decoding`: keep gate and up separate matmuls (`layers.separate_operands`)."""
        keys = lora_lib.split_key(dropout_key, 3)
        fused = getattr(self, "gate_up_kernel", None)  # the sampler's (`fuse_for_inference`)
        if fused is not None:
            kernel = fused[...]
            gate, up = split_fused(jnp.einsum("btd,df->btf", x.astype(self.gate_proj.dtype),
                                              kernel), (kernel.shape[-1] // 2,) * 2, 2)
        else:
            x_gate, x_up = separate_operands(x, 2, decoding)
            gate = jax.ad_checkpoint.checkpoint_name(self.gate_proj(x_gate, keys[0]),
                                                     "mlp_gate")
            up = jax.ad_checkpoint.checkpoint_name(self.up_proj(x_up, keys[1]), "mlp_up")
        hidden = constrain(ACTIVATIONS[self.act](gate) * up, ("batch", "length", "act_mlp"))
        return jax.ad_checkpoint.checkpoint_name(self.down_proj(hidden, keys[2]), "mlp_out")


class Block(nnx.Module):
    """One decoder layer `[B, T, d] → [B, T, d]`. `post_attn_norm` is the norm between attention
    and MLP (HF `post_attention_layernorm` of Llama, `pre_feedforward_layernorm` of Gemma);
    `attn_out_norm` / `mlp_out_norm` are Gemma's norms of the branch outputs (HF
    `post_attention_layernorm` / `post_feedforward_layernorm`). With `num_experts` the MLP is a
    mixture of experts (`moe.MoE`), whose router statistics the layer returns as well."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        self.mlp = MoE(config, rngs=rngs) if config.num_experts else MLP(config, rngs=rngs)
        self.sandwich = config.sandwich_norms
        if self.sandwich:
            self.attn_out_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
            self.mlp_out_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)

    def __call__(self, x, positions, segment_ids, inv_freq, cache=None, mode=None, local=None,
                 dropout_key=None, shared_prefix=None):
        keys = lora_lib.split_key(dropout_key, 2)
        attn_out, new_kv = self.attn(self.input_norm(x), positions, segment_ids, inv_freq, cache,
                                     mode, local, keys[0], shared_prefix)
        x = x + (self.attn_out_norm(attn_out) if self.sandwich else attn_out)
        stats: RouterStats = {}
        if isinstance(self.mlp, MoE):  # padding (segment 0) is routed but not counted
            mlp_out, stats = self.mlp(self.post_attn_norm(x),
                                      None if segment_ids is None else segment_ids != 0)
        else:
            mlp_out = self.mlp(self.post_attn_norm(x), keys[1], mode == "decode")
        x = x + (self.mlp_out_norm(mlp_out) if self.sandwich else mlp_out)
        return constrain(x, ("batch", "length", "act_embed")), new_kv, stats


class Transformer(nnx.Module):
    """Decoder with an LM head (`head="lm"`) or a scalar head (`head="scalar"`)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config, rngs=rngs)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(layer_rngs):
            return Block(config, rngs=layer_rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(config.hidden_size, config=config, rngs=rngs)
        if config.head == "scalar":
            # Master dtype even over a LoRA base stored in bf16: the head is trained.
            self.score = Einsum("btd,do->bto", (config.hidden_size, 1), ("embed", None),
                                config=config, rngs=rngs, param_dtype=config.param_dtype)
        elif not config.tie_word_embeddings:
            self.lm_head = Einsum("btd,dv->btv", (config.hidden_size, config.vocab_size),
                                  ("embed", "vocab"), config=config, rngs=rngs)

    # ----------------------------------------------------------------------------- trunk
    def trunk(self, tokens: jax.Array, **kwargs) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states `[B, T, d]` (and the updated cache when one is given);
        arguments as `trunk_with_router_loss`."""
        hidden, cache, _ = self.trunk_with_router_loss(tokens, **kwargs)
        return hidden, cache

    def trunk_with_router_loss(
            self, tokens: jax.Array, *, positions: jax.Array | None = None,
            segment_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
            cache: KVCache | None = None, prefill: bool = False,
            cache_rows: jax.Array | None = None, dropout_key: jax.Array | None = None,
            shared_prefix: SharedPrefix | None = None
    ) -> tuple[jax.Array, KVCache | None, jax.Array]:
        """`trunk`'s hidden states and cache, and the router loss the train loss adds:
        `router_aux_loss_coef · L_aux` (`moe.load_balancing_loss` over every layer's real
        tokens; a float32 0 for a dense model or a coefficient of 0).

        `attention_mask [B, T]` (1 = token, 0 = padding) is HF's convention; it is turned into
        segment ids so padding never mixes with tokens. With a cache, `positions` are the
        absolute positions of `tokens` (default 0..T−1); `prefill=True` declares the cache empty
        (attention stays within this call, through the fused kernel), otherwise this call
        continues the cached sequence (see `attention.py`). Either way each layer's new keys
        and values are written into its cache buffer at their positions: row b's into cache row b,
        or, for a prefill with `cache_rows` (`[B]` or `[B, K]` int), into cache row
        `cache_rows[b]` (each of the K rows: one prompt prefilled once for K samples); rows out
        of range are skipped (a slot engine's unused admissions). `dropout_key` turns
        on the LoRA adapters' input dropout (a training forward; ignored without adapters or
        at rate 0), one key per layer drawn from it. `shared_prefix` (no cache, positions or
        segment ids; a dense model): `tokens` is that layout's stream `[N, P + G·R]`, each
        prompt computed once for its G completions (`model.shared_prefix`).
        """
        cfg = self.config
        if attention_mask is not None:
            if segment_ids is not None:
                raise ValueError("pass either attention_mask or segment_ids, not both")
            segment_ids = attention_mask.astype(jnp.int32)
        mode = None if cache is None else ("prefill" if prefill else "decode")
        if cache_rows is not None and mode != "prefill":
            raise ValueError("cache_rows is for a prefill into an existing cache")
        if cache is not None and positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if shared_prefix is not None:
            if cache is not None or positions is not None or segment_ids is not None:
                raise ValueError("shared_prefix takes no cache, positions or segment ids")
            if cfg.num_experts:
                raise ValueError("shared_prefix: a mixture of experts would route the prompt "
                                 "once instead of G times (router statistics change)")
            if tokens.shape[1] != shared_prefix.stream_width:
                raise ValueError(f"shared_prefix: tokens of width {tokens.shape[1]}, the layout's "
                                 f"stream is {shared_prefix.stream_width}")
        # LongRoPE switches factors by the call's sequence length (HF: max(position_ids) + 1).
        seq_len = (tokens.shape[1] if positions is None else jnp.max(positions) + 1)
        if shared_prefix is not None:  # the assembled rows' length
            seq_len = shared_prefix.prompt_width + shared_prefix.response_width
        per_layer = self.layer_data(seq_len)
        if dropout_key is not None and cfg.lora is not None and cfg.lora.dropout > 0:
            per_layer["dropout_key"] = jax.random.split(dropout_key, cfg.num_layers)
        x = constrain(self.embed_tokens(tokens), ("batch", "length", "act_embed"))

        graphdef, layer_state = nnx.split(self.layers)

        def layer(x, params_and_data, layer_cache):
            params, data = params_and_data
            block = nnx.merge(graphdef, params)
            return block(x, None if mode == "prefill" else positions, segment_ids,
                         data["inv_freq"], layer_cache, mode, data.get("local"),
                         data.get("dropout_key"), shared_prefix)

        scanned_layers = cfg.scan_layers and mode != "decode"
        if cfg.remat != "none":
            # `prevent_cse=False` is safe only under the scan, whose loop keeps XLA from merging
            # a layer's backward recomputation with its forward. In the Python loop over layers
            # XLA's CSE folds the recomputation back into the forward pass and every policy
            # keeps every activation: measured on an H200 at the Llama-3.2-1B shape (64 × 512
            # tokens), the compiled GRPO step's temporaries were 51.1 GiB with "full" as with
            # "none"; with prevent_cse they are 14.0 GiB (the scan's: 10.5 GiB).
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat],
                                   prevent_cse=not scanned_layers)

        rows = jnp.arange(tokens.shape[0])[:, None]
        if cache_rows is not None:  # [B, K, 1] against positions [B, 1, T]: K copies per row
            rows = cache_rows.reshape(tokens.shape[0], -1)[:, :, None]

        def write(buf, kv):
            at = (rows, positions) if cache_rows is None else (rows, positions[:, None, :])
            kv = kv if cache_rows is None else kv[:, None]
            return buf.at[at].set(kv.astype(buf.dtype), mode="drop")

        if scanned_layers:
            # Without a cache, or filling an empty one (prefill reads no cache: each layer
            # attends within this call): one scanned layer, so compile time does not grow with
            # depth. A prefill returns every layer's keys and values stacked, then writes them
            # into the per-layer buffers once, after the scan.
            def scanned(x, params):
                x, kv, stats = layer(x, params, None)
                return x, (kv if mode == "prefill" else None, stats)

            x, (stacked, stats) = jax.lax.scan(scanned, x, (layer_state, per_layer))
            router_loss = self._router_loss(stats)
            if mode is None:
                return self.final_norm(x), None, router_loss
            return self.final_norm(x), dataclasses.replace(
                cache, k=tuple(write(cache.k[i], stacked[0][i]) for i in range(cfg.num_layers)),
                v=tuple(write(cache.v[i], stacked[1][i]) for i in range(cfg.num_layers))), \
                router_loss
        # Decoding (or scan_layers off): a Python loop over the stacked weights, so that each
        # layer reads and updates its own cache buffer in place (see KVCache).
        new_k, new_v, all_stats = [], [], []
        for i in range(cfg.num_layers):
            params = jax.tree.map(functools.partial(lambda a, i: a[i], i=i),
                                  (layer_state, per_layer))
            layer_cache = None if mode != "decode" else (cache.k[i], cache.v[i],
                                                         cache.shared_prefix())
            x, kv, stats = layer(x, params, layer_cache)
            all_stats.append(stats)
            if mode == "decode":  # the layer wrote its keys and values into its buffers
                new_k.append(kv[0])
                new_v.append(kv[1])
            elif cache is not None:
                new_k.append(write(cache.k[i], kv[0]))
                new_v.append(write(cache.v[i], kv[1]))
        hidden = self.final_norm(x)
        router_loss = self._router_loss(jax.tree.map(lambda *a: jnp.stack(a), *all_stats))
        return (hidden, (None if cache is None else dataclasses.replace(
            cache, k=tuple(new_k), v=tuple(new_v))), router_loss)

    def fuse_for_inference(self) -> None:
        """Attach `layers.Fused` kernels — q/k/v as one `[L, d, H + 2·KV, hd]`, gate/up as one
        `[L, d, 2f]` — so that every layer runs one matmul for each group instead of three and
        two (`layers.fuse_kernels`; groups with biases, adapters or tensor-split heads stay
        separate). The function is unchanged. The sampler calls it inside its jit, once
        before the decode loop (XLA's own dot merger rebuilt the concatenation on every
        step: perf-notes 21)."""
        attn, mlp = self.layers.attn, self.layers.mlp
        qkv = fuse_kernels((attn.q_proj, attn.k_proj, attn.v_proj), axis=2)
        if qkv is not None:
            attn.qkv_kernel = qkv
        if isinstance(mlp, MLP):
            gate_up = fuse_kernels((mlp.gate_proj, mlp.up_proj), axis=2)
            if gate_up is not None:
                mlp.gate_up_kernel = gate_up

    def _router_loss(self, stats: RouterStats) -> jax.Array:
        """`router_aux_loss_coef · L_aux` from the layers' stacked router statistics."""
        cfg = self.config
        if not cfg.num_experts or not cfg.router_aux_loss_coef:
            return jnp.zeros((), jnp.float32)
        return cfg.router_aux_loss_coef * load_balancing_loss(stats, cfg.num_experts)

    def layer_data(self, seq_len: jax.Array | int) -> dict[str, jax.Array]:
        """Per-layer inputs of the scan: `inv_freq [L, r/2]` (RoPE of each layer: Gemma 3's local
        layers use `rope_local_theta`, unscaled; HF `Gemma3RotaryEmbedding`) and, with
        `layer_types`, `local [L]` (bool: the layer attends within `sliding_window`)."""
        cfg = self.config
        global_freq = rope_inverse_frequencies(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling,
                                               seq_len)
        inv_freq = jnp.broadcast_to(global_freq, (cfg.num_layers,) + global_freq.shape)
        data = {"inv_freq": inv_freq}
        if cfg.layer_types is not None:
            local = jnp.asarray(cfg.layer_is_local())
            data["local"] = local
            if cfg.rope_local_theta is not None:
                local_freq = rope_inverse_frequencies(cfg.rotary_dim, cfg.rope_local_theta, None)
                data["inv_freq"] = jnp.where(local[:, None], local_freq, inv_freq)
        return data

    # ----------------------------------------------------------------------------- heads
    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits in float32 for `hidden [..., d]` (compute in the model dtype)."""
        if self.config.head != "lm":
            raise ValueError("this model has a scalar head, not an LM head")
        if self.config.tie_word_embeddings:
            kernel, kernel_axes = self.embed_tokens.table(), "vd"
        else:
            kernel = compute_copy(self.lm_head.kernel[...], ("embed", "vocab"),
                                  self.config.compute_dtype)
            kernel_axes = "dv"
        logits = head_matmul(hidden.astype(kernel.dtype), kernel, kernel_axes)
        cap = self.config.final_logit_softcapping
        if cap is not None:  # Gemma 2: c·tanh(logits / c), in float32 (HF Gemma2ForCausalLM)
            logits = jnp.tanh(logits / cap) * cap
        return constrain(logits, ("batch", "length", "act_vocab")) if logits.ndim == 3 else logits

    def scores(self, hidden: jax.Array) -> jax.Array:
        """Scalar-head outputs `[B, T]` in float32 (reward/value at every position)."""
        return self.score(hidden)[..., 0].astype(jnp.float32)

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """Logits `[B, T, vocab]` (LM head) or scores `[B, T]` (scalar head)."""
        hidden, _ = self.trunk(tokens, positions=positions, segment_ids=segment_ids,
                               attention_mask=attention_mask)
        return self.scores(hidden) if self.config.head == "scalar" else self.logits(hidden)
