"""A stage's set-up and data: the `Run` every phase starts from, `@stage` paths, and the
examples, tokenisation and loaders of its `data` block.

An algorithm module (sft, reward, dpo, ...) is a batch kind plus a loss. It calls

    run = prepare(config)                          config check, processes, mesh, workdir,
                                                   built-in data sources, tokenizer
    examples = load_examples(run, kind, split)     records → normalised examples
    model = hf.models.init_model(run, head="lm")   scratch | HF | earlier stage, sharded
    train.driver.train(run, model=..., ...)        state, resume, loop, checkpoints, export

The work directory's lock and manifest live in `train.rundir`; the built-in data sources (what
they read, which tokenizer they provide) in `data.builtin`, which this module asks by the
`data.source` name.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from easyalign import config_check, distributed, sharding
from easyalign.data import builtin as data_builtin
from easyalign.data import columns as data_columns
from easyalign.data import loader as data_loader
from easyalign.data import records as data_records
from easyalign.data import sources as data_sources
from easyalign.data import tokenize as data_tokenize
from easyalign.data.holdout import held_out_rows, split_rows
from easyalign.hf.checkpoint import MODEL_DIR
from easyalign.hf.models import SOURCE_INITS, init_model, model_source
from easyalign.model import lora
from easyalign.train import rundir


@dataclasses.dataclass
class Run:
    config: Any
    mesh: Mesh
    workdir: Path
    tokenizer: Any
    # The built-in data sources the config uses (`data.builtin.prepare`): name → directory.
    source_dirs: dict[str, Path] = dataclasses.field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


# ----------------------------------------------------------------------------- set-up
def load_tokenizer(config, source_dirs: dict[str, Path]):
    """The run's tokenizer: `data.tokenizer` (a tokenizer directory, or a GGUF file / alias),
    else the model source's own (an HF directory, a checkpoint's `tokenizer/`, a GGUF file's
    metadata), else the one a built-in data source of
    `source_dirs` provides (`data.builtin.tokenizer_dir`)."""
    from transformers import AutoTokenizer

    from easyalign.hf.gguf import gguf_tokenizer, is_gguf

    path = config.data.tokenizer
    if not path and config.model.init in SOURCE_INITS + ("derive",) and config.model.path:
        kind, source = model_source(config.model)
        if kind == "gguf":
            return gguf_tokenizer(source)
        candidate = Path(source)
        path = str(candidate / "tokenizer" if (candidate / "tokenizer").exists() else candidate)
    path = path or data_builtin.tokenizer_dir(source_dirs)
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer, or model.path to a directory with one")
    if is_gguf(path):  # data.tokenizer may name a GGUF file or alias: its metadata's tokenizer
        return gguf_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def stage_path(config, value: str) -> str:
    """`@<stage>` names the final model of a sibling stage: `<parent of workdir>/<stage>/model`.

    Pipeline stages live side by side (`runs/<name>/{sft,reward,dpo,...}`), so a stage refers
    to an earlier one without repeating the run directory. Other values pass through.
    """
    if value.startswith("@"):
        return str(Path(config.workdir).absolute().parent / value[1:] / MODEL_DIR)
    return value


def models_read(config):
    """The manifest's record of when each model the run reads was saved (`rundir.models_read`,
    `@stage`s resolved against this config's workdir)."""
    return rundir.models_read(lambda value: stage_path(config, value))


def stage_reference(config, value: str) -> str:
    """The inverse of `stage_path`: `<parent of workdir>/<stage>/model` → `@<stage>`, so that
    a config resolved by an earlier run (its `model.path` made absolute in place) records the
    same manifest as the `@stage` it came from. Other values pass through."""
    path = Path(value)
    root = Path(config.workdir).absolute().parent
    if path.is_absolute() and path.name == MODEL_DIR and path.parent.parent == root:
        return "@" + path.parent.name
    return value


