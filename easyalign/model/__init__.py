"""The decoder, its configuration and presets, and sharded construction."""

from __future__ import annotations

from flax import nnx
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.model import lora
from easyalign.model.config import ModelConfig, RopeScaling
from easyalign.model.lora import LoraConfig
from easyalign.model.presets import PRESETS, preset
from easyalign.model.transformer import KVCache, Transformer

__all__ = ["ModelConfig", "RopeScaling", "LoraConfig", "lora", "PRESETS", "preset", "KVCache", "Transformer",
           "create_model", "abstract_model"]


def create_model(config: ModelConfig, mesh: Mesh | None = None, seed: int = 0) -> Transformer:
    """A randomly initialised model, every weight created directly in its sharding on `mesh`."""
    mesh = mesh or sharding.single_device_mesh()
    return sharding.create_sharded(lambda: Transformer(config, rngs=nnx.Rngs(seed)), mesh)


def abstract_model(config: ModelConfig, mesh: Mesh | None = None):
    """`(graphdef, abstract_state, shardings)` of a model: shapes and layouts, no memory."""
    mesh = mesh or sharding.single_device_mesh()
    return sharding.abstract_model(lambda: Transformer(config, rngs=nnx.Rngs(0)), mesh)
