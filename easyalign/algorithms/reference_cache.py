"""Per-example arrays computed once by a jitted function over a data set, cached on disk.

DPO's reference log-probs, a distillation teacher's per-token log-probs: quantities of a frozen
model on a fixed data set that the training loop would otherwise recompute every epoch (and for
which it would keep the frozen model in device memory). This module computes them once,

    arrays = compute_per_example(fn, params, batches, num_examples, mesh)
             fn(params, batch) -> {name: [B, ...]}   jitted; row b lands at arrays[name][index[b]]

and stores them under `root/<fingerprint>/` (`arrays.npz` + `key.json`, the human-readable
parts the fingerprint was made of). `cached(root, parts, compute)` returns the stored arrays
when the fingerprint matches, else computes and stores them. The fingerprint is the sha256 of
the canonical JSON of `parts`; a caller puts in it everything the arrays depend on:

    data       examples_digest(examples, keys)   sha256 of every token array and mask, in order
    model      model_digest(config, params)      the ModelConfig (numerics included) + params_digest
    template   template_digest(tokenizer)        the chat template (and vocabulary size)
    options    whatever else the function reads (e.g. length averaging)

and nothing else (not the learning rate, not the run's name), so another run over the same data
and model hits the same entry.

`params_digest` hashes per-tensor summary statistics computed on device — shape, dtype and
three wrapping uint32 sums over each entry's float32 bit pattern b: Σ b, Σ w·b with a position
weight w (so a permutation of entries changes it too) and Σ m(b)², m a bit mix — not the raw
bytes. Trade-off: hashing the bytes of a 7B model means gathering ~15–30 GB to the host of every
process (sharded arrays are not addressable there) and ~10 s of sha256 per run; the statistics
are a few reductions over arrays already in place, cost nothing at any scale, and change with
any training step (any changed bit changes Σ b). They are not cryptographic: two parameter sets
with identical shapes and identical statistics would collide, which practical checkpoints do
not do. Integer sums modulo 2³² do not depend on the order of the additions, so the digest is
the same in every process, on every mesh and device: float32 sums were not (a GPU's reduction
order differs between runs, and every resumed run missed its cache and recomputed).

Multi-host: every process must call `cached` (the computation is collective); process 0 decides
hit or miss for all and writes, so the directory must be on a filesystem shared by all processes,
as the run's checkpoints must be.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.sharding import to_global_batch

CACHE_VERSION = 2  # bump when the layout or a digest's definition changes
ARRAYS_FILE = "arrays.npz"
KEY_FILE = "key.json"
_WEIGHT_PERIOD = 1021  # prime; an entry's weight is k + 1, k a mix of its indices mod p


# ----------------------------------------------------------------------------- fingerprints
def fingerprint(parts: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `parts` and the cache version."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def examples_digest(examples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """sha256 over the arrays `keys` of every example, in order (dtype and length included)."""
    h = hashlib.sha256(f"{len(examples)}:{','.join(keys)}".encode())
    for example in examples:
        for key in keys:
            array = np.ascontiguousarray(example[key])
            h.update(f"{array.dtype}{array.shape}".encode())
            h.update(array.tobytes())
    return h.hexdigest()


@jax.jit
def _tensor_stats(x: jax.Array) -> jax.Array:
    """`[Σ b, Σ w·b, Σ m(b)²]` uint32 (sums modulo 2³²) over the float32 bit patterns b of the
    entries (integers: their values), w a position weight built per axis (no reshape, so a
    sharded tensor is reduced where it lies instead of being gathered for a ravel) and
    m(b) = b ⊕ (b >> 15) a mix of high and low bits. Exact integer arithmetic: the same for any
    reduction order (module docstring)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    else:
        bits = x.astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis in range(x.ndim):
        # (Σ_a (i_a mod p)·(a+2)) mod p stays far below uint32 range for any realistic rank.
        iota = jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) % _WEIGHT_PERIOD
        index = index + iota * jnp.uint32(axis + 2)
    weight = index % _WEIGHT_PERIOD + jnp.uint32(1)
    mixed = bits ^ (bits >> 15)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32),
                      jnp.sum(mixed * mixed, dtype=jnp.uint32)])


