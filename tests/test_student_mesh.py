"""GGUF import and student derivation on 8 fake CPU devices (fsdp=4 × tensor=2).

Each device reads and dequantises only its block of the GGUF file — for q/k a block of whole
heads, un-permuted on its own — and the derived student is selected shard to shard; both must
equal the single-device result exactly, with the rules' shardings. As in test_hf_mesh, the
device count is fixed before jax starts, so the checks run in a subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path


def test_sharded_gguf_import_and_student_on_8_devices(tmp_path):
    from conftest import run_script_on_cpu_devices

    run_script_on_cpu_devices(8, __file__, str(tmp_path))


def _main(tmp: Path) -> None:
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # fixtures, and easyalign if not installed
    import jax
    import numpy as np
    from flax import nnx, traverse_util
    from jax.sharding import PartitionSpec as P

    from easyalign import sharding
    from easyalign.hf.gguf import from_gguf
    from easyalign.model.student import derive_student
    from gguf_fixtures import write_gguf
    from hf_fixtures import make_hf_model

    def params(model) -> dict:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        return {".".join(map(str, k)): v for k, v in flat.items()}

    assert jax.device_count() == 8
    source = make_hf_model("llama", tmp / "hf", attention_bias=False, mlp_bias=False,
                           num_hidden_layers=4)
    write_gguf(source, tmp / "tiny.gguf", "Q8_0")
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    alone, sharded = from_gguf(tmp / "tiny.gguf"), from_gguf(tmp / "tiny.gguf", mesh=mesh)
    q = sharded.layers.attn.q_proj.kernel[...]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None), q.sharding.spec
    assert {s.data.shape for s in q.addressable_shards} == {(4, 16, 2, 16)}
    expected = params(alone)
    for name, value in params(sharded).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[name]), name)

    keep = (0, 3)
    student = derive_student(sharded, keep, intermediate_size=96, mesh=mesh)
    reference = params(derive_student(alone, keep, intermediate_size=96))
    up = student.layers.mlp.up_proj.kernel[...]
    assert up.sharding.spec == P(None, "fsdp", "tensor"), up.sharding.spec
    assert {s.data.shape for s in up.addressable_shards} == {(2, 16, 48)}
    for name, value in params(student).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(reference[name]), name)
    print("OK")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
