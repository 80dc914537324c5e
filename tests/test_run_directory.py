"""A run directory is never left corrupted or looking complete when it is not (issue 16).

* the lock: a live holder refuses, a dead one (a zombie too) is taken over;
* the manifest: a changed lr or data content refuses with the diff unless allowed (both
  configs kept); a set-up or pipeline stage that fails leaves the workdir as it found it;
* the final model is written last: a crash mid-save leaves no complete-looking stage; a torn
  `metrics.jsonl` line does not break a resume;
* divergence stops before any checkpoint holds NaN, and a dead model is warned about;
* one real tiny SFT run: its last line names the model and metric, a rerun says it is
  complete; Ctrl-C or SIGTERM before the first checkpoint says one line and leaves nothing.

Bad configs and data (one line naming the key, file or path) are `test_bad_inputs.py`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
import easyalign
from easyalign.train import rundir

SFT = ["sft", "--config=configs/sft.py:tiny"]


# ----------------------------------------------------------------------------- run directory
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    import socket

    host = socket.gethostname()
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": host, "started": "t"}))
    with pytest.raises(rundir.RunDirError, match=f"pid 1 on {host}"):
        rundir.acquire(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": host, "started": "t"}))
    note = rundir.acquire(tmp_path)
    assert note and f"stale lock of pid {dead.pid}" in note
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert rundir.acquire(tmp_path) is None  # re-entrant in one process
    rundir.release(tmp_path)
    assert not lock.exists()


def test_a_zombie_holder_is_dead(tmp_path):
    """A run killed with SIGKILL is `<defunct>` until its parent reaps it: its lock is stale
    (the rerun refused, "in use by another run", naming the zombie's pid)."""
    import socket
    import time

    zombie = subprocess.Popen(["true"])  # not waited for: a zombie until `wait` below
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({"pid": zombie.pid, "host": socket.gethostname(),
                                "started": "t"}))
    try:
        note = rundir.acquire(tmp_path)
        assert note and f"stale lock of pid {zombie.pid}" in note
    finally:
        rundir.release(tmp_path)
        zombie.wait()


def test_resume_takes_another_sample_log_setting(tmp_path):
    """Reported: `--config.grpo.sample_every=1` on a GRPO run's resume was refused as a changed
    training config, though the README says logging intervals may change freely. What the
    sample log writes is free; what the rollout samples is not."""
    from configs import grpo

    config = grpo.get_config("tiny")
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    assert rundir.check_resume(config, workdir) is None
    (workdir / "config.json").write_text("{}")
    config.grpo.sample_every, config.grpo.num_samples = 1, 8
    assert rundir.check_resume(config, workdir) is None
    config.grpo.num_generations = 4
    with pytest.raises(rundir.RunDirError, match="grpo.num_generations: 8 → 4"):
        rundir.check_resume(config, workdir)


def test_an_interrupted_rollout_phase_names_its_unit(tmp_path):
    """The trial: Ctrl-C on GRPO said "resumes from step 2", its resume "continuing from
    iteration 2": PPO's and GRPO's checkpoints count iterations, and the line says so."""
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    assert rundir._rerun(tmp_path) == "the same command resumes from step 2"  # no config yet
    (tmp_path / "config.json").write_text('{"phase": "grpo"}')
    assert rundir._rerun(tmp_path) == "the same command resumes from iteration 2"


