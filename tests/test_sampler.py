"""Sampler: KV-cache decoding against the full training forward, stops, batching, methods.

The reference for every check is the training path: `model(tokens)` over the whole sequence
(no cache, causal mask), re-run from scratch at every step. Sequences are right-padded to one
fixed width so the reference compiles once; under a causal mask, padding after position t
cannot change the logits at t.
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import run_on_cpu_devices
from easyalign import sampler as S
from easyalign.model import create_model, preset

REF_WIDTH = 32
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("full_fp32_matmuls")


@pytest.fixture(scope="module")
def model_state():
    model = create_model(preset("tiny", dtype="float32"), seed=0)
    return nnx.split(model)


@pytest.fixture(scope="module")
def full_logits(model_state):
    """`tokens (list) -> float32 [len, V]` logits of the full, cache-free training forward."""
    graphdef, state = model_state
    forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))

    def run(tokens):
        padded = np.zeros((1, REF_WIDTH), np.int32)
        padded[0, :len(tokens)] = tokens
        return np.asarray(forward(state, padded))[0, :len(tokens)]

    return run


def reference_greedy(full_logits, prompt, n):
    """Greedy continuation by re-running the full forward over the whole sequence each step."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(full_logits(seq)[-1])))
    return seq[len(prompt):]


def reference_logprobs(full_logits, prompt, generated, temperature=1.0):
    """log_softmax of the full forward's logits / temperature, at the generated tokens."""
    logp = jax.nn.log_softmax(full_logits(list(prompt) + list(generated)) / temperature, axis=-1)
    return np.array([logp[len(prompt) - 1 + i, t] for i, t in enumerate(generated)])


