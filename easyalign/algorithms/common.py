"""What every phase shares: set-up, data, models, and the run of the generic loop.

An algorithm module (sft, reward, dpo, ...) is a batch kind plus a loss. It calls

    run = prepare(config)                          processes, mesh, workdir, world, tokenizer
    examples = load_examples(run, kind, split)     records → normalised examples
    model = init_model(run, head="lm")             scratch | HF | earlier stage, sharded
    train(run, model=..., loss_fn=..., ...)         state, resume, loop, checkpoints, export

An on-policy phase (PPO) calls `fit` — the same state creation, resume and loop — with its
rollout hooks, and saves its policy itself. The work directory's lock and manifest live in
`train.rundir`, the built-in world as a data source in `data.world_source`.

and `train` writes to `config.workdir`:

    config.json          the resolved config
    checkpoints/         Orbax train-state checkpoints (latest N + best), resumable
    logs/                metrics.jsonl, tensorboard events, samples.txt
    plots/               PNG curves
    model/               the final model as an easyalign checkpoint (params, config, tokenizer):
                         what later stages load, `easyalign sample` reads and `convert` exports.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from easyalign import config_check, distributed, sharding
from easyalign.data import loader as data_loader
from easyalign.data import records as data_records
from easyalign.data import sources as data_sources
from easyalign.data import tokenize as data_tokenize
from easyalign.data import world_source
from easyalign.data.holdout import held_out_rows
from easyalign.model import ModelConfig, Transformer, create_model, preset
from easyalign.train import checkpoint as ckpt
from easyalign.train import loop as train_loop
from easyalign.train import metrics as train_metrics
from easyalign.train import optim, rundir, state as train_state
from easyalign.train.step import make_train_step

from easyalign.hf.checkpoint import MODEL_DIR
@dataclasses.dataclass
class Run:
    config: Any
    mesh: Mesh
    workdir: Path
    tokenizer: Any
    world_dir: Path | None

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


# ----------------------------------------------------------------------------- set-up
def load_tokenizer(config, world: Path | None):
    """The run's tokenizer: `data.tokenizer`, else the model source's own (an HF directory, a
    checkpoint's `tokenizer/`, a GGUF file's metadata), else the built-in world's."""
    from transformers import AutoTokenizer

    path = config.data.tokenizer
    if not path and config.model.init in SOURCE_INITS + ("derive",) and config.model.path:
        kind, source = model_source(config.model)
        if kind == "gguf":
            from easyalign.hf.gguf import gguf_tokenizer

            return gguf_tokenizer(source)
        candidate = Path(source)
        path = str(candidate / "tokenizer" if (candidate / "tokenizer").exists() else candidate)
    if not path and world is not None:
        path = str(world / "tokenizer")
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer, or model.path to a directory with one")
    return AutoTokenizer.from_pretrained(path)


def stage_path(config, value: str) -> str:
    """`@<stage>` names the final model of a sibling stage: `<parent of workdir>/<stage>/model`.

    Pipeline stages live side by side (`runs/<name>/{sft,reward,dpo,...}`), so a stage refers
    to an earlier one without repeating the run directory. Other values pass through.
    """
    if value.startswith("@"):
        return str(Path(config.workdir).absolute().parent / value[1:] / MODEL_DIR)
    return value


def stage_reference(config, value: str) -> str:
    """The inverse of `stage_path`: `<parent of workdir>/<stage>/model` → `@<stage>`, so that
    a config resolved by an earlier run (its `model.path` made absolute in place) records the
    same manifest as the `@stage` it came from. Other values pass through."""
    path = Path(value)
    root = Path(config.workdir).absolute().parent
    if path.is_absolute() and path.name == MODEL_DIR and path.parent.parent == root:
        return "@" + path.parent.name
    return value