def params_digest(params: nnx.State | Mapping) -> str:
    """sha256 over (path, shape, dtype, uint32 statistics) of every tensor (module docstring)."""
    tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    stats = jax.device_get([_tensor_stats(x) for _, x in leaves])  # host-device sync point
    h = hashlib.sha256()
    for (path, x), s in zip(leaves, stats):
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}{x.dtype}".encode())
        h.update(np.asarray(s, np.uint32).tobytes())
    return h.hexdigest()


def model_digest(config_dict: Mapping[str, Any], params) -> str:
    """The model as a scorer: its config (shapes and numerics) and its parameters."""
    config = json.dumps(dict(config_dict), sort_keys=True, default=str)
    return hashlib.sha256((config + params_digest(params)).encode()).hexdigest()


def template_digest(tokenizer) -> str:
    """The chat template and special tokens that laid the tokens out (`chat_format`)."""
    from easyalign.data.chat_format import chat_format

    fmt = chat_format(tokenizer)
    template = fmt.template or tokenizer.chat_template
    if isinstance(template, dict):  # named templates
        template = json.dumps(template, sort_keys=True)
    framing = (fmt.bos_ids, fmt.end_of_turn_id, fmt.end_of_turn_text)
    return hashlib.sha256(f"{template}|{framing}|{len(tokenizer)}".encode()).hexdigest()


# ----------------------------------------------------------------------------- computation
@functools.partial(jax.jit, static_argnums=0)
def _rows(fn, params, batch):
    # `fn` is static (hashed by identity): every data set scored with the same function reuses
    # one compiled program instead of compiling per call.
    return fn(params, batch), batch["index"], batch["valid"]


def compute_per_example(fn: Callable[[Any, dict], dict[str, jax.Array]], params,
                        batches: Iterable[dict[str, np.ndarray]], num_examples: int,
                        mesh: Mesh) -> dict[str, np.ndarray]:
    """`{name: [num_examples, ...]}` from `fn(params, batch) -> {name: [B, ...]}` over batches
    carrying `index [B]` and `valid [B]` (evaluation batches: each example exactly once).

    Every process receives every row (gathered across processes); each row is stored at its
    example's index. Raises if some example was never seen (batches and `num_examples` disagree).
    `fn` is a static jit argument: pass the same function (or `functools.partial`) object for
    several data sets and they share one compilation.
    """
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(num_examples, np.bool_)
    with sharding.use_mesh(mesh):
        for batch in batches:
            # Host-device sync point per batch; this runs once per data set, not per step.
            values, index, valid = multihost_utils.process_allgather(
                _rows(fn, params, to_global_batch(batch, mesh)), tiled=True)
            rows = index[valid]
            for name, value in values.items():
                if name not in out:
                    out[name] = np.zeros((num_examples,) + value.shape[1:], value.dtype)
                out[name][rows] = value[valid]
            seen[rows] = True
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} of {num_examples} examples were not in any batch")
    return out


# ----------------------------------------------------------------------------- storage
def load(directory: Path) -> dict[str, np.ndarray] | None:
    path = directory / ARRAYS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def save(directory: Path, arrays: Mapping[str, np.ndarray], parts: Mapping[str, Any]) -> None:
    """Write atomically: a killed run leaves a `.tmp<pid>` directory, never a half-written entry.
    Runs sharing the cache may write the same entry at once (the same arrays): each writes its
    own temporary, and one that finds the entry in place when it renames drops its own."""
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / ARRAYS_FILE, **arrays)
    (tmp / KEY_FILE).write_text(json.dumps(
        {"fingerprint": directory.name, "cache_version": CACHE_VERSION, **parts},
        indent=2, sort_keys=True) + "\n")
    if not (directory / ARRAYS_FILE).is_file():
        shutil.rmtree(directory, ignore_errors=True)  # a directory with no entry in it
    try:
        os.replace(tmp, directory)
    except OSError:  # another run put the same entry in place meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def _all_agree(value: bool) -> bool:
    """Process 0's `value` on every process (one decision for a collective computation)."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def cached(root: str | Path, parts: Mapping[str, Any],
           compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """`(arrays, hit)`: the arrays stored under `root/fingerprint(parts)`, or `compute()`d and
    stored there. Collective: every process calls it with the same `parts`."""
    directory = Path(root) / fingerprint(parts)
    arrays = load(directory) if jax.process_index() == 0 else None
    if _all_agree(arrays is not None):
        return (arrays if arrays is not None else load(directory)), True
    arrays = compute()
    if jax.process_index() == 0:
        save(directory, arrays, parts)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"reference_cache:{directory.name}")
    return arrays, False
