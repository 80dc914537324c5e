"""Shared fixtures: the built-in world's SFT and reward models, trained once per test session.

The stages run in-process through the same `run(config)` functions the CLI calls, with the
`tiny` presets the README documents, in a temporary pipeline directory (`<tmp>/runs/t/{sft,
reward}`) so that `@sft` / `@reward` references resolve as in a real pipeline.
"""

from pathlib import Path

import pytest


def phase_config(module: str, workdir: Path, preset: str = "tiny", **overrides):
    import importlib

    config = importlib.import_module(f"configs.{module}").get_config(preset)
    config.workdir = str(workdir)
    config.train.progress_bar = False
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory) -> Path:
    """`<tmp>/runs/t` holding `sft/` and `reward/` trained with their tiny presets."""
    from easyalign.algorithms import reward, sft

    root = tmp_path_factory.mktemp("pipeline") / "runs" / "t"
    sft.run(phase_config("sft", root / "sft", train__plot=False))
    reward.run(phase_config("reward", root / "reward", train__plot=False))
    return root
