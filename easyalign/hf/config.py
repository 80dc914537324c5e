"""HF `config.json` ⇄ `ModelConfig`, for model_type llama, mistral, qwen2, qwen3, phi3, gemma2,
gemma3_text and qwen3_moe.

Families differ in a few switches (see `FAMILIES`):

    model_type  biases                              mlp_bias  q/k norm  sliding window
    llama       attention_bias → q,k,v and o        key       no        none
    mistral     none                                no        no        `sliding_window` (or null)
    qwen2       q,k,v always, o never               no        no        must be off
    qwen3       attention_bias → q,k,v and o        no        yes       must be off
    phi3        none                                no        no        `sliding_window` (or null)
    gemma2      attention_bias → q,k,v and o        no        no        `layer_types` + window
    gemma3_text attention_bias → q,k,v and o        no        yes       `layer_types` + window
    qwen3_moe   attention_bias → q,k,v and o        no        yes       must be off

Qwen3-MoE adds `num_experts`, `num_experts_per_tok`, `moe_intermediate_size`, `norm_topk_prob`
and `router_aux_loss_coef` (HF `Qwen3MoeConfig`). Every layer must be sparse: a config with
`mlp_only_layers` or `decoder_sparse_step` ≠ 1 (dense MLP layers between the MoE layers; no
published Qwen3-MoE has them) is refused, since the scanned layer stack is homogeneous.

Gemma (`GEMMA`) always has (1 + w) norms, sandwich norms, √d embeddings and GeGLU
(`hidden_activation`); it reads `query_pre_attn_scalar`, `attn_logit_softcapping`,
`final_logit_softcapping` and `layer_types` (absent: HF's rule, layer i slides iff
(i + 1) % p ≠ 0 with p = 2 for Gemma 2, `sliding_window_pattern` (6) for Gemma 3). Gemma 3's
RoPE is two dicts in transformers 5 (`rope_parameters = {sliding_attention: {...},
full_attention: {...}}`) and `rope_theta` + `rope_local_base_freq` + `rope_scaling` in 4.

Phi-3 also carries `partial_rotary_factor` (Phi-4-mini: 0.75; top level in transformers 4, in
`rope_parameters` in 5) and the 128K variants' `longrope` scaling (once spelled `su`) with
`short_factor`, `long_factor` and `original_max_position_embeddings` (top level or in the RoPE
dict); an unset `factor` is `max_position_embeddings / original_max_position_embeddings`, as in
HF `_compute_longrope_parameters`.

RoPE is read in both spellings: transformers ≥ 5 writes `rope_parameters = {rope_type,
rope_theta, factor, ...}`, transformers 4 wrote `rope_theta` plus `rope_scaling = {rope_type
(or legacy "type"), factor, ...}`. Export writes both, so either major version reads it back.
A key missing from `config.json` takes the HF config class's default (`_DEFAULTS`), as
`transformers` would. `architectures` ending in `ForSequenceClassification` with one label map
to `head="scalar"` (reward / value models).

`to_model_config(hf_config_dict(c)) == c` for every `ModelConfig` HF can express (numerics
fields such as `dtype`, `remat` are not HF's and keep their defaults).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from easyalign.model.config import ModelConfig, RopeScaling


@dataclasses.dataclass(frozen=True)
class Family:
    architecture: str        # "Llama" → LlamaForCausalLM / LlamaForSequenceClassification
    bias: str                # "attention_bias" (one flag for q,k,v,o), "qkv" (Qwen2) or "none"
    has_mlp_bias: bool       # config carries `mlp_bias`
    qk_norm: bool
    sliding_window: bool     # True: honoured (Mistral); False: must be off (Qwen) or absent


FAMILIES: dict[str, Family] = {
    "llama": Family("Llama", "attention_bias", True, False, False),
    "mistral": Family("Mistral", "none", False, False, True),
    "qwen2": Family("Qwen2", "qkv", False, False, False),
    "qwen3": Family("Qwen3", "attention_bias", False, True, False),
    "phi3": Family("Phi3", "none", False, False, True),
    "gemma2": Family("Gemma2", "attention_bias", False, False, True),
    "gemma3_text": Family("Gemma3", "attention_bias", False, True, True),
    "qwen3_moe": Family("Qwen3Moe", "attention_bias", False, True, False),
}
MOE = ("qwen3_moe",)
_MOE_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
             "router_aux_loss_coef")
PARTIAL_ROTARY = ("phi3",)  # families whose config carries partial_rotary_factor
GEMMA = {"gemma2": 2, "gemma3_text": 6}  # family → default period of its local:global pattern
_GEMMA_TRAITS = dict(rms_norm_one_plus=True, sandwich_norms=True, scale_embeddings=True,
                     hidden_act="gelu_pytorch_tanh")

# Defaults of the HF config classes (transformers 5) for keys a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(max_position_embeddings=2048, bos_token_id=1, eos_token_id=2),
    "mistral": dict(max_position_embeddings=4096 * 32, bos_token_id=1, eos_token_id=2,
                    sliding_window=4096),
    "qwen2": dict(max_position_embeddings=32768),
    "qwen3": dict(max_position_embeddings=32768),
    "phi3": dict(max_position_embeddings=4096, original_max_position_embeddings=4096,
                 bos_token_id=1, eos_token_id=32000, pad_token_id=32000, sliding_window=None,
                 rms_norm_eps=1e-5),
    "gemma2": dict(max_position_embeddings=8192, head_dim=256, bos_token_id=2, eos_token_id=1,
                   pad_token_id=0, tie_word_embeddings=True, query_pre_attn_scalar=256,
                   sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh"),
    "gemma3_text": dict(max_position_embeddings=131072, head_dim=256, bos_token_id=2,
                        eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
                        query_pre_attn_scalar=256, sliding_window=4096, rope_theta=1e6,
                        rope_local_base_freq=1e4, sliding_window_pattern=6,
                        hidden_activation="gelu_pytorch_tanh"),
    "qwen3_moe": dict(max_position_embeddings=32768, num_experts=128, num_experts_per_tok=8,
                      moe_intermediate_size=768, norm_topk_prob=False,
                      router_aux_loss_coef=0.001, decoder_sparse_step=1),
}
_COMMON_DEFAULTS = dict(rms_norm_eps=1e-6, initializer_range=0.02, tie_word_embeddings=False,
                        hidden_act="silu", bos_token_id=None, eos_token_id=None,
                        pad_token_id=None, attention_bias=False, mlp_bias=False)
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor",
              "high_freq_factor", "original_max_position_embeddings", "short_factor",
              "long_factor", "attention_factor", "partial_rotary_factor"}


class HFConfigError(ValueError):
    """A config.json easyalign cannot represent exactly."""


def _rope(raw: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    params = raw.get("rope_parameters")
    if params is None:  # transformers 4 spelling
        params = {**(raw.get("rope_scaling") or {}), "rope_theta": raw.get("rope_theta", 10000.0)}
    unknown = sorted(set(params) - _ROPE_KEYS)
    if unknown:
        raise HFConfigError(f"{where}: unsupported RoPE parameter(s) {unknown} in {dict(params)}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    if rope_type == "default":
        return theta, None
    if rope_type == "linear":
        return theta, RopeScaling(rope_type="linear", factor=float(params["factor"]))
    if rope_type == "llama3":
        return theta, RopeScaling(
            rope_type="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]))
    if rope_type in ("longrope", "su"):  # "su": the name of the first Phi-3 128K configs
        original = int(params.get("original_max_position_embeddings")
                       or raw["original_max_position_embeddings"])
        factor = params.get("factor") or raw["max_position_embeddings"] / original
        attention = params.get("attention_factor")
        return theta, RopeScaling(
            rope_type="longrope", factor=float(factor), original_max_position_embeddings=original,
            short_factor=tuple(params["short_factor"]), long_factor=tuple(params["long_factor"]),
            attention_factor=None if attention is None else float(attention))
    raise HFConfigError(f"{where}: unsupported rope_type {rope_type!r}; supported: "
                        "'default', 'linear', 'llama3', 'longrope'")


def _head(raw: Mapping[str, Any], where: str) -> str:
    architectures = raw.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return "lm"
    labels = len(raw["id2label"]) if raw.get("id2label") else raw.get("num_labels", 2)
    if labels != 1:
        raise HFConfigError(f"{where}: {architectures[0]} with {labels} labels; only one label "
                            "(a scalar reward/value head) is supported")
    return "scalar"


def to_model_config(raw: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
    """`ModelConfig` from the dict of an HF config.json (`where` names it in errors)."""
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise HFConfigError(f"{where}: unsupported model_type {model_type!r}; supported: "
                            f"{sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise HFConfigError(f"{where}: missing required key(s) {missing}")
    c = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type],
         **{k: v for k, v in raw.items() if v is not None or k.endswith("token_id")}}
    gemma = model_type in GEMMA
    if gemma and c.get("hidden_activation", c["hidden_act"]) != "gelu_pytorch_tanh":
        raise HFConfigError(f"{where}: hidden_activation {c.get('hidden_activation')!r}; only "
                            "'gelu_pytorch_tanh' is supported for Gemma")
    if not gemma and c["hidden_act"] not in ("silu", "swish"):  # two HF names of one function
        raise HFConfigError(f"{where}: hidden_act {c['hidden_act']!r}; only 'silu' is supported")
    if not family.sliding_window and (
            c.get("use_sliding_window") or "sliding_attention" in (c.get("layer_types") or [])):
        raise HFConfigError(f"{where}: sliding-window attention (use_sliding_window / "
                            f"layer_types) is unsupported for {model_type}")
    bias = {"attention_bias": bool(c["attention_bias"]), "qkv": True, "none": False}[family.bias]
    if model_type == "gemma3_text":
        theta, scaling, gemma_extra = _gemma3_rope(c, where)
    else:
        theta, scaling = _rope(c, where)
        gemma_extra = {}
    if gemma:
        period = GEMMA[model_type]  # Gemma 2's config class ignores sliding_window_pattern
        if model_type == "gemma3_text":
            period = c.get("sliding_window_pattern", period)
        layer_types = c.get("layer_types") or [
            "sliding_attention" if (i + 1) % period else "full_attention"
            for i in range(c["num_hidden_layers"])]
        gemma_extra.update(
            _GEMMA_TRAITS, layer_types=tuple(layer_types),
            query_pre_attn_scalar=c["query_pre_attn_scalar"],
            attn_logit_softcapping=_float_or_none(c.get("attn_logit_softcapping")),
            final_logit_softcapping=_float_or_none(c.get("final_logit_softcapping")))
    moe = {}
    if model_type in MOE:
        if c.get("mlp_only_layers") or c["decoder_sparse_step"] != 1:
            raise HFConfigError(f"{where}: dense MLP layers among the experts (mlp_only_layers="
                                f"{c.get('mlp_only_layers')}, decoder_sparse_step="
                                f"{c['decoder_sparse_step']}) are unsupported")
        if "num_local_experts" in c:  # transformers 5 saves `num_experts` under this name
            c["num_experts"] = c["num_local_experts"]
        moe = {k: type(_DEFAULTS[model_type][k])(c[k]) for k in _MOE_KEYS}
    heads = c["num_attention_heads"]
    partial = 1.0
    if model_type in PARTIAL_ROTARY:
        partial = float((c.get("rope_parameters") or {}).get(
            "partial_rotary_factor", c.get("partial_rotary_factor", 1.0)))
    return ModelConfig(
        family=model_type, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=heads, num_kv_heads=c.get("num_key_value_heads", heads),
        head_dim=c.get("head_dim", c["hidden_size"] // heads),
        rms_norm_eps=float(c["rms_norm_eps"]), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=c["max_position_embeddings"],
        tie_word_embeddings=bool(c["tie_word_embeddings"]),
        qkv_bias=bias, o_bias=bias and family.bias == "attention_bias",
        mlp_bias=bool(c["mlp_bias"]) and family.has_mlp_bias, qk_norm=family.qk_norm,
        partial_rotary_factor=partial,
        sliding_window=raw.get("sliding_window", c.get("sliding_window"))
        if family.sliding_window else None,
        initializer_range=float(c["initializer_range"]), bos_token_id=c["bos_token_id"],
        eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"], head=_head(raw, where),
        **gemma_extra, **moe)


def _int_if_whole(value: float) -> int | float:
    """HF's config classes type `query_pre_attn_scalar` as int (and refuse 256.0)."""
    return int(value) if float(value).is_integer() else value


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _gemma3_rope(c: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None, dict]:
    """Global θ and scaling, and `rope_local_theta`, of a Gemma 3 config (either spelling)."""
    params = c.get("rope_parameters")
    if params and "full_attention" in params:  # transformers ≥ 5: one dict per layer type
        theta, scaling = _rope({"rope_parameters": params["full_attention"]}, where)
        local = params.get("sliding_attention") or {"rope_theta": 1e4}
        local_theta, local_scaling = _rope({"rope_parameters": local}, where)
    else:  # transformers 4: rope_theta / rope_scaling for global, rope_local_base_freq
        theta, scaling = _rope(c, where)
        local_theta, local_scaling = float(c["rope_local_base_freq"]), None
    if local_scaling is not None:
        raise HFConfigError(f"{where}: RoPE scaling of the sliding layers is unsupported")
    return theta, scaling, {"rope_local_theta": local_theta}


