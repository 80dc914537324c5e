"""Qwen3-MoE: router and expert placement matter (top-k and its renormalisation: the
negative controls of `test_hf_import.py`), the load-balancing loss equals transformers', the SFT loss
adds it, greedy decoding equals `generate`, the expert-sharded mesh gives one device's loss, and
the Qwen3-30B-A3B preset has the published size.

Logit parity (1e-4, fp32) and the bit-identical round trip (export → transformers loads it, same
logits) run in `test_hf_import.py` / `test_hf_export.py` over `hf_fixtures.CASES["qwen3_moe"]`
(8 experts, top-2 renormalised, head_dim 24 ≠ 64 / 4, GQA 4:2).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from easyalign import doctor, from_hf
from easyalign import sampler as S
from easyalign.model import abstract_model, preset
from easyalign.model.config import MOE_FIELDS
from conftest import run_script_on_cpu_devices
from hf_fixtures import batch, make_hf_model, ours

TOL = 1e-4


def test_router_and_expert_placement_matter(tmp_path):
    """Swapping two experts' weights, or permuting the router's columns, changes the logits:
    the parity test would not notice an expert/router mix-up otherwise."""
    make_hf_model("qwen3_moe", tmp_path)
    ids, mask = batch()
    keep = mask.astype(bool)
    model = from_hf(tmp_path, dtype="float32")
    base = ours(model, ids, mask)
    router = model.layers.mlp.router
    original = router[...]
    router[...] = original[..., ::-1]
    assert np.abs(ours(model, ids, mask) - base)[keep].max() > 100 * TOL
    router[...] = original
    gate = model.layers.mlp.gate_proj
    gate[...] = gate[...][:, jnp.asarray([1, 0, 2, 3, 4, 5, 6, 7])]
    assert np.abs(ours(model, ids, mask) - base)[keep].max() > 100 * TOL


def test_load_balancing_loss_equals_transformers(tmp_path):
    """Our L_aux from the per-layer router sums equals HF `load_balancing_loss_func` on HF's own
    router logits (padding masked), and `Qwen3MoeForCausalLM`'s loss adds coef · L_aux."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    hf_model = make_hf_model("qwen3_moe", tmp_path, router_aux_loss_coef=0.25)
    ids, mask = batch()
    with torch.no_grad():
        out = hf_model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                       labels=torch.as_tensor(ids), output_router_logits=True)
        expected = float(load_balancing_loss_func(out.router_logits, 8, 2,
                                                  torch.as_tensor(mask)))
        plain = hf_model(torch.as_tensor(ids), output_router_logits=True)  # padding = tokens
        unmasked = float(load_balancing_loss_func(plain.router_logits, 8, 2, None))
    assert abs(float(out.aux_loss) - expected) < 1e-6 and abs(expected - unmasked) > 1e-3
    model = from_hf(tmp_path, dtype="float32")
    assert model.config.router_aux_loss_coef == 0.25
    with jax.default_matmul_precision("highest"):
        _, _, router_loss = model.trunk_with_router_loss(jnp.asarray(ids),
                                                         attention_mask=jnp.asarray(mask))
        _, _, no_mask = model.trunk_with_router_loss(jnp.asarray(ids))
    np.testing.assert_allclose(float(router_loss), 0.25 * expected, rtol=1e-5)
    np.testing.assert_allclose(float(no_mask), 0.25 * unmasked, rtol=1e-5)
    off = from_hf(tmp_path, dtype="float32", router_aux_loss_coef=0.0)
    assert float(off.trunk_with_router_loss(jnp.asarray(ids))[2]) == 0.0


