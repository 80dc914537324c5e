"""Students derived from a teacher's layers, and the regraft that no longer leaves blocks random.

Through `models.init_model` as a phase calls it (`model.init=derive`, `model.layers`,
`model.intermediate_size`), from each teacher source: an easyalign checkpoint, an HF directory
and a GGUF file. Parameters are compared exactly; a student keeping every layer is the teacher.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from configs import base
from easyalign import sharding
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.hf import from_hf, save_checkpoint_model
from easyalign.model import create_model, preset
from easyalign.model.student import parse_layers
from gguf_fixtures import write_gguf
from hf_fixtures import make_hf_model


def run_for(tmp_path, **model):
    config = base.get_config()
    config.workdir = str(tmp_path / "run")
    for key, value in model.items():
        config.model[key] = value
    config.model.dtype = "float32"
    return runsetup.Run(config=config, mesh=sharding.single_device_mesh(), workdir=tmp_path,
                      tokenizer=None)


def params(model) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {".".join(map(str, k)): np.asarray(v) for k, v in flat.items()}


def logits(model, ids):
    with jax.default_matmul_precision("highest"):
        return np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """An easyalign checkpoint of a random 6-layer, untied Llama teacher."""
    directory = tmp_path_factory.mktemp("teacher")
    config = preset("world-teacher", vocab_size=96, dtype="float32").replace(
        num_layers=6, tie_word_embeddings=False)
    return save_checkpoint_model(create_model(config, seed=3), directory / "model")


IDS = np.arange(1, 25).reshape(2, 12) % 96


@pytest.mark.parametrize("spec, keep", [
    ("", (0, 1, 2, 3, 4, 5)), ("every_other", (0, 2, 4)), ("first:2", (0, 1)),
    ("spread:3", (0, 3, 5)), ("spread:1", (0,)), ("1, 3,5", (1, 3, 5))])
def test_layer_selections(spec, keep):
    assert parse_layers(spec, 6) == keep


@pytest.mark.parametrize("spec, message", [
    ("spread:7", r"spread:k needs 1 <= k <= 6"), ("first:0", r"first:k needs"),
    ("3,2", r"strictly increasing"), ("0,6", r"below 6"), ("half", r"expected every_other")])
def test_bad_layer_selections_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=rf"model\.layers='{spec}' \(teacher has 6 layers\): "
                                         rf".*{message}"):
        parse_layers(spec, 6)


def test_student_layers_are_teacher_layers(teacher_dir, tmp_path):
    teacher = models.init_model(run_for(tmp_path, init="checkpoint", path=str(teacher_dir)))
    student = models.init_model(run_for(tmp_path, init="derive", path=str(teacher_dir),
                                        layers="spread:3"))
    assert student.config == teacher.config.replace(num_layers=3)
    ours, theirs = params(student), params(teacher)
    assert sorted(ours) == sorted(theirs)
    for path, value in ours.items():
        if path.startswith("layers."):
            for i, j in enumerate((0, 3, 5)):
                assert np.array_equal(value[i], theirs[path][j]), (path, i)
        else:  # embeddings, final norm, LM head
            assert np.array_equal(value, theirs[path]), path


def test_student_keeping_every_layer_is_the_teacher(teacher_dir, tmp_path):
    teacher = models.init_model(run_for(tmp_path, init="checkpoint", path=str(teacher_dir)))
    student = models.init_model(run_for(tmp_path, init="derive", path=str(teacher_dir),
                                        intermediate_size=teacher.config.intermediate_size))
    np.testing.assert_array_equal(logits(student, IDS), logits(teacher, IDS))


def test_narrower_mlp_keeps_the_channels_of_largest_norm(teacher_dir, tmp_path):
    teacher = params(models.init_model(run_for(tmp_path, init="checkpoint",
                                               path=str(teacher_dir))))
    student = models.init_model(run_for(tmp_path, init="derive", path=str(teacher_dir),
                                        layers="4,5", intermediate_size=100))
    assert (student.config.num_layers, student.config.intermediate_size) == (2, 100)
    ours = params(student)
    for i, j in enumerate((4, 5)):
        norm = lambda p: np.linalg.norm(teacher[f"layers.mlp.{p}.kernel"][j], axis=0)  # noqa
        importance = norm("gate_proj") * norm("up_proj") * norm("down_proj")
        channels = np.sort(np.argsort(-importance, kind="stable")[:100])
        for name in ("gate_proj", "up_proj", "down_proj"):
            kernel = f"layers.mlp.{name}.kernel"
            assert np.array_equal(ours[kernel][i], teacher[kernel][j][:, channels]), (name, i)
        assert np.array_equal(ours["layers.attn.q_proj.kernel"][i],
                              teacher["layers.attn.q_proj.kernel"][j])


def test_student_from_hf_and_gguf_teachers(tmp_path):
    hf_model = make_hf_model("llama", tmp_path / "hf", attention_bias=False, mlp_bias=False,
                             num_hidden_layers=4)
    write_gguf(hf_model, tmp_path / "teacher.gguf", "F32")
    teacher = params(from_hf(tmp_path / "hf", dtype="float32"))
    for path in (tmp_path / "hf", tmp_path / "teacher.gguf"):
        run = run_for(tmp_path, init="derive", path=str(path), layers="every_other")
        student = params(models.init_model(run))
        assert models.model_config(run).num_layers == 2
        for name, value in student.items():
            expected = teacher[name][np.array([0, 2])] if name.startswith("layers.") else \
                teacher[name]
            # The GGUF path dequantises F32 exactly; q/k rows come back un-permuted.
            assert np.array_equal(value, expected), (path.name, name)


def test_num_layers_override_names_what_it_cannot_copy(tmp_path):
    make_hf_model("llama", tmp_path / "hf", attention_bias=False, mlp_bias=False,
                  num_hidden_layers=4)
    run = run_for(tmp_path, init="hf", path=str(tmp_path / "hf"), overrides="num_layers=2")
    with pytest.raises(ValueError, match=(
            r"model\.path=.*hf: cannot initialise 9 parameter\(s\) of the 2-layer llama model "
            r"from the 4-layer source: layers\.attn\.k_proj\.kernel \[2, 64, 2, 16\] \(source: "
            r"\[4, 64, 2, 16\]\);.*model\.init=derive with model\.layers")):
        models.init_model(run)


def test_student_keys_need_init_derive(teacher_dir, tmp_path):
    run = run_for(tmp_path, init="checkpoint", path=str(teacher_dir), layers="first:2")
    with pytest.raises(ValueError, match=r"model\.layers='first:2'.*set model\.init=derive"):
        models.model_config(run)


def test_scalar_head_grows_on_an_lm_trunk(teacher_dir, tmp_path):
    """The reward/value case: the trunk copied, only the new `score` head initialised."""
    run = run_for(tmp_path, init="checkpoint", path=str(teacher_dir))
    lm = params(models.init_model(run))
    reward = params(models.init_model(run, head="scalar"))
    assert set(reward) == set(lm) - {"lm_head.kernel"} | {"score.kernel"}
    for path, value in reward.items():
        if path != "score.kernel":
            assert np.array_equal(value, lm[path]), path
    assert reward["score.kernel"].shape == (128, 1) and np.abs(reward["score.kernel"]).max() > 0
