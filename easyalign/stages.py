"""The stage table: every phase command, the function that runs it, and `run(stage, config)`.

    import easyalign
    from configs import sft
    config = sft.get_config("tiny")
    config.workdir = "runs/demo/sft"
    workdir = easyalign.run("sft", config)        # → runs/demo/sft (model/, logs/, plots/)

The CLI (`easyalign <stage> --config=…`) and the pipeline dispatch through the same table, so a
notebook runs exactly what the command line runs. A stage's functions are imported on first use.
A stage that fails before its first checkpoint leaves its workdir as it found it
(`train.rundir.undo_on_failure`): the next run does not meet a half-made one.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Callable

from easyalign.config_keys import did_you_mean

# stage -> (module, function, one-line help). Every stage function takes a config.
STAGES = {
    "sft": ("easyalign.algorithms.sft", "run", "supervised fine-tuning"),
    "reward": ("easyalign.algorithms.reward", "run", "train a reward model on preference pairs"),
    "dpo": ("easyalign.algorithms.dpo", "run", "direct preference optimisation"),
    "ppo": ("easyalign.algorithms.ppo", "run", "RLHF with PPO against a reward model"),
    "grpo": ("easyalign.algorithms.grpo", "run", "GRPO / RLOO / Dr. GRPO with verifiable rewards"),
    "teacher-data": ("easyalign.algorithms.teacher_data", "run", "sample the teacher into JSONL"),
    "distill": ("easyalign.algorithms.distill", "run", "distil the teacher into a student"),
    "generate": ("easyalign.algorithms.generate", "run", "prompt file → JSONL of completions"),
    "eval": ("easyalign.eval.run", "run", "evaluate model variants"),
    "latency": ("easyalign.eval.latency", "run", "prefill/decode speed and memory per variant"),
    "ablate": ("easyalign.pipeline", "run_ablations", "SFT/DPO/PPO and distillation ablations"),
    "pipeline": ("easyalign.pipeline", "run", "SFT → reward → DPO/PPO → distil → eval → latency"),
    "doctor": ("easyalign.doctor", "run", "check processes, devices, mesh and memory fit"),
}


def resolve(table: dict, name: str) -> Callable:
    """The function a `(module, function, help)` table names for `name`, imported now."""
    module, function, _ = table[name]
    return getattr(importlib.import_module(module), function)


def stage_function(stage: str) -> Callable:
    """The function that runs `stage` (its `run(config)`), under `rundir.undo_on_failure`:
    if it raises before its first checkpoint, its workdir is put back as it was found."""
    if stage not in STAGES:
        hint = did_you_mean(stage, STAGES)
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}"
                         + (f"; {hint}" if hint else ""))
    function = resolve(STAGES, stage)

    @functools.wraps(function)
    def run_stage(config):
        from easyalign.train import rundir  # here: `easyalign --help` imports no jax

        from easyalign.algorithms.runsetup import StageComplete, stop_when_complete

        with rundir.undo_on_failure(), stop_when_complete():
            try:
                return function(config)
            except StageComplete:  # a rerun of a finished run: it said so, nothing to do
                return None

    return run_stage


def run(stage: str, config) -> Path:
    """Run one stage (`"sft"`, `"dpo"`, `"pipeline"`, … : `STAGES`) with an `ml_collections`
    config (`configs/<stage>.py`'s `get_config(preset)`, changed as you like), as
    `easyalign <stage> --config=…` would; returns its work directory (`config.workdir`),
    where a training stage leaves `model/`, `logs/metrics.jsonl` and `plots/`."""
    stage_function(stage)(config)
    return Path(config.workdir).absolute()