def prepare(config) -> Run:
    """Validate the config (`config_check`), start processes, build the mesh, create the
    workdir (lock, manifest) and record the resolved config."""
    raw_path = config.model.path
    for warning in config_check.validate(config):
        if jax.process_index() == 0:
            print(f"[config] warning: {warning}")
    config.model.path = stage_path(config, config.model.path)
    distributed.initialize_from_config(config)
    config_check.validate(config, devices=True, paths=False)  # the mesh and the batch split
    mesh = sharding.mesh_from_config(config.mesh)
    workdir = rundir.start_workdir(config, {"model.path": stage_reference(config, raw_path)})
    world = world_source.ensure_world(config) if world_source.uses_world(config) else None
    return Run(config=config, mesh=mesh, workdir=workdir, tokenizer=load_tokenizer(config, world),
               world_dir=world)


# ----------------------------------------------------------------------------- data
def load_examples(run: Run, kind: str, split: str) -> list[dict]:
    """Normalised examples of `kind` ("sft" | "preference" | "prompt" | "teacher") for `split`
    ("train" | "eval"), as the `data` config block describes them.

    `data.source` feeds "train" and `data.eval_source` "eval" ("world" = the built-in world's
    file for the kind and split, "" = none). The default `data.eval_source="auto"` evaluates on
    the world's held-out files when the source is the world, and otherwise on a held-out split
    of `data.source` (`held_out_rows`) that training does not see. Records with empty text
    follow `data.on_empty`; whatever is skipped is printed as one `[data]` line.
    """
    data = run.config.data
    auto = data.eval_source == "auto"
    source = data.eval_source if split == "eval" and not auto else data.source
    if not source:
        return []
    spec = _source_spec(run, source, kind, split)
    rows = data_sources.read_rows(spec)
    if auto and source != "world":
        rows = _split_rows(run, rows, source, split)
    records = data_sources.apply_columns(rows, spec.columns)
    dropped = data_records.Dropped()
    examples = data_records.normalize(records, kind, on_empty=data.on_empty, dropped=dropped)
    if dropped and run.is_main:
        setting = f" [data.on_empty={data.on_empty}]" if dropped.empty else ""
        print(f"[data] {kind} {split}: dropped {len(dropped)} of {len(records)} records of "
              f"{source}: {dropped.summary()}{setting}")
    return examples


def _source_spec(run: Run, source: str, kind: str, split: str) -> data_sources.SourceSpec:
    data = run.config.data
    if source == "world":
        filename, columns = world_source.WORLD_FILES[(kind, split)]
        return data_sources.SourceSpec(path=str(run.world_dir / filename), columns=columns)
    columns = _columns(data.columns)
    if source.startswith("hf:"):
        # An explicit hf eval source reads `eval_split`; the auto split holds out of `split`.
        hf_split = data.eval_split if split == "eval" and data.eval_source != "auto" else data.split
        return data_sources.SourceSpec(hf_name=source[3:], split=hf_split, columns=columns)
    return data_sources.SourceSpec(path=source, format=data.format or None, columns=columns,
                                   encoding=data.encoding)


def _columns(columns) -> dict:
    """`data.columns` (pre-declared fields, "" = not mapped; or a whole dict) as a mapping."""
    mapping = {field: tuple(c) if isinstance(c, (list, tuple)) else c
               for field, c in dict(columns).items()}
    unknown = sorted(set(mapping) - set(data_records.COLUMN_FIELDS))
    if unknown:
        raise ValueError(f"data.columns: unknown field(s) {unknown}; a column mapping fills "
                         f"{', '.join(data_records.COLUMN_FIELDS)}")
    return data_sources.parse_columns(mapping)


def _split_rows(run: Run, rows: list, source: str, split: str) -> list:
    """The train or eval side of the held-out split of `source` (the train call reports it)."""
    data = run.config.data
    held = held_out_rows(rows, data.eval_fraction, data.eval_max, data.eval_seed)
    if len(held) >= len(rows):
        raise ValueError(f"data.eval_fraction={data.eval_fraction} holds out all {len(rows)} "
                         f"records of {source}; lower it or set data.eval_source")
    if split == "train" and run.is_main:
        print(f"[data] held out {len(held)} of {len(rows)} records of {source} for evaluation "
              f"(data.eval_fraction={data.eval_fraction}, data.eval_max={data.eval_max}, "
              f"data.eval_seed={data.eval_seed}; data.eval_source=auto)")
    return [row for i, row in enumerate(rows) if (i in held) == (split == "eval")]


