"""Grain loaders: deterministic, per-process sharded, static-shape, checkpointable batches.

Training (:func:`make_train_loader`), for ``P`` processes and a global batch ``G``::

    MapDataset.source(examples)          tokenised examples (tokenize.py), each given an
                                         "index": its position, for caches keyed by example
      .shuffle(seed).repeat()            a fresh permutation every epoch, infinite
      [process_index::P]                 each process a disjoint, interleaved slice
      .to_iter_dataset()
      .batch(G // P, batch_fn=collate)   static [G/P, T] numpy batches (collate.py)

Because every process walks the same global permutation, the union of the P local batches of
step s is exactly elements ``s*G .. (s+1)*G - 1`` of that permutation, i.e. one global batch.
With ``pack=True`` the per-process stream goes through Grain's first-fit packing (collate.pack_rows)
into ``G // P`` rows before batching; ``index`` is then not emitted (a row holds many examples).

The returned :class:`Loader` iterates forever. ``get_state()`` returns JSON bytes -- Grain's own
iterator state plus a fingerprint of the loader's settings -- and ``set_state()`` restores it, after
which the loader yields exactly the batches it would have yielded. ``set_state`` refuses a state
saved under other settings (seed, batch, process layout, data size) instead of silently changing
the data order. Bytes (and a no-op ``start_prefetch``) make a Loader acceptable to Grain's Orbax
handler: save with ``grain.checkpoint.CheckpointSave(loader)``, restore with
``grain.checkpoint.CheckpointRestore(loader)``; each process writes its own file.

Evaluation (:func:`make_eval_batches`) is finite, in order, and not repeated: each global batch is
``examples[j*G:(j+1)*G]``, process p takes its contiguous ``G/P`` share, and the last batch is
padded with empty rows marked ``valid == False`` (``index == -1``) so shapes stay static and
every process runs the same number of steps.

The pipeline runs in the calling process (data here is small and pre-tokenised); all transforms
are picklable, so Grain worker processes (``IterDataset.mp_prefetch``) can be added later.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np

from .collate import SEQUENCE_KEYS, TOPK_KEYS, check_examples, collate, pack_rows

__all__ = ["Loader", "make_train_loader", "make_eval_batches"]

_STATE_VERSION = 1


def _process_layout(global_batch: int, process_index: int | None,
                    process_count: int | None) -> tuple[int, int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is outside 0..{count - 1}")
    if global_batch <= 0 or global_batch % count:
        raise ValueError(f"global_batch {global_batch} must be a positive multiple of the process "
                         f"count {count}")
    return index, count, global_batch // count


def _with_index(index: int, example: dict) -> dict:
    return {**example, "index": index}


class Loader:
    """An infinite, checkpointable iterator of per-process batches (module docstring)."""

    def __init__(self, dataset: grain.IterDataset, fingerprint: dict[str, Any]):
        self._iterator = iter(dataset)
        self.fingerprint = fingerprint
        self.local_batch = fingerprint["global_batch"] // fingerprint["process_count"]

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> bytes:
        """JSON bytes: ``{"version", "fingerprint", "grain"}``."""
        state = {"version": _STATE_VERSION, "fingerprint": self.fingerprint,
                 "grain": self._iterator.get_state()}
        return json.dumps(state, sort_keys=True).encode()

    def set_state(self, state: bytes | str | dict[str, Any]) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown loader state version {state.get('version')!r}")
        saved = state["fingerprint"]
        if saved != self.fingerprint:
            diff = {k: (saved.get(k), self.fingerprint.get(k))
                    for k in saved.keys() | self.fingerprint.keys()
                    if saved.get(k) != self.fingerprint.get(k)}
            raise ValueError(f"loader state was saved with other settings (saved, now): {diff}")
        self._iterator.set_state(state["grain"])

    def start_prefetch(self) -> None:
        """Called by Grain's checkpoint handler after a restore; batches are made on demand."""


def rows_drawn(num_examples: int, seed: int, count: int) -> np.ndarray:
    """Sorted positions of the examples among the first `count` rows that `make_train_loader`
    (unpacked, this `seed`) yields over all processes: its shuffle is a permutation of the
    positions that depends on the length and the seed alone, and the processes' shares
    interleave the one stream. All positions once `count` reaches an epoch."""
    if count >= num_examples:
        return np.arange(num_examples)
    stream = grain.MapDataset.range(num_examples).shuffle(seed).repeat(None)
    return np.unique(np.fromiter(stream[:count], np.int64, count))


