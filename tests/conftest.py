"""Shared fixtures: the built-in world's SFT and reward models, trained once per test session.

The stages run in-process through the same `run(config)` functions the CLI calls, with the
`tiny` presets the README documents, in a temporary pipeline directory (`<tmp>/runs/t/{sft,
reward}`) so that `@sft` / `@reward` references resolve as in a real pipeline.
"""

import os
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache for the whole session, subprocesses included (they inherit
# the environment): the tiny models compile the same programs in many tests and processes, and a
# cache hit returns the same executable, so results are unchanged. Set before jax is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="easyalign-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


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


@pytest.fixture(scope="session")
def student_runs(tmp_path_factory) -> Path:
    """`<tmp>/runs/s` holding `sft/` (and, with `student_reward_runs`, `reward/`) of the world's
    small student shape, briefly trained (SFT 150 steps, reward 100): the policy DPO and PPO start from, and the teacher the
    distillation tests distil. Tests add their own sibling stages (`dpo/`, `ppo*/`).

    Weak on purpose and not a free choice: `test_dpo` asserts that DPO raises the refusal rate
    of this SFT model (which refuses ~89% of held-out harmful prompts, leaving room), and
    `test_ppo` that PPO raises this reward model's score. Change this training only together
    with those two tests.
    """
    from easyalign.algorithms import sft

    root = tmp_path_factory.mktemp("pipeline") / "runs" / "s"
    sft.run(phase_config("sft", root / "sft", model__preset="world-student", train__steps=150,
                         train__eval_every=0, train__checkpoint_every=1000, train__plot=False))
    return root


@pytest.fixture(scope="session")
def student_reward_runs(student_runs) -> Path:
    """`student_runs` with its `reward/` trained too (a separate fixture: DPO and distillation
    need only the SFT model)."""
    from easyalign.algorithms import reward

    reward.run(phase_config("reward", student_runs / "reward", data__eval_source="",
                            train__steps=100, train__checkpoint_every=1000, train__log_every=50,
                            train__plot=False))
    return student_runs


def host(tree):
    """Host (numpy) copies of a pytree's leaves, for before/after comparisons."""
    import jax
    import numpy as np

    return [np.array(x) for x in jax.tree.leaves(tree)]


@pytest.fixture
def full_fp32_matmuls():
    """True fp32 products: on GPU, XLA's default lets fp32 matmuls run in TF32 (~1e-4 error), so
    chunked and full logits, sampler and trainer, would not agree to 1e-5."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


# Under pytest-xdist (`scripts/test.sh` runs two workers), each worker builds the session
# fixtures it uses. Tests sharing a trained fixture go to one worker as one group, so every
# fixture is trained once per suite, not once per worker.
SHARED_FIXTURE_GROUPS = {"world_runs": "world-runs", "student_runs": "student-runs",
                         "student_reward_runs": "student-runs"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        groups = {SHARED_FIXTURE_GROUPS[f] for f in getattr(item, "fixturenames", ())
                  if f in SHARED_FIXTURE_GROUPS}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses fixtures of two groups {groups}")
        if groups:
            item.add_marker(pytest.mark.xdist_group(groups.pop()))


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's compilation cache (made above) when this process created it: the
    controller, not an xdist worker (the workers share the controller's cache)."""
    import shutil

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(cache).startswith("easyalign-xla-cache-") and \
            "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(cache, ignore_errors=True)
