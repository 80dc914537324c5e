"""Column mapping: which column of a source fills which field of a record.

``columns`` (``data.columns``, ``SourceSpec.columns``) maps *target field -> source column*. A
column is a dotted path into nested data (integers index lists, negative ones from the end:
``chosen.-1.content``; a column whose own name contains a dot is found by that name first).
Several columns joined by ``+`` (or given as a list) become one string, the non-empty ones joined
with a blank line: the usual "instruction + optional input" layout, where a null or empty input
adds nothing. With a mapping the record's ``data`` holds exactly the mapped fields (all its
layout is detected from) and ``Record.row`` the source row, whose fields ride along into the
normalised example (``records.normalize``); without one ``data`` is the source row unchanged.
A target mapped to ``""`` is not mapped (the config declares every target that way). A mapped
column a record lacks is one error line naming the record, the column, the setting that asked
for it (``data.columns.prompt='instruction'``), the file's columns and the closest of them.

A ``data.mix`` entry maps its own file's columns with a suffix (:func:`parse_mix_entry`):
``"goals.csv*500:prompt=goal"``; its errors name that suffix (:class:`ColumnsKey`).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from easyalign.config_keys import did_you_mean
from easyalign.data.sources import DataError, Record, source_file

__all__ = ["COLUMN_FIELDS", "COLUMNS_KEY", "ColumnsKey", "JOINER", "MixEntry", "apply_columns",
           "columns_hint", "file_columns", "parse_columns", "parse_mix_entry"]

JOIN = "+"          # "instruction+input": several source columns joined into one field
JOINER = "\n\n"     # ... with a blank line between the non-empty parts
COLUMNS_KEY = "data.columns"  # the config key of a column mapping, named in its errors
# The fields a column mapping fills (the layouts of records.py read them).
COLUMN_FIELDS = ("prompt", "response", "messages", "chosen", "rejected", "teacher_response")


def parse_columns(columns: Mapping[str, str | Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """``{target: "a+b" | ["a", "b"] | "a" | ""}`` -> ``{target: ("a", "b")}`` ("" = unmapped)."""
    out = {}
    for target, column in (columns or {}).items():
        paths = tuple(column.split(JOIN)) if isinstance(column, str) else tuple(column)
        if paths in ((), ("",)):
            continue
        if not all(isinstance(p, str) and p.strip() for p in paths):
            raise ValueError(f"columns.{target}: {column!r} has an empty or non-string column")
        out[target] = tuple(p.strip() for p in paths)
    return out


@dataclasses.dataclass(frozen=True)
class ColumnsKey:
    """The setting that maps a source's columns, as its errors name it: a config key
    (``data.columns`` -> ``data.columns.prompt='goal'``), or a ``data.mix`` entry, whose
    ``:FIELD=COLUMN`` suffix maps its own file (``data.mix 'a.csv*5:prompt=goal'``)."""

    prefix: str = COLUMNS_KEY
    mix: str = ""  # the PATH[*N] of a data.mix entry ("" = the prefix names the setting)
    mapped: tuple[tuple[str, str], ...] = ()  # the mix entry's own FIELD=COLUMN pairs

    def setting(self, field: str | None = None, column: str | None = None) -> str:
        """``data.columns.prompt`` (``='goal'`` with a column), or ``data.columns`` alone; for
        a mix entry, the whole entry with ``field`` mapped to ``column`` beside the pairs it
        maps already (``data.mix 'a.csv*5:prompt=goal,response=COLUMN'``), which
        :func:`parse_mix_entry` reads once COLUMN is filled in."""
        if self.mix:
            pairs = dict(self.mapped)
            pairs[field or "FIELD"] = column or "COLUMN"
            return f"data.mix '{self.mix}:{','.join(f'{f}={c}' for f, c in pairs.items())}'"
        name = f"{self.prefix}.{field}" if field else self.prefix
        return name if column is None else f"{name}={column!r}"


def apply_columns(records: Iterable[Record],
                  columns: Mapping[str, str | Sequence[str]] | None,
                  key: str | ColumnsKey = COLUMNS_KEY) -> list[Record]:
    """The records with their mapped fields only (the row kept as ``Record.row``); all of them
    unchanged without a mapping.

    A mapped column that a record lacks is a :class:`DataError` of one line naming the record
    (file and line), the column, the setting that asked for it (``key``, a config key prefix
    or a :class:`ColumnsKey`: ``data.columns.prompt='instruction'``), the columns the file has
    and the closest of them. That is the usual fault when a preset's mapping meets another file.
    """
    key = key if isinstance(key, ColumnsKey) else ColumnsKey(key)
    parsed = parse_columns(columns)
    records = list(records)
    if not parsed:
        return records
    out = []
    for r in records:
        try:
            mapped = {target: _mapped(r.data, paths, r.where, target)
                      for target, paths in parsed.items()}
        except _MissingColumn as missing:
            value = JOIN.join(parsed[missing.target])
            raise _missing_column_error(missing, r, records, key, value) from None
        row = r.data if isinstance(r.data, Mapping) else None
        out.append(Record(mapped, r.where, None if row is None else tuple(map(str, row)), row))
    return out


class _MissingColumn(Exception):
    """A mapped column a record lacks; ``detail`` says where a nested path broke off."""

    def __init__(self, path: str, target: str, detail: str | None = None):
        super().__init__(path)
        self.path, self.target, self.detail = path, target, detail


def file_columns(records: Iterable[Record]) -> list[str]:
    """The top-level columns of the records, in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        if isinstance(r.data, Mapping):
            seen.update(dict.fromkeys(map(str, r.data)))
    return list(seen)


