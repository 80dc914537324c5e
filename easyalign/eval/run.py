"""`easyalign eval --config=configs/eval.py`: every variant on the same prompts, one table.

For each variant (`eval.variants`, see `easyalign.eval.suites`), one after the other (only one
variant's weights are on the devices at a time; the reference and reward model stay loaded):

1. **Generate** a response to every prompt of every suite (world suites, then extra suites)
   with the jitted `Sampler` — greedy by default (`eval.sampling`), at most
   `eval.max_new_tokens` tokens, the prompt rendered with the variant's chat template.
2. **Grade** each response (`metrics.grade_response`) and reduce per suite
   (`metrics.suite_metrics`), plus length and distinct-n over all responses.
3. **KL to the reference** (`eval.reference`, the SFT model): an estimate of
   E_x KL(π(·|x) ‖ π_ref(·|x)) over the evaluated prompts, π the variant's distribution over
   responses of at most `eval.max_new_tokens` tokens (Schulman, "Approximating KL divergence",
   2020; `easyalign.losses.common`'s k1 and k3). It needs y ~ π, so it is never read off the
   evaluated responses (greedy by default: not samples of π, and their log-ratio can be
   negative):
   * samples: one response y_n ~ π(·|x_n) per evaluated prompt x_n, n = 0 … N−1 over every
     suite's prompts in order (N = the number of evaluated responses), at temperature 1 with no
     top-k / top-p, seed `eval.seed`: token i of y_n is drawn with the key
     `fold_in(fold_in(fold_in(key(eval.seed), 0), n), i)` (`sampler.decode.row_keys`), so the
     samples depend on the seed, n and the model only (not on `eval.batch_size`). When the
     evaluated responses are such draws already (`eval.sampling=temperature`,
     `eval.temperature=1`) they are the same tokens and are reused, not drawn again;
   * per token, in fp32 from one full forward of prompt + y_n under each model
     (`scoring.continuation_token_logprobs`; the stop token included, T_n ≤ max_new_tokens):
         d_{n,t} = log π(y_{n,t} | x_n, y_{n,<t}) − log π_ref(y_{n,t} | x_n, y_{n,<t})   [N, T_n]
   * `kl_ref`    = (1/N) Σ_n Σ_t d_{n,t}                       (k1)
     `kl_ref_k3` = (1/N) Σ_n Σ_t (exp(−d_{n,t}) − 1 + d_{n,t})   (k3)
     both in nats per response, both unbiased (k3 because E_{y_t ~ π}[π_ref/π] = 1 at every
     prefix); a k1 term can be negative, every k3 term is ≥ 0 and k3's variance is lower when
     π is close to π_ref. Identical models give exactly 0 for both (same scorer, d = 0), and
     sampler/forward rounding differences cannot leak in. Each prompt's record carries its
     sample's two sums and text (`kl_ref`, `kl_ref_k3`, `kl_sample`).
   KL needs token ids that mean the same thing: a variant whose tokenizer vocabulary differs from
   the reference's gets no `kl_ref` (and a note says so). `eval.kl_samples` names the samples:
   `temperature` (the above) or `none` (no KL, and no reference loaded, even when one is named;
   `responses`, k1 on the evaluated responses, was removed: not a KL estimate).
4. **Reward** (`eval.reward_model`, a scalar-head checkpoint): every (prompt, response) is
   re-tokenised with the reward model's tokenizer exactly as its training data was (chat-template
   prompt + response + end of turn, `easyalign.data.tokenize`; a response cut by
   `max_new_tokens` gets the end of turn too) and scored at its read position
   (`reward.read_index`, HF's); `reward` is the mean.
5. **TruthfulQA MC** (`eval.mc_task`): see `metrics.mc1` / `metrics.mc2`. Prompt format: the
   question is the user turn rendered with the variant's chat template and generation prompt
   (exactly what `Sampler.encode` feeds the model), and each answer is the assistant's
   continuation, tokenised on its own without an end of turn; ℓ is the sum of the answer tokens' log-probs.
   (The TruthfulQA paper prefixes a few-shot "QA primer"; a chat model gets its own template.)

6. **Refusal judge** (`eval.refusal_judge`, `easyalign.eval.judge`): the rules (default) or a
   judge LM scoring "Yes"/"No" in the same jitted batches; its measured error is stated in the
   notes.
7. **Instruction following** (`eval.ifeval`): the IFEval-style suite, graded by
   `easyalign.data.ifeval.score`.

Precision and length. `eval.dtype` is the compute dtype; "" computes in the dtype the weights
are stored in (`hf.autoload.stored_dtype`). A prompt longer than the model's context less
`max_new_tokens` is cut from the left (its end, where the request is, is kept), counted per
suite in `truncated` and announced by one warning line per suite; the same holds for MC
questions (cut so that question + answer fit).

Resume. Each variant's finished entry is written to `workdir/variants/<variant>.json`
(atomically, temp file + rename, after its samples file), keyed by a fingerprint of the
variant's model files, the reference / reward / judge models' files, the suite files and the
eval settings. A rerun skips every variant whose fingerprint matches, so an evaluation killed
after k of n variants redoes only the rest.

Outputs (process 0): `workdir/results.json|md|png` (`easyalign.eval.report`; the PNG and the
table first, `results.json` last: it marks a complete evaluation) and
`workdir/samples/<variant>.jsonl`: one line per prompt with the response, its grade, token count,
and its KL (with the sample it was computed on) / reward terms when computed, then one line
per MC question.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from easyalign import distributed, sharding
from easyalign.data.sources import read_jsonl_objects
from easyalign.data.tokenize import TruncationPolicy, pad_token_id, tokenize_examples
from easyalign.eval import judge as J
from easyalign.eval import metrics as M
from easyalign.eval import report, scoring
from easyalign.eval.suites import (Suite, ifeval_suite, load_mc_task, parse_extra_suites,
                                   parse_named_paths, same_vocabulary, extra_suite, world_suites)
from easyalign.hf.autoload import is_gguf, load_model, load_tokenizer, model_location
from easyalign.losses.common import KL_ESTIMATORS
from easyalign.sampler import Sampler, Temperature, as_messages, method_from_config

KL_SAMPLES = ("temperature", "none")  # "none": no KL even with a reference (one pass less)
KL_COLUMNS = {"kl_ref": "k1", "kl_ref_k3": "k3"}  # metric key -> losses.KL_ESTIMATORS name


@dataclasses.dataclass
class Frozen:
    """A model that is read, not evaluated (reference, reward model), with its tokenizer."""

    model: Any
    tokenizer: Any


def load_suites(config, world: Path | None) -> list[Suite]:
    e = config.eval
    suites = world_suites(world, e.suites, e.limit_per_suite) if e.suites else []
    holdout = (config.data.eval_fraction, config.data.eval_max, config.data.eval_seed)
    for name, spec in parse_extra_suites(e.extra_suites).items():
        if name == M.IFEVAL:
            raise ValueError(f"eval.extra_suites: {name!r} is the instruction-following "
                             "suite's name (eval.ifeval)")
        suites.append(extra_suite(name, **spec, limit=e.limit_per_suite, holdout=holdout))
    if e.ifeval:
        suites.append(ifeval_suite(e.ifeval, e.limit_per_suite))
    return suites


class TruncatingSampler(Sampler):
    """A `Sampler` whose prompts keep at most `limit` tokens: the last ones (module docstring)."""

    def __init__(self, *args, limit: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit = limit

    def full_length(self, prompt) -> int:
        return len(super().encode(prompt))

    def encode(self, prompt) -> list[int]:
        return super().encode(prompt)[-self.limit:]


def _warn_truncated(name: str, suite: str, count: int, total: int, limit: int, why: str):
    if count and jax.process_index() == 0:
        print(f"[eval] warning: {name}: {count} of {total} {suite} prompts exceed {limit} "
              f"tokens ({why}); kept their last {limit} tokens")


def _judge_refusals(judge, records, suites, e, mesh) -> None:
    """Replace the rules' refusal flags by a judge model's on every refusal-graded record."""
    kinds = {s.name: s.kind for s in suites}
    graded = [r for r in records if kinds[r["suite"]] in ("harmful", "benign", "plain")]
    if judge is None or not graded:
        return
    margins = J.model_judge(judge.model, judge.tokenizer, [r["prompt"] for r in graded],
                            [r["response"] for r in graded], batch_size=e.batch_size, mesh=mesh)
    for record, margin in zip(graded, margins):
        record["refusal_rules"], record["judge_margin"] = record["refusal"], margin
        record["refusal"] = margin > 0
        if kinds[record["suite"]] in ("harmful", "benign") and record["correct"] is not None:
            record["correct"] = record["refusal"] == (kinds[record["suite"]] == "harmful")


def kl_draws(sampler, prompts, outs, e) -> list[dict]:
    """The temperature-1 samples the KL is estimated on (module docstring, step 3): `outs`
    themselves when they were drawn so (the same call), else one fresh draw per prompt."""
    if method_from_config(e) == Temperature(1.0):
        return outs
    return sampler.sample_texts(prompts, max_new_tokens=e.max_new_tokens,
                                method=Temperature(1.0), seed=e.seed)


def kl_terms(model, sampler, reference: Frozen, prompts, samples, e, mesh
             ) -> dict[str, np.ndarray]:
    """{`kl_ref`: k1 sums, `kl_ref_k3`: k3 sums}, one per (prompt, sample), each `[N]` float32
    nats: Σ_t of the estimator over the sample's tokens (module docstring, step 3)."""
    rows = [(sampler.encode(p), s["tokens"]) for p, s in zip(prompts, samples)]
    kwargs = dict(batch_size=e.batch_size, pad_id=sampler.pad_id, mesh=mesh)
    policy = scoring.continuation_token_logprobs(model, rows, **kwargs)
    ref = scoring.continuation_token_logprobs(reference.model, rows, **kwargs)
    # Entries after a sample's last token are 0 under both models: d = 0 there, and k1 = k3 = 0.
    return {key: np.asarray(KL_ESTIMATORS[name](policy, ref)).sum(axis=-1)
            for key, name in KL_COLUMNS.items()}


