"""Normalise raw records to the four record kinds of DESIGN decision 8, validating every field.

The layout of a record is detected from its fields, first match wins:

==============  ========================================================  =========================
kind            accepted layouts                                          normalised example
==============  ========================================================  =========================
``sft``         ``{messages}`` or ``{conversations}``: a conversation     ``{messages}``
                ending with an assistant turn; ``{prompt, response}``;
                Alpaca ``{instruction, input?, output}``
``preference``  ``{prompt, chosen, rejected}`` strings; ``{chosen,        ``{prompt, chosen,
                rejected}`` conversations, with or without ``prompt``     rejected}``
                (UltraFeedback, TRL); HH-RLHF dialogue strings
``prompt``      ``{prompt}``; a conversation (all but its final           ``{prompt}``
                assistant turn); Alpaca ``instruction [+ input]``; a
                preference row (the prompt its two responses share)
``teacher``     ``{prompt, teacher_response[, teacher_topk]}``            same
==============  ========================================================  =========================

Turns are ``{role, content}`` with role ``system | user | assistant`` (OpenAI / HF chat) or
ShareGPT's ``{from, value}`` with from ``human | gpt | system | user | assistant``.

Conventions of a normalised example (a plain dict):

* ``prompt`` is always a *message list* ``[{"role", "content"}, ...]``; a string prompt becomes
  one user turn, so the chat template alone decides how prompts are rendered.
* SFT examples are a message list ending with an assistant turn; every assistant turn is trained.
* Alpaca: the prompt is ``instruction``, then a blank line and ``input`` when that is non-empty;
  the response is ``output`` (the same as ``data.columns.prompt=instruction+input``).
* ``source`` is the record's ``where`` (file:line), carried on so later errors can name it.
* Every field of the file's record rides along unchanged beside the derived fields (a GRPO
  reward sees an Alpaca row's ``output``, a ShareGPT row's ``conversations``, an HH pair's
  ``chosen``), except a field read into the derived field of its own name (a string ``prompt``
  becomes its message list; a preference row's ``chosen`` / ``rejected`` become the final
  responses; ``teacher_response`` / ``teacher_topk``). A field named like a derived field that
  holds something else -- a file's own ``source`` column, always -- is kept as
  ``input_<name>`` (``input_input_<name>`` if that is taken too), as ``easyalign generate``
  keeps its input fields. With a column mapping (``data.columns``) the layout is detected from
  the mapped fields alone; the row's fields then ride along by the same rule, a column whose
  value the mapped field of its name holds unchanged not repeated. Tokenisation reads the
  derived fields only, so what rides along never changes the tokens trained on.

Preference conversations (UltraFeedback-binarized, TRL's conversational format): ``chosen`` and
``rejected`` are message lists that end with an assistant turn -- the two responses -- and share
every turn before it, which is the prompt (multi-turn too). Histories that differ are an error.
A ``prompt`` field is optional: with lists that hold only the final turn it is the prompt;
otherwise it must agree with the shared history (equal to it, or a string equal to its last user
turn).

HH-RLHF: a record with only ``chosen`` / ``rejected`` strings holds two whole dialogues
``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share everything up to their final Assistant turn.
The split point is the last ``"\\n\\nAssistant:"`` inside the common prefix of the two strings (so
markers quoted inside a final answer cannot move it); the text before it becomes a user/assistant
message list, and the stripped final turns become ``chosen`` / ``rejected``.

Records left out on purpose (:class:`Skip`) are collected in a :class:`Dropped` report -- one
line per load, never a silent skip:

* **empty text** (``on_empty``): a blank (or null) response, chosen/rejected, teacher_response
  or prompt, or a blank user/assistant turn (4 of the 2,312 HH-RLHF harmless-base test pairs
  end with an empty Assistant turn). ``"error"`` (the default of these functions) raises a
  :class:`DataError` naming record, field and the ``data.on_empty`` key; ``"drop"`` (the
  default of the ``data.on_empty`` config key) skips the record; ``"keep"`` keeps it, and an
  empty response trains just the end-of-turn token ("say nothing").
* **no preference**: a pair whose chosen and rejected responses are the same text (after
  stripping) teaches nothing and is always dropped.

``teacher_topk`` (optional) is ``{"ids": [[int]*k]*n, "logprobs": [[float]*k]*n}``: the teacher's
top-k next-token candidates for each of the n response tokens including the final EOS, as the
same tokenizer splits ``teacher_response``; it becomes int32 / float32 arrays of shape [n, k].

Anything missing or of the wrong type raises :class:`DataError` naming record and field.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .columns import COLUMN_FIELDS, COLUMNS_KEY, JOINER, ColumnsKey, columns_hint
from .sources import DataError, Record

__all__ = ["COLUMN_FIELDS", "KINDS", "ON_EMPTY", "Dropped", "EmptyText", "Skip", "Unmapped",
           "normalize", "normalize_sft", "normalize_preference", "normalize_prompts",
           "normalize_teacher", "prompt_text"]

KINDS = ("sft", "preference", "prompt", "teacher")
TEACHER_DATA_FILE = "teacher_data.jsonl"  # what the teacher-data stage writes in its workdir
ON_EMPTY = ("drop", "error", "keep")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
CONVERSATION_FIELDS = ("messages", "conversations")   # OpenAI/HF, ShareGPT
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")

# (field, text, reason): a text of the example that must not be blank unless on_empty="keep".
Text = tuple[str, str, str]


class Skip(DataError):
    """A record left out on purpose and reported; ``reason`` groups the report."""

    def __init__(self, where: str, reason: str, field: str | None = None,
                 message: str | None = None):
        super().__init__(where, message or reason, field=field)
        self.reason = reason


class EmptyText(Skip):
    """A blank response, prompt or turn: ``on_empty`` decides (raised as is for ``"error"``)."""

    def __init__(self, where: str, field: str, reason: str):
        super().__init__(where, reason, field, f"{reason} (data.on_empty=error); set "
                         "data.on_empty=drop to skip such records, or keep to train them as "
                         "they are (an empty response is just the end-of-turn token)")


class Dropped:
    """The records skipped by one or more ``normalize`` calls, by reason, in input order."""

    def __init__(self):
        self.by_reason: dict[str, list[str]] = {}
        self.empty = 0  # how many of them on_empty dropped

    def add(self, skip: Skip) -> None:
        self.by_reason.setdefault(skip.reason, []).append(skip.where)
        self.empty += isinstance(skip, EmptyText)

    def __len__(self) -> int:
        return sum(len(wheres) for wheres in self.by_reason.values())

    def summary(self, shown: int = 3) -> str:
        """``"empty response ×2 (a.json[2335], a.json[4658])"``, reasons joined by ``"; "``."""
        parts = []
        for reason, wheres in self.by_reason.items():
            names = [os.path.basename(w) for w in wheres[:shown]]
            if len(wheres) > shown:
                names.append(f"{len(wheres) - shown} more")
            parts.append(f"{reason} ×{len(wheres)} ({', '.join(names)})")
        return "; ".join(parts)


# ----------------------------------------------------------------------------- fields
class Unmapped(DataError):
    """A record whose layout lacks a field: the message names the record's columns, the closest
    one and the setting that can map a column to the field. ``normalize`` names that setting
    as its caller's config has it (``data.columns.prompt``, or a ``data.mix`` entry's
    ``:prompt=COLUMN`` suffix; :class:`columns.ColumnsKey`)."""

    def __init__(self, where: str, field: str | None, head: str, map_field: str | None,
                 tail: str, key: ColumnsKey = ColumnsKey()):
        self.parts = (head, map_field, tail)
        super().__init__(where, f"{head}{key.setting(map_field)}{tail}", field=field)

    def named(self, key: ColumnsKey) -> "Unmapped":
        """The same error, naming ``key`` as the setting that maps columns."""
        return Unmapped(self.where, self.field, *self.parts, key=key)

    def listing(self, columns: Sequence[str]) -> "Unmapped":
        """The same error listing ``columns`` — the file's, before a column mapping kept only
        its mapped fields — instead of the record's."""
        if self.field is None:
            return self
        head, map_field, _ = self.parts
        return Unmapped(self.where, self.field, head, map_field,
                        f": {columns_hint(self.field, list(columns))}")


def _missing(data: dict, where: str, field: str, detail: str = "") -> DataError:
    """A field the record's layout needs is absent: the error names the record's columns, the
    closest one and the setting that can fill the field (:class:`Unmapped`,
    ``columns.columns_hint``, as a column mapping's own errors do)."""
    columns = [str(k) for k in data]
    fill = "; map a column to it with " if field in COLUMN_FIELDS else "; map columns with "
    return Unmapped(where, field, f"missing{detail}{fill}",
                    field if field in COLUMN_FIELDS else None,
                    f": {columns_hint(field, columns, whose='its')}")


def json_kind(value: Any) -> str:
    """A value as its file wrote it, for errors: `null`, `true`, a number, an object, a list
    (a JSON `null` is there, and not "missing"; Python's `NoneType` says nothing to a user)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _string(data: dict, field: str, where: str) -> str:
    """The text of a required field; a JSON `null` is an empty text (`on_empty` decides: data
    read through datasets or Parquet writes a missing value as null)."""
    if field not in data:
        raise _missing(data, where, field)
    value = data[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {json_kind(value)}", field=field)
    return value


def _nonempty(where: str, texts: Sequence[Text], keep_empty: bool) -> None:
    """Raises :class:`EmptyText` for the first blank text, unless they are kept."""
    if keep_empty:
        return
    for field, text, reason in texts:
        if not text.strip():
            raise EmptyText(where, field, reason)


def _turn(m: Any, where: str, name: str) -> dict[str, str]:
    """One message as `{role, content}`. A JSON `null` content is an empty text, as in
    `_string` (`on_empty` decides: datasets and Parquet write a missing value as null, and
    OpenAI-style tool-call turns carry `"content": null`); a missing content key is an error."""
    if isinstance(m, dict) and "from" in m and "role" not in m:  # ShareGPT
        role, key = SHAREGPT_ROLES.get(m["from"]), "value"
        if role is None:
            raise DataError(where, f"expected ShareGPT {{from in {tuple(SHAREGPT_ROLES)}, value}}, "
                                   f"got {m!r:.80}", field=name)
    elif isinstance(m, dict) and m.get("role") in ROLES:
        role, key = m["role"], "content"
    else:
        raise DataError(where, f"expected {{role in {ROLES}, content}} or ShareGPT {{from, value}},"
                               f" got {m!r:.80}", field=name)
    if key not in m:
        raise DataError(where, f"the message has no {key}", field=name)
    content = "" if m[key] is None else m[key]
    if not isinstance(content, str):
        raise DataError(where, f"{key} must be a string, got {json_kind(content)}", field=name)
    return {"role": role, "content": content}


def _turns(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(where, "expected a non-empty list of {role, content} messages",
                        field=field)
    return [_turn(m, where, f"{field}[{i}]") for i, m in enumerate(value)]


def _turn_texts(turns: Sequence[dict], field: str) -> list[Text]:
    """Every user and assistant turn must say something; a blank system turn is harmless."""
    return [(f"{field}[{i}]", m["content"], f"empty {m['role']} turn")
            for i, m in enumerate(turns) if m["role"] != "system"]


def _conversation_field(data: dict) -> str | None:
    return next((f for f in CONVERSATION_FIELDS if f in data), None)


def _prompt(data: dict, where: str) -> tuple[list[dict[str, str]], list[Text]]:
    """A ``prompt`` field: a message list, or a string that becomes one user turn."""
    if isinstance(data.get("prompt"), list):
        turns = _turns(data["prompt"], where, "prompt")
        return turns, _turn_texts(turns, "prompt")
    text = _string(data, "prompt", where)
    return [{"role": "user", "content": text}], [("prompt", text, "empty prompt")]


def _alpaca_prompt(data: dict, where: str) -> tuple[list[dict[str, str]], list[Text]]:
    """``instruction``, then a blank line and ``input`` when that is non-empty."""
    instruction = _string(data, "instruction", where)
    extra = data.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(where, f"expected a string, got {json_kind(extra)}", field="input")
    text = JOINER.join(part for part in (instruction, extra) if part and part.strip())
    return [{"role": "user", "content": text}], [("instruction", text, "empty prompt")]


def _own_fields(row: dict, taken: dict, skip: Callable[[str], bool]) -> dict[str, Any]:
    """The fields of ``row`` to keep beside the fields ``taken`` (all but those ``skip``
    names): one named like a taken field is kept as ``input_<name>`` (``input_input_<name>``
    if the row has an ``input_<name>`` too)."""
    kept: dict[str, Any] = {}
    for name, value in row.items():
        if skip(name):
            continue
        key = name
        while key in taken or key in kept or (key != name and key in row):
            key = f"input_{key}"
        kept[key] = value
    return kept


def _example(derived: dict[str, Any], data: dict, where: str,
             replaced: Sequence[str] = ()) -> dict[str, Any]:
    """The normalised example: the ``derived`` fields, every field of the record but those
    ``replaced`` (read into the derived field of their own name; module docstring), and the
    record's provenance ``source``."""
    taken = {**derived, "source": where}
    return {**derived, **_own_fields(data, taken, lambda name: name in replaced),
            "source": where}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # True is not 1 here


