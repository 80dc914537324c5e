"""Tests for easyalign.losses.distill: divergences by hand on fixed distributions, top-k, reduce."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from easyalign import losses

P_S = np.array([0.5, 0.3, 0.2])
P_T = np.array([0.2, 0.2, 0.6])
# Shifted: logits are defined only up to a constant.
S_LOGITS, T_LOGITS = np.log(P_S) + 1.0, np.log(P_T) - 2.0


def _kl(p, q):
    return np.sum(p * np.log(p / q))


def _jsd(beta):
    m = beta * P_T + (1 - beta) * P_S
    return beta * _kl(P_T, m) + (1 - beta) * _kl(P_S, m)


def test_forward_and_reverse_kl_hand_values():
    # KL(p_T || p_S) = .2 log(.2/.5) + .2 log(.2/.3) + .6 log(.6/.2)
    assert_allclose(_kl(P_T, P_S), 0.39481620520440186)
    assert_allclose(losses.forward_kl(S_LOGITS, T_LOGITS), 0.39481620520440186, rtol=1e-5)
    assert_allclose(_kl(P_S, P_T), 0.3600624406359049)
    assert_allclose(losses.reverse_kl(S_LOGITS, T_LOGITS), 0.3600624406359049, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_interior_matches_mixture_formula(beta):
    assert_allclose(losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=beta), _jsd(beta), rtol=1e-5)


def test_jsd_endpoints_and_symmetry():
    assert_allclose(_jsd(0.5), 0.09056584995526779)
    jsd = losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=0.5)
    assert_allclose(jsd, 0.09056584995526779, rtol=1e-5)
    # TRL convention: beta = 0 is forward KL(p_T || p_S), beta = 1 reverse KL(p_S || p_T), exactly.
    assert_allclose(losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=0.0), _kl(P_T, P_S), rtol=1e-5)
    assert_allclose(losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=1.0), _kl(P_S, P_T), rtol=1e-5)
    # ... which are the normalised limits JSD(beta)/beta and JSD(beta)/(1 - beta).
    assert_allclose(_jsd(1e-4) / 1e-4, _kl(P_T, P_S), rtol=1e-3)
    assert_allclose(_jsd(1 - 1e-4) / 1e-4, _kl(P_S, P_T), rtol=1e-3)
    assert_allclose(
        losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=0.5),
        losses.generalized_jsd(T_LOGITS, S_LOGITS, beta=0.5),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="beta"):
        losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=1.5)


def test_divergences_nonnegative_zero_on_equal_and_shaped_per_token():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 7)) * 2, rng.normal(size=(2, 3, 7)) * 2
    for name in ("forward_kl", "reverse_kl", "jsd"):
        for beta in (0.0, 0.5, 1.0):
            div = losses.DIVERGENCES[name]
            out = np.asarray(div(s, t, beta=beta, temperature=1.0))
            assert out.shape == (2, 3)
            assert np.all(out > 0)
            assert_allclose(div(s, s, beta=beta, temperature=1.0), 0.0, atol=1e-6)


def test_temperature_divides_logits():
    assert_allclose(
        losses.forward_kl(S_LOGITS, T_LOGITS, temperature=2.0),
        losses.forward_kl(S_LOGITS / 2, T_LOGITS / 2),
        rtol=1e-6,
    )
    assert_allclose(
        losses.generalized_jsd(S_LOGITS, T_LOGITS, beta=0.3, temperature=0.5),
        _jsd_from_logits(2 * S_LOGITS, 2 * T_LOGITS, 0.3),
        rtol=1e-5,
    )


def _jsd_from_logits(s, t, beta):
    ps, pt = np.exp(s) / np.exp(s).sum(), np.exp(t) / np.exp(t).sum()
    m = beta * pt + (1 - beta) * ps
    return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)


def test_masked_vocabulary_entries_give_finite_values_and_grads():
    s = jnp.array([0.0, 1.0, -jnp.inf])
    t = jnp.array([0.5, 0.0, -jnp.inf])
    jsd = lambda a, b: losses.generalized_jsd(a, b, beta=0.5)  # noqa: E731
    for fn in (losses.forward_kl, losses.reverse_kl, jsd):
        val, grad = jax.value_and_grad(fn)(s, t)
        assert np.isfinite(val) and np.all(np.isfinite(grad[:2])) and grad[2] == 0


def test_topk_forward_kl():
    student = np.log(np.array([0.1, 0.2, 0.3, 0.25, 0.15]))
    ids = np.array([3, 1])
    topk_logps = np.log(np.array([0.5, 0.3]))  # renormalised: q = 0.625, 0.375
    q = np.array([0.625, 0.375])
    expected = np.sum(q * (np.log(q) - np.log(np.array([0.25, 0.2]))))
    assert_allclose(losses.topk_forward_kl(student, topk_logps, ids), expected, rtol=1e-5)
    assert expected > 0
    # 0 only when the student puts all its mass on the top-k, distributed as q.
    exact = np.full(5, -1e9)
    exact[ids] = np.log(q)
    assert_allclose(losses.topk_forward_kl(exact, topk_logps, ids), 0.0, atol=1e-6)
    # With K = V it is the full forward KL.
    full_ids = np.array([2, 0, 1])
    assert_allclose(
        losses.topk_forward_kl(S_LOGITS, np.log(P_T)[full_ids], full_ids), _kl(P_T, P_S), rtol=1e-5
    )


def test_sampled_token_reverse_kl_advantage():
    student = np.array([[0.0, -1.0, -0.2]], np.float32)
    teacher = np.array([[0.0, -0.5, -3.0]], np.float32)
    adv = losses.sampled_token_reverse_kl_advantage(student, teacher)
    assert_allclose(adv, [[0.0, 0.5, -2.8]], rtol=1e-6)
    grad = jax.grad(lambda s: losses.sampled_token_reverse_kl_advantage(s, teacher).sum())(student)
    assert_array_equal(grad, np.zeros_like(student))


def test_distill_loss_mask_and_weights():
    per_token = np.array([[9.0, 1.0, 2.0], [9.0, 4.0, 9.0]])
    mask = np.array([[0, 1, 1], [0, 1, 0]])
    loss, m = losses.distill_loss(per_token, mask)
    assert_allclose(loss, 7.0 / 3, rtol=1e-6)
    assert_allclose(m["tokens"], 3.0)
    loss, m = losses.distill_loss(per_token, mask, weights=np.array([1.0, 3.0]))
    # (1*1 + 1*2 + 3*4) / (1 + 1 + 3)
    assert_allclose(loss, 15.0 / 5, rtol=1e-6)
    assert_allclose(m["divergence"], 7.0 / 3, rtol=1e-6)
