"""The device mesh and the one table that maps logical axis names to mesh axes.

Every parameter and activation names its dimensions logically (`embed`, `mlp`, `heads`, ...).
`LOGICAL_RULES` is the only place those names meet the physical mesh `("data", "fsdp",
"tensor")`:

* `data`   — pure data parallelism: the batch is split, parameters are replicated;
* `fsdp`   — the batch is split *and* parameters/optimizer state are sharded along `embed`
             (ZeRO-3 style; XLA all-gathers weights per layer and reduce-scatters gradients),
             the embedding table along its vocabulary rows. Every kernel stores the axis FSDP
             splits first, so gradient shards arrive contiguous and AdamW never transposes;
* `tensor` — Megatron-style tensor parallelism over heads, MLP width and vocabulary;
* experts  — a mixture of experts' stacked `[E, d, f]` kernels split by whole experts over
             `fsdp` (logical `expert`): expert parallelism inside the data-parallel group, as
             GShard / DeepSpeed-MoE place it (EP ⊆ DP). No fourth mesh axis: the fsdp ranks
             already hold different tokens, each stores E/n experts (weights and AdamW state)
             instead of 1/n of every expert's rows, and every mesh config, `doctor` and the
             config check stay as they are. (`expert_embed` cannot also take `fsdp` — one mesh
             axis per array dimension — so it is replicated; `expert_mlp` follows `mlp`.) The
             token dispatch is left to XLA's SPMD partitioner (sorted tokens + `ragged_dot`);
             a shard_map all-to-all dispatch is the known next step for large expert counts.

Changing a parallelism strategy is a change of this table or of the mesh shape, never of
model code. Models are created straight into their shardings: shapes come from
`nnx.eval_shape`, then one `jax.jit` whose `out_shardings` are the rules' shardings
initialises every shard on its own device — no whole model ever sits on one device.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated). Parameters use the first group,
# activations the second (`act_*` so that activation and weight layouts can differ).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("table_vocab", ("fsdp", "tensor")),     # the embedding table's rows (see model.layers.Embed)
    ("table_embed", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("expert", "fsdp"),                      # MoE experts (see the module docstring)
    ("expert_embed", None),
    ("expert_mlp", "tensor"),
    ("norm", None),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """The `(data, fsdp, tensor)` sizes a mesh config gives on `n_devices` devices.

    One axis may be -1, meaning "the rest of the devices"; the product must be `n_devices`.
    Raises ValueError naming the mesh and the device count otherwise. The one rule: `make_mesh`,
    the config check and `easyalign doctor` all call it.
    """
    shape = [data, fsdp, tensor]
    asked = dict(zip(MESH_AXES, shape))
    if shape.count(-1) > 1:
        raise ValueError(f"mesh {asked}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh {asked}: every axis is ≥ 1 (or -1 for the rest of the devices)")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if n_devices % known:
            raise ValueError(f"mesh {asked}: {n_devices} devices are not divisible by {known} "
                             "(the fixed axes)")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(f"mesh {asked} needs {math.prod(shape)} devices, {n_devices} are "
                         "available")
    return tuple(shape)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh; one axis may be -1, meaning "the rest of the devices"."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(AxisType.Auto,) * 3)


def mesh_from_config(mesh_config) -> Mesh:
    """Mesh from a config block with fields `data`, `fsdp`, `tensor`."""
    return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor)


def single_device_mesh() -> Mesh:
    """A 1×1×1 mesh on the first device (annotated variables need a mesh to exist in)."""
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Activate `mesh` and the logical rules: inside, annotated params land in their shardings."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def logical_spec(names: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec of a logical axis tuple under `LOGICAL_RULES`."""
    return PartitionSpec(*core_spmd.from_sharding_rules(tuple(names), LOGICAL_RULES))


def logical_sharding(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pin an activation's layout by logical names; a no-op outside a mesh of several devices."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names))


def batch_shards() -> int:
    """How many ways the current mesh splits a batch (`data × fsdp`); 1 outside a mesh.

    Shapes seen while tracing are global; per-device memory budgets divide by this.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = dict(LOGICAL_RULES)["batch"]
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def state_shardings(abstract_state, mesh: Mesh):
    """NamedShardings for an (abstract) nnx State, from each variable's logical annotation."""
    with use_mesh(mesh):
        return nnx.get_named_sharding(abstract_state, mesh)


def abstract_model(build: Callable[[], nnx.Module], mesh: Mesh):
    """`(graphdef, abstract_state, shardings)` of the module `build()` makes — no memory used."""
    with use_mesh(mesh):
        abstract = nnx.eval_shape(build)
        graphdef, state = nnx.split(abstract)
        shardings = nnx.get_named_sharding(state, mesh)
    return graphdef, state, shardings


def uneven_weight(state, shardings, axis_sizes) -> str | None:
    """The first weight of `state` whose shape a mesh of `axis_sizes` (`{axis: devices}`, e.g.
    `Mesh.shape`) cannot split evenly by its sharding's spec — a `jax.Array` has equal shards,
    so placing it fails (`NamedSharding ... implies that array axis 2 is partitioned 2 times,
    but the dimension size is 3`) — as "`path` axis i (size n) over `axes` = k devices"; None
    when every weight splits. The specs follow the rules alone, so `shardings` may come from
    any mesh with these axis names (the doctor plans other machines' meshes)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, leaf), spec in zip(leaves, jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, NamedSharding))):
        for i, (size, axes) in enumerate(zip(leaf.shape, spec.spec)):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(axis_sizes[a] for a in names)
            if ways > 1 and size % ways:
                where = ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
                where = where.removesuffix(".value")  # nnx.Variable's payload
                return (f"{where} axis {i} (size {size}) over {'×'.join(names)} = {ways} "
                        "devices")
    return None


def create_sharded(build: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Run `build()` inside one jit whose outputs are sharded by the rules (no host copy)."""
    graphdef, _, shardings = abstract_model(build, mesh)

    def init():
        return nnx.state(build())

    with use_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a `[batch, ...]` input array: batch over (data, fsdp), the rest replicated."""
    return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host (per-process) numpy batch → global arrays sharded over the batch axes."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim),
                                                          value, global_shape)
    return out
