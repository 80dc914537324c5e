"""Data sources the library makes itself, looked up by their `data.source` name.

A built-in source is a directory generated once per settings, holding one file per record kind
and split and, optionally, a tokenizer trained on its text. The one today is the built-in world
(`data.source="world"`, `data.world_source`). A stage's set-up (`algorithms.runsetup`) asks
this module generically and names no source itself:

    used(config)                       names of the built-in sources a config needs: those it
                                       reads, and the tokenizer's for a scratch model without
                                       `data.tokenizer` (`SCRATCH_TOKENIZER`)
    prepare(config)                    {name: directory} of those, generated once
    not_prepared(config)               the directories prepare will generate
    resolve(name)                      the BuiltinSource a `data.source` value names, or None
                                       (a file, `hf:...`)
    BuiltinSource.spec(dir, kind, split)   the file and columns that serve a kind and split
    tokenizer_dir(prepared)            the tokenizer a prepared source provides ("" = none)

Every split a built-in source serves is a file of its own, and its "eval" files are held out
of its "train" files by construction: `data.eval_source="auto"` reads them as they are instead
of holding rows out of the train file (`data.holdout`), which it does for every other source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from easyalign.data import world_source
from easyalign.data.sources import SourceSpec


@dataclasses.dataclass(frozen=True)
class BuiltinSource:
    """One built-in source: where it lives, how it is made, which file serves what."""

    name: str                             # its `data.source` value
    directory: Callable[[Any], Path]      # config → its directory (nothing is generated)
    prepare: Callable[[Any], Path]        # config → its directory, generated once (all processes)
    files: Mapping[tuple[str, str], tuple[str, dict | None]]  # (kind, split) → (file, columns)
    tokenizer: str = ""                   # its tokenizer's subdirectory ("" = it has none)

    def spec(self, directory: Path, kind: str, split: str) -> SourceSpec:
        """The SourceSpec of `kind` records ("sft", "preference", ...) for `split`."""
        if (kind, split) not in self.files:
            served = ", ".join(f"{k} {s}" for k, s in self.files)
            raise ValueError(f"data source {self.name!r} has no {kind} records for {split} "
                             f"(it serves {served})")
        filename, columns = self.files[(kind, split)]
        return SourceSpec(path=str(directory / filename), columns=columns)


BUILTIN = {source.name: source for source in (
    BuiltinSource("world", directory=world_source.world_dir, prepare=world_source.prepare_source,
                  files=world_source.WORLD_FILES, tokenizer="tokenizer"),
)}
# The built-in source whose tokenizer a scratch model without `data.tokenizer` uses.
SCRATCH_TOKENIZER = "world"


def resolve(name: str) -> BuiltinSource | None:
    """The built-in source a `data.source` / `data.eval_source` value names, else None."""
    return BUILTIN.get(name)


def used(config) -> list[str]:
    """The built-in sources `config` needs: those its `data.source` and `data.eval_source`
    name, and `SCRATCH_TOKENIZER` when a scratch model has no `data.tokenizer`."""
    data = config.data
    names = [name for name in BUILTIN if name in (data.source, data.eval_source)]
    if not data.tokenizer and config.model.init == "scratch" and SCRATCH_TOKENIZER not in names:
        names.append(SCRATCH_TOKENIZER)
    return names


def prepare(config) -> dict[str, Path]:
    """`{name: directory}` of the built-in sources `config` needs, each generated once."""
    return {name: BUILTIN[name].prepare(config) for name in used(config)}


def not_prepared(config) -> list[Path]:
    """The directories `prepare(config)` will generate (those not there yet)."""
    return [d for d in (BUILTIN[name].directory(config) for name in used(config))
            if not d.exists()]


def tokenizer_dir(prepared: Mapping[str, Path]) -> str:
    """The tokenizer directory of the first prepared source that has one ("" = none)."""
    for name, directory in prepared.items():
        if BUILTIN[name].tokenizer:
            return str(directory / BUILTIN[name].tokenizer)
    return ""


def scratch_tokenizer_dir(config) -> Path:
    """Where the tokenizer of a scratch model without `data.tokenizer` lives (`prepare` makes
    it; a report that must not generate anything reads it when it is there)."""
    source = BUILTIN[SCRATCH_TOKENIZER]
    return source.directory(config) / source.tokenizer
