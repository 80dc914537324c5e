"""How a tokenizer's chat template frames a turn: BOS, generation prompt, end of turn, stop tokens.

Hugging Face tokenizers disagree about their special tokens: ChatML models close an assistant
turn with ``<|im_end|>``, Llama 3 with ``<|eot_id|>``, Gemma with ``<end_of_turn>``, while their
``eos_token`` may be another token altogether (``<|end_of_text|>`` on a Llama-3 base tokenizer;
``<|im_start|>`` after transformers' GGUF conversion of SmolLM2). Every sequence easyalign trains,
scores or samples is framed here, from what the template itself writes, so that it is the
sequence ``transformers`` renders and generation stops where ``transformers.generate`` stops.

Rendering (:class:`ChatFormat`):

* **Prompt** = ``bos_ids`` + ``encode(apply_chat_template(messages, add_generation_prompt=True))``
  with ``add_special_tokens=False`` — ``transformers``' own ``apply_chat_template(tokenize=True)``
  convention: a template writes its own BOS (Llama 3 does, ChatML writes none), so ``bos_ids`` is
  empty. A tokenizer *without* a chat template gets :data:`DEFAULT_CHAT_TEMPLATE`, and then
  ``bos_ids`` holds the special tokens the tokenizer itself puts before plain text
  (``tokenizer(text)``: Llama-2's ``<s>``): exactly the one BOS a base model saw in pretraining.
* **Completion** of an assistant turn = ``encode(body + end_of_turn_text)``: the text the template
  writes between the generation prompt and the end-of-turn token, inclusive, tokenised on its own
  (ChatML ``"Paris.<|im_end|>"``, Llama 3 ``"Paris.<|eot_id|>"``, Zephyr ``"Paris.</s>"``); what
  the template writes after that token (ChatML's ``"\\n"``) opens the next turn. The body is read
  from the rendering, not taken from the message, so a template that trims content (Llama 3's
  ``| trim``) is followed. If the template writes no special token after the content, the
  end-of-turn id (``eos_token``) is appended to ``encode(body)``.

End of turn (``end_of_turn_id``) is read off the template once per tokenizer: render the probe
conversation :data:`PROBE`, take the text after the assistant's content (``turn_suffix``), and
the first *special* token in it (added tokens flagged special, or the tokenizer's named special
tokens). It is what SFT, DPO, reward and distillation train as the end of a response, and a stop
token; when it differs from ``eos_token`` that is reported once (:func:`chat_format`).

Stop tokens (:func:`stop_token_ids`) — one rule for the sampler, ``sample``, ``generate``,
teacher data, PPO rollouts, on-policy distillation and eval:

    stops = eos ids of the model (config.json ∪ generation_config.json, see easyalign.hf.load)
            ∪ {end_of_turn_id} ∪ {tokenizer.eos_token_id}
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_CHAT_TEMPLATE", "PROBE", "ChatFormat", "ChatTemplateError", "chat_format",
           "completion_ids", "render_prompt", "stop_token_ids"]

# Zephyr's layout with plain-text role markers (they tokenise with any vocabulary), for
# tokenizers that ship no chat template (base models).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
PROBE = ({"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."})
_CACHE_ATTRIBUTE = "_easyalign_chat_format"
_reported: set[tuple] = set()


class ChatTemplateError(ValueError):
    """The chat template cannot frame a turn the way training and sampling need."""


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """The framing of one tokenizer's chat template (module docstring).

    Attributes:
      template: the template rendered: None for the tokenizer's own, else DEFAULT_CHAT_TEMPLATE.
      bos_ids: ids put before every rendered conversation (only with the default template).
      end_of_turn_id: the token that ends an assistant turn: trained, and a stop token.
      end_of_turn_text: the template's text from the end of the content through that token
        ("<|im_end|>"); "" when the template writes no special token there (the id is appended).
      turn_suffix: all the template writes after an assistant turn's content ("<|im_end|>\\n").
    """

    template: str | None
    bos_ids: tuple[int, ...]
    end_of_turn_id: int
    end_of_turn_text: str
    turn_suffix: str

    def render(self, tokenizer, messages: Sequence[dict[str, str]], *,
               generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt,
                                             chat_template=self.template)


def _encode(tokenizer, text: str) -> list[int]:
    # verbose=False: an example longer than the tokenizer's `model_max_length` is the data
    # pipeline's to report (`data.on_overflow` names it); transformers' "Token indices sequence
    # length is longer…" would be a second line about the same thing, in its terms.
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    ids.discard(tokenizer.unk_token_id)  # an unknown character is not a turn boundary
    return ids


def _leading_special_ids(tokenizer) -> tuple[int, ...]:
    """The ids `tokenizer(text)` puts before the text's own tokens (a BOS, usually)."""
    text = PROBE[0]["content"]
    plain, full = _encode(tokenizer, text), list(tokenizer(text)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _token(tokenizer, token_id: int | None) -> str:
    return "None" if token_id is None else repr(tokenizer.convert_ids_to_tokens(token_id))


def _probe(tokenizer) -> ChatFormat:
    template = None if getattr(tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
    draft = ChatFormat(template, (), -1, "", "")
    try:
        text = draft.render(tokenizer, PROBE, generation_prompt=False)
    except Exception as e:  # jinja errors carry no tokenizer name
        raise ChatTemplateError(f"{_name(tokenizer)}: the chat template cannot render a "
                                f"user/assistant conversation: {e}") from None
    content = PROBE[1]["content"]
    at = text.rfind(content)
    if at < 0:
        raise ChatTemplateError(f"{_name(tokenizer)}: the chat template does not write the "
                                "assistant's content verbatim; cannot tell where a turn ends")
    suffix = text[at + len(content):]
    encoded = tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tokenizer)
    eot_text, eot = "", None
    for token_id, (_, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if token_id in special:
            eot_text, eot = suffix[:end], token_id
            break
    if eot is None:
        eot = tokenizer.eos_token_id
        if eot is None:
            raise ChatTemplateError(f"{_name(tokenizer)}: the chat template writes no special "
                                    "token after an assistant turn and the tokenizer has no "
                                    "eos_token; set one")
    bos = _leading_special_ids(tokenizer) if template is not None else ()
    return ChatFormat(template, bos, eot, eot_text, suffix)


def chat_format(tokenizer) -> ChatFormat:
    """The tokenizer's `ChatFormat`, probed once and cached on the tokenizer object.

    Reports (once per process and tokenizer) an end of turn that differs from `eos_token`.
    Raises ChatTemplateError when the template cannot frame a turn.
    """
    cached = getattr(tokenizer, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return cached
    fmt = _probe(tokenizer)
    eos = tokenizer.eos_token_id
    key = (_name(tokenizer), fmt.end_of_turn_id, eos)
    if fmt.end_of_turn_id != eos and key not in _reported:
        _reported.add(key)
        import jax

        if jax.process_index() == 0:
            print(f"[tokens] {_name(tokenizer)}: the chat template ends an assistant turn with "
                  f"{_token(tokenizer, fmt.end_of_turn_id)} (id {fmt.end_of_turn_id}), not "
                  f"eos_token {_token(tokenizer, eos)} (id {eos}): responses are trained to end "
                  f"with {_token(tokenizer, fmt.end_of_turn_id)}; generation stops at either")
    setattr(tokenizer, _CACHE_ATTRIBUTE, fmt)
    return fmt


def render_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered with the generation prompt, ready for the reply.

    Training, the sampler and evaluation all render prompts here, so they see the same tokens.
    """
    fmt = chat_format(tokenizer)
    return list(fmt.bos_ids) + _encode(tokenizer, fmt.render(tokenizer, messages,
                                                             generation_prompt=True))


def completion_ids(tokenizer, context: Sequence[dict[str, str]], content: str) -> list[int]:
    """The tokens of the assistant turn `content` after `context`, through its end of turn.

    Returns `encode(body + end_of_turn_text)` (+ `[end_of_turn_id]` when the template writes no
    special token): exactly what follows `render_prompt(tokenizer, context)` when the template
    renders the turn. Raises ChatTemplateError when the generation prompt is not a prefix of the
    rendered turn, or the turn does not end as the probe conversation's did.
    """
    fmt = chat_format(tokenizer)
    prompt = fmt.render(tokenizer, context, generation_prompt=True)
    full = fmt.render(tokenizer, [*context, {"role": "assistant", "content": content}],
                      generation_prompt=False)
    if not full.startswith(prompt):
        raise ChatTemplateError("the chat template's generation prompt is not a prefix of the "
                                "rendered assistant turn; the model would be trained on a "
                                "prompt it never sees when sampling")
    rest = full[len(prompt):]
    if not rest.endswith(fmt.turn_suffix):
        raise ChatTemplateError(f"the chat template ends this assistant turn with "
                                f"{rest[-len(fmt.turn_suffix) - 8:]!r}, not with "
                                f"{fmt.turn_suffix!r} as in a plain conversation")
    body = rest[:len(rest) - len(fmt.turn_suffix)]
    ids = _encode(tokenizer, body + fmt.end_of_turn_text)
    return ids if fmt.end_of_turn_text else ids + [fmt.end_of_turn_id]


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def stop_token_ids(tokenizer, model_config=None) -> tuple[int, ...]:
    """The ids that end a response (module docstring), sorted; never empty.

    `model_config` is a ModelConfig (its `eos_token_id` holds config.json's and
    generation_config.json's ids) or None.
    """
    ids = set(_as_ids(getattr(model_config, "eos_token_id", None)))
    ids.add(chat_format(tokenizer).end_of_turn_id)
    ids.update(_as_ids(tokenizer.eos_token_id))
    return tuple(sorted(ids))
