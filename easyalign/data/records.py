"""Normalise raw records to the four record kinds of DESIGN decision 8, validating every field.

==============  ===================================================  ==============================
kind            accepted input fields                                normalised example
==============  ===================================================  ==============================
``sft``         ``{prompt, response}`` or ``{messages}``              ``{messages}``
``preference``  ``{prompt, chosen, rejected}``, or HH-RLHF dialogue   ``{prompt, chosen, rejected}``
                strings ``{chosen, rejected}`` (below)
``prompt``      ``{prompt}``                                          ``{prompt}``
``teacher``     ``{prompt, teacher_response[, teacher_topk]}``        same
==============  ===================================================  ==============================

Conventions of a normalised example (a plain dict):

* ``prompt`` is always a *message list* ``[{"role", "content"}, ...]``; a string prompt becomes
  one user turn, so the chat template alone decides how prompts are rendered.
* SFT examples are a message list ending with an assistant turn; every assistant turn is trained.
* ``source`` is the record's ``where`` (file:line), carried on so later errors can name it.
* Fields of the record that the kind does not consume are kept unchanged; tokenisation later
  passes the numeric scalar ones (e.g. ``weight``) through to batches as per-example values.

HH-RLHF: a record with only ``chosen`` / ``rejected`` holds two whole dialogues
``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share everything up to their final Assistant turn.
The split point is the last ``"\\n\\nAssistant:"`` inside the common prefix of the two strings (so
markers quoted inside a final answer cannot move it); the text before it becomes a user/assistant
message list, and the stripped final turns become ``chosen`` / ``rejected``. A few real HH pairs
have an *empty* final turn (4 of 2,312 in harmless-base test): that is an error unless
``allow_empty_responses=True`` -- then the response is just EOS ("say nothing").

Other preference layouts are reached by column mapping, e.g. UltraFeedback-binarized:
``{"prompt": "prompt", "chosen": "chosen.1.content", "rejected": "rejected.1.content"}``.

``teacher_topk`` (optional) is ``{"ids": [[int]*k]*n, "logprobs": [[float]*k]*n}``: the teacher's
top-k next-token candidates for each of the n response tokens including the final EOS, as the
same tokenizer splits ``teacher_response``; it becomes int32 / float32 arrays of shape [n, k].

Anything missing, empty or of the wrong type raises :class:`DataError` naming record and field.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .sources import DataError, Record

__all__ = ["KINDS", "normalize", "normalize_sft", "normalize_preference", "normalize_prompts",
           "normalize_teacher"]

KINDS = ("sft", "preference", "prompt", "teacher")
ROLES = ("system", "user", "assistant")
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _string(data: dict, field: str, where: str, *, allow_empty: bool = False) -> str:
    if field not in data:
        raise DataError(where, "missing", field=field)
    value = data[field]
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {type(value).__name__}", field=field)
    if not allow_empty and not value.strip():
        raise DataError(where, "empty", field=field)
    return value


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(where, "expected a non-empty list of {role, content} messages", field=field)
    out = []
    for i, m in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(where, f"expected {{role in {ROLES}, content}}, got {m!r:.80}",
                            field=name)
        if not isinstance(m.get("content"), str):
            raise DataError(where, "content must be a string", field=name)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(data: dict, where: str) -> list[dict[str, str]]:
    if isinstance(data.get("prompt"), list):
        return _messages(data["prompt"], where, "prompt")
    return [{"role": "user", "content": _string(data, "prompt", where)}]


def _rest(data: dict, consumed: Sequence[str], where: str) -> dict[str, Any]:
    """The fields the kind does not consume, plus the record's provenance."""
    out = {k: v for k, v in data.items() if k not in consumed}
    out["source"] = where
    return out


def normalize_sft(records: Sequence[Record]) -> list[dict[str, Any]]:
    """``{prompt, response}`` or ``{messages}`` -> ``{messages, source, ...}``."""
    out = []
    for r in records:
        d, where = r.data, r.where
        if "messages" in d:
            messages = _messages(d["messages"], where, "messages")
            if messages[-1]["role"] != "assistant":
                raise DataError(where, "the last message must be an assistant turn (the trained "
                                       "response)", field="messages")
            for i, m in enumerate(messages):
                if m["role"] == "assistant" and not m["content"].strip():
                    raise DataError(where, "empty assistant turn", field=f"messages[{i}]")
            out.append({"messages": messages, **_rest(d, ("messages",), where)})
        else:
            response = _string(d, "response", where)
            messages = _prompt(d, where) + [{"role": "assistant", "content": response}]
            out.append({"messages": messages, **_rest(d, ("prompt", "response"), where)})
    return out


