"""The held-out evaluation split of a real data source (`data.eval_source="auto"`).

Every stage reading the same file holds out the same rows, decided by the rows' content; the
evaluation's prompt suites take the same rows back (`eval.extra_suites` with split `eval`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from .sources import Record

__all__ = ["held_out_rows", "split_rows"]


def held_out_rows(rows: list, fraction: float, cap: int, seed: int) -> set[int]:
    """Indices of the rows held out for evaluation when `data.eval_source="auto"`.

    n = min(⌈fraction · M⌉, cap) of the M rows (cap 0 = none): those whose key
    sha256(seed, row content) is smallest. The key depends on the row itself, not on its
    position, the column mapping or the record kind, so every stage reading the same file
    (reward, DPO and PPO on one preference file) holds out the same rows; a row identical to
    the last one held out is held out too, so duplicates never straddle train and eval.
    """
    if not 0 <= fraction < 1 or cap < 0:
        raise ValueError(f"data.eval_fraction={fraction} must be in [0, 1) and "
                         f"data.eval_max={cap} >= 0")
    n = int(np.ceil(fraction * len(rows)))
    n = min(n, cap) if cap else n
    if not n:
        return set()
    keys = [hashlib.sha256(f"{seed}\0{json.dumps(row.data, sort_keys=True, default=str)}"
                           .encode()).hexdigest() for row in rows]
    order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
    last = keys[order[n - 1]]
    return {i for i in order if keys[i] <= last}


def split_rows(rows: Sequence[Record], split: str, fraction: float, cap: int,
               seed: int) -> list[Record]:
    """The `"train"` or `"eval"` side of the held-out split (`held_out_rows`), in file order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train or eval, got {split!r}")
    held = held_out_rows(rows, fraction, cap, seed)
    return [row for i, row in enumerate(rows) if (i in held) == (split == "eval")]