def _with_row(example: dict[str, Any], record: Record) -> dict[str, Any]:
    """A column-mapped record's example with the fields of its file's row beside the mapped
    ones (module docstring); the example itself without a mapping."""
    if record.row is None:
        return example
    out = {k: v for k, v in example.items() if k != "source"}
    mapped = record.data
    out |= _own_fields(record.row, example,
                       lambda name: name in mapped and _same(mapped[name], record.row[name]))
    out["source"] = example["source"]
    return out


# ----------------------------------------------------------------------------- sft
def _sft(d: dict, where: str, keep_empty: bool) -> dict[str, Any]:
    field = _conversation_field(d)
    if field is not None:
        messages = _turns(d[field], where, field)
        if messages[-1]["role"] != "assistant":
            raise DataError(where, "the last message must be an assistant turn (the trained "
                                   "response)", field=field)
        _nonempty(where, _turn_texts(messages, field), keep_empty)
        return _example({"messages": messages}, d, where, ("messages",))
    if "prompt" in d or "response" in d:
        prompt, texts = _prompt(d, where)
        response = _string(d, "response", where)
        texts = texts + [("response", response, "empty response")]
    elif "instruction" in d:
        prompt, texts = _alpaca_prompt(d, where)
        response = _string(d, "output", where)
        texts = texts + [("output", response, "empty response")]
    else:
        columns = columns_hint("messages", [str(k) for k in d], whose="its")
        raise Unmapped(where, None, "no SFT fields: expected messages, conversations (ShareGPT), "
                       "prompt + response, or instruction + output (Alpaca); map other columns "
                       "with ", None, f" (prompt + response, or messages): {columns}")
    _nonempty(where, texts, keep_empty)
    return _example({"messages": prompt + [{"role": "assistant", "content": response}]}, d, where)


