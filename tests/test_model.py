"""The decoder: KV-cache decoding, packing, padding, layer scanning/remat, sharding, presets."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_on_cpu_devices
from easyalign.model import KVCache, abstract_model, create_model, preset

PUBLISHED_PARAMS = {
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "mistral-7b": 7_241_732_096,
    "phi-3-mini": 3_821_079_552,
    "gemma-2-2b": 2_614_341_888,
    "gemma-3-1b": 999_885_952,
}


@pytest.fixture(scope="module")
def tiny():
    return create_model(preset("tiny", dtype="float32"), seed=1)


def random_tokens(shape, seed=0, vocab=256):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_real_presets_have_published_parameter_counts(name):
    _, state, _ = abstract_model(preset(name))
    count = sum(x.size for x in jax.tree.leaves(state))
    assert count == PUBLISHED_PARAMS[name]
    assert preset(name).param_count() == PUBLISHED_PARAMS[name]


def test_kv_cache_decoding_equals_full_forward(tiny):
    tokens = random_tokens((2, 12))
    full = tiny(tokens)
    cache = KVCache.zeros(tiny.config, batch=2, max_length=16, dtype=jnp.float32)
    hidden, cache = tiny.trunk(tokens[:, :4], cache=cache, prefill=True)  # prefill 4 tokens
    steps = [tiny.logits(hidden)]
    for t in range(4, 12):  # then 8 single-token steps
        hidden, cache = tiny.trunk(tokens[:, t:t + 1], positions=jnp.full((2, 1), t), cache=cache)
        steps.append(tiny.logits(hidden))
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_cache_continuation_with_several_tokens_and_per_row_positions(tiny):
    """Decode calls of several tokens, rows at different positions (as after a ragged prompt)."""
    tokens = random_tokens((2, 12), seed=7)
    full = tiny(tokens)
    cache = KVCache.zeros(tiny.config, batch=2, max_length=16, dtype=jnp.float32)
    # Row 0's prompt is 3 long (its slots 3, 4 get padding), row 1's is 5 long.
    prompts = tokens[:, :5].at[0, 3:5].set(jnp.asarray([11, 12], jnp.int32))
    _, cache = tiny.trunk(prompts, cache=cache, prefill=True)
    starts = jnp.asarray([3, 5])
    positions = starts[:, None] + jnp.arange(3)[None]
    chunk = jnp.take_along_axis(tokens, positions, axis=1)
    hidden, _ = tiny.trunk(chunk, positions=positions, cache=cache)
    expected = jnp.take_along_axis(full, positions[..., None], axis=1)
    np.testing.assert_allclose(tiny.logits(hidden), expected, atol=1e-5, rtol=0)


def test_packed_rows_equal_separate_sequences(tiny):
    a, b = random_tokens((1, 5), seed=1), random_tokens((1, 7), seed=2)
    packed = jnp.concatenate([a, b], axis=1)
    positions = jnp.asarray([list(range(5)) + list(range(7))])
    segments = jnp.asarray([[1] * 5 + [2] * 7])
    out = tiny(packed, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(out[:, :5], tiny(a), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[:, 5:], tiny(b), atol=1e-5, rtol=0)


def test_right_padding_with_attention_mask_leaves_tokens_unchanged(tiny):
    tokens = random_tokens((1, 6), seed=3)
    padded = jnp.concatenate([tokens, jnp.zeros((1, 3), jnp.int32)], axis=1)
    mask = jnp.asarray([[1] * 6 + [0] * 3])
    np.testing.assert_allclose(tiny(padded, mask)[:, :6], tiny(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes", [dict(scan_layers=False), dict(remat="full"),
                                     dict(remat="save_proj", scan_layers=False)])
def test_layer_loop_and_remat_do_not_change_the_function(tiny, changes):
    other = create_model(tiny.config.replace(**changes), seed=1)
    tokens = random_tokens((2, 8), seed=4)
    np.testing.assert_allclose(other(tokens), tiny(tokens), atol=1e-5, rtol=0)

    def loss(model):
        return jnp.mean(model(tokens) ** 2)

    from flax import nnx
    g_ref = nnx.grad(loss)(tiny)
    g_other = nnx.grad(loss)(other)
    for x, y in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_other)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kernel_axes", ["dv", "vd"])
def test_head_matmul_gradients_equal_autodiff_in_either_kernel_layout(kernel_axes):
    """The custom VJP (bf16 cotangent, kernel-dtype kernel gradient) is the einsum's gradient."""
    from easyalign.model.transformer import head_matmul
    rng = np.random.RandomState(0)
    hidden = jnp.asarray(rng.randn(2, 5, 16), jnp.float32)
    kernel = jnp.asarray(rng.randn(16, 40) if kernel_axes == "dv" else rng.randn(40, 16),
                         jnp.float32)
    weights = jnp.asarray(rng.randn(2, 5, 40), jnp.float32)

    def loss(fn):
        return lambda h, k: jnp.sum(jnp.tanh(fn(h, k)) * weights)

    custom = jax.grad(loss(lambda h, k: head_matmul(h, k, kernel_axes)), argnums=(0, 1))
    plain = jax.grad(loss(lambda h, k: jnp.einsum(f"...d,{kernel_axes}->...v", h, k)),
                     argnums=(0, 1))
    for got, want in zip(custom(hidden, kernel), plain(hidden, kernel)):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_a_seed_draws_the_same_kernel_whatever_its_storage_order():
    from flax import nnx
    from easyalign import sharding
    from easyalign.model.layers import Einsum
    config = preset("tiny", dtype="float32")
    with sharding.use_mesh(sharding.single_device_mesh()):
        stored_out_in = Einsum("btf,df->btd", (8, 24), ("embed", "mlp"), config=config,
                               rngs=nnx.Rngs(5))
        stored_in_out = Einsum("btf,fd->btd", (24, 8), ("mlp", "embed"), config=config,
                               rngs=nnx.Rngs(5))
    np.testing.assert_array_equal(np.asarray(stored_out_in.kernel[...]),
                                  np.asarray(stored_in_out.kernel[...]).T)
    x = jnp.asarray(np.random.RandomState(0).randn(2, 3, 24), jnp.float32)
    np.testing.assert_allclose(np.asarray(stored_out_in(x)), np.asarray(stored_in_out(x)),
                               rtol=1e-6, atol=1e-6)


