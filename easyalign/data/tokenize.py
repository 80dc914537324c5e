"""Tokenise normalised examples with an HF tokenizer and its chat template; explicit truncation.

Token layout (the loss mask marks the *targets* that are trained, aligned with ``tokens``)::

    prompt  = render_prompt(tokenizer, context)             chat template + generation prompt  mask 0
    target  = completion_ids(tokenizer, context, response)  response + end of turn             mask 1

so ``loss_mask[t] == 1`` iff token t is a response token or the end-of-turn token that closes
it (``<|im_end|>``, ``<|eot_id|>``, ``</s>``: what the template writes, see
:mod:`easyalign.data.chat_format`, which also decides BOS); a loss predicts token t from the
logits at t-1. Prompt + target is the sequence ``transformers`` renders for the conversation
(``apply_chat_template(tokenize=True)``) up to and including the end of turn.

SFT message lists with several assistant turns train every assistant turn and none of the context:
the conversation is rendered incrementally, and the generation-prompt rendering of each turn must
start with the tokens already laid down (previous rendering + response + end of turn). A template
that breaks this prefix property is reported as an error rather than trained on a sequence the
model would never see at sampling time.

Truncation (:class:`TruncationPolicy`): a sequence is a prompt (the tokens before the first
trained token) plus a body. The prompt keeps at most ``max_prompt_length`` tokens (default:
``max_length`` minus the longest body, but never under ``max_length // 2`` — the response fits
whole when it can, the prompt keeps half the window when it cannot), cut from the LEFT so the
most recent context survives; the body is then cut from the RIGHT to fit ``max_length``. Preference pairs share one truncated prompt. Prompt examples
keep at most ``max_prompt_length`` (default ``max_length``) tokens. ``on_overflow`` decides what
happens to an example that exceeds a limit: ``"truncate"`` (as above), ``"drop"`` (skip it) or
``"error"`` (raise :class:`DataError` naming the record). :class:`TruncationStats` counts all of it,
and :func:`truncation_report` turns the counts of one dataset into one line: how many examples of
how many were cut or dropped, at which ``max_length``, and the config key to raise. When most or
all of them were, the line is a warning that starts with the source's name (a ``max_length``
that cuts every example trains on nothing the user meant); when every one was dropped it is an
error, since nothing is left to train on.

Tokenised examples are dicts of numpy arrays (``tokens`` int32, ``loss_mask`` float32, ...; see
each function) plus ``source``. Other fields of a record are not consumed here: they never reach a
batch (generate keeps them for its output lines from the normalised example).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .chat_format import ChatTemplateError, chat_format, completion_ids, render_prompt
from .sources import DataError, source_file

__all__ = ["TruncationPolicy", "TruncationStats", "pad_token_id", "render_prompt",
           "source_name", "tokenize_examples", "tokenize_sft", "tokenize_preference",
           "tokenize_prompt", "tokenize_teacher", "truncation_report"]


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
    """The tokenizer's pad id, else the id that ends a turn (pads are masked out, so any id
    works; HF's `*ForSequenceClassification` skips trailing pad ids when reading a reward)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else \
        chat_format(tokenizer).end_of_turn_id


def _completion(example: dict, tokenizer, context, content: str, field: str) -> list[int]:
    try:
        return completion_ids(tokenizer, context, content)
    except ChatTemplateError as e:
        raise DataError(example["source"], str(e), field=field) from None


