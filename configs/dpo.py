"""DPO: preference optimisation of the SFT model against a frozen copy of itself.

Pipeline layout: stages of one run live side by side, `runs/<name>/{sft,reward,dpo,...}`. With
`model.path` left empty the policy (and reference) is `<parent of workdir>/sft/model`, so

    easyalign sft --config=configs/sft.py --config.workdir=runs/demo/sft
    easyalign dpo --config=configs/dpo.py:tiny --config.workdir=runs/demo/dpo

needs no path; set `--config.model.path=DIR` for any other easyalign checkpoint (or
`model.init=hf` with an HF directory).
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config()
    c.phase = "dpo"
    c.workdir = "runs/dpo"
    c.model.init = "checkpoint"          # the policy starts from the SFT model ...
    c.model.path = ""                    # ... "" = <parent of workdir>/sft/model (pipeline layout)

    c.dpo = d = ConfigDict()
    d.beta = 0.1                         # β: strength of the implicit KL to the reference
    d.loss_type = "sigmoid"              # sigmoid | ipo | hinge (easyalign.losses.DPO_LOSSES)
    d.label_smoothing = 0.0              # ε of conservative DPO (sigmoid only)
    d.average_logps = False              # length-average sequence log-probs (IPO-style)
    d.sft_weight = 0.0                   # α of + α·NLL(chosen) (RPO; TRL's rpo_alpha)
    d.reference = "cached"               # cached (precomputed once, on disk) | live (frozen model)
    d.cache_dir = ""                     # reference log-prob cache ("" = workdir/reference_cache)

    c.optim.lr = 5e-6                    # DPO moves a trained model: a small step
    c.optim.warmup_steps = 10
    c.train.batch_size = 32              # pairs per step (64 sequences per forward)
    if preset == "tiny":
        # The built-in world, from an SFT model trained with configs/sft.py (≈1 min on 2 CPUs).
        c.train.steps = 100
        c.train.eval_every = 50
        c.train.checkpoint_every = 50
        c.optim.lr = 2e-4
        c.dpo.beta = 0.1
        c.data.max_length = 48
    return c
