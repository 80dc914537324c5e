"""The shared-prefix forward (`model.shared_prefix`): G completions of a prompt in one stream,
the prompt computed once, give the assembled rows' response log-probs, entropies and gradients
(computed independently by the ordinary forward over the rows, LM head on the response span)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import host
from easyalign.algorithms import rollout
from easyalign.model import create_model, preset
from easyalign.model.scoring import Span
from easyalign.model.shared_prefix import SharedPrefix, from_rows, response_logps

# Qwen 3 on the tiny shape (GQA 4:2, scanned layers, q/k norm, q/k/v biases); Gemma 2
# (soft-caps, alternating sliding window, sandwich norms, unrolled layers, full remat).
CONFIGS = {
    "gemma2": dict(family="gemma2", sliding_window=4,
                   layer_types=("sliding_attention", "full_attention"),
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   query_pre_attn_scalar=16, hidden_act="gelu_pytorch_tanh",
                   rms_norm_one_plus=True, sandwich_norms=True, scale_embeddings=True,
                   scan_layers=False, remat="full"),
    "qwen": dict(family="qwen3", qk_norm=True, qkv_bias=True),
}


def _rows(rng, prompt_lengths, group, prompt_width, new, lengths):
    """Assembled rows as `rollout.assemble` lays them out: prompt n (its p_n tokens) in each of
    its G rows, response g from column p_n (lengths[row] tokens, then padding 0)."""
    rows = len(prompt_lengths) * group
    tokens = np.zeros((rows, prompt_width + new), np.int32)
    mask = np.zeros(tokens.shape, np.float32)
    starts = np.repeat(prompt_lengths, group)
    for n, p in enumerate(prompt_lengths):
        prompt = rng.integers(3, 256, p)
        for g in range(group):
            r = n * group + g
            tokens[r, :p] = prompt
            tokens[r, p:p + lengths[r]] = rng.integers(3, 256, lengths[r])
            mask[r, p:p + lengths[r]] = 1.0
    return jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(starts, jnp.int32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shared_prefix_equals_the_rows(name, full_fp32_matmuls):
    graphdef, params = nnx.split(create_model(preset("tiny", dtype="float32", **CONFIGS[name]),
                                              seed=0))
    rng = np.random.default_rng(2)
    group, prompt_width, new = 3, 7, 5
    # prompts of 7, 2 and 4 tokens; one response cut at the width, one of a single token
    lengths = np.array([5, 3, 1, 4, 5, 2, 2, 5, 3])
    tokens, mask, starts = _rows(rng, np.array([7, 2, 4]), group, prompt_width, new, lengths)

    def loss(p, shared):
        model = nnx.merge(graphdef, p)
        if shared:
            logps, entropy, _ = response_logps(model, tokens, starts, group, new,
                                               temperature=0.8)
        else:
            logps, entropy = rollout.policy_logps(model, tokens, temperature=0.8,
                                                  span=Span(starts, new))
        return jnp.sum((logps + 0.1 * entropy) * mask), (logps, entropy)

    (_, want), want_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, False),
                                                       has_aux=True))(params)
    (_, got), grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True), has_aux=True))(params)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    # The prompt's gradient is one sum over the G completions instead of G partial sums: the
    # same terms in another order (fp32 rounding, ~1e-6 of the largest gradient).
    for a, b in zip(host(grads), host(want_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_stream_layout_by_hand():
    """Positions and visibility of a 2-prompt, G = 2 stream, written out by hand."""
    layout = SharedPrefix(jnp.array([2, 3]), group=2, prompt_width=3, response_width=2)
    np.testing.assert_array_equal(layout.positions(),
                                  [[0, 1, 2, 2, 3, 2, 3], [0, 1, 2, 3, 4, 3, 4]])
    visible = np.asarray(layout.response_visibility())[:, 0].astype(int)
    # row 0 (prompt 0, p = 2): prompt columns 0, 1; response key 0, then 0 and 1
    np.testing.assert_array_equal(visible[0], [[1, 1, 0, 1, 0], [1, 1, 0, 1, 1]])
    # row 3 (prompt 1, p = 3): all three prompt columns
    np.testing.assert_array_equal(visible[3], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    # a window of 2 positions: response token 1 (position 3 in row 0) sees positions 2..3 only
    windowed = np.asarray(layout.response_visibility(2))[0, 0].astype(int)
    np.testing.assert_array_equal(windowed, [[0, 1, 0, 1, 0], [0, 0, 0, 1, 1]])
    tokens = jnp.arange(2 * 2 * 5).reshape(4, 5)
    _, stream, responses = from_rows(tokens, jnp.array([2, 2, 3, 3]), 2, 2)
    np.testing.assert_array_equal(stream, [[0, 1, 2, 2, 3, 7, 8], [10, 11, 12, 13, 14, 18, 19]])
    np.testing.assert_array_equal(responses, [[2, 3], [7, 8], [13, 14], [18, 19]])


def test_grouped_minibatches_keep_groups_whole():
    """`rollout.minibatch_indices(group=G)`: every row once per epoch, each minibatch a run of
    whole groups, each group's rows consecutive and in order; G = 1 is the row permutation."""
    batches = rollout.minibatch_indices(24, 8, 2, (0, 3), group=4)
    assert len(batches) == 6
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(24))
    for rows in batches:
        groups = rows.reshape(-1, 4)
        assert np.all(groups == groups[:, :1] + np.arange(4)) and np.all(groups[:, 0] % 4 == 0)
    plain = rollout.minibatch_indices(24, 8, 1, (0, 3))
    want = np.random.default_rng((0, 3)).permutation(24)
    np.testing.assert_array_equal(np.concatenate(plain), want)


def test_grpo_minibatches_do_not_depend_on_the_shared_prefix():
    """Switching `grpo.shared_prefix` must not change the minibatch schedule (a trial found
    runs diverging from step 1 when only the shared path shuffled whole groups)."""
    from configs import grpo as grpo_config
    from easyalign.algorithms import grpo

    c = grpo_config.get_config("tiny")
    G = c.grpo.num_generations
    groups = []
    for shared in (True, False):
        c.grpo.shared_prefix = shared
        groups.append(grpo.minibatch_group(c))
    assert groups == [G, G]
    c.grpo.minibatch_size = G + 1 if (c.train.batch_size * G) % (G + 1) == 0 else 1
    assert grpo.minibatch_group(c) == 1
