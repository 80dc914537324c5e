"""Tokenizers in the styles real models ship, built in a test without the hub.

Each style is a byte-level BPE (trained in milliseconds on a few sentences) with the special
tokens, the `eos_token`/`bos_token` settings and the chat template of a real model family:

* ``chatml``        SmolLM2-135M-Instruct / Qwen: ``<|im_start|>role\\n...<|im_end|>\\n``, eos
                    ``<|im_end|>``, no BOS; the template is SmolLM2's own (from its GGUF).
* ``chatml_gguf``   the same tokenizer as transformers' GGUF conversion of SmolLM2 leaves it:
                    ``eos_token`` = ``<|im_start|>`` (the end of turn is still ``<|im_end|>``).
* ``llama3``        a Llama-3 *base* tokenizer: ``<|begin_of_text|>`` written by the template,
                    turns end with ``<|eot_id|>`` but ``eos_token`` is ``<|end_of_text|>``.
* ``base_bos``      a base model without a chat template whose tokenizer adds ``<s>`` to plain
                    text itself (Llama-2 style post-processor), eos ``</s>``.
* ``zephyr``        plain-text role markers (``<|user|>`` is not a token) and ``</s>`` after
                    every message, eos ``</s>``.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = ["What is the capital of France? The capital of France is Paris.",
          "Hello there, how are you today? I am fine, thanks for asking.",
          "Tell me a joke about cats. Cats are funny animals that sleep a lot.",
          "Write a haiku: quiet morning light, a cup of tea grows cold."] * 4

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

STYLES = {
    # style: (special tokens, tokenizer settings, chat template, add BOS to plain text)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
                    unk_token="<|endoftext|>"), SMOLLM2_TEMPLATE, False),
    "chatml_gguf": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                    dict(bos_token="<|im_start|>", eos_token="<|im_start|>",
                         unk_token="<|endoftext|>"), SMOLLM2_TEMPLATE, False),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"],
               dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"),
               LLAMA3_TEMPLATE, False),
    "base_bos": (["<unk>", "<s>", "</s>"],
                 dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), None, True),
    "zephyr": (["<unk>", "<s>", "</s>"],
               dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), ZEPHYR_TEMPLATE,
               False),
}
END_OF_TURN = {"chatml": "<|im_end|>", "chatml_gguf": "<|im_end|>", "llama3": "<|eot_id|>",
               "base_bos": "</s>", "zephyr": "</s>"}


def make_tokenizer(style: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A fast HF tokenizer of `style` (module docstring); specials have ids 0, 1, 2, ..."""
    specials, settings, template, add_bos = STYLES[style]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        bos = settings["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, bpe.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, chat_template=template,
                                   clean_up_tokenization_spaces=False, **settings)
