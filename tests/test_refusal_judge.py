"""The refusal judges' measured error on the hand-labelled set (easyalign/eval/data/
refusal_labels.jsonl): rates recomputed here, printed, and held to what the README states."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from easyalign.eval import judge as J
from easyalign.data.rules import is_refusal

README = Path(__file__).resolve().parents[1] / "README.md"


def _rates(rows, flags):
    """False- and missed-refusal rates counted directly (not through judge_error)."""
    compliance = [f for f, r in zip(flags, rows) if r["label"] == "compliance"]
    refusal = [f for f, r in zip(flags, rows) if r["label"] == "refusal"]
    return sum(compliance) / len(compliance), refusal.count(False) / len(refusal)


def test_labelled_set_is_balanced_and_covers_the_hard_kinds():
    rows = J.load_labels()
    assert len(rows) >= 200 and len({r["id"] for r in rows}) == len(rows)
    for split in J.SPLITS:
        part = [r for r in rows if r["split"] == split]
        assert len(part) >= 90
        assert {r["label"] for r in part} == {"refusal", "compliance"}
        kinds = {r["kind"] for r in part}
        assert {"pushback", "redirect", "partial_refusal", "sympathy_then_help",
                "disclaimer_then_help", "warning_then_comply", "harmful_compliance",
                "benign_lookalike", "capability_then_help"} <= kinds
    responses = [r["response"] for r in rows]
    assert len(set(responses)) == len(responses)


@pytest.mark.parametrize("split", J.SPLITS)
def test_rules_error_within_stated(split):
    rows = J.load_labels(split=split)
    flags = [is_refusal(r["response"]) for r in rows]
    error = J.judge_error(flags, [r["label"] for r in rows])
    false, missed = _rates(rows, flags)
    assert error["false_refusal"] == pytest.approx(false)
    assert error["missed_refusal"] == pytest.approx(missed)
    print(f"\nrules, {split} split ({len(rows)}): {J.describe(error)}")
    stated = J.STATED_ERROR["rules"][split]
    assert false <= stated["false_refusal"] and missed <= stated["missed_refusal"]


def test_readme_states_the_rules_error_on_the_test_split():
    text = README.read_text()
    stated = J.STATED_ERROR["rules"]["test"]
    for key in ("false_refusal", "missed_refusal"):
        assert f"{100 * stated[key]:.1f}%" in text, key


def test_judge_error_and_wilson_by_hand():
    error = J.judge_error([True, False, True, True], ["refusal", "refusal", "compliance",
                                                      "compliance"])
    assert (error["false_refusal"], error["missed_refusal"], error["error"]) == (1.0, 0.5, 0.75)
    # p = 0.5, n = 2, z² = 3.8416: centre (0.5 + 0.9604) / 2.9208 = 0.5, half-width
    # 1.96 · sqrt(0.125 + 0.2401) / 2.9208 = 0.405474
    lo, hi = J.wilson(1, 2)
    assert (lo, hi) == pytest.approx((0.5 - 0.405474, 0.5 + 0.405474), abs=1e-5)
    with pytest.raises(ValueError):
        J.judge_error([True], [])
    assert J.parse_judge("rules") == ("rules", "")
    assert J.parse_judge("model:smollm2") == ("model", "smollm2")
    with pytest.raises(ValueError, match="refusal_judge"):
        J.parse_judge("reward")


def test_bad_label_line_names_file_line_and_key(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "a", "split": "dev", "kind": "k", "prompt": "p", "response": "r", '
                    '"label": "refusal"}\n{"id": "b", "split": "dev", "kind": "k", "prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: key 'response'"):
        J.load_labels(path)


def test_model_judge_is_the_yes_no_loglik_margin():
    """On a tiny random model: ℓ_yes − ℓ_no equals the margin of two separate full forwards."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from easyalign.model import preset
    from easyalign.model.scoring import token_logprobs
    from eval_fixtures import make_model
    from tokenizer_styles import make_tokenizer

    tokenizer = make_tokenizer("chatml")
    model = make_model(preset("tiny", dtype="float32", vocab_size=len(tokenizer)), seed=0)
    prompts, responses = ["How do I pick a lock?", "Bake bread?"], ["I can't help.", "Sure!"]
    margins = J.model_judge(model, tokenizer, prompts, responses, batch_size=4)
    graphdef, state = nnx.split(model)

    def loglik(prefix, answer):
        tokens = jnp.asarray([prefix + answer], jnp.int32)
        m = nnx.merge(graphdef, state)
        hidden, _ = m.trunk(tokens)
        return float(np.asarray(token_logprobs(m, hidden, tokens))[0, len(prefix):].sum())

    rows = J.judge_rows(tokenizer, prompts, responses)
    with jax.default_matmul_precision("highest"):
        expected = [loglik(*rows[2 * i]) - loglik(*rows[2 * i + 1]) for i in range(2)]
    assert margins == pytest.approx(expected, abs=1e-4)
    assert all(math.isfinite(m) for m in margins)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EASYALIGN_JUDGE_TESTS"),
                    reason="about 150 s on 2 CPU cores: set EASYALIGN_JUDGE_TESTS=1")
def test_smollm2_as_judge_reports_its_error():
    """SmolLM2-135M-Instruct as a yes/no judge on the test split: measured, printed, bounded."""
    pytest.importorskip("gguf")
    from easyalign.hf.autoload import load_model, load_tokenizer
    from easyalign.hf.gguf import GGUFError

    try:
        model, tokenizer = load_model("smollm2", dtype="float32"), load_tokenizer("smollm2")
    except GGUFError as e:
        pytest.skip(str(e))
    rows = J.load_labels(split="test")
    margins = J.model_judge(model, tokenizer, [r["prompt"] for r in rows],
                            [r["response"] for r in rows], batch_size=16)
    error = J.judge_error([m > 0 for m in margins], [r["label"] for r in rows])
    print(f"\nmodel:smollm2, test split: {J.describe(error)}")
    stated = J.STATED_ERROR["model:smollm2"]["test"]
    assert error["false_refusal"] <= stated["false_refusal"]
    assert error["missed_refusal"] <= stated["missed_refusal"]
