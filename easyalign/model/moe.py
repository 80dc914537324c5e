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
The N·k (token, expert) pairs are sorted by expert and multiplied with one grouped matmul
(`jax.lax.ragged_dot`: rows [g_e, g_{e+1}) of the sorted tokens times expert e), so compute is
N·k·(3·d·f) — dropless (no capacity factor, as HF) and no dense loop or one-hot over experts.

Load balancing (Switch eq. 4, as HF `load_balancing_loss_func`, over all layers' tokens at once):

    f_e = (1/N') Σ_{l,n} m_n · [e ∈ top_k(p_{l,n})]     P_e = (1/N') Σ_{l,n} m_n · p_{l,n,e}
    L_aux = E · Σ_e f_e · P_e,          N' = L · Σ_n m_n,   m = 1 on real tokens, 0 on padding

Each layer reports its sums (`RouterStats`); `load_balancing_loss` combines them. f_e counts
assignments (no gradient); the gradient reaches the router through P_e. Uniform routing gives
L_aux = k; the train loss adds `router_aux_loss_coef · L_aux`.
"""

from __future__ import annotations

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

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, f, e = config.hidden_size, config.moe_intermediate_size, config.num_experts
        self.k, self.num_experts, self.norm_topk = (config.num_experts_per_tok, e,
                                                    config.norm_topk_prob)
        self.dtype = config.compute_dtype
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
        kernel = lambda p, names: compute_copy(p[...], names, self.dtype)  # noqa: E731
        gate = jax.lax.ragged_dot(rows, kernel(self.gate_proj, _GATE_UP), group_sizes)
        up = jax.lax.ragged_dot(rows, kernel(self.up_proj, _GATE_UP), group_sizes)
        hidden = jax.ad_checkpoint.checkpoint_name(jax.nn.silu(gate) * up, "mlp_up")
        out = jax.lax.ragged_dot(hidden, kernel(self.down_proj, _DOWN), group_sizes)
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


def load_balancing_loss(stats: RouterStats, num_experts: int) -> jax.Array:
    """L_aux = E · Σ_e f_e · P_e from per-layer sums `[L, E]`, `[L, E]`, `[L]` (module docstring;
    Switch Transformer eq. 4, HF `load_balancing_loss_func` with its attention mask)."""
    total = jnp.maximum(jnp.sum(stats["tokens"]), 1.0)
    f = jax.lax.stop_gradient(jnp.sum(stats["counts"], axis=0)) / total
    p = jnp.sum(stats["probs"], axis=0) / total
    return num_experts * jnp.sum(f * p)
