"""SFT: supervised fine-tuning on prompt/response pairs (the built-in world by default).

Presets: `tiny` (the built-in world's teacher shape, about a minute on a 2-core CPU).
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config()
    c.phase = "sft"
    c.workdir = "runs/demo/sft"
    if preset == "tiny":
        c.train.steps = 400
        c.train.batch_size = 32
        c.optim.lr = 3e-3
        c.optim.warmup_steps = 20
        c.data.max_length = 48
        c.train.eval_every = 100
        c.train.log_every = 25
    elif preset:
        raise ValueError(f"configs/sft.py: unknown preset {preset!r} (tiny)")
    return c
