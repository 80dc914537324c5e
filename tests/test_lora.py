"""LoRA adapters (issue 19): the adapter math, its initialisation, targets, and the model surgery.

Expected values come from a hand formula in numpy (y = xW + s·(xA)B, Hu et al. 2021 eq. 3) or
from torch's own initialiser, never from the code under test.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from easyalign import sharding
from easyalign.model import LoraConfig, ModelConfig, abstract_model, lora

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, dtype="float32")


def create_model(config, seed=0):
    """A model of `config` with weights drawn by numpy on the host: norm scales around 1,
    everything else N(0, 0.1²) (adapters too, when the config has them). No initialiser is
    compiled, which on a loaded 2-core CPU costs seconds per shape."""
    graphdef, abstract, _ = abstract_model(config)
    rng = np.random.default_rng(seed)

    def draw(path, value):
        noise = 0.1 * rng.standard_normal(value.shape)
        return jnp.asarray(noise + (1.0 if "scale" in lora._keys(path) else 0.0), value.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


@functools.lru_cache(maxsize=None)
def _forward(graphdef):
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def run(model, x):
    """`model(x)` through one jit per model structure (compiling is the cost on a CPU)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef)(state, x))


BIASES = dict(qkv_bias=True, mlp_bias=True, o_bias=True)


def tokens(seed=0, shape=(2, 12)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 97, shape))


def randomise_b(model, seed=0, scale=0.3):
    """Non-zero B everywhere (a trained adapter), drawn with numpy."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        if path[-1] == "lora_b":
            var.set_value(jnp.asarray(scale * rng.standard_normal(var.get_value().shape),
                                      var.get_value().dtype))
    nnx.update(model, state)
    return model


def test_step0_logits_equal_the_base_bit_for_bit():
    base = create_model(ModelConfig(**TINY, **BIASES), seed=0)
    adapted = lora.attach(base, LoraConfig(rank=4, alpha=8.0), seed=1)
    x = tokens()
    assert np.array_equal(run(adapted, x), run(base, x))
    # The adapters are there and A is not zero: the equality is B = 0, not a missing path.
    a = np.asarray(adapted.layers.attn.q_proj.lora_a[...])
    assert a.shape == (2, 32, 4) and np.abs(a).min() > 0
    assert not np.any(np.asarray(adapted.layers.mlp.down_proj.lora_b[...]))


def test_adapter_is_the_hand_formula_on_every_projection_shape():
    """q (d → H·hd), o (H·hd → d) and down (f → d) against y = xW + b + s·(xA)B in numpy on the
    flattened matrices, for the plain scale α/r and rsLoRA's α/√r."""
    assert LoraConfig(rank=4, alpha=6.0).scaling == 6.0 / 4
    for rslora, expected_scale in ((True, 6.0 / 2),):
        cfg = ModelConfig(**TINY, qkv_bias=True, lora=LoraConfig(rank=4, alpha=6.0,
                                                                 rslora=rslora))
        assert cfg.lora.scaling == expected_scale
        model = randomise_b(create_model(cfg, seed=0), seed=1)
        rng = np.random.default_rng(2)
        for name, in_shape in (("q_proj", (3, 32)), ("o_proj", (3, 4, 8)),
                               ("down_proj", (3, 48))):
            stacked = getattr(model.layers.attn if name != "down_proj" else model.layers.mlp,
                              name)
            graphdef, state = nnx.split(stacked)
            module = nnx.merge(graphdef, jax.tree.map(lambda v: v[0], state))  # layer 0
            w = np.asarray(module.kernel[...])
            a, b = np.asarray(module.lora_a[...]), np.asarray(module.lora_b[...])
            x = rng.standard_normal((1,) + in_shape).astype(np.float32)
            got = np.asarray(module(jnp.asarray(x)))[0]
            fan_in = int(np.prod(in_shape[1:]))
            if name == "down_proj":   # kernel stored [d, f]: y = x Wᵀ
                w2, out_shape = w.T, (3, 32)
            elif name == "o_proj":    # kernel [d, H, hd]: y = x·W[(H hd), d]
                w2, out_shape = w.reshape(32, 32).T, (3, 32)
            else:                     # kernel [d, H, hd]
                w2, out_shape = w.reshape(32, 32), (3, 4, 8)
            x2 = x[0].reshape(3, fan_in)
            want = x2 @ w2 + expected_scale * (x2 @ a.reshape(fan_in, 4)) @ b.reshape(4, -1)
            if name == "q_proj":
                want = want + np.asarray(module.bias[...]).reshape(-1)
            np.testing.assert_allclose(got.reshape(3, -1), want.reshape(3, -1), rtol=1e-5,
                                       atol=1e-5)
            assert got.shape == out_shape


