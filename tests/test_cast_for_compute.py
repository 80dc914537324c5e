"""Weights cast to the compute dtype once (`layers.cast_for_compute`) change no number.

The sampler casts its weights once before the decode loop, and frozen models (references,
reward models, teachers) are held cast. A weight that a module reads in float32 must stay as
stored: cast to bfloat16 first, Gemma's (1 + w) norm and the MoE router computed from rounded
weights (the sampler's log-probs then left the trainer's by up to 0.02 in the logits). The
reference value is the model's own forward with its weights as stored.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from easyalign.model import create_model, preset
from easyalign.model.layers import cast_for_compute
from easyalign.sampler.decode import compute_weights

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, max_position_embeddings=512)
MIXED = dict(dtype="bfloat16", param_dtype="float32", attention_impl="xla")
CONFIGS = {
    "llama": lambda: preset("tiny", **MIXED),
    "gemma2": lambda: preset("gemma-2-2b", **TINY, sliding_window=8, query_pre_attn_scalar=16,
                             layer_types=("sliding_attention", "full_attention"), **MIXED),
    "qwen3_moe": lambda: preset("qwen3-30b-a3b", **TINY, num_experts=4, num_experts_per_tok=2,
                                moe_intermediate_size=32, **MIXED),
}


def perturbed(config):
    """A model whose weights are off their initial values (Gemma's norm scales start at 0,
    where rounding to bfloat16 would change nothing)."""
    graphdef, state = nnx.split(create_model(config, seed=0))
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.01 * jax.random.normal(k, x.shape, x.dtype)
              if jnp.issubdtype(x.dtype, jnp.floating) else x for x, k in zip(leaves, keys)]
    return graphdef, jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cast_once_computes_the_same_logits(family):
    graphdef, state = perturbed(CONFIGS[family]())
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 250, (2, 24)), jnp.int32)
    stored = nnx.merge(graphdef, state)(tokens)

    cast = nnx.merge(graphdef, state)
    cast_for_compute(cast, jnp.bfloat16)
    np.testing.assert_array_equal(cast(tokens), stored)
    # The sampler's weights (cast, then q/k/v and gate/up fused) compute the same logits too.
    np.testing.assert_array_equal(compute_weights(graphdef, state)(tokens), stored)

    dtypes = {jax.tree_util.keystr(path).removesuffix(".value"): x.dtype
              for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(cast, nnx.Param))}
    kept = {p for p, d in dtypes.items() if d == jnp.float32}
    assert dtypes["['embed_tokens']['embedding']"] == jnp.bfloat16  # the big ones are halved
    expected = {"llama": set(),
                "gemma2": {p for p in dtypes if p.endswith("['scale']")},
                "qwen3_moe": {"['layers']['mlp']['router']"}}[family]
    assert kept == expected and (family == "llama" or kept)


def test_frozen_models_and_the_live_dpo_reference_are_held_cast(tmp_path):
    """`init_model(frozen=True)` (references, reward models, teachers) and DPO's live
    reference hold bfloat16 copies of a float32 policy; the policy itself stays float32."""
    from easyalign.algorithms import runsetup
    from easyalign.cli import load_config
    from easyalign.hf import models
    from easyalign.model import lora

    config = load_config(["--config=configs/sft.py:tiny", f"--config.workdir={tmp_path}",
                          "--config.model.init=scratch", "--config.model.dtype=bfloat16",
                          "--config.model.param_dtype=float32", "--config.train.steps=1"])
    run = runsetup.prepare(config)
    policy = models.init_model(run)
    frozen = models.init_model(run, frozen=True)

    def kernel_dtype(model):
        return model.layers.mlp.down_proj.kernel[...].dtype

    assert kernel_dtype(policy) == jnp.float32 and kernel_dtype(frozen) == jnp.bfloat16
    reference, graphdef = lora.live_reference(policy)
    assert kernel_dtype(nnx.merge(graphdef, reference)) == jnp.bfloat16
    assert kernel_dtype(policy) == jnp.float32  # the copy, not the policy, was cast
