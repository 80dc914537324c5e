"""An intermediate training checkpoint (`<workdir>/checkpoints/<step>/`) read as a model.

A phase saves its train state every `train.checkpoint_every` steps (`train.checkpoint`), and
its final model (`<workdir>/model/`) only at the end. `easyalign convert --to_hf` and
`easyalign sample` also read a step, so that a user can export or try the model of step 400
of a run that is still going, or that was stopped:

* the model config is the step's own (`<step>/model/`, JSON: each step describes itself);
* the params are the `params` subtree of its train state (`<step>/state/`), restored alone
  (Orbax partial restore: the optimizer state, twice the params' size under Adam, is not
  read) straight into the current mesh's shardings; a PPO state's `params["policy"]` is the
  policy;
* the tokenizer is the run's (`tools.step_tokenizer`, above this layer: it reads the run's
  recorded config as a run would): its final model's `tokenizer/` when the run finished,
  else the one its recorded config (`<workdir>/config.json`) names (`data.tokenizer`, the
  source model's, or a built-in source's when it was generated).

A LoRA run's train state holds only the adapters (the base is not trained, so not saved):
its step's model is the base loaded again as the run loaded it (`hf.models.init_model` with
the run's recorded `model` block, `<workdir>/config.json`), the step's adapters restored into
it and merged (`lora.merge`: a model without adapters, as `convert --to_hf` writes a finished
LoRA run's model).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from easyalign import sharding
from easyalign.model import abstract_model
from easyalign.model.config import ModelConfig

STATE_ITEM, MODEL_ITEM = "state", "model"  # `train.checkpoint.Checkpointer`'s item names


class StepCheckpointError(ValueError):
    """A step checkpoint that cannot be read as a model (the CLI prints the message)."""


def training_step(path: str | Path) -> tuple[Path, int] | None:
    """`(workdir, step)` when `path` is a saved step `<workdir>/checkpoints/<step>`, else None."""
    path = Path(path)
    if (path.name.isdigit() and path.parent.name == "checkpoints"
            and (path / STATE_ITEM).is_dir() and (path / MODEL_ITEM).is_dir()):
        return path.parent.parent, int(path.name)
    return None


def latest_step(workdir: str | Path) -> Path | None:
    """The last complete step `<workdir>/checkpoints/<step>` (Orbax renames a step into place
    when its save is complete), or None."""
    directory = Path(workdir) / "checkpoints"
    steps = [p for p in directory.iterdir() if training_step(p)] if directory.is_dir() else []
    return max(steps, key=lambda p: int(p.name), default=None)


def step_model_config(step_dir: str | Path) -> ModelConfig:
    """The ModelConfig a step recorded (`<step>/model/metadata`, Orbax's JSON item)."""
    step_dir = Path(step_dir)
    files = sorted((step_dir / MODEL_ITEM).glob("*metadata*"))
    for file in files:
        try:
            return ModelConfig.from_dict(json.loads(file.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
            continue
    raise StepCheckpointError(f"{step_dir}: no readable model config in {MODEL_ITEM}/ (a "
                              "checkpoint saved by another easyalign version?)")


def _restore_params(step_dir: Path, abstract, shardings):
    """The params of `abstract` (an nnx State of `ShapeDtypeStruct`s, with `shardings`) as the
    step's train state holds them (`_params_prefix`), restored alone: a pure dict."""
    # The stored nnx state keeps each variable's value under a "value" key.
    target = jax.tree.map(lambda value, where: {"value": jax.ShapeDtypeStruct(
        value.shape, value.dtype, sharding=where)},
        nnx.to_pure_dict(abstract), nnx.to_pure_dict(shardings))
    wanted = {path + ("value",) for path in _paths(nnx.to_pure_dict(abstract))}
    prefix = _params_prefix(step_dir, wanted)
    item = target
    for key in reversed(prefix):
        item = {key: item}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(step_dir / STATE_ITEM, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
    for key in prefix:
        restored = restored[key]
    return jax.tree.map(lambda leaf: leaf["value"], restored,
                        is_leaf=lambda x: isinstance(x, dict) and set(x) == {"value"})


def _lora_step_model(step_dir: Path, mesh, tokenizer, config_overrides: dict):
    """A LoRA run's step (module docstring): the base as the run loaded it, the step's
    adapters, merged. Raises StepCheckpointError when the run left no record of its base, or
    its base was initialised from scratch and `tokenizer` (the run's) is not given."""
    import types

    from ml_collections import ConfigDict

    from easyalign.hf.models import init_model
    from easyalign.model import lora

    workdir = step_dir.parent.parent
    try:
        record = ConfigDict(json.loads((workdir / "config.json").read_text()))
        record.model.update(config_overrides)
    except (OSError, ValueError, AttributeError) as error:
        raise StepCheckpointError(
            f"{step_dir}: a LoRA run's step holds only its adapters, and the run's record of "
            f"its base ({workdir / 'config.json'}) cannot be read ({error}); the finished "
            f"run's workdir gives its final model") from None
    if record.model.init == "scratch" and tokenizer is None:  # its ids and vocabulary
        raise StepCheckpointError(f"{step_dir}: the base of this LoRA run was initialised from "
                                  "scratch, with its tokenizer's ids: pass the run's tokenizer")
    # The base loaded again as the run did (a scratch base from the run's seed), with fresh
    # adapters of the run's shape.
    model = init_model(types.SimpleNamespace(config=record, mesh=mesh, tokenizer=tokenizer))
    trainable, _ = lora.split(nnx.state(model, nnx.Param))
    shardings = jax.tree.map(lambda x: x.sharding, trainable)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable)
    nnx.replace_by_pure_dict(trainable, _restore_params(step_dir, abstract, shardings))
    nnx.update(model, trainable)
    return lora.merge(model)


def _params_prefix(step_dir: Path, wanted: set[tuple]) -> tuple[str, ...]:
    """Where the model's params lie in the stored train state: `("params",)`, or
    `("params", "policy")` for PPO's policy + value state."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(step_dir / STATE_ITEM).item_metadata.tree
    params = tree.get("params", {}) if isinstance(tree, dict) else {}
    for prefix, subtree in ((("params",), params),
                            *((("params", k), v) for k, v in params.items()
                              if isinstance(v, dict))):
        if _paths(subtree) == wanted:
            return prefix
    raise StepCheckpointError(f"{step_dir}: its train state holds no parameters of the model "
                              "its model config describes")


def load_step_model(step_dir: str | Path, mesh=None, tokenizer=None, **config_overrides):
    """The model of a saved step, restored into the shardings of `mesh` (default: one
    device); `config_overrides` as `load_checkpoint_model`'s (`dtype`, `param_dtype`). A LoRA
    run's step comes back merged (module docstring; `tokenizer`, the run's, is needed when its
    base was initialised from scratch)."""
    step_dir = Path(step_dir).absolute()
    config = step_model_config(step_dir)
    mesh = mesh or sharding.single_device_mesh()
    if config.lora is not None:
        return _lora_step_model(step_dir, mesh, tokenizer, config_overrides)
    config = config.replace(**config_overrides)
    graphdef, abstract, shardings = abstract_model(config, mesh)
    nnx.replace_by_pure_dict(abstract, _restore_params(step_dir, abstract, shardings))
    return nnx.merge(graphdef, abstract)


def _paths(tree) -> set[tuple]:
    return {tuple(getattr(k, "key", k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