def test_resume_with_another_training_config_refuses_with_the_diff(tmp_path):
    from configs import sft

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    config = sft.get_config("tiny")
    config.data.source = str(data)
    workdir = tmp_path / "run"
    workdir.mkdir()
    assert rundir.check_resume(config, workdir) is None
    (workdir / "config.json").write_text("{}")
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    config.train.log_every = 7  # not training-relevant: fine
    assert rundir.check_resume(config, workdir) is None
    config.optim.lr = 1e-3
    data.write_text('{"prompt": "a", "response": "c"}\n')  # same size, other content
    with pytest.raises(rundir.RunDirError) as error:
        rundir.check_resume(config, workdir)
    assert "optim.lr: 0.003 → 0.001" in str(error.value)
    assert "data.source (content)" in str(error.value) and "\n" not in str(error.value)
    config.train.allow_config_change = True
    assert "continuing with a changed config" in rundir.check_resume(config, workdir)
    assert (workdir / "config.1.json").exists() and (workdir / "manifest.1.json").exists()
    # Another phase in the same workdir (the trial: DPO into a finished SFT run's workdir): one
    # short line naming both phases, no allow_config_change offered — even when it is set.
    config.phase = "dpo"
    with pytest.raises(rundir.RunDirError) as error:
        rundir.check_resume(config, workdir)
    message = str(error.value)
    assert "holds a sft run; a dpo run needs its own --config.workdir" in message
    assert "allow_config_change" not in message and len(message) < 300


def test_a_set_up_that_fails_on_its_data_leaves_the_workdir_as_it_found_it(tmp_path):
    """A misspelt column is found while loading, after the workdir was started: a new workdir
    (and the `runs/x` it made) is gone again, and a resumable one keeps its own config and
    manifest bytes — not the failed run's, which a later resume would compare against."""
    from configs import sft
    from easyalign import stages
    from easyalign.data.sources import DataError
    from tokenizer_styles import make_tokenizer

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n' * 4)
    make_tokenizer("llama3").save_pretrained(tmp_path / "tok")

    def fails(workdir: Path, **train) -> None:
        config = sft.get_config("tiny")
        config.workdir, config.data.source = str(workdir), str(data)
        config.data.tokenizer, config.data.eval_source = str(tmp_path / "tok"), ""
        config.data.columns.prompt = "promt"
        config.train.update(train)
        with pytest.raises(DataError, match="column 'promt'"):
            stages.run("sft", config)

    fails(tmp_path / "runs" / "x" / "sft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "train.jsonl"]

    resumable = tmp_path / "resumable"
    kept = {"config.json": b'{"phase": "sft"}\n', "manifest.json": b'{"optim.lr": 1.0}\n',
            "notes.txt": b"mine\n"}
    (resumable / "checkpoints" / "5").mkdir(parents=True)
    for name, content in kept.items():
        (resumable / name).write_bytes(content)
    fails(resumable, allow_config_change=True)  # the change is allowed, then data fails
    assert {p.name: p.read_bytes() for p in resumable.iterdir() if p.is_file()} == kept
    assert [p.name for p in (resumable / "checkpoints").iterdir()] == ["5"]


def test_a_failed_set_up_removes_the_built_in_world_it_generated_in_a_directory_it_made(
        tmp_path, monkeypatch):
    """Reported: a failed tiny run left `runs/fresh/world-<hash>/` (the built-in world, made
    beside its workdir for the sibling stages) in the `runs/fresh` it had created itself. The
    world goes with the directories the run made; one made before the run is kept."""
    from configs import sft
    from easyalign import stages
    from easyalign.algorithms import runsetup

    def broken(*args, **kwargs):
        raise RuntimeError("reading the data")

    monkeypatch.setattr(runsetup, "load_examples", broken)
    config = sft.get_config("tiny")
    config.workdir = str(tmp_path / "runs" / "fresh" / "sft")
    with pytest.raises(RuntimeError, match="reading the data"):
        stages.run("sft", config)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "runs" / "kept").mkdir(parents=True)  # there before the run: the world stays
    config.workdir = str(tmp_path / "runs" / "kept" / "sft")
    with pytest.raises(RuntimeError, match="reading the data"):
        stages.run("sft", config)
    assert [p.name.split("-")[0] for p in (tmp_path / "runs" / "kept").iterdir()] == ["world"]


