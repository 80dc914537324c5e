"""easyalign → HF export: bit-identical round trips that transformers loads, sharding, configs."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
import transformers

from easyalign import from_hf, preset, to_hf
from easyalign.hf import HFConfigError, hf_config_dict, to_model_config
from easyalign.hf.export import parse_size
from easyalign.model.config import ModelConfig, RopeScaling
from hf_fixtures import (CASES, assert_same_tensors, attn_kwargs, batch, hf_logits,
                         make_hf_model)


def load_strict(directory, auto=transformers.AutoModelForCausalLM):
    """transformers' model from `directory`, failing on any missing or unexpected key."""
    model_type = json.loads((directory / "config.json").read_text())["model_type"]
    model, info = auto.from_pretrained(directory, output_loading_info=True,
                                       **attn_kwargs(model_type))
    problems = {k: v for k, v in info.items() if v}
    assert not problems, problems
    return model.eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_bit_identical_and_loads(case, tmp_path):
    original = make_hf_model(case, tmp_path / "hf")
    to_hf(from_hf(tmp_path / "hf"), tmp_path / "out")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    reloaded = load_strict(tmp_path / "out")
    ids, mask = batch()
    np.testing.assert_array_equal(hf_logits(reloaded, ids, mask), hf_logits(original, ids, mask))
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation == {k: v for k, v in (("bos_token_id", original.config.bos_token_id),
                                            ("eos_token_id", original.config.eos_token_id),
                                            ("pad_token_id", original.config.pad_token_id))
                          if v is not None}


def test_bf16_round_trip(tmp_path):
    make_hf_model("llama", tmp_path / "hf", dtype=torch.bfloat16)
    # stored as bf16 → written as bf16
    to_hf(from_hf(tmp_path / "hf", param_dtype="bfloat16"), tmp_path / "a")
    assert_same_tensors(tmp_path / "hf", tmp_path / "a")
    # fp32 master weights (the default) written back in bf16: bf16 → f32 → bf16 is exact
    to_hf(from_hf(tmp_path / "hf"), tmp_path / "b", dtype="bfloat16")
    assert_same_tensors(tmp_path / "hf", tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert load_strict(tmp_path / "b").model.embed_tokens.weight.dtype == torch.bfloat16


def test_sharded_export_with_index(tmp_path):
    original = make_hf_model("qwen3", tmp_path / "hf")
    to_hf(from_hf(tmp_path / "hf"), tmp_path / "out", max_shard_size="40KB")
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    ids, mask = batch()
    np.testing.assert_array_equal(hf_logits(load_strict(tmp_path / "out"), ids, mask),
                                  hf_logits(original, ids, mask))
    # and the sharded directory imports again (index path of the reader)
    to_hf(from_hf(tmp_path / "out"), tmp_path / "again")
    assert_same_tensors(tmp_path / "hf", tmp_path / "again")
    # Every exported file has the mode open() gives a new file here (the umask's), weights too.
    (tmp_path / "probe").write_text("")
    expected = stat.S_IMODE((tmp_path / "probe").stat().st_mode)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()} == {
        p.name: expected for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_weights_get_the_mode_of_the_umask(tmp_path, umask):
    from easyalign.hf.export import save_safetensors

    old = os.umask(umask)
    try:
        save_safetensors({"w": np.zeros((2, 3), np.float32)}, tmp_path / "model.safetensors")
        (tmp_path / "probe").write_text("")  # what open() gives under this umask
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "probe").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "probe"]


def test_scalar_head_export_loads_as_sequence_classification(tmp_path):
    original = make_hf_model("qwen2", tmp_path / "hf", sequence_classification=True)
    to_hf(from_hf(tmp_path / "hf"), tmp_path / "out")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    reloaded = load_strict(tmp_path / "out", transformers.AutoModelForSequenceClassification)
    assert type(reloaded).__name__ == "Qwen2ForSequenceClassification"
    ids, mask = batch()
    with torch.no_grad():
        for model in (reloaded, original):
            model.pooled = model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    np.testing.assert_array_equal(reloaded.pooled.numpy(), original.pooled.numpy())


@pytest.mark.parametrize("name, changes", [
    ("llama-3.1-8b", {}), ("llama-3.2-1b", {"pad_token_id": 0}), ("qwen2.5-0.5b", {}),
    ("mistral-7b", {}), ("tiny", {"qkv_bias": True, "o_bias": True, "mlp_bias": True}),
    ("tiny", {"family": "qwen3", "qk_norm": True, "head": "scalar", "eos_token_id": (1, 2)}),
    ("tiny", {"rope_scaling": RopeScaling(rope_type="linear", factor=2.0)}),
    ("phi-3-mini", {}), ("gemma-2-2b", {}), ("gemma-3-1b", {}), ("qwen3-30b-a3b", {}),
    ("gemma-3-1b", {"rope_scaling": RopeScaling(rope_type="linear", factor=8.0)}),
    ("tiny", {"family": "phi3", "partial_rotary_factor": 0.75, "rope_scaling": RopeScaling(
        rope_type="longrope", factor=32.0, original_max_position_embeddings=4096,
        short_factor=(1.0, 1.1) * 3, long_factor=(2.0, 9.5) * 3)}),
])
def test_model_config_round_trip(name, changes):
    config = preset(name, **changes)
    assert to_model_config(hf_config_dict(config, "float32")) == config
    # and through the JSON of an easyalign checkpoint (lists back to the tuples of RopeScaling)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_transformers4_config_spelling():
    legacy = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=None,
                  rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0},
                  torch_dtype="bfloat16")
    config = to_model_config(legacy)
    assert (config.rope_theta, config.rope_scaling, config.num_kv_heads, config.head_dim) == (
        500000.0, RopeScaling(rope_type="linear", factor=4.0), 4, 16)


def test_gemma_transformers4_config_spelling_and_default_pattern():
    """Gemma 3 configs of transformers 4 (rope_theta, rope_local_base_freq, rope_scaling, no
    layer_types: HF's rule, layer i global iff (i + 1) % sliding_window_pattern == 0)."""
    legacy = dict(model_type="gemma3_text", vocab_size=256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                  rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=6,
                  rope_scaling={"rope_type": "linear", "factor": 8.0})
    config = to_model_config(legacy)
    assert (config.rope_theta, config.rope_local_theta, config.rope_scaling) == (
        1e6, 1e4, RopeScaling(rope_type="linear", factor=8.0))
    assert config.layer_is_local() == (True,) * 5 + (False, True)
    gemma2 = to_model_config({**legacy, "model_type": "gemma2", "rope_theta": 1e4,
                              "rope_scaling": None})
    assert gemma2.layer_is_local() == (True, False) * 3 + (True,)
    assert (gemma2.attn_logit_softcapping, gemma2.final_logit_softcapping) == (50.0, 30.0)


def test_config_without_hf_equivalent_is_refused():
    with pytest.raises(HFConfigError, match="qkv_bias=True, o_bias=False"):
        hf_config_dict(preset("tiny", qkv_bias=True), "float32")
    with pytest.raises(HFConfigError, match="sliding_window=8"):
        hf_config_dict(preset("tiny", family="qwen2", qkv_bias=True, sliding_window=8), "float32")
    with pytest.raises(HFConfigError, match="attn_logit_softcapping=50.0"):
        hf_config_dict(preset("tiny", attn_logit_softcapping=50.0), "float32")
    with pytest.raises(HFConfigError, match="sandwich_norms=False"):
        hf_config_dict(preset("gemma-2-2b", sandwich_norms=False), "float32")


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5MiB") == 3 * 2**19
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size("lots")