def test_sft_loss_adds_the_router_loss_and_trains_the_router(tmp_path):
    from easyalign.algorithms import sft
    from easyalign.model.scoring import token_logprobs

    make_hf_model("qwen3_moe", tmp_path, router_aux_loss_coef=0.5)
    ids, mask = batch()
    data = {"tokens": jnp.asarray(ids), "loss_mask": jnp.asarray(mask)}
    graphdef, params = nnx.split(from_hf(tmp_path, dtype="float32"))
    with jax.default_matmul_precision("highest"):
        (loss, metrics), grads = jax.value_and_grad(sft.make_loss(graphdef, False),
                                                    has_aux=True)(params, data, None, None)
        model = nnx.merge(graphdef, params)
        hidden, _, router_loss = model.trunk_with_router_loss(data["tokens"])
        nll = -jnp.sum(token_logprobs(model, hidden, data["tokens"]) * mask) / mask.sum()
    assert float(metrics["router_loss"]) > 0.5  # uniform routing gives 0.5 · k = 1
    np.testing.assert_allclose(float(loss), float(nll + router_loss), rtol=1e-6)
    assert float(jnp.abs(grads["layers"]["mlp"]["router"][...]).max()) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_greedy_sampler_equals_transformers(tmp_path):
    hf_model = make_hf_model("qwen3_moe", tmp_path)
    prompt = [5, 17, 42, 99, 7]
    with torch.no_grad():
        generated = hf_model.generate(torch.as_tensor([prompt]), max_new_tokens=12,
                                      do_sample=False, eos_token_id=None, pad_token_id=0,
                                      )[0, len(prompt):].tolist()
    graphdef, state = nnx.split(from_hf(tmp_path, dtype="float32"))
    with jax.default_matmul_precision("highest"):
        out = S.generate(graphdef, state, np.asarray([prompt]), np.asarray([len(prompt)]),
                         jax.random.key(0), max_new_tokens=12)
    assert np.asarray(out.tokens)[0].tolist() == generated
    assert len(set(generated)) > 1  # not one repeated token


def test_qwen3_30b_a3b_preset_size_and_doctor():
    """30.5B parameters in total, 3.3B active (Qwen3-30B-A3B model card), from `eval_shape`."""
    config = preset("qwen3-30b-a3b")
    _, state, _ = abstract_model(config)
    count = sum(x.size for x in jax.tree.leaves(state))
    assert count == config.param_count() == 30_532_122_624
    assert config.active_param_count() == 3_353_032_704
    params = doctor.parameter_bytes(config, {"data": 1, "fsdp": 8, "tensor": 1})
    assert params["count"] == count
    # Experts split by whole experts over fsdp (16 per shard); norms alone are replicated.
    assert params["per_device"] == pytest.approx(params["total"] / 8, rel=1e-4)
    from easyalign.cli import load_config
    run = load_config(["--config=configs/doctor.py:sft", "--config.workdir=/nonexistent/sft"])
    memory = doctor.estimate(run, config, [], {"data": 1, "fsdp": 8, "tensor": 1})
    assert memory["params"] == params["per_device"] and memory["activations"] > 0


def test_config_spellings_and_refusals():
    """transformers 4 writes `num_experts`, 5 `num_local_experts`; dense layers among the
    experts (`mlp_only_layers`, `decoder_sparse_step` > 1) are refused with a clear line."""
    from easyalign.hf.config import HFConfigError, to_model_config

    raw = dict(model_type="qwen3_moe", vocab_size=256, hidden_size=64, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4, moe_intermediate_size=32,
               num_experts_per_tok=2, norm_topk_prob=True)
    assert to_model_config({**raw, "num_experts": 6}).num_experts == 6
    config = to_model_config({**raw, "num_local_experts": 4})
    assert (config.num_experts, config.router_aux_loss_coef, config.qk_norm) == (4, 0.001, True)
    for bad in ({"mlp_only_layers": [1]}, {"decoder_sparse_step": 2}):
        with pytest.raises(HFConfigError, match="dense MLP layers among the experts"):
            to_model_config({**raw, **bad})


