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
import os
import shutil
import tempfile
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
    """Generate the built-in world and train its tokenizer once; later calls reuse the files.
    Complete means `tokenizer/tokenizer.json` exists, and it is the last file to appear
    (`_build_world_files`)."""
    directory = world_dir(config)
    if jax.process_index() == 0 and not (directory / WORLD_DONE).exists():
        _build_world_files(config, directory)
    distributed.barrier("world")
    return directory


WORLD_DONE = Path("tokenizer") / "tokenizer.json"


def _build_world_files(config, directory: Path) -> None:
    """Write the world and its tokenizer into a private staging directory beside `directory`,
    then move them in file by file with atomic renames, `WORLD_DONE` last. A build killed at any
    point leaves no half-written file and no completeness mark; concurrent builds of one world
    (the runs of a sweep share `world-<digest>`) each move in the same bytes, and a reader never
    sees a file being written."""
    from easyalign.data.tokenizer import build_world_tokenizer
    from easyalign.data.world import build_world

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        world = build_world(world_settings(config))
        world.write(staging)
        build_world_tokenizer(world, staging / "tokenizer")
        files = sorted((f for f in staging.rglob("*") if f.is_file()),
                       key=lambda f: f == staging / WORLD_DONE)
        for file in files:
            target = directory / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
