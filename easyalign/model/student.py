"""A student derived from its teacher: a subset of its layers, optionally a narrower MLP.

Layer dropping initialises a smaller model from a larger one's own weights (DistilBERT took
every other layer of BERT; Sheared-LLaMA and Minitron prune Llama depth and width): the
student keeps the teacher's embeddings, final norm and LM head, and block `i` of the student
*is* block `keep[i]` of the teacher — attention, norms and MLP copied exactly. A student that
keeps every layer and channel is the teacher, logit for logit.

    keep = parse_layers("spread:10", 30)          # (0, 3, 6, 10, 13, 16, 19, 23, 26, 29)
    student = derive_student(teacher, keep, intermediate_size=1024, mesh=mesh)

Layer selections (`parse_layers`; `L` = the teacher's layers):

    ""              every layer (the teacher's depth)
    every_other     0, 2, 4, ...            (DistilBERT)
    first:k         0, 1, ..., k-1
    spread:k        k evenly spaced layers including the first and the last:
                    round(i·(L-1)/(k-1)) for i < k (the input and output ends of the
                    residual stream are kept, the middle thinned)
    3,7,11          an explicit strictly increasing list

Narrower MLP (`intermediate_size` F' < F): each kept layer keeps the F' channels with the
largest data-free importance ‖W_gate[:, j]‖₂ · ‖W_up[:, j]‖₂ · ‖W_down[:, j]‖₂ — channel j
adds silu(g_j·x)(u_j·x)·down_j to the residual, whose size scales with those three norms for
inputs of fixed size — in their original order (so F' = F keeps the teacher's MLP exactly).
Biases are carried along and do not enter the score. Activation-based importance (Minitron)
would need calibration data; this needs none.

On a mesh: the selection runs as one `jax.jit` from the teacher's sharded params to the
student's shardings. The `layers` axis is never sharded, so picking layers is local to each
device; narrowing gathers along the MLP axis one weight at a time. No model is gathered whole.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.model.config import ModelConfig
from easyalign.model.transformer import Transformer


def parse_layers(spec: str, num_layers: int) -> tuple[int, ...]:
    """The teacher layers a selection `spec` keeps, in order (grammar in the module docstring).

    Raises ValueError (one line naming `spec`) for an unknown form, an index outside
    `[0, num_layers)`, a count outside `[1, num_layers]` or a list that is not increasing.
    """
    spec = spec.strip()
    where = f"model.layers={spec!r} (teacher has {num_layers} layers)"
    if not spec:
        return tuple(range(num_layers))
    if spec == "every_other":
        return tuple(range(0, num_layers, 2))
    match = re.fullmatch(r"(first|spread):(\d+)", spec)
    if match:
        kind, k = match.group(1), int(match.group(2))
        if not 1 <= k <= num_layers:
            raise ValueError(f"{where}: {kind}:k needs 1 <= k <= {num_layers}")
        if kind == "first":
            return tuple(range(k))
        if k == 1:
            return (0,)
        step = (num_layers - 1) / (k - 1)
        return tuple(int(np.floor(i * step + 0.5)) for i in range(k))  # round half up
    if not re.fullmatch(r"\d+(\s*,\s*\d+)*", spec):
        raise ValueError(f"{where}: expected every_other, first:k, spread:k or a list like "
                         "0,2,4")
    keep = tuple(int(part) for part in spec.split(","))
    if any(i >= num_layers for i in keep) or any(a >= b for a, b in zip(keep, keep[1:])):
        raise ValueError(f"{where}: indices must be strictly increasing and below "
                         f"{num_layers}")
    return keep


def student_config(teacher: ModelConfig, keep: Sequence[int], intermediate_size: int = 0
                   ) -> ModelConfig:
    """The teacher's config with `len(keep)` layers and MLP width `intermediate_size`
    (0 = the teacher's); raises ValueError for a width the teacher cannot provide."""
    width = intermediate_size or teacher.intermediate_size
    if not 1 <= width <= teacher.intermediate_size:
        raise ValueError(f"model.intermediate_size={intermediate_size}: a derived student "
                         f"keeps 1..{teacher.intermediate_size} of the teacher's MLP channels")
    return teacher.replace(num_layers=len(keep), intermediate_size=width)


def mlp_channels(params: dict[str, jax.Array], width: int) -> jax.Array:
    """`[L, width]` channel indices per layer, by the importance in the module docstring."""
    def norms(path: str) -> jax.Array:  # [L, d, F] kernels, stored [embed, mlp]: norm over d
        kernel = params[f"layers.mlp.{path}.kernel"].astype(jnp.float32)
        return jnp.sqrt(jnp.sum(kernel * kernel, axis=1))

    importance = norms("gate_proj") * norms("up_proj") * norms("down_proj")
    return jnp.sort(jax.lax.top_k(importance, width)[1], axis=-1)


def derive_student(teacher: Transformer, keep: Sequence[int], intermediate_size: int = 0,
                   mesh: Mesh | None = None) -> Transformer:
    """A student of the teacher's family holding teacher layers `keep` (see module docstring),
    created on `mesh` (default: one device) with the teacher's numerics."""
    config = student_config(teacher.config, keep, intermediate_size)
    mesh = mesh or sharding.single_device_mesh()
    graphdef, abstract, shardings = sharding.abstract_model(
        lambda: Transformer(config, rngs=nnx.Rngs(0)), mesh)
    flat = lambda state: {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    axes = {path: v.get_metadata()["out_sharding"] for path, v in flat(abstract).items()}
    targets = {path: v.get_value() for path, v in flat(shardings).items()}
    source = {path: v.get_value() for path, v in flat(nnx.state(teacher, nnx.Param)).items()}
    if set(source) != set(targets):
        raise RuntimeError("teacher and student params differ: "
                           f"{sorted(set(source) ^ set(targets))}")
    layers = jnp.asarray(keep)
    narrow = config.intermediate_size < teacher.config.intermediate_size

    def select(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        out = {}
        for path, x in params.items():
            names = axes[path]
            if "layers" in names:
                x = jnp.take(x, layers, axis=names.index("layers"))
            out[path] = x
        if narrow:
            channels = mlp_channels(out, config.intermediate_size)  # [L_student, F']
            for path, x in out.items():
                names = axes[path]
                if "mlp" in names:
                    shape = [channels.shape[0] if n == "layers" else 1 for n in names]
                    shape[names.index("mlp")] = config.intermediate_size
                    out[path] = jnp.take_along_axis(x, channels.reshape(shape),
                                                    axis=names.index("mlp"))
        return out

    with sharding.use_mesh(mesh):
        params = jax.jit(select, out_shardings=targets)(source)
    nnx.replace_by_pure_dict(abstract, traverse_util.unflatten_dict(
        {tuple(path.split(".")): value for path, value in params.items()}))
    return nnx.merge(graphdef, abstract)

