"""The HF fast tokenizer a GGUF file's metadata describes, special tokens and chat template.

    tokenizer = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.eos_token == "<|im_end|>"; tokenizer.chat_template == the file's template

Built from the file's `tokenizer.*` keys with the well-kept libraries: transformers'
`GGUFGPTConverter` makes the byte-level BPE (`tokenizer.ggml.tokens` + `tokenizer.ggml.merges`),
then three things are set from the metadata that transformers' own GGUF conversion gets wrong
or leaves out (transformers 5.17 reads SmolLM2's file with `eos_token = <|im_start|>`, because
its llama converter takes the eos token from `bos_token_id`, and without a pad token):

* **special tokens by id**: bos/eos/unk/pad are the tokens at `tokenizer.ggml.{bos,eos,
  unknown,padding}_token_id`; every token of type CONTROL (3) is a special added token and
  every USER_DEFINED (4) one an added token, as llama.cpp matches them whole in text;
* **the pre-tokenizer** named by `tokenizer.ggml.pre`, the regex split llama.cpp applies
  before BPE (`llama-vocab.cpp`, `regex_exprs` per `LLAMA_VOCAB_PRE_TYPE_*`), spelled the way
  the original HF `tokenizer.json` spells it (`PRE_TOKENIZERS`); an unknown value is refused;
* **BOS/EOS insertion** from `tokenizer.ggml.add_bos_token` / `add_eos_token`, and the chat
  template from `tokenizer.chat_template`.

Only byte-level BPE (`tokenizer.ggml.model = gpt2`, the Llama 3 / Qwen2 / SmolLM family) is
supported; SentencePiece files (`llama`) are refused with the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tokenizers import AddedToken, Regex, pre_tokenizers, processors

from easyalign.hf.gguf import GGUFError
from easyalign.hf.gguf.model import metadata, open_gguf

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's llama_token_type values

# llama.cpp's Llama 3 and Qwen2 splits as the original tokenizer.json files write them (the
# comment "original regex from tokenizer.json" above each in llama-vocab.cpp).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
           r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # llama.cpp: regex_exprs = {"\p{N}", <the GPT-2 split>}: every digit alone, then GPT-2.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _split_then_bytes(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
    return lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# tokenizer.ggml.pre → the HF pre-tokenizer llama.cpp's regexes correspond to.
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _gpt2, "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2, "starcoder": _digits_then_gpt2, "refact": _digits_then_gpt2,
    "llama-bpe": _split_then_bytes(_LLAMA3), "llama3": _split_then_bytes(_LLAMA3),
    "qwen2": _split_then_bytes(_QWEN2),
}


def build_tokenizer(path: str | Path):
    """A `PreTrainedTokenizerFast` from the GGUF file `path` (see the module docstring).

    Raises `GGUFError` naming the file and key for a tokenizer model or pre-tokenizer it cannot
    reproduce, or special-token ids outside the vocabulary.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import GGUFGPTConverter

    reader = open_gguf(path)
    where = reader.data.filename
    kind = metadata(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFError(f"{where}: tokenizer.ggml.model = {kind!r} is not supported (only "
                        "'gpt2', byte-level BPE)")
    pre = metadata(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{where}: tokenizer.ggml.pre = {pre!r} is not supported (supported: "
                        f"{sorted(PRE_TOKENIZERS)})")
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    types = metadata(reader, "tokenizer.ggml.token_type", [1] * len(tokens))

    backend = GGUFGPTConverter({"tokens": tokens,
                                "merges": metadata(reader, "tokenizer.ggml.merges")}).converted()
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == CONTROL])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == USER_DEFINED])

    def token_id(key: str) -> int | None:
        value = metadata(reader, f"tokenizer.ggml.{key}", None)
        if value is not None and not 0 <= value < len(tokens):
            raise GGUFError(f"{where}: tokenizer.ggml.{key} = {value} is outside the "
                            f"vocabulary of {len(tokens)} tokens")
        return value

    ids = {"bos_token": token_id("bos_token_id"), "eos_token": token_id("eos_token_id"),
           "unk_token": token_id("unknown_token_id"), "pad_token": token_id("padding_token_id")}
    specials = {name: tokens[i] for name, i in ids.items() if i is not None}
    added = [name for name, key in (("bos_token", "add_bos_token"), ("eos_token", "add_eos_token"))
             if metadata(reader, f"tokenizer.ggml.{key}", False)]
    if added:  # llama.cpp prepends BOS / appends EOS when encoding: the same post-processor
        single = [f"{specials[n]}:0" for n in added if n == "bos_token"] + ["$A:0"] + [
            f"{specials[n]}:0" for n in added if n == "eos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(single + ["$B:1"]),
            special_tokens=[(specials[n], ids[n]) for n in added])
    arch = metadata(reader, "general.architecture")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, **specials,
        chat_template=metadata(reader, "tokenizer.chat_template", None),
        model_max_length=metadata(reader, f"{arch}.context_length", int(1e30)),
        clean_up_tokenization_spaces=False)
