"""The one jitted train step every algorithm goes through.

An algorithm supplies a pure loss

    loss_fn(params, batch, rng, frozen) -> (loss, metrics)

where `frozen` holds parameters that are read but never trained (reference, reward, teacher).
The step splits the global batch into `grad_accum` micro-batches, runs them under `lax.scan`,
and combines them exactly as one big batch would:

    g = Σ_i w_i ∇L_i / Σ_i w_i,     L = Σ_i w_i L_i / Σ_i w_i

with w_i = `metrics["loss_weight"]` of micro-batch i (e.g. its number of loss tokens, so that a
token-mean loss stays a token-mean over the whole batch; 1 when the loss does not say). Then
global-norm clipping and the optimizer update run inside the optimizer chain, and the state is
donated so its buffers are updated in place.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from easyalign.train.state import TrainState

LossFn = Callable[[Any, dict, jax.Array, Any], tuple[jax.Array, dict]]


def _micro_batches(batch: dict, n: int) -> dict:
    """`[B, ...]` → `[n, B/n, ...]`, micro-batch j taking rows j, j+n, ... .

    Strided rather than contiguous so that every micro-batch is spread over all devices that
    hold a slice of the batch dimension.
    """
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum={n}")
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params, batch: dict, rng: jax.Array, frozen,
                         grad_accum: int):
    """`(loss, metrics, grads)` of the whole batch, computed micro-batch by micro-batch."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        # One batch: its own token mean is the answer; no weighting passes over the gradients.
        (loss, metrics), grads = grad_fn(params, batch, rng, frozen)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()
                   if k != "loss_weight"}
        return loss, metrics, grads

    def weighted(micro, micro_rng):
        (loss, metrics), grads = grad_fn(params, micro, micro_rng, frozen)
        weight = jnp.asarray(metrics.pop("loss_weight", 1.0), jnp.float32)
        metrics = {k: jnp.asarray(v, jnp.float32) * weight for k, v in metrics.items()}
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) * weight, grads)
        return loss * weight, metrics, grads, weight

    micro = _micro_batches(batch, grad_accum)
    rngs = jax.random.split(rng, grad_accum)
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(weighted, first, rngs[0]))

    def body(total, xs):
        out = weighted(*xs)
        return jax.tree.map(jnp.add, total, out), None

    (loss, metrics, grads, weight), _ = jax.lax.scan(body, zeros, (micro, rngs))
    # An all-masked batch has weight 0; dividing by max(·, tiny) keeps it finite (and zero).
    norm = jnp.maximum(weight, 1e-12)
    grads = jax.tree.map(lambda g: g / norm, grads)
    metrics = {k: v / norm for k, v in metrics.items()}
    return loss / norm, metrics, grads


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, state_shardings, *, grad_accum: int = 1,
                    donate: bool = True):
    """`step(state, batch, frozen) -> (state, metrics)`, jitted with donated state."""

    def step(state: TrainState, batch: dict, frozen) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        loss, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, step_rng,
                                                    frozen, grad_accum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       lr=jnp.asarray(schedule(state.step), jnp.float32))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return jax.jit(step, out_shardings=(state_shardings, None),
                   donate_argnums=(0,) if donate else (), compiler_options=step_compiler_options())


def step_compiler_options() -> dict[str, str]:
    """XLA options of a train step: on GPUs, no command buffers (CUDA graphs). A step runs
    once per call on freshly donated buffers, so XLA updates its graphs' addresses on every
    call — host time before the first kernel that a loop waiting on its rollout (GRPO, PPO)
    cannot hide: measured on an H200, the GRPO benchmark's update (1,300 kernels) 0.269 →
    0.263 s without them. Decode loops keep theirs (the flag is per executable; with them off
    everywhere the sampler's 256 steps took 29 ms more)."""
    return {"xla_gpu_enable_command_buffer": ""} if jax.default_backend() == "gpu" else {}
