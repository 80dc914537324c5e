"""The run directory's guards: one run at a time, and a resume continues the same run.

* **Lock** (`workdir/run.lock`): created with O_EXCL by process 0 and holding its pid, host and
  start time. A second run on the same workdir refuses, naming the first. A lock whose pid is
  dead on this host (gone, or a zombie not yet reaped) is stale (a killed run): it is taken
  over with a note. Released when the
  phase ends (and at exit).
* **Manifest** (`workdir/manifest.json`): the training-relevant config (every key except how
  often to log/evaluate/checkpoint, the mesh and process layout, the preset's name (its values
  are compared), and other settings that do not change the trajectory, `NOT_TRAINING`) plus a
  SHA-256 fingerprint of the content of each data file. A run that finds checkpoints compares
  the manifest: any difference refuses, printing the differences, unless `train.allow_config_change=True` — then the old config and
  manifest are kept as `config.<n>.json` / `manifest.<n>.json` beside the new ones.
* **A failed set-up leaves nothing** (`undo_on_failure`, around every stage the stage table
  runs): a phase that raises before it saves a checkpoint — a bad data entry found while
  loading, Ctrl-C, a disk too full for the first checkpoint — puts back what `start_workdir`
  changed: its lock, config and manifest go, a resumable run's own config and manifest are
  restored, a save cut short (`*.orbax-checkpoint-tmp*`) is removed, and a directory it created
  is removed when empty. Nothing else in the workdir is touched.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import jax

from easyalign.config_keys import SAVED_AT_SUFFIX, flat_keys

LOCK_FILE = "run.lock"
ITERATION_PHASES = ("ppo", "grpo")  # phases whose steps (and checkpoints) are rollout iterations


def step_unit(phase: str | None) -> str:
    """What a phase's steps (and checkpoint numbers) count: "iteration" or "step"."""
    return "iteration" if phase in ITERATION_PHASES else "step"
MANIFEST_FILE = "manifest.json"
# Keys (or prefixes ending in ".") that do not change what is trained.
NOT_TRAINING = ("workdir", "preset", "train.progress_bar", "train.plot", "train.log_every",
                "train.eval_every", "train.eval_batches", "train.checkpoint_every",
                "train.keep_checkpoints", "train.async_checkpointing",
                "train.allow_config_change", "train.dead_model_steps", "distributed.", "perf.",
                "mesh.", "model.attention_impl", "model.remat", "model.logits_chunk",
                "data.world.dir", "data.eval_source", "data.eval_split", "doctor.",
                # what the rollouts' sample log writes (samples.txt), not what they sample
                "ppo.sample_every", "ppo.num_samples", "grpo.sample_every", "grpo.num_samples")

_held: dict[Path, Path] = {}
# The config and manifest files `start_workdir` and `check_resume` write (and their temporaries).
_RECORDS = re.compile(r"(config|manifest)(\.\d+)?\.json(\.tmp)?|manifest\.tmp")


class RunDirError(ValueError):
    """The run directory is in use, or a resume would continue a different run."""


