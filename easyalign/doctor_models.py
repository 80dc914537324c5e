"""The models an `easyalign doctor` plan holds, and how a mesh splits them.

`main_model` is the model the run trains or samples, with the run's numerics, read from its
source without loading a weight — a checkpoint, phase workdir, HF directory, GGUF file, or a
`@stage` that has not run yet, planned from that stage's own config (`planned_stage_model`),
and a student derived from any of them cut to its shape (`_source_model`); `extra_models`
the frozen ones beside it (reference, reward, value, teacher). `step_sequences` counts the
sequences of one optimizer step; `divisibility` and `uneven_weights` say where the mesh
splits the batch or a weight unevenly. `doctor.py` sizes and reports them.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from easyalign import config_paths, sharding
from easyalign.model.config import ModelConfig

# Phases that train, with the sequences each example contributes to a forward pass.
TRAINING = {"sft": 1, "reward": 2, "dpo": 2, "ppo": 1, "grpo": 1, "distill": 1}
# Phases that only sample: block holding the model path and the batch.
INFERENCE = {"generate": ("generate", "model"), "teacher_data": ("teacher_data", "teacher")}


def read_model_config(config, path: str) -> ModelConfig:
    """The ModelConfig of a checkpoint / phase workdir / HF directory / GGUF file / `@stage`
    (a stage that has not run yet: `planned_stage_model`)."""
    from easyalign.algorithms.runsetup import stage_path
    from easyalign.hf.checkpoint import resolve_model_dir
    from easyalign.hf.models import read_source_config

    planned = planned_stage_model(config, path)
    if planned is not None:
        return planned[0]
    location, kind = resolve_model_dir(stage_path(config, path))
    return read_source_config(kind, location)


def planned_stage_model(config, path: str) -> tuple[ModelConfig, str] | None:
    """`(model, source)` of the model a `@stage` reference will name once that stage has run,
    planned from the stage's own config — `configs/<stage>.py` with this config's preset, its
    workdir beside this one, as `easyalign pipeline` builds it — so that the doctor sizes every
    stage of a pipeline before the first has run. None when `path` is no `@stage`, the stage
    has run (its model is read instead), or there is no such config file or preset (then the
    reference is reported as missing)."""
    import importlib

    from easyalign.algorithms.runsetup import stage_path

    if not str(path).startswith("@") or Path(stage_path(config, path)).exists():
        return None
    name = str(path)[1:].split("/")[0]
    preset = config.get("preset") or ""
    try:
        stage = importlib.import_module(f"configs.{name}").get_config(preset)
    except (ImportError, ValueError):
        return None
    stage.workdir = str(Path(config.workdir).absolute().parent / name)
    model, source = main_model(stage)
    where = f"configs/{name}.py" + (f":{preset}" if preset else "")
    return model, f"{path}, not run yet: planned from {where} ({source})"


def _vocab(config) -> tuple[int | None, str]:
    """A scratch model's vocabulary: the tokenizer's size if the tokenizer exists yet."""
    from easyalign.data.builtin import scratch_tokenizer_dir

    if config.model.vocab_size:
        return config.model.vocab_size, "model.vocab_size"
    path = config.data.tokenizer or str(scratch_tokenizer_dir(config))
    if Path(path).is_dir():
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(path)), f"tokenizer {path}"
    return None, "the preset: no tokenizer yet"


def main_model(config) -> tuple[ModelConfig, str]:
    """The model the run trains (or samples), with the run's numerics, and where it comes from."""
    from easyalign.model import preset

    if config.phase in INFERENCE:
        block, field = INFERENCE[config.phase]
        path = config[block][field]
        model = read_model_config(config, path)
        dtype = config[block].get("dtype")
        return (model.replace(dtype=dtype) if dtype else model), f"{path}"
    from easyalign.hf.models import lora_config, model_numerics

    m = config.model
    numerics = dict(model_numerics(m, head="scalar" if config.phase == "reward" else "lm"),
                    **ModelConfig.parse_overrides(m.overrides))
    if m.init == "scratch":
        vocab, source = _vocab(config)
        extra = {"vocab_size": vocab} if vocab else {}
        model, where = preset(m.preset, **extra, **numerics), \
            f"preset {m.preset} (vocab from {source})"
    else:
        model, where = _source_model(config, m)
        model = model.replace(lora=None, **numerics)
    # LoRA: the base in its base dtype and the adapters (only those are trained)
    return model.replace(lora=lora_config(m, model.num_experts)), where


