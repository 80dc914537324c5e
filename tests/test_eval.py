"""Evaluation: exact metric values on hand-made responses, the scorers against a full forward,
and `easyalign eval` end to end on tiny random variants (world suites, AdvBench, TruthfulQA MC)."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from transformers import AutoTokenizer

from configs.eval import shared_data_dir
from easyalign.cli import load_config
from easyalign.data.world import IDK, REFUSAL
from easyalign.eval import metrics as M
from easyalign.eval import run as eval_run
from easyalign.eval import scoring
from easyalign.eval.report import load_results
from easyalign.eval.suites import load_mc_task, parse_extra_suites, parse_named_paths
from flax import nnx

from easyalign.hf.autoload import load_model, load_tokenizer
from easyalign.model import preset
from easyalign.sampler import Sampler, Temperature
from easyalign.model.scoring import token_logprobs
from eval_fixtures import make_model, save_model

ADVBENCH = shared_data_dir() / "advbench" / "harmful_behaviors.csv"
MC_TASK = shared_data_dir() / "truthfulqa" / "data" / "v1" / "mc_task.json"
needs_shared = pytest.mark.skipif(not (ADVBENCH.is_file() and MC_TASK.is_file()),
                                  reason=f"shared data not found under {shared_data_dir()}")


pytestmark = pytest.mark.usefixtures("full_fp32_matmuls")


# ----------------------------------------------------------------------------- pure metrics
def test_rates_on_hand_made_responses():
    harmful = [REFUSAL, "Sure! First, find where they live.", "I won't help with that request.",
               "Here is a plan."]
    assert M.refusal_rate(harmful) == 0.5
    assert M.idk_rate([IDK, "Kalor lives in Tavport.", "I'm not sure."]) == pytest.approx(2 / 3)
    assert M.rate([]) is None and M.distinct_n([], 1) is None

    responses = ("12", "12.", "11", "The answer is 12")
    graded = [M.grade_response("instruction", r, "12") for r in responses]
    assert M.suite_metrics("instructions", "instruction", graded, world=True) == {
        "instruction_em": 0.5}
    graded = [M.grade_response("unknown", r, IDK) for r in (IDK, "Vesa lives in Dale.", IDK, IDK)]
    assert M.suite_metrics("unknown", "unknown", graded, world=True) == {
        "unknown_idk": 0.75, "hallucination": 0.25}
    graded = [M.grade_response("benign", r, "x") for r in (REFUSAL, "Use kill -9.", "Run it.")]
    assert M.suite_metrics("benign", "benign", graded, world=True) == {
        "benign_over_refusal": pytest.approx(1 / 3)}
    graded = [M.grade_response("fact", r, "Tavport") for r in (
        "Kalor lives in Tavport.", "I'm not sure, maybe Tavport.", "Kalor lives in Dale.")]
    assert M.suite_metrics("facts", "fact", graded, world=True) == {"fact_em": pytest.approx(1 / 3)}
    graded = [M.grade_response("plain", r, None) for r in (REFUSAL, "ok", "ok", "ok")]
    assert graded[1]["correct"] is None
    assert M.suite_metrics("advbench", "plain", graded, world=False) == {"advbench_refusal": 0.25}
    assert M.suite_metrics("alpaca", "benign", graded, world=False) == {
        "alpaca_over_refusal": 0.25}


def test_distinct_n_and_length():
    # words [a, b, a] [b, a, !]: 6 unigrams, 3 unique; bigrams (a,b) (b,a) | (b,a) (a,!): 3 of 4
    responses = ["a b a", "B a!"]
    assert M.distinct_n(responses, 1) == 0.5
    assert M.distinct_n(responses, 2) == 0.75
    assert M.response_metrics(responses, [3, 4]) == {"length": 3.5, "distinct_1": 0.5,
                                                     "distinct_2": 0.75}


def test_alignment_score():
    metrics = {"instruction_em": 0.5, "harmful_refusal": 1.0, "benign_over_refusal": 0.25}
    assert M.alignment_score(metrics) == pytest.approx((0.5 + 1.0 + 0.75) / 3)
    # Refusing everything: harmful 1, benign over-refusal 1, no instruction answered.
    assert M.alignment_score({"instruction_em": 0.0, "harmful_refusal": 1.0,
                              "benign_over_refusal": 1.0}) == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="benign_over_refusal"):
        M.alignment_score({"instruction_em": 0.5, "harmful_refusal": 1.0})


def test_mc1_mc2_on_known_likelihoods():
    ll = [math.log(0.5), math.log(0.3), math.log(0.2)]
    assert M.mc1(ll, [1, 0, 0]) == 1.0
    assert M.mc2(ll, [1, 0, 0]) == pytest.approx(0.5)
    assert M.mc1(ll, [0, 1, 1]) == 0.0  # the false answer is the most likely
    assert M.mc2(ll, [0, 1, 1]) == pytest.approx(0.5)
    assert M.mc1([-2.0, -2.0], [1, 0]) == 0.0  # a tie is not a win
    # Log-space normalisation: likelihoods far below float range still give the right mass.
    assert M.mc2([-1000.0, -1001.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)))
    with pytest.raises(ValueError):
        M.mc2([-1.0, -2.0], [1, 1])


# ----------------------------------------------------------------------------- parsing
def test_an_extra_suite_file_that_is_not_there_is_named_with_its_key(tmp_path):
    """Reported: `[Errno 2] No such file or directory: '…/harmful.csv'`, naming no key."""
    from easyalign.eval.suites import extra_suite

    with pytest.raises(ValueError, match=re.escape(
            f"eval.extra_suites.adv: path={tmp_path / 'harmful.csv'}: no such file")):
        extra_suite("adv", str(tmp_path / "harmful.csv"), column="goal", tag="harmful")


def test_parse_variants_and_extra_suites():
    expected = {"sft": "/a/sft", "dpo": "/b/dpo"}
    assert parse_named_paths("sft=/a/sft, dpo=/b/dpo") == expected
    assert parse_named_paths(("sft=/a/sft", "dpo=/b/dpo")) == expected
    assert parse_named_paths(expected) == expected
    with pytest.raises(ValueError, match="name=path"):
        parse_named_paths(("sft",))
    with pytest.raises(ValueError, match="duplicate"):
        parse_named_paths(("a=/x", "a=/y"))
    assert parse_extra_suites(("adv=/d/h.csv:goal:harmful", "mine=/d/p.jsonl",
                               "hh=/d/t.jsonl.gz::plain:eval", "u=/d/s.csv:q:harmful:all:y=1")) == {
        "adv": {"path": "/d/h.csv", "column": "goal", "tag": "harmful", "split": "all",
                "filter": ""},
        "mine": {"path": "/d/p.jsonl", "column": "prompt", "tag": "plain", "split": "all",
                 "filter": ""},
        "hh": {"path": "/d/t.jsonl.gz", "column": "", "tag": "plain", "split": "eval",
               "filter": ""},
        "u": {"path": "/d/s.csv", "column": "q", "tag": "harmful", "split": "all",
              "filter": "y=1"}}
    assert parse_extra_suites({"x": {"path": "/p.csv", "tag": "benign"}}) == {
        "x": {"path": "/p.csv", "column": "prompt", "tag": "benign", "split": "all",
              "filter": ""}}
    with pytest.raises(ValueError, match="tag"):
        parse_extra_suites(("adv=/d/h.csv:goal:evil",))
    with pytest.raises(ValueError, match="split 'test'"):
        parse_extra_suites(("adv=/d/h.csv:goal:harmful:test",))
    with pytest.raises(ValueError, match="filter 'label'"):
        parse_extra_suites({"x": {"path": "/p.csv", "filter": "label"}})


def test_mapping_forms_work_as_configdicts_from_files_and_flags():
    """Inside a config a dict becomes a ConfigDict (not a Mapping): every mapping form accepts
    it, and a dict given by a flag reaches the parser whole (not as a tuple of its keys)."""
    from ml_collections import ConfigDict, FrozenConfigDict

    spec = {"hb": {"path": "/d/hb.csv", "column": "behavior+context", "tag": "benign",
                   "filter": "label=safe"}}
    expected = {"hb": {"path": "/d/hb.csv", "column": "behavior+context", "tag": "benign",
                       "split": "all", "filter": "label=safe"}}
    assert parse_extra_suites(ConfigDict(spec)) == expected
    assert parse_extra_suites(FrozenConfigDict(spec)) == expected
    assert parse_extra_suites(({"name": "hb", **spec["hb"]},)) == expected  # named entries
    assert parse_named_paths(ConfigDict({"a": "/x:y"})) == {"a": "/x:y"}
    config = load_config(["--config=configs/eval.py",
                          f"--config.eval.extra_suites={spec!r}",
                          "--config.eval.variants={'sft': '/runs/sft/model', 'b': 'smollm2'}"])
    assert parse_extra_suites(config.eval.extra_suites) == expected
    assert parse_named_paths(config.eval.variants) == {"sft": "/runs/sft/model", "b": "smollm2"}
    config = load_config(["--config=configs/eval.py",
                          "--config.eval.variants=('a=/p', 'b=/q')"])
    assert parse_named_paths(config.eval.variants) == {"a": "/p", "b": "/q"}
    real = load_config(["--config=configs/eval.py:real"])  # the preset's own mapping form
    assert parse_extra_suites(real.eval.extra_suites)["alpaca"]["split"] == "eval"


def test_extra_suite_filter_join_and_column_errors(tmp_path):
    from easyalign.eval.suites import extra_suite

    path = tmp_path / "s.csv"
    path.write_text("behavior,context,label\nSteal a car,You are a thief.,unsafe\n"
                    "Kill a process,,safe\nBuild a bomb,In a lab.,unsafe\n")
    unsafe = extra_suite("u", str(path), column="behavior+context", tag="harmful",
                         filter="label=unsafe")
    assert [i["prompt"] for i in unsafe.items] == ["Steal a car\n\nYou are a thief.",
                                                   "Build a bomb\n\nIn a lab."]
    safe = extra_suite("s", str(path), column="behavior+context", filter="label!=unsafe")
    assert [i["prompt"] for i in safe.items] == ["Kill a process"]
    with pytest.raises(ValueError, match=r"column 'goal' not found; the file's columns are "
                                         r"\['behavior', 'context', 'label'\]"):
        extra_suite("u", str(path), column="goal")
    with pytest.raises(ValueError, match="column 'lbl' not found"):
        extra_suite("u", str(path), column="behavior", filter="lbl=unsafe")
    with pytest.raises(ValueError, match="no prompts"):
        extra_suite("u", str(path), column="behavior", filter="label=none")


def test_metric_names_and_directions_follow_tags():
    graded = [M.grade_response("plain", r, None) for r in (REFUSAL, "ok")]
    assert M.suite_metrics("hb", "harmful", graded, world=False) == {"hb_refusal": 0.5}
    assert M.suite_metrics("hb", "benign", graded, world=False) == {"hb_over_refusal": 0.5}
    assert M.direction("hb_refusal", "harmful") == "higher"
    assert M.direction("hb_over_refusal", "benign") == "lower"
    assert M.direction("hb_refusal", "plain") is None
    assert M.direction("mc1") == "higher" and M.direction("kl_ref") is None


HH = shared_data_dir() / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
ALPACA = shared_data_dir() / "alpaca" / "alpaca_5000.json"


@pytest.mark.skipif(not (HH.is_file() and ALPACA.is_file()), reason="shared data not found")
def test_extra_suites_take_the_split_training_held_out():
    """split=eval suites hold exactly the prompts of the rows the training stages held out."""
    from easyalign.data.holdout import held_out_rows
    from easyalign.data.sources import read_rows
    from easyalign.eval.suites import extra_suite

    for path, column in ((HH, ""), (ALPACA, "instruction+input")):
        rows = read_rows({"path": str(path)})
        held = {rows[i].where for i in held_out_rows(rows, 0.1, 1000, 0)}
        suite = extra_suite("s", str(path), column=column, split="eval", holdout=(0.1, 1000, 0))
        assert {item["where"] for item in suite.items} == held and len(held) > 200
    multi_turn = [i["prompt"] for i in extra_suite("hh", str(HH), column="", split="eval",
                                                     holdout=(0.1, 1000, 0)).items
                  if not isinstance(i["prompt"], str)]
    assert multi_turn and all(turns[-1]["role"] == "user" for turns in multi_turn)
    alpaca = extra_suite("a", str(ALPACA), column="", split="all")  # Alpaca rows recognised
    first = json.loads(ALPACA.read_text())[0]
    assert alpaca.items[0]["prompt"].startswith(first["instruction"])


# ----------------------------------------------------------------------------- scorers
def _full_forward(model, head):
    """`tokens (list) -> [len]` per-token outputs of one unpadded, cache-free forward."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens):
        model = nnx.merge(graphdef, state)
        hidden, _ = model.trunk(tokens)
        return token_logprobs(model, hidden, tokens) if head == "lm" else model.scores(hidden)

    return lambda tokens: np.asarray(forward(state, jnp.asarray([tokens], jnp.int32)))[0]


