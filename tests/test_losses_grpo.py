"""GRPO-family advantages and losses against values computed independently in numpy, by hand-
written loops over groups, rows and tokens (no shared code with `easyalign.losses.grpo`), on
small masked examples: every registry entry, a group of identical rewards and a padded group."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from easyalign.losses import grpo as G

# Three groups of G = 4: varied rewards, identical rewards, a padded group (2 real members).
REWARDS = np.array([[1.0, 0.0, 0.5, 0.0], [0.7, 0.7, 0.7, 0.7], [2.0, -1.0, 9.0, 9.0]],
                   np.float32)
VALID = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)


def ref_advantages(name):
    out = np.zeros_like(REWARDS, dtype=np.float64)
    for b in range(3):
        members = [float(REWARDS[b, i]) for i in range(4) if VALID[b, i]]
        n = len(members)
        mean = sum(members) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in members) / (n - 1))
        for i in range(4):
            if not VALID[b, i]:
                continue
            r = float(REWARDS[b, i])
            if name == "grpo":
                out[b, i] = (r - mean) / (std + 1e-4)
            elif name == "dr_grpo":
                out[b, i] = r - mean
            else:  # rloo: mean of the others
                out[b, i] = r - (sum(members) - r) / (n - 1)
    return out


@pytest.mark.parametrize("name", sorted(G.ADVANTAGES))
def test_advantages_match_hand_computed(name):
    got = np.asarray(G.ADVANTAGES[name](jnp.asarray(REWARDS), jnp.asarray(VALID)))
    np.testing.assert_allclose(got, ref_advantages(name), rtol=1e-5, atol=1e-6)
    assert (got[1] == 0).all()          # identical rewards: no signal
    assert (got[2, 2:] == 0).all()      # padding members get nothing


def test_known_values_and_zero_signal():
    # Group [1, 0, 0.5, 0]: mean 0.375; rloo of the first = 1 - 0.5/3.
    np.testing.assert_allclose(G.dr_grpo_advantages(REWARDS)[0], [0.625, -0.375, 0.125, -0.375],
                               atol=1e-6)
    np.testing.assert_allclose(G.rloo_advantages(REWARDS)[0, 0], 1 - 0.5 / 3, atol=1e-6)
    np.testing.assert_array_equal(G.zero_signal_groups(REWARDS, VALID), [False, True, False])
    # Padding members do not break ties: [2, -1] real members differ.
    np.testing.assert_array_equal(G.zero_signal_groups(np.array([[3., 3., 0., 1.]]),
                                                       np.array([[1., 1., 0., 0.]])), [True])


# ----------------------------------------------------------------------------- the loss
N, T = 4, 6
rng = np.random.default_rng(0)
NEW = rng.normal(-1.0, 0.5, (N, T)).astype(np.float32)
OLD = (NEW + rng.normal(0, 0.3, (N, T))).astype(np.float32)
REF = (NEW + rng.normal(0, 0.3, (N, T))).astype(np.float32)
ADV = np.array([1.5, -0.7, 0.0, 2.0], np.float32)
MASK = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0],
                 [0, 0, 0, 0, 0, 0]], np.float32)  # the last row: an empty (padded) row


def ref_loss(loss_type, eps_low=0.2, eps_high=0.2, level="token", beta=0.0, L=8):
    per_row_sum, per_row_mean, n_tok = [], [], 0
    clipped = total = 0
    for i in range(N):
        toks = [t for t in range(T) if MASK[i, t]]
        if level == "sequence":
            s = sum(float(NEW[i, t]) - float(OLD[i, t]) for t in toks) / max(len(toks), 1)
        row = []
        for t in toks:
            lr = s if level == "sequence" else float(NEW[i, t]) - float(OLD[i, t])
            rho = math.exp(lr)
            a = float(ADV[i])
            loss = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            d = float(NEW[i, t]) - float(REF[i, t])
            loss += beta * (math.exp(-d) - 1 + d)
            row.append(loss)
            total += 1
            clipped += (rho < 1 - eps_low and a < 0) or (rho > 1 + eps_high and a > 0)
        per_row_sum.append(sum(row))
        per_row_mean.append(sum(row) / len(row) if row else 0.0)
        n_tok += len(row)
    value = {"sequence_mean": sum(per_row_mean) / N, "token_mean": sum(per_row_sum) / n_tok,
             "constant": sum(per_row_sum) / (N * L)}[loss_type]
    return value, clipped / total


@pytest.mark.parametrize("loss_type", sorted(G.AGGREGATIONS))
@pytest.mark.parametrize("level", G.IMPORTANCE_LEVELS)
@pytest.mark.parametrize("eps_high,beta", [(0.2, 0.0), (0.28, 0.1)])
def test_loss_matches_hand_computed(loss_type, level, eps_high, beta):
    loss, metrics = G.grpo_policy_loss(
        jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK), epsilon=0.2,
        epsilon_high=eps_high, loss_type=loss_type, importance_sampling_level=level,
        ref_logps=jnp.asarray(REF), beta=beta, kl_estimator="k3", max_length=8)
    want, clip = ref_loss(loss_type, 0.2, eps_high, level, beta, 8)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["clip_frac"]), clip, atol=1e-6)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("level", G.IMPORTANCE_LEVELS)
def test_metrics_describe_every_sampled_token_and_the_loss_only_the_kept_ones(level):
    """Reported: with every group dropped from the loss (zero signal), the update logged ratio,
    KL and clip fraction 0 — a masked mean over no token. With `metrics_mask` (the sampled
    tokens) they are those of every sampled token, computed by hand here, while the loss is
    the kept rows' alone."""
    kept = MASK * np.array([[1], [0], [1], [0]], np.float32)  # rows 1 and 3 dropped
    loss, metrics = G.grpo_policy_loss(
        jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(kept),
        loss_type="token_mean", importance_sampling_level=level, ref_logps=jnp.asarray(REF),
        beta=0.1, metrics_mask=jnp.asarray(MASK))
    dropped_only, _ = G.grpo_policy_loss(
        jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(kept),
        loss_type="token_mean", importance_sampling_level=level, ref_logps=jnp.asarray(REF),
        beta=0.1)
    assert float(loss) == float(dropped_only)
    ratios, kls, clipped = [], [], 0
    for i in range(N):
        toks = [t for t in range(T) if MASK[i, t]]
        mean_lr = sum(float(NEW[i, t] - OLD[i, t]) for t in toks) / max(len(toks), 1)
        for t in toks:
            rho = math.exp(mean_lr if level == "sequence" else float(NEW[i, t] - OLD[i, t]))
            d = float(NEW[i, t] - REF[i, t])
            ratios.append(rho)
            kls.append(math.exp(-d) - 1 + d)
            clipped += (rho < 0.8 and ADV[i] < 0) or (rho > 1.2 and ADV[i] > 0)
    np.testing.assert_allclose(float(metrics["ratio"]), np.mean(ratios), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), np.mean(kls), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["clip_frac"]), clipped / len(ratios), atol=1e-6)
    _, empty = G.grpo_policy_loss(jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV),
                                  jnp.zeros((N, T)), metrics_mask=jnp.asarray(MASK))
    assert float(empty["ratio"]) > 0.5  # no kept token: still the sampled tokens' ratio


