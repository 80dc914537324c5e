"""Optimizers and learning-rate schedules from config, built from optax parts.

    lr(s) = lr · s / warmup                                   for s < warmup
    lr(s) = cosine / linear decay from lr to min_lr_ratio·lr  afterwards (or constant)

The update is `clip_by_global_norm(clip_norm)` followed by the optimizer; decoupled weight
decay applies only to matrices (≥ 2-D weights), never to norm scales or biases — the usual
practice, because decaying a norm's scale toward 0 changes what the layer computes.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adafactor", "sgd", "lion")


def make_schedule(optim, total_steps: int) -> optax.Schedule:
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule {optim.schedule!r} not in {SCHEDULES}")
    warmup = max(0, min(optim.warmup_steps, total_steps))
    decay_steps = max(1, total_steps - warmup)
    end = optim.lr * optim.min_lr_ratio
    if optim.schedule == "cosine":
        after = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio)
    elif optim.schedule == "linear":
        after = optax.linear_schedule(optim.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(optim.lr)
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


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(transformation, schedule)` for the `optim` config block."""
    schedule = make_schedule(optim, total_steps)
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"optim.name {optim.name!r} not in {OPTIMIZERS}")
    if optim.name == "adamw":
        core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay, mask=decay_mask)
    elif optim.name == "lion":
        core = optax.lion(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                          mask=decay_mask)
    elif optim.name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=optim.weight_decay or None,
                               weight_decay_mask=decay_mask)
    else:
        core = optax.chain(optax.add_decayed_weights(optim.weight_decay, decay_mask),
                           optax.sgd(schedule, momentum=optim.b1))
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    return optax.chain(*parts, core), schedule
