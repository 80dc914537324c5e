"""Bad HF directories: each fails with one clear error naming the file or tensor."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from easyalign import from_hf
from easyalign.hf import HFCheckpointError, HFConfigError
from hf_fixtures import make_hf_model


@pytest.fixture
def hf_dir(tmp_path):
    make_hf_model("llama", tmp_path)
    return tmp_path


def rewrite_weights(directory, change):
    file = directory / "model.safetensors"
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})
    return file


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_directory_without_config(tmp_path):
    with pytest.raises(HFCheckpointError, match=f"{re.escape(str(tmp_path))}: no config.json"):
        from_hf(tmp_path)


def test_unsupported_model_type(hf_dir):
    edit_config(hf_dir, model_type="gpt2")
    with pytest.raises(HFConfigError, match=r"config.json: unsupported model_type 'gpt2'; "
                                            r"supported: \['gemma2', 'gemma3_text', 'llama', "
                                            r"'mistral', 'phi3', 'qwen2', 'qwen3', 'qwen3_moe'\]"):
        from_hf(hf_dir)


def test_missing_tensor(hf_dir):
    rewrite_weights(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(HFCheckpointError) as error:
        from_hf(hf_dir)
    message = str(error.value)
    assert "model.safetensors: does not match its llama config" in message
    assert "missing tensor model.layers.1.mlp.up_proj.weight (expected shape [128, 64])" in message
    assert "expected 35 tensors, found 34" in message


def test_misshapen_tensor(hf_dir):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
    rewrite_weights(hf_dir, shrink)
    with pytest.raises(HFCheckpointError, match=re.escape(
            "model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape "
            "[16, 64], expected [32, 64]")):
        from_hf(hf_dir)


def test_unexpected_tensor(hf_dir):
    def add(tensors):
        tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)
    rewrite_weights(hf_dir, add)
    with pytest.raises(HFCheckpointError) as error:
        from_hf(hf_dir)
    assert "model.safetensors: unexpected tensor model.layers.2.mlp.up_proj.weight" in str(
        error.value)
    assert "inv_freq" not in str(error.value)  # RoPE caches are ignorable


def test_override_that_contradicts_the_weights(hf_dir):
    with pytest.raises(HFCheckpointError, match="missing tensor score.weight"):
        from_hf(hf_dir, head="scalar")


def test_only_pytorch_pickle(tmp_path):
    model = make_hf_model("llama", tmp_path / "src")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes((tmp_path / "src" / "config.json").read_bytes())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(HFCheckpointError, match=r"no model.safetensors or model.safetensors.index"
                                                r".json; found \['pytorch_model.bin'\], but "
                                                r"PyTorch pickles are never loaded"):
        from_hf(tmp_path / "bin")


def test_index_naming_a_missing_shard(hf_dir):
    (hf_dir / "model.safetensors").rename(hf_dir / "model-00001-of-00002.safetensors")
    names = load_file(hf_dir / "model-00001-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(HFCheckpointError, match="index.json: lists model-00002-of-00002."
                                                "safetensors, which does not exist"):
        from_hf(hf_dir)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8},
     "sliding-window attention .* is unsupported for qwen2"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "unsupported rope_type 'yarn'"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}},
     "unsupported rope_type 'dynamic'; supported: 'default', 'linear', 'llama3', 'longrope'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'; only 'silu'"),
    ({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a", "1": "b"}},
     "with 2 labels; only one label"),
])
def test_unsupported_configs(hf_dir, changes, message):
    edit_config(hf_dir, **changes)
    with pytest.raises(HFConfigError, match=message):
        from_hf(hf_dir)


def test_a_directory_of_the_other_kind_than_model_init_names_the_init_that_loads_it(
        hf_dir, tmp_path):
    """An HF export given to `model.init=checkpoint`, and an easyalign checkpoint given to
    `model.init=hf`, are named as what they are with the init that loads them — not reported
    as an unfinished run or a directory without weights."""
    from easyalign.config_paths import check_model_source
    from easyalign.config_keys import ConfigError
    from easyalign.hf import save_checkpoint_model
    from easyalign.model import create_model, preset

    with pytest.raises(ConfigError, match=re.escape(
            f"model.path={hf_dir} is an HF model directory (config.json + *.safetensors), which "
            "model.init=checkpoint does not load: set model.init=hf")):
        check_model_source({}, "model.path", str(hf_dir), "checkpoint")
    workdir = tmp_path / "workdir"
    save_checkpoint_model(create_model(preset("world-student", vocab_size=64)), workdir / "model")
    (workdir / "config.json").write_text("{}")  # the run's config, as a phase workdir has
    with pytest.raises(ConfigError, match=re.escape(
            f"model.path={workdir} is an easyalign checkpoint (model_config.json, or a phase "
            "workdir's model/), which model.init=hf does not load: set model.init=checkpoint")):
        check_model_source({}, "model.path", str(workdir), "hf")
    check_model_source({}, "model.path", str(workdir), "checkpoint")  # the right init: fine
    # A real preset (model.init=gguf) pointed at a checkpoint directory.
    with pytest.raises(ConfigError, match=re.escape(
            f"model.path={workdir} is an easyalign checkpoint (model_config.json, or a phase "
            "workdir's model/), which model.init=gguf does not load: set model.init=checkpoint")):
        check_model_source({}, "model.path", str(workdir), "gguf")


def test_a_max_length_beyond_the_models_context_is_one_line(hf_dir):
    """`data.max_length` longer than the model's `max_position_embeddings` stops the run before
    any weight is read (a stray zero once asked XLA for 734 TB), naming both numbers."""
    from configs import sft
    from easyalign.config_keys import ConfigError
    from easyalign.hf import read_hf_config
    from easyalign.hf.models import check_context

    model = read_hf_config(hf_dir)
    positions = json.loads((hf_dir / "config.json").read_text())["max_position_embeddings"]
    assert model.max_position_embeddings == positions
    config = sft.get_config("tiny")
    config.model.init, config.model.path = "hf", str(hf_dir)
    config.data.max_length = positions
    check_context(config, model)  # exactly the context: fine
    config.data.max_length = positions + 1
    with pytest.raises(ConfigError, match=re.escape(
            f"data.max_length={positions + 1} is longer than the model's context ({positions} "
            f"positions, max_position_embeddings of {hf_dir})")):
        check_context(config, model)
