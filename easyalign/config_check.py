"""One validation pass over a resolved config, before anything is built, loaded or written.

`validate(config, command)` runs every check a config can fail without training, and raises
`ConfigError` (a ValueError) with one line naming the key, its value and what would do, or
the file or directory that is missing or broken:

* the config belongs to the command (`easyalign dpo --config=configs/sft.py` is refused), and
  every key it sets is one of its phase's (`check_keys`: a typo in a config file or in Python
  is an error, not a silently added key);
* numbers: `train.steps` > 0, `optim.lr` ≥ 0 (lr = 0 is allowed — a dry run that moves no
  weight — and announced as a warning), `train.log_every` / `checkpoint_every` ≥ 1,
  `train.eval_every` ≥ 0, `train.batch_size` ≥ 1, divisible by `train.grad_accum` and by the
  data-parallel devices (mesh `data × fsdp`), and the mesh itself fits the devices
  (`sharding.resolve_mesh_shape`, the rule the run uses);
* names: every enum-like key (`model.init`, `optim.name`, `dpo.loss_type`, ...) is checked
  against the registry the code looks it up in, naming the bad value and the choices;
* paths (`config_paths.py`): the model a run loads (`model.path`, PPO's, GRPO's and
  distillation's frozen models) exists, is complete (`model_config.json`, an HF `config.json`
  that parses, safetensors files whose headers and sizes agree, tokenizer files), the data file
  exists and its format is known, and the workdir can be written. Every `@stage` reference
  (those keys, `distill.teacher_data`, eval's and latency's variants) goes through
  `check_stage_reference`: one line naming the key, the missing path, the command that makes it
  and the key to set.

`suggest_key(name, known)` answers a key HF/TRL users type (`learning_rate`,
`per_device_train_batch_size`, `num_train_epochs`, ...) with ours.
"""

from __future__ import annotations

import difflib
import functools
from typing import Iterable

from easyalign.config_keys import ConfigError, check_choice, flat_keys  # noqa: F401
from easyalign.config_paths import TRAINING_PHASES, check_paths
from easyalign.sampler.methods import MAX_TEMPERATURE, MIN_TEMPERATURE
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


# Blocks whose keys the user names (one extra eval suite per key), not settings of ours.
OPEN_BLOCKS = ("eval.extra_suites",)
# `phase` → the config file that defines its keys, where the names differ.
PHASE_CONFIG_FILES = {"ablate": "ablations"}


@functools.lru_cache(maxsize=None)
def reference_keys(phase: str, command: str | None = None) -> frozenset[str] | None:
    """Every key a config of `phase` may set: the leaves of `configs/<phase>.py`'s
    `get_config()` (`configs/base.py`'s defaults and the phase's own block; presets change
    values, never keys) — with the `doctor` block for `easyalign doctor`. None when that file
    cannot be imported (easyalign used without its `configs/` package): nothing to check
    against."""
    import importlib

    file = PHASE_CONFIG_FILES.get(phase, phase)
    try:
        if command == "doctor":
            reference = importlib.import_module("configs.doctor").get_config(file)
        else:
            reference = importlib.import_module(f"configs.{file}").get_config()
    except (ImportError, ValueError):
        return None
    return frozenset(flat_keys(reference))


