"""A GGUF file's model: `ModelConfig` from its metadata, its tensors as a `TensorSource`.

GGUF (llama.cpp's format) stores one model in one file: key/value metadata (architecture,
sizes, tokenizer) and tensors, many of them block-quantised. The import reuses the HF
machinery whole: `GGUFTensors` presents the file's tensors under their HF names, in HF's
layout and float32, so `easyalign.hf.load.load_tensors` streams them through the same
declarative table (`tables.LLAMA_TABLE`) as a safetensors directory — same checks, same
shapes and transposes, same per-device block reads into the target sharding.

Four things differ from safetensors, each undone here:

* **Names.** GGUF names a tensor `blk.3.attn_q.weight` where HF says
  `model.layers.3.self_attn.q_proj.weight`. The translation is gguf-py's own
  `get_tensor_name_map(arch, n_blocks)` — the map llama.cpp's converter used to write the file.
* **Shapes.** GGUF lists dimensions fastest-first (`[576, 49152]` for a `[49152, 576]` matrix);
  the reader's arrays are already row-major, so the HF shape is the GGUF shape reversed.
* **Quantisation.** Each row of a quantised tensor is a run of blocks (32 values for Q4_0,
  Q4_1, Q8_0); `gguf.quants.dequantize` (numpy, no torch) turns the rows a device asks for into
  float32, so only those rows are ever dequantised.
* **RoPE row order (llama only).** llama.cpp computes RoPE on interleaved pairs `(x0, x1),
  (x2, x3), ...`; HF rotates halves `(x_i, x_{i+hd/2})`. Its converter therefore permutes the
  rows of every llama q and k projection (weights and biases) within each head,
  `w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)` (`LlamaModel.permute` in llama.cpp's
  `convert_hf_to_gguf.py`); `unpermute_rows` applies the inverse, as transformers'
  `LlamaTensorProcessor._reverse_permute_weights` does. Qwen2/Qwen3 files are not permuted.

Supported: `general.architecture` llama, qwen2, qwen3 (dense, no sliding window), RoPE
unscaled or linear, every tensor type `gguf.quants.dequantize` reads (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_x and the K-quants). Anything else is refused with the file and the key.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from easyalign.hf.gguf import GGUFError
from easyalign.hf.load import TensorSource
from easyalign.hf.tables import rows_for
from easyalign.model.config import ModelConfig, RopeScaling

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Arch:
    family: str            # our ModelConfig.family
    permuted_qk: bool      # llama.cpp's converter interleaved q/k rows for its RoPE
    qk_norm: bool


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", permuted_qk=True, qk_norm=False),
    "qwen2": Arch("qwen2", permuted_qk=False, qk_norm=False),
    "qwen3": Arch("qwen3", permuted_qk=False, qk_norm=True),
}


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime_ns: int, size: int) -> gguf.GGUFReader:
    # Parsing the header of a 100 MB file takes seconds; config, tensors and tokenizer share it.
    # The reader memory-maps the file: tensors are read when sliced, not here.
    return gguf.GGUFReader(path)


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """A (cached, memory-mapped) reader of the GGUF file `path`."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    stat = path.stat()
    try:
        return _open(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except (ValueError, OSError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None


def metadata(reader: gguf.GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata `key` (ints, floats, strings, lists); `default` when absent."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise GGUFError(f"{reader.data.filename}: missing metadata key {key}")
        return default
    return field.contents()


def _float32_value(value: float) -> float:
    """GGUF stores floats as float32 (1e-5 becomes 9.99999974e-06); the shortest decimal that
    rounds to the same float32 is the value the HF config had."""
    return float(str(np.float32(value)))


def gguf_config(reader: gguf.GGUFReader) -> ModelConfig:
    """The `ModelConfig` a GGUF file's metadata and tensor names describe."""
    where = reader.data.filename
    arch_name = metadata(reader, "general.architecture")
    if arch_name not in ARCHS:
        raise GGUFError(f"{where}: general.architecture = {arch_name!r} is not supported "
                        f"(supported: {sorted(ARCHS)})")
    arch = ARCHS[arch_name]

    def get(key: str, default: Any = _MISSING) -> Any:
        return metadata(reader, f"{arch_name}.{key}", default)

    if get("expert_count", 0):
        raise GGUFError(f"{where}: {arch_name}.expert_count = {get('expert_count')}: mixture-"
                        "of-experts models are not supported")
    hidden, heads = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", hidden // heads)
    for key in ("attention.value_length", "rope.dimension_count"):
        if get(key, head_dim) != head_dim:
            raise GGUFError(f"{where}: {arch_name}.{key} = {get(key)} differs from the head "
                            f"dimension {head_dim} (unsupported)")
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise GGUFError(f"{where}: {arch_name}.rope.scaling.type = {scaling!r} is not supported "
                        "(supported: none, linear)")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        # Llama 3.1+ files carry their RoPE scaling as per-frequency factors, not as metadata.
        raise GGUFError(f"{where}: tensor rope_freqs.weight (per-frequency RoPE factors, Llama "
                        "3.1+ scaling) is not supported; import the HF checkpoint instead")
    vocab = get("vocab_size", None)
    if vocab is None:
        vocab = len(metadata(reader, "tokenizer.ggml.tokens"))
    qkv_bias = "blk.0.attn_q.bias" in names
    return ModelConfig(
        family=arch.family, vocab_size=int(vocab), hidden_size=int(hidden),
        intermediate_size=int(get("feed_forward_length")), num_layers=int(get("block_count")),
        num_heads=int(heads), num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(head_dim),
        rms_norm_eps=_float32_value(get("attention.layer_norm_rms_epsilon")),
        rope_theta=_float32_value(get("rope.freq_base", 10000.0)),
        rope_scaling=(RopeScaling("linear", _float32_value(get("rope.scaling.factor")))
                      if scaling == "linear" else None),
        max_position_embeddings=int(get("context_length")),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias=qkv_bias, o_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_gate.bias" in names, qk_norm=arch.qk_norm,
        bos_token_id=metadata(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_id=metadata(reader, "tokenizer.ggml.eos_token_id", None),
        pad_token_id=metadata(reader, "tokenizer.ggml.padding_token_id", None))


def read_gguf_config(path: str | Path) -> ModelConfig:
    """`ModelConfig` of the GGUF file `path` (metadata only; no tensor is read)."""
    return gguf_config(open_gguf(path))


def unpermute_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Undo llama.cpp's RoPE row permutation on whole heads: `[n·hd, ...]` → `[n·hd, ...]`.

    The converter wrote `w.reshape(n, 2, hd/2, ...).swapaxes(1, 2)` (halves → interleaved
    pairs); viewing the stored rows as `(n, hd/2, 2)` and swapping back restores HF's order.
    """
    n = rows.shape[0] // head_dim
    if n * head_dim != rows.shape[0]:
        raise ValueError(f"un-permuting {rows.shape[0]} rows: not whole heads of {head_dim}")
    split = rows.reshape(n, head_dim // 2, 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether gguf-py can dequantise this tensor type (asked of the library with one block)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


class GGUFTensors(TensorSource):
    """A GGUF file's tensors under HF names and HF shapes, read as float32 row blocks."""

    def __init__(self, reader: gguf.GGUFReader, config: ModelConfig):
        self.source = Path(reader.data.filename)
        self.config = config
        arch_name = metadata(reader, "general.architecture")
        self.permuted_qk = ARCHS[arch_name].permuted_qk
        arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
        name_map = gguf.get_tensor_name_map(arch, config.num_layers)
        # Every tensor name our table expects, in GGUF spelling → the HF name.
        hf_of = {}
        for row in rows_for(config):
            for hf in row.hf_names(config.num_layers):
                gguf_name = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
                if gguf_name is not None:
                    hf_of[gguf_name] = hf
        self.by_name: dict[str, Any] = {}
        self.gguf_name: dict[str, str] = {}
        self.tensors = {}
        for tensor in reader.tensors:
            # A tensor the table does not expect keeps its GGUF name; `check` reports it.
            name = hf_of.get(tensor.name, tensor.name)
            self.by_name[name], self.gguf_name[name] = tensor, tensor.name
            shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
            self.tensors[name] = (self.source.name, shape, tensor.tensor_type.name)
        self.readable = tuple(sorted(
            {t.tensor_type.name for t in reader.tensors if _dequantizable(t.tensor_type)}))

    def display(self, name: str) -> str:
        gguf_name = self.gguf_name.get(name)
        return name if gguf_name in (None, name) else f"{gguf_name} (HF {name})"

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """Block `index` of the HF-layout tensor: its rows dequantised, then the columns cut."""
        tensor = self.by_name[name]
        permuted = self.permuted_qk and tensor.name.split(".")[-2] in ("attn_q", "attn_k")
        if len(tensor.shape) == 1:  # norms and biases: small, read whole
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            return (unpermute_rows(values, self.config.head_dim) if permuted else values)[index]
        # `data` is [rows, bytes per row]: slicing rows reads only those blocks. The table's
        # row slices cover whole heads (head_dim is never split), so un-permuting a block is
        # the same as un-permuting the tensor.
        rows = gguf.quants.dequantize(tensor.data[index[0]], tensor.tensor_type)
        if permuted:
            rows = unpermute_rows(rows, self.config.head_dim)
        return rows[(slice(None),) + tuple(index[1:])]


def gguf_tensors(path: str | Path, config: ModelConfig) -> GGUFTensors:
    return GGUFTensors(open_gguf(path), config)


__all__ = ["ARCHS", "open_gguf", "metadata", "gguf_config", "read_gguf_config",
           "unpermute_rows", "GGUFTensors", "gguf_tensors"]