def test_a_is_drawn_as_peft_draws_it():
    """PEFT: `nn.init.kaiming_uniform_(lora_A.weight, a=√5)`; the bound from torch's own gain."""
    import torch

    model = lora.attach(create_model(ModelConfig(**TINY), seed=0), LoraConfig(rank=8), seed=3)
    for module, fan_in in ((model.layers.attn.q_proj, 32), (model.layers.attn.o_proj, 32),
                           (model.layers.mlp.down_proj, 48)):
        a = np.asarray(module.lora_a[...])
        gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        bound = gain * math.sqrt(3.0 / fan_in)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
        assert abs(np.std(a) - bound / math.sqrt(3)) < 0.1 * bound  # U(−b, b): σ = b/√3
        # torch's draw on PEFT's [r, fan_in] weight has the same bound
        w = torch.empty(8, fan_in)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        assert w.abs().max().item() <= bound
        assert not np.any(np.asarray(module.lora_b[...]))
    # different layers draw different adapters
    a = np.asarray(model.layers.attn.q_proj.lora_a[...])
    assert not np.array_equal(a[0], a[1])


def test_targets_by_name_hf_name_group_and_pattern():
    assert lora.resolve_targets("q_proj,v_proj") == ("q", "v")
    assert lora.resolve_targets("q,v") == ("q", "v")
    assert lora.resolve_targets(["qkv_proj", "down"]) == ("q", "k", "v", "down")
    assert lora.resolve_targets("gate_up_proj") == ("gate", "up")
    assert lora.resolve_targets("attn") == ("q", "k", "v", "o")
    assert lora.resolve_targets("all") == tuple(lora.PROJECTIONS)
    assert lora.resolve_targets("[qv]_proj") == ("q", "v")
    assert lora.resolve_targets(".*_proj") == tuple(lora.PROJECTIONS)
    with pytest.raises(ValueError, match="'wq' matches no projection of this model; its "
                                         "projections are q_proj \\(q\\), k_proj"):
        lora.resolve_targets("q,wq")
    # a mixture of experts has no MLP projections for adapters
    assert lora.resolve_targets("all", lora.available_targets(8)) == ("q", "k", "v", "o")
    with pytest.raises(ValueError, match="'mlp' matches no projection.*o_proj \\(o\\)$"):
        lora.resolve_targets("mlp", lora.available_targets(8))
    with pytest.raises(ValueError, match="model.lora: rank must be ≥ 1"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match="base_dtype 'int8'"):
        LoraConfig(base_dtype="int8")


def test_only_targeted_projections_get_adapters_and_the_count_is_the_formula():
    cfg = ModelConfig(**TINY, lora=LoraConfig(rank=4, targets=("q", "v", "down")))
    _, abstract, _ = abstract_model(cfg)
    adapters = {".".join(map(str, p)): v.get_value().size
                for p, v in nnx.to_flat_state(abstract) if lora.is_adapter(p)}
    assert sorted(adapters) == sorted(f"layers.{m}.{ab}" for m in (
        "attn.q_proj", "attn.v_proj", "mlp.down_proj") for ab in ("lora_a", "lora_b"))
    # r·(in + out) per projection and layer: q 32→32, v 32→16, down 48→32
    assert sum(adapters.values()) == lora.param_count(cfg) == 2 * 4 * (64 + 48 + 80)


def test_dropout_only_with_a_key():
    # unscanned layers (a Python loop over the stacked weights) slice the adapters and keys
    cfg = ModelConfig(**TINY, scan_layers=False,
                      lora=LoraConfig(rank=4, dropout=0.5, targets=("down",)))
    model = randomise_b(create_model(cfg, seed=0))
    x = tokens()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forwards(state, x, key):  # one compile: twice without a key, once with
        model = nnx.merge(graphdef, state)
        return model.trunk(x)[0], model.trunk(x)[0], model.trunk(x, dropout_key=key)[0]

    hidden, again, dropped = forwards(state, x, jax.random.PRNGKey(0))
    assert np.array_equal(np.asarray(hidden), np.asarray(again))
    assert not np.allclose(np.asarray(hidden), np.asarray(dropped), atol=1e-3)
    # inverted dropout keeps the mean: E[drop(x)] = x
    x = jnp.ones((20000,))
    kept = lora.dropout(x, 0.25, jax.random.PRNGKey(1))
    assert abs(float(jnp.mean(kept)) - 1.0) < 0.02 and abs(float(jnp.mean(kept == 0)) - 0.25) < 0.02