# ----------------------------------------------------------------------------- preference
def _hh_dialogue(text: str, where: str, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> user/assistant messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(where, "HH dialogue must start with '\\n\\nHuman:'", field=field)
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def _split_hh(d: dict, where: str) -> tuple[list[dict], str, str, list[Text]]:
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
    texts = [("chosen", m["content"], f"empty {m['role']} turn in the dialogue") for m in prompt]
    responses = {}
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        response = text[cut + len(HH_ASSISTANT):].strip()
        if "\n\nHuman:" in response:
            raise DataError(where, "chosen and rejected dialogues diverge before their final "
                                   "Assistant turn", field=field)
        responses[field] = response
        texts.append((field, response, "empty final Assistant turn"))
    return prompt, responses["chosen"], responses["rejected"], texts


def _same_turns(a: Sequence[dict], b: Sequence[dict]) -> bool:
    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"].strip() == y["content"].strip()
        for x, y in zip(a, b))


def _split_conversations(d: dict, where: str) -> tuple[list[dict], str, str, list[Text]]:
    """UltraFeedback / TRL conversational pairs (module docstring)."""
    sides = {}
    for field in ("chosen", "rejected"):
        if not isinstance(d.get(field), list):
            raise DataError(where, "chosen and rejected must both be message lists (or both "
                                   "strings)", field=field)
        turns = _turns(d[field], where, field)
        if turns[-1]["role"] != "assistant":
            raise DataError(where, "the last message must be an assistant turn (the response)",
                            field=field)
        sides[field] = turns
    history = sides["chosen"][:-1]
    if not _same_turns(history, sides["rejected"][:-1]):
        raise DataError(where, "chosen and rejected differ before their final assistant turn; "
                               "they must share the conversation (the prompt)", field="rejected")
    texts = _turn_texts(history, "chosen")
    if "prompt" in d:
        prompt, prompt_texts = _prompt(d, where)
        agrees = _same_turns(prompt, history) or (
            isinstance(d["prompt"], str) and history and _same_turns(prompt, history[-1:]))
        if history and not agrees:
            raise DataError(where, "differs from the conversation before the final assistant "
                                   "turn of chosen/rejected", field="prompt")
        if not history:
            history, texts = prompt, prompt_texts
    elif not history:
        raise DataError(where, "missing: chosen/rejected hold only the response", field="prompt")
    chosen, rejected = sides["chosen"][-1]["content"], sides["rejected"][-1]["content"]
    texts += [("chosen", chosen, "empty chosen"), ("rejected", rejected, "empty rejected")]
    return history, chosen, rejected, texts


