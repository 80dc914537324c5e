"""Tiny random models, in memory and on disk, for the evaluation, latency, refusal-judge and
tools tests (the built-in world they read is conftest's `built_world`).

Everything is randomly initialised (no training), so the tests check the evaluation machinery —
shapes, exact arithmetic, files — not model quality.
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from easyalign import sharding
from easyalign.hf import save_checkpoint_model
from easyalign.model import Transformer, preset


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
