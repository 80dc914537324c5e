"""`easyalign pipeline` and `easyalign ablate`: every stage, in order, in one run directory.

    runs/<name>/
      world-<hash>/        the built-in world and its tokenizer (shared by every stage)
      base/model           the untrained model (the table's floor)
      sft/ reward/ dpo/ ppo/ teacher_data/ distill/     one workdir per training stage
      grpo/                optional: listed in pipeline.stages (not by default)
      eval/results.{json,md,png}   every model variant on the same held-out prompts
      latency/latency.{json,md}    teacher vs student speed and memory

A stage is `name=command[:preset]` (`configs/pipeline.py`): its config is the command's config
file with `pipeline.preset` (or its own preset), workdir `runs/<name>/<stage>`, the pipeline's
world / mesh / process settings, and any `pipeline.overrides` entry `stage:key=value`
(`*:key=value` sets the key in every stage whose config has it, e.g. the GPU numerics
`*:model.dtype=bfloat16`; a stage's own entry wins). Stages
refer to each other as `@<stage>` (`algorithms.runsetup.stage_path`). A stage whose outputs are
complete is skipped, so re-running the command resumes a killed pipeline (and the stage that
was running resumes from its own last checkpoint) — unless it was made with other settings
than its config now, or from a stage that is to be made again: then the run stops before
any stage, naming the differences (`check_reuse`).

Ablations (`configs/ablations.py`) are the same mechanism with more stages: off-policy vs
on-policy distillation at equal student steps, reward-weighted vs unweighted distillation —
and the SFT / DPO / PPO rows of the same table compare the alignment methods.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import time
from pathlib import Path
from typing import NamedTuple

import jax

from easyalign import stages as stage_table
from easyalign.algorithms import runsetup
from easyalign.config_keys import ConfigError
from easyalign.hf import models
from easyalign.train import rundir

# Commands whose stage produces a model the evaluation compares (stage name = variant name,
# except that the main distillation stage is reported as the `student`).
MODEL_COMMANDS = ("base", "sft", "dpo", "ppo", "grpo", "distill")
CONFIG_FILES = {"base": "sft", "teacher-data": "teacher_data"}


def parse_stage(spec: str, default_preset: str) -> tuple[str, str, str]:
    """`name=command[:preset]` → (name, command, preset).

    The pipeline's preset does not reach eval and latency (their `tiny` is a smoke test, and a
    pipeline measures in full); a preset named in the spec (`eval=eval:real`) does.
    """
    name, _, rest = spec.partition("=")
    command, _, preset = (rest or name).partition(":")
    if command != "base" and command not in stage_table.STAGES:
        raise ValueError(f"pipeline stage {spec!r}: unknown command {command!r}; "
                         f"known: base, {', '.join(stage_table.STAGES)}")
    return name, command, preset or ("" if command in ("eval", "latency") else default_preset)


class Override(NamedTuple):
    """One `pipeline.overrides` entry: the key it sets, the value, and the entry as written
    (what an error about it quotes)."""

    key: str
    value: object
    entry: str


def parse_overrides(entries) -> dict[str, list[Override]]:
    """`stage:key=value` strings → {stage: [Override]}; values parsed as Python literals (a
    value that is no literal stays the string written, as `*:model.dtype=bfloat16`)."""
    out: dict[str, list[Override]] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"pipeline.overrides entry {entry!r}: expected a string "
                              "'stage:key=value'")
        stage, _, assignment = entry.partition(":")
        key, eq, raw = assignment.partition("=")
        if not eq:
            raise ConfigError(f"pipeline.overrides entry {entry!r}: expected stage:key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        out.setdefault(stage, []).append(Override(key.strip(), value, entry))
    return out


def _set(config, override: Override, *, missing_ok: bool = False, stage: str = "") -> None:
    dotted, value = override.key, override.value
    if not _has(config, dotted):
        if missing_ok:
            return
        from easyalign.config_check import suggest_key
        from easyalign.config_keys import flat_keys

        hint = suggest_key(dotted, flat_keys(config))
        raise ConfigError(f"pipeline.overrides: stage {stage} has no config key {dotted!r}"
                          + (f"; {hint}" if hint else ""))
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    try:
        node[leaf] = value
    except (TypeError, ValueError):  # ml_collections refuses a value of another type
        raise _type_error(override, node[leaf], stage) from None


def _type_error(override: Override, current, stage: str) -> ConfigError:
    """One line for an override whose value does not fit its key's type: the entry, the key,
    the type it takes and the value's. Two entries without a comma between them are one string
    to Python (`'*:a=1' '*:b=2'`), which is the usual cause: said when the value looks so."""
    value = override.value
    message = (f"pipeline.overrides entry {override.entry!r}"
               + (f" (stage {stage})" if stage else "")
               + f": {override.key} takes {_type_name(current)}, got {value!r} "
               f"({_type_name(value)})")
    if isinstance(value, str) and re.search(r"[\w*]:[\w.]+=", value):
        message += "; a missing comma between two entries?"
    return ConfigError(message)


def _type_name(value) -> str:
    if hasattr(value, "keys"):
        return "a block of keys"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _has(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def stage_config(pipe, name: str, command: str, preset: str, overrides):
    """The config of one stage (module docstring)."""
    module = importlib.import_module(f"configs.{CONFIG_FILES.get(command, command)}")
    config = module.get_config(preset)
    config.workdir = str(Path(pipe.workdir).absolute() / name)
    for block in ("mesh", "distributed"):
        config[block] = pipe[block]
    config.data.world = pipe.data.world
    config.train.progress_bar = pipe.train.progress_bar
    for override in overrides.get("*", []):
        _set(config, override, missing_ok=True, stage=name)
    for override in overrides.get(name, []):
        _set(config, override, stage=name)
    return config


def stage_done(command: str, config) -> bool:
    """Are the stage's outputs complete? (eval: for exactly the variants asked for now)."""
    workdir = Path(config.workdir)
    if command == "teacher-data":
        return False  # it checks its own settings and skips itself when complete
    if command == "eval":
        from easyalign.eval.report import load_results

        path = workdir / "results.json"
        wanted = {entry.split("=", 1)[0] for entry in config.eval.variants}
        return path.exists() and set(load_results(path)) == wanted
    if command == "latency":
        return (workdir / "latency.json").exists()
    return models.stage_done(workdir)


