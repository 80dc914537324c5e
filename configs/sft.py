"""SFT: supervised fine-tuning on prompt/response pairs (the built-in world by default)."""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/sft"
    if preset == "tiny":
        c.train.steps = 50
    return c