def right_pad(prompts, width, pad_values=None):
    """`[B, width]` block (pad slots filled with `pad_values` to prove they never leak)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 256, (len(prompts), width)).astype(np.int32) \
        if pad_values == "random" else np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, :len(p)] = p
    return tokens, np.array([len(p) for p in prompts], np.int32)


PROMPTS = [[11, 42, 7], [3, 99, 150, 20, 64, 5, 77], [200, 13, 1, 88, 31]]


def test_greedy_equals_full_forward_argmax(model_state, full_logits):
    graphdef, state = model_state
    tokens, lengths = right_pad(PROMPTS, 8, "random")
    out = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=10)
    for row, prompt in enumerate(PROMPTS):
        expected = reference_greedy(full_logits, prompt, 10)
        assert out.tokens[row].tolist() == expected
        np.testing.assert_allclose(out.logprobs[row], reference_logprobs(full_logits, prompt,
                                                                         expected), atol=ATOL)
    assert out.lengths.tolist() == [10, 10, 10] and not out.done.any()


def test_sampled_logprobs_equal_training_logprobs(model_state, full_logits):
    """Under softmax(logits / τ), before the top-k truncation: the full forward's, and the
    rollout scorer's at the same temperature (`rollout.policy_logps`, a GRPO update's π_old).
    (τ = 1: `test_refilled_slots_equal_one_static_batch`.)"""
    from easyalign.algorithms import rollout

    method = S.TopK(k=5, temperature=0.7)
    graphdef, state = model_state
    tokens, lengths = right_pad(PROMPTS, 8, "random")
    out = S.generate(graphdef, state, tokens, lengths, jax.random.key(1), max_new_tokens=10,
                     method=method)
    for row, prompt in enumerate(PROMPTS):
        generated = out.tokens[row].tolist()
        np.testing.assert_allclose(
            out.logprobs[row], reference_logprobs(full_logits, prompt, generated,
                                                  method.temperature), atol=ATOL)
        scored, _ = rollout.policy_logps(nnx.merge(graphdef, state),
                                         jnp.asarray([list(prompt) + generated]),
                                         temperature=method.temperature)
        np.testing.assert_allclose(np.asarray(scored)[0, len(prompt):], out.logprobs[row],
                                   atol=ATOL)


def test_seed_determines_samples(model_state):
    graphdef, state = model_state
    tokens, lengths = right_pad(PROMPTS, 8)

    def run(seed):
        return S.generate(graphdef, state, tokens, lengths, jax.random.key(seed),
                          max_new_tokens=10, method=S.Temperature(1.0)).tokens

    first = run(7)
    np.testing.assert_array_equal(first, run(7))
    assert not np.array_equal(first, run(8))


def test_rows_stop_independently(model_state):
    graphdef, state = model_state
    prompts = PROMPTS[:2]
    tokens, lengths = right_pad(prompts, 8)
    free = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=12)
    row0, row1 = free.tokens[0].tolist(), free.tokens[1].tolist()
    # A stop token that row 0 emits early (first occurrence) and row 1 never emits.
    stop_at = next(i for i in range(1, 8) if row0[i] not in row0[:i] and row0[i] not in row1)
    stop = row0[stop_at]

    pad = 255
    out = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=12,
                     stop_tokens=(stop,), pad_id=pad)
    assert out.tokens[0].tolist() == row0[:stop_at + 1] + [pad] * (12 - stop_at - 1)
    assert np.all(out.logprobs[0, stop_at + 1:] == 0.0)
    np.testing.assert_array_equal(out.logprobs[0, :stop_at + 1], free.logprobs[0, :stop_at + 1])
    assert (int(out.lengths[0]), bool(out.done[0])) == (stop_at + 1, True)
    assert out.tokens[1].tolist() == row1
    assert (int(out.lengths[1]), bool(out.done[1])) == (12, False)

    # Every row stops on its first token: the loop exits at once, the rest stays padding.
    out = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=12,
                     stop_tokens=(row0[0], row1[0]), pad_id=pad)
    assert out.tokens.tolist() == [[row0[0]] + [pad] * 11, [row1[0]] + [pad] * 11]
    assert out.lengths.tolist() == [1, 1] and out.done.all()


def test_mixed_length_batch_equals_each_row_alone(model_state):
    graphdef, state = model_state
    tokens, lengths = right_pad(PROMPTS, 8, "random")
    batch = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=10)
    for row, prompt in enumerate(PROMPTS):
        # Alone and unpadded: the prompt block is exactly the prompt.
        alone = S.generate(graphdef, state, np.array([prompt]), np.array([len(prompt)]),
                           jax.random.key(0), max_new_tokens=10)
        np.testing.assert_array_equal(batch.tokens[row], alone.tokens[0])
        np.testing.assert_allclose(batch.logprobs[row], alone.logprobs[0], atol=ATOL)


def test_max_length_caps_each_row(model_state):
    graphdef, state = model_state
    prompts = [PROMPTS[0], [5] * 8]
    tokens, lengths = right_pad(prompts, 8)
    free = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=10)
    capped = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=10,
                        max_length=10)
    assert capped.lengths.tolist() == [7, 2] and not capped.done.any()
    for row, n in enumerate([7, 2]):
        np.testing.assert_array_equal(capped.tokens[row, :n], free.tokens[row, :n])
        assert np.all(capped.tokens[row, n:] == 0)
    with pytest.raises(ValueError, match="max_length"):
        S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=4,
                   max_length=6)


def test_compiles_once_per_static_configuration(model_state):
    graphdef, state = model_state
    tokens, lengths = right_pad(PROMPTS, 8)

    def run(tokens, lengths, seed, n=5, stops=(3, 4)):
        S.generate(graphdef, state, tokens, lengths, jax.random.key(seed), max_new_tokens=n,
                   method=S.TopK(5), stop_tokens=stops)

    run(tokens, lengths, 0)
    compiled = S.decode._generate_jit._cache_size()
    run(tokens + 1, lengths - 1, 1, stops=[4, 3, 3])  # new values, same set of stop tokens
    assert S.decode._generate_jit._cache_size() == compiled
    run(tokens, lengths, 0, n=6)
    assert S.decode._generate_jit._cache_size() == compiled + 1


# ----------------------------------------------------------------------------- continuous batching

# Six prompts of different lengths; with stop tokens the rows finish at different steps.
QUEUE = PROMPTS + [[7, 8, 9, 10, 11, 12], [250], [40, 41, 42, 43]]


def _queue_stops(graphdef, state, tokens, lengths, seed=0, method=S.Greedy()):
    """Stop tokens that end rows 0 and 1 early (their third token, unless it comes sooner).
    `seed` is an int or a PRNG key."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    free = S.generate(graphdef, state, tokens, lengths, key, max_new_tokens=12, method=method)
    return tuple(sorted({row[2] for row in free.tokens.tolist()[:2]}))


