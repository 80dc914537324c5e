"""Building blocks of the decoder: projections with logical axes, RMSNorm, rotary embeddings.

Every weight is declared with the logical names of its dimensions (see `easyalign.sharding`),
so the same module shards as FSDP, tensor-parallel or both without code changes.
Weights are stored in `param_dtype` and cast to the compute `dtype` at use; normalisation
statistics and RoPE angles are computed in float32 (DESIGN decision 4). A module that reads a
weight in float32 instead names it in `float32_weights`, so that `cast_for_compute` — the
cast done once for a model that will not be trained (the sampler's weights, a frozen
reference) — leaves that weight as stored and changes no number.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from easyalign.model import lora as lora_lib
from easyalign.model.config import ModelConfig, RopeScaling
from easyalign.sharding import constrain


def _param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Sequence[str | None],
           dtype) -> nnx.Param:
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(names))


def cast_for_compute(model: nnx.Module, dtype) -> None:
    """Cast, in place, the floating weights of `model` (and its submodules) to `dtype`, the
    dtype every use casts them to — except those a module reads in float32 and names in its
    `float32_weights` (Gemma's (1 + w) norm scales, the MoE router): the model computes the
    same numbers as before (equal bitwise), from half the bytes when weights are float32.

    For a model whose weights do not change afterwards: the sampler, once per call before its
    decode loop (`sampler.decode.compute_weights`); frozen references, reward models and
    teachers, once when loaded (`algorithms.runsetup.frozen`).
    """
    for _, module in nnx.iter_modules(model):
        kept = getattr(module, "float32_weights", ())
        for name, variable in vars(module).items():
            if (isinstance(variable, nnx.Param) and name not in kept
                    and jnp.issubdtype(variable.dtype, jnp.floating) and variable.dtype != dtype):
                variable.set_value(variable.get_value().astype(dtype))


def compute_copy(weight: jax.Array, names: Sequence[str | None], dtype) -> jax.Array:
    """The weight in the compute dtype, cast where its shard lives.

    Pinning the cast result to the weight's own sharding makes XLA cast first and all-gather
    after (FSDP), so fp32 master weights travel as bf16: half the bytes per gather, and the
    gradient's reduce-scatter likewise runs in the compute dtype.
    """
    return constrain(weight.astype(dtype), names)


def separate_operands(x: jax.Array, count: int, separate: bool) -> tuple[jax.Array, ...]:
    """`count` uses of `x` that XLA cannot recognise as one operand (when `separate`).

    XLA's GPU dot merger joins small matmuls that share an operand into one matmul over their
    concatenated weights. In a decode loop the weights are loop-invariant, yet the merged dot
    concatenates them again on every step: measured on an H200 at the Llama-3.2-1B shape, a
    134 MB copy of gate and up per layer per token (31 µs × 16 layers, a third of a batch-1
    step). The outputs of one optimisation barrier are distinct values (and free at run time),
    so the projections stay separate GEMMs reading the weights in place.
    """
    return jax.lax.optimization_barrier((x,) * count) if separate else (x,) * count


class Fused(nnx.Variable):
    """An inference-only kernel: the kernels of projections that read the same input,
    concatenated along their output axis in the compute dtype (`fuse_kernels`). The sampler
    attaches them once, outside its decode loop; training never sees one."""


def fuse_kernels(projections: Sequence["Einsum"], axis: int) -> Fused | None:
    """`projections`' kernels concatenated along `axis` (an output axis of the kernel; a
    leading `layers` axis of stacked layers counts), or None when one of them has a bias or
    LoRA adapters, or when the heads are split over a `tensor` mesh axis (the concatenation
    would gather them): those keep separate matmuls.

    One matmul over the concatenation replaces several narrow ones reading the same rows: at
    decode batch 1 and 64 the q, k and v projections ([2048, 2048], [2048, 512] × 2) each ran
    far below the H200's memory bandwidth (`docs/perf-notes.md`, row 25).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and dict(zip(mesh.axis_names, mesh.axis_sizes)).get("tensor", 1) > 1:
        return None
    if any(p.bias is not None or p.lora_a is not None for p in projections):
        return None
    return Fused(jnp.concatenate([p.kernel[...].astype(p.dtype) for p in projections],
                                 axis=axis))


def split_fused(y: jax.Array, sizes: Sequence[int], axis: int) -> list[jax.Array]:
    """The per-projection outputs of one matmul over a `Fused` kernel (`sizes` along `axis`)."""
    bounds = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
    return jnp.split(y, bounds, axis=axis)