# Keys a phase fills in before it records its manifest when the config leaves them unset
# (`dpo.check_config`: average_logps from the loss type; teacher data and generate: the
# teacher's or model's own tokenizer). Unset here, they match whatever the run recorded;
# set, they are compared like any other key.
FILLED_BY_PHASE = ("dpo.average_logps", "data.tokenizer")


def _settings(config) -> dict:
    """The stage's manifest as its run writes it (`runsetup.prepare`: `model.path` as given),
    without the `FILLED_BY_PHASE` keys the config leaves unset."""
    values = rundir.manifest(config, {"model.path": runsetup.stage_reference(
        config, config.model.path)}, runsetup.models_read(config))
    return {k: v for k, v in values.items() if not (k in FILLED_BY_PHASE and v in (None, ""))}


def check_reuse(stages, configs, done) -> None:
    """Refuse to skip a complete stage whose outputs no longer follow from this pipeline: made
    with other settings than the stage's config now (its `manifest.json` against the manifest
    this run would write: a changed `pipeline.overrides` entry, data file or preset), from
    another save of a model it reads (an earlier stage retrained in place: the manifest records
    when each model it read was saved, `rundir.models_read`), or from an earlier stage that is
    to be made again now (its directory was removed). Skipping them would report old results
    as the new settings' — one line instead, naming the stage, the differences and what to
    remove. Raises ConfigError."""
    remade = []   # (name, workdir) of the stages that will run
    for (name, command, _), config, complete in zip(stages, configs, done):
        workdir = Path(config.workdir).absolute()
        if command == "teacher-data":  # it decides itself; no summary means it will run
            complete = (workdir / "teacher_data.json").is_file()  # teacher_data.SUMMARY
        if not complete:
            remade.append((name, workdir))
            continue
        now = _settings(config)
        manifest_file = workdir / rundir.MANIFEST_FILE
        if manifest_file.is_file():
            recorded = {k: v for k, v in json.loads(manifest_file.read_text()).items()
                        if k in now or k not in FILLED_BY_PHASE}
            changes = rundir.differences(recorded, now)
            if changes:
                made = ("from another save of a model it reads (retrained in place?)"
                        if all(c.split(": ")[0].endswith(rundir.SAVED) for c in changes)
                        else "with other settings")
                raise ConfigError(
                    f"pipeline stage {name}: {workdir} is complete but was made {made}: "
                    f"{'; '.join(changes)} — remove it (and the stages after it that read it) "
                    "to make it again with these, or give the pipeline a new --config.workdir")
        reads = json.dumps(now)
        for upstream, upstream_dir in remade:
            if any(mark in reads for mark in (f'"@{upstream}"', f'"{upstream_dir}/',
                                              f'={upstream_dir}/')):
                raise ConfigError(
                    f"pipeline stage {name}: {workdir} is complete but was made from "
                    f"{upstream} ({upstream_dir}), which is to be made again now — remove "
                    f"{workdir} too to make it from the new {upstream}, or give the pipeline a "
                    "new --config.workdir")