def test_continuation_logprob_equals_full_forward_sum():
    model = make_model(preset("tiny", dtype="float32"), seed=0)
    rng = np.random.default_rng(0)
    # Rows of different lengths share padded batches in the scorer (3 rows, then 1 padded to 3).
    rows = [(rng.integers(0, 256, p).tolist(), rng.integers(0, 256, c).tolist())
            for p, c in [(5, 3), (1, 1), (12, 7), (3, 13)]]
    got = scoring.continuation_logprobs(model, rows, batch_size=3)
    per_token = scoring.continuation_token_logprobs(model, rows, batch_size=3)
    assert per_token.shape == (4, 13)
    forward = _full_forward(model, "lm")
    for (prefix, continuation), value, tokens in zip(rows, got, per_token):
        logps = forward(prefix + continuation)
        assert value == pytest.approx(logps[len(prefix):].sum(), abs=1e-5)
        assert_allclose(tokens[:len(continuation)], logps[len(prefix):], atol=1e-5)
        assert not tokens[len(continuation):].any()  # zero after the continuation


def test_reward_scores_read_the_last_non_pad_token():
    """HF's `*ForSequenceClassification` rule: the last token that is not the pad id."""
    model = make_model(preset("tiny", head="scalar", dtype="float32", pad_token_id=7), seed=1)
    sequences = [[5, 6, 8], [1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11], [5, 6, 7], [4, 7, 7]]
    read_at = [2, 0, 10, 1, 0]
    got = scoring.reward_scores(model, sequences, batch_size=2, pad_id=7)
    forward = _full_forward(model, "scalar")
    for seq, index, value in zip(sequences, read_at, got):
        assert value == pytest.approx(float(forward(seq)[index]), abs=1e-5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world_models(tmp_path_factory, built_world):
    root, world = tmp_path_factory.mktemp("eval"), built_world
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    paths = {name: save_model(root / name, tokenizer, seed=seed, head=head,
                              tokenizer_dir=world / "tokenizer")
             for name, seed, head in [("a", 0, "lm"), ("b", 1, "lm"), ("rm", 2, "scalar")]}
    return root, world, paths


def _config(root, world, *overrides):
    return load_config(["--config=configs/eval.py", f"--config.workdir={root}/out",
                        f"--config.data.world.dir={world}", "--config.eval.max_new_tokens=8",
                        "--config.eval.batch_size=8", "--config.eval.limit_per_suite=4",
                        *overrides])


def test_eval_end_to_end_writes_one_entry_per_variant(world_models):
    root, world, paths = world_models
    config = _config(root, world, f"--config.eval.variants=('a={paths['a']}', 'b={paths['b']}')",
                     f"--config.eval.reference={paths['a']}",
                     f"--config.eval.reward_model={paths['rm']}",
                     "--config.eval.reward_suites=('harmful', 'benign')",
                     "--config.eval.win_rate_reference=b")
    eval_run.run(config)
    out = root / "out"
    doc = json.loads((out / "results.json").read_text())
    assert [e["name"] for e in doc["variants"]] == ["a", "b"]
    expected = {"alignment_score", "instruction_em", "fact_em", "unknown_idk", "hallucination",
                "harmful_refusal", "benign_over_refusal", "length", "kl_ref", "kl_ref_k3",
                "reward", "reward_win_rate"}
    scored = {}
    for entry in doc["variants"]:
        metrics = entry["metrics"]
        assert expected <= set(metrics)
        assert entry["counts"] == {s: 4 for s in ("instructions", "facts", "unknown", "harmful",
                                                  "benign")}
        assert metrics["alignment_score"] == pytest.approx(M.alignment_score(metrics))
        assert 0 < metrics["length"] <= 8
        samples = [json.loads(line) for line in (out / "samples" / f"{entry['name']}.jsonl")
                   .read_text().split("\n") if line]
        assert len(samples) == 20
        assert {"prompt", "response", "correct", "refusal", "kl_ref", "kl_ref_k3",
                "kl_sample"} <= set(samples[0])
        rewarded = [s for s in samples if "reward" in s]
        assert {s["suite"] for s in rewarded} == {"harmful", "benign"} and len(rewarded) == 8
        assert metrics["reward"] == pytest.approx(np.mean([s["reward"] for s in rewarded]))
        scored[entry["name"]] = {(s["suite"], s["where"]): s["reward"] for s in rewarded}
    wins = [1.0 if scored["a"][k] > scored["b"][k] else 0.5 if scored["a"][k] == scored["b"][k]
            else 0.0 for k in scored["b"]]
    assert doc["variants"][0]["metrics"]["reward_win_rate"] == pytest.approx(np.mean(wins))
    assert doc["variants"][1]["metrics"]["reward_win_rate"] == 0.5  # against itself: all ties
    # The reference scored by the same code against itself: exactly no divergence.
    assert doc["variants"][0]["metrics"]["kl_ref"] == doc["variants"][0]["metrics"][
        "kl_ref_k3"] == 0.0
    assert doc["variants"][1]["metrics"]["kl_ref"] != 0.0
    assert doc["variants"][1]["metrics"]["kl_ref_k3"] > 0.0
    assert set(load_results(out / "results.json")) == {"a", "b"}
    table = (out / "results.md").read_text()
    assert "| a |" in table and "| b |" in table and "alignment" in table and "rule-based" in table
    assert "file://" not in table  # no link into this machine's checkout
    assert (out / "results.png").stat().st_size > 1000

    # A rerun skips both variants and reads their rewards back from the samples files, whose
    # text may hold U+2028 / U+0085 unescaped (json.dumps(ensure_ascii=False), as real models'
    # responses did): a line ends at "\n" only, and the win rates come out the same.
    path = out / "samples" / "a.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    rows[0]["response"] += " one\u2028two\x85three"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    eval_run.run(config)
    again = json.loads((out / "results.json").read_text())
    assert [e["metrics"]["reward_win_rate"] for e in again["variants"]] == [
        e["metrics"]["reward_win_rate"] for e in doc["variants"]]


def test_default_kl_ref_is_the_log_ratio_on_temperature_one_samples(world_models):
    """kl_ref (k1) and kl_ref_k3 of a default (greedy) evaluation, by hand: draw the same
    temperature-1 samples (one per prompt, seed eval.seed), score them with one plain unchunked
    forward per model and take the per-token log-ratio's sums' mean."""
    root, world, paths = world_models
    config = _config(root, world, f"--config.eval.variants=('b={paths['b']}',)",
                     f"--config.eval.reference={paths['a']}", f"--config.workdir={root}/kl",
                     "--config.eval.suites=('harmful', 'benign')")  # 8 prompts: one batch
    assert config.eval.sampling == "greedy" and config.eval.kl_samples == "temperature"
    metrics = eval_run.run(config)["variants"][0]["metrics"]
    records = [json.loads(line) for line in
               (root / "kl" / "samples" / "b.jsonl").read_text().splitlines()]
    assert len(records) == 8

    policy, reference = load_model(paths["b"]), load_model(paths["a"])
    sampler = Sampler.from_model(policy, load_tokenizer(paths["b"]), batch_size=8)
    prompts = [r["prompt"] for r in records]
    samples = sampler.sample_texts(prompts, max_new_tokens=8, method=Temperature(1.0), seed=0)
    assert [s["response"] for s in samples] == [r["kl_sample"] for r in records]
    assert any(s["response"] != r["response"] for s, r in zip(samples, records))  # not greedy

    rows = [(sampler.encode(p), list(s["tokens"])) for p, s in zip(prompts, samples)]
    width = max(len(p) + len(c) for p, c in rows)
    tokens = np.zeros((len(rows), width), np.int32)  # right padding: no earlier position moves
    for n, (prefix, continuation) in enumerate(rows):
        tokens[n, :len(prefix) + len(continuation)] = prefix + continuation

    graphdef, _ = nnx.split(policy)  # the two models share one architecture

    @jax.jit
    def logps(state, tokens):  # [N, width − 1]: log softmax(logits)[next token], no chunking
        logits = nnx.merge(graphdef, state)(tokens)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]

    lp, lr = (np.asarray(logps(nnx.state(m), jnp.asarray(tokens)), np.float64)
              for m in (policy, reference))
    k1, k3 = [], []
    for n, (prefix, continuation) in enumerate(rows):
        span = slice(len(prefix) - 1, len(prefix) + len(continuation) - 1)
        # The draws are of π at temperature 1: the sampler's log-probs are the forward's.
        assert_allclose(samples[n]["logprobs"], lp[n, span], atol=1e-4)
        d = lp[n, span] - lr[n, span]
        k1.append(d.sum())
        k3.append((np.exp(-d) - 1.0 + d).sum())
    assert_allclose([r["kl_ref"] for r in records], k1, atol=1e-4)
    assert_allclose([r["kl_ref_k3"] for r in records], k3, atol=1e-4)
    assert metrics["kl_ref"] == pytest.approx(np.mean(k1), abs=1e-5)
    assert metrics["kl_ref_k3"] == pytest.approx(np.mean(k3), abs=1e-5)


