"""Tokenisation: loss masks cover exactly the response tokens and EOS (hand-checked token lists),
every assistant turn of a conversation is trained, truncation is explicit and counted."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from easyalign.data.records import (normalize_preference, normalize_prompts, normalize_sft,
                                    normalize_teacher)
from easyalign.data.sources import DataError, Record, load_records
from easyalign.data.tokenize import (TruncationPolicy, TruncationStats, pad_token_id,
                                     tokenize_examples)

SHARED = Path(os.environ.get("EASYALIGN_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
# A word-level vocabulary makes every expected token list readable by hand. The Whitespace
# pre-tokenizer drops newlines and splits "<|user|>" into "<|", "user", "|>".
WORDS = ("[PAD] </s> [UNK] <| |> user assistant system hi there how are you fine thanks "
         "a b c d e f g h").split()
ID = {w: i for i, w in enumerate(WORDS)}
POLICY = TruncationPolicy(max_length=64)


def word_tokenizer(chat_template=None):
    tok = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="[PAD]",
                                   unk_token="[UNK]", chat_template=chat_template)


def ids(text):
    return [ID[w] for w in text.split()]


def sft(*records):
    return normalize_sft([Record(r, f"data.jsonl:{i + 1}") for i, r in enumerate(records)])


def test_sft_mask_is_response_plus_eos():
    [ex], stats = tokenize_examples(sft({"prompt": "hi there", "response": "fine thanks"}),
                                    "sft", word_tokenizer(), POLICY)
    # Default template: "<|user|>\nhi there</s>\n<|assistant|>\n" + "fine thanks" + EOS.
    expected = ids("<| user |> hi there </s> <| assistant |>") + ids("fine thanks </s>")
    assert ex["tokens"].tolist() == expected
    assert ex["tokens"].dtype == np.int32 and ex["loss_mask"].dtype == np.float32
    assert ex["loss_mask"].tolist() == [0] * 9 + [1, 1, 1]
    assert ex["source"] == "data.jsonl:1"
    assert stats == TruncationStats(seen=1)


def test_every_assistant_turn_is_trained():
    conversation = [{"role": "system", "content": "a"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "fine"}, {"role": "user", "content": "how"},
                    {"role": "assistant", "content": "fine thanks"}]
    [ex], _ = tokenize_examples(sft({"messages": conversation}), "sft", word_tokenizer(), POLICY)
    segments = [("<| system |> a </s> <| user |> hi </s> <| assistant |>", 0), ("fine </s>", 1),
                ("<| user |> how </s> <| assistant |>", 0), ("fine thanks </s>", 1)]
    assert ex["tokens"].tolist() == [t for text, _ in segments for t in ids(text)]
    assert ex["loss_mask"].tolist() == [m for text, m in segments for _ in ids(text)]


def test_tokenizer_template_wins_and_prefix_breaks_are_errors():
    # The tokenizer's own template (here: a "b" before every turn) is used, and as it ends
    # assistant turns with EOS it keeps the prefix property.
    own = ("{% for m in messages %}b <|{{ m['role'] }}|> {{ m['content'] }}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}b <|assistant|>{% endif %}")
    two_turns = {"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "how"}, {"role": "assistant", "content": "c"}]}
    [ex], _ = tokenize_examples(sft(two_turns), "sft", word_tokenizer(own), POLICY)
    assert ex["tokens"].tolist() == ids("b <| user |> hi </s> b <| assistant |> a </s> "
                                        "b <| user |> how </s> b <| assistant |> c </s>")
    # This one renders a past assistant turn without its EOS: the model would be trained on a
    # sequence it never sees when sampling, so it is an error naming record and turn.
    broken = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
              "{% if m['role'] != 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(DataError, match=re.escape("data.jsonl:1: field 'messages[3]': the chat "
                                                  "template breaks the prefix property")):
        tokenize_examples(sft(two_turns), "sft", word_tokenizer(broken), POLICY)


def test_preference_prompt_and_extras():
    tok = word_tokenizer()
    pairs = normalize_preference([Record({"prompt": "hi", "chosen": "fine", "rejected": "a b",
                                          "weight": 2.0}, "p.jsonl:1")])
    [ex], _ = tokenize_examples(pairs, "preference", tok, POLICY)
    prompt = ids("<| user |> hi </s> <| assistant |>")
    assert ex["chosen_tokens"].tolist() == prompt + ids("fine </s>")
    assert ex["rejected_tokens"].tolist() == prompt + ids("a b </s>")
    assert ex["chosen_loss_mask"].tolist() == [0] * len(prompt) + [1, 1]
    assert ex["rejected_loss_mask"].tolist() == [0] * len(prompt) + [1, 1, 1]
    assert set(ex) == {"chosen_tokens", "chosen_loss_mask", "rejected_tokens",
                       "rejected_loss_mask", "source"}  # `weight` is not consumed: not passed on
    [ex], _ = tokenize_examples(normalize_prompts([Record({"prompt": "how are you"}, "q:1")]),
                                "prompt", tok, POLICY)
    assert ex["prompt_tokens"].tolist() == ids("<| user |> how are you </s> <| assistant |>")
    assert pad_token_id(tok) == ID["[PAD]"]


def test_columns_a_phase_does_not_consume_are_ignored():
    """A null in one row, 8 then 7.5, a column named like a batch key: none reaches a batch."""
    from easyalign.data.loader import make_train_loader

    rows = [{"prompt": "hi", "response": "fine", "index": 3, "score": 8, "note": None},
            {"prompt": "how", "response": "fine thanks", "index": 4, "score": 7.5, "note": "x"}]
    examples = sft(*rows)
    tokenized, _ = tokenize_examples(examples, "sft", word_tokenizer(), POLICY)
    batch = next(make_train_loader(tokenized, kind="sft", global_batch=2, max_length=16,
                                   pad_id=0, seed=0))
    assert not {"score", "note"} & set(batch)
    assert sorted(batch["index"].tolist()) == [0, 1]  # the loader's own example index


def test_truncation_is_counted_and_follows_the_policy():
    tok = word_tokenizer()
    long = {"messages": [{"role": "user", "content": "a b c d e"},
                         {"role": "assistant", "content": "e f g h"}]}
    short = {"prompt": "hi", "response": "fine"}
    examples = sft(short, long)  # short: 8 + 2 tokens; long: 12 prompt + 5 response tokens
    policy = TruncationPolicy(max_length=12, max_prompt_length=8)
    out, stats = tokenize_examples(examples, "sft", tok, policy)
    # The prompt keeps its LAST 8 tokens, the response its FIRST 4 (EOS is cut: it did not end).
    assert out[1]["tokens"].tolist() == ids("b c d e </s> <| assistant |>") + ids("e f g h")
    assert out[1]["loss_mask"].tolist() == [0] * 8 + [1] * 4
    assert stats == TruncationStats(seen=2, truncated=1, dropped=0, tokens_dropped=4 + 1)
    out, stats = tokenize_examples(examples, "sft", tok,
                                   TruncationPolicy(12, 8, on_overflow="drop"))
    assert len(out) == 1 and out[0]["source"] == "data.jsonl:1"
    assert stats == TruncationStats(seen=2, dropped=1)
    with pytest.raises(DataError, match=r"data\.jsonl:2: 12 prompt \+ \[5\] response tokens exc"):
        tokenize_examples(examples, "sft", tok, TruncationPolicy(12, 8, on_overflow="error"))
    # Preference pairs share one truncated prompt; each response is cut to fit on its own.
    pairs = normalize_preference([Record({"prompt": "a b c d", "chosen": "e", "rejected": "f g h"},
                                         "p:1")])
    [ex], stats = tokenize_examples(pairs, "preference", tok, TruncationPolicy(9, 6))
    assert ex["chosen_tokens"].tolist() == ids("c d </s> <| assistant |> e </s>")
    assert ex["rejected_tokens"].tolist() == ids("c d </s> <| assistant |> f g h")
    assert stats == TruncationStats(seen=1, truncated=1, tokens_dropped=5 + 1)
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        TruncationPolicy(8, 8)


def test_default_prompt_limit_leaves_the_response_room():
    """No max_prompt_length: the prompt is cut just enough for the longest response, but keeps
    half the window (the trial: a 2,200-token prompt left one response token per side)."""
    tok = word_tokenizer()
    # chosen "e" → 2 tokens (e </s>), rejected "f g h" → 4.
    pairs = normalize_preference([Record({"prompt": "a b c d", "chosen": "e", "rejected": "f g h"},
                                         "p:1")])
    [ex], stats = tokenize_examples(pairs, "preference", tok, TruncationPolicy(10))
    # max_prompt = max(10 − 4, 10 // 2) = 6: both responses whole, the prompt's last 6 tokens.
    assert ex["chosen_tokens"].tolist() == ids("c d </s> <| assistant |> e </s>")
    assert ex["rejected_tokens"].tolist() == ids("c d </s> <| assistant |> f g h </s>")
    prompt = len(ids("<| user |> a b c d </s> <| assistant |>"))
    assert stats == TruncationStats(seen=1, truncated=1, tokens_dropped=prompt - 6)
    # A response longer than half the window: the prompt keeps half (5), the response the rest.
    long = normalize_preference([Record({"prompt": "a b c d", "chosen": "e f g h a b c",
                                         "rejected": "f"}, "p:2")])
    [ex], _ = tokenize_examples(long, "preference", tok, TruncationPolicy(10))
    assert ex["chosen_tokens"].tolist() == ids("d </s> <| assistant |> e f g h a")
    assert ex["rejected_tokens"].tolist() == ids("d </s> <| assistant |> f </s>")


def test_teacher_topk_rows_align_with_response_tokens():
    topk = {"ids": [[13, 14], [14, 13], [1, 13]],
            "logprobs": [[-0.1, -2.5], [-0.2, -2.0], [0.0, -9.0]]}
    teacher = normalize_teacher([Record({"prompt": "hi", "teacher_response": "fine thanks",
                                         "teacher_topk": topk}, "t:1")])
    # The whole prompt kept (max_prompt_length 9): the response loses its end of turn.
    [ex], _ = tokenize_examples(teacher, "teacher", word_tokenizer(), TruncationPolicy(10, 9))
    assert ex["tokens"].tolist() == ids("<| user |> hi </s> <| assistant |> fine thanks")
    assert ex["teacher_topk_ids"].tolist() == [[0, 0]] * 8 + [[13, 14], [14, 13]]
    np.testing.assert_allclose(ex["teacher_topk_logprobs"][8:], [[-0.1, -2.5], [-0.2, -2.0]])
    bad = normalize_teacher([Record({"prompt": "hi", "teacher_response": "fine",
                                     "teacher_topk": topk}, "t:2")])
    with pytest.raises(DataError, match=re.escape("t:2: field 'teacher_topk': 3 rows, but the "
                                                  "response is 2 tokens")):
        tokenize_examples(bad, "teacher", word_tokenizer(), POLICY)


def test_gpt2_bpe_on_hh_rlhf_round_trips():
    gpt2 = SHARED / "gpt2-tokenizer"
    hh = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"
    if not (gpt2 / "encoder.json").exists() or not hh.exists():
        pytest.skip(f"shared data {gpt2} or {hh} is absent")
    bpe = Tokenizer(models.BPE.from_file(str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    assert pad_token_id(tok) == tok.eos_token_id == 50256  # GPT-2 has no pad token
    pairs = normalize_preference(load_records(str(hh))[:50])
    out, stats = tokenize_examples(pairs, "preference", tok, TruncationPolicy(1024, 768))
    assert len(out) == 50 and stats.seen == 50
    for pair, ex in zip(pairs, out):
        for side in ("chosen", "rejected"):
            mask = ex[f"{side}_loss_mask"].astype(bool)
            tokens = ex[f"{side}_tokens"]
            assert tok.decode(tokens[~mask]).endswith(pair["prompt"][-1]["content"] +
                                                      "<|endoftext|>\n<|assistant|>\n")
            if len(tokens) < 1024:  # untruncated: the trained tokens are the final turn + EOS
                assert tok.decode(tokens[mask]) == pair[side] + "<|endoftext|>"


def test_truncation_report_counts_names_the_key_and_is_loud_when_most_are_cut():
    from easyalign.data.tokenize import source_name, truncation_report

    tok = word_tokenizer()
    short = {"prompt": "hi", "response": "fine"}            # 8 prompt + 2 response tokens
    long = {"prompt": "a b c d e", "response": "e f g h"}   # 12 prompt + 5 response tokens
    policy = TruncationPolicy(max_length=12)  # long keeps 11 + 1 tokens: 17 - 12 = 5 are cut

    def report(*records, policy=policy):
        examples = sft(*records)
        _, stats = tokenize_examples(examples, "sft", tok, policy)
        return truncation_report(stats, policy, kind="sft", source=source_name(examples))

    assert source_name(sft(short, long)) == "data.jsonl"
    assert report(short, short) == ""
    assert report(short, short, long) == (
        "[data] data.jsonl: 1 of 3 sft examples exceed data.max_length=12 (1 truncated, 5 "
        "tokens cut); raise data.max_length to keep them whole")
    # Most or all: a warning, tagged [data] as the other data lines (reported: it was not).
    assert report(long, long, short).startswith(
        "[data] data.jsonl: WARNING: 2 of 3 sft examples exceed data.max_length=12")
    assert report(long, long) == (
        "[data] data.jsonl: WARNING: ALL 2 sft examples exceed data.max_length=12 (2 truncated, 10 "
        "tokens cut); raise data.max_length")
    capped = TruncationPolicy(12, 8)
    assert report(long, policy=capped).endswith(
        "exceed data.max_length=12 / data.max_prompt_length=8 (1 truncated, 5 tokens cut); "
        "raise data.max_length or data.max_prompt_length")
    dropping = TruncationPolicy(12, on_overflow="drop")
    assert "1 dropped" in report(short, short, long, policy=dropping)
    # Every example dropped: nothing would be left to train on.
    with pytest.raises(DataError, match=re.escape(
            "data.jsonl: all 2 sft examples exceed data.max_length=12, and data.on_overflow=drop "
            "dropped every one, leaving nothing: raise data.max_length")):
        report(long, long, policy=dropping)


def test_a_phase_reports_truncation_once_naming_its_prompt_budget(capsys):
    from types import SimpleNamespace

    from ml_collections import ConfigDict

    from easyalign.algorithms import runsetup

    config = ConfigDict({"phase": "ppo", "ppo": {"max_new_tokens": 4},
                         "data": {"max_length": 16, "max_prompt_length": 0,
                                  "on_overflow": "truncate"}})
    run = SimpleNamespace(config=config, tokenizer=word_tokenizer(), is_main=True)
    prompts = normalize_prompts([Record({"prompt": "a b c d e"}, f"p.jsonl:{i}")
                                 for i in (1, 2)])  # 12 prompt tokens each
    out = runsetup.tokenize(run, prompts, "prompt", max_length=16 - 4)
    assert [len(ex["prompt_tokens"]) for ex in out] == [12, 12]  # they fit the budget
    assert capsys.readouterr().out == ""
    out = runsetup.tokenize(run, prompts, "prompt", max_length=10)
    assert capsys.readouterr().out == (
        "[data] p.jsonl: WARNING: ALL 2 prompt examples exceed data.max_length − "
        "ppo.max_new_tokens=10 (2 truncated, 4 tokens cut); raise data.max_length − "
        "ppo.max_new_tokens\n")