def prepare(config, *, workdir: bool = True, trains: bool = True, identify=None) -> Run:
    """Validate the config (`config_check`), start processes, build the mesh, create the
    workdir (lock, manifest), record the resolved config and prepare the built-in data sources
    the config uses (`data.builtin`). With `workdir=False` nothing is created there: a command
    told to write its output elsewhere (`generate.output`) writes only that, and `config.workdir`
    only anchors `@stage` references and the built-in world. `trains=False` (the pipeline's
    untrained base model) prints no warning about the training settings it does not use.
    `identify(key, value) -> dict`: the phase's own manifest entries per setting, beside
    when each model it reads was saved (`rundir.manifest`)."""
    raw_path = config.model.path
    warnings = config_check.validate(config)
    config.model.path = stage_path(config, config.model.path)
    distributed.initialize_from_config(config)
    # Printed only now: `jax.process_index()` would start the backend, which must come after
    # `jax.distributed.initialize` in a multi-process run.
    for warning in warnings if trains and jax.process_index() == 0 else ():
        print(f"[config] warning: {warning}")
    config_check.validate(config, devices=True, paths=False)  # the mesh and the batch split
    mesh = sharding.mesh_from_config(config.mesh)
    if workdir:
        saved = models_read(config)
        directory = rundir.start_workdir(
            config, {"model.path": stage_reference(config, raw_path)},
            saved if identify is None else lambda k, v: saved(k, v) | identify(k, v))
        if _STOP_WHEN_COMPLETE.get():
            _stop_if_complete(config, directory)
    else:
        directory = Path(config.workdir).absolute()
    generated = data_builtin.not_prepared(config)
    source_dirs = data_builtin.prepare(config)
    for directory_made in generated if workdir else ():  # removed if the set-up fails
        rundir.made_beside(directory, directory_made)
    return Run(config=config, mesh=mesh, workdir=directory,
               tokenizer=load_tokenizer(config, source_dirs), source_dirs=source_dirs)


class StageComplete(Exception):
    """Raised by `prepare` for a rerun of a finished run under `stop_when_complete`."""


_STOP_WHEN_COMPLETE = contextvars.ContextVar("stop_when_complete", default=False)


@contextlib.contextmanager
def stop_when_complete():
    """Within it, `prepare` stops a rerun of a finished run (`StageComplete`) before it reads
    any data: the stage runner's setting (`stages.stage_function`: the CLI, the pipeline,
    `easyalign.run`). A phase's `setup()` called directly, to inspect a finished run, goes on
    (and its training driver still finds the run complete without training or writing)."""
    token = _STOP_WHEN_COMPLETE.set(True)
    try:
        yield
    finally:
        _STOP_WHEN_COMPLETE.reset(token)


def _stop_if_complete(config, workdir: Path) -> None:
    """A rerun of a finished run (same config: `start_workdir` checked it; its model written
    and its last checkpoint at `train.steps`) says so and raises `StageComplete` before any
    data is read or tokenised or any model loaded (it used to do all that, then find out)."""
    from easyalign.hf.models import stage_done
    from easyalign.train.checkpoint import Checkpointer

    if not stage_done(workdir) or not (workdir / "checkpoints").is_dir():
        return
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        latest = checkpointer.latest_step()
    finally:
        checkpointer.close()
    steps = config.train.steps
    if latest is None or latest < steps:
        return
    rundir.release(workdir)
    if jax.process_index() == 0:
        print(rundir.complete_message(config.phase, latest, steps, rundir.step_unit(config.phase),
                                      workdir / MODEL_DIR), flush=True)
    raise StageComplete(str(workdir))


# ----------------------------------------------------------------------------- data
def load_examples(run: Run, kind: str, split: str) -> list[dict]:
    """Normalised examples of `kind` ("sft" | "preference" | "prompt" | "teacher") for `split`
    ("train" | "eval"), as the `data` config block describes them.

    `data.source` feeds "train" and `data.eval_source` "eval" (a built-in source's name = its
    file for the kind and split, `data.builtin`; "" = none). The default
    `data.eval_source="auto"` evaluates a built-in source on its own held-out files, a local
    `hf:DIR` with a `data.eval_split` split of its own on that split, and any other on a
    held-out split of `data.source` (`held_out_rows`) that training does not see.
    Records with empty text follow `data.on_empty`; whatever is skipped is printed as one
    `[data]` line.
    """
    data = run.config.data
    auto = data.eval_source == "auto"
    source = data.eval_source if split == "eval" and not auto else data.source
    if not source:
        return []
    own_eval = auto and _has_eval_split(data, source)
    spec = _source_spec(run, source, kind, split, own_eval)
    rows = side = data_sources.read_rows(spec)
    if not rows:  # an empty file: no split or column setting can help
        key = "data.eval_source" if split == "eval" and not auto else "data.source"
        raise data_sources.DataError(spec.path or spec.hf_name or source,
                                     f"no records ({key} names it)")
    if own_eval and split == "train" and run.is_main:
        print(f"[data] evaluating on the {data.eval_split!r} split of {source} and training on "
              f"all of {data.split!r} (data.eval_split; data.eval_source=auto)")
    elif auto and not own_eval and data_builtin.resolve(source) is None:
        side = _split_rows(run, rows, source, split)  # a built-in source holds out its own
    with _first_error_in_file(run, rows, spec.columns, kind):
        examples = _normalized(run, data_columns.apply_columns(side, spec.columns), kind, split,
                               source)
    if split == "train":
        for entry in data.mix:
            examples += _mixed_examples(run, entry, kind)
    return examples


