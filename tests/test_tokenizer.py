"""The world tokenizer: exact round-trips, the documented chat template, HF save/load, small lengths."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from easyalign.data.tokenizer import CHAT_TEMPLATE, build_world_tokenizer, train_tokenizer
from easyalign.data.world import WorldConfig, build_world

CONVERSATION = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig())


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tokenizer")
    return build_world_tokenizer(world, out_dir), out_dir


def _world_texts(world):
    texts = list(world.all_texts())
    texts += [item["prompt"] for items in world.eval_suites.values() for item in items]
    return texts + [r["prompt"] for r in world.preference_heldout]


def test_round_trip_on_world_and_foreign_text(world, saved):
    tokenizer, _ = saved
    foreign = ["héllo wörld 日本語 🙂", "  leading spaces\tand tabs\n\nnewlines  ", "C:\\path\\x.py --flag=1", ""]
    for text in _world_texts(world) + foreign:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_special_tokens(saved):
    tokenizer, _ = saved
    assert tokenizer.eos_token == "<|end|>" and tokenizer.eos_token_id == 2
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|bos|>", 1)
    for token in ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert tokenizer("How do I kill a Python process?")["input_ids"][0] != tokenizer.bos_token_id  # no auto-BOS
    assert len(tokenizer) <= 1024


def test_chat_template_renders_as_documented(saved):
    tokenizer, _ = saved
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n"
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}] + CONVERSATION, tokenize=False)
    assert text == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2 + 3?<|end|>\n<|assistant|>\n5<|end|>\n"
    with pytest.raises(Exception, match="system message must come first"):
        tokenizer.apply_chat_template(CONVERSATION + [{"role": "system", "content": "x"}], tokenize=False)
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_response_and_end(saved):
    tokenizer, _ = saved
    out = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"])
    assert [t for t, m in zip(tokens, out["assistant_masks"]) if m] == ["5", "<|end|>"]
    assert tokens[0] == "<|bos|>" and tokens.count("<|bos|>") == 1


def test_reload_from_disk_is_identical(world, saved):
    tokenizer, out_dir = saved
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.eos_token == "<|end|>" and reloaded.pad_token_id == 0 and reloaded.bos_token == "<|bos|>"
    for text in _world_texts(world)[:500]:
        assert reloaded.encode(text) == tokenizer.encode(text)
    assert (reloaded.apply_chat_template(CONVERSATION, tokenize=False)
            == tokenizer.apply_chat_template(CONVERSATION, tokenize=False))


def test_training_is_deterministic(world, saved, tmp_path):
    _, out_dir = saved
    train_tokenizer(world.all_texts(), 1024, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (out_dir / "tokenizer.json").read_bytes()
    other = build_world(WorldConfig(seed=1))
    train_tokenizer(other.all_texts(), 1024, tmp_path / "other")
    assert json.loads((tmp_path / "other" / "tokenizer.json").read_text()) != json.loads(
        (out_dir / "tokenizer.json").read_text())


def test_world_conversations_are_short(world, saved):
    tokenizer, _ = saved
    prompts, responses, conversations = [], [], []
    pairs = [(r["prompt"], r["response"]) for r in world.sft_train]
    pairs += [(r["prompt"], r["rejected"]) for r in world.preference_train]
    for prompt, response in pairs:
        prompts.append(len(tokenizer.encode(prompt)))
        responses.append(len(tokenizer.encode(response)))
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        conversations.append(len(tokenizer.apply_chat_template(messages)["input_ids"]))
    assert np.percentile(prompts, 95) <= 20 and max(prompts) <= 24
    assert np.percentile(responses, 95) <= 16
    assert np.percentile(conversations, 95) < 48 and np.mean(conversations) < 30


def test_tiny_vocab_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], 100, tmp_path)
