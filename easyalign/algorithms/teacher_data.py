"""Teacher data: sample the (aligned) teacher on a prompt set and write distillation JSONL.

    easyalign teacher-data --config=configs/teacher_data.py[:preset]

For every prompt x of the prompt set (default: the built-in world's training prompts of every
kind, `load_examples(run, "prompt", "train")`), the teacher π_T (`teacher_data.teacher`, default
`@dpo`, the sibling stage's model) generates y ~ π_T(·|x) with the jitted sampler (greedy,
temperature, top-k or top-p) and one line goes to `workdir/teacher_data.jsonl`:

    {"prompt": x, "teacher_response": y[, "teacher_topk": {"ids": [[k ints] × n],
                                                            "logprobs": [[k floats] × n]}], ...}

— record kind "teacher" of `data.records.normalize_teacher`; the prompt record's other fields
(the world's `kind`) ride along.

Top-k (`teacher_data.topk = k > 0`). Row i of `teacher_topk` holds the k most likely next tokens
and their log-probs log π_T(v | x, y_<i) (normalised over the full vocabulary, temperature 1) for
the i-th token of `completion_ids(y)` (response + end of turn): the tokens `tokenize_teacher` lays down for the student.
Those need not be the tokens the sampler emitted (decoding and re-encoding text may split it
differently), so the rows come from one teacher forward pass over the re-tokenised example, not
from the sampler: aligned with the student's targets by construction, and on the sampler's own
tokens equal to its distributions up to rounding (same trunk and head code).

Dropped responses. One that hits `max_new_tokens` before a stop token is dropped unless
`keep_unfinished` (tokenisation appends an end of turn the teacher never emitted, teaching the student
to stop there); an empty one (a stop token first) always is (`normalize_teacher` rejects it). The counts
go to `workdir/teacher_data.json` with the settings.

Complete or nothing: the old `teacher_data.json` is removed, the JSONL is written to a
temporary file and renamed, then the new `teacher_data.json` is written — its presence with
equal settings (teacher path and parameter digest, prompts, chat template, sampling, top-k)
marks a finished run, which a re-run skips. A killed run leaves no partial file and starts over
(sampling is a few seconds per thousand prompts on the built-in world; per-batch resume would
matter only for very large prompt sets).

Multi-host: each process contributes its share of every global prompt batch, the sampler runs
on the global batch over the mesh, its outputs come back replicated, and process 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from easyalign.algorithms import reference_cache
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.data import loader as data_loader
from easyalign.data import records as data_records
from easyalign.data import sources as data_sources
from easyalign.data.chat_format import stop_token_ids
from easyalign.data.records import TEACHER_DATA_FILE, prompt_text
from easyalign.data import tokenize as data_tokenize
from easyalign.model.scoring import fit_chunk, over_predictions
from easyalign.sampler import method_from_config, sample_prompt_batches

OUTPUT = TEACHER_DATA_FILE
SUMMARY = "teacher_data.json"


# ----------------------------------------------------------------------------- shared helpers
def no_response_hint(counts: dict) -> str:
    """What to change when the teacher gave no usable response: its responses were cut at the
    budget (unfinished), or empty (it stopped at once — an empty response is never kept)."""
    hints = []
    if counts.get("unfinished"):
        hints.append("raise teacher_data.max_new_tokens or set teacher_data.keep_unfinished=True "
                     "(cut responses)")
    if counts.get("empty"):
        hints.append("the teacher stopped at once (empty responses): train it further, or sample "
                     "(teacher_data.sampling=temperature) instead of greedy decoding")
    return "; ".join(hints) or "check the teacher and its prompts"


def frozen_model(run: runsetup.Run, path: str, head: str = "lm", key: str = "teacher"):
    """A read-only model (teacher, reward model) by path — an easyalign checkpoint or phase
    workdir, an HF directory, a GGUF file or installed alias, a `@stage` — on the run's mesh,
    with the run's numerics (`model.dtype`, ...) but none of the trained model's overrides,
    held in the compute dtype (`init_model(frozen=True)`). Raises ConfigError naming `key` when the path holds no model."""
    from easyalign.config_keys import ConfigError
    from easyalign.hf.checkpoint import ModelDirError, resolve_model_dir

    location = runsetup.stage_path(run.config, path)
    if not location:
        raise ConfigError(f"{key} is empty: set it to a model (checkpoint, workdir, HF directory, "
                          ".gguf file, installed alias such as smollm2, or @stage)")
    try:
        kind = resolve_model_dir(location)[1]
    except ModelDirError as error:
        raise ConfigError(f"{key}={path!r}: {error}") from None
    block = ConfigDict(run.config.model.to_dict())
    block.init, block.path, block.overrides = kind, location, ""
    return models.init_model(run, block, head=head, frozen=True)


def teacher_tokenizer(config, path: str) -> None:
    """Use the teacher's own tokenizer when the config names none (students share it): a
    checkpoint's `tokenizer/`, an HF directory's files, a GGUF file's metadata."""
    from easyalign.hf.gguf import is_gguf

    location = runsetup.stage_path(config, path)
    if config.data.tokenizer or not location:
        return
    if is_gguf(location):
        config.data.tokenizer = location
    elif (Path(location) / "tokenizer").is_dir():
        config.data.tokenizer = str(Path(location) / "tokenizer")
    elif (Path(location) / "tokenizer.json").is_file() or (
            Path(location) / "tokenizer.model").is_file():
        config.data.tokenizer = location


