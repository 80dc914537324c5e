"""Model checkpoints on disk (Orbax) and their conversion from and to HF format.

A model checkpoint is a directory:

    ckpt_dir/
      model_config.json   ModelConfig.to_dict() as JSON — the checkpoint describes itself
      params/             Orbax (StandardCheckpointer) PyTree of the parameters: the nnx
                          `Param` state as a nested dict of arrays, keys = the param paths
                          (`embed_tokens/embedding`, `layers/attn/q_proj/kernel`, ...), stacked
                          block weights with their leading `[L]` axis, as in the model
      tokenizer/          HF tokenizer files, copied verbatim (optional)
      saved.json          {"saved_at": UTC time of the save, to the microsecond}: which save
                          of a path a later run read (`saved_at`; copied with the directory)

`params/` is a plain Orbax PyTree, so a training checkpoint can hold the same tree as one item
of a `CheckpointManager` step and these functions read it. Restore is sharding-aware: the
target is the abstract model on the *current* mesh (`ShapeDtypeStruct`s carrying the rules'
`NamedSharding`s), so Orbax reads each device's block straight into its shard — a checkpoint
saved on one mesh restores on any other, and the stored dtype is cast to the config's
`param_dtype` on the way in.
"""

from __future__ import annotations

import datetime
import json
import shutil
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from easyalign import sharding
from easyalign.hf.export import to_hf
from easyalign.hf.load import from_hf
from easyalign.model import Transformer, abstract_model
from easyalign.model.config import ModelConfig

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"
SAVED_FILE = "saved.json"
MODEL_DIR = "model"  # where a phase writes its final model, inside its workdir


class ModelDirError(ValueError):
    """A path that holds no model (the CLI prints the message)."""
TOKENIZER_DIR = "tokenizer"
# Files an HF tokenizer may consist of (tokenizers, sentencepiece and BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    files = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    if files:
        dst.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, dst / file.name)