def test_every_phase_adds_the_trained_models_router_loss(tmp_path):
    """Reward, DPO, PPO and GRPO losses of an MoE model add router_aux_loss_coef · L_aux of the
    trained model's own forward pass — the loss with coefficient 0.5 minus the loss with 0 is
    that term, reported as `router_loss` — as SFT's does (`test_sft_loss_adds_...`)."""
    from configs import ppo as ppo_config
    from easyalign import losses
    from easyalign.algorithms import dpo, grpo, ppo, reward, rollout
    from easyalign.losses.grpo import GRPOSettings
    from easyalign.model import create_model

    make_hf_model("qwen3_moe", tmp_path, router_aux_loss_coef=0.5)
    ids, mask = batch()
    tokens, mask = jnp.asarray(ids), jnp.asarray(mask, jnp.float32)
    pair_tokens = jnp.concatenate([tokens, tokens[::-1]], axis=0)
    rows = tokens.shape[0]

    def both(config):
        """`(graphdef with coefficient 0.5, the same with 0, params)` of a model of `config`."""
        graphdef, params = nnx.split(create_model(config, seed=0))
        return graphdef, nnx.split(create_model(config.replace(router_aux_loss_coef=0.0)))[0], \
            params

    def check(make, params, batch_, forward_tokens):
        """loss(0.5) − loss(0) = the router loss of `forward_tokens` through `params`."""
        (loss, metrics), (loss0, _) = (make(g)(params, batch_, None, None) for g in graphs)
        model = nnx.merge(graphs[0], params if "policy" not in params else params["policy"])
        _, _, expected = model.trunk_with_router_loss(forward_tokens)
        assert float(expected) > 0.05
        np.testing.assert_allclose(float(loss - loss0), float(expected), rtol=1e-4)
        np.testing.assert_allclose(float(metrics["router_loss"]), float(expected), rtol=1e-5)

    lm = from_hf(tmp_path, dtype="float32").config
    *graphs, params = both(lm.replace(head="scalar"))
    pair = {"chosen_tokens": tokens, "rejected_tokens": tokens[::-1],
            "chosen_segment_ids": mask.astype(jnp.int32),
            "rejected_segment_ids": mask[::-1].astype(jnp.int32),
            "chosen_loss_mask": mask, "rejected_loss_mask": mask[::-1]}
    check(reward.make_loss, params, pair, pair_tokens)

    *graphs, params = both(lm)
    cached = dict(pair, ref_chosen_logps=jnp.zeros(rows), ref_rejected_logps=jnp.zeros(rows))
    check(lambda g: dpo.make_loss(g, losses.DPOSettings(beta=0.1)), params, cached, pair_tokens)

    update = {"tokens": tokens, "mask": mask, "old_logps": jnp.zeros_like(mask),
              "advantages": jnp.ones_like(mask), "returns": jnp.zeros_like(mask),
              "old_values": jnp.zeros_like(mask)}
    check(lambda g: grpo.make_loss(rollout.Graphs(g, None, None, None), GRPOSettings()), params,
          update, tokens)
    # A dense value model of the same shape: no experts, every expert field at its default.
    dense = {f.name: f.default for f in dataclasses.fields(lm) if f.name in MOE_FIELDS}
    value_graph, value_params = nnx.split(create_model(lm.replace(head="scalar", num_experts=0,
                                                                  **dense), seed=1))
    settings = losses.PPOSettings.from_config(ppo_config.get_config().ppo)
    check(lambda g: ppo.make_loss(rollout.Graphs(g, value_graph, None, None), settings),
          {"policy": params, "value": value_params}, update, tokens)


def _capacity_reference(moe, x: np.ndarray, capacity: int) -> np.ndarray:
    """The capacity MoE by hand: each token's k (expert, weight) pairs; pair p of expert e, in
    token order (slot order within a token), is computed iff fewer than `capacity` pairs of
    expert e come before it; a dropped pair adds nothing."""
    probs, weights, experts = (np.asarray(a) for a in moe.route(jnp.asarray(x)))
    gate, up, down = (np.asarray(w[...], np.float64) for w in
                      (moe.gate_proj, moe.up_proj, moe.down_proj))
    seen = np.zeros(moe.num_experts, int)
    y = np.zeros(x.shape, np.float64)
    for n in range(x.shape[0]):
        for j in range(moe.k):
            e = experts[n, j]
            if seen[e] < capacity:
                h = x[n] @ gate[e]
                y[n] += weights[n, j] * ((h / (1 + np.exp(-h))) * (x[n] @ up[e])) @ down[e]
            seen[e] += 1
    return y