def test_scalar_head_scores_every_position():
    model = create_model(preset("tiny", dtype="float32", head="scalar"), seed=0)
    scores = model(random_tokens((3, 5)))
    assert scores.shape == (3, 5) and scores.dtype == jnp.float32
    assert not hasattr(model, "lm_head")


def test_sliding_window_limits_attention():
    config = preset("tiny", dtype="float32", sliding_window=3)
    windowed, full = create_model(config, seed=0), create_model(config.replace(sliding_window=None), seed=0)
    tokens = random_tokens((1, 8), seed=5)
    # Inside the window nothing differs; beyond it the outputs must.
    np.testing.assert_allclose(windowed(tokens)[:, :3], full(tokens)[:, :3], atol=1e-5, rtol=0)
    assert float(jnp.abs(windowed(tokens)[:, 5:] - full(tokens)[:, 5:]).max()) > 1e-4
    # The masked path (explicit positions) and the kernel's causal window agree.
    positions = jnp.arange(8)[None]
    np.testing.assert_allclose(windowed(tokens, positions=positions), windowed(tokens), atol=1e-5)


SHARDED_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from easyalign import sharding
    from easyalign.model import create_model, preset
    assert jax.device_count() == 8
    config = preset("tiny", dtype="float32")
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (4, 16)), jnp.int32)
    reference = np.asarray(create_model(config, seed=3)(tokens))
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model = create_model(config, mesh, seed=3)
    specs = {
        "q": (model.layers.attn.q_proj.kernel, P(None, "fsdp", "tensor", None)),
        "k": (model.layers.attn.k_proj.kernel, P(None, "fsdp", "tensor", None)),
        "o": (model.layers.attn.o_proj.kernel, P(None, "fsdp", "tensor", None)),
        "gate": (model.layers.mlp.gate_proj.kernel, P(None, "fsdp", "tensor")),
        "down": (model.layers.mlp.down_proj.kernel, P(None, "fsdp", "tensor")),
        "embed": (model.embed_tokens.embedding, P(("fsdp", "tensor"), None)),
        "lm_head": (model.lm_head.kernel, P("fsdp", "tensor")),
        "norm": (model.final_norm.scale, P(None)),
    }
    for name, (var, spec) in specs.items():
        got = var[...].sharding.spec
        assert tuple(got) == tuple(spec) or got == spec, (name, got, spec)
    from flax import nnx
    graphdef, state = nnx.split(model)
    with sharding.use_mesh(mesh):
        batch = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
        logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, batch)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5, rtol=0)
    print("OK")
""")


def test_fsdp_and_tensor_sharding_on_8_devices_match_one_device():
    result = run_on_cpu_devices(8, "-c", SHARDED_CHECK, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