def _rewards(reward: Frozen, prompts, responses, e, mesh) -> list[float]:
    examples = [{"messages": as_messages(p) + [{"role": "assistant", "content": r}],
                 "source": f"response {i}"} for i, (p, r) in enumerate(zip(prompts, responses))]
    policy = TruncationPolicy(max_length=reward.model.config.max_position_embeddings)
    tokenized, _ = tokenize_examples(examples, "sft", reward.tokenizer, policy)
    sequences = [ex["tokens"].tolist() for ex in tokenized]
    return scoring.reward_scores(reward.model, sequences, batch_size=e.batch_size,
                                 pad_id=pad_token_id(reward.tokenizer), mesh=mesh).tolist()


def _multiple_choice(model, sampler, questions, e, mesh) -> tuple[dict, list[dict], int]:
    rows, spans, truncated = [], [], 0
    context = model.config.max_position_embeddings
    for q in questions:
        prefix = Sampler.encode(sampler, q.question)  # the whole prompt, cut per answer below
        cut = False
        for targets in (q.mc1, q.mc2):
            start = len(rows)
            for answer, _ in targets:
                ids = sampler.tokenizer(answer, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise ValueError(f"{q.where}: answer {answer!r} encodes to no tokens")
                if len(ids) >= context:
                    raise ValueError(f"{q.where}: answer {answer!r} has {len(ids)} tokens, "
                                     f"the model's context is {context}")
                keep = context - len(ids)
                cut = cut or len(prefix) > keep
                rows.append((prefix[-keep:], ids))
            spans.append((start, len(rows)))
        truncated += cut
    ll = scoring.continuation_logprobs(model, rows, batch_size=e.batch_size,
                                       pad_id=sampler.pad_id, mesh=mesh).tolist()
    records = []
    for i, q in enumerate(questions):
        (a, b), (c, d) = spans[2 * i], spans[2 * i + 1]
        labels1, labels2 = [lab for _, lab in q.mc1], [lab for _, lab in q.mc2]
        records.append({"suite": "truthfulqa_mc", "where": q.where, "question": q.question,
                        "mc1": M.mc1(ll[a:b], labels1), "mc2": M.mc2(ll[c:d], labels2),
                        "mc1_logliks": ll[a:b], "mc2_logliks": ll[c:d]})
    return {"mc1": M.mean(r["mc1"] for r in records),
            "mc2": M.mean(r["mc2"] for r in records)}, records, truncated


def evaluate_variant(name: str, path: str, suites: list[Suite], questions, e, mesh, *,
                     reference: Frozen | None, reward: Frozen | None, fallback_tokenizer,
                     notes: list[str], judge: Frozen | None = None) -> tuple[dict, list[dict]]:
    """One variant's results entry and its sample records."""
    model = load_model(path, mesh, e.dtype)
    tokenizer = load_tokenizer(path, fallback_tokenizer)
    context = model.config.max_position_embeddings
    limit = context - e.max_new_tokens
    if limit < 1:
        raise ValueError(f"eval.max_new_tokens={e.max_new_tokens} leaves no room for a prompt "
                         f"in {name}'s context of {context} tokens")
    sampler = TruncatingSampler.from_model(model, tokenizer, batch_size=e.batch_size, mesh=mesh,
                                           limit=limit)
    items = [(suite, item) for suite in suites for item in suite.items]
    prompts = [item["prompt"] for _, item in items]
    truncated = {}
    for suite in suites:
        truncated[suite.name] = sum(sampler.full_length(i["prompt"]) > limit for i in suite.items)
        _warn_truncated(name, suite.name, truncated[suite.name], len(suite.items), limit,
                        f"context {context} − max_new_tokens {e.max_new_tokens}")
    outs = sampler.sample_texts(prompts, max_new_tokens=e.max_new_tokens,
                                method=method_from_config(e), seed=e.seed)
    records = []
    for (suite, item), out in zip(items, outs):
        length = len(out["tokens"]) - int(out["finished"])  # the stop token is not content
        records.append({"suite": suite.name, "where": item["where"], "prompt": item["prompt"],
                        "answer": item["answer"], "response": out["response"],
                        **M.grade_response(suite.kind, out["response"], item["answer"]),
                        "length": length, "finished": out["finished"]})

    _judge_refusals(judge, records, suites, e, mesh)
    metrics: dict[str, Any] = {}
    for suite in suites:
        graded = [r for r in records if r["suite"] == suite.name]
        metrics |= M.suite_metrics(suite.name, suite.kind, graded, suite.world)
    metrics |= M.response_metrics([r["response"] for r in records],
                                  [r["length"] for r in records])
    if reference is not None and records:
        if same_vocabulary(tokenizer, reference.tokenizer):
            samples = kl_draws(sampler, prompts, outs, e)
            kl = kl_terms(model, sampler, reference, prompts, samples, e, mesh)
            for n, (record, sample) in enumerate(zip(records, samples)):
                record |= {key: float(values[n]) for key, values in kl.items()}
                record["kl_sample"] = sample["response"]
            metrics |= {key: M.mean(values.tolist()) for key, values in kl.items()}
        else:
            notes.append(f"{name}: no kl_ref, its tokenizer's vocabulary differs from the "
                         "reference's")
    scored = [r for r in records if not e.reward_suites or r["suite"] in e.reward_suites]
    if reward is not None and scored:
        scores = _rewards(reward, [r["prompt"] for r in scored],
                          [r["response"] for r in scored], e, mesh)
        for record, value in zip(scored, scores):
            record["reward"] = value
        metrics["reward"] = M.mean(scores)
    counts = {suite.name: len(suite.items) for suite in suites}
    if questions:
        mc, mc_records, truncated["truthfulqa_mc"] = _multiple_choice(model, sampler, questions,
                                                                       e, mesh)
        _warn_truncated(name, "truthfulqa_mc", truncated["truthfulqa_mc"], len(questions),
                        context, "question + answer beyond the context")
        metrics |= mc
        records += mc_records
        counts["truthfulqa_mc"] = len(questions)
    if all(metrics.get(k) is not None for k in M.ALIGNMENT_COMPONENTS):
        metrics = {"alignment_score": M.alignment_score(metrics), **metrics}
    return {"name": name, "path": str(path), "dtype": model.config.dtype, "metrics": metrics,
            "counts": counts, "truncated": truncated}, records


def file_signature(path: str | Path | None) -> list | None:
    """(relative name, size, mtime_ns) of every file under `path` (a file or a directory; a
    GGUF alias resolved): what a fingerprint sees of a model or data file without reading it."""
    if not path:
        return None
    if is_gguf(path):
        from easyalign.hf.gguf import resolve_gguf

        path = resolve_gguf(path)
    path = Path(model_location(path))  # a phase workdir: its model/, not its logs
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(f.relative_to(path)) if f != path else f.name, f.stat().st_size,
             f.stat().st_mtime_ns) for f in files]