def test_merge_equals_the_unmerged_model_and_config_round_trips():
    base_model = create_model(ModelConfig(**TINY, **BIASES), seed=0)
    model = randomise_b(lora.attach(base_model, LoraConfig(rank=4, alpha=8.0), seed=1), seed=4)
    cfg = model.config
    x = tokens(1)
    merged = lora.merge(model)
    assert merged.config.lora is None and not lora.has_adapters(nnx.state(merged))
    want = run(model, x)
    base = run(base_model, x)
    assert np.abs(want - base).max() > 1e-2  # the adapters do change the function
    np.testing.assert_allclose(run(merged, x), want, atol=1e-5, rtol=0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


# ----------------------------------------------------------------------------- training
def sft_batch(seed=0, rows=4, length=12):
    x = np.random.default_rng(seed).integers(0, 97, (rows, length)).astype(np.int32)
    return {"tokens": jnp.asarray(x), "loss_mask": jnp.ones((rows, length), jnp.float32)}


def lora_train_setup(model, tx=None, frozen=None, loss_fn=None):
    """The driver's LoRA split around a loss, a train state and the jitted step."""
    import optax

    from easyalign.algorithms import sft
    from easyalign.train import driver, loop, state as train_state
    from easyalign.train.step import make_train_step

    graphdef, params = nnx.split(model)
    tx = tx or optax.adam(3e-2)
    trainable, loss, frozen2, _, base = driver.with_frozen_base(
        params, loss_fn or sft.make_loss(graphdef, packed=False), frozen, loop.StepHooks())
    mesh = sharding.single_device_mesh()
    state = train_state.create_train_state(trainable, tx, 0, mesh)
    step = make_train_step(loss, tx, lambda s: 3e-2, train_state.state_shardings(state))
    return graphdef, params, state, step, frozen2, base


def test_lora_training_moves_only_the_adapters_and_the_loss_falls():
    base_model = create_model(ModelConfig(**TINY))
    model = lora.attach(base_model, LoraConfig(rank=4, alpha=8.0), seed=0)
    graphdef, params, state, step, frozen, base = lora_train_setup(model)
    base_before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(base)}
    # The train state holds the adapters only: parameters and Adam's two moments.
    trained = [".".join(map(str, p)) for p, _ in nnx.to_flat_state(state.params)]
    assert trained and all(p.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for p in trained)
    adapter_bytes = sum(v.get_value().nbytes for _, v in nnx.to_flat_state(state.params))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim >= 2]
    assert sum(x.nbytes for x in moments) == 2 * adapter_bytes
    assert sum(x.nbytes for x in jax.tree.leaves(state.opt_state)) < 2 * adapter_bytes + 64

    a_before = np.asarray(dict(nnx.to_flat_state(state.params))[
        ("layers", "attn", "q_proj", "lora_a")].get_value())
    batch = sft_batch()
    losses = []
    for i in range(4):
        state, metrics = step(state, batch, frozen)
        losses.append(float(metrics["loss"]))
        if i == 0:
            # At B = 0, ∂L/∂A = s·xᵀ(∂L/∂y)Bᵀ = 0: the first step moves B only (Adam's
            # update of a zero gradient is 0), while the gradient norm is not 0.
            a = dict(nnx.to_flat_state(state.params))[("layers", "attn", "q_proj", "lora_a")]
            assert np.array_equal(np.asarray(a.get_value()), a_before)
            assert float(metrics["grad_norm"]) > 0
    assert losses[-1] < losses[0] - 0.05, losses
    # The base is bit-identical after training (never donated, never updated); B moved.
    for path, value in nnx.to_flat_state(base):
        assert np.array_equal(np.asarray(value.get_value()), base_before[path]), path
    b = dict(nnx.to_flat_state(state.params))[("layers", "attn", "q_proj", "lora_b")]
    assert np.abs(np.asarray(b.get_value())).max() > 0


