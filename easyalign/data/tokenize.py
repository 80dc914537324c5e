"""Tokenise normalised examples with an HF tokenizer and its chat template; explicit truncation.

Token layout (the loss mask marks the *targets* that are trained, aligned with ``tokens``)::

    prompt  = encode(apply_chat_template(context, add_generation_prompt=True))   mask 0
    target  = encode(response, add_special_tokens=False) + [eos_id]              mask 1

so ``loss_mask[t] == 1`` iff token t is a response token or the EOS that ends the response; a
loss predicts token t from the logits at t-1. Templated text is encoded with
``add_special_tokens=False`` because templates write their own BOS (the HF convention).

SFT message lists with several assistant turns train every assistant turn and none of the context:
the conversation is rendered incrementally, and the generation-prompt rendering of each turn must
start with the tokens already laid down (previous rendering + response + EOS). A template that
renders an assistant turn as anything but ``content`` followed directly by ``eos_token`` breaks
this prefix property and is reported as an error rather than trained on a sequence the model
would never see at sampling time.

Tokenizers without a chat template use :data:`DEFAULT_CHAT_TEMPLATE`, the Zephyr layout with
plain-text role markers (they tokenise with any vocabulary)::

    <|system|>\\n{content}{eos}\\n<|user|>\\n{content}{eos}\\n<|assistant|>\\n{content}{eos}\\n

with ``<|assistant|>\\n`` as the generation prompt.

Truncation (:class:`TruncationPolicy`): a sequence is a prompt (the tokens before the first
trained token) plus a body. The prompt keeps at most ``max_prompt_length`` tokens (default
``max_length - 1``), cut from the LEFT so the most recent context survives; the body is then cut
from the RIGHT to fit ``max_length``. Preference pairs share one truncated prompt. Prompt examples
keep at most ``max_prompt_length`` (default ``max_length``) tokens. ``on_overflow`` decides what
happens to an example that exceeds a limit: ``"truncate"`` (as above), ``"drop"`` (skip it) or
``"error"`` (raise :class:`DataError` naming the record). :class:`TruncationStats` counts all of it.

Tokenised examples are dicts of numpy arrays (``tokens`` int32, ``loss_mask`` float32, ...; see
each function), plus ``source`` and the example's numeric scalar fields (``weight``, ...), which
the loader passes through to batches.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .sources import DataError

__all__ = ["DEFAULT_CHAT_TEMPLATE", "TruncationPolicy", "TruncationStats", "pad_token_id", "render_prompt",
           "tokenize_examples", "tokenize_sft", "tokenize_preference", "tokenize_prompt",
           "tokenize_teacher"]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

# Batch keys made by the loader; a record field of the same name would be clobbered.
RESERVED = frozenset({
    "tokens", "loss_mask", "positions", "segment_ids", "index", "valid", "prompt_tokens",
    "prompt_lengths", "teacher_topk_ids", "teacher_topk_logprobs",
    *(f"{side}_{k}" for side in ("chosen", "rejected")
      for k in ("tokens", "loss_mask", "positions", "segment_ids"))})
# Fields that a normalised example consumes (never passed through as extras).
_CORE = frozenset({"messages", "prompt", "chosen", "rejected", "teacher_response", "teacher_topk",
                   "source"})


@dataclasses.dataclass(frozen=True)
class TruncationPolicy:
    """Length limits and what to do with an example that exceeds them (module docstring)."""

    max_length: int
    max_prompt_length: int | None = None
    on_overflow: str = "truncate"  # "truncate" | "drop" | "error"

    def __post_init__(self):
        if self.on_overflow not in ("truncate", "drop", "error"):
            raise ValueError(f"on_overflow must be truncate|drop|error, got {self.on_overflow!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 <= max_prompt_length < max_length, got "
                             f"{self.max_prompt_length} and {self.max_length}")


@dataclasses.dataclass
class TruncationStats:
    """Counters over tokenised examples; ``tokens_dropped`` counts tokens cut by truncation."""

    seen: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"{self.seen} examples: {self.truncated} truncated ({self.tokens_dropped} tokens "
                f"dropped), {self.dropped} dropped")


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (pads are masked out, so any id works)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (responses end with EOS)")
    return tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered with the chat template and the generation prompt.

    A tokenizer's own template wins; `DEFAULT_CHAT_TEMPLATE` only fills in where there is none.
    Training, the sampler and evaluation all render prompts here, so they see the same tokens.
    """
    template = None if getattr(tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                         tokenize=False, chat_template=template)
    return _encode(tokenizer, text)


