"""Declarative HF ⇄ easyalign tensor tables (DESIGN decision 7).

A table is a tuple of `Row`s; one row says where one HF tensor lives in our parameter tree:

    Row(hf="model.layers.{i}.self_attn.q_proj.weight",     # HF name, {i} = layer index
        path="layers.attn.q_proj.kernel",                  # our nnx param path
        layout="(H hd) d -> d H hd",                       # HF dims -> our dims
        when=qkv_bias)                                     # present only if this holds

`layout` is an einops-like spec over the symbols of `sizes(config)` (`V d F H KV hd 1`). The left
side lists the HF tensor's dimensions, a parenthesised group being one HF dimension made of
several factors (row-major, so `(H hd)` is `H` blocks of `hd`); the right side lists our
dimensions, each one factor. Import is "split the HF dims into factors, then transpose", export
is the inverse. A row whose HF name contains `{i}` is a stacked parameter: our array has a
leading `layers` axis of size L and row `i` of it is the HF tensor for layer `i`.

Import and export (`load.py`, `export.py`) are generic readers of these tables; a family adds
a table, never a code path. Llama, Mistral and the Qwens use HF's Llama naming, so they share
`LLAMA_TABLE` and differ only by which conditional rows apply (biases, q/k norm, heads).

A fused HF tensor (Phi-3's `qkv_proj` = [q; k; v] and `gate_up_proj` = [gate; up], stacked along
HF dim 0) is written with `fused(hf, (path, layout), ...)`: one row per piece, each knowing all
the pieces' layouts (`pieces`) and its index (`piece`). Import reads the piece's rows of the HF
tensor (an offset along dim 0); export concatenates the pieces back, in order.

Gemma 2 and 3 share `GEMMA_TABLE` (four norms per layer; Gemma 3 adds the q/k norm rows).

A mixture of experts stores one HF tensor per layer *and expert* (`...mlp.experts.{e}.gate_proj
.weight`, Qwen3-MoE); a row whose name holds `{e}` as well is stacked twice: our array is
`[L, E, ...]` and `[i, e]` of it is expert e of layer i (import stacks, export unstacks).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy as np

from easyalign.model.config import ModelConfig

# Tensors HF checkpoints may carry that hold no parameter (old Llama exports saved RoPE tables).
IGNORED_TENSORS = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)


def sizes(config: ModelConfig) -> dict[str, int]:
    """Values of the layout symbols for one config."""
    return {"V": config.vocab_size, "d": config.hidden_size, "F": config.intermediate_size,
            "H": config.num_heads, "KV": config.num_kv_heads, "hd": config.head_dim, "1": 1,
            "E": config.num_experts, "Fe": config.moe_intermediate_size}


@dataclasses.dataclass(frozen=True)
class Layout:
    """A parsed `"(H hd) d -> d H hd"`: HF dims as factor groups, and our dims as factors."""

    groups: tuple[tuple[str, ...], ...]
    ours: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> "Layout":
        left, right = (side.strip() for side in spec.split("->"))
        groups = tuple(tuple(group.split()) if group else (single,)
                       for group, single in re.findall(r"\(([^)]*)\)|(\S+)", left))
        ours = tuple(right.split())
        factors = [f for group in groups for f in group]
        if sorted(factors) != sorted(ours) or len(set(ours)) != len(ours):
            raise ValueError(f"layout {spec!r}: both sides must name the same distinct factors")
        return cls(groups, ours)

    @property
    def factors(self) -> tuple[str, ...]:
        return tuple(f for group in self.groups for f in group)

    @property
    def perm(self) -> tuple[int, ...]:
        """Transpose taking the split HF view (factor order) to our dimension order."""
        return tuple(self.factors.index(f) for f in self.ours)

    def hf_shape(self, size: dict[str, int]) -> tuple[int, ...]:
        return tuple(math.prod(size[f] for f in group) for group in self.groups)

    def our_shape(self, size: dict[str, int]) -> tuple[int, ...]:
        return tuple(size[f] for f in self.ours)

    def hf_slices(self, index: tuple[slice, ...], size: dict[str, int]):
        """HF slices covering the block `index` (slices of our dims) selects, and the factor ranges.

        A group `(a b)` can only be sliced contiguously along its leading factor, so the read
        covers the requested range of `a` with all of `b`; `to_ours` trims `b` in memory. Our
        sharding rules never split an inner factor (head_dim is replicated), so nothing is
        over-read in practice.
        """
        ranges = {}
        for f, s in zip(self.ours, index):
            start, stop, step = s.indices(size[f])
            if step != 1:
                raise ValueError(f"strided read of factor {f} is not supported")
            ranges[f] = (start, stop)
        hf = []
        for group in self.groups:
            inner = math.prod(size[f] for f in group[1:])
            start, stop = ranges[group[0]]
            hf.append(slice(start * inner, stop * inner))
        return tuple(hf), ranges

    def to_ours(self, block: np.ndarray, ranges: dict[str, tuple[int, int]],
                size: dict[str, int]) -> np.ndarray:
        """The HF block read by `hf_slices` → our block (split, trim inner factors, transpose)."""
        split = []
        for group in self.groups:
            split.append(ranges[group[0]][1] - ranges[group[0]][0])
            split.extend(size[f] for f in group[1:])
        block = block.reshape(split)
        trim = tuple(slice(0, None) if f == group[0] else slice(*ranges[f])
                     for group in self.groups for f in group)
        return np.transpose(block[trim], self.perm)

    def to_hf(self, ours: np.ndarray, size: dict[str, int]) -> np.ndarray:
        """One whole tensor in our layout → the HF tensor (inverse transpose, merge groups)."""
        return np.transpose(ours, np.argsort(self.perm)).reshape(self.hf_shape(size))


def _always(config: ModelConfig) -> bool:
    return True


def qkv_bias(config: ModelConfig) -> bool:
    return config.qkv_bias


def o_bias(config: ModelConfig) -> bool:
    return config.o_bias


def mlp_bias(config: ModelConfig) -> bool:
    return config.mlp_bias


def qk_norm(config: ModelConfig) -> bool:
    return config.qk_norm


def sandwich_norms(config: ModelConfig) -> bool:
    return config.sandwich_norms


def untied_lm_head(config: ModelConfig) -> bool:
    return config.head == "lm" and not config.tie_word_embeddings


def scalar_head(config: ModelConfig) -> bool:
    return config.head == "scalar"


@dataclasses.dataclass(frozen=True)
class Row:
    hf: str
    path: str
    layout: Layout
    when: Callable[[ModelConfig], bool] = _always
    pieces: tuple[Layout, ...] = ()  # a fused HF tensor: every piece's layout, along HF dim 0
    piece: int = 0                   # which piece this row is

    def hf_shape(self, size: dict[str, int]) -> tuple[int, ...]:
        """Shape of the whole HF tensor (all pieces of a fused one)."""
        own = self.layout.hf_shape(size)
        if not self.pieces:
            return own
        return (sum(p.hf_shape(size)[0] for p in self.pieces),) + own[1:]

    def hf_offset(self, size: dict[str, int]) -> int:
        """Where this row's piece starts along HF dim 0 (0 for an unfused tensor)."""
        return sum(p.hf_shape(size)[0] for p in self.pieces[:self.piece])

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf

    @property
    def per_expert(self) -> bool:
        """One HF tensor per expert too: our array is `[L, E, ...]`."""
        return "{e}" in self.hf

    def stack_shape(self, config: ModelConfig) -> tuple[int, ...]:
        """Our leading stacked axes: `()`, `(L,)` or `(L, E)`."""
        return (((config.num_layers,) if self.stacked else ())
                + ((config.num_experts,) if self.per_expert else ()))

    def hf_name(self, index: tuple[int, ...]) -> str:
        """The HF name of stacked position `index` (layer, then expert)."""
        return self.hf.format(**dict(zip("ie", index)))

    def hf_names(self, num_layers: int, num_experts: int = 0) -> list[str]:
        if not self.stacked:
            return [self.hf]
        if self.per_expert:
            return [self.hf.format(i=i, e=e) for i in range(num_layers)
                    for e in range(num_experts)]
        return [self.hf.format(i=i) for i in range(num_layers)]


