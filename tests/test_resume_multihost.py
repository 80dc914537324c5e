"""Real processes: a SIGKILLed run resumes bit-identically; 2 processes equal 1 process."""

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cpu_devices_env, free_port, sft_command


def final_params(workdir: Path) -> dict[str, np.ndarray]:
    from flax import nnx, traverse_util

    from easyalign.hf import load_checkpoint_model

    model = load_checkpoint_model(workdir / "model")
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "logs" / "metrics.jsonl").open()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def logged_step(workdir: Path) -> int:
    path = workdir / "logs" / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_is_bit_identical(tmp_path, built_world):
    steps = 40
    reference, killed = tmp_path / "runs" / "straight", tmp_path / "runs" / "killed"
    subprocess.run(sft_command(reference, steps, world=built_world), cwd=REPO,
                   env=cpu_devices_env(1), check=True, capture_output=True)

    proc = subprocess.Popen(sft_command(killed, steps, "--config.train.checkpoint_every=10",
                                        world=built_world),
                            cwd=REPO, env=cpu_devices_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill mid-interval: once checkpoint 10 is complete and the run has moved past step 12.
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            (killed / "checkpoints" / "10").is_dir() and logged_step(killed) > 12):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < steps

    resumed = subprocess.run(sft_command(killed, steps, world=built_world), cwd=REPO,
                             env=cpu_devices_env(1), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "continuing from step" in resumed.stdout
    a, b = final_params(reference), final_params(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    # The resumed log has one line per step, and the same losses as the straight run.
    assert losses(killed) == losses(reference)


@pytest.mark.slow
def test_two_processes_match_one_process_over_the_same_devices(tmp_path, built_world):
    steps = 8
    single = tmp_path / "runs" / "single"
    subprocess.run(sft_command(single, steps, world=built_world), cwd=REPO,
                   env=cpu_devices_env(4), check=True, capture_output=True)
    multi = tmp_path / "runs" / "multi"
    port = free_port()
    procs = [subprocess.Popen(
        sft_command(multi, steps, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}", world=built_world),
        cwd=REPO, env=cpu_devices_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outputs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    one, two = losses(single), losses(multi)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                               atol=1e-5, rtol=0)
