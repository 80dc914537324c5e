"""Tests for easyalign.losses.sft and easyalign.losses.reward against hand-computed values."""

import jax
import numpy as np
from numpy.testing import assert_allclose

from easyalign import losses


def test_sft_loss_is_token_weighted_nll():
    logps = np.array([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -0.25, 0.0]])
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 1]])
    loss, metrics = losses.sft_loss(logps, mask)
    # (1 + 2 + 0.5 + 0.25 + 0) / 5 tokens; a per-row mean would give (1.5 + 0.25) / 2 instead.
    assert_allclose(loss, 0.75, rtol=1e-6)
    assert_allclose(metrics["nll"], 0.75, rtol=1e-6)
    assert_allclose(metrics["tokens"], 5.0)
    assert_allclose(metrics["perplexity"], np.exp(0.75), rtol=1e-6)


def test_pairwise_reward_loss_hand_value():
    r_chosen = np.array([2.0, 0.5, -1.0])
    r_rejected = np.array([1.0, 1.0, -1.0])  # differences 1, -0.5, 0 (a tie counts as wrong)
    loss, metrics = losses.pairwise_reward_loss(r_chosen, r_rejected)
    # mean of log(1 + exp(-d)) = 0.6601619507527583
    assert_allclose(loss, 0.6601619507527583, rtol=1e-6)
    assert_allclose(metrics["accuracy"], 1.0 / 3.0, rtol=1e-6)
    assert_allclose(metrics["reward_margin"], 0.5 / 3.0, rtol=1e-6)
    assert_allclose(metrics["reward_chosen"], 0.5, rtol=1e-6)
    assert_allclose(metrics["reward_rejected"], 1.0 / 3.0, rtol=1e-6)


def test_pairwise_reward_loss_margin_and_extremes():
    r_chosen, r_rejected = np.array([2.0, 0.5, -1.0]), np.array([1.0, 1.0, -1.0])
    margin = np.array([0.5, 0.0, 1.0])
    loss, metrics = losses.pairwise_reward_loss(r_chosen, r_rejected, margin=margin)
    # d - margin = 0.5, -0.5, -1: mean log(1 + exp(-x)) = 0.9204718852928121
    assert_allclose(loss, 0.9204718852928121, rtol=1e-6)
    assert_allclose(metrics["reward_margin"], 0.5 / 3.0, rtol=1e-6)  # margin not subtracted
    # A badly wrong pair gives a finite linear loss and a finite gradient, not log(0).
    loss, _ = losses.pairwise_reward_loss(np.array([-200.0]), np.array([200.0]))
    assert_allclose(loss, 400.0, rtol=1e-6)
    loss_fn = lambda r: losses.pairwise_reward_loss(r, np.array([200.0]))[0]  # noqa: E731
    grad = jax.grad(loss_fn)(np.array([-200.0], np.float32))
    assert_allclose(grad, [-1.0], rtol=1e-6)
