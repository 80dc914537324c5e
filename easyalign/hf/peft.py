"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

    to_peft(model, "out/", base_model="meta-llama/Llama-3.2-1B")   adapters only (MBs)
    model = from_peft(base_model, "adapter/")                        base + imported adapters

`peft.PeftModel.from_pretrained(hf_base, "out/")` then computes what easyalign computes. PEFT
stores, per adapted `nn.Linear` (weight `[out, in]`), `lora_A.weight [r, in]` and
`lora_B.weight [out, r]` under `base_model.model.<the HF module name>`, e.g.
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`, and scales by
`lora_alpha / r` (`/ √r` with `use_rslora`) — the same s as `model.lora`.

The adapter tensors' layouts come from the family's HF table (`hf.tables`): a projection's row
`"(H hd) d -> d H hd"` splits into HF output factors `(H hd)` and input factors `d`, so
A is `"r (d) -> d r"` and B `"(H hd) r -> r H hd"` (our A `[in..., r]`, B `[r, out...]`).

Fused HF projections (Phi-3's `qkv_proj` = [q; k; v], `gate_up_proj` = [gate; up]) are one
`nn.Linear` for PEFT, with one A. Export stacks the pieces' adapters into one of rank k·r,

    A = [A_q; A_k; A_v]  (k·r × in),   B = blockdiag(B_q, B_k, B_v)  (out × k·r)

which computes exactly Σ_pieces s·x A_p B_p; `rank_pattern` gives that module rank k·r and
`alpha_pattern` the α that keeps s (α·k, or α·√k with rsLoRA). Import takes either that
block-diagonal form back, or a PEFT-made adapter of rank r (one A shared by the pieces: each
piece gets that A and its rows of B, which again computes the same function).

Not supported (an error names it): DoRA, trained biases (`bias` ≠ "none"), `modules_to_save`,
`layers_to_transform`, a scalar (reward) head, and a mixture of experts' MLP (not adapted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from easyalign.hf.tables import Layout, Row, rows_for, sizes
from easyalign.model import lora

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": False, "modules_to_save": None, "layers_to_transform": None,
                "fan_in_fan_out": False}


class PeftAdapterError(ValueError):
    """A PEFT adapter directory easyalign cannot read or a model it cannot write as one."""


def _adapter_layouts(row: Row) -> tuple[Layout, Layout]:
    """PEFT A and B layouts of a projection row ("(H hd) d -> d H hd" → A, B layouts)."""
    out_group, in_group = row.layout.groups
    ours = row.layout.ours
    a = Layout.parse(f"r ({' '.join(in_group)}) -> {' '.join(f for f in ours if f in in_group)} r")
    b = Layout.parse(f"({' '.join(out_group)}) r -> r {' '.join(f for f in ours if f in out_group)}")
    return a, b


def projection_rows(config) -> dict[str, list[tuple[str | None, Row]]]:
    """HF module name (`model.layers.{i}.self_attn.q_proj`) → [(short name, row), ...] for
    every module with an adapted projection. A fused module lists all its pieces in order,
    those without an adapter (Phi-3's gate when only up is adapted) with the name None."""
    paths = {"layers." + path + ".kernel": name for name, (path, _) in lora.PROJECTIONS.items()}
    out: dict[str, list[tuple[str | None, Row]]] = {}
    for row in rows_for(lora.base_config(config)):
        if row.path in paths:
            name = paths[row.path]
            out.setdefault(row.hf.removesuffix(".weight"), []).append(
                (name if name in config.lora.targets else None, row))
    return {module: pieces for module, pieces in out.items()
            if any(name is not None for name, _ in pieces)}


def _whole(layout: Layout, array: np.ndarray, size: dict[str, int]) -> np.ndarray:
    return layout.to_ours(array, {f: (0, size[f]) for f in layout.ours}, size)


def _check_exportable(config) -> None:
    if config.lora is None:
        raise PeftAdapterError("the model has no LoRA adapters to export (model.lora.rank = 0)")
    if config.head != "lm":
        raise PeftAdapterError("PEFT export of a scalar (reward/value) head is not supported: "
                               "export the merged model (--adapter=merged)")


def to_peft(model, out_dir: str | Path, base_model: str = "", dtype: str = "float32") -> Path:
    """Write `model`'s adapters as a PEFT LoRA adapter directory; returns it.

    `base_model` is recorded as `base_model_name_or_path` (the pointer to the base weights).
    Tensors are written in `dtype`. Raises PeftAdapterError for a model without adapters or
    with a scalar head.
    """
    config = model.config
    _check_exportable(config)
    spec = config.lora
    size = sizes(config) | {"r": spec.rank}
    params = {".".join(map(str, p)): np.asarray(jax.device_get(v.get_value()))
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tensors, rank_pattern, alpha_pattern = {}, {}, {}
    for module, pieces in projection_rows(config).items():
        short = module.rsplit(".", 1)[-1]
        adapted = [(name, row) for name, row in pieces if name is not None]
        for i in range(config.num_layers):
            a_parts, b_parts = [], []
            for _, row in adapted:
                a_layout, b_layout = _adapter_layouts(row)
                prefix = row.path.removesuffix(".kernel")
                a_parts.append(a_layout.to_hf(params[prefix + ".lora_a"][i], size))
                b_parts.append(b_layout.to_hf(params[prefix + ".lora_b"][i], size))
            if not pieces[0][1].pieces:  # an unfused projection
                a, b = a_parts[0], b_parts[0]
            else:  # one PEFT module for the fused tensor: stacked A, block-diagonal B
                a = np.concatenate(a_parts, axis=0)
                b = _fused_b(pieces, b_parts, size, spec.rank)
                k = len(adapted)
                if k > 1:
                    rank_pattern[short] = k * spec.rank
                    alpha_pattern[short] = spec.alpha * (math.sqrt(k) if spec.rslora else k)
            name = PREFIX + module.format(i=i)
            tensors[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.astype(dtype))
            tensors[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.astype(dtype))
    out_dir = Path(out_dir)
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from easyalign.hf.export import save_safetensors  # mode and atomic rename as the model's

        save_safetensors(tensors, out_dir / WEIGHTS_FILE)
        adapter_config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank,
            "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.rslora,
            "target_modules": sorted({m.rsplit(".", 1)[-1] for m in projection_rows(config)}),
            "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "bias": "none",
            "base_model_name_or_path": base_model or None, "inference_mode": True,
            "init_lora_weights": True, **_UNSUPPORTED}
        (out_dir / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2) + "\n")
    return out_dir


def _fused_b(pieces, b_parts, size, rank) -> np.ndarray:
    """The fused module's B: each adapted piece's B in its own rows and its own r columns
    (block-diagonal); the rows of a piece without an adapter stay 0."""
    heights = [row.layout.hf_shape(size)[0] for _, row in pieces]
    b = np.zeros((sum(heights), len(b_parts) * rank), b_parts[0].dtype)
    parts = iter(b_parts)
    start, column = 0, 0
    for (name, _), height in zip(pieces, heights):
        if name is not None:
            b[start:start + height, column:column + rank] = next(parts)
            column += rank
        start += height
    return b


def read_peft_config(adapter_dir: str | Path, num_experts: int = 0) -> lora.LoraConfig:
    """The LoraConfig of a PEFT adapter directory; raises PeftAdapterError for what easyalign
    does not support (the module docstring lists it)."""
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise PeftAdapterError(f"{adapter_dir}: no {CONFIG_FILE} (not a PEFT adapter directory)")
    c = json.loads(path.read_text())
    if c.get("peft_type", "LORA") != "LORA":
        raise PeftAdapterError(f"{path}: peft_type {c['peft_type']!r}; only LORA is supported")
    problems = [f"{key}={c[key]!r}" for key in _UNSUPPORTED  # each off: None, False, [] or {}
                if c.get(key) is not None and c[key] is not False and c[key] not in ([], {})]
    if c.get("bias", "none") != "none":
        problems.append(f"bias={c['bias']!r}")
    if problems:
        raise PeftAdapterError(f"{path}: unsupported PEFT setting(s) {', '.join(problems)}")
    targets = c.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    try:
        resolved = lora.resolve_targets(targets or [], lora.available_targets(num_experts))
        return lora.LoraConfig(rank=int(c["r"]), alpha=float(c.get("lora_alpha", 8)),
                               dropout=float(c.get("lora_dropout", 0.0)),
                               rslora=bool(c.get("use_rslora", False)), targets=resolved)
    except ValueError as e:
        raise PeftAdapterError(f"{path}: {e}") from None


def from_peft(base_model, adapter_dir: str | Path, mesh=None):
    """`base_model` (a model without adapters) with the PEFT adapter of `adapter_dir`.

    Every tensor is checked against the family table (names, shapes); a fused module's
    adapter may be PEFT's own (rank r, one A) or easyalign's block-diagonal export. Raises
    PeftAdapterError naming the file and tensor on any mismatch.
    """
    adapter_dir = Path(adapter_dir)
    base_config = base_model.config
    spec = read_peft_config(adapter_dir, base_config.num_experts)
    pattern = json.loads((adapter_dir / CONFIG_FILE).read_text()).get("rank_pattern") or {}
    model = lora.attach(base_model, spec, mesh)
    config = model.config
    weights = adapter_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise PeftAdapterError(f"{adapter_dir}: no {WEIGHTS_FILE}")
    tensors = load_file(str(weights))
    size = sizes(config) | {"r": spec.rank}
    values: dict[str, list[np.ndarray]] = {}
    used = set()
    for module, pieces in projection_rows(config).items():
        short = module.rsplit(".", 1)[-1]
        for i in range(config.num_layers):
            name = PREFIX + module.format(i=i)
            a, b = (_tensor(tensors, f"{name}.lora_{x}.weight", weights, used) for x in "AB")
            rank = pattern.get(short, spec.rank)
            adapted = [k for k, (piece, _) in enumerate(pieces) if piece is not None]
            if not pieces[0][1].pieces:
                parts = {0: (a, b)}
            elif a.shape[0] == spec.rank:  # PEFT's own: one A shared by the pieces
                rows = _split_rows(b, pieces, size)
                parts = {k: (a, rows[k]) for k in adapted}
            elif a.shape[0] == rank == len(adapted) * spec.rank:  # our block-diagonal export
                rows = _split_rows(b, pieces, size)
                parts = {k: (a[j * spec.rank:(j + 1) * spec.rank],
                             rows[k][:, j * spec.rank:(j + 1) * spec.rank])
                         for j, k in enumerate(adapted)}
            else:
                raise PeftAdapterError(f"{weights}: {name}.lora_A.weight has rank "
                                       f"{a.shape[0]}, expected {spec.rank}")
            for k, (a_p, b_p) in parts.items():
                row = pieces[k][1]
                a_layout, b_layout = _adapter_layouts(row)
                for layout, value, which in ((a_layout, a_p, "a"), (b_layout, b_p, "b")):
                    want = layout.hf_shape(size)
                    if tuple(value.shape) != want:
                        raise PeftAdapterError(f"{weights}: {name} lora_{which.upper()} piece "
                                               f"has shape {list(value.shape)}, expected "
                                               f"{list(want)}")
                    key = row.path.removesuffix(".kernel") + ".lora_" + which
                    values.setdefault(key, []).append(_whole(layout, value, size))
    unexpected = sorted(set(tensors) - used)
    if unexpected:
        raise PeftAdapterError(f"{weights}: unexpected tensor(s) {unexpected[:5]}"
                               f"{' …' if len(unexpected) > 5 else ''}")
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        if key in values:
            old = variable.get_value()
            stacked = np.stack(values[key]).astype(old.dtype)
            variable.set_value(jax.make_array_from_callback(
                old.shape, old.sharding, lambda index, s=stacked: s[index]))
    nnx.update(model, state)
    return model


def _tensor(tensors, name, file, used) -> np.ndarray:
    if name not in tensors:
        raise PeftAdapterError(f"{file}: missing tensor {name}")
    used.add(name)
    return tensors[name].astype(np.float32)


def _split_rows(b: np.ndarray, pieces, size) -> list[np.ndarray]:
    """A fused module's B rows, piece by piece (HF dim 0 holds the pieces in order)."""
    heights = np.cumsum([row.layout.hf_shape(size)[0] for _, row in pieces])[:-1]
    return np.split(b, heights, axis=0)
