"""The generic training loop: steps, logging, evaluation, checkpoints, resume, plots.

Nothing here knows which algorithm runs: it pulls host batches from a loader (an iterator with
`get_state`/`set_state`), places them as global arrays on the mesh, calls the jitted step,
and at the configured intervals logs, evaluates and checkpoints. Metrics stay on the device
between log steps — fetching them is a host-device sync point, so it happens every
`log_every` steps only, and that is also when a non-finite loss stops the run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from easyalign.sharding import batch_sharding
from easyalign.train.checkpoint import Checkpointer
from easyalign.train.metrics import MetricsWriter


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last complete checkpoint is still on disk."""


def to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host (per-process) numpy batch → global arrays sharded over the batch axes."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, value.ndim)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


@dataclasses.dataclass
class LoopConfig:
    total_steps: int
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    flops_per_token: float = 0.0       # for MFU; 0 = not reported
    peak_flops: float = 989e12         # per device


@dataclasses.dataclass
class StepHooks:
    """Optional per-run callbacks of an algorithm.

    evaluate(state) -> metrics            run every eval_every steps and at the end
    tokens(batch) -> int                  tokens processed per step (for tokens/s and MFU)
    after_log(step, state, metrics)       e.g. log sample completions
    """

    evaluate: Callable[[Any], dict[str, float]] | None = None
    tokens: Callable[[dict], int] | None = None
    after_log: Callable[[int, Any, dict], None] | None = None


def mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Fetch a list of per-step device metrics and average each key."""
    fetched = jax.device_get(pending)  # host-device sync point
    keys = fetched[-1].keys()
    return {k: float(np.mean([np.asarray(m[k]) for m in fetched])) for k in keys}


def run_loop(*, state, step_fn: Callable, frozen: Any, loader: Iterator[dict], mesh: Mesh,
             loop: LoopConfig, checkpointer: Checkpointer, writer: MetricsWriter,
             model_config: dict, hooks: StepHooks = StepHooks()):
    """Train from `state.step` to `loop.total_steps`; returns the final state.

    Checkpoints every `checkpoint_every` steps and at the end (with the evaluation metrics of
    that step when there are any, so the best one can be kept).
    """
    step = int(jax.device_get(state.step))
    pending: list[dict] = []
    tokens_since, interval_start, timed_steps = 0, None, 0
    while step < loop.total_steps:
        host_batch = next(loader)
        batch = to_global_batch(host_batch, mesh)
        state, metrics = step_fn(state, batch, frozen)
        step += 1
        pending.append(metrics)
        if interval_start is None:
            # The first step compiles; time from its end so tokens/s measures steady state.
            jax.block_until_ready(state.step)
            interval_start = time.perf_counter()
        else:
            timed_steps += 1
            tokens_since += (hooks.tokens(host_batch) if hooks.tokens else
                             int(np.prod(next(iter(host_batch.values())).shape[:2])))
        last = step == loop.total_steps
        if step % loop.log_every == 0 or last:
            values = mean_metrics(pending)
            pending = []
            if not math.isfinite(values["loss"]):
                raise NonFiniteLossError(
                    f"non-finite loss ({values['loss']}) at step {step}; stopping. The last "
                    f"complete checkpoint is step {checkpointer.latest_step()} in "
                    f"{checkpointer.directory}. Lower optim.lr or check the data.")
            if timed_steps:
                elapsed = time.perf_counter() - interval_start
                tokens_per_s = tokens_since * jax.process_count() / elapsed
                values.update(step_time=elapsed / timed_steps, tokens_per_s=tokens_per_s)
                if loop.flops_per_token:
                    values["mfu"] = (loop.flops_per_token * tokens_per_s
                                     / (jax.device_count() * loop.peak_flops))
                tokens_since, timed_steps, interval_start = 0, 0, time.perf_counter()
            writer.write(step, values)
            writer.advance(step)
            if hooks.after_log:
                hooks.after_log(step, state, values)
        eval_metrics = None
        if hooks.evaluate and ((loop.eval_every and step % loop.eval_every == 0) or last):
            eval_metrics = hooks.evaluate(state)
            writer.write(step, eval_metrics, prefix="eval/")
            interval_start = time.perf_counter() if interval_start is not None else None
            tokens_since, timed_steps = 0, 0
        if step % loop.checkpoint_every == 0 or last:
            checkpointer.save(step, state, loader.get_state(), model_config,
                              metrics=eval_metrics, force=last)
    checkpointer.wait()
    return state
