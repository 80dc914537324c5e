"""The generic train step and optimizer: exact gradient accumulation, decay mask, schedules,
one meaning of weight decay in every optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from easyalign import sharding
from easyalign.algorithms import sft
from easyalign.model import create_model, preset
from easyalign.train import optim
from easyalign.train.state import create_train_state, state_shardings
from easyalign.train.step import make_train_step


def sft_batch(rows: int, length: int = 12, seed: int = 0) -> dict:
    """Random SFT rows whose response masks have different lengths (unequal token counts)."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(3, 256, (rows, length)).astype(np.int32)
    mask = np.zeros((rows, length), np.float32)
    for r in range(rows):
        start = rng.randint(2, length - 2)
        mask[r, start:rng.randint(start + 1, length + 1)] = 1.0
    return {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask)}


def one_step(grad_accum: int, batch: dict):
    # Plain SGD: the update is linear in the gradient, so the comparison tests the accumulation
    # itself (Adam's first step, g/(|g|+ε), would amplify rounding on near-zero gradients).
    config = base.get_config()
    config.optim.name, config.optim.lr, config.optim.b1, config.optim.warmup_steps = "sgd", 0.5, 0.0, 0
    mesh = sharding.single_device_mesh()
    model = create_model(preset("tiny", dtype="float32"), mesh, seed=0)
    graphdef, params = nnx.split(model)
    tx, schedule = optim.make_optimizer(config.optim, total_steps=10)
    state = create_train_state(params, tx, seed=0, mesh=mesh)
    step = make_train_step(sft.make_loss(graphdef, packed=False), tx, schedule,
                           state_shardings(state), grad_accum=grad_accum, donate=False)
    with sharding.use_mesh(mesh):
        new_state, metrics = step(state, batch, None)
    return new_state, metrics


def test_gradient_accumulation_4x2_equals_batch_8():
    batch = sft_batch(8)
    full, full_metrics = one_step(1, batch)
    accumulated, acc_metrics = one_step(4, batch)
    np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(acc_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # The step really moved the weights (the comparison above is not between two no-ops).
    initial = create_model(preset("tiny", dtype="float32"), seed=0)
    moved = max(float(jnp.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(nnx.state(initial)), jax.tree.leaves(full.params)))
    assert moved > 1e-3


def test_weight_decay_skips_norms_and_biases():
    model = create_model(preset("tiny", dtype="float32", qkv_bias=True), seed=0)
    mask = nnx.to_pure_dict(optim.decay_mask(nnx.state(model)))
    assert mask["layers"]["attn"]["q_proj"]["kernel"] is True
    assert mask["layers"]["attn"]["q_proj"]["bias"] is False
    assert mask["layers"]["input_norm"]["scale"] is False
    assert mask["final_norm"]["scale"] is False
    assert mask["embed_tokens"]["embedding"] is True


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_is_decoupled_and_scaled_by_the_lr_in_every_optimizer(name):
    """With a zero gradient, one step moves a decayed weight by exactly −η·λ·w (AdamW's decay,
    Loshchilov & Hutter 2019) and leaves norms alone; at η = 0 nothing moves at all."""
    params = {"w": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for lr, wd in ((0.0, 0.1), (0.01, 0.1), (0.5, 0.2)):
        config = base.get_config().optim
        config.name, config.lr, config.weight_decay = name, lr, wd
        config.warmup_steps, config.schedule = 0, "constant"
        tx, _ = optim.make_optimizer(config, total_steps=10)
        updates, _ = tx.update(zero, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["w"], 2.0 - lr * wd * 2.0, rtol=1e-6)
        np.testing.assert_allclose(new["bias"], 2.0, rtol=0)


def test_schedule_warms_up_then_decays_to_the_floor():
    o = ml_collections.ConfigDict(dict(lr=1.0, schedule="cosine", warmup_steps=10,
                                       min_lr_ratio=0.1))
    schedule = optim.make_schedule(o, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(110)), 0.1, rtol=1e-5)
    o.schedule = "linear"
    np.testing.assert_allclose(float(optim.make_schedule(o, 110)(60)), 0.55, rtol=1e-5)


def test_clipping_bounds_the_update_norm():
    o = ml_collections.ConfigDict(dict(name="sgd", lr=1.0, schedule="constant", warmup_steps=0,
                                       min_lr_ratio=1.0, b1=0.0, b2=0.0, eps=1e-8,
                                       weight_decay=0.0, clip_norm=0.5))
    tx, _ = optim.make_optimizer(o, 10)
    params = {"w": jnp.ones((4, 4))}
    updates, _ = tx.update({"w": jnp.full((4, 4), 10.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.5, rtol=1e-5)


def test_packed_loss_equals_unpacked_loss():
    """Two examples packed into one row (segment ids, restarting positions) give the same SFT
    loss and gradients as the same examples in two padded rows."""
    model = create_model(preset("tiny", dtype="float32"), seed=0)
    graphdef, params = nnx.split(model)
    rng = np.random.RandomState(3)
    a, b = rng.randint(3, 256, 7), rng.randint(3, 256, 9)
    mask_a, mask_b = (np.arange(7) >= 3).astype(np.float32), (np.arange(9) >= 4).astype(np.float32)
    length = 16
    packed = {
        "tokens": np.concatenate([a, b]).astype(np.int32)[None],
        "loss_mask": np.concatenate([mask_a, mask_b])[None],
        "positions": np.concatenate([np.arange(7), np.arange(9)]).astype(np.int32)[None],
        "segment_ids": np.asarray([[1] * 7 + [2] * 9], np.int32),
    }
    rows = np.zeros((2, length), np.int32)
    masks = np.zeros((2, length), np.float32)
    rows[0, :7], rows[1, :9], masks[0, :7], masks[1, :9] = a, b, mask_a, mask_b
    unpacked = {"tokens": rows, "loss_mask": masks}
    grad = jax.value_and_grad(lambda p, batch, packed: sft.make_loss(graphdef, packed)(
        p, jax.tree.map(jnp.asarray, batch), None, None), has_aux=True)
    (loss_p, _), grads_p = grad(params, packed, True)
    (loss_u, _), grads_u = grad(params, unpacked, False)
    np.testing.assert_allclose(loss_p, loss_u, atol=1e-5, rtol=0)
    for x, y in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