def _split_preference(d: dict, where: str) -> tuple[list[dict], str, str, list[Text]]:
    """(prompt, chosen, rejected, texts) of any preference layout."""
    for field in ("chosen", "rejected"):
        if field not in d:
            raise _missing(d, where, field)
    if isinstance(d["chosen"], list) or isinstance(d["rejected"], list):
        return _split_conversations(d, where)
    if "prompt" not in d:
        return _split_hh(d, where)
    prompt, texts = _prompt(d, where)
    chosen, rejected = _string(d, "chosen", where), _string(d, "rejected", where)
    texts = texts + [("chosen", chosen, "empty chosen"), ("rejected", rejected, "empty rejected")]
    return prompt, chosen, rejected, texts


def _preference(d: dict, where: str, keep_empty: bool) -> dict[str, Any]:
    prompt, chosen, rejected, texts = _split_preference(d, where)
    _nonempty(where, texts, keep_empty)
    if chosen.strip() == rejected.strip():
        raise Skip(where, "chosen == rejected", field="rejected",
                   message="chosen and rejected are the same response (no preference)")
    return _example({"prompt": prompt, "chosen": chosen, "rejected": rejected}, d, where,
                    ("prompt", "chosen", "rejected"))


# ----------------------------------------------------------------------------- prompts, teacher
def _prompt_example(d: dict, where: str, keep_empty: bool) -> dict[str, Any]:
    field = _conversation_field(d)
    if "prompt" in d:
        prompt, texts = _prompt(d, where)
        replaced: tuple[str, ...] = ("prompt",)
    elif field is not None:
        turns = _turns(d[field], where, field)
        prompt = turns[:-1] if turns[-1]["role"] == "assistant" else turns
        if not prompt:
            raise DataError(where, "no turn before the final assistant turn", field=field)
        texts, replaced = _turn_texts(prompt, field), ()
    elif "instruction" in d:
        prompt, texts = _alpaca_prompt(d, where)
        replaced = ()
    elif "chosen" in d and "rejected" in d:
        prompt, _, _, _ = _split_preference(d, where)
        texts, replaced = _turn_texts(prompt, "chosen"), ()
    else:
        raise _missing(d, where, "prompt", " (no prompt, messages, conversations, instruction or "
                                           "chosen + rejected column)")
    _nonempty(where, texts, keep_empty)
    return _example({"prompt": prompt}, d, where, replaced)


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


