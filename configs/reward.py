"""Reward model: scalar head on the SFT trunk, Bradley–Terry loss on preference pairs.

`model.path="@sft"` names the SFT stage of the same pipeline directory (`runs/<name>/sft/model`).
Presets: `tiny` (the built-in world, about a minute on a 2-core CPU).
"""

from pathlib import Path

from configs import base


def get_config(preset: str = ""):
    c = base.get_config()
    c.phase = "reward"
    c.workdir = "runs/demo/reward"
    c.model.init = "checkpoint"
    c.model.path = "@sft"                # the SFT model of this pipeline (runs/<name>/sft/model)
    c.optim.lr = 1e-4
    c.train.steps = 300
    if preset == "tiny":
        c.train.steps = 150
        c.train.batch_size = 32
        c.optim.lr = 1e-3
        c.data.max_length = 48
        c.train.eval_every = 50
        c.train.log_every = 25
    return c
