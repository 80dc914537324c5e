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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class _QuietNoMetrics(logging.Filter):
    """Orbax warns on every save without metrics when a best metric is tracked; a run saves
    between evaluations by design, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


_QUIET = _QuietNoMetrics()


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

    def save(self, step: int, state, data_state: dict | None, model_config: dict,
             metrics: dict[str, float] | None = None, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  model=ocp.args.JsonSave(model_config))
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            metrics = None  # only steps that carry the ranking metric compete for "best"
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
