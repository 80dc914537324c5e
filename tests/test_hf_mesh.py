"""HF import/export and checkpoint restore on 8 fake CPU devices (fsdp=4 × tensor=2).

The device count must be fixed before jax initialises, and pytest has already imported jax
in its own process, so the test re-runs this file as a script in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`; the checks live under `__main__`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def test_sharded_import_export_and_restore_on_8_devices(tmp_path):
    from conftest import run_script_on_cpu_devices

    run_script_on_cpu_devices(8, __file__, str(tmp_path))


def _main(tmp: Path) -> None:
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # hf_fixtures, and easyalign if not installed
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from easyalign import from_hf, load_checkpoint_model, save_checkpoint_model, to_hf
    from easyalign import sharding
    from hf_fixtures import assert_same_tensors, batch, make_hf_model

    assert jax.device_count() == 8
    make_hf_model("llama", tmp / "hf")
    ids, mask = (jnp.asarray(a) for a in batch(batch_size=4))

    def logits(model, mesh):
        graphdef, state = nnx.split(model)
        with sharding.use_mesh(mesh):
            rows = sharding.batch_sharding(mesh, 2)
            return np.asarray(jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))(
                state, jax.device_put(ids, rows), jax.device_put(mask, rows)))

    single_mesh = sharding.single_device_mesh()
    reference = logits(from_hf(tmp / "hf", dtype="float32"), single_mesh)

    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model = from_hf(tmp / "hf", mesh=mesh, dtype="float32")
    expected = {
        "q": (model.layers.attn.q_proj.kernel, P(None, "fsdp", "tensor", None), (2, 16, 2, 16)),
        "q_bias": (model.layers.attn.q_proj.bias, P(None, "tensor", None), (2, 2, 16)),
        "o": (model.layers.attn.o_proj.kernel, P(None, "fsdp", "tensor", None), (2, 16, 2, 16)),
        "down": (model.layers.mlp.down_proj.kernel, P(None, "fsdp", "tensor"), (2, 16, 64)),
        "embed": (model.embed_tokens.embedding, P(("fsdp", "tensor"), None), (32, 64)),
        "lm_head": (model.lm_head.kernel, P("fsdp", "tensor"), (16, 128)),
        "norm": (model.layers.input_norm.scale, P(None, None), (2, 64)),
    }
    for name, (var, spec, shard) in expected.items():
        array = var[...]
        assert array.sharding.spec == spec, (name, array.sharding.spec, spec)
        assert {s.data.shape for s in array.addressable_shards} == {shard}, name
    sharded = logits(model, mesh)
    keep = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(sharded[keep], reference[keep], atol=1e-5, rtol=0)

    # Export gathers the shards back into exactly the original tensors.
    to_hf(model, tmp / "out", max_shard_size="60KB")
    assert_same_tensors(tmp / "hf", tmp / "out")

    # A checkpoint saved from this mesh restores into other meshes with the same logits.
    save_checkpoint_model(model, tmp / "ckpt")
    other_mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    restored = load_checkpoint_model(tmp / "ckpt", mesh=other_mesh)
    assert restored.layers.attn.q_proj.kernel[...].sharding.mesh.shape == other_mesh.shape
    np.testing.assert_allclose(logits(restored, other_mesh)[keep], reference[keep], atol=1e-5,
                               rtol=0)
    alone = load_checkpoint_model(tmp / "ckpt")
    np.testing.assert_array_equal(logits(alone, single_mesh), reference)
    print("OK")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
