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

ABLATION_STAGES = ("student_offline=distill:tiny_offline",
                   "student_reward_weighted=distill:tiny_reward_weighted")


def get_config(preset: str = ""):
    c = pipeline.get_config(preset)
    c.phase = "ablate"
    stages = list(c.pipeline.stages)
    at = stages.index("eval")
    c.pipeline.stages = tuple(stages[:at] + list(ABLATION_STAGES) + stages[at:])
    return c