def columns_hint(wanted: str, columns: Sequence[str], target: str | None = None,
                 whose: str = "the file's") -> str:
    """``"the file's columns are ['a', 'b']; did you mean 'a'?"``: what a missing-column error
    adds (``whose`` says whose columns they are).

    The suggestion is the closest column (difflib) or, failing that, a column named like the
    field being filled (``target``): a file that has a ``prompt`` column where the mapping
    asks for ``instruction`` most likely wants ``prompt``."""
    shown = list(columns[:40]) + ([f"... {len(columns) - 40} more"] if len(columns) > 40 else [])
    hint = did_you_mean(wanted, columns)
    if not hint and target is not None and target in columns and target != wanted:
        hint = f"did you mean {target!r}?"
    return f"{whose} columns are {shown}" + (f"; {hint}" if hint else "")


# Columns of the conversation layouts read without a mapping (`messages`, ShareGPT).
CONVERSATION_COLUMNS = {"messages", "conversations"}


def _missing_column_error(missing: _MissingColumn, record: Record, records: list[Record],
                          key: ColumnsKey, value: str) -> DataError:
    setting = key.setting(missing.target, value)
    where = record.where
    if missing.detail is not None:  # a nested path that broke off inside the record
        message = f"column {missing.path!r} ({setting}) not found: {missing.detail}"
    else:
        top = missing.path.split(".")[0]
        columns = file_columns(records)
        if top in columns:  # other records have it: this one is the odd one out
            own = file_columns([record])
            message = (f"column {missing.path!r} ({setting}) is missing from this record; "
                       f"{columns_hint(missing.path, own, missing.target, 'its')}")
        else:  # a fault of the file (or the mapping), not of this record: name the file
            where = source_file(record.where)
            message = (f"column {missing.path!r} ({setting}) is in no record of the file; "
                       f"{columns_hint(missing.path, columns, missing.target)}")
            flag = setting.split("=")[0]
            if missing.target in columns and flag.startswith("data.columns."):
                # e.g. the real preset's Alpaca mapping over a plain prompt/response file
                message += (f" (the file has its own {missing.target!r} column: clear the "
                            f"mapping, --config.{flag}=)")
            elif flag.startswith("data.columns.") and set(columns) & CONVERSATION_COLUMNS:
                # the same preset over a messages / ShareGPT file, which needs no mapping
                message += (" (a conversation file needs no column mapping: clear the "
                            f"preset's, --config.{flag}= and its other data.columns keys)")
    error = DataError(where, message)
    error.field = missing.target  # the message names the setting; the field stays available
    return error