# ----------------------------------------------------------------------------- lock
def _alive(pid: int) -> bool:
    """Whether `pid` is a running process on this host. A zombie is not: a run killed with
    SIGKILL stays `<defunct>` in the process table until its parent reaps it (a shell's
    `timeout`, a job runner), and its lock is as stale as if the pid were gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:  # the state is the field after the command name, which may hold spaces and ")"
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal check is all there is
    return state not in ("Z", "X")


def acquire(workdir: Path) -> str | None:
    """Take `workdir`'s lock; returns a note when a stale lock was taken over.

    Raises RunDirError naming the holder when another live process holds it. Re-entrant
    within one process (a pipeline or a test may run a phase twice on one workdir).
    """
    workdir = Path(workdir).absolute()
    path = workdir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}
    note = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if pid == me["pid"] and host == me["host"]:
                _held[workdir] = path
                return None
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                note = (f"[run] {workdir}: took over the stale lock of pid {pid} (no longer "
                        f"running; started {holder.get('started', '?')})")
                path.unlink(missing_ok=True)
                continue
            raise RunDirError(
                f"{workdir} is in use by another run (pid {pid} on {host}, started "
                f"{holder.get('started', '?')}); wait for it, stop it, or use another "
                f"--config.workdir (lock: {path})")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _held[workdir] = path
        return note
    raise RunDirError(f"{path}: could not take the lock")


def release(workdir: Path | None = None) -> None:
    """Remove the lock of `workdir` (None: every lock this process holds)."""
    for key in ([Path(workdir).absolute()] if workdir is not None else list(_held)):
        path = _held.pop(key, None)
        if path is None:
            continue
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, json.JSONDecodeError):
            pass


atexit.register(release)


# ----------------------------------------------------------------------------- manifest
def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _training_relevant(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_TRAINING)


# The suffix of the manifest entries that record when a model a run reads was saved
# (`models_read`): compared only where both manifests have them (`differences`).
SAVED = SAVED_AT_SUFFIX
CODE = " (code)"  # a digest of user code a setting names (`grpo_rewards.code_identity`)


def models_read(resolve: Callable[[str], str]) -> Callable[[str, Any], dict]:
    """The `manifest` hook that records, for every setting naming a model (a path, an `@stage`,
    `name=path` entries of a list), when that model was saved (`hf.checkpoint.saved_at`):
    `{"<key> (saved at)": time}` or `{"<key>[<name>] (saved at)": time}`. `resolve` turns a
    setting's value into a path (`runsetup.stage_path` for `@stage`s)."""
    from easyalign.hf.checkpoint import saved_at

    def entries(key: str, value) -> dict:
        out = {}
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if not isinstance(item, str) or not item:
                continue
            name, _, path = item.partition("=")
            if not path or "/" in name:
                name, path = "", item
            when = saved_at(resolve(path))
            if when:
                out[f"{key}[{name}]{SAVED}" if name else f"{key}{SAVED}"] = when
        return out

    return entries


def manifest(config, overrides: dict | None = None, identify=None) -> dict:
    """The training-relevant config, flattened, with each data file's content fingerprint.

    `overrides` replaces values as the user gave them (`model.path="@sft"` rather than the
    absolute path it resolves to, so that a copied pipeline directory still matches).
    `identify(key, value) -> dict` adds entries of its own per setting (`models_read`)."""
    values = {}
    for key in flat_keys(config):
        if _training_relevant(key):
            node = config
            for part in key.split("."):
                node = node[part]
            values[key] = node if isinstance(node, (int, float, str, bool, type(None))) else (
                json.loads(json.dumps(node, default=str)) if isinstance(node, (list, tuple))
                else str(node))
    values.update({k: v for k, v in (overrides or {}).items() if k in values})
    if identify is not None:
        values.update({k: v for key, value in list(values.items())
                       for k, v in identify(key, value).items()})
    data = config.get("data")
    for key in ("source", "eval_source"):
        value = data.get(key, "") if data is not None else ""
        if value and Path(value).is_file():
            values[f"data.{key} (content)"] = file_fingerprint(Path(value))
    return values


