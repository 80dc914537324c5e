"""Named model shapes: tiny test/demo shapes and the published shapes of real checkpoints.

Real-shape presets reproduce the published parameter counts exactly (checked by
`jax.eval_shape` in the tests, at no memory cost), so a user can plan memory and benchmarks
without downloading anything. Numerics (`dtype`, `remat`, ...) are defaults a config overrides.
"""

from __future__ import annotations

from typing import Any

from easyalign.model.config import ModelConfig, RopeScaling

_LLAMA3_ROPE = RopeScaling(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=8192)

PRESETS: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B: 1,235,814,400 parameters (tied embeddings).
    "llama-3.2-1b": dict(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    # Llama-3.1-8B: 8,030,261,248 parameters.
    "llama-3.1-8b": dict(
        family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling=RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=128001),
    # Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings, q/k/v bias).
    "qwen2.5-0.5b": dict(
        family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
        qkv_bias=True, bos_token_id=151643, eos_token_id=151643),
    # Qwen2.5-7B: 7,615,616,512 parameters.
    "qwen2.5-7b": dict(
        family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=131072, qkv_bias=True,
        bos_token_id=151643, eos_token_id=151643),
    # Mistral-7B-v0.1: 7,241,732,096 parameters, sliding-window attention of 4096.
    "mistral-7b": dict(
        family="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=32768, sliding_window=4096,
        bos_token_id=1, eos_token_id=2),
    # Phi-3-mini-4k-instruct: 3,821,079,552 parameters, window 2047, MHA with head_dim 96.
    "phi-3-mini": dict(
        family="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=96, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=4096, sliding_window=2047,
        bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
    # Gemma-2-2B: 2,614,341,888 parameters; local (window 4096) and global layers alternate,
    # soft-caps 50 (attention) and 30 (logits), head_dim 256 ≠ 2304 / 8.
    "gemma-2-2b": dict(
        family="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
        num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        sliding_window=4096, layer_types=("sliding_attention", "full_attention") * 13,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
        hidden_act="gelu_pytorch_tanh", rms_norm_one_plus=True, sandwich_norms=True,
        scale_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    # Gemma-3-1B (pt): 999,885,952 parameters; 5 local (window 512, θ 10⁴) : 1 global (θ 10⁶),
    # q/k norm, MQA with head_dim 256.
    "gemma-3-1b": dict(
        family="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
        num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256, rms_norm_eps=1e-6,
        rope_theta=1000000.0, rope_local_theta=10000.0, max_position_embeddings=32768,
        tie_word_embeddings=True, qk_norm=True, sliding_window=512,
        layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(26)),
        query_pre_attn_scalar=256, hidden_act="gelu_pytorch_tanh", rms_norm_one_plus=True,
        sandwich_norms=True, scale_embeddings=True, bos_token_id=2, eos_token_id=1,
        pad_token_id=0),
    # Qwen3-30B-A3B: 30,532,122,624 parameters ("30.5B total, 3.3B activated": 3,353,032,704),
    # 48 layers of 128 experts (width 768), 8 routed per token and renormalised, q/k norm.
    "qwen3-30b-a3b": dict(
        family="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=40960, qk_norm=True, num_experts=128,
        num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
        router_aux_loss_coef=0.001, bos_token_id=151643, eos_token_id=151645),
    # The anchors' distillation student: Llama-3.2-1B widths with 8 layers of 1024.
    "llama-student-8x1024": dict(
        family="llama", vocab_size=128256, hidden_size=1024, intermediate_size=4096,
        num_layers=8, num_heads=16, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    # Test shape: divisible by an (fsdp=4, tensor=2) mesh; GQA 4:2.
    "tiny": dict(
        family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512),
    # The built-in world's teacher and student (vocab set from the world's tokenizer).
    "world-teacher": dict(
        family="llama", vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=True),
    "world-student": dict(
        family="llama", vocab_size=1024, hidden_size=64, intermediate_size=192, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=True),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The `ModelConfig` of a named preset, with field overrides (e.g. `dtype="float32"`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
