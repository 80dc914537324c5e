"""Teacher data: sample the aligned teacher on a prompt set into `workdir/teacher_data.jsonl`.

`teacher_data.teacher="@dpo"` names the DPO stage of the same pipeline directory
(`runs/<name>/dpo/model`); any easyalign checkpoint directory works too. The prompts are
`data.source` (default: the built-in world's training prompts of every kind).

    easyalign teacher-data --config=configs/teacher_data.py:tiny \
        --config.workdir=runs/demo/teacher_data

Presets: `tiny` (the built-in world: its 1000 training prompts, greedy, top-5 log-probs; about
ten seconds on a 2-core CPU); `real`: the real DPO teacher, greedy, on the training side of
HH-RLHF harmless.
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "teacher_data"
    c.workdir = "runs/demo/teacher_data"
    c.teacher_data = t = ConfigDict()
    t.teacher = "@dpo"                   # teacher checkpoint ("@stage" = ../stage/model)
    t.sampling = "greedy"                # greedy | temperature | top_k | top_p
    t.temperature = 1.0                  # for the non-greedy methods
    t.top_k = 40                         # for top_k
    t.top_p = 0.9                        # for top_p
    t.seed = 0                           # sampling seed (prompt n: row n's keys of this seed)
    t.max_new_tokens = 64                # response budget per prompt
    t.keep_unfinished = False            # keep responses cut by max_new_tokens (else dropped)
    t.topk = 0                           # also store the teacher's top-k log-probs (0 = no)
    t.batch_size = 64                    # decode slots (global), refilled as responses finish
    t.limit = 0                          # first N prompts only (0 = all)
    if preset == "tiny":
        t.max_new_tokens = 32
        t.topk = 5
        c.data.max_length = 48
    elif preset == "real":
        # The aligned teacher answers the training side of HH-RLHF harmless (greedy).
        base.real(c, base.HH_HARMLESS, max_length=256)  # the prompt budget
        t.max_new_tokens = 192
        t.batch_size = 128
        base.mix_benign(c)           # the student must see the teacher answer benign requests
    elif preset:
        raise base.unknown_preset("configs/teacher_data.py", preset, ("tiny", "real"))
    return c
