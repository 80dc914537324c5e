"""The built-in world as a data source: its files per record kind and split, where they live,
and generating them (with the world's tokenizer) once per settings.

`data.builtin` registers it under the name "world" (`data.source="world"`), and a phase reads it
through that registry like any other built-in source: `WORLD_FILES` names the file of each
record kind and split, `ensure_world` prepares it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax

from easyalign import distributed

# The built-in world's files per (record kind, split), with the column mapping to apply.
WORLD_FILES = {
    ("sft", "train"): ("sft_train.jsonl", None),
    ("sft", "eval"): ("preference_heldout.jsonl", {"prompt": "prompt", "response": "chosen"}),
    ("preference", "train"): ("preference_train.jsonl", None),
    ("preference", "eval"): ("preference_heldout.jsonl", None),
    ("prompt", "train"): ("rl_prompts.jsonl", None),
    ("prompt", "eval"): ("preference_heldout.jsonl", {"prompt": "prompt"}),
}


def world_settings(config):
    """The WorldConfig a run's `data.world` block describes."""
    from easyalign.data.world import WorldConfig

    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    return WorldConfig(**{k: v for k, v in config.data.world.items() if k in fields})


def world_dir(config) -> Path:
    """Where the built-in world and its tokenizer live: shared by all stages of a pipeline,
    named by a hash of the world's settings so that a changed world is never mistaken for an
    old one."""
    if config.data.world.dir:
        return Path(config.data.world.dir)
    settings = json.dumps(dataclasses.asdict(world_settings(config)), sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
    return Path(config.workdir).absolute().parent / f"world-{digest}"


def ensure_world(config) -> Path:
    """Generate the built-in world and train its tokenizer once; later calls reuse the files."""
    from easyalign.data.tokenizer import build_world_tokenizer
    from easyalign.data.world import build_world

    directory = world_dir(config)
    done = directory / "tokenizer" / "tokenizer.json"
    if jax.process_index() == 0 and not done.exists():
        world = build_world(world_settings(config))
        world.write(directory)
        build_world_tokenizer(world, directory / "tokenizer")
    distributed.barrier("world")
    return directory