def _extras(example: dict[str, Any]) -> dict[str, Any]:
    """The example's numeric scalar fields, which travel to batches as [B] arrays."""
    out = {}
    for k, v in example.items():
        if k in _CORE or not isinstance(v, (bool, int, float, np.number)):
            continue
        if k in RESERVED:
            raise DataError(example["source"], "name is reserved for a batch key", field=k)
        out[k] = v
    return out


def _fit(example: dict, prompt_len: int, body_lens: Sequence[int], policy: TruncationPolicy,
         stats: TruncationStats) -> tuple[int, list[int]] | None:
    """How many prompt tokens (kept from the right) and body tokens (from the left) survive."""
    stats.seen += 1
    max_prompt = policy.max_prompt_length
    if not body_lens:  # a prompt-only example
        max_prompt = max_prompt or policy.max_length
    elif max_prompt is None:
        max_prompt = policy.max_length - 1  # keep room for at least one trained token
    keep_prompt = min(prompt_len, max_prompt)
    keep_body = [min(n, policy.max_length - keep_prompt) for n in body_lens]
    lost = prompt_len - keep_prompt + sum(body_lens) - sum(keep_body)
    if lost == 0:
        return keep_prompt, keep_body
    if policy.on_overflow == "error":
        raise DataError(example["source"],
                        f"{prompt_len} prompt + {list(body_lens)} response tokens exceed "
                        f"max_length={policy.max_length} / max_prompt_length={max_prompt} "
                        "(on_overflow='error')")
    if policy.on_overflow == "drop":
        stats.dropped += 1
        return None
    stats.truncated += 1
    stats.tokens_dropped += lost
    return keep_prompt, keep_body