# ----------------------------------------------------------------------------- sampling
def sample_responses(run: runsetup.Run, model, prompts: list[dict], t) -> list[dict]:
    """`{"tokens", "finished"}` per tokenised prompt (`prompt_tokens`), in order
    (`sampler.sample_prompt_batches`: `batch_size` decode slots refilled as rows finish, one
    compile, prompt n drawn with row n's keys of `seed`).
    """
    graphdef, params = nnx.split(model)
    results: list[dict | None] = [None] * len(prompts)
    progress = _progress(run, len(prompts), "teacher-data")
    for rows in sample_prompt_batches(
            graphdef, params, [p["prompt_tokens"] for p in prompts], mesh=run.mesh,
            batch_size=t.batch_size, max_new_tokens=t.max_new_tokens, method=method_from_config(t),
            stop_tokens=stop_token_ids(run.tokenizer, model.config), pad_id=runsetup.pad_id(run),
            seed=t.seed):
        for c in rows:
            results[c.index] = {"tokens": c.tokens, "finished": c.finished}
        progress.update(len(rows))
    progress.close()
    return results


def _progress(run: runsetup.Run, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True,
                disable=not (run.is_main and run.config.train.progress_bar))


# ----------------------------------------------------------------------------- top-k
def teacher_topk(run: runsetup.Run, model, examples: list[dict], k: int, batch_size: int
                 ) -> list[dict]:
    """`{"ids", "logprobs"}` `[n_i, k]` lists per teacher example (`normalize_teacher` layout):
    the teacher's top-k at each of the example's response tokens, from one forward pass."""
    if model.config.vocab_size >= 2 ** 24:
        raise ValueError("top-k ids travel as float32 and must stay below 2^24")
    policy = data_tokenize.TruncationPolicy(max_length=model.config.max_position_embeddings,
                                            on_overflow="error")
    tokenized, _ = data_tokenize.tokenize_examples(examples, "teacher", run.tokenizer, policy)
    width = max(len(ex["tokens"]) for ex in tokenized)
    graphdef, params = nnx.split(model)

    def score(params, batch):
        teacher = nnx.merge(graphdef, params)
        hidden, _ = teacher.trunk(batch["tokens"])

        def fn(h):
            values, ids = jax.lax.top_k(jax.nn.log_softmax(teacher.logits(h), axis=-1), k)
            # One chunked output: ids ride as float32 (exact below 2^24).
            return jnp.concatenate([values, ids.astype(jnp.float32)], axis=-1)

        # Row t predicts token t from the hidden state at t-1 (scoring's convention).
        chunk = fit_chunk(teacher.config.logits_chunk, hidden.shape[0],
                          teacher.config.vocab_size, tensors=2)
        out = over_predictions(fn, [hidden], chunk=chunk)
        return {"logprobs": out[..., :k], "ids": out[..., k:].astype(jnp.int32)}

    # Whole rows per data-parallel device: the batch rounds up to a multiple of `data × fsdp`
    # (padding rows carry `valid` 0), as the sampler's slots do — any batch size runs.
    shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards
    batches = data_loader.make_eval_batches(tokenized, kind="teacher", batch_size=batch_size,
                                            max_length=width, pad_id=runsetup.pad_id(run))
    arrays = reference_cache.compute_per_example(score, params, batches, len(tokenized),
                                                 run.mesh)
    out = []
    for i, ex in enumerate(tokenized):
        rows = np.nonzero(ex["loss_mask"] > 0)[0]
        logprobs = arrays["logprobs"][i, rows].astype(np.float64)  # float64: short JSON
        out.append({"ids": arrays["ids"][i, rows].tolist(),
                    "logprobs": np.round(logprobs, 6).tolist()})
    return out


