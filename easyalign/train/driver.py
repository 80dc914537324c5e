"""The train driver: a phase's model, loss and loader through the generic loop.

    train(run, model=..., loss_fn_for=..., loader=...)   state, resume, loop, final model
    fit(run, params=..., loss_fn=..., loop=..., hooks=...)   the same without the export, for
                                                             an on-policy phase with rollouts
    make_evaluator(run, batches, metric_fn)              evaluate(params) -> averaged metrics

and a run writes to `config.workdir`:

    checkpoints/         Orbax train-state checkpoints (latest N + best), resumable
    logs/                metrics.jsonl, tensorboard events, samples.txt
    plots/               PNG curves
    model/               the final model (`hf.models.save_model`)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from easyalign import sharding
from easyalign.hf.checkpoint import MODEL_DIR
from easyalign.hf.models import save_model, stage_done
from easyalign.model import ModelConfig, Transformer, lora
from easyalign.train import checkpoint as ckpt
from easyalign.train import loop as train_loop
from easyalign.train import metrics as train_metrics
from easyalign.train import optim, rundir, state as train_state
from easyalign.train.step import make_train_step


def finish(run, out: Path, history: dict, metric: str | None = None) -> None:
    """The one line every training phase ends with: the model directory and its headline
    metric (the last held-out `metric`, else the last training loss). Releases the lock."""
    if run.is_main:
        name = f"eval/{metric}" if metric and history.get(f"eval/{metric}") else "loss"
        points = history.get(name) or []
        headline = f"; {name} {points[-1][1]:.4f} at step {points[-1][0]}" if points else ""
        print(f"[{run.config.phase}] done: model in {out}{headline}", flush=True)
    rundir.release(run.workdir)


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    return train_metrics.flops_per_token(config.param_count(), config.num_layers,
                                         config.hidden_size, seq_len)


def train(run, *, model: Transformer, loss_fn_for: Callable, loader, frozen: Any = None,
          evaluate_for: Callable | None = None, best_metric: str | None = None,
          tokens: Callable[[dict], int] | None = None, after_log: Callable | None = None,
          total_steps: int | None = None) -> tuple[nnx.State, Any]:
    """Train `model` with `loss_fn_for(graphdef)`; resumes from `workdir/checkpoints`.

    `evaluate_for(graphdef)` returns `evaluate(params) -> metrics`. Returns the final params
    and the graphdef; the final model is written to `workdir/model/`.
    """
    c = run.config
    steps = total_steps or c.train.steps
    graphdef, params = nnx.split(model)
    config = model.config
    evaluate = evaluate_for(graphdef) if evaluate_for else None
    hooks = train_loop.StepHooks(evaluate=(lambda s: evaluate(s.params)) if evaluate else None,
                                 tokens=tokens, after_log=after_log)
    # The batches' real width (`runsetup.batch_width`: it can be under data.max_length).
    shape = getattr(loader, "fingerprint", {})
    width = shape["max_length"] if shape.get("kind") in ("sft", "teacher", "preference") \
        else c.data.max_length
    loop = loop_config(run, steps, flops_per_token=flops_per_token(config, width))
    state, history = fit(run, params=params, loss_fn=loss_fn_for(graphdef), loader=loader,
                         loop=loop, model_config=config, frozen=frozen,
                         hooks=hooks, best_metric=best_metric)
    if history is not None:
        finish(run, save_model(run, state.params, graphdef), history, best_metric)
    return state.params, graphdef


def loop_config(run, total_steps: int, **overrides) -> train_loop.LoopConfig:
    """The generic loop's settings from the `train` and `perf` blocks; what a step is called
    follows the phase (`rundir.step_unit`)."""
    t = run.config.train
    settings = dict(
        total_steps=total_steps, log_every=t.log_every, eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every, dead_steps=t.dead_model_steps,
        peak_flops=run.config.perf.peak_tflops * 1e12, unit=rundir.step_unit(run.config.phase))
    return train_loop.LoopConfig(**(settings | overrides))


def fit(run, *, params, loss_fn: Callable, loader, loop: train_loop.LoopConfig,
        model_config: ModelConfig, frozen: Any = None,
        hooks: train_loop.StepHooks = train_loop.StepHooks(), best_metric: str | None = None,
        optimizer_steps: int | None = None, update_for: Callable | None = None):
    """Create (or restore) the train state and run the generic loop to `loop.total_steps`.

    `optimizer_steps` (default: the loop's steps) sizes the learning-rate schedule; an
    on-policy algorithm takes several per iteration, and builds its update from the jitted
    step with `update_for(step_fn)`. Returns `(state, history)`; history is None when the run
    had already completed (nothing trained, nothing to write).
    """
    c = run.config
    unit = loop.unit
    tx, schedule = optim.make_optimizer(c.optim, optimizer_steps or loop.total_steps)
    base = None
    if lora.has_adapters(params):  # only the adapters (and a scalar head) are trained
        params, loss_fn, frozen, hooks, base = with_frozen_base(params, loss_fn, frozen, hooks)
    checkpointer = ckpt.Checkpointer(run.workdir / "checkpoints", keep=c.train.keep_checkpoints,
                                     best_metric=best_metric,
                                     async_save=c.train.async_checkpointing)
    state = train_state.create_train_state(params, tx, c.train.seed, run.mesh)
    del params
    latest = checkpointer.latest_step()
    writer = train_metrics.MetricsWriter(run.workdir, total_steps=loop.total_steps,
                                         progress_bar=c.train.progress_bar, resume_step=latest)
    if latest is None:  # from step 0: what a run killed before its first checkpoint logged goes
        writer.resume(-1)
    else:
        state, data_state = checkpointer.restore(latest, train_state.abstract_like(state))
        if latest >= loop.total_steps and stage_done(run.workdir):
            # A rerun of a finished run: nothing to train, nothing to rewrite.
            checkpointer.close()
            writer.close()
            if run.is_main:
                print(rundir.complete_message(c.phase, latest, loop.total_steps, unit,
                                              run.workdir / MODEL_DIR), flush=True)
            rundir.release(run.workdir)
            return _joined(state, base), None
        if data_state.get("loader"):
            loader.set_state(data_state["loader"].encode())
        if hooks.extra:
            hooks.extra.set_state(data_state)
        writer.resume(latest)
        writer.note(f"[resume] {run.workdir.name}: continuing from {unit} {latest}")
    shardings = train_state.state_shardings(state)
    try:
        with sharding.use_mesh(run.mesh):
            step_fn = make_train_step(loss_fn, tx, schedule, shardings,
                                      grad_accum=c.train.grad_accum)
            state = train_loop.run_loop(
                state=state, step_fn=update_for(step_fn) if update_for else step_fn,
                frozen=frozen, loader=_LoaderState(loader), mesh=run.mesh, loop=loop,
                checkpointer=checkpointer, writer=writer, model_config=model_config.to_dict(),
                hooks=hooks, start_step=latest or 0)
    except BaseException:
        # The progress bar's line ends (the error's one line then starts a line of its own)
        # and the metrics written so far are flushed.
        try:
            writer.close()
        except Exception:  # noqa: BLE001 — a full disk, say: the run's own error is reported
            pass
        raise
    checkpointer.close()
    if c.train.plot:
        writer.plot(run.workdir / "plots")
    writer.close()
    return _joined(state, base), writer.history


def with_frozen_base(params, loss_fn: Callable, frozen: Any, hooks: train_loop.StepHooks):
    """A LoRA run's training split: `(trainable, loss_fn', (base, frozen), hooks', base)`.

    The train state (optimizer, checkpoints) holds only the trainable part (`lora.split`); the
    base travels in the step's `frozen` argument, which is neither differentiated nor donated,
    so no base gradient is ever computed and no optimizer state exists for it. `loss_fn'`
    joins the two before calling `loss_fn` with the whole params, and replaces a
    `lora.BaseReference` in `frozen` by the base (a reference model with adapters off, no
    copy); the hooks see states with the whole params.
    """
    trainable, base = lora.split(params)

    def loss_with_base(trainable, batch, rng, base_and_frozen):
        base, rest = base_and_frozen
        whole = lora.join(trainable, base)
        return loss_fn(whole, batch, rng, lora.resolve(rest, whole))

    def view(hook):
        return None if hook is None else lambda *a: hook(*_with_joined_state(a, base))

    hooks = dataclasses.replace(hooks, evaluate=view(hooks.evaluate),
                                after_log=view(hooks.after_log), rollout=view(hooks.rollout))
    return trainable, loss_with_base, (base, frozen), hooks, base


def _joined(state, base):
    """`state` with the whole params (trainable joined with the frozen base, if any)."""
    return state if base is None else dataclasses.replace(
        state, params=lora.join(state.params, base))


def _with_joined_state(args: tuple, base) -> tuple:
    """A hook's arguments with its train state (the one TrainState among them) joined."""
    return tuple(_joined(a, base) if isinstance(a, train_state.TrainState) else a for a in args)


class _LoaderState:
    """Adapts a data Loader (bytes state) to the loop's JSON checkpoint item."""

    def __init__(self, loader):
        self.loader = loader

    def __next__(self):
        return next(self.loader)

    def get_state(self) -> dict:
        return {"loader": self.loader.get_state().decode()}


def evaluation_average(batches_metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Combine per-batch `(sum, count)` metrics: each key `k` averages `k_sum / k_count`."""
    totals: dict[str, float] = {}
    for metrics in jax.device_get(batches_metrics):
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
    return {key[:-4]: totals[key] / max(totals[key[:-4] + "_count"], 1e-12)
            for key in totals if key.endswith("_sum")}


def make_evaluator(run, batches: list[dict], metric_fn: Callable, frozen: Any = None
                   ) -> Callable[[Any], dict[str, float]]:
    """`evaluate(params) -> metrics` over fixed host batches.

    `metric_fn(params, batch, frozen)` returns `{name_sum, name_count}` pairs per batch (so
    padded rows and unequal token counts average correctly); the result maps each `name` to
    Σ sums / Σ counts over all batches.
    """
    # A `lora.BaseReference` in `frozen` is the evaluated params' own base (adapters off).
    jitted = jax.jit(lambda params, batch, frozen: metric_fn(params, batch,
                                                             lora.resolve(frozen, params)))

    def evaluate(params) -> dict[str, float]:
        with sharding.use_mesh(run.mesh):
            outs = [jitted(params, train_loop.to_global_batch(b, run.mesh), frozen)
                    for b in batches]
        return evaluation_average(outs)

    return evaluate