def _fit(example: dict, prompt_len: int, body_lens: Sequence[int], policy: TruncationPolicy,
         stats: TruncationStats) -> tuple[int, list[int]] | None:
    """How many prompt tokens (kept from the right) and body tokens (from the left) survive."""
    stats.seen += 1
    max_prompt = policy.max_prompt_length
    if not body_lens:  # a prompt-only example
        max_prompt = max_prompt or policy.max_length
    elif max_prompt is None:
        # Cut the prompt just enough for the longest response to fit, keeping at least half
        # the window: a long dialogue before a short answer keeps the answer whole (it was cut
        # to max_length − 1 prompt tokens, leaving a pair one trained token per side).
        max_prompt = min(policy.max_length - 1,
                         max(policy.max_length - max(body_lens), policy.max_length // 2))
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
    messages = example["messages"]
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
                            "previous turns' tokens + response + end of turn",
                            field=f"messages[{i}]")
        tokens += context[len(tokens):]
        mask += [0] * (len(tokens) - len(mask))
        prompt_len = len(tokens) if prompt_len is None else prompt_len
        response = _completion(example, tokenizer, messages[:i], message["content"],
                               f"messages[{i}]")
        tokens += response
        mask += [1] * len(response)
    fit = _fit(example, prompt_len, [len(tokens) - prompt_len], policy, stats)
    if fit is None:
        return None
    seq, loss_mask = _sequence(tokens[:prompt_len], tokens[prompt_len:], mask[prompt_len:],
                               fit[0], fit[1][0])
    return {"tokens": seq, "loss_mask": loss_mask, "source": example["source"]}


def tokenize_teacher(example: dict, tokenizer, policy: TruncationPolicy,
                     stats: TruncationStats) -> dict[str, Any] | None:
    """``{prompt, teacher_response[, teacher_topk]}`` -> SFT layout, plus, with top-k,
    ``teacher_topk_ids [L, k] int32`` / ``teacher_topk_logprobs [L, k] float32`` whose row t
    holds the teacher's candidates for token t (zeros where ``loss_mask`` is 0)."""
    prompt = render_prompt(tokenizer, example["prompt"])
    response = _completion(example, tokenizer, example["prompt"], example["teacher_response"],
                           "teacher_response")
    topk = example.get("teacher_topk")
    if topk is not None and len(topk["ids"]) != len(response):
        raise DataError(example["source"], f"{len(topk['ids'])} rows, but the response is "
                        f"{len(response)} tokens including the end of turn",
                        field="teacher_topk")
    fit = _fit(example, len(prompt), [len(response)], policy, stats)
    if fit is None:
        return None
    (keep_prompt, (keep_body,)) = fit
    tokens, loss_mask = _sequence(prompt, response, [1] * len(response), keep_prompt, keep_body)
    out = {"tokens": tokens, "loss_mask": loss_mask, "source": example["source"]}
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
    prompt = render_prompt(tokenizer, example["prompt"])
    responses = [_completion(example, tokenizer, example["prompt"], example[side], side)
                 for side in ("chosen", "rejected")]
    fit = _fit(example, len(prompt), [len(r) for r in responses], policy, stats)
    if fit is None:
        return None
    out = {"source": example["source"]}
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
            "source": example["source"]}


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


def source_name(examples: Sequence[dict]) -> str:
    """The file(s) examples came from, from their ``source`` (``"a.jsonl:3"`` -> ``a.jsonl``)."""
    files = list(dict.fromkeys(source_file(str(ex.get("source", "?"))) for ex in examples))
    if len(files) > 2:
        return f"{files[0]} and {len(files) - 1} more sources"
    return " + ".join(files) or "?"


def truncation_report(stats: TruncationStats, policy: TruncationPolicy, *, kind: str,
                      source: str, prefix: str = "data.", key: str | None = None) -> str:
    """One line on what the length limits did to one dataset ("" when they cut nothing).

    The settings are named as the config has them: ``{prefix}max_length``,
    ``{prefix}max_prompt_length`` and ``{prefix}on_overflow``; ``key`` names the setting behind
    ``policy.max_length`` when it is not ``{prefix}max_length`` (a prompt budget such as
    ``data.max_length - ppo.max_new_tokens``). When most (more than half) or all of the examples
    were cut or dropped, the line starts with ``source`` and says ``WARNING``, so that it stands
    out of the log. Raises :class:`DataError` naming ``source`` and the key to raise when every
    example was dropped (``on_overflow="drop"``): nothing would be left to train on.
    """
    hit = stats.truncated + stats.dropped
    if not hit:
        return ""
    key = key or f"{prefix}max_length"
    limit, raise_keys = f"{key}={policy.max_length}", key
    if policy.max_prompt_length is not None:  # the prompt's own limit may be the one that cut
        limit += f" / {prefix}max_prompt_length={policy.max_prompt_length}"
        raise_keys += f" or {prefix}max_prompt_length"
    if stats.dropped == stats.seen:
        raise DataError(source, f"all {stats.seen} {kind} examples exceed {limit}, and "
                                f"{prefix}on_overflow=drop dropped every one, leaving nothing: "
                                f"raise {raise_keys}, or set {prefix}on_overflow=truncate")
    what = []
    if stats.truncated:
        what.append(f"{stats.truncated} truncated, {stats.tokens_dropped} tokens cut")
    if stats.dropped:
        what.append(f"{stats.dropped} dropped")
    if 2 * hit > stats.seen:  # most or all: the data trained on is not the data given
        share = f"ALL {hit}" if hit == stats.seen else f"{hit} of {stats.seen}"
        return (f"[data] {source}: WARNING: {share} {kind} examples exceed {limit} "
                f"({'; '.join(what)}); raise {raise_keys}")
    return (f"[data] {source}: {hit} of {stats.seen} {kind} examples exceed {limit} "
            f"({'; '.join(what)}); raise {raise_keys} to keep them whole")
