"""Read raw records, with provenance, from JSONL (plain or ``.gz``), JSON, CSV and HF ``datasets``.

This is the first stage of the data pipeline (DESIGN decision 8)::

    load_records(spec) -> list[Record]         # this module
    normalize_*(records) -> list[dict]          # records.py: the four record kinds, validated
    tokenize_examples(...) -> list[dict]        # tokenize.py: token ids + loss masks, truncation
    make_train_loader / make_eval_batches       # loader.py + collate.py: static-shape batches

Every :class:`Record` carries ``where``, a string naming its origin, so that any later stage can
say exactly which input is wrong:

* ``"path/file.jsonl:17"``  -- JSONL and CSV: 1-based line where the record starts;
* ``"path/file.json[3]"``   -- JSON (a top-level list): 0-based index into the list;
* ``"hf:name:split[3]"``    -- Hugging Face ``datasets``: 0-based row index.

A source is described by :class:`SourceSpec` (or an equivalent dict, or a bare path string)::

    SourceSpec(path="seed_tasks.jsonl",
               columns={"prompt": ["instruction", "instances.0.input"],
                        "response": "instances.0.output"})

``columns`` maps *target field -> source column*. A column is a dotted path into nested JSON
(integers index lists); a list of columns is joined with a blank line, skipping empty values (the
usual "instruction + optional input" layout). With a mapping the record holds exactly the mapped
fields; without one it holds the source row unchanged.

Blank lines in JSONL are not records and are skipped; everything else that cannot be read is a
:class:`DataError` naming file and line -- never a silent skip.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["DataError", "Record", "SourceSpec", "load_records"]

FORMATS = ("jsonl", "json", "csv", "hf")


class DataError(ValueError):
    """A bad input record. The message always starts with where the record came from."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field = where, field
        prefix = f"{where}: field '{field}'" if field is not None else where
        super().__init__(f"{prefix}: {message}")


@dataclasses.dataclass(frozen=True)
class Record:
    """One raw input row: its fields and where it came from (see the module docstring)."""

    data: dict[str, Any]
    where: str


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where to read records from.

    Attributes:
      path: a local ``.jsonl``, ``.json`` or ``.csv`` file, optionally ``.gz``; or use hf_name.
      hf_name: a ``datasets.load_dataset`` name or local path (hub names need network access).
      split: the split to read from an HF dataset.
      format: one of ``FORMATS``; inferred from the suffix of ``path`` (``hf`` for hf_name).
      columns: optional mapping target field -> source column(s) (module docstring).
      hf_kwargs: extra keyword arguments for ``load_dataset`` (``data_dir``, ``data_files``, ...).
    """

    path: str | None = None
    hf_name: str | None = None
    split: str = "train"
    format: str | None = None
    columns: Mapping[str, str | Sequence[str]] | None = None
    hf_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self):
        if (self.path is None) == (self.hf_name is None):
            raise ValueError(f"SourceSpec needs exactly one of path / hf_name, got {self}")
        if self.resolved_format() not in FORMATS:
            raise ValueError(f"unknown source format {self.resolved_format()!r}; "
                             f"use one of {FORMATS}")

    def resolved_format(self) -> str:
        if self.format is not None:
            return self.format
        if self.hf_name is not None:
            return "hf"
        name = self.path.lower()
        name = name.removesuffix(".gz")  # any of the formats may be gzipped
        for suffix, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".csv", "csv")):
            if name.endswith(suffix):
                return fmt
        raise ValueError(f"cannot infer the format of {self.path!r}; set SourceSpec.format")


def load_records(spec: SourceSpec | Mapping[str, Any] | str) -> list[Record]:
    """Reads every record of a source, applying its column mapping. See the module docstring."""
    if isinstance(spec, str):
        spec = SourceSpec(path=spec)
    elif isinstance(spec, Mapping):
        spec = SourceSpec(**spec)
    fmt = spec.resolved_format()
    rows = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "hf": _read_hf}[fmt](spec)
    if spec.columns is None:
        return [Record(dict(data), where) for data, where in rows]
    return [Record(_apply_columns(data, spec.columns, where), where) for data, where in rows]


def _open_text(path: str):
    # newline="" lets the csv module see quoted newlines; harmless for JSON.
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_jsonl(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    with _open_text(spec.path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{spec.path}:{line_no}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                message = f"malformed JSON line ({e.msg} at column {e.colno})"
                raise DataError(where, message) from None
            if not isinstance(data, dict):
                raise DataError(where, f"expected a JSON object, got {type(data).__name__}")
            yield data, where


def _read_json(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    with _open_text(spec.path) as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{spec.path}:{e.lineno}", f"malformed JSON ({e.msg})") from None
    if not isinstance(items, list):
        raise DataError(spec.path, f"expected a top-level JSON list, got {type(items).__name__}")
    for i, data in enumerate(items):
        where = f"{spec.path}[{i}]"
        if not isinstance(data, dict):
            raise DataError(where, f"expected a JSON object, got {type(data).__name__}")
        yield data, where


def _read_csv(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    with _open_text(spec.path) as f:
        # csv.reader rather than DictReader: it does not skip blank rows behind our back, so the
        # line counter before each row gives the exact 1-based line where the row starts.
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{spec.path}:1", "empty CSV file (a header row is required)")
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if not row:
                continue  # a blank line is not a record
            where = f"{spec.path}:{start}"
            if len(row) != len(header):
                raise DataError(where, f"{len(row)} values for {len(header)} header columns")
            yield dict(zip(header, row)), where


def _read_hf(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    import datasets  # lazy: slow to import and only needed for this source kind

    ds = datasets.load_dataset(spec.hf_name, split=spec.split, **dict(spec.hf_kwargs or {}))
    for i, data in enumerate(ds):
        yield dict(data), f"hf:{spec.hf_name}:{spec.split}[{i}]"


def _get_path(data: Any, path: str, where: str, target: str) -> Any:
    value = data
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise DataError(where, f"source column '{path}' not found", field=target)
    return value


def _apply_columns(data: dict, columns: Mapping[str, str | Sequence[str]], where: str) -> dict:
    out = {}
    for target, column in columns.items():
        if isinstance(column, str):
            out[target] = _get_path(data, column, where, target)
            continue
        parts = [_get_path(data, c, where, target) for c in column]
        for c, part in zip(column, parts):
            if not isinstance(part, str):
                raise DataError(where, f"column '{c}' must be a string to be joined, "
                                       f"got {type(part).__name__}", field=target)
        out[target] = "\n\n".join(p for p in parts if p.strip())
    return out