def _row(hf: str, path: str, layout: str, when=_always) -> Row:
    return Row(hf, path, Layout.parse(layout), when)


def fused(hf: str, *parts: tuple[str, str], when=_always) -> tuple[Row, ...]:
    """Rows of one HF tensor made of `parts` = (path, layout) stacked along HF dim 0."""
    layouts = tuple(Layout.parse(layout) for _, layout in parts)
    return tuple(Row(hf, path, layout, when, layouts, k)
                 for k, ((path, _), layout) in enumerate(zip(parts, layouts)))


_LAYER = "model.layers.{i}."
LLAMA_TABLE: tuple[Row, ...] = (
    _row("model.embed_tokens.weight", "embed_tokens.embedding", "V d -> V d"),
    _row(_LAYER + "input_layernorm.weight", "layers.input_norm.scale", "d -> d"),
    _row(_LAYER + "self_attn.q_proj.weight", "layers.attn.q_proj.kernel", "(H hd) d -> d H hd"),
    _row(_LAYER + "self_attn.q_proj.bias", "layers.attn.q_proj.bias", "(H hd) -> H hd", qkv_bias),
    _row(_LAYER + "self_attn.k_proj.weight", "layers.attn.k_proj.kernel", "(KV hd) d -> d KV hd"),
    _row(_LAYER + "self_attn.k_proj.bias", "layers.attn.k_proj.bias", "(KV hd) -> KV hd",
         qkv_bias),
    _row(_LAYER + "self_attn.v_proj.weight", "layers.attn.v_proj.kernel", "(KV hd) d -> d KV hd"),
    _row(_LAYER + "self_attn.v_proj.bias", "layers.attn.v_proj.bias", "(KV hd) -> KV hd",
         qkv_bias),
    _row(_LAYER + "self_attn.o_proj.weight", "layers.attn.o_proj.kernel", "d (H hd) -> d H hd"),
    _row(_LAYER + "self_attn.o_proj.bias", "layers.attn.o_proj.bias", "d -> d", o_bias),
    _row(_LAYER + "self_attn.q_norm.weight", "layers.attn.q_norm.scale", "hd -> hd", qk_norm),
    _row(_LAYER + "self_attn.k_norm.weight", "layers.attn.k_norm.scale", "hd -> hd", qk_norm),
    _row(_LAYER + "post_attention_layernorm.weight", "layers.post_attn_norm.scale", "d -> d"),
    _row(_LAYER + "mlp.gate_proj.weight", "layers.mlp.gate_proj.kernel", "F d -> d F"),
    _row(_LAYER + "mlp.gate_proj.bias", "layers.mlp.gate_proj.bias", "F -> F", mlp_bias),
    _row(_LAYER + "mlp.up_proj.weight", "layers.mlp.up_proj.kernel", "F d -> d F"),
    _row(_LAYER + "mlp.up_proj.bias", "layers.mlp.up_proj.bias", "F -> F", mlp_bias),
    _row(_LAYER + "mlp.down_proj.weight", "layers.mlp.down_proj.kernel", "d F -> d F"),
    _row(_LAYER + "mlp.down_proj.bias", "layers.mlp.down_proj.bias", "d -> d", mlp_bias),
    _row("model.norm.weight", "final_norm.scale", "d -> d"),
    _row("lm_head.weight", "lm_head.kernel", "V d -> d V", untied_lm_head),
    # HF *ForSequenceClassification with num_labels=1: the reward/value head.
    _row("score.weight", "score.kernel", "1 d -> d 1", scalar_head),
)

