"""Mixture-of-experts MLP (Qwen3-MoE) and the router's load-balancing loss.

Sources: HF `transformers/models/qwen3_moe/modeling_qwen3_moe.py` (`Qwen3MoeTopKRouter`,
`Qwen3MoeExperts`, `load_balancing_loss_func`); Fedus, Zoph & Shazeer 2021, "Switch
Transformers", eq. 4–6 (arXiv 2101.03961).

Routing, per token x ∈ R^d (N = B·T tokens, E experts, k = `num_experts_per_tok`):

    p = softmax(x W_r)             W_r [d, E], computed in float32 (the router is the part of an
                                   MoE most sensitive to rounding: a flipped top-k is a different
                                   function, not a small error)
    (w, idx) = top_k(p, k);   w ← w / Σ w   when `norm_topk_prob`
    y = Σ_{j<k} w_j · down_{idx_j}(silu(gate_{idx_j}(x)) ⊙ up_{idx_j}(x))

Experts are stacked weights — gate/up `[E, d, f]`, down `[E, f, d]` (f = `moe_intermediate_size`)
— with the logical axis `expert` leading (mapped to a mesh axis in `sharding.LOGICAL_RULES`).
The N·k (token, expert) pairs are sorted by expert; expert e's g_e pairs are then contiguous,
starting at s_e = Σ_{e'<e} g_{e'}. Two ways to multiply them (`moe_capacity_factor`):

* 0 (default): one grouped matmul, `jax.lax.ragged_dot` (rows [s_e, s_e + g_e) times expert e)
  — compute N·k·(3·d·f), dropless, exactly HF's function. XLA's GPU backend (jax 0.11) lowers
  ragged_dot densely, over every expert for every row: at the Qwen3-30B-A3B shape, 4×2048 tokens,
  a 142 GiB temporary (H200, 2026-11-30). Use it on CPU/TPU, or for exact parity.
* c > 0: capacity buffers (GShard, Lepikhin et al. 2020 §2.2; Switch Transformers §2.2). Each
  expert gets C = ⌈c · N·k / E⌉ rows: row j of expert e holds sorted pair s_e + j when j < g_e
  (zeros otherwise), and the experts run as batched matmuls `[E, C, d] × [E, d, f]` — compute
  E·C·(3·d·f) ≈ c × the dropless count, plain GEMMs on any backend. Pairs with j ≥ C are
  *dropped*: their expert output is 0 (the token keeps its other experts and the residual).
  With C ≥ N (c ≥ E / k) nothing can drop and the result equals the dropless one.

Load balancing (Switch eq. 4, as HF `load_balancing_loss_func`, over all layers' tokens at once):

    f_e = (1/N') Σ_{l,n} m_n · [e ∈ top_k(p_{l,n})]     P_e = (1/N') Σ_{l,n} m_n · p_{l,n,e}
    L_aux = E · Σ_e f_e · P_e,          N' = L · Σ_n m_n,   m = 1 on real tokens, 0 on padding

Each layer reports its sums (`RouterStats`); `load_balancing_loss` combines them. f_e counts
assignments (no gradient); the gradient reaches the router through P_e. Uniform routing gives
L_aux = k; the train loss adds `router_aux_loss_coef · L_aux`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from easyalign.model.config import ModelConfig
from easyalign.model.layers import compute_copy, input_major_init
from easyalign.sharding import constrain

RouterStats = dict[str, jax.Array]  # {"counts" [.., E], "probs" [.., E], "tokens" [..]}

_GATE_UP = ("expert", "expert_embed", "expert_mlp")
_DOWN = ("expert", "expert_mlp", "expert_embed")


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts, `[B, T, d] → ([B, T, d], RouterStats)`
    (HF `Qwen3MoeSparseMoeBlock`)."""

    float32_weights = ("router",)  # routing runs in float32 (`layers.cast_for_compute`)

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f, e = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.k, self.num_experts, self.norm_topk = (config.num_experts_per_tok, e,
                                                    config.norm_topk_prob)
        self.dtype = config.compute_dtype
        self.capacity_factor = config.moe_capacity_factor
        normal = nnx.initializers.normal(config.initializer_range)
        draw = lambda init, shape, names: nnx.Param(  # noqa: E731
            init(rngs.params(), shape, config.weight_dtype), out_sharding=names)
        self.router = draw(normal, (d, e), ("embed", None))
        self.gate_proj = draw(input_major_init(normal, "nd,edf->nf"), (e, d, f), _GATE_UP)
        self.up_proj = draw(input_major_init(normal, "nd,edf->nf"), (e, d, f), _GATE_UP)
        self.down_proj = draw(input_major_init(normal, "nf,efd->nd"), (e, f, d), _DOWN)

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`x [N, d]` → (probabilities `[N, E]`, weights `[N, k]`, expert ids `[N, k]`), all
        float32 (HF `Qwen3MoeTopKRouter`)."""
        logits = jnp.einsum("nd,de->ne", x.astype(jnp.float32),
                            self.router[...].astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)
        probs = jax.nn.softmax(logits, axis=-1)
        weights, experts = jax.lax.top_k(probs, self.k)
        if self.norm_topk:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return probs, weights, experts

    def __call__(self, x: jax.Array, token_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, RouterStats]:
        """`x [B, T, d]`, `token_mask [B, T]` (1 = real token; only the stats use it)."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d).astype(self.dtype)
        probs, weights, experts = self.route(flat)
        # Sort the N·k (token, expert) pairs by expert: expert e's rows are contiguous.
        pair_expert = experts.reshape(-1)
        order = jnp.argsort(pair_expert, stable=True)
        group_sizes = jnp.bincount(pair_expert, length=self.num_experts).astype(jnp.int32)
        rows = flat[order // self.k]                                    # [N·k, d]
        experts_fn = self._capacity_experts if self.capacity_factor else self._ragged_experts
        out = experts_fn(rows, group_sizes)
        # Back to (token, slot) order, then the weighted sum over each token's k experts.
        out = out[jnp.argsort(order)].reshape(b * t, self.k, d)
        y = jnp.einsum("nkd,nk->nd", out, weights.astype(self.dtype))
        y = constrain(y.reshape(b, t, d), ("batch", "length", "act_embed"))

        m = (jnp.ones((b * t,), jnp.float32) if token_mask is None
             else token_mask.reshape(-1).astype(jnp.float32))
        counts = jnp.zeros((self.num_experts,), jnp.float32).at[pair_expert].add(
            jnp.repeat(m, self.k))
        stats = {"counts": counts, "probs": jnp.einsum("ne,n->e", probs, m),
                 "tokens": jnp.sum(m)}
        return jax.ad_checkpoint.checkpoint_name(y, "mlp_out"), stats


    def _kernels(self):
        kernel = lambda p, names: compute_copy(p[...], names, self.dtype)  # noqa: E731
        return (kernel(self.gate_proj, _GATE_UP), kernel(self.up_proj, _GATE_UP),
                kernel(self.down_proj, _DOWN))

    def _ragged_experts(self, rows: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """Expert outputs `[N·k, d]` of the expert-sorted `rows`, dropless (`ragged_dot`)."""
        gate_w, up_w, down_w = self._kernels()
        gate = jax.lax.ragged_dot(rows, gate_w, group_sizes)
        up = jax.lax.ragged_dot(rows, up_w, group_sizes)
        hidden = jax.ad_checkpoint.checkpoint_name(jax.nn.silu(gate) * up, "mlp_up")
        return jax.lax.ragged_dot(hidden, down_w, group_sizes)

    def _capacity_experts(self, rows: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """Expert outputs `[N·k, d]` of the expert-sorted `rows` through `[E, C, d]` buffers;
        pairs past their expert's capacity C get 0 (module docstring)."""
        pairs, e = rows.shape[0], self.num_experts
        capacity = min(pairs // self.k, math.ceil(self.capacity_factor * pairs / e))
        starts = jnp.cumsum(group_sizes) - group_sizes                            # s_e
        slot = jnp.arange(capacity)
        source = starts[:, None] + slot[None, :]                                  # [E, C]
        filled = slot[None, :] < group_sizes[:, None]
        buffers = jnp.where(filled[..., None], rows[jnp.minimum(source, pairs - 1)], 0)
        buffers = constrain(buffers.astype(self.dtype), ("expert", None, "act_embed"))
        gate_w, up_w, down_w = self._kernels()
        gate = jnp.einsum("ecd,edf->ecf", buffers, gate_w)
        up = jnp.einsum("ecd,edf->ecf", buffers, up_w)
        hidden = jax.ad_checkpoint.checkpoint_name(jax.nn.silu(gate) * up, "mlp_up")
        out = jnp.einsum("ecf,efd->ecd", hidden, down_w)
        # Sorted pair r is row r − s_e of its expert e's buffer, kept when that row exists.
        expert = jnp.repeat(jnp.arange(e), group_sizes, total_repeat_length=pairs)
        position = jnp.arange(pairs) - starts[expert]
        kept = position < capacity
        return jnp.where(kept[:, None], out[expert, jnp.minimum(position, capacity - 1)], 0)


def load_balancing_loss(stats: RouterStats, num_experts: int) -> jax.Array:
    """L_aux = E · Σ_e f_e · P_e from per-layer sums `[L, E]`, `[L, E]`, `[L]` (module docstring;
    Switch Transformer eq. 4, HF `load_balancing_loss_func` with its attention mask)."""
    total = jnp.maximum(jnp.sum(stats["tokens"]), 1.0)
    f = jax.lax.stop_gradient(jnp.sum(stats["counts"], axis=0)) / total
    p = jnp.sum(stats["probs"], axis=0) / total
    return num_experts * jnp.sum(f * p)
