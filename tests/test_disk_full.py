"""A full disk is one line saying so, and leaves nothing half-written.

* the CLI's line: ENOSPC / EDQUOT as an OSError of our own writes or as the text Orbax's writer
  (tensorstore) wraps in RESOURCE_EXHAUSTED says "disk full", the path and the size being
  written — never the out-of-memory advice, which a real device OOM still gets;
* a failed save: the checkpointer is abandoned, its partial `<step>.orbax-checkpoint-tmp`
  removed, the complete checkpoints untouched; a run that fails before its first complete
  checkpoint is undone as any early failure (a partial save is not a checkpoint);
* the "Event loop is closed" echoes of tensorstore calling back into Orbax's closed loop are
  dropped; other unraisable errors are not;
* end to end (one subprocess, the CLI of a real tiny SFT run): both kinds, one line each, no
  traceback, the new workdir gone.
"""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax.numpy as jnp
import pytest

from conftest import REPO, SMALL_SFT, cpu_devices_env
from easyalign import cli
from easyalign.train import rundir


def orbax_disk_full(step_dir: Path) -> ValueError:
    """What Orbax raises when tensorstore cannot write a checkpoint file (the real text)."""
    ocdbt = step_dir.parent / f"{step_dir.name}.orbax-checkpoint-tmp" / \
        "state.orbax-checkpoint-tmp" / "ocdbt.process_0"
    return ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.count/0" in OCDBT database at local '
        f'file "{ocdbt}/": Failed writing: "{ocdbt}/d/514520eac39f0c6dd03f97e0a67d1896": Failed '
        "to write 4288512 bytes to file 15: No space left on device [os_error_code='28']")