# ----------------------------------------------------------------------------- the phase
def settings(run: runsetup.Run, model, prompts: list[dict], t) -> dict:
    """Everything the output depends on; a finished run with equal settings is not redone."""
    texts = json.dumps([p["prompt"] for p in prompts], sort_keys=True)
    _, params = nnx.split(model)
    return {"teacher": runsetup.stage_path(run.config, t.teacher),
            "model": reference_cache.model_digest(model.config.to_dict(), params),
            "template": reference_cache.template_digest(run.tokenizer),
            "prompts": hashlib.sha256(texts.encode()).hexdigest(),
            "sampling": {k: t[k] for k in ("sampling", "temperature", "top_k", "top_p", "seed",
                                           "max_new_tokens", "keep_unfinished")},
            "topk": int(t.topk)}


def is_complete(workdir: Path, expected: dict) -> bool:
    summary = workdir / SUMMARY
    if not (summary.is_file() and (workdir / OUTPUT).is_file()):
        return False
    return json.loads(summary.read_text()).get("settings") == expected


def build_records(run: runsetup.Run, prompts: list[dict], samples: list[dict], keep_unfinished: bool
                  ) -> tuple[list[dict], dict[str, int]]:
    """Teacher records `{prompt, teacher_response, ...}` and the counts of what was dropped."""
    records, counts = [], {"prompts": len(prompts), "unfinished": 0, "empty": 0}
    for prompt, sample in zip(prompts, samples):
        ids = sample["tokens"][:-1] if sample["finished"] else sample["tokens"]
        if not sample["finished"]:
            counts["unfinished"] += 1
            if not keep_unfinished:
                continue
        text = run.tokenizer.decode(ids, skip_special_tokens=True)
        if not text.strip():
            counts["empty"] += 1
            continue
        extra = {k: v for k, v in prompt.items() if k not in ("prompt", "source")}
        records.append({"prompt": prompt_text(prompt["prompt"]), "teacher_response": text,
                        **extra})
    counts["written"] = len(records)
    return records, counts


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Atomic: a temporary file renamed into place (process 0 only)."""
    if jax.process_index() != 0:
        return
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, path)


def run(config) -> Path:
    """Sample the teacher on the prompt set; returns the JSONL path."""
    t = config.teacher_data
    if t.topk < 0 or t.max_new_tokens < 1 or t.batch_size < 1:
        raise ValueError("teacher_data: need topk >= 0, max_new_tokens >= 1, batch_size >= 1")
    teacher_tokenizer(config, t.teacher)
    run_ = runsetup.prepare(config)
    examples = runsetup.load_examples(run_, "prompt", "train")
    if t.limit:
        examples = examples[:t.limit]
    if not examples:
        raise ValueError("teacher_data: the prompt set is empty (data.source)")
    teacher = frozen_model(run_, t.teacher, key="teacher_data.teacher")
    expected = settings(run_, teacher, examples, t)
    output = run_.workdir / OUTPUT
    if is_complete(run_.workdir, expected):
        if run_.is_main:
            print(f"[teacher-data] {output} is complete for these settings; skipping")
        return output
    tokenized = runsetup.tokenize(run_, examples, "prompt")
    if len(tokenized) != len(examples):
        raise ValueError("teacher_data: prompts were dropped by data.on_overflow='drop'; "
                         "raise data.max_length or truncate instead")
    samples = sample_responses(run_, teacher, tokenized, t)
    records, counts = build_records(run_, examples, samples, t.keep_unfinished)
    if not records:
        raise ValueError(f"teacher_data: no usable response ({counts}); " + no_response_hint(counts))
    if t.topk:
        normalized = data_records.normalize_teacher(
            [data_sources.Record(r, f"{OUTPUT}:{i + 1}") for i, r in enumerate(records)])
        for record, topk in zip(records, teacher_topk(run_, teacher, normalized, t.topk,
                                                      t.batch_size)):
            record["teacher_topk"] = topk
    if run_.is_main:  # from here until the new summary exists, the output counts as incomplete
        (run_.workdir / SUMMARY).unlink(missing_ok=True)
    write_jsonl(output, records)
    runsetup.write_json(run_.workdir / SUMMARY, {"settings": expected, "counts": counts})
    if jax.process_count() > 1:  # no process moves on (to distillation) before the file exists
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("teacher_data:written")
    if run_.is_main:
        dropped = "kept" if t.keep_unfinished else "dropped"
        print(f"[teacher-data] wrote {counts['written']} of {counts['prompts']} responses to "
              f"{output}; {counts['unfinished']} unfinished ({dropped}), {counts['empty']} "
              "empty (dropped)")
    return output