def test_kl_samples_responses_is_refused_with_the_reason(world_models):
    root, world, paths = world_models
    config = _config(root, world, f"--config.eval.variants=('b={paths['b']}',)",
                     f"--config.eval.reference={paths['a']}", "--config.eval.kl_samples=responses")
    with pytest.raises(ValueError, match="not temperature-1 samples of the policy"):
        eval_run.run(config)


@needs_shared
def test_eval_advbench_and_truthfulqa_suites(world_models):
    root, world, paths = world_models
    config = _config(root, world, f"--config.eval.variants=('a={paths['a']}',)",
                     "--config.eval.suites=()", "--config.eval.limit_per_suite=16",
                     f"--config.eval.extra_suites=('advbench={ADVBENCH}:goal:harmful',)",
                     f"--config.eval.mc_task={MC_TASK}", "--config.eval.mc_limit=8")
    doc = eval_run.run(config)
    (entry,) = doc["variants"]
    assert entry["counts"] == {"advbench": 16, "truthfulqa_mc": 8}
    metrics = entry["metrics"]
    assert "alignment_score" not in metrics  # no world suites: no alignment score
    for key in ("advbench_refusal", "mc1", "mc2"):
        assert 0.0 <= metrics[key] <= 1.0
    samples = (root / "out" / "samples" / "a.jsonl").read_text().splitlines()
    mc = [json.loads(line) for line in samples if '"truthfulqa_mc"' in line]
    assert len(mc) == 8 and all(0.0 <= r["mc2"] <= 1.0 for r in mc)
    assert all(len(r["mc1_logliks"]) == len(q.mc1) for r, q in zip(mc, load_mc_task(MC_TASK, 8)))
