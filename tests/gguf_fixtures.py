"""Tiny GGUF files for the GGUF and student tests, written the way llama.cpp's converter does.

`write_gguf(hf_model, path, qtype)`: the model's metadata under `{arch}.*` keys, its 2-D
weights quantised to `qtype` with `gguf.quants.quantize` (1-D norms and biases kept F32, as
llama.cpp keeps them), tensor names from gguf-py's map, and — for llama — q/k rows permuted
by llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py).
"""

from __future__ import annotations

import gguf
import numpy as np

ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
        "qwen3": gguf.MODEL_ARCH.QWEN3}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: HF's rotate-half rows of each head
    → interleaved pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(model, path, qtype: str, arch: str = "llama") -> None:
    """`model` (an HF causal LM) as a GGUF file with its 2-D weights in `qtype`."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    names = gguf.get_tensor_name_map(ARCH[arch], c.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # the shared matrix is written once, as token_embd (llama.cpp does too)
        w = tensor.detach().float().numpy()
        if arch == "llama" and ".q_proj." in hf_name:
            w = llama_cpp_permute(w, c.num_attention_heads)
        elif arch == "llama" and ".k_proj." in hf_name:
            w = llama_cpp_permute(w, c.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        kind = gguf.GGMLQuantizationType[qtype if w.ndim == 2 else "F32"]
        writer.add_tensor(name, gguf.quants.quantize(w, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
