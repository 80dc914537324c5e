"""One validation pass over a resolved config, before anything is built, loaded or written.

`validate(config, command)` runs every check a config can fail without training, and raises
`ConfigError` (a ValueError) with one line naming the key, its value and what would do, or
the file or directory that is missing or broken:

* the config belongs to the command (`easyalign dpo --config=configs/sft.py` is refused);
* numbers: `train.steps` > 0, `optim.lr` ≥ 0 (lr = 0 is allowed — a dry run that moves no
  weight — and announced as a warning), `train.log_every` / `checkpoint_every` ≥ 1,
  `train.eval_every` ≥ 0, `train.batch_size` ≥ 1, divisible by `train.grad_accum` and by the
  data-parallel devices (mesh `data × fsdp`), and the mesh itself fits the devices
  (`sharding.resolve_mesh_shape`, the rule the run uses);
* names: every enum-like key (`model.init`, `optim.name`, `dpo.loss_type`, ...) is checked
  against the registry the code looks it up in, naming the bad value and the choices;
* paths: the model a run loads (`model.path`, PPO's, GRPO's and distillation's frozen
  models) exists, is complete (`model_config.json`, an HF `config.json` that parses,
  safetensors files whose headers and sizes agree, tokenizer files), the data file exists and
  its format is known, and the workdir can be written. Every `@stage` reference (those keys,
  `distill.teacher_data`, eval's and latency's variants) goes through `check_stage_reference`:
  one line naming the key, the missing path, the command that makes it and the key to set.

`suggest_key(name, known)` answers a key HF/TRL users type (`learning_rate`,
`per_device_train_batch_size`, `num_train_epochs`, ...) with ours.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import struct
from pathlib import Path
from typing import Iterable

from easyalign.config_keys import (ConfigError, check_choice, flat_keys,  # noqa: F401
                                   parse_named_paths, parse_weights)

TRAINING_PHASES = ("sft", "reward", "dpo", "ppo", "grpo", "distill")
# The phases whose workdir another stage may name as `@<phase>` (a model, or teacher data).
PRODUCING_PHASES = TRAINING_PHASES + ("teacher_data",)
# Commands whose config is a phase config, and the `phase` value it carries.
COMMAND_PHASES = {"teacher-data": "teacher_data", "ablate": "ablate"}
DTYPES = ("float32", "bfloat16", "float16")

# Keys of HF `TrainingArguments` / TRL configs → ours (a "did you mean" for unknown keys).
HF_KEYS = {
    "learning_rate": "optim.lr", "lr": "optim.lr",
    "per_device_train_batch_size": "train.batch_size (the global batch: per device × devices)",
    "train_batch_size": "train.batch_size", "batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.batch_size (evaluation uses the training batch)",
    "num_train_epochs": "train.steps (easyalign counts optimizer steps, not epochs)",
    "epochs": "train.steps (easyalign counts optimizer steps, not epochs)",
    "max_steps": "train.steps", "steps": "train.steps",
    "gradient_accumulation_steps": "train.grad_accum",
    "warmup_steps": "optim.warmup_steps", "warmup_ratio": "optim.warmup_steps (steps, not a ratio)",
    "weight_decay": "optim.weight_decay", "max_grad_norm": "optim.clip_norm",
    "lr_scheduler_type": "optim.schedule", "optim": "optim.name", "optimizer": "optim.name",
    "adam_beta1": "optim.b1", "adam_beta2": "optim.b2", "adam_epsilon": "optim.eps",
    "logging_steps": "train.log_every", "save_steps": "train.checkpoint_every",
    "eval_steps": "train.eval_every", "save_total_limit": "train.keep_checkpoints",
    "output_dir": "workdir", "seed": "train.seed",
    "max_length": "data.max_length", "max_seq_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length", "packing": "data.pack",
    "dataset_name": "data.source", "dataset": "data.source", "train_file": "data.source",
    "model_name_or_path": "model.path", "model_name": "model.path",
    "bf16": "model.dtype=bfloat16", "fp16": "model.dtype=bfloat16",
    "gradient_checkpointing": "model.remat", "beta": "dpo.beta", "loss_type": "dpo.loss_type",
    "rpo_alpha": "dpo.sft_weight", "kl_coef": "ppo.kl_coef", "cliprange": "ppo.clip_eps",
    "cliprange_value": "ppo.value_clip_eps", "num_ppo_epochs": "ppo.epochs",
    "response_length": "ppo.max_new_tokens", "max_new_tokens": "ppo.max_new_tokens",
    # Keys easyalign itself retired, → the one key that does the job now.
    "generate.column": "data.columns.prompt (the prompt column, as in every phase)",
}


def suggest_key(name: str, known: Iterable[str]) -> str:
    """`did you mean ...` for an unknown dotted key, or "" when nothing is close."""
    known = list(known)
    leaf = name.rsplit(".", 1)[-1]
    for candidate in (name, leaf):
        if candidate in HF_KEYS:
            target = HF_KEYS[candidate]
            if target.split(" ")[0].split("=")[0].split(".")[0] in {k.split(".")[0] for k in known}:
                return f"did you mean {target}?"
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close:
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:3] or [
            k for k in known
            if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    return f"did you mean {' or '.join(close)}?" if close else ""


# ----------------------------------------------------------------------------- the pass
def command_phase(command: str) -> str:
    return COMMAND_PHASES.get(command, command.replace("-", "_"))


def check_command(config, command: str) -> None:
    """The config is one for `command` (a DPO run given an SFT config stops here)."""
    phase = config.get("phase", "")
    if command == "doctor" or not phase:
        return
    expected = command_phase(command)
    if phase != expected:
        file = "ablations" if expected == "ablate" else expected
        raise ConfigError(f"--config is a config for `easyalign {phase.replace('_', '-')}` "
                          f"(phase={phase!r}), not for `easyalign {command}`: use "
                          f"--config=configs/{file}.py")


def validate(config, command: str | None = None, *, devices: bool | int = False,
             paths: bool = True) -> list[str]:
    """Check `config` for `command` (None: the config's own phase); return warnings to print.

    Raises ConfigError with one line at the first problem. `devices` checks the mesh and the
    batch split against `jax.device_count()` (True; only after `jax.distributed.initialize`,
    which must come before any backend is touched) or against a given count; `paths=False`
    skips the file-system checks.
    """
    phase = config.get("phase", "")
    if command is not None:
        check_command(config, command)
    warnings: list[str] = []
    if phase in TRAINING_PHASES:
        warnings += _check_training(config, devices)
    if config.get("model") is not None:
        _check_path_is_read(config.model, phase)
    _check_names(config)
    if paths:
        _check_paths(config)
    return warnings


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_training(config, devices: bool | int) -> list[str]:
    t, o = config.train, config.optim
    unit = "iterations" if config.phase == "ppo" else "optimizer steps"
    _need(t.steps > 0, f"train.steps={t.steps}: must be ≥ 1 ({unit})")
    _need(o.lr >= 0, f"optim.lr={o.lr}: must be ≥ 0 (a negative rate would ascend the loss)")
    for key in ("log_every", "checkpoint_every", "grad_accum", "keep_checkpoints"):
        _need(t[key] >= 1, f"train.{key}={t[key]}: must be ≥ 1")
    _need(t.eval_every >= 0, f"train.eval_every={t.eval_every}: must be ≥ 0 (0 = only at the end)")
    _need(t.batch_size >= 1, f"train.batch_size={t.batch_size}: must be ≥ 1")
    _need(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps}: must be ≥ 0")
    _need(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be ≥ 0")
    _need(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]")
    _need(o.clip_norm >= 0, f"optim.clip_norm={o.clip_norm}: must be ≥ 0 (0 = off)")
    _need(t.batch_size % t.grad_accum == 0,
          f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
    warnings = ["optim.lr=0: the weights will not change (a dry run)"] if o.lr == 0 else []
    model = config.get("model")
    if model is not None:
        _check_model_fields(model)
    if model is not None and model.get("lora") is not None:
        # LoraConfig checks these too, but only once the model is built (after the data).
        a = model.lora
        _need(a.rank >= 0, f"model.lora.rank={a.rank}: must be ≥ 0 (0 = no adapters)")
        _need(a.alpha >= 0, f"model.lora.alpha={a.alpha}: must be ≥ 0")
        _need(0 <= a.dropout < 1, f"model.lora.dropout={a.dropout}: must be in [0, 1)")
    if model is not None and model.get("init") == "scratch" and model.get("lora") \
            and model.lora.rank > 0:
        # Adapters over a frozen random base learn next to nothing: almost never intended.
        warnings.append(f"model.lora.rank={model.lora.rank} with model.init=scratch: the adapters "
                        "train on a randomly initialised, frozen base; load a trained base "
                        "with model.init=hf|checkpoint|gguf and model.path, or set "
                        "model.lora.rank=0 to train the whole model")
    if devices is False:
        return warnings
    if devices is True:
        import jax

        n_devices = jax.device_count()
    else:
        n_devices = int(devices)
    from easyalign import sharding

    m = config.mesh
    try:
        data, fsdp, _ = sharding.resolve_mesh_shape(m.data, m.fsdp, m.tensor, n_devices)
    except ValueError as e:
        raise ConfigError(f"mesh.data/fsdp/tensor: {e}") from None
    shards = data * fsdp
    micro = t.batch_size // t.grad_accum
    if config.phase == "ppo":
        mb = config.ppo.minibatch_size
        _need(mb >= 1 and t.batch_size % mb == 0, f"ppo.minibatch_size={mb} must divide "
              f"train.batch_size={t.batch_size}")
        micro = mb // t.grad_accum
    _need(micro % shards == 0,
          f"train.batch_size={t.batch_size}" + (f" / train.grad_accum={t.grad_accum}"
                                                 if t.grad_accum > 1 else "")
          + f" is not divisible by the {shards} data-parallel devices (mesh data×fsdp = "
          f"{data}×{fsdp} of {n_devices} devices): use a multiple of {shards}")
    return warnings


# Phases that load their models from their own keys: `model.path` / `model.init` are not read.
MODEL_KEY_OF_PHASE = {"generate": ("generate.model", "{path}"),
                      "teacher_data": ("teacher_data.teacher", "{path}"),
                      "eval": ("eval.variants", "('NAME={path}',)"),
                      "latency": ("latency.variants", "('NAME={path}',)")}


def _check_path_is_read(m, phase: str) -> None:
    """A `model.path` / `model.init` the run would not read is an error saying what loads it —
    never a silent fall-back: in a phase that takes its models from its own key
    (`MODEL_KEY_OF_PHASE`: generate, teacher data, eval, latency), that key; with
    `model.init=scratch` (a new model from `model.preset`, which reads no path), the
    `model.init` that loads the path. A `@stage` path under scratch is a phase's default
    (DPO's `@sft`) and may stay."""
    path = str(m.get("path") or "")
    if phase in MODEL_KEY_OF_PHASE:
        if path or m.get("init") != "scratch":
            key, value = MODEL_KEY_OF_PHASE[phase]
            given = f"model.path={path!r}" if path else f"model.init={m.init!r}"
            raise ConfigError(f"{given} is not read by {phase}, whose models are {key}: set "
                              f"--config.{key}={value.format(path=path or 'PATH')}")
        return
    if m.get("init") != "scratch" or not path or path.startswith("@"):
        return
    from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

    try:
        kind = resolve_model_dir(path)[1]
    except (ModelDirError, OSError, ValueError):
        kind = "hf|checkpoint|gguf"
    raise ConfigError(f"model.path={path!r} is not read with model.init=scratch (a new model "
                      f"from model.preset): set model.init={kind} to start from it, or leave "
                      "model.path empty")


def _check_model_fields(m) -> None:
    """`model.overrides` parse, and a scratch model's preset takes them (`ModelConfig`'s own
    checks, e.g. an expert field on a dense model), before anything is written; a loaded
    model's config meets the same checks when it is read."""
    from easyalign.model.config import ModelConfig
    from easyalign.model.presets import PRESETS, preset

    try:
        overrides = ModelConfig.parse_overrides(m.get("overrides", ""))
        if m.get("init") == "scratch" and m.get("preset") in PRESETS:
            preset(m.preset, **{"vocab_size": m.get("vocab_size") or 1, **overrides})
    except ValueError as error:
        raise ConfigError(f"model.overrides={m.overrides!r}: {error}") from None


def _choices(config, key: str, choices: Iterable[str]) -> None:
    node, *rest = key.split(".")
    value = config.get(node)
    for part in rest:
        if value is None or not hasattr(value, "get"):
            return
        value = value.get(part)
    if value is not None:
        check_choice(key, value, choices)


def _check_names(config) -> None:
    """Enum-like keys against the registries the code looks them up in."""
    from easyalign.model.config import ATTENTION_IMPLS, REMAT_POLICIES

    if "model" in config:
        from easyalign.hf.models import HEAD_PARAMS, MODEL_INITS
        from easyalign.model.presets import PRESETS

        _choices(config, "model.init", MODEL_INITS)
        _choices(config, "model.head", HEAD_PARAMS)
        _choices(config, "model.dtype", DTYPES)
        _choices(config, "model.param_dtype", DTYPES)
        _choices(config, "model.attention_impl", ATTENTION_IMPLS)
        _choices(config, "model.remat", REMAT_POLICIES)
        if config.model.get("init") == "scratch":
            _choices(config, "model.preset", PRESETS)
    if "optim" in config:
        from easyalign.train.optim import OPTIMIZERS, SCHEDULES

        _choices(config, "optim.name", OPTIMIZERS)
        _choices(config, "optim.schedule", SCHEDULES)
    if "data" in config:
        from easyalign.data.records import ON_EMPTY
        from easyalign.data.sources import FORMATS

        _choices(config, "data.on_empty", ON_EMPTY)
        _choices(config, "data.on_overflow", ("truncate", "drop", "error"))
        _choices(config, "data.format", ("",) + tuple(f for f in FORMATS if f != "hf"))
    if "dpo" in config:
        from easyalign.losses import DPO_LOSSES

        _choices(config, "dpo.loss_type", DPO_LOSSES)
        _choices(config, "dpo.reference", ("cached", "live"))
    if "ppo" in config:
        from easyalign.losses import KL_CONTROLLERS, KL_ESTIMATORS

        _choices(config, "ppo.kl_estimator", KL_ESTIMATORS)
        _choices(config, "ppo.kl_controller", KL_CONTROLLERS)
    from easyalign.sampler import SAMPLING_METHODS

    if "distill" in config:
        from easyalign.losses.distill import DISTILL_MODES, DIVERGENCE_NAMES

        _choices(config, "distill.mode", DISTILL_MODES)
        _choices(config, "distill.divergence", DIVERGENCE_NAMES)
        _choices(config, "distill.sampling", SAMPLING_METHODS)
    for block in ("teacher_data", "generate"):
        if block in config:
            _choices(config, f"{block}.sampling", SAMPLING_METHODS)


# ----------------------------------------------------------------------------- paths
def _check_paths(config) -> None:
    if "workdir" in config:
        check_writable(Path(config.workdir), "workdir")
    for key, value, kind in _model_sources(config):
        check_model_source(config, key, value, kind)
    d = config.get("distill")
    if (config.get("phase") == "distill" and str(d.teacher_data).startswith("@")
            and (d.mode == "offline" or d.lmbda < 1.0)):  # the steps on teacher data read it
        from easyalign.data.records import TEACHER_DATA_FILE

        check_stage_reference(config, "distill.teacher_data", d.teacher_data,
                              TEACHER_DATA_FILE, TEACHER_DATA_FILE)
    for key, value, instead in _stage_variants(config):
        check_stage_reference(config, key, value, instead=instead)
    if "data" in config and config.phase not in ("eval", "latency", "pipeline", "ablate"):
        for key in ("source", "eval_source"):
            check_data_source(config, f"data.{key}", config.data.get(key, ""))
        for entry in config.data.get("mix", ()):
            check_mix_entry(entry)


def check_writable(path: Path, key: str) -> None:
    """`path` (a directory, maybe not there yet) can be created and written."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {probe} is not writable")
    import tempfile

    try:  # permissions say yes (root always hears yes); a read-only file system says no
        fd, name = tempfile.mkstemp(dir=probe, prefix=".easyalign-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"{key}={path}: {probe} is not writable ({e.strerror})") from None


def _model_sources(config) -> list[tuple[str, str, str]]:
    """`(key, value, kind)` of every model the run loads; kind "" = any model directory."""
    out = []
    m = config.get("model")
    phase = config.get("phase")
    if m is not None and phase in TRAINING_PHASES and m.get("init") in ("hf", "checkpoint",
                                                                         "gguf", "derive"):
        out.append(("model.path", m.path, m.init))
    if phase == "ppo":
        out += [(f"ppo.{k}", config.ppo[k], "") for k in ("reference", "reward_model",
                                                          "value_model")]
    if phase == "grpo":
        g = config.grpo
        if g.get("beta"):
            out.append(("grpo.reference", g.reference, ""))
        if "reward_model" in grpo_reward_names(g.get("rewards", "")):
            out.append(("grpo.reward_model", g.reward_model, ""))
    if phase == "distill":
        out += [(f"distill.{k}", config.distill.get(k, ""), "")
                for k in ("teacher", "reward_model")]
    if phase == "teacher_data":
        out.append(("teacher_data.teacher", config.teacher_data.teacher, ""))
    if phase == "generate":
        out.append(("generate.model", config.generate.model, ""))
    return [(k, v, kind) for k, v, kind in out if v]


def grpo_reward_names(spec: str) -> dict:
    """The rewards and weights of `grpo.rewards` (the reward model is `grpo_rewards.REWARD_MODEL`,
    "reward_model"); grpo's own check names a bad entry."""
    try:
        return parse_weights(spec, "grpo.rewards")
    except ValueError:
        return {}


def _stage_variants(config) -> list[tuple[str, str, str]]:
    """`(key, value, instead)` of the `@stage` models an eval or latency run loads
    (`eval.variants`, `eval.reference`, ...); their other paths are checked as they load."""
    phase = config.get("phase")
    if phase not in ("eval", "latency"):
        return []
    block = config[phase]
    try:
        variants = parse_named_paths(block.variants, f"{phase}.variants")
    except ValueError:  # the run's own check names a malformed entry
        variants = {}
    out = [(f"{phase}.variants[{name}]", path, f"give {phase}.variants '{name}=PATH'")
           for name, path in variants.items()]
    if phase == "eval":
        out += [(f"eval.{k}", block.get(k, ""), f"set eval.{k}=PATH")
                for k in ("reference", "reward_model")]
    return [entry for entry in out if str(entry[1]).startswith("@")]


def _stage(config, value: str) -> Path:
    return Path(config.workdir).absolute().parent / value[1:]


# Stage workdirs a pipeline will have filled before the stage being checked runs
# (`planned_stages`): references to them pass `validate` although they do not exist yet.
_planned: set[Path] = set()


@contextlib.contextmanager
def planned_stages(workdirs: Iterable[Path]):
    """Within: a `@stage` reference (or a path inside one of `workdirs`) counts as present —
    a pipeline checks every stage's config before the first one runs."""
    added = {Path(w).absolute() for w in workdirs} - _planned
    _planned.update(added)
    try:
        yield
    finally:
        _planned.difference_update(added)


def _is_planned(path: Path) -> bool:
    path = Path(path).absolute()
    return any(path == w or w in path.parents for w in _planned)


def check_stage_reference(config, key: str, value: str, product: str = "model",
                          complete: str = "model/model_config.json",
                          instead: str | None = None) -> None:
    """`key="@stage"` names what a sibling stage made, `<parent of workdir>/<stage>/<product>`
    (`runsetup.stage_path`); `complete` (relative to the stage's workdir) is there once it
    finished. The one check of every `@stage` reference: one line naming the key, the missing
    path, the command that makes it (with `config`'s preset, `_config_flag`) and what to set
    instead (`instead`, default `set KEY=PATH`)."""
    from easyalign.config_keys import did_you_mean

    stage_dir = _stage(config, value)
    if (stage_dir / complete).is_file() or _is_planned(stage_dir):
        return
    stage, target = value[1:], stage_dir / product
    if not stage_dir.is_dir() or not target.exists():
        what = f"{_shown(target)} does not exist"
    else:
        what = f"{_shown(target)} is incomplete (no {Path(complete).name}: did the run finish?)"
    command = stage.replace("_", "-")
    if stage.replace("-", "_") in PRODUCING_PHASES:
        file = stage.replace("-", "_")
        how = (f"run the {stage} stage first (easyalign {command} "
               f"{_config_flag(file, config.get('preset', ''))} "
               f"--config.workdir={_shown(stage_dir)})")
    else:
        siblings = [p.name for p in stage_dir.parent.iterdir() if p.is_dir()] \
            if stage_dir.parent.is_dir() else []
        known = dict.fromkeys([*siblings, *PRODUCING_PHASES])
        hint = did_you_mean(stage, known)
        how = f"run the pipeline stage {stage!r} first" + (f" ({hint})" if hint else "")
    raise ConfigError(f"{key}={value!r}: {what}; {how} or {instead or f'set {key}=PATH'}")


def _config_flag(phase: str, preset: str) -> str:
    """`--config=configs/<phase>.py:<preset>` with the preset of the config that refers to the
    stage (`config.preset`, which `configs/base.get_config` records): no `:preset` where that
    config had none, `[:preset]` where `configs/<phase>.py` does not offer it."""
    import importlib

    file = f"configs/{phase}.py"
    if not preset:
        return f"--config={file}"
    try:
        importlib.import_module(f"configs.{phase}").get_config(preset)
    except (ImportError, ValueError):  # no such preset there (or no configs/ to ask)
        return f"--config={file}[:preset]"
    return f"--config={file}:{preset}"


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it (as the user typed it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_model_source(config, key: str, value: str, kind: str = "") -> None:
    """The model `key=value` names exists and is complete: one line naming what is wrong."""
    from easyalign.hf.gguf import INSTALLED

    if value.startswith("@"):
        check_stage_reference(config, key, value)
        return
    if _is_planned(Path(value)):
        return
    if kind == "gguf" or (kind in ("", "derive") and (value in INSTALLED
                                                       or value.endswith(".gguf"))):
        if value not in INSTALLED and not Path(value).is_file():
            raise ConfigError(f"{key}={value}: no such GGUF file{_alias_hint(value)}")
        return
    from easyalign.hf.gguf import is_gguf

    if kind in ("hf", "checkpoint") and is_gguf(value):  # only model.path names its kind
        raise ConfigError(f"{key}={value!r} is a GGUF model (a .gguf file or an installed "
                          f"alias), not model.init={kind}: set model.init=gguf to load it")
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}={value}: no such file or directory{_alias_hint(value)}")
    if not path.is_dir():
        raise ConfigError(f"{key}={value}: not a directory")
    if kind == "hf" or (kind in ("", "derive") and (path / "config.json").is_file()
                        and not (path / "model_config.json").is_file()
                        and not (path / "model" / "model_config.json").is_file()):
        check_hf_dir(path, key, tokenizer=not (config.get("data") and config.data.tokenizer))
    elif not ((path / "model_config.json").is_file()
              or (path / "model" / "model_config.json").is_file()):
        what = ("a phase workdir whose final model/ is missing (did the run finish?)"
                if (path / "config.json").is_file() else
                "not an easyalign model checkpoint (model_config.json), a phase workdir "
                "(model/) or an HF model directory (config.json + *.safetensors)")
        raise ConfigError(f"{key}={value}: {what}")


def _alias_hint(value: str) -> str:
    """" (nor an installed model: did you mean 'smollm2'?)" for a path that is a typo of an
    installed model's alias, else ""."""
    from easyalign.hf.gguf import alias_hint

    return alias_hint(value)


def check_hf_dir(path: Path, key: str, tokenizer: bool = True) -> None:
    """An HF model directory: config.json parses, every safetensors file is whole, and (when
    the run takes its tokenizer from it) tokenizer files are there."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{key}={path}: no config.json (not an HF model directory)")
    try:
        json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ConfigError(f"{config_file}{where}: malformed JSON "
                          f"({getattr(e, 'msg', e)})") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{key}={path}: no *.safetensors weights (PyTorch pickles are never "
                          "loaded)")
    for file in files:
        check_safetensors(file)
    if tokenizer and not any((path / name).is_file() for name in (
            "tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"{key}={path}: no tokenizer files (tokenizer.json, tokenizer.model "
                          "or vocab.json); copy them there or set data.tokenizer")


def check_safetensors(file: Path) -> None:
    """A safetensors file is whole: its header parses and the file holds every byte it lists
    (format: 8-byte little-endian header length, JSON header, then the tensor data)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if 8 + length > size:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file}: not a readable safetensors file ({e})") from None
    if 8 + length + end > size:
        raise ConfigError(f"{file}: truncated ({size:,} bytes, its header lists "
                          f"{8 + length + end:,}); copy or export it again")


def check_data_source(config, key: str, value: str) -> None:
    """A data file exists and its format is known (from `data.format` or the suffix)."""
    from easyalign.data.builtin import resolve

    if value.startswith("hf:"):
        name = value[3:]
        # A local path (not a Hub name "org/dataset") that is not there: say so, as for a file.
        if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
            raise ConfigError(f"{key}={value}: no such file or directory {name}")
        return
    if not value or value == "auto" or resolve(value) is not None:
        return
    path = Path(value)
    if not path.exists():
        raise ConfigError(f"{key}={value}: no such file")
    if path.is_dir():
        raise ConfigError(f"{key}={value}: a directory; name one file in it, or read the "
                          f"directory's data files with HF datasets: {key}=hf:{value}")
    if config.data.format:
        return
    from easyalign.data.sources import FORMATS, SUFFIXES

    name = path.name.lower().removesuffix(".gz")
    if not any(name.endswith(suffix) for suffix, _ in SUFFIXES):
        raise ConfigError(f"{key}={value}: unknown file type; use a suffix "
                          f"({' '.join(s for s, _ in SUFFIXES)}) or set data.format to one of "
                          f"{' | '.join(f for f in FORMATS if f != 'hf')}")


def check_mix_entry(entry: str) -> None:
    """One `data.mix` entry: `PATH[*N][:FIELD=COLUMN,...]` (`columns.parse_mix_entry`), an
    existing file of a known suffix."""
    from easyalign.data.columns import parse_mix_entry
    from easyalign.data.sources import SUFFIXES

    try:
        path = parse_mix_entry(entry).path
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not Path(path).exists():
        raise ConfigError(f"data.mix: {entry!r}: no such file {path}")
    if Path(path).is_dir():
        raise ConfigError(f"data.mix: {entry!r}: {path} is a directory; name one file in it")
    name = Path(path).name.lower().removesuffix(".gz")
    if not any(name.endswith(suffix) for suffix, _ in SUFFIXES):
        raise ConfigError(f"data.mix: {entry!r}: unknown file type; use a suffix "
                          f"({' '.join(s for s, _ in SUFFIXES)})")