def save_checkpoint_model(model: Transformer, ckpt_dir: str | Path,
                          tokenizer_dir: str | Path | None = None) -> Path:
    """Write `model` as a model checkpoint (layout in the module docstring); returns the dir.

    Collective on multi-host meshes (Orbax coordinates the processes); process 0 writes the
    JSON and tokenizer files. `ckpt_dir/params` must not exist yet.
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:  # leaving the block waits for the save
        checkpointer.save(ckpt_dir / PARAMS_DIR, params)
    if jax.process_index() == 0:
        (ckpt_dir / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), ckpt_dir / TOKENIZER_DIR)
        now = datetime.datetime.now(datetime.timezone.utc)
        (ckpt_dir / SAVED_FILE).write_text(json.dumps(
            {"saved_at": now.isoformat(timespec="microseconds")}) + "\n")
    return ckpt_dir


def saved_at(path: str | Path) -> str | None:
    """When the model checkpoint at `path` (or in a phase workdir's `model/`) was saved, as
    `save_checkpoint_model` recorded it; None for anything else (an HF directory, a GGUF file,
    a checkpoint saved before the record existed, a path that is not there). A run records it
    for every model it reads (`rundir.manifest`), so a model saved again in place — retrained
    under the same settings — no longer matches the runs made from it."""
    for directory in (Path(path), Path(path) / MODEL_DIR):
        try:
            return json.loads((directory / SAVED_FILE).read_text())["saved_at"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def read_checkpoint_config(ckpt_dir: str | Path) -> ModelConfig:
    """The ModelConfig a model checkpoint describes itself with. Raises FileNotFoundError,
    saying what `ckpt_dir` is when it is not a checkpoint (a phase workdir, a training step,
    nothing) and what reads that."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        from easyalign.hf.step_checkpoint import training_step

        if not Path(ckpt_dir).exists():
            what = "no such directory"
        elif (Path(ckpt_dir) / MODEL_DIR / CONFIG_FILE).is_file():
            what = f"a phase workdir: its final model is {Path(ckpt_dir) / MODEL_DIR}"
        elif training_step(ckpt_dir):
            what = ("a training step: easyalign.hf.step_checkpoint.load_step_model reads it "
                    "(or easyalign convert --to_hf)")
        else:
            what = f"no {CONFIG_FILE} (not an easyalign model checkpoint)"
        raise FileNotFoundError(f"{ckpt_dir}: {what}")
    return ModelConfig.from_dict(json.loads(path.read_text()))


def load_checkpoint_model(ckpt_dir: str | Path, mesh: Mesh | None = None,
                          **config_overrides) -> Transformer:
    """Restore a model checkpoint directly into the shardings of `mesh` (default: one device).

    `config_overrides` are `ModelConfig` fields such as `dtype` (compute) or `param_dtype`
    (the stored params are cast to it during the restore).
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    config = read_checkpoint_config(ckpt_dir).replace(**config_overrides)
    mesh = mesh or sharding.single_device_mesh()
    graphdef, abstract, shardings = abstract_model(config, mesh)
    target = jax.tree.map(lambda value, where: jax.ShapeDtypeStruct(
        value.shape, value.dtype, sharding=where),
        nnx.to_pure_dict(abstract), nnx.to_pure_dict(shardings))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(ckpt_dir / PARAMS_DIR, target)
    nnx.replace_by_pure_dict(abstract, params)
    return nnx.merge(graphdef, abstract)


def convert_hf_to_checkpoint(hf_dir: str | Path, out_dir: str | Path,
                             mesh: Mesh | None = None, param_dtype: str = "float32",
                             peft_adapter: str | Path | None = None) -> Path:
    """HF checkpoint directory → model checkpoint (params in `param_dtype`, tokenizer copied);
    with `peft_adapter`, a PEFT LoRA adapter directory for that base is imported too (the
    checkpoint then holds base + adapters, `hf.peft.from_peft`)."""
    model = from_hf(hf_dir, mesh=mesh, param_dtype=param_dtype)
    if peft_adapter:
        from easyalign.hf.peft import from_peft

        model = from_peft(model, peft_adapter, mesh)
    return save_checkpoint_model(model, out_dir, tokenizer_dir=hf_dir)


def convert_checkpoint_to_hf(ckpt_dir: str | Path, out_dir: str | Path,
                             mesh: Mesh | None = None, max_shard_size: int | str = "2GB",
                             dtype: str | None = None, adapter: str = "merged",
                             base_model: str = "") -> Path:
    """Model checkpoint → HF directory (weights in `dtype`, default the stored param dtype).

    A model with LoRA adapters is written merged (`adapter="merged"`), as a PEFT adapter
    directory (`adapter="peft"`: `hf.peft.export_adapter`, which records `base_model` — or the
    run's own HF base — after checking it, and refuses a base PEFT cannot load; its notes are
    warnings here), or as its base alone (`adapter="base"`: the weights the adapters were
    trained on, `hf.peft.base_of`, an HF directory to give the PEFT adapter as its base).
    """
    if adapter == "peft":
        from easyalign.hf.peft import export_adapter

        out_dir, _, notes = export_adapter(ckpt_dir, out_dir, base_model=base_model,
                                           dtype=dtype, mesh=mesh)
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return out_dir
    if adapter not in ("merged", "base"):
        raise ValueError(f"adapter={adapter!r}: expected merged, peft or base")
    model = load_checkpoint_model(ckpt_dir, mesh=mesh)
    if adapter == "base":
        from easyalign.hf.peft import PeftAdapterError, base_of

        if model.config.lora is None:
            raise PeftAdapterError(f"{ckpt_dir}: the model has no LoRA adapters, so it is its "
                                   "own base: export it without --adapter (merged)")
        model = base_of(model)
    out_dir = to_hf(model, out_dir, max_shard_size=max_shard_size, dtype=dtype)
    if jax.process_index() == 0:
        _copy_tokenizer(Path(ckpt_dir) / TOKENIZER_DIR, Path(out_dir))
    return out_dir


def resolve_model_dir(path: str | Path) -> tuple[Path, str]:
    """`(location, kind)` of a model given by path: kind `"checkpoint"` (an easyalign model
    checkpoint, or a phase workdir → its `model/`), `"hf"` (config.json + safetensors) or
    `"gguf"` (a `.gguf` file, or an installed alias such as `smollm2` → its installed file).

    The one resolver behind every "model by path" value (`model.path` of `init=derive`,
    `generate.model`, `sample --checkpoint`, eval variants, `doctor`). Raises `ModelDirError`
    naming the path and what was expected; a GGUF alias that is not installed raises the
    `GGUFError` that says how to install it.
    """
    from easyalign.hf.gguf import INSTALLED, alias_hint, is_gguf, resolve_gguf
    from easyalign.hf.step_checkpoint import latest_step, training_step

    if is_gguf(path):
        return resolve_gguf(path), "gguf"
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"{path}: no such file or directory{alias_hint(str(path))}")
    step = training_step(path)
    if step is not None:  # only the tools read one (`hf.step_checkpoint`); elsewhere: say so
        raise ModelDirError(
            f"{path}: an intermediate checkpoint (step {step[1]}) of the run in {step[0]}; "
            f"give that workdir for its final model, or export the step first: easyalign "
            f"convert --to_hf={path} --out=DIR")
    if path.name == "checkpoints" and latest_step(path.parent):
        raise ModelDirError(f"{path}: the checkpoints of the run in {path.parent}; give that "
                            f"workdir for its final model, or one step ({latest_step(path.parent)}"
                            " is the latest) to easyalign convert --to_hf or easyalign sample")
    if (path / CONFIG_FILE).is_file():
        return path, "checkpoint"
    if (path / MODEL_DIR / CONFIG_FILE).is_file():
        return path / MODEL_DIR, "checkpoint"
    # A phase workdir also has a config.json (the run's config), but no weights next to it.
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path, "hf"
    if (path / "config.json").is_file():
        latest = latest_step(path)
        raise ModelDirError(f"{path}: looks like a phase workdir whose final model/ is missing "
                            "(did the run finish?)" + (
                                f"; its latest checkpoint {latest} is read by easyalign "
                                "convert --to_hf and easyalign sample" if latest else ""))
    raise ModelDirError(f"{path}: not an easyalign model checkpoint (model_config.json), a "
                        "phase workdir (model/), an HF model directory (config.json + "
                        "*.safetensors) or a GGUF file (.gguf, or an installed alias: "
                        f"{sorted(INSTALLED)})")
