"""The records a GRPO reward receives (`grpo.prompt_records`) keep every field of the user's
file beside the prompt easyalign derives, whatever layout the prompt was read from (Alpaca,
ShareGPT, a preference pair, a `data.columns` mapping); a file's own `source` column is kept as
`input_source` (records.py docstring). Expected values come from the rows written here."""
import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from easyalign.algorithms import grpo, runsetup
from easyalign.cli import load_config


def tokenizer():
    words = "[PAD] </s> [UNK]".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="[PAD]",
                                   unk_token="[UNK]")


def reward_records(path: Path, *flags: str) -> list[dict]:
    config = load_config(["--config=configs/grpo.py:tiny", f"--config.data.source={path}",
                          "--config.data.eval_source=", *flags])
    run = runsetup.Run(config=config, mesh=None, workdir=path.parent, tokenizer=tokenizer(),
                       source_dirs={})
    _, records = grpo.prompt_records(run, "train", 512, ())
    return records


ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "Name a colour.", "input": "", "output": "red"},
          {"instruction": "Spell cat backwards.", "input": "", "output": "tac", "source": "web"}]


def test_alpaca_rows_keep_their_reference_answer(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA), encoding="utf-8")
    records = reward_records(path)
    assert [r["output"] for r in records] == ["5", "red", "tac"]
    assert [r["instruction"] for r in records] == [row["instruction"] for row in ALPACA]
    assert [r["input"] for r in records] == [row["input"] for row in ALPACA]
    assert [r["prompt"] for r in records] == ["Add the numbers.\n\n2 and 3", "Name a colour.",
                                              "Spell cat backwards."]
    assert [r["source"] for r in records] == [f"{path}[{i}]" for i in range(3)]
    assert records[2]["input_source"] == "web" and "input_source" not in records[0]


def test_sharegpt_and_preference_rows_keep_their_fields(tmp_path):
    conversation = [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]
    rows = [{"conversations": conversation, "id": 1},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.", "id": 2}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    first, second = reward_records(path)
    assert first["prompt"] == "What is 2+2?" and first["conversations"] == conversation
    assert first["id"] == 1
    assert second["prompt"] == "Hi" and second["id"] == 2
    assert (second["chosen"], second["rejected"]) == (rows[1]["chosen"], rows[1]["rejected"])


def test_mapped_columns_keep_the_rows_other_fields(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "prompt": "system text", "answer": str(i + 1)}
            for i in range(3)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = reward_records(path, "--config.data.columns.prompt=question")
    assert [r["prompt"] for r in records] == [r["question"] for r in rows]
    assert [r["answer"] for r in records] == ["1", "2", "3"]
    assert [r["question"] for r in records] == [r["question"] for r in rows]
    # the file's own `prompt` column, not the one the mapping read, under a clear name
    assert [r["input_prompt"] for r in records] == ["system text"] * 3
