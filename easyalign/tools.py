"""`easyalign convert` and `easyalign sample`: plain-flag tools around model checkpoints.

    easyalign convert --from_hf=HF_DIR --out=CKPT_DIR [--dtype=float32]
    easyalign convert --from_gguf=FILE.gguf|smollm2 --out=CKPT_DIR [--dtype=float32]
    easyalign convert --from_hf=HF_DIR --peft=ADAPTER_DIR --out=CKPT_DIR   (base + PEFT LoRA)
    easyalign convert --to_hf=CKPT_DIR --out=HF_DIR [--dtype=bfloat16] [--max_shard_size=2GB]
    easyalign convert --to_hf=CKPT_DIR --out=ADAPTER_DIR --adapter=peft [--base_model=HF_DIR|REPO]
    easyalign convert --to_hf=CKPT_DIR --out=BASE_DIR --adapter=base  (a LoRA model's base)
    easyalign sample --checkpoint=DIR --prompt="What is 2+3?" [--prompt=...] \
        [--max_new_tokens=64] [--method=greedy|temperature|top_k|top_p] [--temperature=0.7] \
        [--top_k=40] [--top_p=0.9] [--seed=0] [--json]

A model directory may be given three ways everywhere (`resolve_model_dir`): an easyalign model
checkpoint (`DIR/{model_config.json, params/, tokenizer/}`), a phase's workdir (its final model
is `DIR/model/`), or an HF directory (`config.json` + safetensors). `--to_hf` takes the first
two; `sample` all three. Both also take an intermediate checkpoint of a run,
`WORKDIR/checkpoints/STEP` (`hf.step_checkpoint`: the model as it was at that step).

Both tools run in one process and spread the model over every local device as FSDP
(`--fsdp=-1`, the default), so a model larger than one device still converts; `--fsdp=1` keeps
it on the first device. The flags are absl flags parsed from the argument list the CLI hands
over, so `easyalign sample --help` lists them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import jax
from absl import flags

from easyalign import sharding
from easyalign.config_check import DTYPES  # as `model.dtype` / `model.param_dtype` take
from easyalign.config_keys import ConfigError, check_choice
from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir
from easyalign.hf.step_checkpoint import StepCheckpointError, training_step

# The short names other tools use: a "did you mean" difflib does not find (fp16 → float16).
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                  "half": "float16", "bf16": "bfloat16"}


class ToolError(ValueError):
    """Bad flags or paths; the CLI prints the message and exits with status 1."""


def _flags(command: str, args: list[str], define: Callable[[flags.FlagValues], None]
           ) -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_integer("fsdp", -1, "devices to shard the model over (-1 = all local ones)",
                         flag_values=fv)
    define(fv)
    try:
        rest = fv([f"easyalign {command}"] + list(args))
    except flags.Error as e:
        raise ToolError(str(e)) from None
    if len(rest) > 1:
        raise ToolError(f"unexpected argument(s) {rest[1:]}; every input is a --flag")
    return fv


def usage(command: str) -> str:
    """`easyalign convert --help` / `easyalign sample --help`: the tool's flags."""
    fv = flags.FlagValues()
    flags.DEFINE_integer("fsdp", -1, "devices to shard the model over (-1 = all local ones)",
                         flag_values=fv)
    {"convert": _define_convert, "sample": _define_sample}[command](fv)
    lines = [f"usage: easyalign {command} --FLAG=VALUE ...", ""]
    for name in sorted(fv):
        flag = fv[name]
        default = "" if flag.default in (None, "", []) else f" (default {flag.default!r})"
        lines.append(f"  --{name:<16} {flag.help}{default}")
    lines.append("  --debug            show the traceback of an error")
    return "\n".join(lines)


def _check_dtype(value: str | None) -> None:
    """`--dtype` is one of DTYPES (unset is the tool's default): one line otherwise, the
    same as `--config.model.dtype`'s."""
    if not value:
        return
    try:
        check_choice("--dtype", value, DTYPES)
    except ConfigError as e:
        alias = _DTYPE_ALIASES.get(value.lower())
        hint = f"; did you mean {alias!r}?" if alias and "did you mean" not in str(e) else ""
        raise ToolError(f"{e}{hint}") from None


def _mesh(fv: flags.FlagValues):
    devices = jax.local_devices()
    n = len(devices) if fv.fsdp == -1 else fv.fsdp
    if not 1 <= n <= len(devices):
        raise ToolError(f"--fsdp={fv.fsdp}: this process has {len(devices)} device(s)")
    return sharding.make_mesh(1, n, 1, devices=devices[:n])


