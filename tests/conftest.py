"""Shared fixtures and helpers.

* the built-in world on disk (`built_world`), and its SFT and reward models, trained once per
  test session (`world_runs`, `student_runs`): the stages run in-process through the same
  `run(config)` functions the CLI calls, with the `tiny` presets the README documents, in a
  temporary pipeline directory (`<tmp>/runs/t/{sft,reward}`) so that `@sft` / `@reward`
  references resolve as in a real pipeline;
* subprocesses that see fake CPU devices (`cpu_devices_env`, `run_on_cpu_devices`,
  `run_script_on_cpu_devices`) — XLA fixes the device count before jax starts, and pytest has
  imported jax already — and the CLI's small SFT run (`sft_command`);
* `host` copies of a pytree and true fp32 matmuls (`full_fp32_matmuls`);
* under pytest-xdist, the tests of one trained session fixture go to one worker as a group.
"""

import os
import socket
import subprocess
import sys
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
def built_world(tmp_path_factory) -> Path:
    """The built-in world of the default settings and its tokenizer, generated once per session
    by `world_source.ensure_world` (as a phase does) into `<tmp>/world`. Read-only for tests."""
    from configs import base
    from easyalign.data import world_source

    config = base.get_config()
    config.data.world.dir = str(tmp_path_factory.mktemp("built") / "world")
    return world_source.ensure_world(config)


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory) -> Path:
    """`<tmp>/runs/t` holding `sft/` and `reward/` trained with their tiny presets."""
    from easyalign.algorithms import reward, sft

    root = tmp_path_factory.mktemp("pipeline") / "runs" / "t"
    # No SFT evaluations or intermediate checkpoints: no test reads them (the trained weights
    # are the same), and they cost the session's longest chain of tests (one xdist worker).
    sft.run(phase_config("sft", root / "sft", train__plot=False, train__eval_every=0,
                         train__checkpoint_every=1000))
    # Two reward evaluations and checkpoints (steps 125, 250): the tests read the last
    # evaluation and the best-by-validation checkpoint kept besides the latest.
    reward.run(phase_config("reward", root / "reward", train__plot=False,
                            train__eval_every=125, train__checkpoint_every=125))
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


# The groups' order at the head of the run: their tests form the suite's longest chains (the
# world's SFT and reward runs, then the pipeline and GRPO on them: ~10 minutes on one worker),
# so they start first and the other worker takes the rest beside them. Left in file order
# (test_grpo, test_pipeline, test_world_pipeline come late) the chain started minutes in.
GROUP_ORDER = ("world-runs", "student-runs")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(config, items):
    rank = {}
    for item in items:
        groups = {SHARED_FIXTURE_GROUPS[f] for f in getattr(item, "fixturenames", ())
                  if f in SHARED_FIXTURE_GROUPS}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses fixtures of two groups {groups}")
        if groups:
            group = groups.pop()
            item.add_marker(pytest.mark.xdist_group(group))
            rank[item.nodeid] = GROUP_ORDER.index(group)
    items.sort(key=lambda item: rank.get(item.nodeid, len(GROUP_ORDER)))  # stable


# ----------------------------------------------------------------------------- subprocesses
REPO = Path(__file__).resolve().parents[1]


def cpu_devices_env(devices: int, **extra: str) -> dict:
    """This process's environment for a child that sees `devices` fake CPU devices. The
    parent's other XLA flags stay (`scripts/test.sh`'s single-threaded, -O1 CPU backend): a
    child with its own Eigen thread pool competes with the other pytest worker for the cores."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **extra)


def run_on_cpu_devices(devices: int, *args: str, timeout: float, cwd: Path | None = None,
                       **extra_env: str) -> subprocess.CompletedProcess:
    """`python *args` with `devices` fake CPU devices; its output captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd,
                          env=cpu_devices_env(devices, **extra_env), capture_output=True,
                          text=True, timeout=timeout)


def run_script_on_cpu_devices(devices: int, script: str, *args: str, timeout: float = 300,
                              cwd: Path | None = None) -> None:
    """Run `python script *args` with `devices` fake CPU devices; it must print OK last."""
    result = run_on_cpu_devices(devices, script, *args, timeout=timeout, cwd=cwd)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-3000:] + result.stderr[-5000:])


# `easyalign sft` on the world's small student shape, logging every step, no evaluation.
SMALL_SFT = ["--config.model.preset=world-student", "--config.train.batch_size=8",
             "--config.train.eval_every=0", "--config.data.eval_source=",
             "--config.train.log_every=1", "--config.train.progress_bar=False",
             "--config.train.plot=False"]


def sft_command(workdir: Path, steps: int, *extra: str, world: Path | None = None) -> list[str]:
    """The CLI's `sft` run of `steps` steps in `workdir` (`SMALL_SFT`; the built-in world in
    `world` when given, else generated next to `workdir`). Run it from `REPO`."""
    world_flag = [] if world is None else [f"--config.data.world.dir={world}"]
    return [sys.executable, "-m", "easyalign", "sft", "--config=configs/sft.py:tiny",
            f"--config.workdir={workdir}", *world_flag, f"--config.train.steps={steps}",
            *SMALL_SFT, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's compilation cache (made above) when this process created it: the
    controller, not an xdist worker (the workers share the controller's cache)."""
    import shutil

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if os.path.basename(cache).startswith("easyalign-xla-cache-") and \
            "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(cache, ignore_errors=True)