def input_major_init(init, equation: str):
    """`init` drawn in the kernel's input-major order, returned in its storage order.

    The input-major order puts the axes the einsum contracts with `x` first (`x @ W`). How a
    kernel is stored is a performance choice (see `MLP.down_proj`); drawing every kernel in one
    order independent of it means a seed gives the same model whatever the storage layout.
    """
    inputs, rest = equation.split(",")
    axes = rest.split("->")[0]
    order = [i for i, a in enumerate(axes) if a in inputs] + \
            [i for i, a in enumerate(axes) if a not in inputs]
    restore = [order.index(i) for i in range(len(axes))]

    def draw(key, shape, dtype):
        return jnp.transpose(init(key, tuple(shape[i] for i in order), dtype), restore)

    return draw


class Einsum(nnx.Module):
    """A projection `einsum(equation, x, kernel) (+ bias)` with logically named weight axes.

    Kernels keep the head structure (`[embed, heads, head_dim]` rather than a flat matrix) so
    that tensor parallelism can split whole heads; HF import/export reshapes at the boundary.
    `lora` (a `LoraConfig`, for the projections it targets) adds the low-rank adapter
    `lora_a` / `lora_b` beside the kernel: y = x W (+ b) + s·(drop(x) A) B (`model/lora.py`),
    the adapters in `param_dtype` while the kernel is stored in `weight_dtype` (LoRA's
    `base_dtype`); `param_dtype` overrides the kernel's storage dtype (a trained head).
    """

    def __init__(self, equation: str, kernel_shape: Sequence[int],
                 kernel_names: Sequence[str | None], *, config: ModelConfig, rngs: nnx.Rngs,
                 bias_shape: Sequence[int] | None = None,
                 bias_names: Sequence[str | None] | None = None,
                 lora: lora_lib.LoraConfig | None = None, param_dtype=None):
        self.equation = equation
        self.dtype = config.compute_dtype
        self.kernel_names = tuple(kernel_names)
        weight_dtype = config.weight_dtype if param_dtype is None else param_dtype
        init = input_major_init(nnx.initializers.normal(config.initializer_range), equation)
        self.kernel = _param(rngs, init, kernel_shape, kernel_names, weight_dtype)
        self.bias = (None if bias_shape is None else
                     _param(rngs, nnx.initializers.zeros, bias_shape, bias_names, weight_dtype))
        if lora is None:
            self.lora_a = self.lora_b = None
        else:
            self.lora_rate, self.lora_scaling = lora.dropout, lora.scaling
            self.adapter = lora_lib.AdapterEquations.parse(equation)
            a_shape, b_shape = self.adapter.shapes(kernel_shape, lora.rank)
            a_names, b_names = self.adapter.names(kernel_names)
            self.lora_a = _param(rngs, lora_lib.init_a, a_shape, a_names, config.param_dtype)
            self.lora_b = _param(rngs, nnx.initializers.zeros, b_shape, b_names,
                                 config.param_dtype)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """`dropout_key` draws the adapter's input dropout (training only; see `lora.py`)."""
        kernel = compute_copy(self.kernel[...], self.kernel_names, self.dtype)
        x = x.astype(self.dtype)
        y = jnp.einsum(self.equation, x, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            x = lora_lib.dropout(x, self.lora_rate, dropout_key)
            y = y + lora_lib.adapter_delta(self.adapter, x, self.lora_a[...], self.lora_b[...],
                                           self.lora_scaling)
        return y


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x²) + ε) · scale, statistics in float32 (as HF `LlamaRMSNorm`).

    With `config.rms_norm_one_plus` (Gemma; HF `Gemma2RMSNorm`): y = (x̂ · (1 + w)) computed in
    float32 and cast once at the end, w initialised at 0. `[..., size] → [..., size]`.
    """

    def __init__(self, size: int, *, config: ModelConfig, rngs: nnx.Rngs,
                 names: Sequence[str | None] = ("norm",)):
        self.eps = config.rms_norm_eps
        self.one_plus = config.rms_norm_one_plus
        init = nnx.initializers.zeros if self.one_plus else nnx.initializers.ones
        self.scale = _param(rngs, init, (size,), names, config.weight_dtype)

    @property
    def float32_weights(self) -> tuple[str, ...]:
        """Gemma's scale is read in float32 (`cast_for_compute` keeps it as stored)."""
        return ("scale",) if self.one_plus else ()

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.one_plus:  # Gemma multiplies in float32, then casts (HF PR 29402)
            return (x32 * (1.0 + self.scale[...].astype(jnp.float32))).astype(dtype)
        # HF casts back to the input dtype before multiplying by the weight.
        return self.scale[...].astype(dtype) * x32.astype(dtype)


