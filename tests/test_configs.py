"""Every config file loads (with each of its presets), passes the checks its phase runs before
any work, and its model builds, at no memory cost."""

import importlib
import re
from pathlib import Path

import jax
import pytest

from easyalign import config_check, stages
from easyalign.hf.models import model_numerics
from easyalign.model import ModelConfig, abstract_model, preset

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# The presets each file offers (checked both ways: these load, a made-up one is refused).
PRESETS = {
    "base": [], "sft": ["tiny", "real"], "reward": ["tiny", "real"], "dpo": ["tiny", "real"],
    "ppo": ["tiny", "real"], "grpo": ["tiny", "real"], "teacher_data": ["tiny", "real"],
    "distill": ["tiny", "tiny_offline", "real"], "eval": ["tiny", "real", "shared"],
    "latency": ["tiny", "real"], "generate": ["tiny"], "pipeline": ["tiny", "real"],
    "ablations": ["tiny"],
    "doctor": ["sft", "dpo:tiny"],
}


def config_files() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


def test_every_config_file_is_listed_here():
    assert config_files() == sorted(PRESETS)


def load(name: str, arg: str):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config(arg) if arg or name != "base" else module.get_config()


# Every file with each preset, and with none (doctor needs one: its argument is the phase).
LOADS = [(n, a) for n in sorted(PRESETS) for a in [""] + PRESETS[n]
         if not (n == "doctor" and a == "")]


def phase_checks(config) -> None:
    """What a run of `config` checks before any work, but files and devices (this machine has
    neither the models nor the accelerators of the `real` presets): `config_check.validate`,
    and the `check_config` of the phase's module where it has one."""
    config_check.validate(config, paths=False)
    for command, (module, _, _) in stages.STAGES.items():
        if config_check.command_phase(command) == config.phase:
            check = getattr(importlib.import_module(module), "check_config", None)
            if check is not None:
                check(config)


@pytest.mark.parametrize("name,arg", LOADS)
def test_config_passes_its_phases_checks(name, arg):
    phase_checks(load(name, arg))


@pytest.mark.parametrize("name,arg", LOADS)
def test_config_loads_and_its_model_builds(name, arg):
    config = load(name, arg)
    assert config.workdir and config.train.steps > 0
    # The preset it was built with (doctor's argument is PHASE[:PRESET]), as hints name it.
    assert config.preset == (arg.partition(":")[2] if name == "doctor" else arg)
    m = config.model
    model_config = preset(m.preset, vocab_size=m.vocab_size or 1024, **model_numerics(m),
                          **ModelConfig.parse_overrides(m.overrides))
    _, state, shardings = abstract_model(model_config)
    assert sum(x.size for x in jax.tree.leaves(state)) == model_config.param_count()
    assert isinstance(ModelConfig.from_dict(model_config.to_dict()), ModelConfig)


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if n not in ("base", "doctor")))
def test_unknown_preset_is_refused(name):
    file = "pipeline" if name == "ablations" else name  # ablations takes the pipeline's presets
    presets = " | ".join(PRESETS[file])
    with pytest.raises(ValueError, match=re.escape(
            f"configs/{file}.py: unknown preset 'no-such-preset' ({presets})") + "$"):
        load(name, "no-such-preset")
    with pytest.raises(ValueError, match=re.escape(
            f"configs/{file}.py: unknown preset 'tinyy' ({presets}); did you mean 'tiny'?")):
        load(name, "tinyy")


def test_expert_fields_on_a_dense_model_are_an_error():
    """Every MoE-only field (`MOE_FIELDS`) set on a model without experts is one line naming
    it — from `ModelConfig` itself and, for a scratch model, at config check (nothing written)."""
    from easyalign.cli import load_config
    from easyalign.model.config import MOE_FIELDS

    assert {"moe_capacity_factor", "router_aux_loss_coef", "num_experts_per_tok"} <= set(
        MOE_FIELDS)
    for field, value in [("moe_capacity_factor", 1.25), ("router_aux_loss_coef", 0.01),
                         ("num_experts_per_tok", 2)]:
        with pytest.raises(ValueError, match=re.escape(
                f"ModelConfig: {field}={value!r}: only a mixture of experts has this field, and "
                "the model has no experts (num_experts=0)")):
            preset("world-teacher", vocab_size=64, **{field: value})
    assert preset("qwen3-30b-a3b", moe_capacity_factor=1.25).moe_capacity_factor == 1.25
    config = load_config(["--config=configs/sft.py:tiny",
                          "--config.model.overrides=moe_capacity_factor=1.25"])
    with pytest.raises(config_check.ConfigError, match=re.escape(
            "model.overrides='moe_capacity_factor=1.25': ModelConfig: moe_capacity_factor=1.25: "
            "only a mixture of experts has this field")):
        config_check.validate(config, paths=False)


def test_model_overrides_are_checked_field_by_field():
    """`model.overrides` values: Python literals typed as their ModelConfig field (one line naming
    the field and the type otherwise), an unknown field with a suggestion."""
    from easyalign.model.config import ModelConfig

    assert ModelConfig.parse_overrides("num_layers=3, rope_theta=1e4, sliding_window=None") == {
        "num_layers": 3, "rope_theta": 10000.0, "sliding_window": None}
    for text, message in [
            ("num_layers=abc", "num_layers='abc' must be an integer"),
            ("num_experts=4.5", "num_experts=4.5 must be an integer"),
            ("moe_capacity_factor=abc", "moe_capacity_factor='abc' must be a number"),
            ("tie_word_embeddings=1", "tie_word_embeddings=1 must be True or False"),
            ("moe_capacity_factr=1.25", "unknown field 'moe_capacity_factr'; did you mean "
                                        "'moe_capacity_factor'?")]:
        with pytest.raises(ValueError, match=re.escape(f"model overrides: {message}")):
            ModelConfig.parse_overrides(text)
