"""`easyalign generate`: sample a model on a prompt file into a JSONL of completions.

    easyalign generate --config=configs/generate.py \
        --config.generate.model=runs/demo/dpo --config.data.source=prompts.jsonl

Input. `data.source` is read like every phase's data (`runsetup.load_examples(run, "prompt",
"train")`: JSONL, JSON, CSV or `hf:NAME`, or the built-in world's prompts). The prompt is
found as every phase finds it: the column `data.columns.prompt` names (`goal`, a dotted path into
nested JSON, or `instruction+input`), or, with that key empty (the default), the record's own
layout (a `prompt` column, a conversation, an Alpaca instruction, a preference pair). A plain
string becomes one user turn, a message list is kept as the conversation so far. A prompt
column that is not found is an error naming the file, the key and the file's columns. The chat
template of the model's tokenizer renders the prompt with the assistant generation prompt;
prompts longer than `data.max_length` tokens lose their beginning (counted and reported by
`runsetup.tokenize`).

Output. One line per prompt, in input order, to `generate.output`:

    {"prompt": ..., "question_id": 81, "turns": [...], "response": "...", "finished": true,
     "num_tokens": 17}

`finished` is true when the model emitted a stop token (`chat_format.stop_token_ids`: the
model's EOS ids, generation_config's, the template's end of turn), false when it ran into
`generate.max_new_tokens`; `num_tokens` counts the response's tokens without the stop token.
Every field of the input row rides along unchanged, whatever `data.columns` maps (an id column
joins the completions back to the questions, as TRL's and vLLM's batch scripts keep the
dataset's columns). The output's own keys (`OUTPUT_KEYS`) are never clobbered: an input field
of the same name that holds another value is kept as `input_<name>` (an input `response`, a
reference answer, becomes `input_response`); one that holds the same value (the `prompt`
column the prompt was read from) is not repeated. Lines are streamed batch by batch into
`<output>.partial`, renamed to `<output>` when the last batch is written, so a killed run never
leaves a file that looks complete.

Where it writes. With `generate.output` set, that file is all the run writes (no run
directory: `config.workdir` then only anchors `@stage` models and the built-in world). With it
empty (the default), the output is `workdir/generations.jsonl` and the workdir holds the run's
records as every command's does (`config.json`, `manifest.json`, the lock while it runs).

Batching. Every sampler call takes `generate.batch_size` prompts (global over processes), all
padded to one prompt width, so the decode loop compiles once; a tqdm bar counts batches.
Prompt n draws from the keys of row n under one key of `generate.seed`, so a run is
reproducible and its samples do not depend on `generate.batch_size`.

Multi-host. Every process runs this; each contributes its share of the rows of every batch
(`make_eval_batches`), the sampler runs on the global batch over the mesh with the model
sharded by the rules, the outputs come back replicated, and process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from flax import nnx

from easyalign.algorithms import runsetup
from easyalign.data.chat_format import stop_token_ids
from easyalign.data.records import prompt_text
from easyalign.sampler import Completion, method_from_config, sample_prompt_batches
from easyalign.hf.checkpoint import resolve_model_dir

OUTPUT = "generations.jsonl"


def completions(run: runsetup.Run, model, prompts: list[dict], g) -> Iterator[list[Completion]]:
    """Per chunk of prompts, their `sampler.Completion`s in order (`batch_size` decode slots,
    continuous batching: `sampler.sample_prompt_batches`)."""
    graphdef, params = nnx.split(model)
    return sample_prompt_batches(
        graphdef, params, [p["prompt_tokens"] for p in prompts], mesh=run.mesh,
        batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, method=method_from_config(g),
        stop_tokens=stop_token_ids(run.tokenizer, model.config), pad_id=runsetup.pad_id(run),
        seed=g.seed)


def record(run: runsetup.Run, example: dict, ids: list[int], finished: bool,
           row: Mapping[str, Any] | None = None) -> dict:
    """The output line of one prompt: its input `row` (every field; without one, the fields
    the example kept) with the prompt, response, `finished` and `num_tokens` (module
    docstring)."""
    content = ids[:-1] if finished else ids  # the stop token is not part of the response
    out = {"prompt": prompt_text(example["prompt"]),
           "response": run.tokenizer.decode(content, skip_special_tokens=True),
           "finished": finished, "num_tokens": len(content)}
    if row is None:  # e.g. a data.mix record: what normalisation kept, less its provenance
        row = {k: v for k, v in example.items() if k not in ("prompt", "source")}
    return {"prompt": out["prompt"], **carried(row, out),
            **{k: v for k, v in out.items() if k != "prompt"}}


OUTPUT_KEYS = ("prompt", "response", "finished", "num_tokens")


def carried(row: Mapping[str, Any], out: Mapping[str, Any]) -> dict:
    """The input fields an output line carries beside `out` (its `OUTPUT_KEYS`): a field named
    like an output key is left out when it holds the same value and kept as `input_<name>`
    (`input_input_<name>` if that is taken too) when it does not."""
    kept: dict[str, Any] = {}
    for name, value in row.items():
        if name in out:
            if type(value) is type(out[name]) and value == out[name]:  # True is not 1 here
                continue
            while name in out or name in row or name in kept:
                name = f"input_{name}"
        kept[name] = value
    return kept


def _json_value(value):
    """What `json.dumps` cannot write of an input row (numpy values of a Parquet or `hf:`
    dataset, dates): numbers and arrays as JSON numbers and lists, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _use_model_tokenizer(config, location: Path, kind: str) -> None:
    """Tokenise with the model's own tokenizer unless `data.tokenizer` names one (a GGUF
    file's tokenizer is its metadata's)."""
    if config.data.tokenizer:
        return
    if kind == "gguf":
        config.data.tokenizer = str(location)
        return
    candidate = location / "tokenizer" if kind == "checkpoint" else location
    if (candidate / "tokenizer_config.json").is_file():
        config.data.tokenizer = str(candidate)