class Embed(nnx.Module):
    """Token embedding `[vocab, embed]`; a tied model also uses it as its output projection.

    Its logical axes are its own (`table_vocab`, `table_embed`): FSDP splits the vocabulary
    rows, the table's leading axis, as it splits the leading axis of every kernel (see
    `MLP.down_proj`). Split along `embed`, the minor axis, the lookup's gradient left the
    reduce-scatter transposed and AdamW's update transposed the fp32 state every step (3.7 ms
    of a 2 × H200 Llama-3.2-1B step); storing `[embed, vocab]` instead costs more on one GPU,
    where the lookup and its scatter-add would read strided columns.
    """

    NAMES = ("table_vocab", "table_embed")

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = config.compute_dtype
        # Gemma: embeddings × √d, the factor rounded to the compute dtype as HF rounds it to the
        # weights' dtype (`Gemma2TextScaledWordEmbedding`; √2304 = 48.0 in bf16).
        self.scale = math.sqrt(config.hidden_size) if config.scale_embeddings else None
        init = nnx.initializers.normal(config.initializer_range)
        self.embedding = _param(rngs, init, (config.vocab_size, config.hidden_size), self.NAMES,
                                config.weight_dtype)

    def table(self) -> jax.Array:
        """The `[vocab, embed]` matrix in the compute dtype, cast where its shard lives."""
        return compute_copy(self.embedding[...], self.NAMES, self.dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """`[B, T]` ids → `[B, T, d]` rows of the table (× √d for Gemma)."""
        x = jnp.take(self.table(), tokens, axis=0)
        return x if self.scale is None else x * jnp.asarray(self.scale, self.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None,
                             seq_len: jax.Array | int | None = None) -> jax.Array:
    """inv_freq_i = θ^(−2i/d), i < d/2 (d = the rotary dimension), then the family's scaling.

    Llama 3.1+ (`llama3`, HF `_compute_llama3_parameters`): with wavelength λ_i = 2π / inv_freq_i,
    L = original context, λ_low = L / low_freq_factor and λ_high = L / high_freq_factor:
      λ_i > λ_low  → inv_freq_i / factor                    (long wavelengths slowed down)
      λ_i < λ_high → inv_freq_i                             (short wavelengths kept)
      otherwise    → (1 − s) · inv_freq_i / factor + s · inv_freq_i,
                     s = (L / λ_i − low_freq_factor) / (high_freq_factor − low_freq_factor).
    LongRoPE (`longrope`, Phi-3 128K; HF `_compute_longrope_parameters` and
    `longrope_frequency_update`, arXiv 2402.13753): inv_freq_i = 1 / (e_i · θ^(2i/d)) with
    e = long_factor when `seq_len` (the largest position of the call + 1, traced) exceeds
    `original_max_position_embeddings`, else short_factor.
    """
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    if scaling is not None and scaling.rope_type == "longrope":
        short = 1.0 / (jnp.asarray(scaling.short_factor, jnp.float32) * theta ** exponents)
        if seq_len is None:
            return short
        long = 1.0 / (jnp.asarray(scaling.long_factor, jnp.float32) * theta ** exponents)
        return jnp.where(seq_len > scaling.original_max_position_embeddings, long, short)
    inv_freq = 1.0 / (theta ** exponents)
    if scaling is None or scaling.rope_type == "default":
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_attention_scaling(scaling: RopeScaling | None) -> float:
    """The factor cos and sin are multiplied by: 1, except LongRoPE's `attention_factor`, by
    default √(1 + ln(factor) / ln(L)) for factor > 1 (L = original context; HF
    `_compute_longrope_parameters`, where factor = max_position_embeddings / L when unset)."""
    if scaling is None or scaling.rope_type != "longrope":
        return 1.0
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    if scaling.factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(scaling.factor)
                     / math.log(scaling.original_max_position_embeddings))


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array,
               attention_scaling: float = 1.0) -> jax.Array:
    """Rotate `x [B, T, heads, head_dim]` by angles positions · inv_freq (HF "rotate_half" layout).

    x' = x · cos θ + rotate_half(x) · sin θ with rotate_half([x1, x2]) = [−x2, x1]; angles in
    float32 so that long positions keep their precision. Partial rotary (`inv_freq` of r/2 < hd/2
    entries, Phi-3/4): the first r dims rotate, the rest pass through (HF `apply_rotary_pos_emb`
    of Phi-3). cos and sin are scaled by `attention_scaling` (LongRoPE) before the cast.
    """
    rotary = 2 * inv_freq.shape[-1]
    passed = None
    if rotary < x.shape[-1]:
        x, passed = x[..., :rotary], x[..., rotary:]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, r/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return out if passed is None else jnp.concatenate([out, passed], axis=-1)