def _normalized(run: Run, records: list, kind: str, split: str, source: str,
                columns_key: str | data_columns.ColumnsKey = data_columns.COLUMNS_KEY
                ) -> list[dict]:
    """`records` as examples of `kind`; what `data.on_empty` skips is printed as one line.
    A record that lacks a field names `columns_key` as the setting that maps one."""
    data = run.config.data
    dropped = data_records.Dropped()
    examples = data_records.normalize(records, kind, on_empty=data.on_empty, dropped=dropped,
                                      columns_key=columns_key)
    if dropped and run.is_main:
        setting = f" [data.on_empty={data.on_empty}]" if dropped.empty else ""
        print(f"[data] {kind} {split}: dropped {len(dropped)} of {len(records)} records of "
              f"{source}: {dropped.summary()}{setting}")
    return examples


@contextlib.contextmanager
def _first_error_in_file(run: Run, rows: list, columns, kind: str,
                         columns_key: str | data_columns.ColumnsKey = data_columns.COLUMNS_KEY):
    """Reading one side of a held-out split of `rows`: an error names the file's first bad
    record, whichever side it is on. The side alone would name its own first one, a later line
    than the one a user fixes first (the other side's would come up on the next run). The
    whole file is normalised again only when the side fails."""
    try:
        yield
    except ValueError:
        data_records.normalize(data_columns.apply_columns(rows, columns, key=columns_key), kind,
                               on_empty=run.config.data.on_empty,
                               dropped=data_records.Dropped(), columns_key=columns_key)
        raise


def _mixed_examples(run: Run, entry: str, kind: str) -> list[dict]:
    """The training records one `data.mix` entry adds to `data.source`'s: a file's own layout
    (detected as for `data.source`; `data.columns` describe `data.source` only, and the entry's
    own `:FIELD=COLUMN` suffix maps the file's columns, `columns.parse_mix_entry`), less its
    held-out rows — the same `data.eval_fraction`/`eval_max`/`eval_seed` split every stage
    and the evaluation's suites take of that file, so a mixed-in file's evaluation rows are
    never trained on — then N of them drawn without replacement (seed `train.seed`)."""
    data = run.config.data
    mix = data_columns.parse_mix_entry(entry)
    path, count = mix.path, mix.count
    spec = data_sources.SourceSpec(path=path, encoding=data.encoding, columns=mix.columns)
    rows = data_sources.read_rows(spec)
    train = split_rows(rows, "train", data.eval_fraction, data.eval_max, data.eval_seed)
    held = len(rows) - len(train)
    if count > len(train):
        raise ValueError(f"data.mix: {entry!r} asks for {count} records; {path} has "
                         f"{len(train)} outside its held-out split")
    if count:
        pick = np.random.default_rng(run.config.train.seed).choice(len(train), count,
                                                                   replace=False)
        train = [train[i] for i in sorted(pick)]
    with _first_error_in_file(run, rows, spec.columns, kind, mix.key):
        examples = _normalized(run, data_columns.apply_columns(train, spec.columns, key=mix.key),
                               kind, "train", path, columns_key=mix.key)
    if run.is_main:
        print(f"[data] {kind} train: mixed in {len(examples)} of the {len(rows)} records of "
              f"{path} ({held} held out for evaluation; data.mix)")
    return examples


def _has_eval_split(data, source: str) -> bool:
    """Whether `source` is a local `hf:DIR` whose files hold a `data.eval_split` split of
    their own (`train.jsonl` beside `test.jsonl`): `auto` then evaluates on it, as datasets'
    users expect, instead of holding records out of `data.split`."""
    if not source.startswith("hf:") or data.eval_split == data.split:
        return False
    try:
        return data_sources.local_dataset_files(
            data_sources.SourceSpec(hf_name=source[3:], split=data.eval_split)) is not None
    except data_sources.DataError:  # no such split
        return False


def source_rows(run: Run, kind: str, split: str) -> list[data_sources.Record]:
    """The rows of `data.source` that serve `kind` and `split`, every field as the source holds
    it: before `data.columns` keeps only the mapped fields and before any held-out split
    (`generate` carries each row's other fields into its output)."""
    spec = _source_spec(run, run.config.data.source, kind, split)
    return data_sources.read_rows(dataclasses.replace(spec, columns=None))