def run(config) -> Path:
    """Write the completions of every prompt; returns the JSONL path."""
    from easyalign.hf.autoload import load_model
    from tqdm.auto import tqdm

    g = config.generate
    if g.max_new_tokens < 1 or g.batch_size < 1 or g.limit < 0:
        raise ValueError("generate: need max_new_tokens ≥ 1, batch_size ≥ 1, limit ≥ 0")
    model_dir, kind = resolve_model_dir(runsetup.stage_path(config, g.model))
    _use_model_tokenizer(config, model_dir, kind)
    # An output of its own: nothing else is written (module docstring, "Where it writes").
    run_ = runsetup.prepare(config, workdir=not g.output)
    examples = runsetup.load_examples(run_, "prompt", "train")
    examples = examples[:g.limit] if g.limit else examples
    if not examples:
        raise ValueError(f"generate: no prompts in data.source={config.data.source!r}")
    tokenized = runsetup.tokenize(run_, examples, "prompt")
    if len(tokenized) != len(examples):
        raise ValueError("generate: prompts were dropped by data.on_overflow='drop'; raise "
                         "data.max_length or let long prompts be truncated")
    model = load_model(model_dir, run_.mesh, g.dtype)
    output = Path(g.output).absolute() if g.output else run_.workdir / OUTPUT
    batches = completions(run_, model, tokenized, g)
    if not run_.is_main:
        for _ in batches:  # every process takes part in every batch; process 0 writes
            pass
        return output
    rows = {r.where: r.data for r in runsetup.source_rows(run_, "prompt", "train")}
    progress = tqdm(total=len(tokenized), desc="generate", dynamic_ncols=True)
    counts = {"written": 0, "unfinished": 0, "tokens": 0}
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for chunk in batches:
            for c in chunk:
                example = examples[c.index]
                line = record(run_, example, c.tokens, c.finished, rows.get(example["source"]))
                f.write(json.dumps(line, ensure_ascii=False, default=_json_value) + "\n")
                counts["written"] += 1
                counts["unfinished"] += not c.finished
                counts["tokens"] += len(c.tokens)
            f.flush()  # a long run's progress is readable in the .partial file
            progress.update(len(chunk))
    progress.close()
    os.replace(partial, output)
    seconds = time.perf_counter() - start
    print(f"[generate] {counts['written']} completions → {output} ({counts['unfinished']} cut "
          f"at max_new_tokens={g.max_new_tokens}; {counts['tokens'] / seconds:.0f} generated "
          "tokens/s, compile included)")
    return output