def test_capacity_buffers_drop_exactly_the_overflow(tmp_path):
    """`moe_capacity_factor` c: with c = E/k nothing can drop and the layer (and its gradient)
    equals the dropless ragged_dot one; with a small c, pairs past their expert's capacity
    C = ⌈c·N·k/E⌉ add nothing, as a by-hand loop computes."""
    make_hf_model("qwen3_moe", tmp_path)
    ids, mask = batch()
    base = from_hf(tmp_path, dtype="float32")
    full = from_hf(tmp_path, dtype="float32", moe_capacity_factor=8 / 2)  # E / k
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(ours(full, ids, mask), ours(base, ids, mask), atol=1e-5)
        x = np.random.default_rng(0).normal(size=(12, base.config.hidden_size)).astype(np.float32)

        def layer_grad(model):
            mlp = model.layers.mlp
            graphdef, state = nnx.split(mlp)
            fn = lambda st: jnp.sum(nnx.merge(graphdef, st)(jnp.asarray(x[None]))[0] ** 2)  # noqa
            return jax.grad(fn)(jax.tree.map(lambda a: a[0], state))

        for a, b in zip(jax.tree.leaves(layer_grad(base)), jax.tree.leaves(layer_grad(full))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
        small = from_hf(tmp_path, dtype="float32", moe_capacity_factor=0.5)
        graphdef, state = nnx.split(small.layers.mlp)
        moe = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))  # layer 0
        capacity = int(np.ceil(0.5 * 12 * moe.k / moe.num_experts))
        got, _ = moe(jnp.asarray(x[None]))
        expected = _capacity_reference(moe, x, capacity)
        assert np.abs(expected - _capacity_reference(moe, x, 12)).max() > 1e-3  # pairs dropped
        np.testing.assert_allclose(np.asarray(got[0]), expected, atol=1e-5)


def test_expert_sharded_mesh_gives_the_one_device_loss(tmp_path):
    run_script_on_cpu_devices(8, __file__, str(tmp_path))


def _main(tmp: Path) -> None:
    """8 fake CPU devices, mesh fsdp=4 × tensor=2: experts 2 per fsdp shard, expert width over
    tensor; SFT loss (NLL + router loss) and its gradient equal one device's."""
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    from jax.sharding import PartitionSpec as P

    from easyalign import from_hf, sharding
    from easyalign.algorithms import sft
    from hf_fixtures import batch, make_hf_model

    assert jax.device_count() == 8
    make_hf_model("qwen3_moe", tmp / "hf", router_aux_loss_coef=0.5)
    ids, mask = batch(batch_size=4)
    data = {"tokens": jnp.asarray(ids), "loss_mask": jnp.asarray(mask)}

    def loss_and_grad(mesh):
        model = from_hf(tmp / "hf", mesh=mesh, dtype="float32")
        graphdef, params = nnx.split(model)
        step = jax.value_and_grad(sft.make_loss(graphdef, False), has_aux=True)
        with sharding.use_mesh(mesh), jax.default_matmul_precision("highest"):
            rows = {k: jax.device_put(v, sharding.batch_sharding(mesh, 2))
                    for k, v in data.items()}
            (loss, metrics), grads = jax.jit(step)(params, rows, None, None)
        return model, float(loss), float(metrics["router_loss"]), grads

    _, loss1, router1, grads1 = loss_and_grad(sharding.single_device_mesh())
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model, loss8, router8, grads8 = loss_and_grad(mesh)
    gate = model.layers.mlp.gate_proj[...]
    assert gate.sharding.spec == P(None, "fsdp", None, "tensor"), gate.sharding.spec
    assert gate.addressable_shards[0].data.shape == (2, 2, 64, 16)
    assert router1 > 0.1
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    np.testing.assert_allclose(router8, router1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-4)
    print("OK")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
