"""Tests for easyalign.losses.dpo: every variant against hand-computed values on fixed inputs."""

import dataclasses

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from easyalign import losses

BETA = 0.1
PI_W = np.array([-10.0, -12.0, -7.5])
PI_L = np.array([-11.0, -10.0, -9.0])
REF_W = np.array([-10.5, -11.0, -8.0])  # chosen log-ratios   0.5, -1.0, 0.5
REF_L = np.array([-10.5, -10.5, -8.5])  # rejected log-ratios -0.5, 0.5, -0.5
Z = np.array([1.0, -1.5, 1.0])  # log-ratio differences
H = BETA * Z


def _dpo(loss_type, label_smoothing=0.0):
    return losses.dpo_loss(
        PI_W, PI_L, REF_W, REF_L, beta=BETA, loss_type=loss_type, label_smoothing=label_smoothing
    )


def test_sigmoid():
    loss, _ = _dpo("sigmoid")
    # mean -log sigma(h) = mean log(1 + exp(-h)), h = 0.1, -0.15, 0.1
    assert_allclose(np.mean(np.log1p(np.exp(-H))), 0.6865834559788913)
    assert_allclose(loss, 0.6865834559788913, rtol=1e-6)


def test_sigmoid_label_smoothing():
    loss, _ = _dpo("sigmoid", label_smoothing=0.1)
    # mean [0.9 log(1 + exp(-h)) + 0.1 log(1 + exp(h))]
    expected = np.mean(0.9 * np.log1p(np.exp(-H)) + 0.1 * np.log1p(np.exp(H)))
    assert_allclose(expected, 0.6882501226455581)
    assert_allclose(loss, 0.6882501226455581, rtol=1e-6)


def test_ipo():
    loss, _ = _dpo("ipo")
    # (z - 1/(2 beta))^2 = (z - 5)^2 = 16, 42.25, 16
    assert_allclose(loss, 24.75, rtol=1e-6)


def test_hinge():
    loss, _ = _dpo("hinge")
    # max(0, 1 - h) = 0.9, 1.15, 0.9
    assert_allclose(loss, 0.98333333, rtol=1e-6)
    # A pair with h >= 1 contributes nothing.
    zero = np.array([0.0])
    loss, _ = losses.dpo_loss(zero, np.array([-20.0]), zero, zero, beta=BETA, loss_type="hinge")
    assert float(loss) == 0.0


def test_metrics():
    _, m = _dpo("sigmoid")
    assert_allclose(m["rewards/chosen"], np.mean(BETA * np.array([0.5, -1.0, 0.5])), atol=1e-7)
    assert_allclose(m["rewards/rejected"], np.mean(BETA * np.array([-0.5, 0.5, -0.5])), atol=1e-7)
    assert_allclose(m["rewards/accuracy"], 2.0 / 3.0, rtol=1e-6)  # pair 2 has chosen < rejected
    assert_allclose(m["rewards/margin"], BETA * 0.5 / 3.0, rtol=1e-5)
    assert_allclose(m["log_ratio"], (0.0 / 3.0 + -0.5 / 3.0) / 2.0, rtol=1e-5)
    assert_allclose(m["logps/chosen"], np.mean(PI_W), rtol=1e-6)
    assert_allclose(m["logps/rejected"], -10.0, rtol=1e-6)


def test_gradient_raises_chosen_and_lowers_rejected():
    def loss(pi_w, pi_l):
        return losses.dpo_loss(pi_w, pi_l, REF_W, REF_L, beta=BETA)[0]

    g_w, g_l = jax.grad(loss, argnums=(0, 1))(PI_W.astype(np.float32), PI_L.astype(np.float32))
    assert np.all(np.asarray(g_w) < 0) and np.all(np.asarray(g_l) > 0)
    # d/d pi_w of mean -log sigma(beta z) = -beta sigma(-h) / B
    assert_allclose(g_w, -BETA / (1 + np.exp(H)) / 3, rtol=1e-5)


def test_rejects_unknown_type_and_misplaced_smoothing():
    with pytest.raises(ValueError, match="valid: hinge, ipo, sigmoid"):
        _dpo("kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        _dpo("ipo", label_smoothing=0.1)


def test_jits_with_loss_type_bound_statically():
    fn = jax.jit(lambda *a: losses.dpo_loss(*a, beta=BETA, loss_type="ipo")[0])
    assert_allclose(fn(PI_W, PI_L, REF_W, REF_L), 24.75, rtol=1e-6)


def test_ipo_is_length_averaged_by_default():
    """IPO is defined on length-averaged log-probs: with `dpo.average_logps` unset, the same
    per-token margin costs a 5-token and a 50-token answer the same (on sums: 0 vs 2025)."""
    from configs import dpo as dpo_config
    from easyalign.algorithms import dpo

    def loss_for(length, average):
        mask = np.ones((2, length), np.float32)
        # A per-token log-ratio margin of 1 (chosen: +1 per token, rejected: 0): summed over 5
        # tokens it is exactly IPO's target 1/(2β) = 5; over 50 tokens it overshoots by 45.
        per_token_margin = 1.0 / (2 * BETA * 5)
        pi = np.stack([np.full(length, per_token_margin), np.zeros(length)]).astype(np.float32)
        seq = losses.sequence_logps(pi, mask, average=average)
        loss, _ = losses.dpo_loss(seq[:1], seq[1:], np.zeros(1), np.zeros(1), beta=BETA,
                                  loss_type="ipo")
        return float(loss)

    assert_allclose(loss_for(5, False), 0.0, atol=1e-6)  # sums: the target is met at 5 tokens
    assert_allclose(loss_for(50, False), (10 * 5.0 - 5.0) ** 2, rtol=1e-5)  # ... and 81× later
    assert_allclose(loss_for(5, True), loss_for(50, True), rtol=1e-6)  # averages: equal

    defaults = {}
    for loss_type in ("sigmoid", "ipo", "hinge"):
        c = dpo_config.get_config()
        c.dpo.loss_type = loss_type
        assert c.dpo.average_logps is None
        dpo.check_config(c)
        defaults[loss_type] = c.dpo.average_logps
    assert defaults == {"sigmoid": False, "ipo": True, "hinge": False}
    c = dpo_config.get_config()
    c.dpo.update(loss_type="ipo", average_logps=False)  # an explicit choice is kept
    dpo.check_config(c)
    assert c.dpo.average_logps is False


def test_settings_are_frozen_hashable_and_jit_static():
    from configs import dpo as dpo_config

    block = dpo_config.get_config().dpo
    settings = losses.DPOSettings.from_config(block)
    assert settings == losses.DPOSettings(beta=block.beta, average_logps=False)
    assert hash(settings) == hash(losses.DPOSettings.from_config(block))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.beta = 1.0
    block.loss_type = "ipo"  # average_logps unset: the loss's own convention
    assert losses.DPOSettings.from_config(block).average_logps is True
    for fields, match in ((dict(loss_type="kto"), "^unknown dpo.loss_type 'kto'; valid: hinge, "
                           "ipo, sigmoid$"), (dict(beta=0.0), "dpo.beta"),
                          (dict(sft_weight=-1.0), "dpo.sft_weight"),
                          (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(settings, **fields)

    def loss(s, *pairs):
        return losses.dpo_loss(*pairs, beta=s.beta, loss_type=s.loss_type)[0]

    ipo = losses.DPOSettings(beta=BETA, loss_type="ipo")
    assert_allclose(jax.jit(loss, static_argnums=0)(ipo, PI_W, PI_L, REF_W, REF_L), 24.75,
                    rtol=1e-6)