def test_a_full_disk_is_named_as_such_with_its_path_not_as_device_memory():
    error = orbax_disk_full(Path("/runs/x/checkpoints/10"))
    try:
        try:
            raise error
        except ValueError as inner:
            raise RuntimeError("orbax: save failed") from inner
    except RuntimeError as wrapped:
        for e in (error, wrapped):
            line = cli.describe(e, "sft", "/runs/x")
            assert line.startswith("disk full (no space left on device) writing 4.1 MiB to "
                                   "/runs/x/checkpoints/10: free space there, or point "
                                   "--config.workdir at a larger disk"), line
            assert "train.keep_checkpoints" in line and "memory" not in line and "\n" not in line
            assert cli.out_of_memory(e, "sft") is None

    # Our own writes (metrics.jsonl, config.json, an export): the OSError's path, else the
    # workdir; a quota alike; what the undo did follows.
    line = cli.describe(OSError(errno.ENOSPC, "No space left on device", "/runs/x/model/a.bin"))
    assert line.startswith("disk full (no space left on device) writing to /runs/x/model/a.bin")
    line = cli.describe(OSError(errno.ENOSPC, "No space left on device"), "sft", "/runs/x",
                        ["removed /runs/x (no checkpoint had been saved): the same command "
                         "starts over"])
    assert line.startswith("disk full (no space left on device) writing to /runs/x: free"), line
    assert line.endswith("; removed /runs/x (no checkpoint had been saved): the same command "
                         "starts over"), line
    line = cli.describe(OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/runs/x/config.json"))
    assert line.startswith("disk full (disk quota exceeded) writing to /home/u/runs/x/config.json")
    assert "write elsewhere" in cli.describe(OSError(errno.ENOSPC, "x", "/o/m"), "convert")

    # A device out of memory keeps its own line.
    from jax.errors import JaxRuntimeError

    oom = JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 56858647624 bytes.")
    assert cli.disk_full(oom) is None
    assert cli.describe(oom, "sft", "/runs/x").startswith("out of device memory allocating 52.95")


def test_a_failed_save_removes_its_partial_directory_and_keeps_the_complete_ones(tmp_path):
    from easyalign.train import checkpoint as ckpt

    checkpointer = ckpt.Checkpointer(tmp_path / "checkpoints", async_save=False)
    state = {"w": jnp.arange(4.0)}
    checkpointer.save(1, state, {}, {"name": "tiny"})

    def full_disk(step, **kwargs):
        partial = tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp" / "state"
        partial.mkdir(parents=True)
        raise orbax_disk_full(tmp_path / "checkpoints" / str(step))

    checkpointer.manager.save = full_disk
    with pytest.raises(ValueError, match="No space left on device"):
        checkpointer.save(2, state, {}, {"name": "tiny"})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert checkpointer not in ckpt._open
    assert ckpt.partial_saves(tmp_path / "checkpoints") == []


def test_a_partial_save_is_no_checkpoint_to_the_undo(tmp_path):
    """A run that failed during its first save is undone like any early failure; a resumable
    one keeps its complete checkpoints and loses only the partial save."""
    from ml_collections import ConfigDict

    new = tmp_path / "runs" / "x"
    with pytest.raises(OSError):
        with rundir.undo_on_failure():
            rundir.start_workdir(ConfigDict({"workdir": str(new)}))
            (new / "checkpoints" / "10.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
            (new / "logs").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not (tmp_path / "runs").exists()
    assert rundir.undone[-1].startswith(f"removed {new} (no checkpoint had been saved)")

    old = tmp_path / "old"
    (old / "checkpoints" / "5").mkdir(parents=True)
    (old / "config.json").write_text("{}\n")
    with pytest.raises(OSError):
        with rundir.undo_on_failure():
            rundir.start_workdir(ConfigDict({"workdir": str(old)}))
            (old / "checkpoints" / "10.orbax-checkpoint-tmp-1712345678").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in (old / "checkpoints").iterdir()] == ["5"]
    assert (old / "config.json").read_text() == "{}\n" and not (old / "run.lock").exists()
    assert "the same command resumes from step 5" in rundir.undone[-1]


def test_tensorstore_callbacks_into_a_closed_orbax_loop_are_dropped(monkeypatch):
    from easyalign.train import checkpoint as ckpt

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    ckpt._drop_orbax_echoes()
    ckpt._drop_orbax_echoes()  # once
    assert sys.unraisablehook.__wrapped__ is not sys.unraisablehook

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    # As tensorstore reports it: from C, so `call_soon_threadsafe` is the outermost frame.
    echo = types.SimpleNamespace(exc_type=RuntimeError, exc_value=closed, object=None,
                                 exc_traceback=closed.__traceback__.tb_next, err_msg=None)
    sys.unraisablehook(echo)
    assert seen == []
    # The same error from Python code, and any other error, still reach the previous hook.
    for unraisable in (echo.__dict__ | {"exc_traceback": closed.__traceback__},
                       echo.__dict__ | {"exc_value": RuntimeError("a real one")}):
        sys.unraisablehook(types.SimpleNamespace(**unraisable))
    assert [str(e) for e in seen] == ["Event loop is closed", "a real one"]


RUNNER = textwrap.dedent("""
    import errno, json, os, sys
    from pathlib import Path

    import orbax.checkpoint as ocp

    sys.path.insert(0, "tests")
    from easyalign import cli
    from easyalign.train import rundir
    from test_disk_full import orbax_disk_full

    def full_disk_save(self, step, *args, **kwargs):  # as tensorstore fails on a full tmpfs
        partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp" / "state"
        partial.mkdir(parents=True)
        raise orbax_disk_full(Path(self.directory) / str(step))

    def full_disk_write(path, text):  # config.json: an OSError of ours, naming no path
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ocp.CheckpointManager.save = full_disk_save
    lines = []
    for argv in json.loads(sys.argv[1]):
        if len(lines) == 1:
            rundir.write_atomic = full_disk_write
        try:
            cli.main(["easyalign", *argv])
        except SystemExit as e:
            lines.append(e.code)
    print(json.dumps(lines))
""")


def test_a_full_disk_during_a_run_is_one_line_and_undoes_the_new_workdir(tmp_path, built_world):
    """The CLI of a real tiny SFT run: the first checkpoint's save fails as Orbax does on a full
    disk; then the config write fails (an OSError of ours). One line each, no traceback."""
    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    argvs = [["sft", "--config=configs/sft.py:tiny", f"--config.workdir={workdir}",
              f"--config.data.world.dir={built_world}", "--config.train.steps=2",
              "--config.train.checkpoint_every=1", *SMALL_SFT] for workdir in runs]
    result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs)], cwd=REPO,
                            env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    first, second = json.loads(result.stdout.strip().splitlines()[-1])
    assert first.startswith("easyalign sft: disk full (no space left on device) writing 4.1 MiB "
                            f"to {runs[0]}/checkpoints/1: free space there"), first
    assert first.endswith(f"; removed {runs[0]} (no checkpoint had been saved): the same "
                          "command starts over"), first
    assert second.startswith(f"easyalign sft: disk full (no space left on device) writing to "
                             f"{runs[1]}: free space there"), second
    assert "memory" not in first + second
    assert not (tmp_path / "runs").exists(), sorted(map(str, tmp_path.rglob("*")))