def _check_expressible(config: ModelConfig) -> None:
    family = FAMILIES[config.family]
    wanted = {"attention_bias": (config.qkv_bias, config.qkv_bias), "qkv": (True, False),
              "none": (False, False)}[family.bias]
    problems = []
    if (config.qkv_bias, config.o_bias) != wanted:
        problems.append(f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias} (HF {config.family} "
                        f"has q/k/v bias {wanted[0]}, o bias {wanted[1]})")
    if config.mlp_bias and not family.has_mlp_bias:
        problems.append("mlp_bias=True")
    if config.qk_norm != family.qk_norm:
        problems.append(f"qk_norm={config.qk_norm}")
    if config.sliding_window is not None and not family.sliding_window:
        problems.append(f"sliding_window={config.sliding_window}")
    if config.partial_rotary_factor != 1.0 and config.family not in PARTIAL_ROTARY:
        problems.append(f"partial_rotary_factor={config.partial_rotary_factor}")
    gemma = config.family in GEMMA
    for name, value in _GEMMA_TRAITS.items():
        if (getattr(config, name) == value) != gemma:
            problems.append(f"{name}={getattr(config, name)!r}")
    if not gemma:
        for name in ("layer_types", "attn_logit_softcapping", "final_logit_softcapping",
                     "query_pre_attn_scalar"):
            if getattr(config, name) is not None:
                problems.append(f"{name}={getattr(config, name)!r}")
    if (config.rope_local_theta is not None) != (config.family == "gemma3_text"):
        problems.append(f"rope_local_theta={config.rope_local_theta}")
    if gemma and (config.layer_types is None or config.query_pre_attn_scalar is None):
        problems.append("a Gemma needs layer_types and query_pre_attn_scalar")
    if (config.num_experts > 0) != (config.family in MOE):
        problems.append(f"num_experts={config.num_experts}")
    if problems:
        raise HFConfigError(f"ModelConfig of family {config.family!r} has no HF equivalent: "
                            + "; ".join(problems))


