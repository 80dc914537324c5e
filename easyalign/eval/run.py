"""`easyalign eval --config=configs/eval.py`: every variant on the same prompts, one table.

For each variant (`eval.variants`, see `easyalign.eval.suites`), one after the other (only one
variant's weights are on the devices at a time; the reference and reward model stay loaded):

1. **Generate** a response to every prompt of every suite (world suites, then extra suites)
   with the jitted `Sampler` — greedy by default (`eval.sampling`), at most
   `eval.max_new_tokens` tokens, the prompt rendered with the variant's chat template.
2. **Grade** each response (`metrics.grade_response`) and reduce per suite
   (`metrics.suite_metrics`), plus length and distinct-n over all responses.
3. **KL to the reference** (`eval.reference`, the SFT model): for each response y to prompt x,
   Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) over y's tokens (stop token included),
   then the mean — the k1 estimator. Both terms come from the same full-forward scorer
   (`scoring.continuation_logprobs`), so identical models give exactly 0 and sampler/forward
   rounding differences cannot leak into it. Which responses (`eval.kl_samples`):
   * `"responses"` (default): the evaluated responses themselves, free. With greedy decoding
     this is not KL(π‖π_ref) — greedy outputs are not samples of π — but the log-likelihood
     ratio on what the variant actually says: a "divergence on the variant's outputs". It can
     be negative.
   * `"temperature"`: fresh samples at temperature 1 from π (seed `eval.seed`), one per prompt —
     an unbiased Monte Carlo estimate of E_x KL(π(·|x) ‖ π_ref(·|x)) over the suites' prompts,
     for one more generation pass.
   KL needs token ids that mean the same thing: a variant whose tokenizer vocabulary differs from
   the reference's gets no `kl_ref` (and a note says so).
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

Outputs (process 0): `workdir/results.json|md|png` (`easyalign.eval.report`) and
`workdir/samples/<variant>.jsonl`: one line per prompt with the response, its grade, token count,
and its KL / reward terms when computed, then one line per MC question.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from easyalign import distributed, sharding
from easyalign.data.tokenize import TruncationPolicy, pad_token_id, tokenize_examples
from easyalign.eval import metrics as M
from easyalign.eval import report, scoring
from easyalign.eval.suites import (Suite, load_mc_task, load_model, load_tokenizer,
                                   parse_extra_suites, parse_named_paths, same_vocabulary,
                                   extra_suite, world_suites)
from easyalign.sampler import Sampler, Temperature, as_messages, method_from_config

KL_SAMPLES = ("responses", "temperature")


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
        suites.append(extra_suite(name, **spec, limit=e.limit_per_suite, holdout=holdout))
    return suites


def _kl_terms(model, sampler, reference: Frozen, prompts, samples, e, mesh) -> list[float]:
    rows = [(sampler.encode(p), s["tokens"]) for p, s in zip(prompts, samples)]
    kwargs = dict(batch_size=e.batch_size, pad_id=sampler.pad_id, mesh=mesh)
    policy = scoring.continuation_logprobs(model, rows, **kwargs)
    ref = scoring.continuation_logprobs(reference.model, rows, **kwargs)
    return (policy - ref).tolist()


def _rewards(reward: Frozen, prompts, responses, e, mesh) -> list[float]:
    examples = [{"messages": as_messages(p) + [{"role": "assistant", "content": r}],
                 "source": f"response {i}"} for i, (p, r) in enumerate(zip(prompts, responses))]
    policy = TruncationPolicy(max_length=reward.model.config.max_position_embeddings)
    tokenized, _ = tokenize_examples(examples, "sft", reward.tokenizer, policy)
    sequences = [ex["tokens"].tolist() for ex in tokenized]
    return scoring.reward_scores(reward.model, sequences, batch_size=e.batch_size,
                                 pad_id=pad_token_id(reward.tokenizer), mesh=mesh).tolist()


def _multiple_choice(model, sampler, questions, e, mesh) -> tuple[dict, list[dict]]:
    rows, spans = [], []
    for q in questions:
        prefix = sampler.encode(q.question)
        for targets in (q.mc1, q.mc2):
            start = len(rows)
            for answer, _ in targets:
                ids = sampler.tokenizer(answer, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise ValueError(f"{q.where}: answer {answer!r} encodes to no tokens")
                rows.append((prefix, ids))
            spans.append((start, len(rows)))
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
            "mc2": M.mean(r["mc2"] for r in records)}, records


def evaluate_variant(name: str, path: str, suites: list[Suite], questions, e, mesh, *,
                     reference: Frozen | None, reward: Frozen | None, fallback_tokenizer,
                     notes: list[str]) -> tuple[dict, list[dict]]:
    """One variant's results entry and its sample records."""
    model = load_model(path, mesh, e.dtype)
    tokenizer = load_tokenizer(path, fallback_tokenizer)
    sampler = Sampler.from_model(model, tokenizer, batch_size=e.batch_size, mesh=mesh)
    items = [(suite, item) for suite in suites for item in suite.items]
    prompts = [item["prompt"] for _, item in items]
    outs = sampler.sample_texts(prompts, max_new_tokens=e.max_new_tokens,
                                method=method_from_config(e), seed=e.seed)
    records = []
    for (suite, item), out in zip(items, outs):
        length = len(out["tokens"]) - int(out["finished"])  # the stop token is not content
        records.append({"suite": suite.name, "where": item["where"], "prompt": item["prompt"],
                        "answer": item["answer"], "response": out["response"],
                        **M.grade_response(suite.kind, out["response"], item["answer"]),
                        "length": length, "finished": out["finished"]})

    metrics: dict[str, Any] = {}
    for suite in suites:
        graded = [r for r in records if r["suite"] == suite.name]
        metrics |= M.suite_metrics(suite.name, suite.kind, graded, suite.world)
    metrics |= M.response_metrics([r["response"] for r in records],
                                  [r["length"] for r in records])
    if reference is not None and records:
        if same_vocabulary(tokenizer, reference.tokenizer):
            samples = outs if e.kl_samples == "responses" else sampler.sample_texts(
                prompts, max_new_tokens=e.max_new_tokens, method=Temperature(1.0), seed=e.seed)
            kl = _kl_terms(model, sampler, reference, prompts, samples, e, mesh)
            for record, value in zip(records, kl):
                record["kl_ref"] = value
            metrics["kl_ref"] = M.mean(kl)
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
        mc, mc_records = _multiple_choice(model, sampler, questions, e, mesh)
        metrics |= mc
        records += mc_records
        counts["truthfulqa_mc"] = len(questions)
    if all(metrics.get(k) is not None for k in M.ALIGNMENT_COMPONENTS):
        metrics = {"alignment_score": M.alignment_score(metrics), **metrics}
    return {"name": name, "path": str(path), "metrics": metrics, "counts": counts}, records


