"""Collate tokenised examples into static-shape numpy batches, and pack them with Grain.

Batch dicts (B rows, T = ``max_length``, P = prompt width; padding on the right with the
tokenizer's pad id):

* ``sft`` / ``teacher``: ``tokens [B,T] int32``, ``loss_mask [B,T] float32``,
  ``positions [B,T] int32`` (0..len-1, 0 on pads), ``segment_ids [B,T] int32`` (1 on real tokens,
  0 on pads); teacher data with top-k adds ``teacher_topk_ids [B,T,k] int32`` and
  ``teacher_topk_logprobs [B,T,k] float32``.
* ``preference``: the same four arrays twice, prefixed ``chosen_`` and ``rejected_``.
* ``prompt``: ``prompt_tokens [B,P] int32`` (right-padded), ``prompt_lengths [B] int32``.
* every kind: each numeric per-example field (``weight``, the loader's ``index``, ...) as a
  ``[B]`` array (bool, int32 or float32); evaluation batches add ``valid [B] bool``.

Packed rows (``pack_rows``) hold several examples each: ``segment_ids`` 1, 2, 3... per example,
``positions`` restarting at 0 in every segment, each example's own loss mask. With attention
restricted to equal segment ids, the packed loss equals the unpacked one. Packing uses Grain's
``FirstFitPackIterDataset``, which computes segment ids and positions itself; this module only
renames its outputs to the keys above. Packing is for SFT / teacher data without per-example
fields (a packed row has no single ``weight``); preference pairs and prompts are never packed.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from .sources import DataError

__all__ = ["SEQUENCE_KEYS", "TOPK_KEYS", "collate", "check_examples", "pack_rows"]

# Per kind: the variable-length arrays of a tokenised example, and the batch-key prefix they get.
SEQUENCE_KEYS = {
    "sft": {"": ("tokens", "loss_mask")},
    "teacher": {"": ("tokens", "loss_mask")},
    "preference": {"chosen_": ("chosen_tokens", "chosen_loss_mask"),
                   "rejected_": ("rejected_tokens", "rejected_loss_mask")},
    "prompt": {"prompt_": ("prompt_tokens",)},
}
TOPK_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs")


def _array_keys(kind: str) -> set[str]:
    keys = {k for group in SEQUENCE_KEYS[kind].values() for k in group}
    return keys | set(TOPK_KEYS) if kind == "teacher" else keys


def check_examples(examples: Sequence[dict], kind: str, max_length: int) -> list[str]:
    """Checks that examples fit ``max_length`` and agree on their fields (so every batch has the
    same keys and shapes); returns the names of the per-example scalar fields."""
    if kind not in SEQUENCE_KEYS:
        raise ValueError(f"unknown example kind {kind!r}; use one of {tuple(SEQUENCE_KEYS)}")
    if not examples:
        raise ValueError("no examples")
    keys = set(examples[0]) - {"source"}
    scalars = sorted(keys - _array_keys(kind))
    dtypes = {k: _scalar_dtype(examples[0][k]) for k in scalars}
    for ex in examples:
        if set(ex) - {"source"} != keys:
            raise DataError(ex.get("source", "?"), f"fields {sorted(set(ex) - {'source'})} differ "
                            f"from the first example's {sorted(keys)}")
        for k in scalars:
            if _scalar_dtype(ex[k]) != dtypes[k]:
                raise DataError(ex.get("source", "?"), f"type {type(ex[k]).__name__} differs from "
                                "the first example's", field=k)
        for key in SEQUENCE_KEYS[kind].values():
            if len(ex[key[0]]) > max_length:
                raise DataError(ex.get("source", "?"), f"{len(ex[key[0]])} tokens > max_length="
                                f"{max_length}; tokenize with the same limit", field=key[0])
    missing = {k for group in SEQUENCE_KEYS[kind].values() for k in group} - keys
    if missing:
        raise ValueError(f"{kind} examples lack {sorted(missing)}")
    return scalars


def _sequences(examples: Sequence[dict | None], token_key: str, mask_key: str, prefix: str,
               max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """``None`` entries become all-padding rows (used to fill the last evaluation batch)."""
    b = len(examples)
    out = {f"{prefix}tokens": np.full((b, max_length), pad_id, np.int32),
           f"{prefix}loss_mask": np.zeros((b, max_length), np.float32),
           f"{prefix}positions": np.zeros((b, max_length), np.int32),
           f"{prefix}segment_ids": np.zeros((b, max_length), np.int32)}
    for i, ex in enumerate(examples):
        if ex is None:
            continue
        n = len(ex[token_key])
        if n > max_length:
            raise DataError(ex.get("source", "?"), f"{n} tokens > max_length={max_length}",
                            field=token_key)
        out[f"{prefix}tokens"][i, :n] = ex[token_key]
        out[f"{prefix}loss_mask"][i, :n] = ex[mask_key]
        out[f"{prefix}positions"][i, :n] = np.arange(n)
        out[f"{prefix}segment_ids"][i, :n] = 1
    return out


def _prompts(examples: Sequence[dict | None], width: int, pad_id: int) -> dict[str, np.ndarray]:
    tokens = np.full((len(examples), width), pad_id, np.int32)
    lengths = np.zeros(len(examples), np.int32)
    for i, ex in enumerate(examples):
        if ex is None:
            continue
        n = lengths[i] = len(ex["prompt_tokens"])
        if n > width:
            raise DataError(ex.get("source", "?"), f"{n} prompt tokens > width {width}",
                            field="prompt_tokens")
        tokens[i, :n] = ex["prompt_tokens"]
    return {"prompt_tokens": tokens, "prompt_lengths": lengths}


def _topk(examples: Sequence[dict | None], schema: dict, max_length: int
          ) -> dict[str, np.ndarray]:
    out = {}
    for key in TOPK_KEYS:
        k, dtype = schema[key].shape[1], schema[key].dtype
        out[key] = np.zeros((len(examples), max_length, k), dtype)
        for i, ex in enumerate(examples):
            if ex is not None:
                out[key][i, :len(ex[key])] = ex[key]
    return out


def _scalar_dtype(value: Any) -> type:
    # check_examples guarantees that all examples agree, so one value decides for a batch.
    if isinstance(value, (bool, np.bool_)):
        return np.bool_
    if isinstance(value, (int, np.integer)):
        return np.int32
    return np.float32


def collate(examples: Sequence[dict | None], *, kind: str, max_length: int, pad_id: int,
            like: dict | None = None, scalar_fill: dict[str, Any] | None = None
            ) -> dict[str, np.ndarray]:
    """Stacks tokenised examples into one right-padded batch (keys in the module docstring).

    ``None`` entries are padding rows: padding tokens, zero masks, and per-example fields taken
    from ``scalar_fill`` (default 0). The first real example -- or ``like`` when there is none --
    fixes the batch's per-example fields and their dtypes.
    """
    schema = next((ex for ex in examples if ex is not None), like)
    if schema is None:
        raise ValueError("an all-padding batch needs `like`, an example to take its fields from")
    batch: dict[str, np.ndarray] = {}
    if kind == "prompt":
        batch.update(_prompts(examples, max_length, pad_id))
    else:
        for prefix, keys in SEQUENCE_KEYS[kind].items():
            batch.update(_sequences(examples, *keys, prefix, max_length, pad_id))
    if kind == "teacher" and TOPK_KEYS[0] in schema:
        batch.update(_topk(examples, schema, max_length))
    fill = scalar_fill or {}
    for key in sorted(set(schema) - _array_keys(kind) - {"source"}):
        values = [ex[key] if ex is not None else fill.get(key, 0) for ex in examples]
        batch[key] = np.asarray(values, _scalar_dtype(schema[key]))
    return batch


def _packable(example: dict, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {k: example[k] for k in keys}


def _rename_packed(row: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    # Grain emits "<feature>_segment_ids" / "<feature>_positions" for every packed feature; they
    # are identical across features, so keep one pair under the unpacked batch names.
    out = {k: row[k] for k in keys}
    out["segment_ids"] = row["tokens_segment_ids"]
    out["positions"] = row["tokens_positions"]
    return out


def pack_rows(ds: grain.IterDataset, *, features: Sequence[str], rows: int, max_length: int,
              pad_id: int) -> grain.IterDataset:
    """Packs a stream of tokenised SFT / teacher examples into rows of ``max_length`` tokens
    (first fit over ``rows`` open bins); yields one row dict at a time, ready for
    ``.batch(rows)``. ``features`` names the per-token arrays to pack (``tokens`` first)."""
    features = tuple(features)
    packed = grain.experimental.FirstFitPackIterDataset(
        ds.map(functools.partial(_packable, keys=features)),
        length_struct={k: max_length for k in features},
        num_packing_bins=rows,
        shuffle_bins=False,  # examples arrive shuffled already
        padding_struct={k: (pad_id if k == "tokens" else 0) for k in features},
    )
    return packed.map(functools.partial(_rename_packed, keys=features))