def test_refilled_slots_equal_one_static_batch(model_state, full_logits, slots=3, refill=2):
    """Fewer slots than prompts, refilled inside the loop: the same tokens, log-probs and
    lengths as every prompt in one static batch — sampled, each row with its own key (greedy
    decoding is the same loop with a key-free method) — and the log-probs are the training
    forward's."""
    graphdef, state = model_state
    tokens, lengths = right_pad(QUEUE, 8, "random")
    for method in (S.Temperature(1.0),):
        stops = _queue_stops(graphdef, state, tokens, lengths, 3, method)
        run = lambda **kw: S.generate(graphdef, state, tokens, lengths, jax.random.key(3),  # noqa
                                      max_new_tokens=12, method=method, stop_tokens=stops, **kw)
        static, engine = run(), run(slots=slots, refill=refill)
        np.testing.assert_array_equal(engine.tokens, static.tokens)
        np.testing.assert_array_equal(engine.lengths, static.lengths)
        np.testing.assert_array_equal(engine.done, static.done)
        np.testing.assert_allclose(engine.logprobs, static.logprobs, atol=ATOL)
        assert 2 <= static.done.sum() < len(QUEUE)  # rows stop early, others run out of budget
    for row, prompt in enumerate(QUEUE):
        n = int(engine.lengths[row])
        np.testing.assert_allclose(
            engine.logprobs[row, :n],
            reference_logprobs(full_logits, prompt, engine.tokens[row, :n].tolist()), atol=ATOL)


def test_group_samples_share_one_prefill(model_state):
    """G samples per prompt (rows n·G + g) are the rows of the prompts repeated G times, the
    prompt prefilled once per group; with fewer slots than rows too."""
    graphdef, state = model_state
    G = 3
    tokens, lengths = right_pad(QUEUE[:4], 8, "random")
    stops = _queue_stops(graphdef, state, np.repeat(tokens, G, 0), np.repeat(lengths, G), 5,
                         S.Temperature(1.0))
    common = dict(max_new_tokens=10, method=S.Temperature(1.0), stop_tokens=stops)
    repeated = S.generate(graphdef, state, np.repeat(tokens, G, 0), np.repeat(lengths, G),
                          jax.random.key(5), **common)
    for slots in (None, 6):
        grouped = S.generate(graphdef, state, tokens, lengths, jax.random.key(5),
                             num_samples=G, slots=slots, refill=1, **common)
        np.testing.assert_array_equal(grouped.tokens, repeated.tokens)
        np.testing.assert_allclose(grouped.logprobs, repeated.logprobs, atol=ATOL)
    assert 1 <= repeated.done.sum() < 4 * G
    rows = grouped.tokens.reshape(4, G, -1)
    assert any(not np.array_equal(r[0], r[1]) for r in rows)  # the samples of a group differ
    with pytest.raises(ValueError, match="multiple of num_samples"):
        S.generate(graphdef, state, tokens, lengths, jax.random.key(5), num_samples=G, slots=4,
                   **common)


def test_budgets_and_num_prompts(model_state):
    """Per-prompt budgets cap each row; prompts past `num_prompts` are never sampled."""
    graphdef, state = model_state
    tokens, lengths = right_pad(QUEUE, 8)
    free = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=8)
    budgets = np.array([8, 3, 0, 1, 5, 8], np.int32)
    out = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=8,
                     budgets=budgets, num_prompts=4, slots=2, pad_id=255)
    assert out.lengths.tolist() == [8, 3, 0, 1, 0, 0]
    for row, n in enumerate(out.lengths.tolist()):
        np.testing.assert_array_equal(out.tokens[row, :n], free.tokens[row, :n])
        assert np.all(out.tokens[row, n:] == 255) and np.all(out.logprobs[row, n:] == 0)