def check_keys(config, command: str | None = None) -> None:
    """Every key of `config` is one its phase has (`reference_keys`), so that a typo in a config
    file or in Python (`c.train.stpes = 1`, `easyalign.run("sft", c)`) stops the run instead of
    being carried silently into its manifest while the default runs. Keys under `OPEN_BLOCKS`
    are names, not settings. Raises ConfigError naming the first unknown key, with a "did you
    mean" (`suggest_key`: close keys, or ours for an HF/TRL name)."""
    phase = config.get("phase", "")
    # A doctor config is its phase's config plus the `doctor` block (`configs/doctor.py`).
    planning = "doctor" if command == "doctor" or "doctor" in config else None
    known = reference_keys(phase, planning) if phase else None
    if known is None:
        return
    for key in flat_keys(config):
        if key in known or any(key.startswith(block + ".") for block in OPEN_BLOCKS):
            continue
        hint = suggest_key(key, known)
        file = PHASE_CONFIG_FILES.get(phase, phase)
        raise ConfigError(f"config key {key} does not exist" + (f" ({hint})" if hint else "")
                          + f"; the keys of `easyalign {phase.replace('_', '-')}` are those of "
                          f"configs/{file}.py (with configs/base.py's)")


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
    check_keys(config, command)
    warnings: list[str] = []
    if phase in TRAINING_PHASES:
        warnings += _check_training(config, devices)
    if config.get("model") is not None:
        _check_path_is_read(config.model, phase)
    _check_names(config)
    _check_ranges(config)
    if paths:
        check_paths(config)
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
        _need(a.alpha > 0 or a.rank == 0,
              f"model.lora.alpha=0 with model.lora.rank={a.rank}: the adapters' scale alpha / r "
              "is 0, so they never change the model and get no gradient; set alpha > 0 (16 is "
              "the default) or rank=0 for no adapters")
        _need(0 <= a.dropout < 1, f"model.lora.dropout={a.dropout}: must be in [0, 1)")
        if a.rank > 0:  # names no projection at all: said before the data loads (an MoE's
            from easyalign.model import lora  # experts are checked once the model is read)

            try:
                lora.resolve_targets(a.targets)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if a.rank > 0 and a.dropout > 0 and config.get("phase") != "sft":
            warnings.append(f"model.lora.dropout={a.dropout} is applied in SFT only: easyalign "
                            f"{config.get('phase')} runs the adapters without dropout")
    if model is not None and model.get("init") == "scratch" and model.get("lora") \
            and model.lora.rank > 0:
        # Adapters over a frozen random base learn next to nothing: almost never intended.
        warnings.append(f"model.lora.rank={model.lora.rank} with model.init=scratch: the adapters "
                        "train on a randomly initialised, frozen base; load a trained base "
                        "with model.init=hf|checkpoint|gguf and model.path, or set "
                        "model.lora.rank=0 to train the whole model")
    warnings += _rate_warnings(config)
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


# Above these peak rates a pretrained model loses what it knows within a few steps: full
# fine-tuning recipes use 1e-6–1e-4 (TRL's SFT default 2e-5, DPO 1e-6; the `real` presets
# 5e-6–2e-5), LoRA 1e-4–1e-3. The tiny presets' 3e-3 is a from-scratch rate.
PRETRAINED_MAX_LR = {"full": 1e-4, "lora": 1e-3}
# Phases whose `train.steps` counts optimizer steps (PPO and GRPO take several per iteration).
STEP_PHASES = ("sft", "reward", "dpo", "distill")


def _rate_warnings(config) -> list[str]:
    """Warnings about the learning-rate schedule that cost a run without stopping it: a
    from-scratch rate on a pretrained model (`model.init` hf | gguf; a user pointing a tiny
    preset at a real model), and a warm-up longer than the run (the whole run warms up)."""
    o, t, m = config.optim, config.train, config.get("model")
    out = []
    if m is not None and m.get("init") in ("hf", "gguf"):
        kind = "lora" if m.get("lora") is not None and m.lora.rank > 0 else "full"
        if o.lr > PRETRAINED_MAX_LR[kind]:
            out.append(f"optim.lr={o.lr:g} with model.init={m.init} (a pretrained model): "
                       f"above the usual {'LoRA' if kind == 'lora' else 'fine-tuning'} range "
                       f"(≤ {PRETRAINED_MAX_LR[kind]:g}; the real presets use 5e-6–2e-5), a "
                       "rate that can erase what the model knows in a few steps — a tiny "
                       "preset's from-scratch settings? start from the `real` preset")
    if config.phase in STEP_PHASES and o.warmup_steps > t.steps:
        out.append(f"optim.warmup_steps={o.warmup_steps} > train.steps={t.steps}: the whole run "
                   f"is warm-up (cut to {t.steps} steps), the rate never holds optim.lr")
    return out


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