def _teacher(d: dict, where: str, keep_empty: bool) -> dict[str, Any]:
    prompt, texts = _prompt(d, where)
    response = _string(d, "teacher_response", where)
    _nonempty(where, texts + [("teacher_response", response, "empty teacher_response")],
              keep_empty)
    ex = _example({"prompt": prompt, "teacher_response": response}, d, where,
                  ("prompt", "teacher_response", "teacher_topk"))
    if d.get("teacher_topk") is not None:
        ex["teacher_topk"] = _topk(d["teacher_topk"], where)
    return ex


# ----------------------------------------------------------------------------- entry points
_BUILDERS: dict[str, Callable[[dict, str, bool], dict[str, Any]]] = {
    "sft": _sft, "preference": _preference, "prompt": _prompt_example, "teacher": _teacher}


def prompt_text(messages: Sequence[dict[str, str]]) -> str | list[dict[str, str]]:
    """A normalised prompt back as a record writes it: a one-turn user prompt as its string,
    a longer context as its message list."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return list(messages)


def normalize(records: Sequence[Record], kind: str, *, on_empty: str = "error",
              dropped: Dropped | None = None,
              columns_key: str | ColumnsKey = COLUMNS_KEY) -> list[dict[str, Any]]:
    """Normalised examples of ``kind`` (module docstring).

    Skipped records go to ``dropped``; without one, a warning states what was dropped. A record
    that lacks a field is an :class:`Unmapped` error naming ``columns_key`` (a config key
    prefix or a ``columns.ColumnsKey``) as the setting that maps a column to it.
    """
    key = columns_key if isinstance(columns_key, ColumnsKey) else ColumnsKey(columns_key)
    if kind not in _BUILDERS:
        raise ValueError(f"unknown record kind {kind!r}; use one of {KINDS}")
    if on_empty not in ON_EMPTY:
        raise ValueError(f"data.on_empty: {on_empty!r} is not one of {ON_EMPTY}")
    report = Dropped() if dropped is None else dropped
    build, keep_empty = _BUILDERS[kind], on_empty == "keep"
    out = []
    for r in records:
        try:
            out.append(_with_row(build(r.data, r.where, keep_empty), r))
        except Unmapped as unmapped:
            if r.source_columns is not None:
                unmapped = unmapped.listing(r.source_columns)
            raise unmapped.named(key) from None
        except Skip as skip:
            if isinstance(skip, EmptyText) and on_empty == "error":
                raise
            report.add(skip)
    if dropped is None and report:
        warnings.warn(f"dropped {len(report)} of {len(records)} {kind} records: "
                      f"{report.summary()}", stacklevel=2)
    return out


def normalize_sft(records: Sequence[Record], **kwargs) -> list[dict[str, Any]]:
    """SFT layouts -> ``{messages, source, ...}``; ``kwargs`` as :func:`normalize`."""
    return normalize(records, "sft", **kwargs)


def normalize_preference(records: Sequence[Record], **kwargs) -> list[dict[str, Any]]:
    """Preference layouts -> ``{prompt, chosen, rejected, source, ...}``."""
    return normalize(records, "preference", **kwargs)


def normalize_prompts(records: Sequence[Record], **kwargs) -> list[dict[str, Any]]:
    """Prompt layouts -> ``{prompt, source, ...}``."""
    return normalize(records, "prompt", **kwargs)


def normalize_teacher(records: Sequence[Record], **kwargs) -> list[dict[str, Any]]:
    """``{prompt, teacher_response[, teacher_topk]}`` -> same, plus ``source``."""
    return normalize(records, "teacher", **kwargs)
