"""The train state — step, trainable params, optimizer state, RNG — created in its shardings.

The optimizer state is laid out like the parameters it tracks (Adam's moments share each
weight's sharding; scalars and factored statistics are replicated), computed with
`optax.tree_map_params` on an abstract state, then materialised by one jit with those
`out_shardings`: the optimizer state never exists unsharded either.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimizer steps taken
    params: nnx.State        # trainable parameters (nnx.Param leaves)
    opt_state: optax.OptState
    rng: jax.Array           # raw uint32[2] key, split once per step


def opt_state_shardings(tx: optax.GradientTransformation, params: nnx.State, mesh: Mesh):
    """Shardings of `tx.init(params)`: param-shaped leaves follow their param, others replicate."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(tx.init, params)
    param_shardings = jax.tree.map(lambda p: p.sharding, params)

    def follow(leaf, param, sharding):
        return sharding if leaf.shape == param.shape else replicated

    return optax.tree_map_params(tx, follow, abstract, params, param_shardings,
                                 transform_non_params=lambda _: replicated)


def create_train_state(params: nnx.State, tx: optax.GradientTransformation, seed: int,
                       mesh: Mesh) -> TrainState:
    """A fresh state around already-sharded `params` (step 0, optimizer initialised in place)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = opt_state_shardings(tx, params, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    rng = jax.device_put(jax.random.PRNGKey(seed), replicated)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)


def state_shardings(state: TrainState):
    """The sharding of every leaf of a (concrete or abstract-with-sharding) state."""
    return jax.tree.map(lambda x: x.sharding, state)


def abstract_like(tree):
    """ShapeDtypeStructs carrying shardings (e.g. a checkpoint's restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