def test_lora_config_block_builds_the_model_config(tmp_path):
    """`model.lora.*` of a phase config → ModelConfig.lora; base_dtype stores the base in bf16
    and the adapters in the master dtype; frozen models (copies of the block) get none."""
    from types import SimpleNamespace

    from configs import base as base_config
    from easyalign.hf import models

    c = base_config.get_config()
    c.model.preset, c.model.vocab_size = "tiny", 256
    c.model.lora.rank, c.model.lora.targets = 8, "q_proj,v_proj,mlp"
    c.model.lora.base_dtype = "bfloat16"
    tokenizer = SimpleNamespace(eos_token_id=1, bos_token_id=2, pad_token_id=0)
    run_ = SimpleNamespace(config=c, tokenizer=tokenizer, mesh=sharding.single_device_mesh())
    config = models.model_config(run_)
    assert config.lora == LoraConfig(rank=8, alpha=16.0, targets=("q", "v", "gate", "up",
                                                                  "down"),
                                     base_dtype="bfloat16")
    assert models.model_config(run_, c.model).lora is None  # a frozen copy of the block
    _, abstract, _ = abstract_model(config)
    dtypes = {".".join(map(str, p)): v.get_value().dtype for p, v in nnx.to_flat_state(abstract)}
    assert dtypes["layers.attn.q_proj.kernel"] == jnp.bfloat16
    assert dtypes["embed_tokens.embedding"] == jnp.bfloat16
    assert dtypes["layers.attn.q_proj.lora_a"] == jnp.float32
    assert "layers.attn.k_proj.lora_a" not in dtypes
    # The model the phases build (init_model) has the same dtypes as its abstract shape.
    built = {".".join(map(str, p)): v.get_value().dtype
             for p, v in nnx.to_flat_state(nnx.state(models.init_model(run_), nnx.Param))}
    assert {k: built[k] for k in dtypes} == dtypes
    c.model.lora.targets = "o_proj,wo"
    with pytest.raises(ValueError, match="'wo' matches no projection"):
        models.model_config(run_)


def test_settings_that_train_nothing_or_waste_are_said():
    """The trial: alpha=0 trained with grad_norm 0; rank 1000 on a 576-wide model planned 2.3×
    the base's parameters; dropout in GRPO was silently not applied. alpha=0 stops the run;
    a rank reaching a targeted weight's narrower side, and dropout outside SFT, are warnings."""
    from configs import grpo, sft
    from easyalign.config_check import ConfigError, validate

    c = sft.get_config("tiny")
    c.model.lora.rank, c.model.lora.alpha = 8, 0.0
    with pytest.raises(ConfigError, match=r"^model\.lora\.alpha=0 with model\.lora\.rank=8: "
                                          r"the adapters' scale alpha / r is 0"):
        validate(c, paths=False)
    c.model.lora.rank = 0  # no adapters: alpha is not read
    validate(c, paths=False)
    # A target that names no projection: said before the data loads (it came after).
    c.model.lora.rank, c.model.lora.alpha, c.model.lora.targets = 8, 16.0, "q_proj,x_proj"
    with pytest.raises(ConfigError, match=r"^model\.lora\.targets: 'x_proj' matches no "
                                          r"projection"):
        validate(c, paths=False)
    for module, warned in ((sft, False), (grpo, True)):
        c = module.get_config("tiny")
        c.model.lora.rank, c.model.lora.dropout = 8, 0.1
        lines = [w for w in validate(c, paths=False) if "dropout" in w]
        assert lines == ([f"model.lora.dropout=0.1 is applied in SFT only: easyalign "
                          f"{c.phase} runs the adapters without dropout"] if warned else [])
    # SmolLM2-135M's widths: hidden 576, 3 KV heads × 64 = 192 (k_proj, v_proj 576 × 192).
    smol = ModelConfig(**dict(TINY, hidden_size=576, intermediate_size=1536, num_heads=9,
                              num_kv_heads=3, head_dim=64))
    assert lora.rank_warning(smol.replace(lora=LoraConfig(rank=64))) is None
    line = lora.rank_warning(smol.replace(lora=LoraConfig(rank=1000)))
    assert line.startswith("[config] warning: model.lora.rank=1000 ≥ 192, the narrower side of "
                           "k_proj (576 × 192): an adapter of that rank")
    # Only the targeted weights count: the MLP alone is 576 wide at its narrow side.
    assert lora.rank_warning(smol.replace(lora=LoraConfig(rank=500, targets=("gate", "up",
                                                                             "down")))) is None
    assert "≥ 576, the narrower side of gate_proj" in lora.rank_warning(
        smol.replace(lora=LoraConfig(rank=576, targets=("gate", "up", "down"))))


