"""easyalign: post-training of open causal LMs in JAX/Flax NNX (see DESIGN.md).

Public API, imported lazily on first use so that `import easyalign` stays cheap:

    easyalign.from_hf / to_hf                       HF checkpoint directory ⇄ Transformer
    easyalign.from_gguf / installed_gguf            a GGUF file (or the installed SmolLM2) → Transformer
    easyalign.convert_hf_to_checkpoint / convert_checkpoint_to_hf / load_checkpoint_model /
    save_checkpoint_model                           Orbax model checkpoints
    easyalign.ModelConfig / Transformer / create_model / preset
    easyalign.run(stage, config) -> workdir         run a stage ("sft", "dpo", "pipeline", …)
                                                    as its CLI command would (`easyalign.stages`)
"""

from __future__ import annotations

import importlib
import os

# Import-time advice that is not about the caller's work — transformers without PyTorch ("PyTorch
# was not found…": the library needs only its tokenizers), the C++ INFO lines of XLA — silenced
# for the CLI and the Python API alike, unless the caller set these variables.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

_EXPORTS = {
    "from_hf": "easyalign.hf",
    "to_hf": "easyalign.hf",
    "from_gguf": "easyalign.hf.gguf",
    "installed_gguf": "easyalign.hf.gguf",
    "convert_hf_to_checkpoint": "easyalign.hf",
    "convert_checkpoint_to_hf": "easyalign.hf",
    "load_checkpoint_model": "easyalign.hf",
    "save_checkpoint_model": "easyalign.hf",
    "ModelConfig": "easyalign.model",
    "Transformer": "easyalign.model",
    "create_model": "easyalign.model",
    "preset": "easyalign.model",
    "run": "easyalign.stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'easyalign' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
