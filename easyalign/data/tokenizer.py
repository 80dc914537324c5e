"""A small byte-level BPE tokenizer for the built-in world, saved in Hugging Face format.

Real runs use the model's own HF tokenizer; the built-in world trains its own so that tiny models
get a tiny vocabulary (hundreds of tokens, not 32k-150k) and the whole pipeline stays hub-free.

Design:

* **Byte-level BPE** (pre-tokenizer and decoder): every string, in any script, encodes and decodes
  back to itself exactly; there is no unknown token and no normalisation.
* **Special tokens**, in this order, so their ids are fixed: ``<|pad|>`` = 0, ``<|bos|>`` = 1,
  ``<|end|>`` = 2, ``<|user|>``, ``<|assistant|>``, ``<|system|>``. ``<|end|>`` closes every turn
  *and* is the tokenizer's ``eos_token``, so generation stops at the end of the assistant's turn
  and the SFT loss mask (response tokens + EOS) teaches the model to stop.
* **Chat template** (:data:`CHAT_TEMPLATE`): ``<|bos|>`` then, per message,
  ``<|role|>\\n{content}<|end|>\\n``; ``add_generation_prompt`` appends ``<|assistant|>\\n``. Only
  the template inserts ``<|bos|>``: plain ``tokenizer(text)`` adds no special token, so a rendered
  conversation must be tokenized with ``add_special_tokens=False`` (or via
  ``apply_chat_template(..., tokenize=True)``) to avoid a second BOS. The assistant's content and
  its ``<|end|>`` are wrapped in ``{% generation %}``, so
  ``apply_chat_template(..., return_assistant_tokens_mask=True)`` yields the SFT loss mask.
* **Deterministic**: the same texts and vocabulary size give a byte-identical ``tokenizer.json``.
"""
from __future__ import annotations

import os
from typing import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, END = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
SPECIAL_TOKENS = (PAD, BOS, END, *ROLE_TOKENS.values())

# A system message may only come first; roles alternate freely otherwise (multi-turn is allowed).
# Whitespace control ({%- -%}) keeps the Jinja layout out of the rendered text.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{- raise_exception('a system message must come first') -}}"
    "{%- endif -%}"
    "{{- '<|' + message['role'] + '|>\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|end|>' -}}"
    "{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)

# Large enough that the world's common words are single tokens (a full SFT conversation is ~23
# tokens on average); small enough that the embedding and LM head of a d=128 model stay tiny.
DEFAULT_VOCAB_SIZE = 1024


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``, save it in HF format to ``out_dir``, and return it.

    ``vocab_size`` counts the 256 byte tokens and the special tokens, so it must exceed 262.
    ``AutoTokenizer.from_pretrained(out_dir)`` loads the result with its template and specials.
    """
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    bpe = tokenizers.Tokenizer(models.BPE())
    # No prefix space: the template puts a newline before every content, and round-trips must be exact.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once is noise, and would waste the small vocabulary
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[ROLE_TOKENS[role] for role in ("user", "assistant", "system")],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # HF's clean-up rewrites " ." to "." and breaks round-trips
        model_max_length=1024,
    )
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_world_tokenizer(world, out_dir: str | os.PathLike,
                          vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the tokenizer of a :class:`easyalign.data.world.World` on its training texts."""
    return train_tokenizer(world.all_texts(), vocab_size, out_dir)
