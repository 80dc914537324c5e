"""Generate: a prompt file in, a JSONL of completions out (`easyalign generate`).

    easyalign generate --config=configs/generate.py \
        --config.generate.model=runs/demo/dpo --config.data.source=prompts.csv \
        --config.data.columns.prompt=goal --config.generate.output=completions.jsonl

`generate.model` is a model checkpoint, a phase workdir (its `model/`), an HF directory, a GGUF
file or installed alias (`smollm2`), or `@<stage>` (a sibling stage of this workdir's parent: `runs/demo/sft/model` for the default).
With the defaults it samples the built-in world's SFT model on the world's RL prompts.
The prompt column is `data.columns.prompt`, as in every phase ("" = the record's own layout: a
`prompt` column, a conversation, an Alpaca instruction).

Presets: `tiny` (the first 64 prompts, 32 new tokens: a smoke test).
"""

from ml_collections import ConfigDict

from configs import base


def get_config(preset: str = ""):
    c = base.get_config(preset)
    c.phase = "generate"
    c.workdir = "runs/demo/generate"
    c.data.source = "world"              # prompts: world | a .jsonl/.json/.csv path | hf:NAME
    c.data.eval_source = ""              # unused: generation reads data.source only
    c.data.max_length = 512              # prompt budget in tokens (longer prompts lose their start)
    c.generate = g = ConfigDict()
    g.model = "@sft"                     # checkpoint | workdir | HF dir | .gguf | smollm2 | @stage
    g.output = ""                        # JSONL written ("" = workdir/generations.jsonl, with the
    #                                      run's config.json; a path: only that file is written)
    g.batch_size = 32                    # decode slots (global), refilled as rows finish
    g.max_new_tokens = 128               # response budget per prompt
    g.sampling = "greedy"                # greedy | temperature | top_k | top_p
    g.temperature = 1.0                  # for the non-greedy methods
    g.top_k = 40                         # for top_k
    g.top_p = 0.9                        # for top_p
    g.seed = 0                           # prompt n samples with row n's keys of this seed
    g.limit = 0                          # first N prompts only (0 = all)
    g.dtype = ""                         # compute dtype override ("" = as stored; bfloat16 on GPU)
    if preset == "tiny":
        g.limit = 64
        g.max_new_tokens = 32
    elif preset:
        raise base.unknown_preset("configs/generate.py", preset, ("tiny",))
    return c