# Phi-3/3.5/4-mini (HF `modeling_phi3.py`): Llama's layer with q, k, v in one `qkv_proj` and
# gate, up in one `gate_up_proj` (`gate, up = gate_up.chunk(2)`); no biases.
PHI3_TABLE: tuple[Row, ...] = (
    _row("model.embed_tokens.weight", "embed_tokens.embedding", "V d -> V d"),
    _row(_LAYER + "input_layernorm.weight", "layers.input_norm.scale", "d -> d"),
    *fused(_LAYER + "self_attn.qkv_proj.weight",
           ("layers.attn.q_proj.kernel", "(H hd) d -> d H hd"),
           ("layers.attn.k_proj.kernel", "(KV hd) d -> d KV hd"),
           ("layers.attn.v_proj.kernel", "(KV hd) d -> d KV hd")),
    _row(_LAYER + "self_attn.o_proj.weight", "layers.attn.o_proj.kernel", "d (H hd) -> d H hd"),
    _row(_LAYER + "post_attention_layernorm.weight", "layers.post_attn_norm.scale", "d -> d"),
    *fused(_LAYER + "mlp.gate_up_proj.weight",
           ("layers.mlp.gate_proj.kernel", "F d -> d F"),
           ("layers.mlp.up_proj.kernel", "F d -> d F")),
    _row(_LAYER + "mlp.down_proj.weight", "layers.mlp.down_proj.kernel", "d F -> d F"),
    _row("model.norm.weight", "final_norm.scale", "d -> d"),
    _row("lm_head.weight", "lm_head.kernel", "V d -> d V", untied_lm_head),
    _row("score.weight", "score.kernel", "1 d -> d 1", scalar_head),
)

