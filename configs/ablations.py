"""Ablations (`easyalign ablate`): the pipeline plus the distillation variants it compares.

    SFT vs DPO vs PPO on safety             the pipeline's own sft / dpo / ppo rows
    on-policy vs off-policy distillation    `distill` (on-policy) vs `student_offline`
                                            (sequence-level KD on teacher data), equal steps
    reward-weighted vs unweighted           `distill` vs `student_reward_weighted`

Tables go to `<workdir>/ablations.md` (and the console); every number comes from the run.
Stages already complete in the same run directory (e.g. after `easyalign pipeline` with the same
workdir) are reused.
"""

from configs import pipeline


def ablation_stages(preset: str) -> tuple[str, ...]:
    """The two distillation variants, with the `configs/distill.py` presets of this pipeline's
    data (`tiny_*` on the built-in world, `real_*` on the real preset's)."""
    family = "real" if preset == "real" else "tiny"
    return (f"student_offline=distill:{family}_offline",
            f"student_reward_weighted=distill:{family}_reward_weighted")


def get_config(preset: str = ""):
    c = pipeline.get_config(preset)
    c.phase = "ablate"
    stages = list(c.pipeline.stages)
    # Before the evaluation stage, whatever its entry says (`eval`, or `eval=eval:real`).
    at = next(i for i, entry in enumerate(stages) if entry.split("=")[0] == "eval")
    c.pipeline.stages = tuple(stages[:at] + list(ablation_stages(preset)) + stages[at:])
    return c
