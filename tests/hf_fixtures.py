"""Tiny random HF models for the HF interop tests (imported by tests/test_hf_*.py).

Each case is a real `transformers` model built from a config (no hub), with non-trivial norm
weights and biases so that every tensor's placement is tested, saved with `save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
import transformers
from safetensors.numpy import load_file

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, head_dim=16, max_position_embeddings=512,
             initializer_range=0.1, rms_norm_eps=1e-5)
LENGTH = 16  # > every sliding window and RoPE context below, so both change the logits

# case → (config class, family-specific settings)
CASES = {
    # untied, with every optional bias of Llama
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    # Llama 3.1+ RoPE scaling that acts within LENGTH positions (original context 8)
    "llama3_rope": ("LlamaConfig", dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=8))),
    "mistral": ("MistralConfig", dict(sliding_window=5)),
    # tied embeddings, q/k/v bias
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    # q/k RMSNorm
    "qwen3": ("Qwen3Config", dict()),
    # fused qkv_proj / gate_up_proj, half the head rotary (as Phi-4-mini's 0.75), a window
    "phi3": ("Phi3Config", dict(partial_rotary_factor=0.5, sliding_window=6, pad_token_id=0,
                                eos_token_id=2)),
    # the 128K variants' LongRoPE, switched to the long factors within LENGTH (context 8)
    "phi3_longrope": ("Phi3Config", dict(
        pad_token_id=0, eos_token_id=2, original_max_position_embeddings=8,
        rope_scaling=dict(type="su", short_factor=[1.0, 1.5, 2.0, 3.0, 1.2, 1.1, 4.0, 2.5],
                          long_factor=[3.0, 5.0, 1.5, 9.0, 2.0, 7.0, 1.3, 6.0],
                          original_max_position_embeddings=8))),
    # Gemma 2: soft-caps low enough to bite, window 5 on the even layers (3 layers: local,
    # global, local), query_pre_attn_scalar ≠ head_dim, head_dim 16 ≠ 64 / 4, tied embeddings
    "gemma2": ("Gemma2Config", dict(num_hidden_layers=3, sliding_window=5,
                                    query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0, pad_token_id=0, eos_token_id=1,
                                    bos_token_id=2)),
    # Gemma 3 text: q/k norm, local θ 10⁴ vs global 10⁶ with linear scaling ×2, pattern 2:1
    "gemma3": ("Gemma3TextConfig", dict(
        num_hidden_layers=3, sliding_window=5, sliding_window_pattern=3, query_pre_attn_scalar=24,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, rope_parameters=dict(
            sliding_attention=dict(rope_type="default", rope_theta=10000.0),
            full_attention=dict(rope_type="linear", factor=2.0, rope_theta=1000000.0)))),
    # Qwen3-MoE: 8 experts, top-2 renormalised, head_dim 24 ≠ 64 / 4, GQA 4:2
    "qwen3_moe": ("Qwen3MoeConfig", dict(head_dim=24, num_experts=8, num_experts_per_tok=2,
                                         moe_intermediate_size=32, norm_topk_prob=True)),
}


def attn_kwargs(model_type: str) -> dict:
    """Gemma 2 runs HF's eager attention: transformers 5.17's SDPA path silently drops the
    attention-logit soft-cap (measured: logits 3.0 apart on the `gemma2` case)."""
    return dict(attn_implementation="eager") if model_type == "gemma2" else {}


def hf_config(case: str, **extra):
    name, settings = CASES[case]
    return getattr(transformers, name)(**{**SHAPE, **settings, **extra})


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Norm weights around 1 and biases around 0, so a misplaced one shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.3 * torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + noise)
            elif name.endswith("bias"):
                p.copy_(noise)


def make_hf_model(case: str, directory: Path, *, seed: int = 0, dtype=torch.float32,
                  sequence_classification: bool = False, **extra):
    """Save a tiny random model of `case` in `directory`; returns the torch model (eval)."""
    torch.manual_seed(seed)
    if sequence_classification:
        config = hf_config(case, num_labels=1, pad_token_id=0, **extra)
        model = transformers.AutoModelForSequenceClassification.from_config(
            config, **attn_kwargs(config.model_type))
    else:
        config = hf_config(case, **extra)
        model = transformers.AutoModelForCausalLM.from_config(
            config, **attn_kwargs(config.model_type))
    _randomise(model, seed)
    model = model.to(dtype).eval()
    model.save_pretrained(directory)
    return model


def batch(seed: int = 0, batch_size: int = 3):
    """Random ids `[B, LENGTH]` and a right-padding mask (row 1 padded after 11, row 2 after 6)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 256, (batch_size, LENGTH))
    mask = np.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 6:] = 0
    ids[mask == 0] = 0
    return ids, mask


def hf_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.float() \
            .numpy()


def safetensors_dir(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of every safetensors file in `directory` (bf16 via ml_dtypes)."""
    import ml_dtypes  # noqa: F401  (bfloat16 for numpy)

    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_same_tensors(a: Path, b: Path) -> None:
    """Same names, dtypes, shapes and bits in both directories."""
    ta, tb = safetensors_dir(a), safetensors_dir(b)
    assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, (name, ta[name].dtype, tb[name].dtype)
        assert np.array_equal(ta[name].view(np.uint8), tb[name].view(np.uint8)), name


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


def ours(model, ids, mask) -> np.ndarray:
    """easyalign's output on `[B, T]` ids with a right-padding mask, in true fp32."""
    # True fp32 matmuls: on GPUs JAX's default precision for f32 dots is TF32 (~1e-3 off).
    with jax.default_matmul_precision("highest"):
        return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))

