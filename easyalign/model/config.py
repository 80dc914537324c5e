"""Model configuration: one frozen dataclass describes every supported decoder.

The Llama family differs only in a handful of switches, so one `ModelConfig` covers
Llama 2/3.x (with Llama 3.1+ RoPE scaling), Mistral (sliding window), Qwen2/2.5 (q/k/v bias)
and Qwen3 (RMSNorm on queries and keys):

    family     qkv_bias  o_bias  qk_norm  sliding_window   rope_scaling
    llama      opt.      opt.    no       no               llama3 / linear (3.1+)
    mistral    no        no      no       4096 (v0.1)      no
    qwen2      yes       no      no       no               no
    qwen3      opt.      opt.    yes      no               no
    phi3       no        no      no       opt. (2047)      longrope (128K); partial rotary (Phi-4-mini)
    gemma2     opt.      opt.    no       local/global     no
    gemma3_text opt.     opt.    yes      local/global     linear (global layers); local θ
    qwen3_moe  opt.      opt.    yes      no               no;  MLP → mixture of experts

Qwen3-MoE (HF `modeling_qwen3_moe.py`) replaces every layer's MLP by `num_experts` SwiGLU
experts of width `moe_intermediate_size`, `num_experts_per_tok` (k) of which a linear router
picks per token: p = softmax(x W_r), the top-k of p, renormalised to sum 1 when
`norm_topk_prob` (see `model/moe.py`). `router_aux_loss_coef` weighs the Switch Transformer
load-balancing loss in training (read from config.json, as HF stores it; 0 turns it off).
`num_experts = 0` (the default) is a dense model, on which every expert field (`MOE_FIELDS`,
e.g. `moe_capacity_factor`) must keep its default: setting one is an error, not a no-op.

Gemma 2 (HF `modeling_gemma2.py`, arXiv 2408.00118) and Gemma 3 text (`modeling_gemma3.py`,
Gemma 3 technical report, arXiv 2503.19786) switch on further traits, all off by default so the
other families compute exactly what they did:

* `layer_types`: per layer `"sliding_attention"` (window `sliding_window`) or `"full_attention"`;
  None = every layer uses `sliding_window` (Mistral, Phi-3). The per-layer choice reaches the
  layer scan as scanned data (a boolean per layer), not by unrolling the layers.
* `attn_logit_softcapping` c: scores s → c·tanh(s / c) before the mask and softmax;
  `final_logit_softcapping` likewise on the vocabulary logits. cuDNN's fused kernel cannot
  soft-cap, so with a soft-cap attention always runs the XLA einsum path, whatever
  `attention_impl` says.
* `query_pre_attn_scalar` q: attention scale q^(−1/2) instead of head_dim^(−1/2).
* `rms_norm_one_plus`: RMSNorm multiplies by (1 + w) in float32, weights initialised at 0.
* `sandwich_norms`: RMSNorm on the attention output and on the MLP output too (four per layer).
* `scale_embeddings`: embeddings × √d, the factor rounded to the compute dtype (as HF).
* `rope_local_theta`: θ of the sliding layers (Gemma 3: 10,000, unscaled); the global layers keep
  `rope_theta` and `rope_scaling`. Each layer's inverse frequencies are scanned data too.

Numerics (`dtype`, `param_dtype`), the attention kernel, rematerialisation and layer
scanning live here too, because they change how the same parameters are computed, not what
they are. `head` chooses the output head on the shared trunk: `"lm"` (vocabulary logits) or
`"scalar"` (one number per position, for reward and value models).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from easyalign.config_keys import did_you_mean
from easyalign.model.lora import LoraConfig, available_targets, resolve_targets

# Annotation → (accepted Python types, what to call them) of a `model.overrides` value; the
# fields of other annotations are not checked here.
_SCALAR_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "float": ((int, float), "a number"),
    "bool": ((bool,), "True or False"), "str": ((str,), "a string")}

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "qwen3_moe")
HEADS = ("lm", "scalar")
ATTENTION_IMPLS = ("xla", "cudnn")
REMAT_POLICIES = ("none", "full", "dots", "save_proj", "save_proj_attn")
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
HIDDEN_ACTS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("sliding_attention", "full_attention")
# Fields that describe the experts: on a dense model (num_experts = 0) each must keep its
# default, so a setting that would do nothing is an error instead of silently ignored.
MOE_FIELDS = ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
              "router_aux_loss_coef", "moe_capacity_factor")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `llama3` is the Llama 3.1+ scheme, `linear` divides all frequencies,
    `longrope` (Phi-3 128K, once called `su`) divides frequency i by `short_factor[i]` up to
    `original_max_position_embeddings` tokens and by `long_factor[i]` beyond, and scales cos/sin
    by `attention_factor` (default √(1 + ln(factor) / ln(original context)); see
    `layers.rope_attention_scaling`)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")
        for name in ("short_factor", "long_factor"):  # JSON gives lists; keep the config hashable
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of one decoder. Field names follow HF where HF has one."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    family: str = "llama"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    partial_rotary_factor: float = 1.0  # RoPE on the first int(head_dim · factor) dims (Phi-3/4)
    hidden_act: str = "silu"  # MLP gate: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU, Gemma)
    # Gemma 2 / 3 traits (see the module docstring); the defaults leave them off.
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None
    rms_norm_one_plus: bool = False
    sandwich_norms: bool = False
    scale_embeddings: bool = False
    rope_local_theta: float | None = None
    # Mixture of experts (Qwen3-MoE; see the module docstring); num_experts = 0: dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    router_aux_loss_coef: float = 0.0
    # 0: dropless experts (`jax.lax.ragged_dot`, HF's function); > 0: expert buffers of
    # ⌈factor · N·k / E⌉ rows and batched matmuls, overflowing pairs dropped (model/moe.py).
    moe_capacity_factor: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    head: str = "lm"
    # Numerics and speed: how the parameters are computed, not what they are.
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    remat: str = "none"
    scan_layers: bool = True
    logits_chunk: int = 512  # sequence chunk of vocabulary projections in losses (memory vs speed)
    # Low-rank adapters on the projections (`model/lora.py`); None = a plain model.
    lora: LoraConfig | None = None

    def __post_init__(self):
        moe_set = self.moe_fields_set()
        checks = [
            (self.family in FAMILIES, f"family {self.family!r} not in {FAMILIES}"),
            (self.head in HEADS, f"head {self.head!r} not in {HEADS}"),
            (self.attention_impl in ATTENTION_IMPLS,
             f"attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}"),
            (self.remat in REMAT_POLICIES, f"remat {self.remat!r} not in {REMAT_POLICIES}"),
            (self.num_heads % self.num_kv_heads == 0,
             f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"),
            (self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for RoPE"),
            (self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim,
             f"partial_rotary_factor {self.partial_rotary_factor} gives an odd or empty "
             f"rotary dimension {self.rotary_dim}"),
            (self.hidden_act in HIDDEN_ACTS, f"hidden_act {self.hidden_act!r} not in {HIDDEN_ACTS}"),
            (self.layer_types is None or (len(self.layer_types) == self.num_layers
                                          and set(self.layer_types) <= set(LAYER_TYPES)),
             f"layer_types must give one of {LAYER_TYPES} for each of the {self.num_layers} "
             f"layers, got {self.layer_types}"),
            (self.layer_types is None or "sliding_attention" not in self.layer_types
             or self.sliding_window is not None,
             "layer_types has sliding_attention layers but sliding_window is None"),
            (self.rope_local_theta is None or self.layer_types is not None,
             "rope_local_theta needs layer_types (it is the sliding layers' θ)"),
            (self.num_experts == 0 or (0 < self.num_experts_per_tok <= self.num_experts
                                       and self.moe_intermediate_size > 0),
             f"a mixture of {self.num_experts} experts needs 0 < num_experts_per_tok "
             f"({self.num_experts_per_tok}) ≤ num_experts and moe_intermediate_size > 0"),
            (self.moe_capacity_factor >= 0,
             f"moe_capacity_factor must be ≥ 0 (0 = dropless), got {self.moe_capacity_factor}"),
            (self.num_experts or not moe_set,
             f"{', '.join(moe_set)}: only a mixture of experts has "
             f"{'these fields' if len(moe_set) > 1 else 'this field'}, and the model has no "
             "experts (num_experts=0); remove it from model.overrides or use an MoE model "
             "(model.preset=qwen3-30b-a3b or a Qwen3-MoE checkpoint)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelConfig: {message}")
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))
        if self.lora is not None:  # a target the model lacks (an MoE's MLP) is an error
            resolve_targets(self.lora.targets, available_targets(self.num_experts))
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.layer_types, list):  # JSON gives lists; keep the config hashable
            object.__setattr__(self, "layer_types", tuple(self.layer_types))

    def moe_fields_set(self) -> list[str]:
        """`"field=value"` of every `MOE_FIELDS` entry that differs from its default (an
        error on a dense model, `__post_init__`)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [f"{name}={getattr(self, name)!r}" for name in MOE_FIELDS
                if getattr(self, name) != defaults[name]]

    def layer_is_local(self) -> tuple[bool, ...]:
        """Per layer: does it attend within `sliding_window`? (True for all when `layer_types`
        is None and a window is set: Mistral, Phi-3.)"""
        if self.layer_types is None:
            return (self.sliding_window is not None,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (HF: int(head_dim · partial_rotary_factor))."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        """The dtype base weights are stored in: `param_dtype`, or LoRA's `base_dtype`."""
        if self.lora is not None and self.lora.base_dtype:
            return jnp.dtype(self.lora.base_dtype)
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**values)

    @staticmethod
    def parse_overrides(text: str) -> dict[str, Any]:
        """`"num_layers=3,hidden_size=96"` → {"num_layers": 3, "hidden_size": 96}: field
        overrides as written on a command line (values are Python literals, else strings).
        Raises ValueError (one line) for an unknown field (with a suggestion) or a value of the
        wrong type for an int, float, bool or str field."""
        out: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"model overrides: {item!r} is not field=value")
            try:
                out[key.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = raw.strip()
        fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
        for key, value in out.items():
            if key not in fields:
                hint = did_you_mean(key, fields)
                raise ValueError(f"model overrides: unknown field {key!r}"
                                 + (f"; {hint}" if hint else ""))
            wanted, name = _SCALAR_TYPES.get(fields[key], ((object,), ""))
            if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
                raise ValueError(f"model overrides: {key}={value!r} must be {name}")
        return out

    def active_param_count(self) -> int:
        """Parameters one token uses: all but the experts it is not routed to."""
        idle = self.num_experts - self.num_experts_per_tok if self.num_experts else 0
        return self.param_count() - self.num_layers * idle * 3 * self.hidden_size * \
            self.moe_intermediate_size

    def param_count(self) -> int:
        """Parameters by formula (the tests also count them through `jax.eval_shape`)."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim)
        attn = d * h * hd * 2 + d * kv * hd * 2
        attn += (h + 2 * kv) * hd if self.qkv_bias else 0
        attn += d if self.o_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
        if self.num_experts:  # router [d, E] + E SwiGLU experts of width moe_intermediate_size
            mlp = d * self.num_experts + self.num_experts * 3 * d * self.moe_intermediate_size
        per_layer = attn + mlp + (4 if self.sandwich_norms else 2) * d
        embed = self.vocab_size * d
        head = 0 if self.head == "lm" and self.tie_word_embeddings else (
            self.vocab_size * d if self.head == "lm" else d)
        return embed + self.num_layers * per_layer + d + head
