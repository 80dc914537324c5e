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

The base (`export_adapter`, behind `easyalign convert --adapter=peft`): an adapter is only
right on the exact weights it was trained on, so `base_model_name_or_path` always names a
model PEFT can load, and one that holds those weights wherever that can be checked:

* `run_base(ckpt_dir)` reads what the base was from the run that wrote the checkpoint (its
  workdir's `config.json`): an HF directory (loadable as it is), or a model PEFT cannot load by
  name — the merged model of an earlier LoRA stage, another easyalign checkpoint, a GGUF file,
  a scratch or derived model, a source changed by `model.overrides`.
* `--base_model` may be an HF directory (its config and every weight are compared with the
  base the checkpoint holds; recorded as an absolute path) or a hub repo id (recorded as given,
  with a note saying what the base must be). An easyalign alias (`smollm2`), an easyalign
  checkpoint or a GGUF file is refused, naming what to pass instead.
* Without `--base_model`, the run's own HF directory is recorded (after the same check); any
  other base is refused with the command that exports it: the checkpoint holds the base itself,
  `base_of(model)`, written by `easyalign convert --to_hf=RUN --adapter=base --out=BASE_DIR`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from easyalign.config_keys import shown_path
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

    `base_model` is recorded as `base_model_name_or_path` (the pointer to the base weights;
    `export_adapter` finds and checks it for a run's checkpoint); without one PEFT cannot load
    the adapter by itself, and a warning says so. Tensors are written in `dtype`. Raises
    PeftAdapterError for a model without adapters or with a scalar head.
    """
    config = model.config
    _check_exportable(config)
    if not base_model:
        warnings.warn("to_peft without base_model: adapter_config.json names no base "
                      "(base_model_name_or_path: null)", stacklevel=2)
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


# ----------------------------------------------------------------------------- the base
# easyalign's install aliases (`hf.gguf.INSTALLED`) → the hub repository their file was
# quantised from. PEFT loads a hub repo or an HF directory, never an alias or a GGUF file, and
# the repo holds the unquantised weights: close to, not the same as, the ones trained on.
ALIAS_ORIGINS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# ModelConfig fields that leave the function computed from the same weights unchanged.
_NOT_ARCHITECTURE = ("dtype", "param_dtype", "attention_impl", "remat", "scan_layers",
                     "logits_chunk", "lora", "bos_token_id", "eos_token_id", "pad_token_id",
                     "initializer_range", "router_aux_loss_coef")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclasses.dataclass(frozen=True)
class RunBase:
    """The model a run's adapters were trained on, as the run recorded it (`run_base`)."""

    what: str                        # "the merged model of the LoRA run runs/lora/sft"
    hf_dir: Path | None = None       # an HF directory holding it, which PEFT loads as it is
    hub_original: str | None = None  # the hub repo a GGUF alias was quantised from


def run_workdir(ckpt_dir) -> Path | None:
    """The workdir of the run whose final model `ckpt_dir` is (`<workdir>/model`, beside the
    run's config.json); None for any other checkpoint (one `convert` wrote, a copy)."""
    from easyalign.hf.checkpoint import MODEL_DIR

    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.name == MODEL_DIR and (ckpt_dir.parent / "config.json").is_file():
        return ckpt_dir.parent
    return None


def run_base(ckpt_dir) -> RunBase | None:
    """What the base of the LoRA model in `ckpt_dir` is, from the `model` block of the run that
    trained it (`hf.models.init_model`: the source as it is, merged first when it is itself a
    LoRA model); None when no run record lies beside the checkpoint. `hf_dir` is set only for
    an HF directory loaded as it is (no `model.overrides`), which PEFT can load as the base."""
    from easyalign.config_keys import SAVED_AT_SUFFIX
    from easyalign.hf.checkpoint import CONFIG_FILE, MODEL_DIR, saved_at
    from easyalign.hf.gguf import INSTALLED

    workdir = run_workdir(ckpt_dir)
    if workdir is None:
        return None
    try:
        block = json.loads((workdir / "config.json").read_text())["model"]
        init, path = block["init"], str(block.get("path") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    overrides = block.get("overrides") or ""
    changed = f" with model.overrides={overrides!r}" if overrides else ""
    if init == "scratch":
        return RunBase(f"the scratch-initialised model of the run {shown_path(workdir)}")
    if init == "derive":
        return RunBase(f"the student derived from {path} (model.init=derive){changed}")
    if init == "gguf":
        if path in INSTALLED and not Path(path).exists():
            origin = ALIAS_ORIGINS.get(path)
            return RunBase(f"the GGUF model {path} ({INSTALLED[path][1]}"
                           f"{f', quantised from {origin}' if origin else ''}){changed}",
                           hub_original=origin)
        return RunBase(f"the GGUF file {shown_path(path)} (dequantised){changed}")
    if init == "hf":
        found = (Path(path) / "config.json").is_file()
        return RunBase(f"the HF model {shown_path(path)}{changed}"
                       f"{'' if found else ' (not found from here)'}",
                       Path(os.path.abspath(path)) if found and not changed else None)
    if init == "checkpoint":
        where = Path(path)
        model_dir = where if (where / CONFIG_FILE).is_file() else where / MODEL_DIR
        try:
            merged = json.loads((model_dir / CONFIG_FILE).read_text()).get("lora") is not None
        except (OSError, ValueError, AttributeError):
            merged = False
        what = (f"the merged model of the LoRA run {shown_path(model_dir.parent)}" if merged
                and model_dir.name == MODEL_DIR else
                f"the merged LoRA model {shown_path(model_dir)}" if merged else
                f"the easyalign checkpoint {shown_path(where)}")
        try:
            read_at = json.loads((workdir / "manifest.json").read_text()).get(
                "model.path" + SAVED_AT_SUFFIX)
        except (OSError, ValueError, AttributeError):
            read_at = None
        now = saved_at(where)
        if read_at and now and read_at != now:
            what += f" as saved at {read_at} (saved again since)"
        return RunBase(what + changed)
    return None


def base_of(model):
    """The model under the adapters of a LoRA `model`: its base weights as they are (in the
    base dtype), no adapters — the model the adapters were trained on. A model without
    adapters is returned as it is."""
    from easyalign import sharding
    from easyalign.model import abstract_model

    if model.config.lora is None:
        return model
    graphdef, abstract, _ = abstract_model(lora.base_config(model.config),
                                           sharding.single_device_mesh())
    source = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    flat = dict(nnx.to_flat_state(abstract))
    for path, variable in flat.items():  # a scalar head is kept in the adapters' dtype
        value, dtype = source[path], variable.get_value().dtype
        variable.set_value(value if value.dtype == dtype else value.astype(dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _coarser(*dtypes: str) -> str:
    """The dtype of fewer mantissa bits (bfloat16 < float16 < float32)."""
    return min(dtypes, key=lambda d: (np.finfo(np.dtype(d)).nmant, d))


@jax.jit
def _excess(mine: dict, theirs: dict, eps: float) -> dict:
    """Per parameter: (largest |a − b| beyond eps·max(|a|, |b|), largest |a − b|)."""
    out = {}
    for name, a in mine.items():
        a, b = a.astype(jnp.float32), theirs[name].astype(jnp.float32)
        d = jnp.abs(a - b)
        out[name] = (jnp.max(d - eps * jnp.maximum(jnp.abs(a), jnp.abs(b))), jnp.max(d))
    return out


def base_mismatch(model, hf_dir, mesh=None) -> str | None:
    """Why the HF directory `hf_dir` is not the base of the LoRA `model` (`base_of`), or None
    when it is: another architecture (the config fields that differ), tensors that do not fit,
    or other weights — compared in the coarser of the two dtypes, so that a bfloat16 copy of a
    float32 base (or the reverse) is the same base, up to one rounding of that dtype."""
    from easyalign.hf.load import HFCheckpointError, SafetensorsDir, from_hf, read_hf_config

    base = base_of(model)
    want = base.config
    try:
        got = read_hf_config(hf_dir)
        stored = {_SAFETENSORS_DTYPES.get(t[2], "float32")
                  for t in SafetensorsDir(Path(hf_dir)).tensors.values()}
    except HFCheckpointError as e:
        return str(e)
    got = got.replace(**{name: getattr(want, name) for name in _NOT_ARCHITECTURE})
    differ = [f"{f.name}={getattr(got, f.name)!r} (the base: {getattr(want, f.name)!r})"
              for f in dataclasses.fields(want) if getattr(got, f.name) != getattr(want, f.name)]
    if differ:
        return f"its config differs from the base's: {', '.join(differ[:3])}"
    coarse = _coarser(str(want.weight_dtype), *stored)
    try:
        theirs = from_hf(hf_dir, mesh=mesh, param_dtype=coarse, dtype=want.dtype)
    except HFCheckpointError as e:
        return str(e).splitlines()[0]
    flat = {}
    for which, m in (("mine", base), ("theirs", theirs)):
        flat[which] = {".".join(map(str, p)): v.get_value().astype(coarse)
                       for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    if set(flat["mine"]) != set(flat["theirs"]):
        return "its parameters differ from the base's"
    found = jax.device_get(_excess(flat["mine"], flat["theirs"], float(np.finfo(
        np.dtype(coarse)).eps)))
    worse = {name: float(d) for name, (excess, d) in found.items() if excess > 0}
    if worse:
        name = max(worse, key=worse.get)
        return (f"its weights differ from the base's ({len(worse)} of {len(found)} tensors; "
                f"{name} by up to {worse[name]:.3g})")
    return None


def _chosen_base(base_model: str, known: RunBase | None, what: str, export: str, label: str
                 ) -> tuple[str, Path | None, list[str]]:
    """`(value to record, HF directory to check it against or None, notes)` for --base_model
    (empty: the run's own base); raises PeftAdapterError (one line, saying what to pass)."""
    from easyalign.hf.gguf import INSTALLED

    origin = known.hub_original if known else None
    unquantised = (f"; --base_model={origin} records the unquantised original instead, whose "
                   "weights are close to, not the same as, the quantised ones" if origin else "")
    if not base_model:
        if known is not None and known.hf_dir is not None:
            return str(known.hf_dir), known.hf_dir, []
        why = (f"the adapters' base is {what}, which PEFT cannot load by name" if known else
               f"nothing beside {label} records which model the adapters' base is (it is not "
               "the final model of a run)")
        raise PeftAdapterError(f"--adapter=peft of {label}: {why}; export the base with "
                               f"{export} and pass --base_model=BASE_DIR (or the hub repo you "
                               f"publish it as){unquantised}")
    if base_model in INSTALLED and not Path(base_model).exists():
        alias_origin = ALIAS_ORIGINS.get(base_model)
        raise PeftAdapterError(
            f"--base_model={base_model} is easyalign's alias of the GGUF file "
            f"{INSTALLED[base_model][1]}, which PEFT cannot load: pass the HF directory of the "
            f"adapters' base ({export} writes it)" + (
                f", or --base_model={alias_origin}, the unquantised original (close to, not "
                "the same as, the quantised weights)" if alias_origin else " or its hub repo id"))
    path = Path(base_model)
    if path.exists():
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            absolute = Path(os.path.abspath(path))
            return str(absolute), absolute, []
        if path.suffix == ".gguf":
            kind = "a GGUF file"
        elif (path / "model_config.json").is_file() or (path / "model" / "model_config.json"
                                                        ).is_file():
            kind = "an easyalign checkpoint"
        else:
            raise PeftAdapterError(f"--base_model={base_model} is not an HF model directory "
                                   "(config.json + *.safetensors) nor a hub repo id")
        raise PeftAdapterError(f"--base_model={base_model} is {kind}, which PEFT cannot load: "
                               f"pass the HF directory of the adapters' base ({export} writes "
                               "it)")
    if not _HUB_ID.fullmatch(base_model) or base_model.startswith("."):
        raise PeftAdapterError(f"--base_model={base_model}: no such directory (nor a hub repo "
                               "id, org/name)")
    must = (f"the weights of {known.hf_dir}" if known and known.hf_dir else what)
    if origin and base_model == origin:
        note = (f"--base_model={base_model} is the unquantised original of {what}: PEFT on it "
                "computes close to, not exactly, what easyalign computed")
    else:
        note = (f"--base_model={base_model} is recorded unchecked (a hub repo id, not a "
                f"directory here): it must hold {must}")
    return base_model, None, [note]


def export_adapter(ckpt_dir, out_dir, base_model: str = "", dtype: str | None = None,
                   mesh=None) -> tuple[Path, str, list[str]]:
    """Write the adapters of the model checkpoint `ckpt_dir` as a PEFT adapter directory whose
    `base_model_name_or_path` names a model PEFT loads (module docstring, "The base"): the
    HF directory or hub repo id `base_model`, else the run's own HF directory (`run_base`). An
    HF directory is checked against the base the checkpoint holds (`base_mismatch`) and
    recorded as an absolute path. Returns `(out_dir, the base recorded, notes to show)`.

    Raises PeftAdapterError, before writing anything, when no base PEFT can load is given or
    known (naming the base and the command that exports it), when `base_model` is an easyalign
    alias, checkpoint or GGUF file, or an HF directory holding another model.
    """
    from easyalign.hf.checkpoint import load_checkpoint_model, read_checkpoint_config

    _check_exportable(read_checkpoint_config(ckpt_dir))
    known = run_base(ckpt_dir)
    label = shown_path(run_workdir(ckpt_dir) or ckpt_dir)
    export = f"`easyalign convert --to_hf={label} --adapter=base --out=BASE_DIR`"
    what = known.what if known else "the model this checkpoint holds under its adapters"
    recorded, check, notes = _chosen_base(base_model, known, what, export, label)
    model = load_checkpoint_model(ckpt_dir, mesh=mesh)
    if check is not None:
        problem = base_mismatch(model, check, mesh)
        if problem:
            given = (f"--base_model={base_model} is not" if base_model else
                     f"{shown_path(check)}, the run's model.path, no longer holds")
            raise PeftAdapterError(f"{given} the adapters' base ({what}): {problem}; export "
                                   f"the base with {export} and pass --base_model=BASE_DIR")
    return to_peft(model, out_dir, base_model=recorded, dtype=dtype or "float32"), recorded, notes