def _source_model(config, m) -> tuple[ModelConfig, str]:
    """The ModelConfig a loading block (`init=hf|checkpoint|gguf|derive`) starts from, before
    its numerics, and where it comes from: read from `model.path`, or planned from the stage's
    config for a `@stage` not run yet — and for `init=derive` cut to the student's shape either
    way (`hf.models.source_model_config`): a student of a teacher not trained yet is the
    student the run will derive, not the whole teacher."""
    from easyalign.algorithms.runsetup import stage_path
    from easyalign.hf.models import source_model_config

    path = m.path or "@sft"  # DPO's empty path is the sibling SFT stage
    block = ConfigDict(m.to_dict())
    block.path = stage_path(config, path)
    planned = planned_stage_model(config, path)
    if planned is not None:
        return source_model_config(block, stored=planned[0]), planned[1]
    return source_model_config(block), f"{m.init} {path}"


def extra_models(config, policy: ModelConfig) -> list[dict]:
    """Models held besides the main one: `{role, config, trained, note}`."""
    def load(role, path, head, trained):
        try:
            model = read_model_config(config, path).replace(
                dtype=policy.dtype, param_dtype=policy.param_dtype, remat=policy.remat,
                head=head)
            note = path
        except (ValueError, FileNotFoundError):
            model, note = policy.replace(head=head), f"{path} not found: assumed the policy's shape"
        return {"role": role, "config": model, "trained": trained, "note": note}

    if config.phase == "dpo" and config.dpo.reference == "live":
        if policy.lora is not None:  # the policy's own base with adapters off: no copy
            return []
        return [{"role": "reference", "config": policy, "trained": False, "note": "live"}]
    if config.phase == "ppo":
        p = config.ppo
        same_base = policy.lora is not None and p.reference == config.model.path
        return ([] if same_base else [load("reference", p.reference, "lm", False)]) + [
                load("reward model", p.reward_model, "scalar", False),
                load("value model", p.value_model, "scalar", True)]
    if config.phase == "grpo":
        g = config.grpo
        same_base = policy.lora is not None and g.reference == config.model.path
        reference = [] if same_base or not g.beta else [load("reference", g.reference, "lm", False)]
        rewards = config_paths.grpo_reward_names(g.rewards)
        return reference + ([load("reward model", g.reward_model, "scalar", False)]
                            if "reward_model" in rewards else [])
    if config.phase == "distill":
        return [load("teacher", config.distill.teacher, "lm", False)]
    return []


def step_sequences(config) -> int:
    """Sequences one optimizer step trains on (before `train.grad_accum` splits them): PPO's
    and GRPO's minibatch (GRPO's whole rollout of batch · G completions at 0), otherwise the
    batch times the phase's sequences per example (2 for pairs)."""
    if config.phase == "ppo":
        return config.ppo.minibatch_size
    if config.phase == "grpo":
        return (config.grpo.minibatch_size
                or config.train.batch_size * config.grpo.num_generations)
    return config.train.batch_size * TRAINING[config.phase]


def divisibility(model: ModelConfig, mesh: dict, rows: int) -> list[str]:
    """Notes on axes the mesh splits unevenly: the batch rows (padded, wasted compute). The
    weights are checked exactly (`uneven_weights`): a jax.Array has equal shards."""
    f = mesh["fsdp"]
    notes = []
    if rows % (mesh["data"] * f):
        notes.append(f"the micro-batch ({rows} sequences) is not divisible by data × fsdp = "
                     f"{mesh['data'] * f}")
    return notes


def uneven_weights(model: ModelConfig, mesh: dict) -> str | None:
    """The weight a mesh of these axis sizes (maybe another machine's) cannot split evenly, as
    `sharding.uneven_weight` names it, or None (the specs from this machine's one-device
    mesh: the rules name the same axes)."""
    from easyalign.model import abstract_model

    _, state, shardings = abstract_model(model)
    return sharding.uneven_weight(state, shardings, mesh)