def _run(command: str, body: Callable[[list[str]], None], args: list[str]) -> None:
    """Turn a ToolError (or a missing file) into `easyalign <command>: message`, exit status 1."""
    try:
        body(args)
    except (ToolError, ModelDirError, StepCheckpointError, FileNotFoundError) as e:
        sys.exit(f"easyalign {command}: {e}")


# ----------------------------------------------------------------------------- convert
def _define_convert(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("from_hf", None, "HF model directory to import", flag_values=fv)
    flags.DEFINE_string("from_gguf", None, "GGUF file to import (or an installed model: "
                        "smollm2)", flag_values=fv)
    flags.DEFINE_string("to_hf", None, "model checkpoint, phase workdir or a run's "
                        "checkpoints/STEP to export",
                        flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (must not exist or be empty)",
                        flag_values=fv)
    flags.DEFINE_string("dtype", None, "float32 | bfloat16 | float16 — --from_hf/--from_gguf: "
                        "stored param dtype (default float32); --to_hf: weight dtype written "
                        "(default the stored one)", flag_values=fv)
    flags.DEFINE_string("max_shard_size", "2GB", "--to_hf: largest safetensors file",
                        flag_values=fv)
    flags.DEFINE_string("peft", None, "--from_hf: a PEFT LoRA adapter directory for that base, "
                        "imported with it", flag_values=fv)
    flags.DEFINE_enum("adapter", "merged", ["merged", "peft", "base"], "--to_hf of a LoRA "
                      "model: the merged model, the adapters alone in PEFT's format, or the "
                      "base they were trained on (an HF directory for --base_model)",
                      flag_values=fv)
    flags.DEFINE_string("base_model", "", "--adapter=peft: the adapters' base, recorded in "
                        "adapter_config.json (base_model_name_or_path): an HF directory (checked "
                        "against the base; e.g. --adapter=base's output) or a hub repo id; "
                        "default the run's own base when it is an HF directory", flag_values=fv)


def _convert(args: list[str]) -> None:
    from easyalign.hf import convert_checkpoint_to_hf, convert_hf_to_checkpoint

    fv = _flags("convert", args, _define_convert)
    if [fv.from_hf, fv.from_gguf, fv.to_hf].count(None) != 2:
        raise ToolError("give exactly one direction: --from_hf=HF_DIR, --from_gguf=FILE or "
                        "--to_hf=CHECKPOINT (with --out=DIR)")
    if not fv.out:
        raise ToolError("missing --out=DIR")
    if fv.to_hf is None and fv["adapter"].present:
        raise ToolError(f"--adapter={fv.adapter} is for --to_hf (the export of a LoRA model)")
    if fv.base_model and fv.adapter != "peft":
        raise ToolError(f"--base_model={fv.base_model} names the base of a PEFT adapter: it "
                        "goes with --adapter=peft")
    _check_dtype(fv.dtype)
    out = Path(fv.out)
    if out.exists() and any(out.iterdir()):
        raise ToolError(f"--out={out} exists and is not empty; refusing to overwrite")
    mesh = _mesh(fv)
    # Everything is written into a temporary sibling and renamed when complete: a killed
    # export never leaves a directory that looks whole (config.json without its weights).
    final, out = out, out.with_name(out.name + ".partial")
    if out.exists():
        shutil.rmtree(out)
    if fv.from_hf is not None:
        if not (Path(fv.from_hf) / "config.json").is_file():
            raise ToolError(f"--from_hf={fv.from_hf}: no config.json (not an HF model directory)")
        from easyalign.config_paths import check_hf_dir

        check_hf_dir(Path(fv.from_hf), "--from_hf", tokenizer=False)
        from easyalign.hf.peft import PeftAdapterError

        try:
            convert_hf_to_checkpoint(fv.from_hf, out, mesh=mesh,
                                     param_dtype=fv.dtype or "float32", peft_adapter=fv.peft)
        except PeftAdapterError as e:
            raise ToolError(str(e)) from None
        _publish(out, final)
        print(f"easyalign convert: {fv.from_hf} → model checkpoint {final}")
    elif fv.from_gguf is not None:
        from easyalign.hf.gguf import GGUFError, convert_gguf_to_checkpoint, resolve_gguf

        try:
            source = resolve_gguf(fv.from_gguf)
            convert_gguf_to_checkpoint(source, out, mesh=mesh, param_dtype=fv.dtype or "float32")
        except GGUFError as e:
            raise ToolError(str(e)) from None
        _publish(out, final)
        print(f"easyalign convert: {source} → model checkpoint {final}")
    elif training_step(fv.to_hf):
        _export_step(fv, mesh, out)
        _publish(out, final)
        print(f"easyalign convert: {fv.to_hf} → HF directory {final}")
    else:
        source, kind = resolve_model_dir(fv.to_hf)
        if kind == "hf":
            raise ToolError(f"--to_hf={fv.to_hf} is already an HF directory")
        if kind == "gguf":
            raise ToolError(f"--to_hf={fv.to_hf} is a GGUF file: convert it with "
                            f"--from_gguf={fv.to_hf} first, then --to_hf the checkpoint")
        from easyalign.hf.peft import PeftAdapterError, export_adapter

        try:
            if fv.adapter == "peft":
                _, base, notes = export_adapter(source, out, base_model=fv.base_model,
                                                dtype=fv.dtype, mesh=mesh)
            else:
                convert_checkpoint_to_hf(source, out, mesh=mesh,
                                         max_shard_size=fv.max_shard_size, dtype=fv.dtype,
                                         adapter=fv.adapter)
        except PeftAdapterError as e:
            raise ToolError(str(e)) from None
        _publish(out, final)
        if fv.adapter == "peft":
            for note in notes:
                print(f"easyalign convert: note: {note}")
            print(f"easyalign convert: {source} → PEFT adapter {final} (base_model_name_or_path:"
                  f" {base})")
        else:
            what = "HF directory of the base" if fv.adapter == "base" else "HF directory"
            print(f"easyalign convert: {source} → {what} {final}")


def _export_step(fv: flags.FlagValues, mesh, out: Path) -> None:
    """`--to_hf=<workdir>/checkpoints/<step>`: that step's model (`hf.step_checkpoint`), with
    the run's tokenizer when it can be found (a note says so when not)."""
    from easyalign.hf.export import to_hf
    from easyalign.hf.step_checkpoint import load_step_model

    if fv.adapter != "merged":
        raise ToolError(f"--to_hf={fv.to_hf} --adapter={fv.adapter}: an intermediate checkpoint "
                        "of a LoRA run is exported merged (its base and adapters as one model); "
                        "--adapter=peft|base take the finished run's workdir")
    tokenizer = step_tokenizer(fv.to_hf)
    to_hf(load_step_model(fv.to_hf, mesh=mesh, tokenizer=tokenizer), out,
          max_shard_size=fv.max_shard_size, dtype=fv.dtype)
    if tokenizer is None:
        print(f"easyalign convert: note: the tokenizer of the run of {fv.to_hf} was not found; "
              "copy its tokenizer files into the output")
    elif jax.process_index() == 0:
        tokenizer.save_pretrained(str(out))


def _publish(partial: Path, final: Path) -> None:
    """Rename the complete output into place (`final` is absent or an empty directory)."""
    if final.exists():
        final.rmdir()
    os.replace(partial, final)


def convert(args: list[str]) -> None:
    """`easyalign convert`: HF directory ⇄ model checkpoint; GGUF file → model checkpoint."""
    _run("convert", _convert, args)


# ----------------------------------------------------------------------------- sample
def _define_sample(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "model checkpoint, phase workdir, a run's "
                        "checkpoints/STEP, HF directory, "
                        "GGUF file or installed alias (smollm2)", flag_values=fv)
    flags.DEFINE_multi_string("prompt", [], "a user prompt (repeat for several)", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 64, "response budget per prompt", flag_values=fv)
    flags.DEFINE_enum("method", "greedy", ["greedy", "temperature", "top_k", "top_p"],
                      "sampling method", flag_values=fv)
    flags.DEFINE_float("temperature", 1.0, "for temperature, top_k, top_p", flag_values=fv)
    flags.DEFINE_integer("top_k", 40, "k of top_k", flag_values=fv)
    flags.DEFINE_float("top_p", 0.9, "p of top_p", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "sampling seed (greedy ignores it)", flag_values=fv)
    flags.DEFINE_string("tokenizer", None, "tokenizer directory when the model has none",
                        flag_values=fv)
    flags.DEFINE_string("dtype", "", "compute dtype override: float32 | bfloat16 | float16 "
                        "(default as stored)", flag_values=fv)
    flags.DEFINE_bool("json", False, "one JSON object per prompt instead of text",
                      flag_values=fv)


def _sample(args: list[str]) -> None:
    from easyalign.hf.autoload import load_model, load_tokenizer
    from easyalign.sampler import Sampler, sampling_method

    fv = _flags("sample", args, _define_sample)
    if not fv.checkpoint:
        raise ToolError("missing --checkpoint=DIR")
    if not fv.prompt:
        raise ToolError('missing --prompt="..." (repeat the flag for several prompts)')
    if fv.max_new_tokens < 1:
        raise ToolError(f"--max_new_tokens must be ≥ 1, got {fv.max_new_tokens}")
    from easyalign.config_check import sampling_problem
    from easyalign.sampler import SAMPLING_METHODS

    flag = {"sampling": "--method"}.get
    problem = sampling_problem(fv.method, {k: fv[k].value for k in ("temperature", "top_k",
                                                                   "top_p")},
                               lambda field: flag(field, f"--{field}"))
    if problem:
        raise ToolError(problem)
    unread = [f"--{k}" for k in ("temperature", "top_k", "top_p") if fv[k].present
              and k not in SAMPLING_METHODS[fv.method].config_fields.values()]
    if unread:
        print(f"easyalign sample: note: {', '.join(unread)} not read by --method={fv.method}",
              file=sys.stderr)
    method = sampling_method(fv.method, fv.temperature, fv.top_k, fv.top_p)
    _check_dtype(fv.dtype)
    mesh = _mesh(fv)
    if training_step(fv.checkpoint):
        model, tokenizer = _step_model(fv, mesh)
    else:
        path, _ = resolve_model_dir(fv.checkpoint)
        model = load_model(path, mesh, fv.dtype)
        tokenizer = load_tokenizer(path, fv.tokenizer)
    # One batch for a handful of prompts; rows are padded to the batch, so no more than needed.
    sampler = Sampler.from_model(model, tokenizer, batch_size=min(len(fv.prompt), 32), mesh=mesh)
    outs = sampler.sample_texts(fv.prompt, max_new_tokens=fv.max_new_tokens, method=method,
                                seed=fv.seed)
    for i, out in enumerate(outs):
        num_tokens = len(out["tokens"]) - int(out["finished"])  # the stop token is not content
        if fv.json:
            print(json.dumps({"prompt": out["prompt"], "response": out["response"],
                              "finished": out["finished"], "num_tokens": num_tokens},
                             ensure_ascii=False))
            continue
        end = "stopped" if out["finished"] else f"cut at max_new_tokens={fv.max_new_tokens}"
        print(f"### prompt {i + 1}: {out['prompt']}\n{out['response']}\n"
              f"[{num_tokens} token{'' if num_tokens == 1 else 's'}, {end}]\n")


def _step_model(fv: flags.FlagValues, mesh):
    """`(model, tokenizer)` of `--checkpoint=<workdir>/checkpoints/<step>`, computing in the
    stored dtype unless `--dtype` (as `load_model` does)."""
    from easyalign.hf.step_checkpoint import load_step_model, step_model_config
    from transformers import AutoTokenizer

    dtype = fv.dtype or step_model_config(fv.checkpoint).param_dtype
    tokenizer = (AutoTokenizer.from_pretrained(fv.tokenizer) if fv.tokenizer
                 else step_tokenizer(fv.checkpoint))
    if tokenizer is None:
        raise ToolError(f"--checkpoint={fv.checkpoint}: the tokenizer of its run was not found; "
                        "pass --tokenizer=DIR")
    return load_step_model(fv.checkpoint, mesh=mesh, tokenizer=tokenizer, dtype=dtype), tokenizer


def sample(args: list[str]) -> None:
    """`easyalign sample`: print a model's completions of a few prompts."""
    _run("sample", _sample, args)


def step_tokenizer(step_dir: str | Path):
    """The run's tokenizer for a training step `<workdir>/checkpoints/<step>` (which one:
    `hf.step_checkpoint`'s docstring), or None when it cannot be found."""
    from transformers import AutoTokenizer

    workdir = Path(step_dir).absolute().parent.parent
    final = workdir / "model" / "tokenizer"
    if final.is_dir():
        return AutoTokenizer.from_pretrained(str(final))
    try:
        from ml_collections import ConfigDict

        from easyalign.algorithms.runsetup import load_tokenizer
        from easyalign.data import builtin

        config = ConfigDict(json.loads((workdir / "config.json").read_text()))
        # A built-in source's tokenizer, where it was generated (nothing is generated here).
        made = {name: builtin.BUILTIN[name].directory(config) for name in builtin.used(config)}
        made = {name: d for name, d in made.items()
                if (d / builtin.BUILTIN[name].tokenizer).is_dir()}
        return load_tokenizer(config, made)
    except Exception:  # noqa: BLE001 — no recorded config, or its tokenizer is gone: the
        return None     # callers say what to pass instead
