"""The built-in world as a data source: its files per record kind and split, where they live,
and generating them (with the world's tokenizer) once per settings.

`data.builtin` registers it under the name "world" (`data.source="world"`), and a phase reads it
through that registry like any other built-in source: `WORLD_FILES` names the file of each
record kind and split, `prepare_source` prepares it. A run that reads none of its records (a
scratch model on a file of the user's, which only needs a tokenizer) gets only the tokenizer:
the world's 1 MB of records are not written for nothing. `ensure_world` makes the whole of it
(the evaluation's world suites call it directly).
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


def prepare_source(config) -> Path:
    """The world a run needs, generated once (`data.builtin`'s preparation of "world"): the
    whole of it when `data.source` or `data.eval_source` reads its records, else only its
    tokenizer (what a scratch model without `data.tokenizer` reads)."""
    return ensure_world(config, tokenizer_only="world" not in (config.data.source,
                                                                 config.data.eval_source))


def ensure_world(config, tokenizer_only: bool = False) -> Path:
    """Generate the built-in world and train its tokenizer once (with `tokenizer_only`, the
    tokenizer alone); later calls reuse the files. Complete means the last file of each part
    exists (`DATA_DONE`, `WORLD_DONE`: `_build_world_files` moves them in last)."""
    directory = world_dir(config)
    marks = (WORLD_DONE,) if tokenizer_only else (DATA_DONE, WORLD_DONE)
    if jax.process_index() == 0 and not all((directory / m).exists() for m in marks):
        _build_world_files(config, directory, tokenizer_only)
    distributed.barrier("world")
    return directory


WORLD_DONE = Path("tokenizer") / "tokenizer.json"  # the tokenizer's last file
DATA_DONE = Path("world.json")                     # the records' last file


def _build_world_files(config, directory: Path, tokenizer_only: bool = False) -> None:
    """Write the world and its tokenizer into a private staging directory beside `directory`,
    then rename the staging directory to `directory` in one step: it appears complete or not at
    all, and a build that fails or is killed leaves no half-made world (and, but for a SIGKILL,
    no staging directory). Where `directory` exists already (a `data.world.dir` made
    beforehand, a tokenizer-only world now completed, a concurrent build that finished first)
    the files move in one by one with atomic renames, each part's mark (`DATA_DONE`,
    `WORLD_DONE`) last: a reader never sees a file being written nor a mark before its part,
    and concurrent builds of one world each move in the same bytes."""
    from easyalign.data.tokenizer import build_world_tokenizer
    from easyalign.data.world import build_world

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        world = build_world(world_settings(config))
        if not tokenizer_only:
            world.write(staging)
        build_world_tokenizer(world, staging / "tokenizer")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a shared world from others
        try:
            os.replace(staging, directory)
            return
        except OSError:  # `directory` exists and holds files: move them in one by one
            pass

        def order(file: Path) -> tuple[bool, bool]:  # records, their mark, tokenizer, its mark
            relative = file.relative_to(staging)
            return relative.parts[0] == WORLD_DONE.parts[0], relative in (DATA_DONE, WORLD_DONE)

        for file in sorted((f for f in staging.rglob("*") if f.is_file()), key=order):
            target = directory / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
