"""`pipeline.overrides`: `stage:key=value` for one stage, `*:key=value` for every stage that has
the key (the stage's own entry wins), errors naming an unknown stage or key. No stage runs."""
import pytest

from configs import pipeline as pipeline_config
from easyalign import pipeline


def stage_configs(*overrides):
    pipe = pipeline_config.get_config("tiny")
    parsed = pipeline.parse_overrides(overrides)
    stages = [pipeline.parse_stage(s, pipe.pipeline.preset) for s in pipe.pipeline.stages]
    return {name: pipeline.stage_config(pipe, name, command, preset, parsed)
            for name, command, preset in stages}


def test_star_sets_the_key_in_every_stage_that_has_it():
    configs = stage_configs("*:model.dtype='bfloat16'", "*:dpo.beta=0.25", "sft:model.dtype=float16")
    assert configs["sft"].model.dtype == "float16"  # the stage's own entry wins
    assert {configs[s].model.dtype for s in ("reward", "dpo", "ppo", "distill")} == {"bfloat16"}
    assert configs["dpo"].dpo.beta == 0.25 and "dpo" not in configs["sft"]


def test_unknown_stage_or_key_is_named(tmp_path):
    config = pipeline_config.get_config("tiny")
    config.workdir = str(tmp_path)
    config.pipeline.overrides = ("*:dpo.betta=0.1",)
    with pytest.raises(ValueError, match=r"no stage has the config key 'dpo.betta'"):
        pipeline.run_stages(config)
    config.pipeline.overrides = ("sft:train.stepz=3",)
    with pytest.raises(ValueError, match=r"stage sft has no config key 'train.stepz'; did you "
                                         r"mean train.steps"):
        pipeline.run_stages(config)
    config.pipeline.overrides = ("sftt:train.steps=3",)
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['sftt'\]"):
        pipeline.run_stages(config)


@pytest.mark.parametrize("entries, stage, key, takes, got", [
    # Two entries without a comma: Python joins the strings into one entry.
    (("*:train.steps=2" "*:train.batch_size=4",), "base", "train.steps", "an int",
     "'2*:train.batch_size=4' (a str)"),
    (("sft:train.steps=1.5",), "sft", "train.steps", "an int", "1.5 (a float)"),
    (("*:optim.lr=fast",), "base", "optim.lr", "a float", "'fast' (a str)"),
    (("dpo:train.progress_bar='yes'",), "dpo", "train.progress_bar", "a bool",
     "'yes' (a str)"),
    (("*:data.world=3",), "base", "data.world", "a block of keys", "3 (an int)"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_entry_and_key(entries, stage, key, takes,
                                                                     got):
    """Every override value ml_collections refuses (any key, any type) is a ValueError (the
    CLI's one line) quoting the entry and naming the key and the type it takes, not
    ml_collections' TypeError (the CLI's "internal error")."""
    with pytest.raises(ValueError) as excinfo:
        stage_configs(*entries)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"pipeline.overrides entry {entries[0]!r} (stage {stage}): "
                              f"{key} takes {takes}, got {got}")
    assert message.endswith("a missing comma between two entries?") == ("*:train" in got)


def test_an_entry_that_is_not_a_string_is_named():
    with pytest.raises(ValueError, match=r"pipeline.overrides entry 3: expected a string"):
        stage_configs(3)


@pytest.mark.parametrize("preset", ["tiny", "real"])
def test_ablate_keeps_its_reward_weighted_student_under_a_users_overrides(preset):
    """The reward-weighted student is what its stage spec says (`distill:tiny_reward_weighted`),
    not an entry of `pipeline.overrides`, which the user's own `--config.pipeline.overrides`
    replaced: the ablation then compared two unweighted students without a word. The real
    preset's ablation (reported: `'eval' is not in list`) compares real students alike."""
    from configs import ablations
    from easyalign import pipeline

    config = ablations.get_config(preset)
    config.pipeline.overrides = ("*:train.steps=10", "*:train.keep_checkpoints=1")
    overrides = pipeline.parse_overrides(config.pipeline.overrides)
    specs = [pipeline.parse_stage(spec, config.pipeline.preset) for spec in config.pipeline.stages]
    built = {name: pipeline.stage_config(config, name, command, preset, overrides)
             for name, command, preset in specs if command == "distill"}
    assert built["student_reward_weighted"].distill.reward_model == "@reward"
    assert built["distill"].distill.reward_model == ""
    assert built["student_reward_weighted"].train.steps == built["distill"].train.steps == 10
    weighted, plain = built["student_reward_weighted"].to_dict(), built["distill"].to_dict()
    weighted["distill"].pop("reward_model"), plain["distill"].pop("reward_model")
    for key in ("workdir", "preset"):
        weighted.pop(key), plain.pop(key)
    assert weighted == plain  # the reward model is the only setting that differs
    offline = built["student_offline"]
    assert (offline.distill.mode, built["distill"].distill.mode) == ("offline", "on_policy")
    assert offline.model.to_dict() == built["distill"].model.to_dict()  # the same student
