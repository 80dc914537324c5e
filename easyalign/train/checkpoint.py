"""Orbax checkpoints of a run: train state + data-iterator state, latest N plus the best.

Layout under `workdir/checkpoints/`:

    <step>/state/       TrainState (step, params, optimizer state, RNG) as an Orbax PyTree
    <step>/data/        the data iterator's state (JSON), so a resumed run sees the same batches
    <step>/model/       the ModelConfig (JSON), so the checkpoint is self-describing
    ...                 Orbax metadata (eval metrics of the step, if any)

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves only complete checkpoints behind, and `restore_latest` picks the last
complete one. Restore takes an abstract target carrying shardings, so a checkpoint saved on
one mesh restores directly into the layout of the current one.

Preservation: the latest `keep` checkpoints, plus the best one by `best_metric` (lower is
better unless `best_mode="max"`) among steps saved with metrics.

A save that fails (a full disk: Orbax raises it at the next save or wait, from its background
thread) ends the checkpointer there (`Checkpointer.abandon`): its threads are waited for and
the partial `<step>.orbax-checkpoint-tmp*` directory is removed, so nothing half-written stays
beside the complete checkpoints, and the error goes on to the caller. A phase that fails for
any other reason while a save is in flight lets it end first (`settle`, called by
`rundir.undo_on_failure`), so that the undo sees complete checkpoints or none.

Orbax runs each async save in a fresh asyncio loop on a thread and closes the loop as soon as
one write fails, while tensorstore's other writes are still in flight: each of them then calls
back into the closed loop and Python prints `RuntimeError: Event loop is closed` as an
unraisable error — a wall of tracebacks that says nothing the failed save does not. Those
callbacks (and the finalizers of the abandoned Orbax coroutines at interpreter exit) are
dropped by `_drop_orbax_echoes`; every other unraisable error goes to the previous hook.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import weakref
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class _QuietNoMetrics(logging.Filter):
    """Orbax warns on every save without metrics when a best metric is tracked; a run saves
    between evaluations by design, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


_QUIET = _QuietNoMetrics()

# What Orbax names a step (and each item) while it is written; renamed away when complete.
PARTIAL = ".orbax-checkpoint-tmp"


def partial_saves(directory: str | Path) -> list[Path]:
    """The saves under `directory` that did not complete (never a checkpoint to restore)."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if PARTIAL in p.name) if directory.is_dir() \
        else []


def _is_orbax_echo(unraisable) -> bool:
    """An unraisable error that only repeats a failed save: tensorstore delivering a write's
    result to the closed loop of Orbax's save thread (`call_soon_threadsafe` called from C, so
    it is the outermost frame), or an abandoned Orbax coroutine finalized at interpreter exit."""
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and tb is not None:
        return unraisable.object is None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
    code = getattr(unraisable.object, "cr_code", None)
    return sys.is_finalizing() and code is not None and "orbax" in code.co_filename


def _drop_orbax_echoes() -> None:
    """Install the filter of `_is_orbax_echo` in front of the current `sys.unraisablehook`
    (once; whatever hook comes later, e.g. the CLI's, chains to it or replaces it)."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_echoes", False):
        return

    def hook(unraisable):
        if not _is_orbax_echo(unraisable):
            previous(unraisable)

    hook.drops_orbax_echoes = True
    hook.__wrapped__ = previous
    sys.unraisablehook = hook


_open: weakref.WeakSet = weakref.WeakSet()  # the Checkpointers not yet closed or abandoned


def settle(workdir: str | Path) -> None:
    """Let the saves in flight of the open checkpointers under `workdir` end (a failed one is
    abandoned, `Checkpointer.abandon`): what `rundir.undo_on_failure` does before it looks at
    the checkpoints of a failed phase. Never raises an error of a save (the phase's error is
    the one). Single-process only: with several, a save ends in a barrier with processes that
    may be gone."""
    workdir = Path(workdir).absolute()
    if jax.process_count() > 1:
        return
    for checkpointer in list(_open):
        if checkpointer.directory.is_relative_to(workdir):
            with contextlib.suppress(Exception):
                checkpointer.wait()


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 2, best_metric: str | None = None,
                 best_mode: str = "min", async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.best_metric = best_metric
        logging.getLogger("absl").addFilter(_QUIET)  # idempotent: one filter object
        preserve: list[Any] = [policies.LatestN(n=keep)]
        if best_metric:
            preserve.append(policies.BestN(get_metric_fn=lambda m: m[best_metric],
                                           reverse=best_mode == "min", n=1,
                                           keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode,
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "model"))
        _drop_orbax_echoes()
        _open.add(self)

    def save(self, step: int, state, data_state: dict | None, model_config: dict,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  model=ocp.args.JsonSave(model_config))
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            metrics = None  # only steps that carry the ranking metric compete for "best"
        with self._abandoned_on_error():  # the error of an earlier async save surfaces here
            return self.manager.save(step, args=args, metrics=metrics, force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among saved steps that carry it."""
        return self.manager.best_step() if self.best_metric else None

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """`(state, data_state)` of `step`, the state placed in `abstract_state`'s shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data or {})

    def wait(self) -> None:
        with self._abandoned_on_error():
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        _open.discard(self)

    @contextlib.contextmanager
    def _abandoned_on_error(self):
        try:
            yield
        except Exception:
            self.abandon()
            raise

    def abandon(self) -> None:
        """End this checkpointer after a failed save: its threads done, the partial save
        removed (process 0), the complete checkpoints untouched. Never raises."""
        _open.discard(self)
        with contextlib.suppress(Exception):
            self.manager.close()  # waits for the save threads; re-raises their error
        if jax.process_index() == 0:
            for path in partial_saves(self.directory):
                shutil.rmtree(path, ignore_errors=True)