def tokenize(run: Run, examples: list[dict], kind: str, max_length: int | None = None):
    data = run.config.data
    policy = data_tokenize.TruncationPolicy(
        max_length=max_length or data.max_length, max_prompt_length=data.max_prompt_length or None,
        on_overflow=data.on_overflow)
    tokens, stats = data_tokenize.tokenize_examples(examples, kind, run.tokenizer, policy)
    if run.is_main and stats.truncated + stats.dropped:
        print(f"[data] {kind}: {stats}")
    return tokens


def pad_id(run: Run) -> int:
    return data_tokenize.pad_token_id(run.tokenizer)


def train_loader(run: Run, examples: list[dict], kind: str, max_length: int | None = None):
    c = run.config
    return data_loader.make_train_loader(
        examples, kind=kind, global_batch=c.train.batch_size,
        max_length=max_length or c.data.max_length, pad_id=pad_id(run), seed=c.train.seed,
        pack=c.data.pack and kind in ("sft", "teacher"))


def eval_batches(run: Run, examples: list[dict], kind: str, limit: int | None = None,
                 max_length: int | None = None):
    c = run.config
    if not examples:
        return
    batches = data_loader.make_eval_batches(
        examples, kind=kind, batch_size=c.train.batch_size,
        max_length=max_length or c.data.max_length, pad_id=pad_id(run))
    for i, batch in enumerate(batches):
        if limit and i >= limit:
            return
        yield batch


# ----------------------------------------------------------------------------- models
SOURCE_INITS = ("hf", "checkpoint", "gguf")  # model.init values that load a model as it is
MODEL_INITS = ("scratch",) + SOURCE_INITS + ("derive",)  # every model.init value


def model_source(m) -> tuple[str, str]:
    """`(kind, path)` of the weights a `model` block loads: kind is `hf`, `checkpoint` or `gguf`.

    `init=hf|checkpoint|gguf` name the kind; `init=derive` finds it from `model.path` (the
    teacher): a `.gguf` file or an installed alias (`smollm2`), an easyalign checkpoint or
    phase workdir, or an HF directory. A GGUF alias resolves to its installed file.
    """
    from easyalign.hf.gguf import INSTALLED, resolve_gguf

    kind, path = m.init, m.path
    if kind == "derive":
        if path in INSTALLED or path.endswith(".gguf"):
            kind = "gguf"
        else:
            from easyalign.hf.checkpoint import resolve_model_dir

            directory, kind = resolve_model_dir(path)
            path = str(directory)
    return kind, str(resolve_gguf(path)) if kind == "gguf" else path


def source_model_config(m) -> ModelConfig:
    """The stored ModelConfig a loading block (`init=hf|checkpoint|gguf|derive`) starts from,
    before the block's numerics and overrides; a derived student's shape for `derive`."""
    config = _read_source_config(*model_source(m))
    if m.init == "derive":
        from easyalign.model.student import student_config

        config = student_config(config, *_student_shape(m, config))
    return config


def _read_source_config(kind: str, path: str) -> ModelConfig:
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


