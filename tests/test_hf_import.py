"""HF → easyalign import: logits equal transformers' for every family, scalar head, bf16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from easyalign import from_hf
from easyalign.hf import read_hf_config
from easyalign.hf.tables import Layout
from hf_fixtures import CASES, batch, hf_logits, make_hf_model, ours

TOL = 1e-4  # fp32 end to end; absolute, on logits of magnitude ~1



@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    hf_model = make_hf_model(case, tmp_path)
    ids, mask = batch()
    expected = hf_logits(hf_model, ids, mask)
    model = from_hf(tmp_path, dtype="float32")
    got = ours(model, ids, mask)
    keep = mask.astype(bool)
    assert got.shape == expected.shape
    assert np.abs(expected[keep]).max() > 0.5  # logits are not trivially small
    np.testing.assert_allclose(got[keep], expected[keep], atol=TOL, rtol=0)


@pytest.mark.parametrize("case, plain", [("llama3_rope", {"rope_scaling": None}),
                                         ("mistral", {"sliding_window": None}),
                                         ("qwen3_moe", {"norm_topk_prob": False}),
                                         ("qwen3_moe", {"num_experts_per_tok": 1}),
                                         ("qwen3_moe", {"num_experts_per_tok": 3})])
def test_family_traits_matter(case, plain, tmp_path):
    """Negative controls: RoPE scaling, the window, MoE top-k renormalisation and k each act on
    the test batch — the parity above would be vacuous if the test never reached them."""
    make_hf_model(case, tmp_path)
    ids, mask = batch()
    keep = mask.astype(bool)
    with_feature = ours(from_hf(tmp_path, dtype="float32"), ids, mask)
    without = ours(from_hf(tmp_path, dtype="float32", **plain), ids, mask)
    assert np.abs(with_feature - without)[keep].max() > 100 * TOL


def test_config_translation(tmp_path):
    make_hf_model("qwen3", tmp_path)
    config = read_hf_config(tmp_path)
    assert (config.family, config.qk_norm, config.qkv_bias, config.head_dim) == (
        "qwen3", True, False, 16)
    make_hf_model("llama3_rope", tmp_path)
    scaling = read_hf_config(tmp_path).rope_scaling
    assert (scaling.rope_type, scaling.factor, scaling.original_max_position_embeddings) == (
        "llama3", 8.0, 8)


def test_params_default_to_float32_and_bf16_loads_exactly(tmp_path):
    hf_model = make_hf_model("qwen2", tmp_path, dtype=torch.bfloat16)
    model = from_hf(tmp_path)
    q = model.layers.attn.q_proj
    assert q.kernel[...].dtype == jnp.float32 and model.config.dtype == "bfloat16"
    # HF [H*hd, d] of layer 1 ↔ our [L, d, H, hd]: bf16 → f32 is exact
    hf_q = hf_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    ours_q = np.asarray(q.kernel[...][1]).reshape(64, 64).T
    assert np.array_equal(ours_q, hf_q)
    bf16 = from_hf(tmp_path, param_dtype="bfloat16")
    assert bf16.layers.attn.q_proj.bias[...].dtype == jnp.bfloat16


def test_scalar_head_matches_sequence_classification(tmp_path):
    hf_model = make_hf_model("llama", tmp_path, sequence_classification=True)
    ids, mask = batch()
    model = from_hf(tmp_path, dtype="float32")
    assert model.config.head == "scalar" and model.config.pad_token_id == 0
    scores = ours(model, ids, mask)  # [B, T]
    with torch.no_grad():
        t_ids, t_mask = torch.as_tensor(ids), torch.as_tensor(mask)
        pooled = hf_model(t_ids, attention_mask=t_mask).logits[:, 0].numpy()
        hidden = hf_model.model(t_ids, attention_mask=t_mask).last_hidden_state
        per_position = hf_model.score(hidden)[..., 0].numpy()
    keep = mask.astype(bool)
    np.testing.assert_allclose(scores[keep], per_position[keep], atol=TOL, rtol=0)
    last = mask.sum(axis=1) - 1  # HF pools at the last non-pad token
    np.testing.assert_allclose(scores[np.arange(len(ids)), last], pooled, atol=TOL, rtol=0)


def test_parameters_are_committed_to_the_mesh(tmp_path):
    make_hf_model("llama", tmp_path)
    model = from_hf(tmp_path)
    kernel = model.layers.attn.q_proj.kernel[...]
    assert isinstance(kernel.sharding, jax.sharding.NamedSharding)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)


def test_tied_checkpoint_may_also_store_lm_head(tmp_path):
    """Some exporters write the shared matrix twice; HF ignores the copy when tying, so do we."""
    make_hf_model("qwen2", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert not hasattr(from_hf(tmp_path), "lm_head")


@pytest.mark.parametrize("spec, hf_shape", [("(H hd) d -> d H hd", (12, 5)),
                                            ("d (H hd) -> H hd d", (5, 12)),
                                            ("F d -> d F", (7, 5))])
def test_layout_blocks_equal_slices_of_the_whole_tensor(spec, hf_shape):
    """Any block (inner factors too, which the sharding rules never split) reads correctly."""
    layout = Layout.parse(spec)
    size = {"H": 3, "hd": 4, "d": 5, "F": 7}
    hf = np.arange(np.prod(hf_shape)).reshape(hf_shape)
    whole = layout.to_ours(hf, {f: (0, size[f]) for f in layout.factors}, size)
    assert np.array_equal(layout.to_hf(whole, size), hf)
    rng = np.random.default_rng(0)
    for _ in range(20):
        index = []
        for f in layout.ours:
            start = int(rng.integers(0, size[f]))
            index.append(slice(start, int(rng.integers(start + 1, size[f] + 1))))
        hf_index, ranges = layout.hf_slices(tuple(index), size)
        np.testing.assert_array_equal(layout.to_ours(hf[hf_index], ranges, size),
                                      whole[tuple(index)])