def variant_fingerprint(path: str, config, suites: list[Suite]) -> str:
    """sha256 of what decides a variant's results: its model files, the frozen models' files,
    the suites' prompts and the eval settings (without the variant list)."""
    e = config.eval
    settings = {k: v for k, v in e.to_dict().items()
                if k not in ("variants", "win_rate_reference")}
    content = {"model": file_signature(path), "settings": settings,
               "reference": file_signature(e.reference),
               "reward_model": file_signature(e.reward_model),
               "judge": file_signature(J.parse_judge(e.refusal_judge)[1]),
               "mc_task": file_signature(e.mc_task), "kl": KL_COLUMNS,
               "suites": [(s.name, s.kind, [i["prompt"] for i in s.items]) for s in suites]}
    blob = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _workload(suites: list[Suite], questions: list, e) -> str:
    """What one variant's evaluation will do, with the keys that limit it."""
    parts = [f"{s.name} {len(s.items)}" for s in suites]
    if questions:
        parts.append(f"truthfulqa_mc {len(questions)} questions (eval.mc_limit"
                     f"={e.mc_limit}{': all' if not e.mc_limit else ''})")
    limit = f"eval.limit_per_suite={e.limit_per_suite}" + (": all" if not e.limit_per_suite
                                                             else "")
    return f"prompts per suite ({limit}): " + ", ".join(parts)


