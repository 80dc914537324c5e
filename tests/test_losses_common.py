"""Tests for easyalign.losses.common: masked reductions, log-probs, entropy, KL estimators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from easyalign import losses
from easyalign.losses import common

X = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
M = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=np.float32)  # picks 2, 3, 5, 6


def test_masked_sum_mean_var():
    assert_allclose(common.masked_sum(X, M), 16.0)
    assert_allclose(common.masked_sum(X, M, axis=1), [5.0, 11.0])
    assert_allclose(common.masked_mean(X, M), 4.0)
    assert_allclose(common.masked_mean(X, M, axis=1), [2.5, 5.5])
    # entries 2, 3, 5, 6 around 4: squares 4, 1, 1, 4 -> 10/4 biased, 10/3 unbiased.
    assert_allclose(common.masked_var(X, M, unbiased=False), 2.5, rtol=1e-6)
    assert_allclose(common.masked_var(X, M), 10.0 / 3.0, rtol=1e-6)


def test_masked_mean_empty_mask_is_zero_with_finite_grad():
    empty = np.zeros_like(M)
    assert float(common.masked_mean(X, empty)) == 0.0
    assert_array_equal(common.masked_mean(X, M * np.array([[1.0], [0.0]]), axis=1), [2.5, 0.0])
    grad = jax.grad(lambda x: common.masked_mean(x, empty))(jnp.asarray(X, jnp.float32))
    assert_array_equal(grad, np.zeros_like(X))


def test_masked_whiten():
    out = np.asarray(common.masked_whiten(X, M))
    std = np.sqrt(10.0 / 3.0 + 1e-8)
    expected = np.array([[0.0, -2.0 / std, -1.0 / std, 0.0], [1.0 / std, 2.0 / std, 0.0, 0.0]])
    assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert_allclose(common.masked_mean(out, M), 0.0, atol=1e-6)
    kept_mean = np.asarray(common.masked_whiten(X, M, shift_mean=False))
    assert_allclose(kept_mean, (expected + 4.0) * M, rtol=1e-5)


def test_sequence_logps():
    logps = np.array([[0.0, -1.0, -2.0, -4.0], [0.0, -0.5, -0.5, -9.0]])
    mask = np.array([[0, 1, 1, 1], [0, 1, 1, 0]])
    assert_allclose(common.sequence_logps(logps, mask), [-7.0, -1.0])
    assert_allclose(common.sequence_logps(logps, mask, average=True), [-7.0 / 3, -0.5], rtol=1e-6)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_logprobs_from_logits_matches_manual_gather():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5))
    tokens = np.array([[3, 1, 4, 0], [2, 2, 0, 1]])
    got = np.asarray(losses.logprobs_from_logits(logits, tokens))
    lsm = _log_softmax(logits)
    expected = np.zeros((2, 4))
    for b in range(2):
        for t in range(1, 4):
            expected[b, t] = lsm[b, t - 1, tokens[b, t]]  # logits at t-1 score token t
    assert got.dtype == np.float32
    assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.all(got[:, 0] == 0.0)


def test_logprobs_from_bf16_logits_are_fp32():
    logits = jnp.zeros((1, 3, 4), jnp.bfloat16)
    out = losses.logprobs_from_logits(logits, jnp.array([[0, 1, 2]]))
    assert out.dtype == jnp.float32
    assert_allclose(out, [[0.0, np.log(0.25), np.log(0.25)]], rtol=1e-6)


def test_entropy_and_shift():
    logits = np.log(np.array([[[0.5, 0.5, 1e-30], [0.25, 0.25, 0.5]]]))
    ent = np.asarray(common.entropy_from_logits(logits))
    assert_allclose(ent, [[np.log(2.0), 1.5 * np.log(2.0)]], rtol=1e-5)
    assert_allclose(common.shift_to_tokens(ent), [[0.0, np.log(2.0)]], rtol=1e-5)


LOGPS = np.array([-1.0, -2.0, -0.5])
REF = np.array([-1.5, -1.0, -0.5])  # d = log pi - log pi_ref = [0.5, -1.0, 0.0]


def test_kl_estimators_hand_values():
    assert_allclose(common.kl_k1(LOGPS, REF), [0.5, -1.0, 0.0])
    assert_allclose(common.kl_k2(LOGPS, REF), [0.125, 0.5, 0.0])
    # k3 = exp(-d) - 1 + d: exp(-0.5) - 0.5 = 0.10653066, e - 2 = 0.71828183, 0.
    assert_allclose(common.kl_k3(LOGPS, REF), [0.10653066, 0.71828183, 0.0], rtol=1e-6)
    assert common.KL_ESTIMATORS["k3"] is common.kl_k3


def test_k3_nonnegative_and_unbiased_for_kl():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=1000) * 3, rng.normal(size=1000) * 3
    assert np.all(np.asarray(common.kl_k3(a, b)) >= 0.0)
    # Sampling y ~ pi over 3 outcomes, mean k1 and k3 both estimate KL(pi || pi_ref).
    pi, ref = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
    true_kl = np.sum(pi * np.log(pi / ref))
    y = rng.choice(3, size=200_000, p=pi)
    for name in ("k1", "k3"):
        est = np.mean(np.asarray(common.KL_ESTIMATORS[name](np.log(pi)[y], np.log(ref)[y])))
        assert_allclose(est, true_kl, rtol=0.02)


@pytest.mark.parametrize(
    "registry, valid",
    [
        (losses.KL_ESTIMATORS, "k1, k2, k3"),
        (losses.DPO_LOSSES, "hinge, ipo, sigmoid"),
        (losses.DIVERGENCES, "forward_kl, jsd, reverse_kl"),
    ],
)
def test_registry_rejects_unknown_name_listing_valid(registry, valid):
    with pytest.raises(ValueError, match=f"unknown thing 'nope'; valid: {valid}$"):
        losses.get(registry, "nope", "thing")
    first = sorted(registry)[0]
    assert losses.get(registry, first, "thing") is registry[first]


def test_logits_budget_grows_with_device_memory():
    """The logits budget is a sixth of a device's memory, never below 8 GiB: an H200 (141 GB)
    holds the GRPO benchmark's 64 × 256 float32 logits (two tensors of a 128K vocabulary,
    16.8 GB) in one chunk — no recomputed vocabulary projection — a 24 GB card keeps 8 GiB
    and chunks them; the CPU (no memory statistics) keeps 8 GiB."""
    from easyalign.model.scoring import LOGITS_BUDGET_BYTES, fit_chunk, logits_budget

    assert logits_budget(24 * 10**9) == LOGITS_BUDGET_BYTES == 8 * 2**30
    assert logits_budget(141 * 10**9) == 141 * 10**9 // 6
    assert logits_budget() == LOGITS_BUDGET_BYTES  # the CPU
    h200 = fit_chunk(512, 64, 128256, tensors=2, device_memory=141 * 10**9)
    assert h200 == 141 * 10**9 // 6 // (2 * 64 * 128256 * 4) >= 256
    assert fit_chunk(512, 64, 128256, tensors=2, device_memory=24 * 10**9) == 130 < 256


def test_logits_chunk_budget_is_per_device():
    """Shapes are global while tracing: the logits budget must divide the batch by its shards.

    64 rows × 128K vocabulary exceed the 8 GiB float32 budget in one 2048 chunk on one device
    (→ 261 positions), but over a mesh that splits the batch 8 ways each device holds 8 rows,
    which fit the whole chunk.
    """
    from jax.sharding import AbstractMesh, AxisType

    from easyalign import sharding
    from easyalign.model.scoring import LOGITS_BUDGET_BYTES, fit_chunk

    single = fit_chunk(2048, 64, 128256)
    assert single == LOGITS_BUDGET_BYTES // (64 * 128256 * 4) < 2048
    mesh = AbstractMesh((2, 4, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(mesh):
        assert sharding.batch_shards() == 8
        assert fit_chunk(2048, 64, 128256) == 2048
        assert fit_chunk(2048, 512, 128256) == single  # 64 rows per device again
        # 68 rows do not split 8 ways evenly (the batch may be replicated): budgeted whole.
        assert fit_chunk(2048, 68, 128256) == LOGITS_BUDGET_BYTES // (68 * 128256 * 4)
    tensor_only = AbstractMesh((1, 1, 4), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    with jax.sharding.use_abstract_mesh(tensor_only):
        assert fit_chunk(2048, 64, 128256) == single  # tensor parallelism does not split rows


def test_picked_logprob_and_entropy_match_autodiff():
    """The one-pass backward of (log-prob, entropy) equals autodiff through the log-softmax,
    for any mix of the two cotangents (GRPO's entropy metric, PPO's entropy bonus)."""
    from easyalign.model.scoring import picked_logprob_and_entropy

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0, 3, (3, 5, 17)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 17, (3, 5)), jnp.int32)
    w_lp, w_h = (jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in range(2))

    def autodiff(z):
        logp = jax.nn.log_softmax(z, axis=-1)
        picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    for fn in (autodiff, lambda z: picked_logprob_and_entropy(z, targets)):
        picked, entropy = fn(logits)
        assert_allclose(picked, autodiff(logits)[0], rtol=1e-6, atol=1e-6)
        assert_allclose(entropy, autodiff(logits)[1], rtol=1e-6, atol=1e-6)
    for a, b in [(1.0, 0.0), (0.0, 1.0), (1.0, 0.5)]:
        def objective(fn, z):
            picked, entropy = fn(z)
            return jnp.sum(a * w_lp * picked + b * w_h * entropy)

        want = jax.grad(lambda z: objective(autodiff, z))(logits)
        got = jax.grad(lambda z: objective(lambda x: picked_logprob_and_entropy(x, targets),
                                           z))(logits)
        assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_picked_logprob_and_entropy_with_masked_vocabulary_entries():
    """Logits of −inf (tokens masked out of the vocabulary) have probability 0: the log-prob and
    entropy equal those of the distribution over the other tokens (no 0 · −inf NaN)."""
    from easyalign.model.scoring import picked_logprob_and_entropy

    rng = np.random.default_rng(1)
    finite = rng.normal(0, 2, (4, 9)).astype(np.float32)
    logits = np.concatenate([finite, np.full((4, 3), -np.inf, np.float32)], axis=1)
    targets = jnp.asarray(rng.integers(0, 9, (4,)), jnp.int32)
    picked, entropy = picked_logprob_and_entropy(jnp.asarray(logits), targets)
    logp = finite - np.log(np.sum(np.exp(finite.astype(np.float64)), axis=1, keepdims=True))
    assert_allclose(picked, logp[np.arange(4), np.asarray(targets)], rtol=1e-5)
    assert_allclose(entropy, -np.sum(np.exp(logp) * logp, axis=1), rtol=1e-5)
