"""`easyalign <command> [flags]` — one entry point for every phase and tool.

Phase commands take an ml_collections config file with an optional preset and field overrides,
plus the multi-host flags every phase accepts:

    easyalign sft --config=configs/sft.py:tiny --config.train.steps=200
    easyalign dpo --config=configs/dpo.py --coordinator=10.0.0.1:1234 --num_processes=2 --process_id=0

Tool commands (`convert`, `sample`) take plain flags. Each command's module is imported only
when it runs, so `easyalign --help` is instant.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags


class ConfigError(ValueError):
    """A config file or override the user gave cannot be used; the message says which."""


# command -> (module, function, one-line help). Phase commands take a config.
PHASES = {
    "sft": ("easyalign.algorithms.sft", "run", "supervised fine-tuning"),
    "reward": ("easyalign.algorithms.reward", "run", "train a reward model on preference pairs"),
    "dpo": ("easyalign.algorithms.dpo", "run", "direct preference optimisation"),
    "ppo": ("easyalign.algorithms.ppo", "run", "RLHF with PPO against a reward model"),
    "teacher-data": ("easyalign.algorithms.teacher_data", "run", "sample the teacher into JSONL"),
    "distill": ("easyalign.algorithms.distill", "run", "distil the teacher into a student"),
    "generate": ("easyalign.algorithms.generate", "run", "prompt file → JSONL of completions"),
    "eval": ("easyalign.eval.run", "run", "evaluate model variants"),
    "latency": ("easyalign.eval.latency", "run", "prefill/decode speed and memory per variant"),
    "ablate": ("easyalign.pipeline", "run_ablations", "SFT/DPO/PPO and distillation ablations"),
    "pipeline": ("easyalign.pipeline", "run", "SFT → reward → DPO/PPO → distil → eval → latency"),
    "doctor": ("easyalign.doctor", "run", "check processes, devices, mesh and memory fit"),
}
TOOLS = {
    "convert": ("easyalign.tools", "convert", "HF ⇄ easyalign checkpoint"),
    "sample": ("easyalign.tools", "sample", "print completions of a checkpoint"),
}


def load_config(args: list[str]):
    """Parse `--config=FILE[:preset]`, `--config.a.b=v` overrides and the multi-host flags."""
    argv = ["easyalign"] + list(args)
    fv = flags.FlagValues()
    flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "index of this process", flag_values=fv)
    try:
        config_flags.DEFINE_config_file("config", None, "config file[:preset]", flag_values=fv,
                                        sys_argv=argv)
        fv(argv)
        config = fv.config
    except AttributeError as e:  # ml_collections: an override names a field that does not exist
        bad = [a for a in args if a.startswith("--config.")]
        detail = str(e.args[0] if e.args else e).encode().decode("unicode_escape")
        raise ConfigError(f"unknown config key in {bad}: {' '.join(detail.split())}") from None
    except (flags.Error, OSError, KeyError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if config is None:
        raise ConfigError("missing --config=FILE[:preset] (e.g. --config=configs/sft.py:tiny)")
    if fv.coordinator is not None:
        config.distributed.coordinator = fv.coordinator
    if fv.num_processes is not None:
        config.distributed.num_processes = fv.num_processes
    if fv.process_id is not None:
        config.distributed.process_id = fv.process_id
    return config


def _resolve(table: dict, command: str) -> Callable:
    module, name, _ = table[command]
    return getattr(importlib.import_module(module), name)


def phase_function(command: str) -> Callable:
    """The `run(config)` function of a phase command (used by the pipeline too)."""
    return _resolve(PHASES, command)


def usage() -> str:
    lines = ["usage: easyalign <command> [flags]", "", "phases (take --config=FILE[:preset]):"]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in PHASES.items()]
    lines += ["", "tools:"] + [f"  {name:<13} {help_}" for name, (_, _, help_) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return
    command, args = argv[1], argv[2:]
    if command not in PHASES and command not in TOOLS:
        sys.exit(f"easyalign: unknown command {command!r}\n\n{usage()}")
    try:
        if command in PHASES:
            _resolve(PHASES, command)(load_config(args))
        else:
            _resolve(TOOLS, command)(args)
    except (ValueError, FileNotFoundError) as e:
        # Bad input (config, data, checkpoint): one clear line naming the key, file or tensor.
        # The data, HF and config errors are ValueErrors; EASYALIGN_DEBUG=1 shows the traceback.
        if os.environ.get("EASYALIGN_DEBUG"):
            raise
        sys.exit(f"easyalign {command}: {e}")
