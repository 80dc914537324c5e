"""Export a `Transformer` as an HF checkpoint directory that `transformers` loads as is.

    to_hf(model, "out/", tokenizer=tok, max_shard_size="2GB", dtype="bfloat16")

writes `config.json`, `generation_config.json` (bos/eos/pad ids; with a tokenizer, `eos_token_id`
lists every stop token of `chat_format.stop_token_ids`, so `transformers.generate` stops where
easyalign's sampler does — e.g. at Llama 3's `<|eot_id|>`), the weights as safetensors
— `model.safetensors`, or `model-00001-of-0000N.safetensors` shards plus
`model.safetensors.index.json` when they exceed `max_shard_size` — and the tokenizer files.

Streaming: every tensor's HF shape and dtype is known from the table, so the shard plan is
made before any data moves. Then, shard by shard, each HF tensor (one layer slice of a stacked
parameter) is gathered to the host on its own — `jax.device_get`, or `process_allgather` when
the array spans several hosts — converted by the table's layout and kept until its shard is
written. Host memory thus holds about one shard. Every process takes part in the gathers
(they are collective on multi-host meshes); only process 0 writes files.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import jax
import ml_dtypes  # noqa: F401  (lets numpy cast to bfloat16 and safetensors write it)
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from easyalign.hf.config import hf_config_dict
from easyalign.hf.load import INDEX_FILE, SINGLE_FILE
from easyalign.hf.tables import Row, rows_for, sizes
from easyalign.model import Transformer, lora

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes of `2_000_000_000`, `"2GB"` (decimal, as HF) or `"2GiB"` (binary)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or e.g. '2GB', '500MiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _entries(rows: list[Row], num_layers: int, num_experts: int = 0
             ) -> list[tuple[str, list[Row], tuple[int, ...] | None]]:
    """(HF name, its rows, stacked index) in HF's order: embeddings, layer 0, layer 1, ...,
    norm, heads. The index is `(layer,)`, or `(layer, expert)` for a per-expert tensor.

    A fused HF tensor has several rows (its pieces, in order); any other tensor has one."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.hf, []).append(row)
    groups = list(grouped.values())
    first = next(k for k, group in enumerate(groups) if group[0].stacked)
    before = [(g[0].hf, g, None) for g in groups[:first] if not g[0].stacked]
    after = [(g[0].hf, g, None) for g in groups[first:] if not g[0].stacked]
    layers = [(g[0].hf_name(index), g, index) for i in range(num_layers) for g in groups
              if g[0].stacked
              for index in ([(i, e) for e in range(num_experts)] if g[0].per_expert else [(i,)])]
    return before + layers + after


def _plan(entries, nbytes: dict[str, int], limit: int) -> list[list]:
    """Greedy shards in order; a tensor larger than the limit gets a shard of its own (as HF)."""
    shards: list[list] = [[]]
    used = 0
    for entry in entries:
        if shards[-1] and used + nbytes[entry[0]] > limit:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += nbytes[entry[0]]
    return shards


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole of `x` on this host (a collective when `x` spans hosts)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _stop_tokens(tokenizer, config) -> int | list[int]:
    """config.json's EOS id(s) first, then the other stop tokens (`stop_token_ids`)."""
    from easyalign.data.chat_format import stop_token_ids

    eos = config.eos_token_id
    ids = list(eos) if isinstance(eos, tuple) else [] if eos is None else [eos]
    ids += [i for i in stop_token_ids(tokenizer, config) if i not in ids]
    return ids[0] if len(ids) == 1 else ids


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process umask (0o644 under 022).

    Read from /proc/self/status where the kernel shows it: setting the umask to read it back
    (`os.umask`) would, for that instant, let files other threads create (an async checkpoint
    being written) come out world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """`safetensors.numpy.save_file`, into a temporary sibling renamed into place, with the
    mode every other file of the export has.

    save_file creates its file 0o600 (owner only), unlike `open()`: an exported model would be
    unreadable by the group and others who read its config.json, so the mode is set from the
    umask (`new_file_mode`) before the rename makes the file visible."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no stray temporary


def to_hf(model: Transformer, out_dir: str | Path, tokenizer=None,
          max_shard_size: int | str = "2GB", dtype: str | None = None) -> Path:
    """Write `model` to `out_dir` in HF format; returns the directory.

    `dtype` is the dtype the weights are written in (default: the model's `param_dtype`, so
    import → export reproduces the checkpoint bit for bit when the dtypes agree). `tokenizer`
    is anything with `save_pretrained(dir)` (an HF tokenizer); its `pad_token_id` fills in
    the config's when the model config has none. A model with LoRA adapters is written merged
    (W + s·A B, `lora.merge`); `hf.peft.to_peft` writes the adapters alone.
    """
    model = lora.merge(model)
    config = model.config
    out_dir = Path(out_dir)
    dtype = str(np.dtype(dtype or config.param_dtype))
    if tokenizer is not None and config.pad_token_id is None:
        config = config.replace(pad_token_id=tokenizer.pad_token_id)
    if config.head == "scalar" and config.pad_token_id is None:
        warnings.warn("exporting a scalar head without pad_token_id: HF's "
                      "*ForSequenceClassification cannot pool batches of more than one row")
    hf_config = hf_config_dict(config, dtype)
    rows = rows_for(config)
    size = sizes(config)
    entries = _entries(rows, config.num_layers, config.num_experts)
    itemsize = np.dtype(dtype).itemsize
    nbytes = {name: int(np.prod(group[0].hf_shape(size))) * itemsize
              for name, group, _ in entries}
    shards = _plan(entries, nbytes, parse_size(max_shard_size))
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])

    writer = jax.process_index() == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "config.json", hf_config)
        generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                      if hf_config[k] is not None}
        if tokenizer is not None and config.head == "lm":
            generation["eos_token_id"] = _stop_tokens(tokenizer, config)
        _write_json(out_dir / "generation_config.json", generation)

    params = {".".join(map(str, p)): v.get_value()
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    weight_map = {}
    for file, shard in zip(names, shards):
        tensors = {}
        for name, group, layer in shard:
            pieces = [row.layout.to_hf(_to_host(params[row.path] if layer is None
                                                else params[row.path][layer]), size)
                      for row in group]
            whole = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)
            tensors[name] = np.ascontiguousarray(whole.astype(dtype))
            weight_map[name] = file
        if writer:
            save_safetensors(tensors, out_dir / file)
    if writer and len(shards) > 1:
        _write_json(out_dir / INDEX_FILE, {"metadata": {"total_size": sum(nbytes.values())},
                                           "weight_map": weight_map})
    if writer and tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir
