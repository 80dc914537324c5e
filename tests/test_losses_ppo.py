"""Tests for easyalign.losses.ppo: GAE vs a python loop, clipped losses and KL control by hand."""

import dataclasses

import jax
import numpy as np
import pytest
from numpy.testing import assert_allclose

from easyalign import losses

# Row 0: prompt at t = 0, 1, response t = 2..4.
# Row 1: prompt at t = 0, response t = 1, 2, padding t = 3, 4.
MASK = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=np.float32)
REWARDS = np.array([[9.0, 9.0, 0.1, -0.2, 1.0], [9.0, 0.3, -1.0, 9.0, 9.0]])
# Values off the response (9s) must not leak into the advantages.
VALUES = np.array([[9.0, 9.0, 0.5, 0.4, 0.7], [9.0, -0.2, 0.6, 9.0, 9.0]])


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE per row over the response span, with V = 0 after its last token."""
    adv = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        span = [t for t in range(rewards.shape[1]) if mask[b, t]]
        last_adv = 0.0
        for i in reversed(range(len(span))):
            t = span[i]
            next_value = values[b, span[i + 1]] if i + 1 < len(span) else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last_adv = delta + gamma * lam * last_adv
            adv[b, t] = last_adv
    return adv


def test_gae_matches_loop_with_masks():
    gamma, lam = 0.9, 0.8
    adv, ret = losses.gae(REWARDS, VALUES, MASK, gamma, lam)
    expected = _gae_loop(REWARDS, VALUES, MASK, gamma, lam)
    assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
    assert_allclose(ret, (expected + VALUES) * MASK, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(adv)[MASK == 0] == 0.0)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    adv, ret = losses.gae(REWARDS, VALUES, MASK, 1.0, 1.0)
    expected = np.array([
        [0.0, 0.0, 0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.7],   # rewards-to-go 0.9, 0.8, 1.0
        [0.0, -0.7 + 0.2, -1.0 - 0.6, 0.0, 0.0],       # rewards-to-go -0.7, -1.0
    ])
    assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
    assert_allclose(ret, [[0, 0, 0.9, 0.8, 1.0], [0, -0.7, -1.0, 0, 0]], rtol=1e-5, atol=1e-6)


def test_gae_jits():
    adv, _ = jax.jit(losses.gae, static_argnums=(3, 4))(REWARDS, VALUES, MASK, 0.9, 0.8)
    assert_allclose(adv, _gae_loop(REWARDS, VALUES, MASK, 0.9, 0.8), rtol=1e-5, atol=1e-6)


def test_ppo_policy_loss_hand_values():
    ratios = np.array([[1.5, 0.5, 3.0], [0.5, 1.1, 3.0]])
    advantages = np.array([[1.0, 1.0, 5.0], [-2.0, -1.0, 5.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])  # the ratio-3 tokens are padding
    old = np.full((2, 3), -1.0)
    new = old + np.log(ratios)
    loss, m = losses.ppo_policy_loss(new, old, advantages, mask, clip_eps=0.2)
    # max(-A rho, -A clip(rho)) per token:
    #   rho 1.5, A  1: max(-1.5, -1.2) = -1.2   clipped branch
    #   rho 0.5, A  1: max(-0.5, -0.8) = -0.5
    #   rho 0.5, A -2: max( 1.0,  1.6) =  1.6   clipped branch
    #   rho 1.1, A -1: max( 1.1,  1.1) =  1.1   inside the range: not counted
    assert_allclose(loss, (-1.2 - 0.5 + 1.6 + 1.1) / 4, rtol=1e-5)
    assert_allclose(m["pg_loss"], loss)
    assert_allclose(m["pg_clipfrac"], 0.5)
    log_r = np.log([1.5, 0.5, 0.5, 1.1])
    assert_allclose(m["approx_kl"], np.mean(0.5 * log_r**2), rtol=1e-5)
    assert_allclose(m["ratio"], (1.5 + 0.5 + 0.5 + 1.1) / 4, rtol=1e-5)


def test_ppo_policy_gradient_is_zero_on_clipped_tokens():
    old = np.zeros((1, 2), np.float32)
    new = np.log(np.array([[1.5, 0.9]], np.float32))
    ones = np.ones((1, 2))
    grad = jax.grad(lambda n: losses.ppo_policy_loss(n, old, ones, ones, 0.2)[0])(new)
    # token 0 is clipped (no gradient); token 1: d/dlogp of -rho/2 = -0.9/2
    assert_allclose(grad, [[0.0, -0.45]], rtol=1e-5)


def test_ppo_value_loss_hand_values():
    new = np.array([[1.0, 0.3, 99.0], [2.0, 0.0, 99.0]])
    old = np.array([[0.5, 0.4, 0.0], [1.0, 1.0, 0.0]])
    returns = np.array([[1.2, 0.0, 0.0], [3.0, 0.5, 0.0]])
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    loss, m = losses.ppo_value_loss(new, old, returns, mask, clip_eps=0.2)
    # V 1.0 -> clip 0.7: max(0.04, 0.25) = 0.25 clipped | V 0.3 inside: 0.09
    # V 2.0 -> clip 1.2: max(1.00, 3.24) = 3.24 clipped | V 0.0 -> clip 0.8: max(0.25, 0.09) = 0.25
    assert_allclose(loss, 0.5 * (0.25 + 0.09 + 3.24 + 0.25) / 4, rtol=1e-5)
    assert_allclose(m["vf_clipfrac"], 0.5)


def test_entropy_bonus_uses_distribution_that_sampled_each_token():
    logits = np.log(np.array([[[0.5, 0.5], [0.9, 0.1], [1.0, 1e-30]]]))
    mask = np.array([[0, 1, 1]])
    loss, m = losses.entropy_bonus(logits, mask)
    h = [np.log(2.0), -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))]  # from logits at t = 0, 1
    assert_allclose(m["entropy"], np.mean(h), rtol=1e-5)
    assert_allclose(loss, -np.mean(h), rtol=1e-5)


def test_kl_penalty_rewards():
    mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32)
    logps = np.array([
        [0.0, -1.0, -1.0, -2.0, -0.5],
        [0.0, -1.0, -3.0, -1.0, -1.0],
        [0.0, -1.0, -1.0, -1.0, -1.0],
    ])
    ref = np.array([
        [0.0, -3.0, -1.5, -1.0, -0.5],
        [0.0, -2.0, -2.0, -5.0, -5.0],
        [0.0, -2.0, -2.0, -2.0, -2.0],
    ])
    scores = np.array([1.0, -2.0, 7.0])
    rewards, m = losses.kl_penalty_rewards(scores, logps, ref, mask, kl_coef=0.1)
    # k1 on the response: row 0: 0.5, -1.0, 0.0; row 1: 1.0, -1.0; row 2 has no response (no score).
    expected = np.array([
        [0.0, 0.0, -0.05, 0.1, 0.0 + 1.0],
        [0.0, -0.1, 0.1 - 2.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    assert_allclose(rewards, expected, rtol=1e-5, atol=1e-7)
    assert_allclose(m["kl"], (-0.5 + 0.0 + 0.0) / 3, rtol=1e-5)
    assert_allclose(m["non_score_reward"], 0.05 / 3, rtol=1e-5)
    assert_allclose(m["score"], 2.0, rtol=1e-6)
    k3_rewards, _ = losses.kl_penalty_rewards(scores, logps, ref, mask, kl_coef=0.1, estimator="k3")
    assert_allclose(k3_rewards[0, 2], -0.1 * (np.exp(-0.5) - 1 + 0.5), rtol=1e-5)


def test_adaptive_kl_controller_formula_and_direction():
    ctl = losses.AdaptiveKLController(target=6.0, horizon=10_000)
    # KL 9 > target: error clip(0.5) = 0.2, coef * (1 + 0.2 * 256 / 10000)
    assert_allclose(ctl.update(0.2, 9.0, 256), 0.2 * 1.00512, rtol=1e-6)
    # KL 5.4 < target: error -0.1, coef * (1 - 0.1 * 256 / 10000)
    assert_allclose(ctl.update(0.2, 5.4, 256), 0.2 * 0.99744, rtol=1e-6)
    assert_allclose(ctl.update(0.2, 6.0, 256), 0.2, rtol=1e-6)
    assert_allclose(ctl.update(0.2, 0.0, 256), 0.2 * (1 - 0.2 * 256 / 10000), rtol=1e-6)
    assert losses.FixedKLController().update(0.2, 100.0, 256) == 0.2


def test_settings_from_config_are_hashable_and_build_the_kl_controller():
    from configs import ppo as ppo_config

    block = ppo_config.get_config().ppo
    settings = losses.PPOSettings.from_config(block)
    assert hash(settings) == hash(losses.PPOSettings.from_config(block))
    assert settings.clip_eps == block.clip_eps and settings.kl_estimator == block.kl_estimator
    assert settings.make_kl_controller() == losses.FixedKLController()
    adaptive = dataclasses.replace(settings, kl_controller="adaptive", kl_target=6.0,
                                   kl_horizon=10_000)
    assert adaptive.make_kl_controller() == losses.AdaptiveKLController(6.0, 10_000)
    for field, match in (("kl_controller", "unknown ppo.kl_controller 'pid'; valid: adaptive, "
                          "fixed$"), ("kl_estimator", "unknown ppo.kl_estimator 'pid'; valid: k1, "
                                      "k2, k3$")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(settings, **{field: "pid"})
