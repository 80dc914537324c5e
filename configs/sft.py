"""SFT: supervised fine-tuning on prompt/response pairs (the built-in world by default).

Presets: `tiny` (the built-in world's teacher shape, about a minute on a 2-core CPU); `real`:
SmolLM2-135M-Instruct (its installed GGUF) on Alpaca (instruction + input → prompt, output →
response; a tenth held out), packed rows of 512 tokens, about one epoch.
"""

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
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
    elif preset == "real":
        base.real(c, base.ALPACA, max_length=512)
        c.model.init, c.model.path = "gguf", base.REAL_MODEL
        c.data.columns.prompt, c.data.columns.response = "instruction+input", "output"
        c.data.pack = True               # ~2.8 Alpaca examples per 512-token row
        c.train.steps = 50               # 50 × 32 packed rows ≈ one epoch of the 4,500 examples
        c.train.batch_size = 32
        c.train.eval_every = 25
        c.train.checkpoint_every = 50
        c.optim.lr = 1e-5                # an instruct model: a gentle step keeps what it knows
        c.optim.warmup_steps = 5
    elif preset:
        raise base.unknown_preset("configs/sft.py", preset, ("tiny", "real"))
    return c
