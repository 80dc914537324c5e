"""Tiny models and the built-in world on disk, for tests/test_eval.py and tests/test_latency.py.

Everything is randomly initialised (no training), so the tests check the evaluation machinery —
shapes, exact arithmetic, files — not model quality.
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from easyalign import sharding
from easyalign.hf import save_checkpoint_model
from easyalign.model import Transformer, preset


def make_world(root: Path) -> Path:
    """The seed-0 world and its tokenizer, laid out as `data.world_source.ensure_world` does."""
    from easyalign.data.tokenizer import build_world_tokenizer
    from easyalign.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(seed=0))
    world.write(root)
    build_world_tokenizer(world, root / "tokenizer")
    return root


def make_model(config, seed: int) -> Transformer:
    """A random model built eagerly on one device: `create_model` would compile a sharded
    initialiser per model, seconds each on a CPU, for nothing a one-device test needs."""
    with sharding.use_mesh(sharding.single_device_mesh()):
        return Transformer(config, rngs=nnx.Rngs(seed))


def save_model(path: Path, tokenizer, *, seed: int, head: str = "lm", name: str = "world-student",
               tokenizer_dir: Path | None = None) -> Path:
    """A random `name`-preset model as an easyalign checkpoint (with the tokenizer files)."""
    ids = {} if tokenizer is None else dict(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model = make_model(preset(name, head=head, dtype="float32", **ids), seed)
    return save_checkpoint_model(model, path, tokenizer_dir=tokenizer_dir)