def model_config(run: Run, model_cfg=None, *, head: str = "lm") -> ModelConfig:
    """The ModelConfig a `model` config block asks for (numerics from the block).

    A config without a pad id gets the one batches are padded with (`pad_id(run)`): a reward
    model reads its score at the last token that is not the pad id (`reward.read_index`), as
    HF's `*ForSequenceClassification` does with the exported config.
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
        config = config.replace(pad_token_id=pad_id(run))
    return config


def init_model(run: Run, model_cfg=None, *, head: str = "lm", seed: int | None = None
               ) -> Transformer:
    """A sharded model: fresh (`scratch`), loaded (`hf`, `checkpoint`, `gguf`) or a student
    derived from a teacher (`derive`: `model.layers`, `model.intermediate_size`; see
    `easyalign.model.student`).

    When the source has a different head (a reward model grown from an SFT model), the trunk
    is loaded and the new head starts from its initialiser; any other parameter the source
    cannot provide is an error (`_regraft`).
    """
    m = model_cfg or run.config.model
    config = model_config(run, m, head=head)
    seed = run.config.train.seed if seed is None else seed
    if m.init == "scratch":
        return create_model(config, run.mesh, seed=seed)
    kind, path = model_source(m)
    source = _load_source(kind, path, run.mesh, **_numeric_overrides(config, include_head=False))
    if m.init == "derive":
        from easyalign.model.student import derive_student

        source = derive_student(source, *_student_shape(m, source.config), mesh=run.mesh)
    if source.config.head == head:
        if source.config.replace(pad_token_id=config.pad_token_id) == config:
            source.config = config  # at most the pad id was filled in: the weights are the same
            return source
    return _regraft(source, config, run.mesh, seed, where=f"model.path={m.path}")


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


def frozen_params(model: Transformer) -> tuple[Any, nnx.State]:
    """`(graphdef, params)` of a model that is read but not trained."""
    graphdef, params = nnx.split(model)
    return graphdef, params


def save_model(run: Run, params: nnx.State, graphdef, name: str = MODEL_DIR) -> Path:
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


def finish(run: Run, out: Path, history: dict, metric: str | None = None) -> None:
    """The one line every training phase ends with: the model directory and its headline
    metric (the last held-out `metric`, else the last training loss). Releases the lock."""
    if run.is_main:
        name = f"eval/{metric}" if metric and history.get(f"eval/{metric}") else "loss"
        points = history.get(name) or []
        headline = f"; {name} {points[-1][1]:.4f} at step {points[-1][0]}" if points else ""
        print(f"[{run.config.phase}] done: model in {out}{headline}", flush=True)
    rundir.release(run.workdir)


# ----------------------------------------------------------------------------- training
def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    return train_metrics.flops_per_token(config.param_count(), config.num_layers,
                                         config.hidden_size, seq_len)


def train(run: Run, *, model: Transformer, loss_fn_for: Callable, loader, frozen: Any = None,
          evaluate_for: Callable | None = None, best_metric: str | None = None,
          tokens: Callable[[dict], int] | None = None, after_log: Callable | None = None,
          total_steps: int | None = None) -> tuple[nnx.State, Any]:
    """Train `model` with `loss_fn_for(graphdef)`; resumes from `workdir/checkpoints`.

    `evaluate_for(graphdef)` returns `evaluate(params) -> metrics`. Returns the final params
    and the graphdef; the final model is written to `workdir/model/`.
    """
    c = run.config
    steps = total_steps or c.train.steps
    graphdef, params = nnx.split(model)
    config = model.config
    evaluate = evaluate_for(graphdef) if evaluate_for else None
    hooks = train_loop.StepHooks(evaluate=(lambda s: evaluate(s.params)) if evaluate else None,
                                 tokens=tokens, after_log=after_log)
    loop = loop_config(run, steps, flops_per_token=flops_per_token(config, c.data.max_length))
    state, history = fit(run, params=params, loss_fn=loss_fn_for(graphdef), loader=loader,
                         loop=loop, model_config=config, frozen=frozen,
                         hooks=hooks, best_metric=best_metric)
    if history is not None:
        finish(run, save_model(run, state.params, graphdef), history, best_metric)
    return state.params, graphdef


def loop_config(run: Run, total_steps: int, **overrides) -> train_loop.LoopConfig:
    """The generic loop's settings from the `train` and `perf` blocks."""
    t = run.config.train
    return train_loop.LoopConfig(
        total_steps=total_steps, log_every=t.log_every, eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every, dead_steps=t.dead_model_steps,
        peak_flops=run.config.perf.peak_tflops * 1e12, **overrides)