def test_sample_prompt_batches_in_chunks(model_state, monkeypatch):
    """A list longer than one chunk: every prompt once, in order, as the engine alone gives —
    sampled, prompt n with row n's keys, so 2 or 3 slots (chunks of 4 or 6) sample the same."""
    graphdef, state = model_state
    monkeypatch.setattr(S.front, "CHUNK_SLOTS", 2)  # chunks of 2 × slots prompts
    prompts = QUEUE + QUEUE[:3]
    tokens, lengths = right_pad(prompts, 8)
    key, method = jax.random.fold_in(jax.random.key(0), 0), S.Temperature(1.0)
    stops = _queue_stops(graphdef, state, tokens, lengths, key, method)
    alone = S.generate(graphdef, state, tokens, lengths, key, max_new_tokens=10, method=method,
                       stop_tokens=stops)
    for slots, sizes in ((2, [4, 4, 1]), (3, [6, 3])):
        chunks = list(S.sample_prompt_batches(
            graphdef, state, prompts, mesh=None, batch_size=slots, max_new_tokens=10,
            method=method, stop_tokens=stops, pad_id=0, seed=0))
        assert [len(c) for c in chunks] == sizes
        done = [c for chunk in chunks for c in chunk]
        assert [c.index for c in done] == list(range(len(prompts)))
        assert 2 <= sum(c.finished for c in done) < len(prompts)
        for c in done:
            n = int(alone.lengths[c.index])
            assert c.tokens == alone.tokens[c.index, :n].tolist()
            assert c.finished == bool(alone.done[c.index])
            np.testing.assert_allclose(c.logprobs, alone.logprobs[c.index, :n], atol=ATOL)


# ----------------------------------------------------------------------------- sampling methods

def _draw(method, logits, n=20000, seed=0):
    """`n` independent draws from one logits vector (one batch row per draw)."""
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
    return np.asarray(jax.jit(method.sample)(batch, jax.random.key(seed)))


def test_greedy_is_argmax():
    assert _draw(S.Greedy(), [0.1, 2.0, -1.0, 1.9], n=4).tolist() == [1, 1, 1, 1]


def test_temperature_matches_scaled_softmax():
    logits = np.array([1.0, 0.0, -0.5, 0.5], np.float32)
    for t in (0.5, 2.0):
        freq = np.bincount(_draw(S.Temperature(t), logits), minlength=4) / 20000
        expected = np.asarray(jax.nn.softmax(logits / t))
        # Standard error ≤ 0.0036 per entry; 0.02 is a >5-sigma bound (and the draws are seeded).
        np.testing.assert_allclose(freq, expected, atol=0.02)
    # ... and the two temperatures give visibly different distributions.
    assert abs(jax.nn.softmax(logits / 0.5)[0] - jax.nn.softmax(logits / 2.0)[0]) > 0.2


def test_inverse_cdf_inverts_the_float64_cumulative_distribution():
    # Two blocks of `CDF_BLOCK` and a partial one; a masked (−inf) run and a whole block of zero
    # mass; ties. Token i is drawn iff F(i − 1) ≤ u < F(i), F computed in float64 by numpy.
    rng = np.random.default_rng(0)
    vocab = 2 * S.CDF_BLOCK + 100
    logits = rng.normal(size=vocab).astype(np.float32) * 3
    logits[10:40] = -np.inf
    logits[S.CDF_BLOCK:2 * S.CDF_BLOCK] = -np.inf
    logits[500:503] = logits[499]
    probs = np.exp(logits.astype(np.float64) - logits.max())
    cumulative = np.cumsum(probs / probs.sum())
    uniform = np.linspace(0, 1, 50_001, endpoint=False).astype(np.float32)
    # u within float32 rounding of an interval's edge may fall either side.
    clear = np.min(np.abs(uniform[:, None] - cumulative[None, :]), axis=1) > 1e-6
    drawn = np.asarray(jax.jit(jax.vmap(S.inverse_cdf, in_axes=(None, 0)))(
        jnp.asarray(logits), jnp.asarray(uniform)))
    expected = np.searchsorted(cumulative, uniform.astype(np.float64), side="right")
    np.testing.assert_array_equal(drawn[clear], expected[clear])
    assert clear.mean() > 0.99
    assert not np.isin(drawn, np.flatnonzero(probs == 0)).any()
    # u → 1: the last token of positive mass, never one past it.
    assert int(S.inverse_cdf(jnp.asarray(logits), jnp.float32(1 - 2 ** -24))) == vocab - 1