def test_a_pipeline_failure_undoes_only_the_stage_that_failed(tmp_path):
    """Nested `undo_on_failure` (a pipeline's stages): a stage that finished keeps its workdir
    when a later one fails; the failed one's is gone."""
    from ml_collections import ConfigDict

    done, failed = tmp_path / "runs" / "p" / "done", tmp_path / "runs" / "p" / "failed"
    with pytest.raises(RuntimeError, match="set-up"):
        with rundir.undo_on_failure():
            with rundir.undo_on_failure():
                pass  # a stage that starts no workdir
            with rundir.undo_on_failure():
                rundir.start_workdir(ConfigDict({"workdir": str(done)}))
            rundir.start_workdir(ConfigDict({"workdir": str(failed)}))
            raise RuntimeError("set-up")
    rundir.release(done)
    assert sorted(p.name for p in (tmp_path / "runs" / "p").iterdir()) == ["done"]
    assert sorted(p.name for p in done.iterdir()) == ["config.json", "manifest.json"]


def test_torn_metrics_line_does_not_break_a_resume(tmp_path):
    from easyalign.train.metrics import MetricsWriter

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
                                        '{"step": 3, "lo')
    writer = MetricsWriter(tmp_path, total_steps=4, progress_bar=False, enabled=True)
    writer.resume(2)
    writer.write(3, {"loss": 1.0})
    writer.close()
    rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_the_progress_bar_shows_reward_and_kl_besides_the_loss(tmp_path):
    """The trial: GRPO's bar showed only `loss=0.0000` (near 0 by design) and nothing of the
    reward or the evaluations until the run ended. It shows the headline metrics a phase
    logs, training and held-out, the latest of each."""
    from easyalign.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, total_steps=4, progress_bar=True, enabled=True)
    writer.status("first iteration (compiles)")  # the trial: a slow first step, unexplained
    assert writer._bar.desc == "first iteration (compiles)"
    writer.status("")
    assert writer._bar.desc == ""
    writer.write(0, {"reward": 0.25, "response_length": 7.0}, prefix="eval/")
    writer.write(1, {"loss": -0.001, "reward": 0.5, "kl": 0.0123, "clip_frac": 0.1})
    writer.write(2, {"loss": 0.002, "reward": 0.625, "kl": 0.02})
    assert writer._bar.postfix == "eval_reward=0.2500, loss=0.0020, reward=0.6250, kl=0.0200"
    writer.close()