# Gemma 2 and Gemma 3 text (HF `modeling_gemma2.py`, `modeling_gemma3.py`): Llama's names plus
# four norms per layer. HF `post_attention_layernorm` is the norm of the attention *output*
# (ours `attn_out_norm`), `pre_feedforward_layernorm` the norm before the MLP (ours
# `post_attn_norm`, Llama's `post_attention_layernorm`), `post_feedforward_layernorm` the norm of
# the MLP output (`mlp_out_norm`). Norm weights are the w of (1 + w). Gemma 3 adds q/k norms;
# the rows that apply follow the config, as for Llama (no biases in Gemma).
GEMMA_TABLE: tuple[Row, ...] = tuple(
    row for row in LLAMA_TABLE if row.hf != _LAYER + "post_attention_layernorm.weight") + (
    _row(_LAYER + "post_attention_layernorm.weight", "layers.attn_out_norm.scale", "d -> d",
         sandwich_norms),
    _row(_LAYER + "pre_feedforward_layernorm.weight", "layers.post_attn_norm.scale", "d -> d"),
    _row(_LAYER + "post_feedforward_layernorm.weight", "layers.mlp_out_norm.scale", "d -> d",
         sandwich_norms),
)

# Qwen3-MoE (HF `modeling_qwen3_moe.py`): Qwen3's attention (q/k norm); the MLP is a router
# `mlp.gate` [E, d] and per-expert SwiGLU projections (the checkpoint format; transformers 5
# fuses them in memory and splits them again on save).
_EXPERT = _LAYER + "mlp.experts.{e}."
QWEN3_MOE_TABLE: tuple[Row, ...] = tuple(
    row for row in LLAMA_TABLE if ".mlp." not in row.hf) + (
    _row(_LAYER + "mlp.gate.weight", "layers.mlp.router", "E d -> d E"),
    _row(_EXPERT + "gate_proj.weight", "layers.mlp.gate_proj", "Fe d -> d Fe"),
    _row(_EXPERT + "up_proj.weight", "layers.mlp.up_proj", "Fe d -> d Fe"),
    _row(_EXPERT + "down_proj.weight", "layers.mlp.down_proj", "d Fe -> Fe d"),
)

TABLES: dict[str, tuple[Row, ...]] = {
    "llama": LLAMA_TABLE, "mistral": LLAMA_TABLE, "qwen2": LLAMA_TABLE, "qwen3": LLAMA_TABLE,
    "phi3": PHI3_TABLE, "gemma2": GEMMA_TABLE, "gemma3_text": GEMMA_TABLE,
    "qwen3_moe": QWEN3_MOE_TABLE}


def rows_for(config: ModelConfig) -> list[Row]:
    """The rows of `config`'s family table that apply to it."""
    return [row for row in TABLES[config.family] if row.when(config)]


def ignorable(name: str, config: ModelConfig) -> bool:
    """HF tensors that may be present and are dropped: RoPE caches; `lm_head.weight` of a tied
    model (some exporters write the shared matrix twice; HF ignores it when tying, so do we)."""
    if any(pattern.search(name) for pattern in IGNORED_TENSORS):
        return True
    return name == "lm_head.weight" and config.head == "lm" and config.tie_word_embeddings