# Algorithm settings with a meaningful range: (key, low, high, why). `low`/`high` are
# `(bound, inclusive)` or None; a value outside names the key, the range and why.
RANGES = (
    ("grpo.epsilon", (0, False), (1, False), "the ratio's clip band is [1 − ε, 1 + ε_high]"),
    ("grpo.epsilon_high", (0, True), None, "0 means ε_high = ε"),
    ("grpo.beta", (0, True), None, "the KL weight: a negative one pays the policy for leaving "
     "the reference"),
    ("grpo.temperature", (MIN_TEMPERATURE, True), (MAX_TEMPERATURE, True), "GRPO samples its "
     "groups; greedy completions of a prompt would all be the same"),
    ("grpo.num_iterations", (1, True), None, "updates per rollout"),
    ("ppo.clip_eps", (0, False), (1, False), "the ratio's clip band is [1 − ε, 1 + ε]"),
    ("ppo.value_clip_eps", (0, True), None, "the value clip, in value units"),
    ("ppo.gamma", (0, True), (1, True), "the discount"),
    ("ppo.lam", (0, True), (1, True), "GAE's λ"),
    ("ppo.kl_coef", (0, True), None, "the KL penalty's weight"),
    ("ppo.kl_target", (0, False), None, "the adaptive controller's target KL"),
    ("ppo.kl_horizon", (1, True), None, "the adaptive controller's horizon"),
    ("ppo.vf_coef", (0, True), None, "the value loss's weight"),
    ("ppo.entropy_coef", (0, True), None, "the entropy bonus's weight"),
    ("ppo.score_clip", (0, True), None, "0 = no clip"),
    ("ppo.epochs", (1, True), None, "passes over each rollout"),
    ("dpo.beta", (0, False), None, "the implicit reward's scale"),
    ("dpo.label_smoothing", (0, True), (0.5, False), "the assumed rate of flipped labels"),
    ("dpo.sft_weight", (0, True), None, "the SFT term's weight"),
    ("distill.beta", (0, True), (1, True), "the generalised JSD's mixture weight"),
    ("distill.lmbda", (0, True), (1, True), "the fraction of on-policy batches"),
    ("distill.temperature", (MIN_TEMPERATURE, True), (MAX_TEMPERATURE, True), "the "
     "divergence's temperature, and the sampler's"),
    ("distill.reward_temperature", (0, False), None, "the reward weighting's temperature"),
    ("distill.max_new_tokens", (1, True), None, "the sampled response's budget"),
    ("distill.topk_weight", (0, True), None, "the top-k term's weight"),
)
# What each sampling field of a block with a `sampling` method must be, when the method reads it.
SAMPLING_RANGES = {"temperature": ((MIN_TEMPERATURE, True), (MAX_TEMPERATURE, True)),
                   "top_k": ((1, True), None),
                   "top_p": ((0, False), (1, True))}


def _in_range(value, low, high) -> bool:
    return ((low is None or value > low[0] or (low[1] and value == low[0]))
            and (high is None or value < high[0] or (high[1] and value == high[0])))


def _range_text(low, high) -> str:
    if high is None:
        return f"must be {'≥' if low[1] else '>'} {low[0]}"
    return (f"must be in {'[' if low[1] else '('}{low[0]}, {high[0]}{']' if high[1] else ')'}")


def _check_ranges(config) -> None:
    """`RANGES`, and the sampling fields the chosen method of each sampling block reads (GRPO's
    and PPO's samplers have no `sampling` key: temperature only). Raises ConfigError."""
    from easyalign.sampler import SAMPLING_METHODS

    for key, low, high, why in RANGES:
        block, name = key.split(".")
        if block in config and name in config[block]:
            value = config[block][name]
            _need(_in_range(value, low, high), f"{key}={value!r}: {_range_text(low, high)} "
                                               f"({why})")
    for block in ("distill", "teacher_data", "generate", "eval"):
        node = config.get(block)
        if node is None or "sampling" not in node or node.sampling not in SAMPLING_METHODS:
            continue
        problem = sampling_problem(node.sampling, node, lambda f, b=block: f"{b}.{f}")
        _need(problem is None, problem or "")


def sampling_problem(method: str, values, name_of) -> str | None:
    """Why the sampling fields `method` reads (of `values`, a mapping) are out of range, in one
    line naming them as `name_of(field)` names them (`name_of("sampling")` the method's own
    setting: a config key, or a command-line flag); None when they are fine."""
    from easyalign.sampler import SAMPLING_METHODS

    for field in SAMPLING_METHODS[method].config_fields.values():
        low, high = SAMPLING_RANGES[field]
        value = values[field]
        if not _in_range(value, low, high):
            hint = (f"; greedy decoding is {name_of('sampling')}='greedy'"
                    if field == "temperature" else "")
            return (f"{name_of(field)}={value!r}: {_range_text(low, high)} for "
                    f"{name_of('sampling')}={method!r}{hint}")
    return None


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