def _hh_dialogue(text: str, where: str, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(where, "HH dialogue must start with '\\n\\nHuman:'", field=field)
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def _split_hh(d: dict, where: str, allow_empty: bool) -> tuple[list[dict], str, str]:
    chosen = _string(d, "chosen", where)
    rejected = _string(d, "rejected", where)
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(where, "no 'prompt' field, and chosen/rejected are not HH dialogues "
                               "sharing a prefix up to a '\\n\\nAssistant:' turn", field="prompt")
    prompt = _hh_dialogue(chosen[:cut], where, "chosen")
    if not prompt:
        raise DataError(where, "HH dialogue has no turn before the final Assistant turn",
                        field="chosen")
    responses = {}
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        response = text[cut + len(HH_ASSISTANT):].strip()
        if "\n\nHuman:" in response:
            raise DataError(where, "chosen and rejected dialogues diverge before their final "
                                   "Assistant turn", field=field)
        if not response and not allow_empty:
            raise DataError(where, "empty final Assistant turn (pass allow_empty_responses=True to "
                                   "train it as a bare EOS)", field=field)
        responses[field] = response
    return prompt, responses["chosen"], responses["rejected"]


def normalize_preference(records: Sequence[Record], *,
                         allow_empty_responses: bool = False) -> list[dict[str, Any]]:
    """``{prompt, chosen, rejected}`` or HH dialogues -> ``{prompt, chosen, rejected, source}``.

    ``allow_empty_responses`` accepts an empty chosen/rejected response (it trains as bare EOS).
    """
    out = []
    for r in records:
        d, where = r.data, r.where
        if "prompt" in d:
            prompt = _prompt(d, where)
            chosen = _string(d, "chosen", where, allow_empty=allow_empty_responses)
            rejected = _string(d, "rejected", where, allow_empty=allow_empty_responses)
        else:
            prompt, chosen, rejected = _split_hh(d, where, allow_empty_responses)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    **_rest(d, ("prompt", "chosen", "rejected"), where)})
    return out


def normalize_prompts(records: Sequence[Record]) -> list[dict[str, Any]]:
    """``{prompt}`` -> ``{prompt, source, ...}``."""
    return [{"prompt": _prompt(r.data, r.where), **_rest(r.data, ("prompt",), r.where)}
            for r in records]


def _topk(value: Any, where: str) -> dict[str, np.ndarray]:
    field = "teacher_topk"
    if not isinstance(value, dict) or set(value) != {"ids", "logprobs"}:
        raise DataError(where, "expected {ids: [[int]*k]*n, logprobs: [[float]*k]*n}", field=field)
    try:
        ids = np.asarray(value["ids"])
        logprobs = np.asarray(value["logprobs"], dtype=np.float32)
    except (ValueError, TypeError) as e:  # ragged or non-numeric lists
        raise DataError(where, f"not a rectangular numeric array ({e})", field=field) from None
    if ids.ndim != 2 or ids.shape != logprobs.shape or ids.shape[0] == 0:
        raise DataError(where, f"ids {ids.shape} and logprobs {logprobs.shape} must be equal "
                               "[n, k] shapes with n >= 1", field=field)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(where, f"ids must be integers, got {ids.dtype}", field=field)
    return {"ids": ids.astype(np.int32), "logprobs": logprobs}


def normalize_teacher(records: Sequence[Record]) -> list[dict[str, Any]]:
    """``{prompt, teacher_response[, teacher_topk]}`` -> same, plus ``source``."""
    out = []
    for r in records:
        d, where = r.data, r.where
        ex = {"prompt": _prompt(d, where),
              "teacher_response": _string(d, "teacher_response", where),
              **_rest(d, ("prompt", "teacher_response", "teacher_topk"), where)}
        if d.get("teacher_topk") is not None:
            ex["teacher_topk"] = _topk(d["teacher_topk"], where)
        out.append(ex)
    return out


_NORMALIZERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "sft": normalize_sft, "preference": normalize_preference,
    "prompt": normalize_prompts, "teacher": normalize_teacher}


def normalize(records: Sequence[Record], kind: str, **kwargs) -> list[dict[str, Any]]:
    """Dispatches to ``normalize_<kind>``; ``kwargs`` go to that function."""
    if kind not in _NORMALIZERS:
        raise ValueError(f"unknown record kind {kind!r}; use one of {KINDS}")
    return _NORMALIZERS[kind](records, **kwargs)