def _sequence(prompt: list[int], body: list[int], mask: list[int], keep_prompt: int,
              keep_body: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = prompt[len(prompt) - keep_prompt:] + body[:keep_body]
    loss_mask = [0] * keep_prompt + mask[:keep_body]
    return np.asarray(tokens, np.int32), np.asarray(loss_mask, np.float32)


def tokenize_sft(example: dict, tokenizer, policy: TruncationPolicy,
                 stats: TruncationStats) -> dict[str, Any] | None:
    """``{messages}`` -> ``{tokens [L] int32, loss_mask [L] float32}``; None if dropped."""
    eos, messages = _eos_id(tokenizer), example["messages"]
    tokens: list[int] = []
    mask: list[int] = []
    prompt_len = None
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = render_prompt(tokenizer, messages[:i])
        if context[:len(tokens)] != tokens:
            raise DataError(example["source"], "the chat template breaks the prefix property: "
                            "rendering the conversation up to this turn does not start with the "
                            "previous turns' tokens + response + EOS (an assistant turn must "
                            "render as its content followed directly by eos_token)",
                            field=f"messages[{i}]")
        tokens += context[len(tokens):]
        mask += [0] * (len(tokens) - len(mask))
        prompt_len = len(tokens) if prompt_len is None else prompt_len
        response = _encode(tokenizer, message["content"]) + [eos]
        tokens += response
        mask += [1] * len(response)
    fit = _fit(example, prompt_len, [len(tokens) - prompt_len], policy, stats)
    if fit is None:
        return None
    seq, loss_mask = _sequence(tokens[:prompt_len], tokens[prompt_len:], mask[prompt_len:],
                               fit[0], fit[1][0])
    return {"tokens": seq, "loss_mask": loss_mask, "source": example["source"],
            **_extras(example)}


def tokenize_teacher(example: dict, tokenizer, policy: TruncationPolicy,
                     stats: TruncationStats) -> dict[str, Any] | None:
    """``{prompt, teacher_response[, teacher_topk]}`` -> SFT layout, plus, with top-k,
    ``teacher_topk_ids [L, k] int32`` / ``teacher_topk_logprobs [L, k] float32`` whose row t
    holds the teacher's candidates for token t (zeros where ``loss_mask`` is 0)."""
    prompt = render_prompt(tokenizer, example["prompt"])
    response = _encode(tokenizer, example["teacher_response"]) + [_eos_id(tokenizer)]
    topk = example.get("teacher_topk")
    if topk is not None and len(topk["ids"]) != len(response):
        raise DataError(example["source"], f"{len(topk['ids'])} rows, but the response is "
                        f"{len(response)} tokens including EOS", field="teacher_topk")
    fit = _fit(example, len(prompt), [len(response)], policy, stats)
    if fit is None:
        return None
    (keep_prompt, (keep_body,)) = fit
    tokens, loss_mask = _sequence(prompt, response, [1] * len(response), keep_prompt, keep_body)
    out = {"tokens": tokens, "loss_mask": loss_mask, "source": example["source"],
           **_extras(example)}
    if topk is not None:
        for key in ("ids", "logprobs"):
            rows = topk[key][:keep_body]
            pad = np.zeros((keep_prompt, rows.shape[1]), rows.dtype)
            out[f"teacher_topk_{key}"] = np.concatenate([pad, rows])
    return out


def tokenize_preference(example: dict, tokenizer, policy: TruncationPolicy,
                        stats: TruncationStats) -> dict[str, Any] | None:
    """``{prompt, chosen, rejected}`` -> ``{chosen_tokens, chosen_loss_mask, rejected_tokens,
    rejected_loss_mask}``: two sequences sharing one (identically truncated) prompt."""
    eos = _eos_id(tokenizer)
    prompt = render_prompt(tokenizer, example["prompt"])
    responses = [_encode(tokenizer, example[side]) + [eos] for side in ("chosen", "rejected")]
    fit = _fit(example, len(prompt), [len(r) for r in responses], policy, stats)
    if fit is None:
        return None
    out = {"source": example["source"], **_extras(example)}
    for side, response, keep_body in zip(("chosen", "rejected"), responses, fit[1]):
        out[f"{side}_tokens"], out[f"{side}_loss_mask"] = _sequence(
            prompt, response, [1] * len(response), fit[0], keep_body)
    return out


def tokenize_prompt(example: dict, tokenizer, policy: TruncationPolicy,
                    stats: TruncationStats) -> dict[str, Any] | None:
    """``{prompt}`` -> ``{prompt_tokens [L] int32}``, generation prompt appended, left-truncated."""
    prompt = render_prompt(tokenizer, example["prompt"])
    fit = _fit(example, len(prompt), [], policy, stats)
    if fit is None:
        return None
    return {"prompt_tokens": np.asarray(prompt[len(prompt) - fit[0]:], np.int32),
            "source": example["source"], **_extras(example)}


_TOKENIZERS = {"sft": tokenize_sft, "preference": tokenize_preference, "prompt": tokenize_prompt,
               "teacher": tokenize_teacher}


def tokenize_examples(examples: Sequence[dict], kind: str, tokenizer,
                      policy: TruncationPolicy) -> tuple[list[dict[str, Any]], TruncationStats]:
    """Tokenises every example of one kind; returns the survivors and the truncation counters."""
    if kind not in _TOKENIZERS:
        raise ValueError(f"unknown example kind {kind!r}; use one of {tuple(_TOKENIZERS)}")
    stats = TruncationStats()
    out = [_TOKENIZERS[kind](ex, tokenizer, policy, stats) for ex in examples]
    return [ex for ex in out if ex is not None], stats