def hf_config_dict(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """The config.json of `config` with weights stored in `dtype` (both transformers 4 and 5)."""
    _check_expressible(config)
    family = FAMILIES[config.family]
    scalar = config.head == "scalar"
    rope: dict[str, Any] = {"rope_type": "default"}
    if config.rope_scaling is not None and config.rope_scaling.rope_type != "default":
        s = config.rope_scaling
        rope = {"rope_type": s.rope_type, "factor": s.factor}
        if s.rope_type == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
        if s.rope_type == "longrope":
            rope.update(short_factor=list(s.short_factor), long_factor=list(s.long_factor),
                        original_max_position_embeddings=s.original_max_position_embeddings)
            if s.attention_factor is not None:
                rope["attention_factor"] = s.attention_factor
    eos = config.eos_token_id
    out: dict[str, Any] = {
        "architectures": [family.architecture
                          + ("ForSequenceClassification" if scalar else "ForCausalLM")],
        "model_type": config.family,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
        "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "pad_token_id": config.pad_token_id,
        "rope_parameters": {**rope, "rope_theta": config.rope_theta},   # transformers ≥ 5
        "rope_theta": config.rope_theta,                                # transformers 4
        "rope_scaling": None if rope["rope_type"] == "default" else rope,
        "attention_dropout": 0.0, "use_cache": True,
        "dtype": dtype, "torch_dtype": dtype,  # transformers 5 reads `dtype`, 4 `torch_dtype`
    }
    if family.bias == "attention_bias":
        out["attention_bias"] = config.qkv_bias
    if family.has_mlp_bias:
        out["mlp_bias"] = config.mlp_bias
    if family.sliding_window:
        out["sliding_window"] = config.sliding_window
    if config.family in PARTIAL_ROTARY:
        out["partial_rotary_factor"] = config.partial_rotary_factor
        out["rope_parameters"]["partial_rotary_factor"] = config.partial_rotary_factor
        if config.rope_scaling is not None and config.rope_scaling.rope_type == "longrope":
            out["original_max_position_embeddings"] = (
                config.rope_scaling.original_max_position_embeddings)
    if config.family in GEMMA:
        del out["hidden_act"]
        out.update(hidden_activation=config.hidden_act, layer_types=list(config.layer_types),
                   query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar),
                   attn_logit_softcapping=config.attn_logit_softcapping,
                   final_logit_softcapping=config.final_logit_softcapping)
    if config.family == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": config.rope_local_theta}
        out["rope_parameters"] = {"full_attention": out["rope_parameters"],
                                  "sliding_attention": local}
        out["rope_local_base_freq"] = config.rope_local_theta
    if config.family in MOE:
        # `num_experts` (transformers 4) and `num_local_experts` (5, via attribute_map)
        out.update({k: getattr(config, k) for k in _MOE_KEYS}, decoder_sparse_step=1,
                   num_local_experts=config.num_experts,
                   mlp_only_layers=[], output_router_logits=False)
    if config.family.startswith("qwen"):
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=config.num_layers)
    if scalar:  # num_labels = 1, spelled the way HF serialises it
        out.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return out
