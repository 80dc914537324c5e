"""GGUF import on tiny random models written in the test the way llama.cpp's converter does.

A random HF model (hf_fixtures) is written with `gguf.GGUFWriter` in each tensor type the
import must read: 2-D weights quantised with `gguf.quants.quantize`, 1-D norms kept F32 (as
llama.cpp keeps them), GGUF names from gguf-py's tensor map, and llama's q/k rows permuted
by llama.cpp's `LlamaModel.permute`. The import is compared with transformers reading the same
file (its own names, dequantisation and reverse permutation), with the source model itself
(F32: nothing lost), and parameter by parameter with the dequantised reference.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import transformers

from easyalign.hf.gguf import GGUFError, from_gguf, read_gguf_config
from gguf_fixtures import write_gguf
from hf_fixtures import batch, hf_logits, make_hf_model, ours

TOL = 1e-4  # fp32 end to end, as the HF import; absolute, on logits of magnitude ~1
QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
def roundtrip(w: np.ndarray, qtype: str) -> np.ndarray:
    kind = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)



@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random untied Llama (no biases) and its directory."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    return make_hf_model("llama", directory, attention_bias=False, mlp_bias=False)


@pytest.mark.parametrize("qtype", QTYPES)
def test_logits_match_transformers_gguf_loading(qtype, source, tmp_path):
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_gguf(source, path, qtype)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ids, mask = batch()
    expected = hf_logits(reference, ids, mask)
    got = ours(from_gguf(path, dtype="float32"), ids, mask)
    keep = mask.astype(bool)
    assert np.abs(expected[keep]).max() > 0.5
    np.testing.assert_allclose(got[keep], expected[keep], atol=TOL, rtol=0)


def test_f32_gguf_equals_the_source_model(source, tmp_path):
    """Nothing is lost in F32: the un-permuted q/k give the original model's logits."""
    write_gguf(source, tmp_path / "tiny.gguf", "F32")
    ids, mask = batch()
    keep = mask.astype(bool)
    got = ours(from_gguf(tmp_path / "tiny.gguf", dtype="float32"), ids, mask)
    np.testing.assert_allclose(got[keep], hf_logits(source, ids, mask)[keep], atol=TOL, rtol=0)


def test_params_are_the_dequantised_weights(source, tmp_path):
    """Q4_1 rows: our q kernel of layer 1 is exactly dequantize(quantize(HF q)), in our layout."""
    write_gguf(source, tmp_path / "tiny.gguf", "Q4_1")
    model = from_gguf(tmp_path / "tiny.gguf")
    hf_q = source.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    ours_q = np.asarray(model.layers.attn.q_proj.kernel[...][1]).reshape(64, 64).T
    assert np.array_equal(ours_q, roundtrip(hf_q, "Q4_1"))
    hf_down = source.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(model.layers.mlp.down_proj.kernel[...][0]),
                          roundtrip(hf_down, "Q4_1"))
    config = read_gguf_config(tmp_path / "tiny.gguf")
    assert (config.family, config.num_layers, config.num_kv_heads, config.head_dim,
            config.tie_word_embeddings, config.rms_norm_eps) == ("llama", 2, 2, 16, False, 1e-5)


@pytest.mark.parametrize("arch, qkv_bias, qk_norm", [("qwen2", True, False),
                                                     ("qwen3", False, True)])
def test_qwen_files_are_not_permuted(arch, qkv_bias, qk_norm, tmp_path):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k RMSNorm) files keep HF's row order: llama.cpp
    permutes llama only."""
    source = make_hf_model(arch, tmp_path / "hf")
    write_gguf(source, tmp_path / f"{arch}.gguf", "F32", arch=arch)
    config = read_gguf_config(tmp_path / f"{arch}.gguf")
    assert (config.family, config.qkv_bias, config.qk_norm, config.tie_word_embeddings) == (
        arch, qkv_bias, qk_norm, source.config.tie_word_embeddings)
    ids, mask = batch()
    keep = mask.astype(bool)
    got = ours(from_gguf(tmp_path / f"{arch}.gguf", dtype="float32"), ids, mask)
    np.testing.assert_allclose(got[keep], hf_logits(source, ids, mask)[keep], atol=TOL, rtol=0)


def test_refusals_name_the_file_and_key(source, tmp_path):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"odd\.gguf: general\.architecture = 'gpt2' is not "
                                        r"supported"):
        read_gguf_config(path)
    with pytest.raises(GGUFError, match=r"missing\.gguf: no such GGUF file"):
        from_gguf(tmp_path / "missing.gguf")