# ----------------------------------------------------------------------------- DPO reference
def test_dpo_reference_is_the_base_with_adapters_off_and_costs_no_copy():
    """The live DPO reference of a LoRA policy is `BaseReference`: the step's arguments hold
    the base once (bytes from the parameter-count formula), the first loss is log 2 (policy =
    reference at B = 0), and after a step the implicit reward is β(log π_θ − log π_base) with
    π_base computed from the plain base model."""
    from types import SimpleNamespace

    from easyalign.algorithms import dpo

    plain_config = ModelConfig(**TINY)
    base_model = create_model(plain_config)
    model = lora.attach(base_model, LoraConfig(rank=4, alpha=8.0), seed=0)
    frozen, ref_graphdef = lora.live_reference(model)
    assert isinstance(frozen, lora.BaseReference)
    d = SimpleNamespace(beta=0.5, loss_type="sigmoid", label_smoothing=0.0,
                        average_logps=False, sft_weight=0.0)
    graphdef = nnx.split(model)[0]
    _, _, state, step, frozen2, _ = lora_train_setup(
        model, frozen=frozen, loss_fn=dpo.make_loss(graphdef, d, ref_graphdef))
    rng = np.random.default_rng(5)
    batch = {f"{side}_{key}": jnp.asarray(rng.integers(0, 97, (2, 12)).astype(np.int32)
                                          if key == "tokens" else np.ones((2, 12), np.float32))
             for side in ("chosen", "rejected") for key in ("tokens", "loss_mask")}

    arguments = step.lower(state, batch, frozen2).compile().memory_analysis() \
        .argument_size_in_bytes
    base_bytes = 4 * plain_config.param_count()            # float32 weights, by formula
    adapter_bytes = 4 * lora.param_count(model.config)     # ... and Adam's two moments
    batch_bytes = sum(x.nbytes for x in batch.values())
    extra = arguments - (base_bytes + 3 * adapter_bytes + batch_bytes)
    assert 0 <= extra <= 64, (arguments, base_bytes, extra)  # step, RNG key, Adam's count

    state, first = step(state, batch, frozen2)
    # Policy and reference are two XLA programs (the policy's adapter dots beside the base's),
    # so their summed log-probs (|Σ log π| < 64 here: 11 tokens of a 97-token vocabulary)
    # agree to an fp32 ulp or two, not bit for bit: the loss −log σ(β(Δ_w − Δ_l)) is log 2 up
    # to β/2 · (|Δ_w| + |Δ_l|) ≤ β/2 · 4 ulps (one machine's fusions gave 1.4e-6).
    ulp = float(np.spacing(np.float32(64.0)))
    np.testing.assert_allclose(float(first["loss"]), math.log(2.0), rtol=0, atol=2 * d.beta * ulp)
    trained = lora.join(state.params, frozen2[0])

    @jax.jit
    def rewards(trained, plain):
        pi_w, _ = dpo.pair_logps(nnx.merge(graphdef, trained), batch, False)
        base_w, _ = dpo.pair_logps(nnx.merge(*plain), batch, False)
        return 0.5 * jnp.mean(pi_w - base_w)

    want = float(rewards(trained, nnx.split(base_model)))
    assert abs(want) > 1e-4  # the adapters moved the policy away from the base
    _, second = step(state, batch, frozen2)  # its metrics are of the params before it
    np.testing.assert_allclose(float(second["rewards/chosen"]), want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- doctor
def test_doctor_sizes_lora_8b_on_one_gpu():
    """Llama-3.1-8B, r = 16 on every projection: 41,943,040 trained parameters (the count PEFT
    prints for this model and setting); the base in bf16; optimizer and gradients only for the
    adapters; DPO's live reference (the base, adapters off) costs nothing."""
    from easyalign import doctor
    from easyalign.cli import load_config

    plan = ["--config.workdir=/nonexistent/x", "--config.model.preset=llama-3.1-8b",
            "--config.model.vocab_size=128256", "--config.model.dtype=bfloat16",
            "--config.model.remat=full", "--config.model.lora.rank=16",
            "--config.model.lora.base_dtype=bfloat16", "--config.doctor.devices=1",
            "--config.doctor.device_memory_gib=141", "--config.train.batch_size=4"]
    report = doctor.diagnose(load_config(["--config=configs/doctor.py:sft", *plan]))
    adapters = 41_943_040
    assert report["model"]["lora"]["adapter_params"] == adapters
    memory = report["memory"]["per_device"]
    assert memory["params"] == 8_030_261_248 * 2 + adapters * 4
    assert memory["optimizer"] == 2 * adapters * 4 + 2 * 4   # μ, ν and two step counters
    assert memory["gradients"] == adapters * 4
    assert report["memory"]["verdict"].startswith("fits")
    dpo = doctor.diagnose(load_config(["--config=configs/doctor.py:dpo", *plan,
                                       "--config.model.init=scratch",
                                       "--config.dpo.reference=live"]))
    assert not dpo["problems"], dpo["problems"]
    assert dpo["extra_models"] == [] and "frozen_models" not in dpo["memory"]["per_device"]