def _source_spec(run: Run, source: str, kind: str, split: str, own_eval: bool = False
                 ) -> data_sources.SourceSpec:
    data = run.config.data
    builtin = data_builtin.resolve(source)
    if builtin is not None:
        return builtin.spec(run.source_dirs[source], kind, split)
    columns = _columns(data.columns)
    if source.startswith("hf:"):
        # An explicit hf eval source reads `eval_split`, and so does `auto` for a directory
        # with that split (`own_eval`); otherwise the auto split holds out of `split`.
        own = split == "eval" and (data.eval_source != "auto" or own_eval)
        hf_split = data.eval_split if own else data.split
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
    return data_columns.parse_columns(mapping)


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
    """Tokenised `examples` under the `data` block's length limits, with one line saying what
    the limits cut (`tokenize.truncation_report`: loud when most or all examples are cut, an
    error when every one is dropped). `max_length` overrides `data.max_length` (a phase's prompt
    budget, `data.max_length − <phase>.max_new_tokens`)."""
    data = run.config.data
    policy = data_tokenize.TruncationPolicy(
        max_length=max_length or data.max_length, max_prompt_length=data.max_prompt_length or None,
        on_overflow=data.on_overflow)
    tokens, stats = data_tokenize.tokenize_examples(examples, kind, run.tokenizer, policy)
    key = None
    if max_length and max_length != data.max_length:
        phase = run.config.get("phase", "")
        budget = phase in run.config and "max_new_tokens" in run.config[phase]
        key = (f"data.max_length − {phase}.max_new_tokens" if budget else
               f"the {phase} prompt budget (set from data.max_length)")
    line = data_tokenize.truncation_report(stats, policy, kind=kind, key=key,
                                           source=data_tokenize.source_name(examples))
    if run.is_main and line:
        print(line, flush=True)
    return tokens


def pad_id(run: Run) -> int:
    return data_tokenize.pad_token_id(run.tokenizer)


def batch_width(run: Run, examples: list[dict], kind: str, max_length: int | None = None,
                pack: bool = False) -> int:
    """The static width of a phase's batches: `max_length` (default `data.max_length`) for
    packed rows and prompts (whose width the phase's sampling budget sets), else the data's
    longest sequence rounded up (`data.loader.fitted_width`)."""
    width = max_length or run.config.data.max_length
    if pack or kind == "prompt":
        return width
    return data_loader.fitted_width(examples, kind, width)


def train_loader(run: Run, examples: list[dict], kind: str, max_length: int | None = None):
    c = run.config
    pack = c.data.pack and kind in ("sft", "teacher")
    return data_loader.make_train_loader(
        examples, kind=kind, global_batch=c.train.batch_size,
        max_length=batch_width(run, examples, kind, max_length, pack), pad_id=pad_id(run),
        seed=c.train.seed, pack=pack)


def eval_batches(run: Run, examples: list[dict], kind: str, limit: int | None = None,
                 max_length: int | None = None):
    c = run.config
    if not examples:
        return
    batches = data_loader.make_eval_batches(
        examples, kind=kind, batch_size=c.train.batch_size,
        max_length=batch_width(run, examples, kind, max_length), pad_id=pad_id(run))
    for i, batch in enumerate(batches):
        if limit and i >= limit:
            return
        yield batch


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON at `path`, atomically, from process 0 (`rundir.write_atomic`)."""
    if jax.process_index() == 0:
        rundir.write_atomic(path, json.dumps(value, indent=2) + "\n")


def attention_inputs(batch: dict, packed: bool, prefix: str = "") -> dict:
    """Positions and segment ids for packed rows; right-padded rows need only the causal mask
    (padding comes after every real token), which keeps the fused attention kernel's fast path."""
    if not packed:
        return {}
    return {"positions": batch[f"{prefix}positions"], "segment_ids": batch[f"{prefix}segment_ids"]}


# ----------------------------------------------------------------------------- references
@dataclasses.dataclass
class AdaptersOff:
    """A frozen reference that is a LoRA policy's own base with the adapters off (no copy)."""

    policy: Any

    @property
    def config(self):
        return lora.base_config(self.policy.config)


def reference_model(run: Run, block, policy, head: str = "lm"):
    """The frozen reference model a `block` names (PPO's and GRPO's KL reference).

    When the policy carries LoRA adapters and the block loads the policy's own source, the
    reference is that base with the adapters off (`AdaptersOff`): the step's params hold it
    already, so no second copy is loaded. Otherwise the block's model, loaded frozen
    (`init_model(frozen=True)`: held in the compute dtype).
    """
    same = (Path(block.path).absolute() == Path(run.config.model.path).absolute()
            and run.config.model.init in SOURCE_INITS)
    if policy.config.lora is not None and same:
        return AdaptersOff(policy)
    return init_model(run, block, head=head, frozen=True)


def split_frozen(model, key: str | None = None):
    """`(graphdef, params)` of a frozen model; for `AdaptersOff`, the base graphdef and a
    `lora.BaseReference(key)` that the step and rollouts resolve from the policy's params
    (`key`: the policy's entry in a dict of trained models, as PPO's `policy`)."""
    if isinstance(model, AdaptersOff):
        return lora.live_reference(model.policy)[1], lora.BaseReference(key)
    from flax import nnx

    return nnx.split(model)