def test_temperatures_outside_the_float32_range_are_refused_and_overflow_is_greedy():
    """Reported: temperature 1e-10 returned pad tokens with log-prob +inf, depending on the
    slot count, and inf was accepted. Out of [1e-4, 1e4] one line says what to use; and an
    overflowed +inf logit is the whole mass of the draw (it was NaN weights)."""
    for bad in (1e-5, 1e-10, float("inf"), 2e4):
        with pytest.raises(ValueError, match=r"temperature must be in \[0.0001, 10000\]"):
            S.Temperature(bad)
    S.Temperature(1e-4), S.TopP(0.9, 1e4)
    logits = jnp.array([[1.0, jnp.inf, 3.0, -jnp.inf], [0.0, 2.0, jnp.inf, jnp.inf]])
    assert S.inverse_cdf(logits, jnp.array([0.99, 0.0])).tolist() == [1, 2]
    assert S.inverse_cdf(logits, jnp.array([0.0, 0.99])).tolist() == [1, 3]


def test_top_k_stays_in_top_k():
    logits = np.array([0.3, 2.0, -1.0, 1.5, 1.9, 0.0, 1.4], np.float32)
    samples = _draw(S.TopK(3), logits)
    assert set(samples.tolist()) == {1, 3, 4}
    assert set(_draw(S.TopK(1, temperature=5.0), logits).tolist()) == {1}
    assert set(_draw(S.TopK(100), logits).tolist()) == set(range(7))  # k > V: whole vocabulary


def test_top_p_keeps_the_minimal_nucleus():
    probs = np.array([0.0625, 0.5, 0.125, 0.25, 0.0625], np.float32)  # ranked: 1, 3, 2, {0, 4}
    logits = np.log(probs)
    assert set(_draw(S.TopP(0.45), logits).tolist()) == {1}        # 0.5 ≥ 0.45
    assert set(_draw(S.TopP(0.7), logits).tolist()) == {1, 3}      # 0.75 ≥ 0.7 > 0.5
    assert set(_draw(S.TopP(0.8), logits).tolist()) == {1, 3, 2}   # 0.875 ≥ 0.8 > 0.75
    assert set(_draw(S.TopP(1.0), logits).tolist()) == set(range(5))
    # Within the nucleus the draw is renormalised: 0.5 / 0.75 and 0.25 / 0.75.
    freq = np.bincount(_draw(S.TopP(0.7), logits), minlength=5) / 20000
    np.testing.assert_allclose(freq[[1, 3]], [2 / 3, 1 / 3], atol=0.02)


def test_sampling_from_config_validates():
    assert S.sampling_from_config("top_p", p=0.9, temperature=0.7) == S.TopP(0.9, 0.7)
    assert S.sampling_from_config("greedy") == S.Greedy()
    with pytest.raises(ValueError, match="unknown sampling method"):
        S.sampling_from_config("beam")
    with pytest.raises(ValueError, match="unknown argument"):
        S.sampling_from_config("top_k", p=0.9)
    for bad in (lambda: S.Temperature(0.0), lambda: S.TopK(0), lambda: S.TopP(1.5)):
        with pytest.raises(ValueError):
            bad()


# ----------------------------------------------------------------------------- Sampler (text)

