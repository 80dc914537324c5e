"""The generic training loop: steps, logging, evaluation, checkpoints, resume, plots.

Nothing here knows which algorithm runs: it pulls host batches from a loader (an iterator with
`get_state`/`set_state`), places them as global arrays on the mesh, calls the jitted step,
and at the configured intervals logs, evaluates and checkpoints.

On-policy algorithms (PPO, GRPO) use the same loop with one *iteration* per loader batch:

    prompts ──► hooks.rollout(step, state, prompts, writer) ──► (update batch, rollout metrics)
            ──► step_fn(state, update batch, frozen)        ──► (state, update metrics)
            ──► hooks.after_update(step, metrics)               e.g. adapt the KL coefficient

`step_fn` may then be several optimizer steps (epochs over minibatches of the rollout,
`make_minibatch_update`), and `hooks.extra` holds state that is checkpointed with the loader's
(the adaptive KL coefficient), so a resumed run continues the identical trajectory. Metrics stay on the device
between log steps — fetching them is a host-device sync point, so it happens every
`log_every` steps only.

Divergence is watched on every step without a sync: `DivergenceGuard.observe` folds each
step's loss and gradient norm into two device scalars (the first step whose loss or gradient
norm is not finite, and the current run of steps with gradient norm 0), and `check` reads them
at the next log or checkpoint boundary — before a checkpoint is written, so no checkpoint ever
holds the NaN weights. A non-finite step stops the run (`NonFiniteLossError`); a gradient norm
of 0 for `dead_steps` steps in a row (a dead model: nothing will ever change again) is warned.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from easyalign.sharding import to_global_batch
from easyalign.train.checkpoint import Checkpointer
from easyalign.train.metrics import MetricsWriter


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last complete checkpoint is still on disk."""


@jax.jit
def _watch(flags, step, loss, grad_norm):
    first_bad, zero_run = flags
    bad = jnp.logical_not(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    first_bad = jnp.where((first_bad < 0) & bad, step, first_bad)
    zero_run = jnp.where(grad_norm == 0, zero_run + 1, 0)
    return first_bad, zero_run


class DivergenceGuard:
    """Per-step non-finite and dead-model watch, read only at boundaries (module docstring)."""

    def __init__(self, unit: str = "step", dead_steps: int = 20, hint: str = "Lower optim.lr "
                 "or check the data."):
        self.unit, self.dead_steps, self.hint = unit, dead_steps, hint
        self.flags = (jnp.asarray(-1, jnp.int32), jnp.asarray(0, jnp.int32))
        self.warned = False

    def observe(self, step: int, metrics: dict) -> None:
        """Fold one step's `loss` and `grad_norm` in (asynchronous: no host-device sync)."""
        self.flags = _watch(self.flags, np.int32(step), metrics["loss"], metrics["grad_norm"])

    def check(self, checkpointer: Checkpointer) -> None:
        """Raise NonFiniteLossError if any step since the start diverged; warn on a dead model.
        A host-device sync point: call it at log and checkpoint boundaries only."""
        first_bad, zero_run = (int(x) for x in jax.device_get(self.flags))
        if first_bad >= 0:
            latest = checkpointer.latest_step()
            kept = (f"the last complete checkpoint is {self.unit} {latest} in "
                    f"{checkpointer.directory}" if latest is not None else
                    "no checkpoint was written before it")
            raise NonFiniteLossError(
                f"non-finite loss or gradient norm at {self.unit} {first_bad}; stopped without "
                f"saving it ({kept}). {self.hint}")
        if self.dead_steps and zero_run >= self.dead_steps and not self.warned:
            self.warned = True
            if jax.process_index() == 0:
                print(f"[train] warning: gradient norm 0 for the last {zero_run} {self.unit}s: "
                      "a dead model (nothing will change any more; was optim.lr too high?)",
                      flush=True)


@dataclasses.dataclass
class LoopConfig:
    total_steps: int                   # loop steps (an on-policy algorithm: iterations)
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    dead_steps: int = 20               # warn after this many steps of gradient norm 0
    flops_per_token: float = 0.0       # for MFU; 0 = not reported
    peak_flops: float = 989e12         # per device
    unit: str = "step"                 # what one loop step is called in messages and metrics
    hint: str = "Lower optim.lr or check the data."  # said when the loss diverges
    eval_at_start: bool = False        # evaluate once at step 0 as well (the starting model)


@dataclasses.dataclass
class StepHooks:
    """Optional per-run callbacks of an algorithm.

    evaluate(state) -> metrics            run every eval_every steps and at the end
    tokens(batch) -> int                  real (non-padding) tokens per step (tokens/s, MFU)
    after_log(step, state, metrics)       e.g. log sample completions
    rollout(step, state, batch, writer)   -> (update batch, metrics), before each update: the
                                          on-policy phase (sample, score, advantages)
    after_update(step, metrics)           e.g. adapt the KL coefficient to the measured KL
    extra                                 an object with `get_state() -> dict` (JSON) and
                                          `set_state(dict)`, checkpointed with the loader
    """

    evaluate: Callable[[Any], dict[str, float]] | None = None
    tokens: Callable[[dict], int] | None = None
    after_log: Callable[[int, Any, dict], None] | None = None
    rollout: Callable[[int, Any, dict, MetricsWriter], tuple[Any, dict]] | None = None
    after_update: Callable[[int, dict], None] | None = None
    extra: Any = None


def make_minibatch_update(step_fn: Callable, take: Callable) -> Callable:
    """`update(state, (batch, minibatches), frozen) -> (state, mean metrics)`: one optimizer
    step of `step_fn` per minibatch (`take(batch, rows)` for each row-index array), the
    metrics averaged over them on the device (no host-device sync)."""

    def update(state, rolled, frozen):
        batch, minibatches = rolled
        step_metrics = []
        for rows in minibatches:
            state, metrics = step_fn(state, take(batch, rows), frozen)
            step_metrics.append(metrics)
        return state, jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *step_metrics)

    return update


def mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Fetch a list of per-step device metrics and average each key."""
    fetched = jax.device_get(pending)  # host-device sync point
    keys = fetched[-1].keys()
    return {k: float(np.mean([np.asarray(m[k]) for m in fetched])) for k in keys}


def run_loop(*, state, step_fn: Callable, frozen: Any, loader: Iterator[dict], mesh: Mesh,
             loop: LoopConfig, checkpointer: Checkpointer, writer: MetricsWriter,
             model_config: dict, hooks: StepHooks = StepHooks(), start_step: int | None = None):
    """Train from `start_step` (default `state.step`) to `loop.total_steps`; returns the final
    state.

    Checkpoints every `checkpoint_every` steps and at the end (with the evaluation metrics of
    that step when there are any, so the best one can be kept).
    """
    step = int(jax.device_get(state.step)) if start_step is None else start_step
    pending: list[dict] = []
    tokens_since, interval_start, timed_steps = 0, None, 0
    guard = DivergenceGuard(loop.unit, loop.dead_steps, loop.hint)
    if loop.eval_at_start and step == 0 and hooks.evaluate:
        writer.status("evaluating (compiles)")
        writer.write(0, hooks.evaluate(state), prefix="eval/")
    writer.status(f"first {loop.unit} (compiles)")
    while step < loop.total_steps:
        host_batch = next(loader)
        batch = to_global_batch(host_batch, mesh)
        rollout_metrics = {}
        if hooks.rollout:
            batch, rollout_metrics = hooks.rollout(step + 1, state, batch, writer)
        state, metrics = step_fn(state, batch, frozen)
        metrics = rollout_metrics | metrics
        step += 1
        guard.observe(step, metrics)
        if hooks.after_update:
            hooks.after_update(step, metrics)
        pending.append(metrics)
        if interval_start is None:
            # The first step compiles; time from its end so tokens/s measures steady state.
            jax.block_until_ready(state.step)
            writer.status("")
            interval_start = time.perf_counter()
        else:
            timed_steps += 1
            tokens_since += (hooks.tokens(host_batch) if hooks.tokens else
                             int(np.prod(next(iter(host_batch.values())).shape[:2])))
        last = step == loop.total_steps
        if step % loop.log_every == 0 or last:
            guard.check(checkpointer)
            values = mean_metrics(pending)
            pending = []
            if timed_steps:
                elapsed = time.perf_counter() - interval_start
                tokens_per_s = tokens_since * jax.process_count() / elapsed
                values[f"{loop.unit}_time"] = elapsed / timed_steps
                if tokens_since:
                    values["tokens_per_s"] = tokens_per_s
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
            guard.check(checkpointer)  # never a checkpoint of diverged weights
            data_state = loader.get_state() | (hooks.extra.get_state() if hooks.extra else {})
            checkpointer.save(step, state, data_state, model_config, metrics=eval_metrics,
                              force=last)
    checkpointer.wait()
    return state
