"""A stage's model from its `model` config block: fresh, loaded or derived, regrafted onto a
new head, and saved as the stage's final model.

    model = init_model(run, head="lm")      scratch | hf | checkpoint | gguf | derive, sharded
    save_model(run, params, graphdef)       <workdir>/model/ (params, config, tokenizer)
    stage_done(workdir)                     the final model exists: the stage is complete

`run` is the stage's set-up (`algorithms.runsetup.Run`: config, mesh, workdir, tokenizer); only
its fields are read here, so this module sits with the loaders it calls, below the phases.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh

from easyalign import distributed
from easyalign.data.tokenize import pad_token_id
from easyalign.hf.checkpoint import MODEL_DIR
from easyalign.model import ModelConfig, Transformer, create_model, lora, preset
from easyalign.model.layers import cast_for_compute

SOURCE_INITS = ("hf", "checkpoint", "gguf")  # model.init values that load a model as it is
MODEL_INITS = ("scratch",) + SOURCE_INITS + ("derive",)  # every model.init value


def model_source(m) -> tuple[str, str]:
    """`(kind, path)` of the weights a `model` block loads: kind is `hf`, `checkpoint` or `gguf`.

    `init=hf|checkpoint|gguf` name the kind; `init=derive` finds it from `model.path` (the
    teacher): a `.gguf` file or an installed alias (`smollm2`), an easyalign checkpoint or
    phase workdir, or an HF directory. A GGUF alias resolves to its installed file.
    """
    from easyalign.hf.checkpoint import resolve_model_dir
    from easyalign.hf.gguf import resolve_gguf

    kind, path = m.init, m.path
    if kind == "derive":
        location, kind = resolve_model_dir(path)
        path = str(location)
    return kind, str(resolve_gguf(path)) if kind == "gguf" else path


def source_model_config(m, stored: ModelConfig | None = None) -> ModelConfig:
    """The stored ModelConfig a loading block (`init=hf|checkpoint|gguf|derive`) starts from,
    before the block's numerics and overrides; a derived student's shape for `derive`.
    `stored`: the source's config when known without reading `m.path` (the doctor plans a
    `@stage` that has not run yet from its stage config)."""
    config = stored if stored is not None else read_source_config(*model_source(m))
    if m.init == "derive":
        from easyalign.model.student import student_config

        config = student_config(config, *_student_shape(m, config))
    return config


def read_source_config(kind: str, path: str) -> ModelConfig:
    """The ModelConfig stored with a model of `kind` (`model_source`: checkpoint, hf, gguf)."""
    from easyalign.hf import read_checkpoint_config, read_hf_config
    from easyalign.hf.gguf import read_gguf_config

    return {"hf": read_hf_config, "checkpoint": read_checkpoint_config,
            "gguf": read_gguf_config}[kind](path)


def _load_source(kind: str, path: str, mesh: Mesh, **numerics) -> Transformer:
    from easyalign.hf import from_hf, load_checkpoint_model
    from easyalign.hf.gguf import from_gguf

    if kind == "checkpoint":
        return load_checkpoint_model(path, mesh=mesh, **numerics)
    return {"hf": from_hf, "gguf": from_gguf}[kind](path, mesh=mesh, **numerics)


def _student_shape(m, teacher: ModelConfig) -> tuple[tuple[int, ...], int]:
    """`(teacher layers kept, MLP width)` of an `init=derive` block."""
    from easyalign.model.student import parse_layers

    return parse_layers(m.layers, teacher.num_layers), m.intermediate_size


def _check_student_keys(m) -> None:
    """`model.layers` / `model.intermediate_size` only mean something with `init=derive`.

    Checked on the run's own block only: PPO's and the frozen-teacher blocks are copies of it
    with another `init`, and must ignore a student's keys rather than fail on them.
    """
    if m.init != "derive" and (m.get("layers") or m.get("intermediate_size")):
        raise ValueError(f"model.layers={m.layers!r} / model.intermediate_size="
                         f"{m.intermediate_size} describe a student derived from a teacher: set "
                         f"model.init=derive (model.init is {m.init!r})")


def model_numerics(m, head: str = "lm") -> dict:
    """The ModelConfig fields a `model` config block sets on any model it builds or loads
    (compute and master dtypes, attention kernel, remat, scan, logits chunk, head)."""
    return dict(dtype=m.dtype, param_dtype=m.param_dtype, attention_impl=m.attention_impl,
                remat=m.remat, scan_layers=m.scan_layers, logits_chunk=m.logits_chunk, head=head)


def lora_config(m, num_experts: int = 0) -> lora.LoraConfig | None:
    """The `model.lora` block as a LoraConfig (None when `rank` is 0: no adapters); targets
    resolved against the projections a model with `num_experts` has."""
    block = m.get("lora")
    if block is None or not block.rank:
        return None
    return lora.LoraConfig(
        rank=block.rank, alpha=block.alpha, dropout=block.dropout, rslora=block.rslora,
        base_dtype=block.base_dtype,
        targets=lora.resolve_targets(block.targets, lora.available_targets(num_experts)))


def model_config(run, model_cfg=None, *, head: str = "lm", adapters: bool | None = None
                 ) -> ModelConfig:
    """The ModelConfig a `model` config block asks for (numerics from the block).

    A config without a pad id gets the one batches are padded with (the tokenizer's): a reward
    model reads its score at the last token that is not the pad id (`reward.read_index`), as
    HF's `*ForSequenceClassification` does with the exported config. `adapters` (default: for
    the run's own block only, not for the frozen models' copies of it) adds `model.lora`.
    """
    m = model_cfg or run.config.model
    if model_cfg is None:
        _check_student_keys(m)
    numerics = model_numerics(m, head)
    overrides = ModelConfig.parse_overrides(m.overrides)
    if m.init in SOURCE_INITS + ("derive",):
        config = source_model_config(m).replace(**numerics, **overrides)
    elif m.init == "scratch":
        vocab = m.vocab_size or len(run.tokenizer)
        ids = dict(eos_token_id=run.tokenizer.eos_token_id, bos_token_id=run.tokenizer.bos_token_id)
        config = preset(m.preset, vocab_size=vocab, **ids, **numerics, **overrides)
    else:
        raise ValueError(f"model.init={m.init!r}: expected scratch, hf, checkpoint, gguf or "
                         "derive")
    if config.pad_token_id is None and run.tokenizer is not None:
        config = config.replace(pad_token_id=pad_token_id(run.tokenizer))
    # A source saved with adapters is loaded merged (`init_model`): its config describes that.
    config = config.replace(lora=None)
    if adapters if adapters is not None else model_cfg is None:
        config = config.replace(lora=lora_config(m, config.num_experts))
    return config


def init_model(run, model_cfg=None, *, head: str = "lm", seed: int | None = None,
               adapters: bool | None = None, frozen: bool = False) -> Transformer:
    """A sharded model: fresh (`scratch`), loaded (`hf`, `checkpoint`, `gguf`) or a student
    derived from a teacher (`derive`: `model.layers`, `model.intermediate_size`; see
    `easyalign.model.student`).

    When the source has a different head (a reward model grown from an SFT model), the trunk
    is loaded and the new head starts from its initialiser; any other parameter the source
    cannot provide is an error (`_regraft`).

    LoRA (`model.lora.rank` > 0, the run's own block unless `adapters` says otherwise): the
    base is loaded in `model.lora.base_dtype` and fresh adapters are attached (B = 0: the
    model computes the source's function). A source saved with adapters (an earlier LoRA
    stage) is merged first, so the new stage's base is that stage's model.

    `frozen`: a model that is never trained (a KL reference, a reward model, a teacher): its
    weights are cast to the compute dtype once (`layers.cast_for_compute`: the same numbers,
    half the memory of float32 weights, no cast in every step).
    """
    model = _init_model(run, model_cfg, head=head, seed=seed, adapters=adapters)
    if frozen:
        cast_for_compute(model, model.config.compute_dtype)
    return model


def _init_model(run, model_cfg, *, head: str, seed: int | None, adapters: bool | None
                ) -> Transformer:
    m = model_cfg or run.config.model
    config = model_config(run, m, head=head,
                          adapters=model_cfg is None if adapters is None else adapters)
    if model_cfg is None:
        check_context(run.config, config)
        line = lora.rank_warning(config)
        if line and jax.process_index() == 0:
            print(line, flush=True)
    check_mesh(config, run.mesh.shape)
    seed = run.config.train.seed if seed is None else seed
    plain = lora.base_config(config)
    if m.init == "scratch":  # the same base as without adapters, then the adapters
        model = create_model(plain, run.mesh, seed=seed)
        return model if config.lora is None else lora.attach(model, config.lora, run.mesh, seed,
                                                      config.param_dtype)
    kind, path = model_source(m)
    source = _load_source(kind, path, run.mesh, **_numeric_overrides(plain, include_head=False))
    if source.config.lora is not None:
        source = lora.merge(source, dtype=plain.param_dtype)
    if m.init == "derive":
        from easyalign.model.student import derive_student

        source = derive_student(source, *_student_shape(m, source.config), mesh=run.mesh)
    if source.config.head == head and (
            source.config.replace(pad_token_id=plain.pad_token_id) == plain):
        source.config = plain  # at most the pad id was filled in: the weights are the same
        model = source
    else:
        model = _regraft(source, plain, run.mesh, seed, where=f"model.path={m.path}")
    return model if config.lora is None else lora.attach(model, config.lora, run.mesh, seed,
                                                      config.param_dtype)


def check_context(config, model: ModelConfig) -> None:
    """`data.max_length` fits the model's context (`max_position_embeddings`), checked before
    any weight is read: longer rows run positions the model never learnt (and a stray extra
    zero asks XLA for terabytes). Raises ConfigError naming both numbers and the two ways out."""
    from easyalign.config_keys import ConfigError

    length = config.get("data", {}).get("max_length", 0) if "data" in config else 0
    if length > model.max_position_embeddings:
        source = config.model.path or f"preset {config.model.preset}"
        raise ConfigError(f"data.max_length={length} is longer than the model's context "
                          f"({model.max_position_embeddings} positions, max_position_embeddings "
                          f"of {source}): lower data.max_length, or extend the context on "
                          "purpose with model.overrides='max_position_embeddings=N' (and a RoPE "
                          "scaling that supports it)")


def check_mesh(model: ModelConfig, axis_sizes) -> None:
    """Every weight of `model` splits evenly over a mesh of `axis_sizes` (`Mesh.shape`;
    `sharding.uneven_weight`), checked before any weight is read: `mesh.tensor` must divide the
    heads, KV heads and MLP width, `mesh.fsdp` the axes it splits. Raises ConfigError naming
    the weight and the sizes."""
    from easyalign import sharding
    from easyalign.config_keys import ConfigError
    from easyalign.model import abstract_model

    _, state, shardings = abstract_model(model)  # the specs follow the rules, not the sizes
    where = sharding.uneven_weight(state, shardings, axis_sizes)
    if where:
        shape = " ".join(f"{k}={v}" for k, v in axis_sizes.items())
        raise ConfigError(f"mesh {shape} cannot split the model's weights evenly ({where}): "
                          f"mesh.tensor must divide num_heads={model.num_heads}, "
                          f"num_kv_heads={model.num_kv_heads} and intermediate_size="
                          f"{model.intermediate_size}; mesh.fsdp the weights' other axes")


def _numeric_overrides(config: ModelConfig, include_head: bool) -> dict:
    keys = ("dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "logits_chunk") + (
        ("head",) if include_head else ())
    return {k: getattr(config, k) for k in keys}


# The parameters of each head: the only ones that may start fresh, when the head changes.
HEAD_PARAMS = {"lm": ("lm_head.kernel",), "scalar": ("score.kernel",)}


def _regraft(source: Transformer, config: ModelConfig, mesh: Mesh, seed: int,
             where: str = "the source model") -> Transformer:
    """A model of `config` holding the parameters of `source` (same path and shape).

    Only a new head starts from its initialiser: when `config.head` differs from the source's
    (a scalar reward/value head grown on an LM trunk). Any other parameter the source cannot
    provide — a block of a deeper model (`model.overrides="num_layers=6"`), a wider MLP —
    raises ValueError naming each one: copying what matches and leaving the rest random would
    train a model that is silently not the one asked for.
    """
    from flax import traverse_util

    target = create_model(config, mesh, seed=seed)
    source_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(source)))
    target_state = nnx.state(target)
    target_flat = traverse_util.flatten_dict(nnx.to_pure_dict(target_state))
    fresh = HEAD_PARAMS[config.head] if source.config.head != config.head else ()
    missing = []
    for path, value in target_flat.items():
        name = ".".join(map(str, path))
        if path in source_flat and source_flat[path].shape == value.shape:
            target_flat[path] = source_flat[path]
        elif name not in fresh:
            found = list(source_flat[path].shape) if path in source_flat else "absent"
            missing.append(f"{name} {list(value.shape)} (source: {found})")
    if missing:
        raise ValueError(f"{where}: cannot initialise {len(missing)} parameter(s) of the "
                         f"{config.num_layers}-layer {config.family} model from the "
                         f"{source.config.num_layers}-layer source: {'; '.join(missing)} — to "
                         "start a smaller student from a teacher's layers use model.init=derive "
                         "with model.layers")
    nnx.replace_by_pure_dict(target_state, traverse_util.unflatten_dict(target_flat))
    nnx.update(target, target_state)
    return target


def save_model(run, params: nnx.State, graphdef, name: str = MODEL_DIR) -> Path:
    """Write a stage's final model (params + config + tokenizer) as a model checkpoint.

    Written into a temporary sibling (`<name>.partial`) and renamed when complete: a stage
    counts as done when `<name>/model_config.json` exists (`stage_done`), so a run killed
    mid-save never looks finished.
    """
    import shutil

    from easyalign.hf import save_checkpoint_model

    out = run.workdir / name
    partial = run.workdir / f"{name}.partial"
    if partial.exists() and jax.process_index() == 0:
        shutil.rmtree(partial)  # a half-written model of a killed run; the train state is safe
    distributed.barrier("save_model")
    save_checkpoint_model(nnx.merge(graphdef, params), partial)
    if run.is_main:
        run.tokenizer.save_pretrained(str(partial / "tokenizer"))
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    distributed.barrier("save_model_done")
    return out


def stage_done(workdir: str | Path) -> bool:
    """A stage is complete when its final model directory has been written."""
    return (Path(workdir) / MODEL_DIR / "model_config.json").exists()