def _tokenizer():
    """A word-level HF tokenizer with a chat template, built in memory (ids < the tiny vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"w{i}" for i in range(200)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>",
                                        eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<user>", "<assistant>"]})
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tokenizer


def test_sampler_texts(model_state):
    graphdef, state = model_state
    tokenizer = _tokenizer()
    prompts = ["w1 w2 w3", "w10 w11", "w5 w6 w7 w8 w9 w12 w13"]
    probe = S.Sampler(graphdef, state, tokenizer, batch_size=2)
    encoded = probe.encode(prompts[0])
    assert encoded[0] == tokenizer.bos_token_id and encoded[-1] == tokenizer.convert_tokens_to_ids(
        "<assistant>")
    alone = S.generate(graphdef, state, np.array([encoded]), np.array([len(encoded)]),
                       jax.random.key(0), max_new_tokens=8).tokens[0].tolist()
    stop_at = next(i for i in range(1, 8) if alone[i] not in alone[:i])

    results = S.Sampler(graphdef, state, tokenizer, batch_size=2,
                        stop_tokens=(alone[stop_at],)).sample_texts(prompts, max_new_tokens=8)
    assert [r["prompt"] for r in results] == prompts
    first = results[0]
    assert first["tokens"] == alone[:stop_at + 1] and first["finished"]
    assert first["response"] == tokenizer.decode(alone[:stop_at], skip_special_tokens=True)
    for r in results:
        assert len(r["logprobs"]) == len(r["tokens"]) and all(lp <= 0 for lp in r["logprobs"])
        if not r["finished"]:
            assert len(r["tokens"]) == 8
            assert r["response"] == tokenizer.decode(r["tokens"], skip_special_tokens=True)


def test_bucket_length():
    assert [S.bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 130)] == [8, 8, 16, 64, 64, 128, 192]


# ----------------------------------------------------------------------------- on a mesh

MESH_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from easyalign import sampler as S, sharding
    from easyalign.model import create_model, preset

    cfg = preset("tiny", dtype="float32")
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2)
    tokens = np.array([[11, 42, 7, 0], [3, 99, 150, 20]] * 2, np.int32)
    lengths = np.array([3, 4, 3, 4], np.int32)
    outs = []
    for m in (mesh, None):
        graphdef, state = nnx.split(create_model(cfg, mesh=m, seed=0))
        if m is not None:  # the params really are split over the mesh
            assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))
        outs.append(S.generate(graphdef, state, tokens, lengths, jax.random.key(0),
                               max_new_tokens=6, stop_tokens=(2,), mesh=m))
    sharded, single = outs
    for array in (sharded.tokens, sharded.logprobs, sharded.lengths, sharded.done):
        expected = sharding.batch_sharding(mesh, array.ndim)
        assert array.sharding.is_equivalent_to(expected, array.ndim), array.sharding
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)
    # Two slots per prompt, refilled in the loop, G = 2 samples sharing one prefill.
    graphdef, state = nnx.split(create_model(cfg, mesh=mesh, seed=0))
    grouped = S.generate(graphdef, state, tokens, lengths, jax.random.key(0), max_new_tokens=6,
                         stop_tokens=(2,), num_samples=2, slots=4, refill=1, mesh=mesh)
    repeated = S.generate(graphdef, state, np.repeat(tokens, 2, 0), np.repeat(lengths, 2),
                          jax.random.key(0), max_new_tokens=6, stop_tokens=(2,), mesh=mesh)
    np.testing.assert_array_equal(grouped.tokens, repeated.tokens)
    print("ok")
""")


def test_generate_on_a_mesh_of_fake_devices():
    result = run_on_cpu_devices(4, "-c", MESH_SCRIPT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_sampler_fuses_projections_only_where_it_may(model_state):
    """`compute_weights` (the sampler's model, outside its decode loop) fuses q/k/v and
    gate/up into one kernel each — the tests above then check the sampler against the unfused
    training forward — but not projections with biases (Qwen2's q/k/v) or LoRA adapters."""
    from easyalign.model import lora
    from easyalign.sampler.decode import compute_weights

    graphdef, state = model_state
    model = compute_weights(graphdef, state)
    attn, mlp = model.layers.attn, model.layers.mlp
    expected = jnp.concatenate([attn.q_proj.kernel[...], attn.k_proj.kernel[...],
                                attn.v_proj.kernel[...]], axis=2)
    np.testing.assert_array_equal(attn.qkv_kernel[...], expected)
    assert mlp.gate_up_kernel[...].shape[-1] == 2 * mlp.gate_proj.kernel[...].shape[-1]
    biased = compute_weights(*nnx.split(create_model(
        preset("tiny", dtype="float32", qkv_bias=True), seed=0)))
    assert getattr(biased.layers.attn, "qkv_kernel", None) is None
    assert biased.layers.mlp.gate_up_kernel is not None
    adapted = compute_weights(*nnx.split(create_model(
        preset("tiny", dtype="float32", lora=lora.LoraConfig(rank=2)), seed=0)))
    assert getattr(adapted.layers.attn, "qkv_kernel", None) is None
