"""A model or its tokenizer by path, whatever the format: an easyalign model checkpoint
(`model_config.json` + `params/`), a phase workdir (its final `model/`), an HF directory
(`config.json` + safetensors) or a GGUF file or installed alias (`smollm2`). What the
evaluator, the judge, `generate` and the CLI's `sample` load their models with.
"""

from __future__ import annotations

import json
from pathlib import Path

from easyalign.hf.gguf import is_gguf


def model_location(path: str | Path) -> str | Path:
    """Where the model given by `path` lies (`checkpoint.resolve_model_dir`: a phase workdir →
    its `model/`); `path` itself when it names no model, so that the loader's own error says
    what it expected there."""
    from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

    if is_gguf(path):
        return path
    try:
        return resolve_model_dir(path)[0]
    except ModelDirError:
        return path


def stored_dtype(path: str | Path) -> str:
    """The dtype a model's weights are stored in: a checkpoint's `param_dtype`, an HF
    directory's `torch_dtype` (float32 when absent, as transformers reads it), float32 for a
    GGUF file (its blocks are dequantised to float32)."""
    from easyalign.hf import read_checkpoint_config
    from easyalign.hf.checkpoint import CONFIG_FILE

    path = Path(model_location(path))
    if is_gguf(path):
        return "float32"
    if (path / CONFIG_FILE).is_file():
        return read_checkpoint_config(path).param_dtype
    if (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
        stored = raw.get("torch_dtype") or raw.get("dtype") or "float32"
        return {"float16": "float16", "bfloat16": "bfloat16"}.get(str(stored), "float32")
    from easyalign.hf.gguf import alias_hint

    raise FileNotFoundError(f"{path}: neither an easyalign model checkpoint ({CONFIG_FILE}), "
                            "an HF model directory (config.json) nor a GGUF file"
                            + ("" if path.exists() else alias_hint(str(path))))


def load_model(path: str | Path, mesh=None, dtype: str = ""):
    """A model checkpoint, an HF directory or a GGUF file / alias, onto `mesh`.

    `dtype` is the compute dtype; "" computes in the dtype the weights are stored in
    (`stored_dtype`: an fp32 checkpoint is evaluated in fp32, not bf16).
    """
    from easyalign.hf import from_hf, load_checkpoint_model
    from easyalign.hf.checkpoint import CONFIG_FILE

    path = model_location(path)
    overrides = {"dtype": dtype or stored_dtype(path)}
    if is_gguf(path):
        from easyalign.hf.gguf import from_gguf

        return from_gguf(path, mesh=mesh, **overrides)
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return load_checkpoint_model(path, mesh=mesh, **overrides)
    return from_hf(path, mesh=mesh, **overrides)


def load_tokenizer(path: str | Path, fallback: str | Path | None = None):
    """The tokenizer stored with a model (`path/tokenizer/`, `path`, a GGUF file's metadata),
    else `fallback`."""
    from transformers import AutoTokenizer

    if is_gguf(path):
        from easyalign.hf.gguf import gguf_tokenizer

        return gguf_tokenizer(path)
    path = Path(model_location(path))
    for candidate in (path / "tokenizer", path):
        if any((candidate / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
            return AutoTokenizer.from_pretrained(str(candidate))
    if fallback:
        return AutoTokenizer.from_pretrained(str(fallback))
    raise FileNotFoundError(f"{path}: no tokenizer files and no fallback tokenizer "
                            "(set eval.tokenizer)")