# Unpacked batches are as wide as their data set's longest sequence, rounded up to this.
WIDTH_MULTIPLE = 64


def fitted_width(examples: Sequence[dict], kind: str, max_length: int,
                 multiple: int = WIDTH_MULTIPLE) -> int:
    """The static width T of unpacked batches of `examples`: the longest tokenised sequence
    rounded up to a multiple of `multiple`, at most `max_length`.

    Padding every row to `data.max_length` costs compute in proportion to max_length / length:
    preference pairs of ~50 tokens under the real preset's 512 spent ~10× the needed FLOPs. One
    width per data set keeps one compiled step (as TRL's pad-to-longest does per batch, which
    would recompile here), and it is a function of the data alone, so every process and every
    resume of a run gets the same width.
    """
    keys = [token_key for token_key, *_ in SEQUENCE_KEYS[kind].values()]
    longest = max((len(ex[key]) for ex in examples for key in keys), default=1)
    return min(max_length, -(-longest // multiple) * multiple)


def make_train_loader(examples: Sequence[dict], *, kind: str, global_batch: int, max_length: int,
                      pad_id: int, seed: int, pack: bool = False,
                      process_index: int | None = None,
                      process_count: int | None = None) -> Loader:
    """An infinite loader of this process's share of every global batch.

    Args:
      examples: tokenised examples of one kind (tokenize.tokenize_examples).
      kind: "sft" | "teacher" | "preference" | "prompt" (batch keys: collate.py).
      global_batch: rows per step over all processes; each process gets global_batch / count.
      max_length: T, the static sequence width (the prompt width P for kind "prompt").
      pad_id: the padding token id (tokenize.pad_token_id(tokenizer)).
      seed: shuffle seed; the same seed gives the same batches.
      pack: pack several SFT / teacher examples per row (segment ids and positions per example).
      process_index, process_count: default to jax.process_index() / jax.process_count().
    """
    index, count, local_batch = _process_layout(global_batch, process_index, process_count)
    scalars = check_examples(examples, kind, max_length)
    fingerprint = {"kind": kind, "global_batch": global_batch, "max_length": max_length,
                   "seed": seed, "pack": pack, "process_index": index, "process_count": count,
                   "num_examples": len(examples)}
    # The index is attached up front: a map_with_index below shuffle/repeat would see the
    # position in the infinite stream (epoch * n + i), not the example's position.
    source = list(examples) if pack else [_with_index(i, ex) for i, ex in enumerate(examples)]
    ds = grain.MapDataset.source(source)
    # shuffle before repeat: the per-epoch seed is folded in, so every epoch is a new permutation.
    ds = ds.shuffle(seed).repeat(None)[index::count].to_iter_dataset()
    if pack:
        if kind not in ("sft", "teacher"):
            raise ValueError(f"packing is for sft / teacher examples, not {kind!r}")
        if scalars:
            raise ValueError(f"cannot pack examples with per-example fields {scalars}: a packed "
                             "row holds several examples; disable packing or drop the fields")
        features = [k for k in ("tokens", "loss_mask", *TOPK_KEYS) if k in examples[0]]
        ds = pack_rows(ds, features=features, rows=local_batch, max_length=max_length,
                       pad_id=pad_id).batch(local_batch, drop_remainder=True)
    else:
        ds = ds.batch(local_batch, drop_remainder=True, batch_fn=functools.partial(
            collate, kind=kind, max_length=max_length, pad_id=pad_id))
    return Loader(ds, fingerprint)


def make_eval_batches(examples: Sequence[dict], *, kind: str, batch_size: int, max_length: int,
                      pad_id: int, process_index: int | None = None,
                      process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order, in static-shape batches with a ``valid [B]`` mask.

    ``batch_size`` is global; this process yields batch_size / process_count rows per batch,
    and all processes yield ``ceil(len(examples) / batch_size)`` batches.
    """
    index, _, local_batch = _process_layout(batch_size, process_index, process_count)
    check_examples(examples, kind, max_length)
    like = _with_index(-1, examples[0])  # fixes the batch fields if a share is all padding
    for start in range(0, math.ceil(len(examples) / batch_size) * batch_size, batch_size):
        lo = start + index * local_batch
        rows = [_with_index(i, examples[i]) if i < len(examples) else None
                for i in range(lo, lo + local_batch)]
        batch = collate(rows, kind=kind, max_length=max_length, pad_id=pad_id, like=like,
                        scalar_fill={"index": -1})
        batch["valid"] = np.asarray([row is not None for row in rows], np.bool_)
        yield batch
