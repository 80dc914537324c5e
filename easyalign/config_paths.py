"""The file-system half of `config_check.validate`: the paths a config names, checked before
anything is built, loaded or written (`check_paths`).

* the models a run loads (`model.path`, PPO's, GRPO's and distillation's frozen models, the
  teacher, `generate.model`, eval's and latency's variants) exist and are complete: a
  checkpoint's `model_config.json`, an HF directory's `config.json` that parses, safetensors
  files whose headers and sizes agree, the tokenizer files (`check_model_source`,
  `check_hf_dir`, `check_safetensors`);
* every `@stage` reference (those keys, `distill.teacher_data`, eval's and latency's variants)
  names a stage directory that exists or that the same pipeline plans to make
  (`planned_stages`): one line naming the key, the missing path, the command that makes it and
  the key to set (`check_stage_reference`);
* the data source and `data.mix` entries exist and their format is known (`check_data_source`,
  `check_mix_entry`); the workdir can be written (`check_writable`).

Each raises `ConfigError` (a ValueError) with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable

from easyalign.config_keys import ConfigError, parse_named_paths, parse_weights, shown_path

TRAINING_PHASES = ("sft", "reward", "dpo", "ppo", "grpo", "distill")
# The phases whose workdir another stage may name as `@<phase>` (a model, or teacher data).
PRODUCING_PHASES = TRAINING_PHASES + ("teacher_data",)


def check_paths(config) -> None:
    """Every file-system check of `config` (module docstring); raises ConfigError."""
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
    for key, value, instead in _variant_models(config):
        if value.startswith("@"):
            check_stage_reference(config, key, value, instead=instead)
        else:
            check_model_source(config, key, value)
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


def _reference_instead(config, key: str) -> str | None:
    """What else a missing KL reference (`ppo.reference`, `grpo.reference`) can be: with LoRA,
    the policy's own source — its base with the adapters off, no second copy
    (`runsetup.reference_model`); for GRPO also none at all (β = 0)."""
    if key not in ("ppo.reference", "grpo.reference"):
        return None
    m = config.get("model")
    options = [f"set {key}=PATH"]
    if m is not None and m.get("lora", {}).get("rank", 0) > 0 and m.get("path"):
        options.append(f"{key}={m.path} (with LoRA: the base with its adapters off, no copy)")
    if key == "grpo.reference":
        options.append("grpo.beta=0 (no KL term, no reference)")
    return ", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0]


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


def _variant_models(config) -> list[tuple[str, str, str]]:
    """`(key, value, instead)` of the models an eval or latency run loads (`eval.variants`,
    `eval.reference`, ...): `@stage`s and paths alike, checked before the first variant runs
    (a missing path used to surface after the prompts were loaded, naming no key)."""
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
    return [entry for entry in out if entry[1]]


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


class MissingStage(ConfigError):
    """A `@stage` reference to a stage that has not run (or not finished): `stage_dir` is the
    workdir that would make it. The doctor plans such a stage instead of stopping."""

    def __init__(self, message: str, stage_dir: Path):
        super().__init__(message)
        self.stage_dir = stage_dir


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
        what = f"{shown_path(target)} does not exist"
    else:
        what = f"{shown_path(target)} is incomplete (no {Path(complete).name}: did the run finish?)"
    command = stage.replace("_", "-")
    if stage.replace("-", "_") in PRODUCING_PHASES:
        file = stage.replace("-", "_")
        how = (f"run the {stage} stage first (easyalign {command} "
               f"{_config_flag(file, config.get('preset', ''))} "
               f"--config.workdir={shown_path(stage_dir)})")
    else:
        siblings = [p.name for p in stage_dir.parent.iterdir() if p.is_dir()] \
            if stage_dir.parent.is_dir() else []
        known = dict.fromkeys([*siblings, *PRODUCING_PHASES])
        hint = did_you_mean(stage, known)
        how = f"run the pipeline stage {stage!r} first" + (f" ({hint})" if hint else "")
    raise MissingStage(f"{key}={value!r}: {what}; {how} or {instead or f'set {key}=PATH'}",
                       stage_dir)


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


def check_model_source(config, key: str, value: str, kind: str = "") -> None:
    """The model `key=value` names exists and is complete: one line naming what is wrong."""
    from easyalign.hf.gguf import INSTALLED

    if value.startswith("@"):
        check_stage_reference(config, key, value, instead=_reference_instead(config, key))
        return
    if _is_planned(Path(value)):
        return
    if kind == "gguf" or (kind in ("", "derive") and (value in INSTALLED
                                                       or value.endswith(".gguf"))):
        if kind == "gguf" and Path(value).is_dir():  # another kind of model: name it
            _check_init_matches(key, value, kind)
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
    if kind in ("hf", "checkpoint"):
        _check_init_matches(key, value, kind)
    if kind == "hf" or (kind in ("", "derive") and (path / "config.json").is_file()
                        and not (path / "model_config.json").is_file()
                        and not (path / "model" / "model_config.json").is_file()):
        check_hf_dir(path, key, tokenizer=not (config.get("data") and config.data.tokenizer))
    elif not ((path / "model_config.json").is_file()
              or (path / "model" / "model_config.json").is_file()):
        from easyalign.hf.step_checkpoint import training_step

        step = training_step(path)
        if step is not None:  # a training step's train state, not a model a run starts from
            raise ConfigError(f"{key}={value} is step {step[1]}'s train state, not a model: "
                              f"give the run's workdir ({step[0]}) once it finishes, or export "
                              f"the step with `easyalign convert --to_hf={value} --out=DIR` "
                              "and load DIR with model.init=hf")
        what = ("a phase workdir whose final model/ is missing (did the run finish?)"
                if (path / "config.json").is_file() else
                "not an easyalign model checkpoint (model_config.json), a phase workdir "
                "(model/) or an HF model directory (config.json + *.safetensors)")
        raise ConfigError(f"{key}={value}: {what}")


# What each `model.init` loads, in the words of the error that names another one.
INIT_KINDS = {"hf": "an HF model directory (config.json + *.safetensors)",
              "checkpoint": "an easyalign checkpoint (model_config.json, or a phase workdir's "
                            "model/)",
              "gguf": "a GGUF file"}


def _check_init_matches(key: str, value: str, init: str) -> None:
    """A directory that holds the other kind of model than `model.init` says (an HF export
    given to init=checkpoint, a phase workdir to init=hf) is named as what it is, with the
    init that loads it — not reported as broken (`resolve_model_dir` tells the kinds apart)."""
    from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

    try:
        actual = resolve_model_dir(value)[1]
    except (ModelDirError, OSError, ValueError):
        return  # neither kind: the checks below name what is missing
    if actual != init and actual in INIT_KINDS:
        raise ConfigError(f"{key}={value} is {INIT_KINDS[actual]}, which model.init={init} does "
                          f"not load: set model.init={actual}")


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
        if (path / "logs").is_dir() or (path / "checkpoints").is_dir():
            # A phase workdir (its config.json is the run's) whose run did not finish: the
            # message the model loader gives for it.
            from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

            try:
                resolve_model_dir(path)
            except ModelDirError as e:
                raise ConfigError(f"{key}={e}") from None
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