def save_base(config) -> None:
    """The untrained model of the SFT shape, saved like a stage's final model."""
    from flax import nnx

    run = runsetup.prepare(config, trains=False)
    model = models.init_model(run, head="lm")
    graphdef, params = nnx.split(model)
    models.save_model(run, params, graphdef)


def _variants(stages) -> list[tuple[str, str]]:
    """(variant, stage) for every stage that makes a model the evaluation compares."""
    return [("student" if name == "distill" else name, name)
            for name, command, _ in stages if command in MODEL_COMMANDS]


def _configure_eval(config, pipe, stages) -> None:
    stage_names = {name for name, _, _ in stages}
    config.eval.variants = tuple(f"{variant}={runsetup.stage_path(config, '@' + stage)}"
                                 for variant, stage in _variants(stages))
    if "sft" in stage_names:
        config.eval.reference = runsetup.stage_path(config, "@sft")
    if "reward" in stage_names:
        config.eval.reward_model = runsetup.stage_path(config, "@reward")


def _configure_latency(config, pipe, stages) -> None:
    # Variant names as in the evaluation, so the summary finds their alignment scores.
    teacher = pipe.pipeline.teacher
    config.latency.variants = (f"{teacher}={runsetup.stage_path(config, '@' + teacher)}",
                               f"student={runsetup.stage_path(config, '@distill')}")
    config.latency.teacher, config.latency.student = teacher, "student"
    config.latency.results = str(Path(pipe.workdir).absolute() / "eval" / "results.json")


def run_stages(pipe) -> list[tuple[str, str, str]]:
    p = pipe.pipeline
    stages = [parse_stage(spec, p.preset) for spec in p.stages]
    overrides = parse_overrides(p.overrides)
    unknown = set(overrides) - {name for name, _, _ in stages} - {"*"}
    if unknown:
        raise ConfigError(f"pipeline.overrides names unknown stage(s) {sorted(unknown)}")
    configs = [stage_config(pipe, *stage, overrides) for stage in stages]
    for override in overrides.get("*", []):
        if not any(_has(config, override.key) for config in configs):
            raise ConfigError(f"pipeline.overrides: no stage has the config key "
                              f"{override.key!r} ('*:')")
    for (name, command, preset), config in zip(stages, configs):
        if command == "eval":
            _configure_eval(config, pipe, stages)
        elif command == "latency":
            _configure_latency(config, pipe, stages)
        elif command in ("teacher-data", "distill"):
            config[CONFIG_FILES.get(command, command)].teacher = "@" + p.teacher
            if command == "distill" and config.model.init == "derive":
                config.model.path = "@" + p.teacher  # the student comes from the teacher's layers
    done = [stage_done(command, config) for (_, command, _), config in zip(stages, configs)]
    check_reuse(stages, configs, done)
    check_stages([(name, config) for (name, _, _), config, complete in
                  zip(stages, configs, done) if not complete])
    for (name, command, preset), config, complete in zip(stages, configs, done):
        workdir = Path(config.workdir)
        if complete:
            _say(f"{name}: complete, skipped ({workdir})")
            continue
        _say(f"{name}: {command}" + (f" ({preset})" if preset else "") + f" → {workdir}")
        start = time.perf_counter()
        if command == "base":
            with rundir.undo_on_failure():  # as `stage_function` runs every other stage
                save_base(config)
        else:
            stage_table.stage_function(command)(config)
        _say(f"{name}: done in {time.perf_counter() - start:.0f} s")
    return stages