def test_gradient_is_zero_on_the_clipped_side_and_at_ratio_one_is_minus_advantage():
    # At π_θ = π_old the token-mean gradient wrt log π_θ is −A / (number of tokens).
    grad = jax.grad(lambda x: G.grpo_policy_loss(x, jnp.asarray(NEW), jnp.asarray(ADV),
                                                 jnp.asarray(MASK), loss_type="token_mean")[0])(
        jnp.asarray(NEW))
    want = -ADV[:, None] * MASK / MASK.sum()
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-6)
    # Far above 1 + ε with A > 0: clipped, no gradient.
    grad = jax.grad(lambda x: G.grpo_policy_loss(x, jnp.asarray(NEW) - 1.0, jnp.asarray(ADV),
                                                 jnp.asarray(MASK))[0])(jnp.asarray(NEW))
    assert (np.asarray(grad)[ADV > 0] == 0).all()


def test_unknown_names_fail():
    with pytest.raises(ValueError, match="valid: constant, sequence_mean, token_mean"):
        G.grpo_policy_loss(jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV),
                           jnp.asarray(MASK), loss_type="mean")


def test_settings_from_config_are_frozen_and_compute_the_same_loss():
    from configs import grpo as grpo_config

    block = grpo_config.get_config().grpo
    block.beta, block.epsilon_high, block.loss_type = 0.1, 0.28, "constant"
    settings = G.GRPOSettings.from_config(block)
    assert settings == G.GRPOSettings(epsilon=0.2, epsilon_high=0.28, loss_type="constant",
                                      beta=0.1, max_length=block.max_new_tokens,
                                      temperature=block.temperature)
    assert hash(settings) == hash(G.GRPOSettings.from_config(block))
    block.epsilon_high = 0.0  # 0 in the config: ε_high = ε_low
    assert G.GRPOSettings.from_config(block).epsilon_high is None
    loss, metrics = settings.loss(jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV),
                                  jnp.asarray(MASK), jnp.asarray(REF))
    want, want_metrics = G.grpo_policy_loss(
        jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(ADV), jnp.asarray(MASK), epsilon=0.2,
        epsilon_high=0.28, loss_type="constant", ref_logps=jnp.asarray(REF), beta=0.1,
        max_length=block.max_new_tokens)
    assert float(loss) == float(want)
    assert {k: float(v) for k, v in metrics.items()} == {k: float(v)
                                                         for k, v in want_metrics.items()}
    for key, value, message in [("loss_type", "mean", "grpo.loss_type 'mean'"),
                                ("kl_estimator", "k9", "grpo.kl_estimator 'k9'"),
                                ("importance_sampling_level", "seq", "valid: token, sequence")]:
        with pytest.raises(ValueError, match=message):
            G.GRPOSettings(**{key: value})
