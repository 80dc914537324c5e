"""Orbax model checkpoints: HF → checkpoint → HF bit-identical; tokenizer files travel along."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from easyalign import (convert_checkpoint_to_hf, convert_hf_to_checkpoint, from_hf,
                       load_checkpoint_model, to_hf)
from easyalign.hf import read_checkpoint_config
from hf_fixtures import assert_same_tensors, make_hf_model


def tiny_tokenizer():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>")


def test_convert_round_trip_with_tokenizer(tmp_path):
    make_hf_model("qwen3", tmp_path / "hf")
    tiny_tokenizer().save_pretrained(tmp_path / "hf")
    ckpt = convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    assert (ckpt / "params").is_dir() and (ckpt / "model_config.json").is_file()
    assert (ckpt / "tokenizer" / "tokenizer.json").is_file()
    assert read_checkpoint_config(ckpt) == from_hf(tmp_path / "hf").config

    convert_checkpoint_to_hf(ckpt, tmp_path / "out", max_shard_size="100KB")
    assert_same_tensors(tmp_path / "hf", tmp_path / "out")
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("hello world")["input_ids"] == [4, 5]
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_restore_casts_to_the_requested_param_dtype(tmp_path):
    make_hf_model("llama", tmp_path / "hf")
    ckpt = convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    reference = from_hf(tmp_path / "hf")
    restored = load_checkpoint_model(ckpt, param_dtype="bfloat16", dtype="float32")
    assert restored.config.dtype == "float32"
    kernel = restored.layers.mlp.down_proj.kernel[...]
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(kernel), np.asarray(reference.layers.mlp.down_proj.kernel[...].astype(
            jnp.bfloat16)))


def test_export_writes_the_tokenizer_and_its_pad_id(tmp_path):
    make_hf_model("llama", tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    assert model.config.pad_token_id is None
    to_hf(model, tmp_path / "out", tokenizer=tiny_tokenizer())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.config.pad_token_id == 0
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out").pad_token == "<pad>"


def test_missing_checkpoint_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_config.json"):
        load_checkpoint_model(tmp_path)
    # Reported: a phase workdir and a missing path got that same line, with no hint.
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory"):
        load_checkpoint_model(tmp_path / "nowhere")
    make_hf_model("llama", tmp_path / "hf")
    convert_hf_to_checkpoint(tmp_path / "hf", tmp_path / "runs" / "sft" / "model")
    with pytest.raises(FileNotFoundError, match=(
            f"sft: a phase workdir: its final model is {tmp_path / 'runs' / 'sft' / 'model'}")):
        load_checkpoint_model(tmp_path / "runs" / "sft")


def test_a_phase_workdir_loads_as_its_final_model(tmp_path):
    """Every by-path loader takes a phase workdir (its `model/`) as `resolve_model_dir` says:
    the trial's eval variant `sft=<workdir>` failed with "unsupported model_type None" — the
    run's own config.json read as an HF config."""
    import json

    from easyalign.hf.autoload import load_model, load_tokenizer, stored_dtype

    make_hf_model("llama", tmp_path / "hf")
    tiny_tokenizer().save_pretrained(tmp_path / "hf")
    workdir = tmp_path / "runs" / "sft"
    convert_hf_to_checkpoint(tmp_path / "hf", workdir / "model")
    (workdir / "config.json").write_text(json.dumps({"phase": "sft", "workdir": str(workdir)}))
    model = load_model(workdir)
    assert model.config == load_model(workdir / "model").config
    assert stored_dtype(workdir) == read_checkpoint_config(workdir / "model").param_dtype
    assert load_tokenizer(workdir)("hello world")["input_ids"] == [4, 5]
