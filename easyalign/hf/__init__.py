"""HF interop: import/export of HF checkpoints and Orbax model checkpoints.

    model = from_hf(hf_dir, mesh=mesh, dtype="bfloat16")      # stream safetensors into shards
    to_hf(model, out_dir, tokenizer=tok)                       # HF dir transformers loads as is
    convert_hf_to_checkpoint(hf_dir, ckpt_dir)                 # HF → Orbax model checkpoint
    model = load_checkpoint_model(ckpt_dir, mesh=mesh)         # restore into the current mesh
    convert_checkpoint_to_hf(ckpt_dir, out_dir)                # Orbax → HF
    model = from_gguf("model.gguf" | "smollm2", mesh=mesh)     # llama.cpp file (see hf.gguf)

Modules: `tables` (the declarative tensor tables and their layout mini-language), `config`
(HF config.json ⇄ ModelConfig), `load` (streaming import), `export` (streaming, sharded
export), `checkpoint` (the on-disk model checkpoint layout and the conversions), `gguf`
(GGUF files through the same tables: dequantised, renamed, un-permuted; tokenizer from the
metadata).
"""

from easyalign.hf.checkpoint import (
    convert_checkpoint_to_hf,
    convert_hf_to_checkpoint,
    load_checkpoint_model,
    read_checkpoint_config,
    save_checkpoint_model,
)
from easyalign.hf.config import HFConfigError, hf_config_dict, to_model_config
from easyalign.hf.export import to_hf
from easyalign.hf.gguf import (
    GGUFError,
    convert_gguf_to_checkpoint,
    from_gguf,
    gguf_tokenizer,
    installed_gguf,
    read_gguf_config,
)
from easyalign.hf.load import HFCheckpointError, from_hf, read_hf_config

__all__ = ["from_hf", "to_hf", "read_hf_config", "to_model_config", "hf_config_dict",
           "save_checkpoint_model", "load_checkpoint_model", "read_checkpoint_config",
           "convert_hf_to_checkpoint", "convert_checkpoint_to_hf", "HFCheckpointError",
           "HFConfigError", "from_gguf", "read_gguf_config", "gguf_tokenizer", "installed_gguf",
           "convert_gguf_to_checkpoint", "GGUFError"]
