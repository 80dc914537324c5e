"""Latency: prefill/decode speed and peak memory of each variant on this machine.

    easyalign latency --config=configs/latency.py \
        --config.latency.variants="('teacher=runs/dpo/model', 'student=runs/distill/model')" \
        --config.latency.teacher=teacher --config.latency.student=student \
        --config.latency.results=runs/eval/results.json

Preset `tiny`: a quick smoke test (small batch, short prompts, few repeats).
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "latency"
    c.workdir = "runs/latency"
    c.latency = t = ConfigDict()
    t.variants = ()                      # "name=path" strings: model checkpoints or HF dirs
    #                                      or "@stage" (../stage/model of workdir)
    t.batch_size = 8                     # prompts decoded together
    t.prompt_length = 128                # tokens per prompt (random ids; content is irrelevant)
    t.new_tokens = 128                   # tokens generated per prompt (≥ 2; no early stop)
    t.repeats = 10                       # timed runs after the warm-up (percentiles over these)
    t.dtype = ""                         # compute dtype override ("" = as stored; bfloat16 on GPU)
    t.seed = 0                           # random prompts
    t.isolate = True                     # each variant in a fresh process (clean peak memory)
    t.teacher = ""                       # variant names for the summary line ("" = no summary)
    t.student = ""
    t.results = ""                       # eval results.json with their alignment scores
    t.keep_metrics = ("alignment_score",)  # eval metrics the summary says the student keeps
    if preset == "tiny":
        t.batch_size, t.prompt_length, t.new_tokens, t.repeats = 2, 16, 16, 3
    elif preset == "real":  # the real pipeline: what the student keeps of the teacher's safety
        t.keep_metrics = ("advbench_refusal", "reward_win_rate")
    elif preset:
        raise base.unknown_preset("configs/latency.py", preset, ("tiny", "real"))
    return c
