"""Optimizers and learning-rate schedules from config, built from optax parts.

    lr(s) = lr · s / warmup                                   for s < warmup
    lr(s) = cosine / linear decay from lr to min_lr_ratio·lr  afterwards (or constant)

The update is `clip_by_global_norm(clip_norm)` followed by the optimizer, then weight decay.
Weight decay has one meaning in every optimizer: decoupled and scaled by the learning rate, as
AdamW defines it (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Alg. 2):

    w ← w − η(s)·(u(g) + λ·w)

with u(g) the optimizer's own update, so at η = 0 nothing moves and each step shrinks a weight
by η·λ·w. (optax's adafactor applies `weight_decay_rate` unscaled — λ·w per step even at
η = 0 — and decay added before SGD's momentum is L2 regularisation, not decoupled: neither is
used.) It applies only to matrices (≥ 2-D weights), never to norm scales or biases — the usual
practice, because decaying a norm's scale toward 0 changes what the layer computes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from easyalign.config_keys import check_choice

# name -> `(optim, decay steps) -> optax schedule` after the warm-up (from optim.lr down).
SCHEDULES = {
    "cosine": lambda optim, decay_steps: optax.cosine_decay_schedule(
        optim.lr, decay_steps, alpha=optim.min_lr_ratio),
    "linear": lambda optim, decay_steps: optax.linear_schedule(
        optim.lr, optim.lr * optim.min_lr_ratio, decay_steps),
    "constant": lambda optim, decay_steps: optax.constant_schedule(optim.lr),
}
# name -> `(optim, schedule) -> optax transformation` (without clipping and weight decay).
OPTIMIZERS = {
    "adamw": lambda optim, schedule: optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps),
    "adafactor": lambda optim, schedule: optax.adafactor(schedule),
    "sgd": lambda optim, schedule: optax.sgd(schedule, momentum=optim.b1),
    "lion": lambda optim, schedule: optax.lion(schedule, b1=optim.b1, b2=optim.b2,
                                               weight_decay=0.0),
}


def make_schedule(optim, total_steps: int) -> optax.Schedule:
    check_choice("optim.schedule", optim.schedule, SCHEDULES)
    warmup = max(0, min(optim.warmup_steps, total_steps))
    after = SCHEDULES[optim.schedule](optim, max(1, total_steps - warmup))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: every array of rank ≥ 2 (matrices, embeddings).

    Stacked layers carry a leading `layers` axis, so a stacked norm scale is 2-D; the rule is
    therefore applied to the per-layer rank, read off the parameter path.
    """
    def is_matrix(path, leaf) -> bool:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        rank = leaf.ndim - (1 if "layers" in keys else 0)
        return rank >= 2 and keys[-1] != "bias" and keys[-1] != "scale"

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def decoupled_weight_decay(schedule: optax.Schedule, weight_decay: float, mask=decay_mask
                           ) -> optax.GradientTransformation:
    """`u ← u − η(s)·λ·w` for the weights `mask` selects; η(s) is the schedule at this step.

    Chained after an optimizer whose update is already scaled by −η(s), it gives AdamW's
    decoupled decay (Loshchilov & Hutter 2019) to any optimizer.
    """
    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("decoupled_weight_decay needs the params")
        rate = schedule(state.count) * weight_decay
        keep = mask(params) if callable(mask) else mask
        updates = jax.tree.map(
            lambda u, w, k: u - (rate * w).astype(u.dtype) if k else u, updates, params, keep)
        return updates, optax.ScaleByScheduleState(
            count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(transformation, schedule)` for the `optim` config block."""
    schedule = make_schedule(optim, total_steps)
    check_choice("optim.name", optim.name, OPTIMIZERS)
    core = OPTIMIZERS[optim.name](optim, schedule)
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    parts.append(core)
    if optim.weight_decay:
        parts.append(decoupled_weight_decay(schedule, optim.weight_decay))
    return optax.chain(*parts), schedule