def check_stages(pending: list[tuple[str, object]]) -> None:
    """Every stage still to run, `(name, config)`, checked before the first one starts
    (`config_check.validate`: keys, values, files, `@stage` references — those to this
    pipeline's stages count as present): a bad path in `pipeline.overrides` fails now, naming
    its stage, not after the stages before it have trained."""
    from easyalign.config_check import ConfigError, validate
    from easyalign.config_paths import planned_stages

    with planned_stages(Path(config.workdir) for _, config in pending):
        for name, config in pending:
            try:
                validate(config)
            except ConfigError as e:
                raise ConfigError(f"pipeline stage {name}: {e}") from None


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[pipeline] {message}", flush=True)


def print_results(pipe) -> None:
    """The evaluation table and the latency summary line of this run directory."""
    if jax.process_index() != 0:
        return
    root = Path(pipe.workdir).absolute()
    table = root / "eval" / "results.md"
    if table.exists():
        text = table.read_text()
        print("\n" + text.split("\n\n## ")[0].strip() + "\n")
    measured = root / "latency" / "latency.json"
    if measured.exists():
        summary = json.loads(measured.read_text()).get("summary")
        if summary:
            print(summary)


def run(config) -> None:
    start = time.perf_counter()
    run_stages(config)
    print_results(config)
    _say(f"all stages complete in {time.perf_counter() - start:.0f} s; outputs in "
         f"{Path(config.workdir).absolute()}")


# Ablation tables: (title, variants compared, metrics shown). Variants absent from the run are
# left out; a table with fewer than two rows is not printed.
ABLATIONS = (
    ("Alignment method (safety)", ("sft", "dpo", "ppo", "grpo"),
     ("harmful_refusal", "benign_over_refusal", "unknown_idk", "reward", "kl_ref", "kl_ref_k3",
      "alignment_score")),
    ("Distillation: on-policy vs off-policy (equal student steps)",
     ("student", "student_offline"),
     ("alignment_score", "instruction_em", "harmful_refusal", "benign_over_refusal",
      "unknown_idk", "reward")),
    ("Distillation: reward-weighted vs unweighted", ("student", "student_reward_weighted"),
     ("alignment_score", "instruction_em", "harmful_refusal", "benign_over_refusal",
      "unknown_idk", "reward")),
)


def ablation_tables(results: dict[str, dict]) -> str:
    """Markdown tables of `ABLATIONS` from eval results `{variant: metrics}`."""
    parts = []
    for title, variants, metrics in ABLATIONS:
        rows = [v for v in variants if v in results]
        if len(rows) < 2:
            continue
        lines = [f"### {title}", "", "| variant | " + " | ".join(metrics) + " |",
                 "|---" * (len(metrics) + 1) + "|"]
        for v in rows:
            cells = [results[v].get(m) for m in metrics]
            lines.append(f"| {v} | " + " | ".join("–" if c is None else f"{c:.3f}"
                                                   for c in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def run_ablations(config) -> None:
    """The ablation stages, then their comparison tables (also in `<workdir>/ablations.md`)."""
    from easyalign.eval.report import load_results

    run(config)
    if jax.process_index() != 0:
        return
    tables = ablation_tables(load_results(Path(config.workdir).absolute() / "eval" /
                                          "results.json"))
    (Path(config.workdir).absolute() / "ablations.md").write_text(tables)
    print("\n" + tables)