def fit(run: Run, *, params, loss_fn: Callable, loader, loop: train_loop.LoopConfig,
        model_config: ModelConfig, frozen: Any = None,
        hooks: train_loop.StepHooks = train_loop.StepHooks(), best_metric: str | None = None,
        optimizer_steps: int | None = None, update_for: Callable | None = None):
    """Create (or restore) the train state and run the generic loop to `loop.total_steps`.

    `optimizer_steps` (default: the loop's steps) sizes the learning-rate schedule; an
    on-policy algorithm takes several per iteration, and builds its update from the jitted
    step with `update_for(step_fn)`. Returns `(state, history)`; history is None when the run
    had already completed (nothing trained, nothing to write).
    """
    c = run.config
    unit = loop.unit
    tx, schedule = optim.make_optimizer(c.optim, optimizer_steps or loop.total_steps)
    checkpointer = ckpt.Checkpointer(run.workdir / "checkpoints", keep=c.train.keep_checkpoints,
                                     best_metric=best_metric,
                                     async_save=c.train.async_checkpointing)
    state = train_state.create_train_state(params, tx, c.train.seed, run.mesh)
    del params
    latest = checkpointer.latest_step()
    writer = train_metrics.MetricsWriter(run.workdir, total_steps=loop.total_steps,
                                         progress_bar=c.train.progress_bar)
    if latest is not None:
        state, data_state = checkpointer.restore(latest, train_state.abstract_like(state))
        if latest >= loop.total_steps and stage_done(run.workdir):
            # A rerun of a finished run: nothing to train, nothing to rewrite.
            checkpointer.close()
            writer.close()
            if run.is_main:
                print(f"[{c.phase}] already complete ({latest} of {loop.total_steps} {unit}s): "
                      f"the model is in {run.workdir / MODEL_DIR} (train again in a new "
                      "--config.workdir)", flush=True)
            rundir.release(run.workdir)
            return state, None
        if data_state.get("loader"):
            loader.set_state(data_state["loader"].encode())
        if hooks.extra:
            hooks.extra.set_state(data_state)
        writer.resume(latest)
        if run.is_main:
            print(f"[resume] {run.workdir.name}: continuing from {unit} {latest}")
    shardings = train_state.state_shardings(state)
    with sharding.use_mesh(run.mesh):
        step_fn = make_train_step(loss_fn, tx, schedule, shardings, grad_accum=c.train.grad_accum)
        state = train_loop.run_loop(
            state=state, step_fn=update_for(step_fn) if update_for else step_fn, frozen=frozen,
            loader=_LoaderState(loader), mesh=run.mesh, loop=loop, checkpointer=checkpointer,
            writer=writer, model_config=model_config.to_dict(), hooks=hooks,
            start_step=latest or 0)
    checkpointer.close()
    if c.train.plot:
        writer.plot(run.workdir / "plots")
    writer.close()
    return state, writer.history


class _LoaderState:
    """Adapts a data Loader (bytes state) to the loop's JSON checkpoint item."""

    def __init__(self, loader):
        self.loader = loader

    def __next__(self):
        return next(self.loader)

    def get_state(self) -> dict:
        return {"loader": self.loader.get_state().decode()}


def evaluation_average(batches_metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Combine per-batch `(sum, count)` metrics: each key `k` averages `k_sum / k_count`."""
    totals: dict[str, float] = {}
    for metrics in jax.device_get(batches_metrics):
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
    return {key[:-4]: totals[key] / max(totals[key[:-4] + "_count"], 1e-12)
            for key in totals if key.endswith("_sum")}


def write_json(path: Path, value: Any) -> None:
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(tmp, path)


def make_evaluator(run: Run, batches: list[dict], metric_fn: Callable, frozen: Any = None
                   ) -> Callable[[Any], dict[str, float]]:
    """`evaluate(params) -> metrics` over fixed host batches.

    `metric_fn(params, batch, frozen)` returns `{name_sum, name_count}` pairs per batch (so
    padded rows and unequal token counts average correctly); the result maps each `name` to
    Σ sums / Σ counts over all batches.
    """
    jitted = jax.jit(metric_fn)

    def evaluate(params) -> dict[str, float]:
        with sharding.use_mesh(run.mesh):
            outs = [jitted(params, train_loop.to_global_batch(b, run.mesh), frozen)
                    for b in batches]
        return evaluation_average(outs)

    return evaluate


def attention_inputs(batch: dict, packed: bool, prefix: str = "") -> dict:
    """Positions and segment ids for packed rows; right-padded rows need only the causal mask
    (padding comes after every real token), which keeps the fused attention kernel's fast path."""
    if not packed:
        return {}
    return {"positions": batch[f"{prefix}positions"], "segment_ids": batch[f"{prefix}segment_ids"]}
