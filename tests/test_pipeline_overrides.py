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
