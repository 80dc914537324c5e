"""Records: the four kinds normalise as documented; HH-RLHF dialogues split into prompt + final
turns; every bad record is a DataError naming its file, line and field."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from easyalign.data.records import (normalize, normalize_preference, normalize_prompts,
                                    normalize_sft, normalize_teacher)
from easyalign.data.sources import DataError, Record, load_records

SHARED = Path(os.environ.get("EASYALIGN_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def rec(data, line=1):
    return Record(data, f"data.jsonl:{line}")


def raises(line, field, message):
    prefix = re.escape(f"data.jsonl:{line}: field '{field}': ")
    return pytest.raises(DataError, match=prefix + ".*" + re.escape(message))


def test_sft_prompt_response_and_messages():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "name": "ignored"}]
    out = normalize_sft([rec({"prompt": "Hi", "response": "Hello", "weight": 0.5}),
                         rec({"messages": messages, "id": "x"}, 2)])
    assert out[0] == {"messages": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello"}],
                      "weight": 0.5, "source": "data.jsonl:1"}
    assert out[1]["messages"][-1] == {"role": "assistant", "content": "4"}
    assert out[1]["id"] == "x" and out[1]["source"] == "data.jsonl:2"


def test_sft_errors_name_record_and_field():
    with raises(3, "response", "missing"):
        normalize_sft([rec({"prompt": "p", "response": "r"}), rec({"prompt": "p"}, 3)])
    with raises(1, "response", "empty"):
        normalize_sft([rec({"prompt": "p", "response": "  "})])
    with raises(1, "prompt", "expected a string, got int"):
        normalize_sft([rec({"prompt": 7, "response": "r"})])
    with raises(1, "messages[1]", "content must be a string"):
        normalize_sft([rec({"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant", "content": None}]})])
    with raises(1, "messages[0]", "expected {role in"):
        normalize_sft([rec({"messages": [{"role": "human", "content": "a"}]})])
    with raises(1, "messages", "the last message must be an assistant turn"):
        normalize_sft([rec({"messages": [{"role": "user", "content": "a"}]})])
    with raises(1, "messages[1]", "empty assistant turn"):
        normalize_sft([rec({"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant", "content": ""},
                                         {"role": "user", "content": "b"},
                                         {"role": "assistant", "content": "c"}]})])


def test_preference_explicit_and_errors():
    out = normalize_preference([rec({"prompt": "p", "chosen": "good", "rejected": "bad"})])
    assert out == [{"prompt": [{"role": "user", "content": "p"}], "chosen": "good",
                    "rejected": "bad", "source": "data.jsonl:1"}]
    with raises(2, "rejected", "empty"):
        normalize_preference([rec({"prompt": "p", "chosen": "c", "rejected": ""}, 2)])
    out = normalize_preference([rec({"prompt": "p", "chosen": "c", "rejected": ""})],
                               allow_empty_responses=True)
    assert out[0]["rejected"] == ""
    with raises(1, "prompt", "not HH dialogues"):
        normalize_preference([rec({"chosen": "plain text", "rejected": "other text"})])


def test_hh_dialogue_split():
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    # The chosen answer quotes an Assistant marker; the split must still be the shared one.
    chosen = prefix + "\n\nAssistant: Sure.\n\nAssistant: is how a transcript looks."
    rejected = prefix + "\n\nAssistant: Sure, no."
    [out] = normalize_preference([rec({"chosen": chosen, "rejected": rejected})])
    assert out["prompt"] == [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Tell me a joke."}]
    assert out["chosen"] == "Sure.\n\nAssistant: is how a transcript looks."
    assert out["rejected"] == "Sure, no."
    diverged = {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
                "rejected": "\n\nHuman: a\n\nAssistant: x"}
    with raises(1, "chosen", "diverge before their final Assistant turn"):
        normalize_preference([rec(diverged)])


def test_hh_rlhf_harmless_base_test_file():
    path = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")
    records = load_records(str(path))
    # Four real pairs end with an empty Assistant turn: an error by default, naming the line...
    with pytest.raises(DataError, match=re.escape(f"{path}:87: field 'chosen': empty final")):
        normalize_preference(records)
    # ...and, when allowed, a bare-EOS response. Then every pair normalises.
    pairs = normalize_preference(records, allow_empty_responses=True)
    assert len(pairs) == 2312
    first = pairs[0]
    assert first["source"] == f"{path}:1"
    assert first["prompt"][0] == {"role": "user",
                                  "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1] == {
        "role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant"] * 2 + ["user"]
    assert first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert records[0].data["chosen"].endswith("\n\nAssistant: " + first["chosen"])
    assert records[0].data["rejected"].endswith("\n\nAssistant: " + first["rejected"])
    assert all(p["prompt"][-1]["role"] == "user" for p in pairs)


def test_prompts_and_teacher():
    out = normalize_prompts([rec({"prompt": [{"role": "user", "content": "q"}], "target": "t"})])
    assert out == [{"prompt": [{"role": "user", "content": "q"}], "target": "t",
                    "source": "data.jsonl:1"}]
    with raises(1, "prompt", "missing"):
        normalize_prompts([rec({"goal": "q"})])
    topk = {"ids": [[1, 2], [3, 4]], "logprobs": [[-0.1, -2.0], [-0.5, -1.0]]}
    [out] = normalize(
        [rec({"prompt": "q", "teacher_response": "a", "teacher_topk": topk})], "teacher")
    assert out["teacher_response"] == "a"
    assert out["teacher_topk"]["ids"].dtype == np.int32
    assert out["teacher_topk"]["logprobs"].shape == (2, 2)
    with raises(1, "teacher_response", "empty"):
        normalize_teacher([rec({"prompt": "q", "teacher_response": ""})])
    with raises(1, "teacher_topk", "must be equal [n, k] shapes"):
        normalize_teacher([rec({"prompt": "q", "teacher_response": "a",
                                "teacher_topk": {"ids": [[1, 2]], "logprobs": [[0.0]]}})])
    with pytest.raises(ValueError, match="unknown record kind"):
        normalize([], "dpo")