def differences(old: dict, new: dict) -> list[str]:
    """`key: old → new` for every key whose value differs between two manifests. When a model
    was saved (`SAVED` entries), and the digest of user code (`CODE`), are compared only where
    both record them: a manifest written before the record existed, or a model that is gone
    (the pipeline says so itself), is no difference."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key.endswith((SAVED, CODE)) and not (key in old and key in new):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            out.append(f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}")
    return out


def has_checkpoints(workdir: Path) -> bool:
    directory = Path(workdir) / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_resume(config, workdir: Path, overrides: dict | None = None,
                 identify=None) -> str | None:
    """Compare the config with the manifest of the checkpoints it would resume; write the
    manifest (`manifest(config, overrides, identify)`). Returns a note when a change was
    allowed; raises RunDirError otherwise."""
    workdir = Path(workdir)
    path = workdir / MANIFEST_FILE
    new = manifest(config, overrides, identify)
    note = None
    if path.is_file() and has_checkpoints(workdir):
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        changes = differences(old, new) if old is not None else ["manifest.json unreadable"]
        phases = ((old or {}).get("phase"), new.get("phase"))
        if phases[0] and phases[1] and phases[0] != phases[1]:
            # Another phase's run: no config change makes it resumable, so none is offered.
            raise RunDirError(f"{workdir}: holds a {phases[0]} run; a {phases[1]} run needs its "
                              "own --config.workdir (the model it starts from goes in "
                              f"model.path, e.g. {workdir}/model)")
        if changes:
            allow = config.get("train", {}).get("allow_config_change", False)
            if not allow:
                raise RunDirError(
                    f"{workdir}: its checkpoints were trained with another config, so a resume "
                    f"would not continue the same run: {'; '.join(changes)} — use a new "
                    "--config.workdir, or --config.train.allow_config_change=True to continue "
                    "with the new config (both are kept)")
            n = 1
            while (workdir / f"manifest.{n}.json").exists():
                n += 1
            os.replace(path, workdir / f"manifest.{n}.json")
            if (workdir / "config.json").exists():
                os.replace(workdir / "config.json", workdir / f"config.{n}.json")
            note = (f"[resume] {workdir}: continuing with a changed config "
                    f"(train.allow_config_change): {'; '.join(changes)}; the previous config is "
                    f"config.{n}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return note


def complete_message(phase: str, latest: int, total: int, unit: str, model_dir: Path) -> str:
    """What a rerun of a finished run prints (the stage runner's early stop and the driver)."""
    return (f"[{phase}] already complete ({latest} of {total} {unit}s): the model is in "
            f"{model_dir} (train again with a new config.workdir)")


def start_workdir(config, manifest_overrides: dict | None = None, identify=None) -> Path:
    """Create `config.workdir`, take its lock, check a resume against the manifest of its
    checkpoints (above; `check_resume(config, workdir, manifest_overrides, identify)`), and
    write the resolved config into it (process 0). Inside `undo_on_failure`, what this
    changes is put back if the phase fails before a checkpoint."""
    workdir = Path(config.workdir).absolute()
    if jax.process_index() == 0:
        missing = [p for p in (workdir, *workdir.parents) if not p.exists()]
        workdir.mkdir(parents=True, exist_ok=True)
        notes = [acquire(workdir)]
        if _started and workdir not in _started[-1]:  # as found, now that the lock is ours
            _started[-1][workdir] = _Found(
                missing[-1] if missing else None, _checkpoint_entries(workdir),
                {p.name: p.read_bytes() for p in workdir.iterdir()
                 if p.is_file() and _RECORDS.fullmatch(p.name)},
                frozenset(p.name for p in workdir.iterdir()))
        notes.append(check_resume(config, workdir, manifest_overrides, identify))
        for note in notes:
            if note:
                print(note)
        write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    return workdir


# ----------------------------------------------------------------------------- failed set-up
@dataclasses.dataclass
class _Found:
    """A workdir as `start_workdir` found it, once its lock was taken."""

    created: Path | None          # the outermost directory start_workdir made (None: none)
    checkpoints: frozenset[str]   # `_checkpoint_entries`
    records: dict[str, bytes]     # its config and manifest files (`_RECORDS`) by name
    entries: frozenset[str] = frozenset()  # every name in it
    made: list[Path] = dataclasses.field(default_factory=list)  # `made_beside`


# What a training run makes in its workdir before its first checkpoint: the log of a run that
# saved nothing, and the (empty) checkpoint directory. Removed with the failed run when it
# made them — a workdir that had them keeps them.
_RUN_OUTPUTS = ("logs", "plots", "checkpoints")


def _checkpoint_entries(workdir: Path) -> frozenset[str]:
    """Everything under `workdir/checkpoints` (saved steps, and a save in progress or cut
    short: `<step>.orbax-checkpoint-tmp*`, never a checkpoint)."""
    directory = workdir / "checkpoints"
    return frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()


_started: list[dict[Path, _Found]] = []  # one per open `undo_on_failure`, innermost last
# What the undo of a failed or interrupted phase did, one phrase per workdir (`_put_back`):
# the CLI's line about an interruption says it, so that a cleanup is never silent.
undone: list[str] = []


@contextlib.contextmanager
def undo_on_failure():
    """Run a phase so that, if it raises before it saves a checkpoint, every workdir it
    started (`start_workdir`) is put back as it was found: the lock released, the config and
    manifest files this run wrote removed and those it replaced restored, the logs and empty
    checkpoint directory it made removed (`_RUN_OUTPUTS`), a save it cut short removed, and the
    directories it created removed where empty. A save still in flight is let end first
    (`checkpoint.settle`); a run that then has a new complete checkpoint keeps its new manifest
    (it describes that checkpoint). Nested uses (a pipeline's stages) each answer for the
    workdirs they started.

    When the phase returns, the locks of the workdirs it started are released: the phase is
    over, whether or not it went through the training driver (which releases its own). Evaluation
    and teacher data used to hold theirs until the process exited, so a pipeline killed in a
    later stage left them stale."""
    started: dict[Path, _Found] = {}
    _started.append(started)
    try:
        yield
    except BaseException:
        for workdir, found in started.items():
            undone.append(_put_back(workdir, found))
        raise
    else:
        for workdir in started:
            release(workdir)
    finally:
        _started.pop()  # the innermost, this one (uses nest)


def made_beside(workdir: Path, path: Path) -> None:
    """Record that the phase set up in `workdir` generated `path` outside it (a built-in data
    source beside it, shared by sibling stages): the undo of a failed set-up removes it when it
    lies in a directory the run itself created, so that directory goes too."""
    for started in reversed(_started):
        found = started.get(Path(workdir).absolute())
        if found is not None:
            found.made.append(Path(path).absolute())
            return


def _put_back(workdir: Path, found: _Found) -> str:
    """`undo_on_failure`'s undo of one workdir, and a phrase saying what it did; never raises
    (the phase's error is the one)."""
    release(workdir)
    checkpoint = sys.modules.get("easyalign.train.checkpoint")  # not imported: no save ran
    try:
        if checkpoint is not None:
            checkpoint.settle(workdir)
        new = _checkpoint_entries(workdir) - found.checkpoints
        if any(name.isdigit() for name in new):
            return f"{workdir} keeps its checkpoints: {_rerun(workdir)}"
        for name in new:  # saves cut short (`checkpoint.PARTIAL`; a complete one is a number)
            if ".orbax-checkpoint-tmp" in name:
                shutil.rmtree(workdir / "checkpoints" / name, ignore_errors=True)
        for path in workdir.iterdir():
            if _RECORDS.fullmatch(path.name) and path.name not in found.records:
                path.unlink()
        for name, data in found.records.items():
            path = workdir / name
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)
        for name in _RUN_OUTPUTS:
            if name not in found.entries and (workdir / name).is_dir():
                shutil.rmtree(workdir / name)
        if found.created is not None:
            for path in found.made:
                if found.created in path.parents:
                    shutil.rmtree(path, ignore_errors=True)
            for directory in (workdir, *workdir.parents):
                directory.rmdir()  # an OSError (not empty) ends the walk up
                if directory == found.created:
                    break
    except OSError:
        pass
    if not workdir.exists():
        return f"removed {workdir} (no checkpoint had been saved): the same command starts over"
    return f"put {workdir} back as it was (no new checkpoint had been saved): {_rerun(workdir)}"


def _rerun(workdir: Path) -> str:
    """What the same command does next in `workdir`: resume from its last complete step (a
    save cut short is a temporary directory, not a step), or start over."""
    try:
        steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    except OSError:  # no checkpoints/ (or it went away)
        steps = []
    if not steps:
        return "the same command starts over"
    try:
        phase = json.loads((workdir / "config.json").read_text()).get("phase")
    except (OSError, ValueError):
        phase = None
    return f"the same command resumes from {step_unit(phase)} {max(steps)}"


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file of this process and a rename:
    a reader, or a run killed midway, never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
