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
    "distill": ["tiny", "tiny_offline", "tiny_reward_weighted", "real", "real_offline",
                "real_reward_weighted"], "eval": ["tiny", "real", "shared"],
    "latency": ["tiny", "real"], "generate": ["tiny"], "pipeline": ["tiny", "real"],
    "ablations": ["tiny", "real"],
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


def test_a_key_typo_in_a_config_file_or_in_python_stops_the_run(tmp_path):
    """A key the phase does not have (a typo in the user's own config file, or set in Python
    before `easyalign.run`) is one line naming it and the key meant — never a silently added key
    that the manifest records while the default runs — and nothing is written."""
    import easyalign
    from easyalign.cli import load_config

    file = tmp_path / "mysft.py"
    file.write_text("from configs import sft\n\n\ndef get_config():\n"
                    "    c = sft.get_config('tiny')\n    c.train.stpes = 1\n    return c\n")
    config = load_config([f"--config={file}", f"--config.workdir={tmp_path / 'run'}"])
    with pytest.raises(config_check.ConfigError, match=re.escape(
            "config key train.stpes does not exist (did you mean train.steps")):
        config_check.validate(config, "sft")

    config = load("sft", "tiny")
    config.workdir = str(tmp_path / "api")
    config.optim.learning_rate = 1e-4  # HF's name for optim.lr
    with pytest.raises(config_check.ConfigError, match=re.escape(
            "config key optim.learning_rate does not exist (did you mean optim.lr?)")):
        easyalign.run("sft", config)
    assert not (tmp_path / "api").exists()
    # A doctor config is its phase's keys plus the doctor block; named extra suites are names.
    doctor = load("doctor", "grpo:real")
    config_check.check_keys(doctor, "doctor")
    doctor.doctor.devicse = 2
    with pytest.raises(config_check.ConfigError, match="doctor.devicse does not exist"):
        config_check.check_keys(doctor, "doctor")
    eval_config = load("eval", "real")
    eval_config.eval.extra_suites = {**eval_config.eval.extra_suites,
                                     "mine": {"path": "/data/mine.jsonl", "column": "prompt"}}
    config_check.check_keys(eval_config)


def test_learning_rate_warnings_on_a_pretrained_model_and_a_warm_up_longer_than_the_run():
    """A tiny preset's from-scratch rate pointed at a pretrained model (model.init hf | gguf)
    warns (full fine-tuning above 1e-4, LoRA above 1e-3); the real presets do not; a warm-up
    longer than train.steps warns that the whole run is warm-up."""
    config = load("sft", "tiny")
    config.model.init, config.model.path = "hf", "/some/model"
    config.train.steps = 2
    warnings = config_check.validate(config, paths=False)
    assert any(w.startswith("optim.lr=0.003 with model.init=hf (a pretrained model): above the "
                            "usual fine-tuning range (≤ 0.0001") for w in warnings), warnings
    assert "optim.warmup_steps=20 > train.steps=2: the whole run is warm-up" in " ".join(warnings)
    config.optim.lr, config.model.lora.rank = 5e-4, 8  # a LoRA rate
    assert not any("model.init=hf" in w for w in config_check.validate(config, paths=False))
    config.optim.lr = 2e-3
    assert any("above the usual LoRA range (≤ 0.001" in w
               for w in config_check.validate(config, paths=False))
    for name in ("sft", "reward", "dpo", "ppo", "grpo", "distill"):
        assert not config_check.validate(load(name, "real"), paths=False), name


@pytest.mark.parametrize("phase, key, value, message", [
    # Reported: both trained to the end (a clip band [2, 0]; a KL term that pays for leaving).
    ("grpo", "grpo.epsilon", -1.0, "grpo.epsilon=-1.0: must be in (0, 1) (the ratio's clip band"),
    ("grpo", "grpo.beta", -0.1, "grpo.beta=-0.1: must be ≥ 0 (the KL weight"),
    # Reported: failed after loading the model, naming no key.
    ("grpo", "grpo.temperature", 0.0, "grpo.temperature=0.0: must be in [0.0001, 10000.0] "
     "(GRPO samples"),
    ("ppo", "ppo.gamma", 1.5, "ppo.gamma=1.5: must be in [0, 1] (the discount)"),
    ("ppo", "ppo.clip_eps", 0.0, "ppo.clip_eps=0.0: must be in (0, 1)"),
    ("dpo", "dpo.beta", 0.0, "dpo.beta=0.0: must be > 0"),
    ("dpo", "dpo.label_smoothing", 0.5, "dpo.label_smoothing=0.5: must be in [0, 0.5)"),
    ("distill", "distill.lmbda", 2.0, "distill.lmbda=2.0: must be in [0, 1]"),
    ("distill", "distill.temperature", 0.0, "distill.temperature=0.0: must be in "
     "[0.0001, 10000.0] (the "
     "divergence's temperature"),
    ("generate", "generate.temperature", 0.0, "generate.temperature=0.0: must be in "
     "[0.0001, 10000.0] for "
     "generate.sampling="),
    ("generate", "generate.top_p", 1.5, "generate.top_p=1.5: must be in (0, 1] for "
     "generate.sampling='top_p'"),
])
def test_an_algorithm_setting_out_of_its_range_is_one_line_naming_the_key(phase, key, value,
                                                                         message):
    """Every algorithm setting with a meaning only in a range (`config_check.RANGES`, and the
    fields a block's sampling method reads) is checked before any work, naming the key."""
    config = load(phase, "tiny")
    block, name = key.split(".")
    if key in ("generate.top_p", "generate.temperature"):
        config.generate.sampling = key.split(".")[1] if key.endswith("top_p") else "temperature"
    config[block][name] = value
    with pytest.raises(config_check.ConfigError, match=re.escape(message)):
        config_check.validate(config, paths=False)
    if key == "generate.temperature":  # greedy reads no temperature
        config.generate.sampling = "greedy"
        config_check.validate(config, paths=False)