def run(config) -> dict:
    """Evaluate every variant; write and return the results document."""
    from easyalign.algorithms.common import ensure_world, start_workdir

    e = config.eval
    if e.kl_samples not in KL_SAMPLES:
        raise ValueError(f"eval.kl_samples: {e.kl_samples!r} is not one of {KL_SAMPLES}")
    variants = parse_named_paths(e.variants)
    if not variants:
        raise ValueError("eval.variants is empty: give 'name=path' entries, e.g. "
                         "--config.eval.variants=\"('sft=runs/sft/model',)\"")
    if e.win_rate_reference and (e.win_rate_reference not in variants or not e.reward_model):
        raise ValueError(f"eval.win_rate_reference={e.win_rate_reference!r} needs a variant of "
                         f"that name (have {list(variants)}) and eval.reward_model")
    distributed.initialize_from_config(config)
    mesh = sharding.mesh_from_config(config.mesh)
    workdir = start_workdir(config)
    world = ensure_world(config) if e.suites else None
    fallback = e.tokenizer or (str(world / "tokenizer") if world else None)
    suites = load_suites(config, world)
    questions = load_mc_task(e.mc_task, e.mc_limit) if e.mc_task else []

    def frozen(path):
        return Frozen(load_model(path, mesh, e.dtype), load_tokenizer(path, fallback))

    reference = frozen(e.reference) if e.reference else None
    reward = frozen(e.reward_model) if e.reward_model else None
    notes = ["refusal and \"I don't know\" are rule-based detections (easyalign/eval/rules.py)"]
    if reference is not None:
        on = "the evaluated responses" if e.kl_samples == "responses" else "temperature-1 samples"
        notes.append(f"kl_ref: k1 estimator on {on} (eval.kl_samples={e.kl_samples!r})")
    entries, rewards = [], {}
    for name, path in variants.items():
        entry, records = evaluate_variant(name, path, suites, questions, e, mesh,
                                          reference=reference, reward=reward,
                                          fallback_tokenizer=fallback, notes=notes)
        entries.append(entry)
        rewards[name] = {(r["suite"], r["where"]): r["reward"] for r in records if "reward" in r}
        if jax.process_index() == 0:
            report.write_samples(workdir, name, records)
            print(f"[eval] {name}: " + ", ".join(
                f"{k}={v:.3f}" for k, v in entry["metrics"].items() if v is not None))
    if e.win_rate_reference:
        for entry in entries:
            entry["metrics"]["reward_win_rate"] = M.win_rate(rewards[entry["name"]],
                                                             rewards[e.win_rate_reference])
        notes.append(f"reward_win_rate: against {e.win_rate_reference!r}, judged by the reward "
                     "model (ties count ½)")
    doc = {"schema": report.SCHEMA, "variants": entries, "settings": e.to_dict(), "notes": notes}
    if jax.process_index() == 0:
        paths = report.write_results(workdir, doc)
        print(f"[eval] wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return doc
