"""Distillation of the aligned teacher into a smaller student (same tokenizer).

`distill.teacher="@dpo"` names the DPO stage of the same pipeline directory
(`runs/<name>/dpo/model`) and `distill.teacher_data="@teacher_data"` the JSONL written by `easyalign teacher-data` there
(`runs/<name>/teacher_data/teacher_data.jsonl`); the student is `model`: the `world-student`
preset from scratch by default, `model.init=checkpoint` with `model.path`, or a student
derived from the teacher's own layers (embeddings, norms and head copied; see
easyalign/model/student.py):

    --config.model.init=derive --config.model.path=@dpo --config.model.layers=spread:10 \
        --config.model.intermediate_size=1024

Presets (the built-in world, 500 student steps each, under a minute on a 2-core CPU; ablations
compare them at equal steps):
  tiny          on-policy GKD, JSD(0.5) over the full vocabulary, λ = 0.5 (half the steps on the
                student's own samples, half on teacher responses: a student from scratch samples
                gibberish at first, and the teacher-data steps give it a start; λ = 1 is the pure
                on-policy ablation)
  tiny_offline  sequence-level KD on the teacher data (cross-entropy + top-k KL)
and `real`: a student derived from the real DPO teacher (12 of its 30 layers) distilled
on-policy on HH-RLHF harmless prompts (the real pipeline's stage); `real_offline` and
`real_reward_weighted` are its two ablation variants (`easyalign ablate
--config=configs/ablations.py:real`), as `tiny_offline` and `tiny_reward_weighted` are the
tiny one's.
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "distill"
    c.workdir = "runs/demo/distill"
    c.model.preset = "world-student"     # the student's shape (init=scratch) ...
    c.model.init = "scratch"             # ... or "checkpoint" | "derive" with model.path

    c.distill = d = ConfigDict()
    d.mode = "on_policy"                 # on_policy (GKD) | offline (KD on teacher data)
    d.teacher = "@dpo"                   # frozen teacher checkpoint ("@stage" = ../stage/model)
    d.teacher_data = "@teacher_data"     # teacher JSONL ("@stage" = ../stage/teacher_data.jsonl)
    d.divergence = "jsd"                 # forward_kl | reverse_kl | jsd | sampled_reverse_kl
    d.beta = 0.5                         # JSD(β) mixture weight of the teacher (jsd only)
    d.lmbda = 1.0                        # on_policy: fraction of steps on student samples (GKD λ)
    d.temperature = 1.0                  # student sampling temperature, also of the divergence
    d.sampling = "temperature"           # student sampling method: temperature | top_k | top_p
    d.top_k = 40                         # for sampling=top_k
    d.top_p = 1.0                        # for sampling=top_p
    d.max_new_tokens = 24                # on-policy response budget (prompt ≤ max_length − this)
    d.topk_weight = 0.0                  # offline: weight of the KL to stored teacher top-k
    d.reward_model = ""                  # reward weighting by this scalar-head model ("" = off)
    d.reward_temperature = 2.0           # τ of the weights B·softmax(standardised score / τ)

    c.optim.lr = 1e-3
    c.train.steps = 300
    if preset in ("tiny", "tiny_offline", "tiny_reward_weighted"):
        c.data.max_length = 48
        c.train.batch_size = 32
        c.train.steps = 500
        c.train.eval_every = 100
        c.train.log_every = 25
        c.optim.lr = 2e-3
        c.optim.warmup_steps = 20
    if preset in ("real", "real_offline", "real_reward_weighted"):
        # A student of 12 of the teacher's 30 layers (evenly spread, embeddings and head copied),
        # on-policy GKD on HH-RLHF harmless prompts, half the steps on the teacher's responses.
        base.real(c, base.HH_HARMLESS, max_length=352)  # prompt ≤ 256 + 96 new tokens
        c.model.init, c.model.path, c.model.layers = "derive", "@dpo", "spread:12"
        # 300 steps at lr 5e-5 left the student looping ("I'm sorry, I'm not sure. I'm not
        # sure. …": distinct-1 0.001 on an H200, 2026-11-30): 18 removed layers need more.
        d.lmbda = 0.5
        d.max_new_tokens = 96
        c.train.steps = 900
        c.train.batch_size = 32
        c.train.eval_every = 300
        c.train.checkpoint_every = 300
        c.optim.lr = 2e-4
        c.optim.warmup_steps = 50
        base.mix_benign(c)           # on-policy prompts: benign ones too (teacher_data has them)
        _variant(c, preset)
    elif preset in ("tiny", "tiny_reward_weighted"):
        d.lmbda = 0.5
        if preset == "tiny_reward_weighted":  # the ablation's student: weighted by the RM
            d.reward_model = "@reward"
    elif preset == "tiny_offline":
        d.mode = "offline"
        d.topk_weight = 1.0
    elif preset:
        raise base.unknown_preset("configs/distill.py", preset,
                                  ("tiny", "tiny_offline", "tiny_reward_weighted", "real",
                                   "real_offline", "real_reward_weighted"))
    return c


def _variant(c, preset: str) -> None:
    """The ablation's students of the real preset (`configs/ablations.py`): sequence-level KD on
    the teacher data, or on-policy weighted by the reward model."""
    if preset == "real_offline":
        c.distill.mode, c.distill.topk_weight = "offline", 1.0
    elif preset == "real_reward_weighted":
        c.distill.reward_model = "@reward"
