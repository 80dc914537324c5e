"""Records: the four kinds normalise as documented; HH-RLHF dialogues split into prompt + final
turns; every bad record is a DataError naming its file, line and field."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from easyalign.data.records import (Dropped, Skip, normalize, normalize_preference,
                                    normalize_prompts, normalize_sft, normalize_teacher)
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
                      "prompt": "Hi", "response": "Hello",  # the file's fields ride along
                      "weight": 0.5, "source": "data.jsonl:1"}
    assert out[1]["messages"][-1] == {"role": "assistant", "content": "4"}
    assert out[1]["id"] == "x" and out[1]["source"] == "data.jsonl:2"


def test_sft_errors_name_record_and_field():
    with raises(3, "response", "missing"):
        normalize_sft([rec({"prompt": "p", "response": "r"}), rec({"prompt": "p"}, 3)])
    with raises(1, "response", "empty"):
        normalize_sft([rec({"prompt": "p", "response": "  "})])
    with raises(1, "prompt", "expected a string, got the number 7"):
        normalize_sft([rec({"prompt": 7, "response": "r"})])
    with raises(1, "response", "expected a string, got an object"):
        normalize_sft([rec({"prompt": "p", "response": {"text": "r"}})])
    with raises(1, "messages[1]", "content must be a string, got a list"):
        normalize_sft([rec({"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant", "content": [{"text": "r"}]}]})])
    with raises(1, "messages[1]", "the message has no content"):
        normalize_sft([rec({"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant"}]})])
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
                               on_empty="keep")
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
    # ...and, when kept, a bare end-of-turn response. Then every pair normalises.
    pairs = normalize_preference(records, on_empty="keep")
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


# ------------------------------------------------------------------- formats users bring
def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_sharegpt_conversations_for_sft_and_prompts():
    conversation = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "2+2?"},
                    {"from": "assistant", "value": "4"}]
    [sft] = normalize_sft([rec({"conversations": conversation, "id": 7})])
    assert sft == {"messages": [{"role": "system", "content": "Be brief."}, user("Hi"),
                                assistant("Hello"), user("2+2?"), assistant("4")],
                   "conversations": conversation, "id": 7, "source": "data.jsonl:1"}
    # The same turns under `messages` (e.g. mapped with data.columns.messages=...) read alike.
    assert normalize_sft([rec({"messages": conversation})])[0]["messages"] == sft["messages"]
    [prompt] = normalize_prompts([rec({"conversations": conversation})])
    assert prompt["prompt"] == sft["messages"][:-1]  # all but the final assistant turn
    with raises(1, "conversations[1]", "expected ShareGPT {from in"):
        normalize_sft([rec({"conversations": [conversation[0], {"from": "bot", "value": "x"}]})])
    with raises(1, "conversations", "the last message must be an assistant turn"):
        normalize_sft([rec({"conversations": conversation[:2]})])


def test_alpaca_rows_are_detected():
    rows = [rec({"instruction": "Add.", "input": "2 2", "output": "4"}),
            rec({"instruction": "Greet.", "input": "", "output": "Hi"}, 2)]
    out = normalize_sft(rows)
    assert [ex["messages"] for ex in out] == [[user("Add.\n\n2 2"), assistant("4")],
                                              [user("Greet."), assistant("Hi")]]
    # instruction/input/output ride along beside the derived messages
    assert set(out[0]) == {"messages", "instruction", "input", "output", "source"}
    assert [ex["prompt"] for ex in normalize_prompts(rows)] == [[user("Add.\n\n2 2")],
                                                                [user("Greet.")]]
    with raises(1, "output", "missing"):
        normalize_sft([rec({"instruction": "Add."})])


def test_unknown_sft_layout_names_the_options():
    with pytest.raises(DataError, match=re.escape("data.jsonl:4: no SFT fields: expected "
                                                  "messages, conversations (ShareGPT), prompt + "
                                                  "response, or instruction + output")):
        normalize_sft([rec({"question": "q", "answer": "a"}, 4)])


def test_ultrafeedback_conversation_pairs():
    row = {"prompt": "Name a colour.", "prompt_id": "x1", "score_chosen": 8.0,
           "chosen": [user("Name a colour."), assistant("Blue.")],
           "rejected": [user("Name a colour."), assistant("A car.")],
           "messages": [user("Name a colour."), assistant("Blue.")]}
    [pair] = normalize_preference([rec(row)])
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (
        [user("Name a colour.")], "Blue.", "A car.")
    assert pair["prompt_id"] == "x1" and "messages" in pair  # unconsumed fields ride along
    # Without a prompt field, multi-turn: the shared history is the prompt.
    history = [{"role": "system", "content": "Be kind."}, user("Hi"), assistant("Hello"),
               user("Name a colour.")]
    [pair] = normalize_preference([rec({"chosen": history + [assistant("Blue.")],
                                        "rejected": history + [assistant("A car.")]})])
    assert pair["prompt"] == history and pair["chosen"] == "Blue."
    # A prompt string equal to the last user turn keeps the whole history.
    [pair] = normalize_preference([rec({"prompt": "Name a colour.",
                                        "chosen": history + [assistant("Blue.")],
                                        "rejected": history + [assistant("A car.")]})])
    assert pair["prompt"] == history
    # TRL's explicit-prompt form: the lists hold only the response turn.
    [pair] = normalize_preference([rec({"prompt": [user("Name a colour.")],
                                        "chosen": [assistant("Blue.")],
                                        "rejected": [assistant("A car.")]})])
    assert pair["prompt"] == [user("Name a colour.")] and pair["rejected"] == "A car."
    # The prompt kind reads the shared history of such a pair.
    [prompt] = normalize_prompts([rec({"chosen": history + [assistant("Blue.")],
                                       "rejected": history + [assistant("A car.")]})])
    assert prompt["prompt"] == history


def test_ultrafeedback_pairs_that_do_not_fit_are_errors():
    chosen = [user("Q"), assistant("A")]
    with raises(5, "rejected", "chosen and rejected differ before their final assistant turn"):
        normalize_preference([rec({"chosen": chosen, "rejected": [user("Other Q"),
                                                                  assistant("B")]}, 5)])
    with raises(1, "prompt", "differs from the conversation before the final assistant turn"):
        normalize_preference([rec({"prompt": "Another question", "chosen": chosen,
                                   "rejected": [user("Q"), assistant("B")]})])
    with raises(1, "rejected", "the last message must be an assistant turn"):
        normalize_preference([rec({"chosen": chosen, "rejected": [user("Q")]})])
    with raises(1, "rejected", "must both be message lists"):
        normalize_preference([rec({"prompt": "Q", "chosen": chosen, "rejected": "B"})])
    with raises(1, "prompt", "missing: chosen/rejected hold only the response"):
        normalize_preference([rec({"chosen": [assistant("A")], "rejected": [assistant("B")]})])


def test_hh_dialogues_as_prompts():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Sure."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."
    [out] = normalize_prompts([rec({"chosen": chosen, "rejected": rejected})])
    assert out["prompt"] == [user("Hi"), assistant("Hello!"), user("A joke?")]


# ------------------------------------------------------------------- empty text, no preference
EMPTY_CASES = [  # (kind, record, field, reason)
    ("sft", {"prompt": "p", "response": " "}, "response", "empty response"),
    ("sft", {"prompt": "p", "response": None}, "response", "empty response"),  # JSON null
    ("preference", {"prompt": "p", "chosen": "c", "rejected": None}, "rejected", "empty rejected"),
    ("sft", {"prompt": "", "response": "r"}, "prompt", "empty prompt"),
    ("sft", {"instruction": "Add.", "input": "", "output": ""}, "output", "empty response"),
    ("sft", {"messages": [user("a"), assistant(""), user("b"), assistant("c")]}, "messages[1]",
     "empty assistant turn"),
    ("sft", {"conversations": [{"from": "human", "value": "\n"}, {"from": "gpt", "value": "c"}]},
     "conversations[0]", "empty user turn"),
    ("sft", {"messages": [user("a"), {"role": "assistant", "content": None}]}, "messages[1]",
     "empty assistant turn"),  # JSON null content
    ("sft", {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "c"}]},
     "conversations[0]", "empty user turn"),
    ("preference", {"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "empty chosen"),
    ("preference", {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("")]},
     "rejected", "empty rejected"),
    ("preference", {"chosen": "\n\nHuman: q\n\nAssistant:",
                    "rejected": "\n\nHuman: q\n\nAssistant: no"}, "chosen",
     "empty final Assistant turn"),
    ("prompt", {"prompt": "  "}, "prompt", "empty prompt"),
    ("teacher", {"prompt": "q", "teacher_response": ""}, "teacher_response",
     "empty teacher_response"),
]


@pytest.mark.parametrize("kind,data,field,reason", EMPTY_CASES)
def test_on_empty_error_drop_and_keep(kind, data, field, reason):
    good = {"sft": {"prompt": "p", "response": "r"},
            "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
            "prompt": {"prompt": "p"}, "teacher": {"prompt": "p", "teacher_response": "t"}}[kind]
    records = [rec(good, 1), rec(data, 2), rec(good, 3)]
    # error: names record, field, and the config key to change.
    with raises(2, field, f"{reason} (data.on_empty=error); set data.on_empty=drop"):
        normalize(records, kind)
    # drop: the record is skipped and reported.
    dropped = Dropped()
    out = normalize(records, kind, on_empty="drop", dropped=dropped)
    assert [ex["source"] for ex in out] == ["data.jsonl:1", "data.jsonl:3"]
    assert dropped.by_reason == {reason: ["data.jsonl:2"]} and dropped.empty == 1
    assert dropped.summary() == f"{reason} ×1 (data.jsonl:2)"
    # keep: the record is trained as it is.
    assert [ex["source"] for ex in normalize(records, kind, on_empty="keep")] == [
        "data.jsonl:1", "data.jsonl:2", "data.jsonl:3"]


def test_identical_responses_are_dropped_whatever_on_empty():
    rows = [rec({"prompt": "p", "chosen": "same", "rejected": " same\n"}, 1),
            rec({"chosen": [user("q"), assistant("x")],
                 "rejected": [user("q"), assistant("x")]}, 2),
            rec({"chosen": "\n\nHuman: q\n\nAssistant: x", "rejected": "\n\nHuman: q\n\nAssistant:"
                 " x "}, 3),
            rec({"prompt": "p", "chosen": "a", "rejected": "b"}, 4),
            rec({"prompt": "p", "chosen": "", "rejected": ""}, 5)]
    for on_empty in ("drop", "keep"):
        dropped = Dropped()
        out = normalize_preference(rows, on_empty=on_empty, dropped=dropped)
        assert [ex["source"] for ex in out] == ["data.jsonl:4"]
        wheres = [f"data.jsonl:{i}" for i in (1, 2, 3)]
        expected = {"chosen == rejected": wheres + ["data.jsonl:5"]} if on_empty == "keep" else {
            "chosen == rejected": wheres, "empty chosen": ["data.jsonl:5"]}
        assert dropped.by_reason == expected
        assert dropped.empty == (on_empty == "drop")
    # Without a report to add to, what was dropped is a warning, never silent.
    with pytest.warns(UserWarning, match=re.escape("dropped 3 of 4 preference records: chosen "
                                                   "== rejected ×3 (data.jsonl:1, data.jsonl:2, "
                                                   "data.jsonl:3)")):
        normalize_preference(rows[:4])
    with pytest.raises(ValueError, match="data.on_empty: 'skip' is not one of"):
        normalize_preference(rows, on_empty="skip")


def test_dropped_summary_shows_the_first_few_per_reason():
    dropped = Dropped()
    for i in range(1, 6):
        dropped.add(Skip(f"/data/x.jsonl:{i}", "empty response"))
    dropped.add(Skip("/data/x.jsonl:9", "chosen == rejected"))
    assert len(dropped) == 6
    assert dropped.summary() == ("empty response ×5 (x.jsonl:1, x.jsonl:2, x.jsonl:3, 2 more); "
                                 "chosen == rejected ×1 (x.jsonl:9)")


# ------------------------------------------------------------------- the shipped real files
def test_hh_rlhf_drops_exactly_the_empty_final_turns():
    path = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")
    records = load_records(str(path))
    dropped = Dropped()
    pairs = normalize_preference(records, on_empty="drop", dropped=dropped)
    assert dropped.by_reason == {"empty final Assistant turn": [f"{path}:{n}"
                                                                for n in (87, 517, 926, 1104)]}
    assert len(pairs) == len(records) - 4 == 2308
    # The prompt kind needs no response: every pair gives its prompt.
    assert len(normalize_prompts(records)) == 2312


def test_alpaca_empty_outputs_are_the_ones_dropped():
    import json

    path = SHARED / "alpaca/alpaca_5000.json"
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")
    rows = json.loads(path.read_text(encoding="utf-8"))
    empty = [f"{path}[{i}]" for i, row in enumerate(rows) if not row["output"].strip()]
    assert empty  # the file has some (two in the shipped subset)
    dropped = Dropped()
    examples = normalize_sft(load_records(str(path)), on_empty="drop", dropped=dropped)
    assert dropped.by_reason == {"empty response": empty}
    assert len(examples) == len(rows) - len(empty)
    first = rows[0]
    prompt = first["instruction"] + (f"\n\n{first['input']}" if first["input"].strip() else "")
    assert examples[0]["messages"] == [user(prompt), assistant(first["output"])]