def events(path):
    """The `Event` protos of a TensorBoard events file (TFRecord framing: length, its CRC,
    the record, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
        pos += 12 + length + 4
    return out


@pytest.mark.parametrize("checkpoint", [None, 50])
def test_a_restarted_run_drops_what_the_killed_attempt_logged_after_its_checkpoint(tmp_path,
                                                                                 checkpoint):
    """Reported: a run killed before its first complete checkpoint starts again at step 0, but
    its metrics.jsonl kept the killed attempt's lines (steps 25…100 twice). From the last
    checkpoint — or from step 0 when there is none — every later line goes, and the new
    TensorBoard events file purges the later steps of the old ones."""
    from easyalign.train.metrics import MetricsWriter

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "loss": 1.0}) + "\n" for step in (0, 25, 50, 75, 100)))
    writer = MetricsWriter(tmp_path, total_steps=120, progress_bar=False, enabled=True,
                           resume_step=checkpoint)
    writer.resume(-1 if checkpoint is None else checkpoint)
    writer.write(checkpoint or 0, {"loss": 0.5})
    writer.close()
    steps = [json.loads(line)["step"] for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert steps == ([0] if checkpoint is None else [0, 25, 50, 50])
    (events_file,) = logs.glob("events.out.tfevents.*")
    purge = [e for e in events(events_file) if e.HasField("session_log")]
    assert [(e.session_log.status, e.step) for e in purge] == [
        (purge[0].session_log.START, 0 if checkpoint is None else checkpoint + 1)]


def test_a_crash_while_saving_the_model_leaves_the_stage_incomplete(tmp_path):
    from flax import nnx

    from easyalign import sharding
    from easyalign.algorithms import runsetup
    from easyalign.hf import models
    from easyalign.model import create_model, preset

    class Tokenizer:
        def save_pretrained(self, path):
            raise OSError(28, "No space left on device", path)

    mesh = sharding.single_device_mesh()
    graphdef, params = nnx.split(create_model(preset("tiny", vocab_size=64), mesh, seed=0))
    run = runsetup.Run(config=None, mesh=mesh, workdir=tmp_path, tokenizer=Tokenizer())
    with pytest.raises(OSError):
        models.save_model(run, params, graphdef)
    assert not models.stage_done(tmp_path) and not (tmp_path / "model").exists()


# ----------------------------------------------------------------------------- divergence
class FakeCheckpointer:
    directory = Path("/ckpt")

    def __init__(self):
        self.saved = []

    def latest_step(self):
        return self.saved[-1] if self.saved else None


def test_divergence_guard_names_the_first_bad_step_and_warns_on_a_dead_model(capsys):
    from easyalign.train.loop import DivergenceGuard, NonFiniteLossError

    guard = DivergenceGuard(dead_steps=3)
    checkpointer = FakeCheckpointer()
    for step in (1, 2, 3):
        guard.observe(step, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(0.0)})
    guard.check(checkpointer)
    assert "gradient norm 0 for the last 3 steps" in capsys.readouterr().out
    guard.observe(4, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(jnp.inf)})
    guard.observe(5, {"loss": jnp.float32(jnp.nan), "grad_norm": jnp.float32(1.0)})
    # Reported: "the last complete checkpoint is iteration None" before any was written.
    with pytest.raises(NonFiniteLossError, match=r"at step 4; stopped without saving it \(no "
                       r"checkpoint was written before it\)"):
        guard.check(checkpointer)
    checkpointer.saved.append(2)
    with pytest.raises(NonFiniteLossError, match=r"\(the last complete checkpoint is step 2 in "
                       r"/ckpt\)"):
        guard.check(checkpointer)


def test_no_checkpoint_holds_a_diverged_step(tmp_path):
    """A step that goes NaN between log steps stops the run at the next checkpoint boundary,
    before that checkpoint is written."""
    from easyalign import sharding
    from easyalign.train import loop as train_loop
    from easyalign.train.checkpoint import Checkpointer
    from easyalign.train.metrics import MetricsWriter
    from easyalign.train.state import TrainState

    def step_fn(state, batch, frozen):
        step = state.step + 1
        loss = jnp.where(step == 3, jnp.nan, 1.0)
        params = {"w": state.params["w"] + loss}
        return (TrainState(step=step, params=params, opt_state=(), rng=state.rng),
                {"loss": loss, "grad_norm": jnp.float32(1.0)})

    class Loader:
        def __next__(self):
            return {"x": np.zeros((1, 2), np.float32)}

        def get_state(self):
            return {}

    state = TrainState(step=jnp.int32(0), params={"w": jnp.zeros(3)}, opt_state=(),
                       rng=jax.random.PRNGKey(0))
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=5, async_save=False)
    writer = MetricsWriter(tmp_path, total_steps=6, progress_bar=False)
    with pytest.raises(train_loop.NonFiniteLossError, match="step 3"):
        train_loop.run_loop(state=state, step_fn=step_fn, frozen=None, loader=Loader(),
                            mesh=sharding.single_device_mesh(),
                            loop=train_loop.LoopConfig(total_steps=6, log_every=100,
                                                       checkpoint_every=1),
                            checkpointer=checkpointer, writer=writer, model_config={})
    assert checkpointer.manager.all_steps() == [1, 2]
    checkpointer.close()
    writer.close()


# ----------------------------------------------------------------------------- a real run
def test_a_run_ends_naming_its_model_and_a_rerun_says_it_is_complete(tmp_path, capsys):
    from conftest import phase_config

    from easyalign.algorithms import sft

    config = phase_config("sft", tmp_path / "runs" / "t" / "sft", train__steps=2,
                          train__batch_size=8, train__eval_every=0, train__plot=False,
                          data__eval_source="", model__preset="world-student",
                          data__world__dir=str(tmp_path / "world"))
    sft.run(config)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"[sft] done: model in {tmp_path / 'runs' / 't' / 'sft' / 'model'}")
    assert "loss" in out[-1]
    assert not (tmp_path / "runs" / "t" / "sft" / rundir.LOCK_FILE).exists()
    # A rerun says so before it reads any data (it loaded and tokenised everything first):
    # with the built-in world's files gone, it does not build them again.
    shutil.rmtree(tmp_path / "world")
    assert easyalign.run("sft", config) == tmp_path / "runs" / "t" / "sft"
    complete = (f"[sft] already complete (2 of 2 steps): the model is in "
                f"{tmp_path / 'runs' / 't' / 'sft' / 'model'} (train again with a "
                "new config.workdir)")
    assert capsys.readouterr().out.strip().splitlines()[-1] == complete
    assert not (tmp_path / "world").exists()
    assert not (tmp_path / "runs" / "t" / "sft" / rundir.LOCK_FILE).exists()
    # The phase called directly (a library user's `setup()` may inspect a finished run) goes
    # through set-up; its training driver finds the run complete, trains and writes nothing.
    model_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "t" / "sft" / "model"
                                                      ).rglob("*")}
    sft.run(config)
    assert capsys.readouterr().out.strip().splitlines()[-1] == complete
    assert {p: p.stat().st_mtime_ns for p in model_files} == model_files


@pytest.mark.parametrize("signum", [2, 15], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_before_the_first_checkpoint_says_one_line_and_leaves_nothing(tmp_path,
                                                                           built_world, signum):
    """Ctrl-C (SIGINT) while a new run compiles or trains toward its first checkpoint: one line
    on stderr (no traceback) saying the workdir was removed, exit status 128 + the signal, and
    the workdir it made gone — its logs included (it printed a traceback, exited with a
    segfault and kept `logs/`). SIGTERM (`kill`, `timeout`, SLURM preemption) alike: it left
    run.lock, config.json, manifest.json and an empty checkpoints/."""
    import time

    from conftest import cpu_devices_env, sft_command

    workdir = tmp_path / "runs" / "x" / "sft"
    process = subprocess.Popen(sft_command(workdir, 500, world=built_world), cwd=REPO,
                               env=cpu_devices_env(1), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / "logs").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "the run never started its logs"
        time.sleep(0.05)
    assert not (workdir / "checkpoints").is_dir() or not any((workdir / "checkpoints").iterdir())
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("easyalign sft: interrupted (" +
                           ("Ctrl-C" if signum == 2 else "SIGTERM")), stderr
    assert f"removed {workdir} (no checkpoint had been saved): the same command starts over" \
        in last, last
    assert not (tmp_path / "runs").exists(), sorted(str(p) for p in tmp_path.rglob("*"))


def test_sigterm_after_a_checkpoint_keeps_it_and_the_same_command_resumes(tmp_path, built_world):
    """SLURM's preemption signal once the run has checkpoints: one line saying they are kept and
    from which step the same command resumes, exit status 143, the lock released, no final
    model (the run is not complete); the rerun continues from that step to the end. With the
    progress bar on, the line starts a line of its own (reported: it was printed on the bar's
    last line, the bar never closed)."""
    import time

    from conftest import cpu_devices_env, sft_command

    workdir = tmp_path / "runs" / "sft"
    command = sft_command(workdir, 200, "--config.train.checkpoint_every=2",
                          "--config.train.progress_bar=True", world=built_world)
    process = subprocess.Popen(command, cwd=REPO, env=cpu_devices_env(1),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (workdir / "checkpoints" / "4").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    process.send_signal(15)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("easyalign sft: interrupted (SIGTERM)") and "Traceback" not in stderr
    assert "\neasyalign sft: interrupted (SIGTERM)" in stderr  # after the bar's line, not on it
    kept = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert f"keeps its checkpoints: the same command resumes from step {kept}" in last, last
    assert not (workdir / "run.lock").exists() and not (workdir / "model").exists()
    resumed = subprocess.run(command, cwd=REPO, env=cpu_devices_env(1), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing from step {kept}" in resumed.stdout and (workdir / "model").is_dir()
