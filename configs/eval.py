"""Eval: compare model variants on the world's suites (plus prompt files and TruthfulQA MC).

    easyalign eval --config=configs/eval.py \
        --config.eval.variants="('sft=runs/sft/model', 'dpo=runs/dpo/model')" \
        --config.eval.reference=runs/sft/model --config.eval.reward_model=runs/reward/model

Presets: `tiny` (16 prompts per suite, short answers: a smoke test); `real`: the real
pipeline's suites — AdvBench (harmful: refusal rate), held-out Alpaca prompts (benign:
over-refusal), held-out HH-RLHF harmless conversations (reward and reward win rate against the
`sft` variant), TruthfulQA MC1/MC2, the IFEval-style instruction file — the held-out rows being
those the training stages held out of the same files; `shared`: AdvBench (refusal rate),
TruthfulQA MC and the instruction file from the shared data folder (`EASYALIGN_SHARED_DATA`, default
`../shared/data` next to the repository) for real models, without the built-in world's suites
(they ask about the world's invented entities and tasks; add some back by name, e.g.
`--config.eval.suites="('harmful','benign')"`, to evaluate world models on both).
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import FieldReference

from configs import base
from configs.base import shared_data_dir  # noqa: F401  (re-exported for the tests)


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "eval"
    c.workdir = "runs/eval"
    c.eval = e = ConfigDict()
    # variants and extra_suites take any literal (tuple of strings, one string or a dict), so a
    # dict given by a flag stays a dict (a tuple-typed field would keep only its keys).
    e.variants = FieldReference((), field_type=object)  # "name=path" strings or {name: path}:
    #                                      model checkpoints, HF dirs, .gguf files, "smollm2"
    #                                      or "@stage" (../stage/model of workdir, as in training)
    e.reference = ""                     # the SFT model kl_ref is measured against ("" = no KL)
    e.reward_model = ""                  # scalar-head model scoring the responses ("" = none)
    e.reward_suites = ()                 # suites the reward model scores (() = every suite)
    e.win_rate_reference = ""            # variant the reward win rate compares with ("" = none)
    e.tokenizer = ""                     # tokenizer for variants without one ("" = the world's)
    e.suites = ("instructions", "facts", "unknown", "harmful", "benign")  # world suites (held
    #                                      out; for models of the built-in world, () = none)
    e.extra_suites = FieldReference((), field_type=object)  # "name=PATH[:COLUMN[:TAG[:SPLIT[:
    #                                      FILTER]]]]" or {name: {path, column, tag, split,
    #                                      filter}}; TAG harmful|benign|plain (easyalign/eval/suites.py)
    e.ifeval = ""                        # IFEval-format instruction file ("builtin" = the 65
    #                                      prompts shipped in easyalign/eval/data; "" = none)
    e.refusal_judge = "rules"            # rules | model:PATH (a judge LM; easyalign/eval/judge.py)
    e.mc_task = ""                       # TruthfulQA mc_task.json for MC1/MC2 ("" = skip)
    e.mc_limit = 0                       # first N MC questions (0 = all)
    e.limit_per_suite = 0                # first N prompts of every suite (0 = all)
    e.max_new_tokens = 48                # response budget per prompt
    e.batch_size = 32                    # decode slots of generation; rows per scoring batch
    e.sampling = "greedy"                # greedy | temperature | top_k | top_p
    e.temperature = 1.0                  # for the non-greedy methods
    e.top_k = 40                         # for top_k
    e.top_p = 0.9                        # for top_p
    e.kl_samples = "temperature"         # kl_ref's samples: one T=1 draw per prompt, seed eval.seed
                                         # ("none": no kl_ref even with a reference)
    #                                      (the only value: greedy responses give no KL estimate)
    e.seed = 0                           # sampling seed: responses (unused by greedy), KL samples
    e.dtype = ""                         # compute dtype ("" = the dtype the weights are stored
    #                                      in: fp32 for an fp32 checkpoint; bfloat16 on GPU)
    if preset == "tiny":
        e.limit_per_suite = 16
        e.max_new_tokens = 24
    elif preset == "real":
        data = shared_data_dir()
        c.data.eval_fraction = base.REAL_EVAL_FRACTION  # the rows training held out
        e.suites = ()
        e.extra_suites = {
            "advbench": {"path": str(data / base.ADVBENCH), "column": "goal", "tag": "harmful"},
            "alpaca": {"path": str(data / base.ALPACA), "column": "instruction+input",
                       "tag": "benign", "split": "eval"},
            "hh": {"path": str(data / base.HH_HARMLESS), "column": "", "split": "eval"}}
        e.mc_task = str(data / base.TRUTHFULQA_MC)
        e.ifeval = "builtin"
        e.limit_per_suite = 200
        e.max_new_tokens = 128
        e.batch_size = 64
        e.reward_suites = ("hh",)
        e.win_rate_reference = "sft"
    elif preset == "shared":
        data = shared_data_dir()
        e.suites = ()                    # real suites only: the world's are not asked of real models
        e.extra_suites = (f"advbench={data / base.ADVBENCH}:goal:harmful",)
        e.mc_task = str(data / base.TRUTHFULQA_MC)
        e.ifeval = "builtin"
    elif preset:
        raise base.unknown_preset("configs/eval.py", preset, ("tiny", "real", "shared"))
    return c
