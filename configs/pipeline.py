"""The whole pipeline in one run directory: base → SFT → reward → DPO, PPO → teacher data →
distillation → evaluation → latency (`easyalign pipeline`, module `easyalign/pipeline.py`).

    easyalign pipeline --config=configs/pipeline.py:tiny          # the README's main command
    easyalign pipeline --config=configs/pipeline.py:tiny \
        --config.pipeline.overrides="('sft:train.steps=600', 'dpo:dpo.beta=0.2')"

Presets: `tiny` — the built-in world on a laptop-class CPU in a few minutes (every stage's own
`tiny` preset); `real` — SmolLM2-135M-Instruct from its GGUF (`scripts/setup_env.sh real`) on the
public data of ../shared/data, every stage's `real` preset (`configs/base.real`): SFT on Alpaca,
reward model, DPO, PPO and GRPO on HH-RLHF harmless, teacher data and on-policy distillation
into a student of 12 of the teacher's 30 layers, eval on AdvBench, held-out Alpaca and HH
prompts and TruthfulQA MC, latency. On one GPU:

    easyalign pipeline --config=configs/pipeline.py:real \
        --config.pipeline.overrides="('*:model.dtype=bfloat16', '*:model.attention_impl=cudnn')"
"""

from ml_collections import ConfigDict

from configs import base

STAGES = ("base", "sft", "reward", "dpo", "ppo", "teacher_data=teacher-data", "distill",
          "eval", "latency")


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "pipeline"
    c.workdir = "runs/demo"              # every stage's workdir is <workdir>/<stage>
    c.pipeline = p = ConfigDict()
    p.stages = STAGES                    # "name=command[:preset]" in order ("sft" = "sft=sft")
    p.preset = ""                        # preset of every stage's config file
    p.teacher = "dpo"                    # the aligned teacher distilled into the student (dpo|ppo)
    p.overrides = ()                     # "stage:key=value" config overrides of single stages
    if preset == "tiny":
        p.preset = "tiny"
        c.workdir = "runs/tiny"
    elif preset == "real":
        p.preset = "real"
        # GRPO too (at PPO's sampled tokens): 9.3 minutes in all on one H200 (2026-11-30, README).
        stages = STAGES[:-2] + ("eval=eval:real", "latency=latency:real")
        p.stages = stages[:stages.index("ppo") + 1] + ("grpo",) + stages[stages.index("ppo") + 1:]
        c.workdir = "runs/real"
    elif preset:
        raise base.unknown_preset("configs/pipeline.py", preset, ("tiny", "real"))
    return c