def _finished_variant(workdir: Path, name: str, fingerprint: str) -> tuple[dict, list] | None:
    """A variant's entry and notes from an earlier run with the same fingerprint, or None."""
    done, samples = workdir / "variants" / f"{name}.json", workdir / "samples" / f"{name}.jsonl"
    if not (done.is_file() and samples.is_file()):
        return None
    saved = json.loads(done.read_text())
    if saved.get("fingerprint") != fingerprint:
        return None
    return saved["entry"], saved.get("notes", [])


def _saved_rewards(workdir: Path, name: str) -> dict:
    # Lines end at "\n" only: a response may hold U+2028 or U+0085, which json.dumps leaves raw
    # and str.splitlines would split at (a resumed real-data eval failed on SmolLM2's samples).
    records = read_jsonl_objects(workdir / "samples" / f"{name}.jsonl")
    return {(r["suite"], r["where"]): r["reward"] for r, _ in records if "reward" in r}


def run(config) -> dict:
    """Evaluate every variant (skipping those finished before); write and return the results."""
    from easyalign.data.world_source import ensure_world
    from easyalign.train.rundir import start_workdir, write_atomic

    from easyalign.algorithms.runsetup import models_read, stage_path
    from easyalign.config_check import validate

    e = config.eval
    if e.kl_samples == "responses":
        raise ValueError("eval.kl_samples='responses' was removed: the evaluated responses "
                         "(greedy by default) are not temperature-1 samples of the policy, so k1 "
                         "on them is not a KL estimate (it can be negative); kl_ref is estimated "
                         "on temperature-1 samples (eval.kl_samples='temperature')")
    if e.kl_samples not in KL_SAMPLES:
        raise ValueError(f"eval.kl_samples: {e.kl_samples!r} is not one of {KL_SAMPLES}")
    judge_kind, judge_path = J.parse_judge(e.refusal_judge)
    validate(config)  # the workdir, and every `@stage` model is there (one line if not)
    # `@stage` = <parent of workdir>/<stage>/model, as in the training stages.
    variants = {name: stage_path(config, path)
                for name, path in parse_named_paths(e.variants).items()}
    e.reference, e.reward_model = stage_path(config, e.reference), stage_path(config, e.reward_model)
    if not variants:
        raise ValueError("eval.variants is empty: give 'name=path' entries, e.g. "
                         "--config.eval.variants=\"('sft=runs/sft/model',)\"")
    if e.win_rate_reference and (e.win_rate_reference not in variants or not e.reward_model):
        raise ValueError(f"eval.win_rate_reference={e.win_rate_reference!r} needs a variant of "
                         f"that name (have {list(variants)}) and eval.reward_model")
    distributed.initialize_from_config(config)
    mesh = sharding.mesh_from_config(config.mesh)
    workdir = Path(start_workdir(config, identify=models_read(config)))
    world = ensure_world(config) if e.suites else None
    fallback = e.tokenizer or (str(world / "tokenizer") if world else None)
    suites = load_suites(config, world)
    questions = load_mc_task(e.mc_task, e.mc_limit) if e.mc_task else []
    fingerprints = {name: variant_fingerprint(path, config, suites)
                    for name, path in variants.items()}
    finished = {name: _finished_variant(workdir, name, fingerprints[name]) for name in variants}
    loaded: dict[str, Frozen | None] = {}

    def frozen(path):  # loaded on first use: a rerun with every variant done loads nothing
        if path not in loaded:
            loaded[path] = Frozen(load_model(path, mesh, e.dtype),
                                  load_tokenizer(path, fallback)) if path else None
        return loaded[path]

    # The IDK detector is told in the unknown IDK definition, which results.md writes only when
    # that metric is a column (report.definitions).
    notes = [J.stated_line("rules" if judge_kind == "rules" else e.refusal_judge)]
    measure_kl = bool(e.reference) and e.kl_samples != "none"
    if measure_kl:
        notes.append(f"kl_ref, kl_ref_k3: KL(π ‖ π_ref) in nats per response, k1 and k3 "
                     f"estimators (Schulman 2020) on one temperature-1 sample of at most "
                     f"{e.max_new_tokens} tokens per evaluated prompt, seed {e.seed} "
                     f"(eval.kl_samples={e.kl_samples!r})")
    entries, rewards = [], {}
    for name, path in variants.items():
        if finished[name] is not None:
            entry, variant_notes = finished[name]
            if e.win_rate_reference:
                rewards[name] = _saved_rewards(workdir, name)
            if jax.process_index() == 0:
                print(f"[eval] {name}: finished before (same fingerprint), skipped")
        else:
            if jax.process_index() == 0:  # a real model's variant runs for minutes: say what
                print(f"[eval] {name}: {_workload(suites, questions, e)} …", flush=True)
            variant_notes = []
            entry, records = evaluate_variant(
                name, path, suites, questions, e, mesh,
                reference=frozen(e.reference) if measure_kl else None,
                reward=frozen(e.reward_model), fallback_tokenizer=fallback, notes=variant_notes,
                judge=frozen(judge_path) if judge_kind == "model" else None)
            entry["fingerprint"] = fingerprints[name]
            rewards[name] = {(r["suite"], r["where"]): r["reward"] for r in records
                             if "reward" in r}
            if jax.process_index() == 0:
                report.write_samples(workdir, name, records)  # first: the marker comes last
                write_atomic(workdir / "variants" / f"{name}.json", json.dumps(
                    {"fingerprint": fingerprints[name], "entry": entry, "notes": variant_notes},
                    indent=2, ensure_ascii=False) + "\n")
                print(f"[eval] {name}: " + ", ".join(
                    f"{k}={v:.3f}" for k, v in entry["metrics"].items() if v is not None))
        notes += variant_notes
        entries.append(entry)
    if e.win_rate_reference:
        for entry in entries:
            entry["metrics"]["reward_win_rate"] = M.win_rate(rewards[entry["name"]],
                                                             rewards[e.win_rate_reference])
        notes.append(f"reward_win_rate: against {e.win_rate_reference!r}, judged by the reward "
                     "model (ties count ½)")
    directions = {k: d for k in {k for en in entries for k in en["metrics"]}
                  if (d := M.direction(k)) is not None}
    for suite in suites:
        if not suite.world and suite.kind in M.TAGS:
            if M.direction("", suite.kind) is not None:
                directions[M.extra_metric(suite.name, suite.kind)] = M.direction("", suite.kind)
    doc = {"schema": report.SCHEMA, "variants": entries, "directions": directions,
           "refusal_judge": {"judge": e.refusal_judge,
                             "stated_error": J.STATED_ERROR.get(judge_kind if judge_kind ==
                                                                "rules" else e.refusal_judge)},
           "settings": e.to_dict(), "notes": notes}
    if jax.process_index() == 0:
        paths = report.write_results(workdir, doc)
        print(f"[eval] wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return doc