def _get_path(data: Any, path: str, target: str) -> Any:
    if isinstance(data, Mapping) and path in data:  # a column whose own name has a dot
        return data[path]
    value, parts = data, path.split(".")
    for depth, part in enumerate(parts):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif (isinstance(value, list) and part.lstrip("-").isdigit()
              and -len(value) <= int(part) < len(value)):
            value = value[int(part)]
        elif depth == 0:
            raise _MissingColumn(path, target)
        else:
            raise _MissingColumn(path, target, _broke_off(".".join(parts[:depth]), part, value))
    return value


def _broke_off(parent: str, part: str, value: Any) -> str:
    """Why ``part`` cannot be read from ``value`` (the value at ``parent``)."""
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        hint = did_you_mean(part, keys)
        return f"{parent!r} has no {part!r}, its keys are {keys}" + (f"; {hint}" if hint else "")
    if isinstance(value, list):
        return f"{parent!r} is a list of {len(value)} item(s), {part!r} is not an index into it"
    return f"{parent!r} is a {type(value).__name__}, not an object or a list"


def _mapped(data: dict, paths: tuple[str, ...], where: str, target: str) -> Any:
    if len(paths) == 1:
        return _get_path(data, paths[0], target)
    parts = []
    for path in paths:
        part = _get_path(data, path, target)
        if part is not None and not isinstance(part, str):
            raise DataError(where, f"column '{path}' must be a string to be joined, "
                                   f"got {type(part).__name__}", field=target)
        if part and part.strip():  # a null or blank optional part adds no empty paragraph
            parts.append(part)
    return JOINER.join(parts)


class MixEntry(NamedTuple):
    """One parsed `data.mix` entry (:func:`parse_mix_entry`)."""

    path: str
    count: int                # 0 = every record
    columns: dict[str, str]   # field -> column(s), as `data.columns` ({} = the file's own layout)

    @property
    def key(self) -> ColumnsKey:
        """How errors name the entry's column mapping (with the pairs it maps already)."""
        return ColumnsKey(mix=f"{self.path}*{self.count}" if self.count else self.path,
                          mapped=tuple(self.columns.items()))


# The start of a mix entry's column suffix: ':' and the first FIELD=.
_MIX_COLUMNS = re.compile(r":(?=[A-Za-z_]\w*=)")


def parse_mix_entry(entry: str) -> MixEntry:
    """`"PATH[*N][:FIELD=COLUMN,...]"` of `data.mix` -> `MixEntry`.

    `PATH` alone mixes every record of the file, `*N` draws N of them. The file is read in its
    own layout unless a suffix maps its columns as `data.columns` does for `data.source`:
    `"goals.csv*500:prompt=goal"`, `"qa.jsonl:prompt=question,response=answer"` (a COLUMN may
    join several with '+' and reach into nested data with '.'; FIELD is one of COLUMN_FIELDS).

    Raises ValueError naming `data.mix` and the entry for a count that is not a positive
    integer and for a malformed or unknown FIELD=COLUMN."""
    head, columns = entry, {}
    suffix = _MIX_COLUMNS.search(entry)
    if suffix:
        head = entry[:suffix.start()]
        for part in entry[suffix.end():].split(","):
            field, _, column = (s.strip() for s in part.partition("="))
            problem = _mix_column_problem(part, field, column, columns)
            if problem:
                raise ValueError(f"data.mix: {entry!r}: {problem}; write "
                                 "\"PATH[*N][:FIELD=COLUMN,...]\"")
            columns[field] = column
    path, star, count = head.rpartition("*")
    if not star:
        return MixEntry(head, 0, columns)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"data.mix: {entry!r}: the count after '*' must be a positive integer "
                         f"(\"PATH\" for every record, \"PATH*N\" for N of them)")
    return MixEntry(path, int(count), columns)


def _mix_column_problem(part: str, field: str, column: str, seen: Mapping[str, str]) -> str:
    """What is wrong with one FIELD=COLUMN of a mix entry ("" = nothing)."""
    if not field or not column or "=" not in part:
        return f"{part.strip()!r} is not FIELD=COLUMN"
    if field not in COLUMN_FIELDS:
        hint = did_you_mean(field, COLUMN_FIELDS)
        return f"unknown field {field!r}" + (f" ({hint})" if hint else
                                             f" (one of {', '.join(COLUMN_FIELDS)})")
    if field in seen:
        return f"{field!r} is mapped twice"
    if re.search(r"\*\d+$", column):
        return "'*N' goes before the columns"
    return ""
