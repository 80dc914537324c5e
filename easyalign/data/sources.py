"""Read raw records, with provenance, from JSONL, JSON, CSV (plain or ``.gz``), Parquet and HF
``datasets``.

This is the first stage of the data pipeline (DESIGN decision 8)::

    load_records(spec) -> list[Record]         # this module: read_rows + apply_columns
    normalize(records, kind) -> list[dict]      # records.py: the four record kinds, validated
    tokenize_examples(...) -> list[dict]        # tokenize.py: token ids + loss masks, truncation
    make_train_loader / make_eval_batches       # loader.py + collate.py: static-shape batches

Every :class:`Record` carries ``where``, a string naming its origin, so that any later stage can
say exactly which input is wrong:

* ``"path/file.jsonl:17"``   -- JSONL and CSV: 1-based line where the record starts;
* ``"path/file.json[3]"``    -- JSON (a top-level list): 0-based index into the list;
* ``"path/file.parquet[3]"`` -- Parquet: 0-based row number;
* ``"hf:name:split[3]"``     -- Hugging Face ``datasets``: 0-based row index. A local directory
  (``hf:DIR``) of JSONL / JSON / CSV / Parquet files is read file by file with this module's
  readers (the files and splits datasets would read: :func:`local_dataset_files`), so its
  records name their file and line like the formats above.

Text files are read as spreadsheet and Windows tools write them: a UTF-8 byte-order mark is
dropped (a CSV header ``\\ufeffprompt`` reads as ``prompt``), ``\\r\\n`` line ends are fine, and
another ASCII-compatible encoding can be named (``SourceSpec.encoding``, e.g. ``cp1252``). A byte
that does not decode, a truncated ``.gz`` and a JSON object with a duplicated key (JSON would
silently keep the last value) are :class:`DataError` s naming file and line.

A source is described by :class:`SourceSpec` (or an equivalent dict, or a bare path string)::

    SourceSpec(path="seed_tasks.jsonl",
               columns={"prompt": "instruction+instances.0.input",
                        "response": "instances.0.output"})

``columns`` maps *target field -> source column*. A column is a dotted path into nested data
(integers index lists, negative ones from the end: ``chosen.-1.content``; a column whose own name
contains a dot is found by that name first). Several columns joined by ``+`` (or given as a
list) become one string, the non-empty ones joined with a blank line: the usual "instruction +
optional input" layout, where a null or empty input adds nothing. With a mapping the record
holds exactly the mapped fields; without one it holds the source row unchanged. A target
mapped to ``""`` is not mapped (the config declares every target that way). A mapped column a
record lacks is one error line naming the record, the column, the setting that asked for it
(``data.columns.prompt='instruction'``), the file's columns and the closest of them.

A ``data.mix`` entry maps its own file's columns with a suffix (:func:`parse_mix_entry`):
``"goals.csv*500:prompt=goal"``; its errors name that suffix (:class:`ColumnsKey`).

Blank lines in JSONL and CSV are not records and are skipped; everything else that cannot be
read is a :class:`DataError` naming file and line -- never a silent skip.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import itertools
import json
import os
import re
import socket
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from easyalign.config_keys import did_you_mean

__all__ = ["COLUMN_FIELDS", "ColumnsKey", "DataError", "FORMATS", "MixEntry", "Record",
           "SourceSpec", "apply_columns", "as_spec", "columns_hint", "file_columns",
           "load_records", "parse_columns", "read_jsonl_objects", "parse_mix_entry", "read_rows",
           "source_file"]

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
# File suffixes (after an optional ".gz") and the format each one means.
SUFFIXES = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
            (".parquet", "parquet"))
JOIN = "+"          # "instruction+input": several source columns joined into one field
JOINER = "\n\n"     # ... with a blank line between the non-empty parts
COLUMNS_KEY = "data.columns"  # the config key of a column mapping, named in its errors
# The fields a column mapping fills (the layouts of records.py read them).
COLUMN_FIELDS = ("prompt", "response", "messages", "chosen", "rejected", "teacher_response")


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
    # The columns the row had in its file before a column mapping kept only the mapped fields
    # (`apply_columns`): what an error about a field the mapping left out lists.
    source_columns: tuple[str, ...] | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where to read records from.

    Attributes:
      path: a local ``.jsonl`` (``.ndjson``), ``.json``, ``.csv`` file (each optionally ``.gz``)
        or a ``.parquet`` file; or use hf_name.
      hf_name: a ``datasets.load_dataset`` name or local path (hub names need network access).
      split: the split to read from an HF dataset.
      format: one of ``FORMATS``; inferred from the suffix of ``path`` (``hf`` for hf_name).
      columns: optional mapping target field -> source column(s) (module docstring).
      hf_kwargs: extra keyword arguments for ``load_dataset`` (``data_dir``, ``data_files``, ...).
      encoding: of text files; must be ASCII-compatible (``utf-8``, ``cp1252``, ``latin-1``...).
        A UTF-8 byte-order mark is dropped.
    """

    path: str | None = None
    hf_name: str | None = None
    split: str = "train"
    format: str | None = None
    columns: Mapping[str, str | Sequence[str]] | None = None
    hf_kwargs: Mapping[str, Any] | None = None
    encoding: str = "utf-8"

    def __post_init__(self):
        if (self.path is None) == (self.hf_name is None):
            raise ValueError(f"SourceSpec needs exactly one of path / hf_name, got {self}")
        if self.resolved_format() not in FORMATS:
            raise ValueError(f"unknown source format {self.resolved_format()!r}; "
                             f"use one of {FORMATS}")
        _check_encoding(self.encoding)

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        if self.hf_name is not None:
            return "hf"
        name = self.path.lower().removesuffix(".gz")  # the text formats may be gzipped
        for suffix, fmt in SUFFIXES:
            if name.endswith(suffix):
                return fmt
        raise ValueError(f"{self.path}: cannot tell the file type from its suffix (use one of "
                         f"{' '.join(s for s, _ in SUFFIXES)}) or set data.format to one of "
                         f"{' | '.join(FORMATS[:-1])}")


def _check_encoding(encoding: str) -> None:
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r} (data.encoding)") from None
    # Lines are split on the byte b"\n" before decoding, which only ASCII-compatible encodings
    # allow (UTF-16/32 files are refused with a message saying so).
    if codec.encode("\n,a")[0] != b"\n,a":
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; re-save the file as "
                         "UTF-8 (data.encoding)")


def as_spec(spec: SourceSpec | Mapping[str, Any] | str) -> SourceSpec:
    """A SourceSpec from a spec, an equivalent dict or a bare path."""
    if isinstance(spec, SourceSpec):
        return spec
    if isinstance(spec, str):
        return SourceSpec(path=spec)
    return SourceSpec(**spec)


def source_file(where: str) -> str:
    """The source a record's ``where`` names, without its line or row (module docstring):
    ``"a.jsonl:17"`` -> ``"a.jsonl"``, ``"hf:name:train[3]"`` -> ``"hf:name:train"``."""
    return re.sub(r"(:\d+|\[\d+\])$", "", where)


def load_records(spec: SourceSpec | Mapping[str, Any] | str) -> list[Record]:
    """Reads every record of a source, applying its column mapping. See the module docstring."""
    spec = as_spec(spec)
    return apply_columns(read_rows(spec), spec.columns)


def read_rows(spec: SourceSpec | Mapping[str, Any] | str) -> list[Record]:
    """Every row of a source as it is stored (no column mapping)."""
    spec = as_spec(spec)
    return [Record(data, where) for data, where in READERS[spec.resolved_format()](spec)]


# ----------------------------------------------------------------------------- text files
def _text_lines(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line)`` of a text file, plain or gzipped (module docstring)."""
    utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    gzipped = path.endswith(".gz")
    # What a truncated (EOFError) or corrupt (BadGzipFile is an OSError, zlib.error) stream raises.
    gzip_errors = (EOFError, OSError, zlib.error) if gzipped else ()
    offset = 0  # byte offset of the current line in the (decompressed) file
    with (gzip.open if gzipped else open)(path, "rb") as f:
        lines = iter(f)
        for line_no in itertools.count(1):
            try:
                raw = next(lines)
            except StopIteration:
                return
            except gzip_errors as e:
                raise DataError(path, _gzip_message(line_no - 1, e)) from None
            start = 0
            if line_no == 1:
                if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                    raise DataError(f"{path}:1", "UTF-16 text (it starts with a UTF-16 "
                                                 "byte-order mark); re-save the file as UTF-8")
                if utf8 and raw.startswith(codecs.BOM_UTF8):
                    start = len(codecs.BOM_UTF8)
            try:
                text = raw[start:].decode(encoding)
            except UnicodeDecodeError as e:
                name = "UTF-8" if utf8 else encoding
                bad = raw[start + e.start]
                raise DataError(f"{path}:{line_no}", f"not {name} (byte 0x{bad:02x} at offset "
                                f"{offset + start + e.start}); re-save the file as UTF-8 or "
                                "name its encoding (data.encoding)") from None
            offset += len(raw)
            yield line_no, text


def _gzip_message(complete_lines: int, error: Exception) -> str:
    if not complete_lines:
        return f"not a readable gzip file ({error})"
    return (f"the gzip data breaks off after line {complete_lines}, the last complete line "
            f"({error}); the file is truncated or corrupt: re-download or re-compress it")


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a JSON object whose key repeats is an error, not "last one wins"."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _duplicate(where: str, key: str) -> DataError:
    return DataError(where, f"duplicated key {key!r} in a JSON object (JSON would keep only the "
                            "last value); remove or rename one of them")


def _read_jsonl(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    return read_jsonl_objects(spec.path, spec.encoding)


def read_jsonl_objects(path: "str | Path", encoding: str = "utf-8"
                       ) -> Iterator[tuple[dict, str]]:
    """`(object, "path:line")` for every non-blank line of a JSONL file (plain or `.gz`).

    Raises `DataError` naming the file and line for a line that is not JSON, not an object, or
    repeats a key; and for bytes that are not `encoding` or a truncated gzip stream."""
    path = str(path)
    for line_no, line in _text_lines(path, encoding):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            # Without its line end: a record cut short is then reported at its last column, not
            # at "column 1" of the newline's next line.
            data = _DECODER.decode(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            raise DataError(where, f"malformed JSON line ({e.msg} at column {e.colno})") from None
        except _DuplicateKey as e:
            raise _duplicate(where, e.key) from None
        if not isinstance(data, dict):
            raise DataError(where, f"expected a JSON object, got {type(data).__name__}")
        yield data, where


def _read_json(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    """A top-level list of objects, parsed one element at a time so that each error has a line."""
    text = "".join(line for _, line in _text_lines(spec.path, spec.encoding))
    path = spec.path

    def line_of(pos: int) -> str:
        return f"{path}:{text.count(chr(10), 0, pos) + 1}"

    def value_at(pos: int, what: str) -> tuple[Any, int]:
        try:
            return _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}", f"malformed JSON ({e.msg})") from None
        except _DuplicateKey as e:
            raise _duplicate(f"{line_of(pos)} ({what})", e.key) from None

    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        value, _ = value_at(pos, "the top-level value")
        raise DataError(path, f"expected a top-level JSON list, got {type(value).__name__}")
    pos, index = _skip_space(text, pos + 1), 0
    while not text.startswith("]", pos):
        where = f"{path}[{index}]"
        data, end = value_at(pos, f"record [{index}]")
        if not isinstance(data, dict):
            raise DataError(where, f"expected a JSON object, got {type(data).__name__}")
        yield data, where
        pos, index = _skip_space(text, end), index + 1
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(line_of(pos), "malformed JSON (expected ',' or ']' after a list "
                                          "element)")
    if _skip_space(text, pos + 1) < len(text):
        raise DataError(line_of(_skip_space(text, pos + 1)),
                        "malformed JSON (extra data after the top-level list)")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    lines = (line for _, line in _text_lines(spec.path, spec.encoding))
    # csv.reader rather than DictReader: it does not skip blank rows behind our back, so the
    # line counter before each row gives the exact 1-based line where the row starts.
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{spec.path}:1", "empty CSV file (a header row is required)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{spec.path}:1", f"duplicated column name(s) {repeated} in the header")
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


# ----------------------------------------------------------------------------- binary sources
def _read_parquet(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    import pyarrow  # lazy: only this source kind needs it (installed with `datasets`)
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(spec.path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(spec.path, f"not a readable Parquet file ({e})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for data in batch.to_pylist():
            yield data, f"{spec.path}[{row}]"
            row += 1


OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")


def hub_unreachable(name: str, packaged: Iterable[str] = ()) -> str | None:
    """The Hub's host name when dataset `name` would be fetched from a Hub this machine cannot
    resolve, else None. Offline, `datasets.load_dataset` retries the download five times with
    back-off (~25 s and a page of warnings) before failing; this lookup takes milliseconds. No
    verdict for a local path, one of `packaged` (datasets' own builders: `json`, `parquet`...,
    reading local `data_files`), with an offline flag set (the datasets cache is read), or
    behind a proxy (which resolves names itself)."""
    if (Path(name).exists() or name in packaged
            or any(os.environ.get(v, "") not in ("", "0") for v in OFFLINE_FLAGS)):
        return None
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


# datasets' builders whose files this module reads itself (the `.json` builder reads JSON lines
# and JSON lists alike; each file's own suffix picks the reader here).
OWN_BUILDERS = ("json", "csv", "parquet")


def local_dataset_files(spec: SourceSpec) -> list[str] | None:
    """The files of `spec.split` that `datasets.load_dataset` would read for a local dataset
    directory (`hf:DIR`) — its own resolution: split names in file names, a README's
    `configs`, the builder its extensions choose — when that builder is one whose files this
    module reads (`OWN_BUILDERS`), one configuration, no `hf_kwargs`, and every file's suffix
    is one of `SUFFIXES`; else None (datasets reads it). Read here, a record's `where` names
    its file and line instead of datasets' row index. Raises DataError for a split the
    directory does not have."""
    if spec.hf_kwargs or not Path(spec.hf_name).is_dir():
        return None
    from datasets.load import LocalDatasetModuleFactory  # lazy: slow to import

    try:
        module = LocalDatasetModuleFactory(spec.hf_name).get_module()
    except Exception:  # noqa: BLE001 — datasets' own load reports whatever is wrong
        return None
    configs = module.builder_configs_parameters.builder_configs
    if module.module_path.rsplit(".", 1)[-1] not in OWN_BUILDERS or len(configs) != 1:
        return None
    config = configs[0]
    if getattr(config, "field", None) or not config.data_files:
        return None
    if spec.split not in config.data_files:
        raise DataError(f"hf:{spec.hf_name}", f"no split {spec.split!r} in this directory "
                        f"(its splits: {', '.join(sorted(map(str, config.data_files)))})")
    base = Path(spec.hf_name).expanduser().resolve()
    files = []
    for path in config.data_files[spec.split]:
        name = path.lower().removesuffix(".gz")
        if not any(name.endswith(suffix) for suffix, _ in SUFFIXES):
            return None
        inside = (base / path).resolve()  # a README's configs name files relative to it
        files.append(str(Path(spec.hf_name) / inside.relative_to(base))
                     if inside.is_relative_to(base) else str(inside))
    return files


def _read_hf(spec: SourceSpec) -> Iterator[tuple[dict, str]]:
    files = local_dataset_files(spec)
    if files is not None:
        for path in files:
            yield from READERS[SourceSpec(path=path).resolved_format()](
                SourceSpec(path=path, encoding=spec.encoding))
        return
    import datasets  # lazy: slow to import and only needed for this source kind
    import datasets.packaged_modules

    host = hub_unreachable(spec.hf_name, getattr(datasets.packaged_modules,
                                                 "_PACKAGED_DATASETS_MODULES", {}))
    if host is not None:
        raise DataError(f"hf:{spec.hf_name}", f"the Hub ({host}) does not resolve from here; "
                        "offline, read a local copy (data.source=hf:/path/to/its/directory, or "
                        "one of its files) or set HF_HUB_OFFLINE=1 to read the datasets cache")

    try:
        ds = datasets.load_dataset(spec.hf_name, split=spec.split, **dict(spec.hf_kwargs or {}))
    except (ConnectionError, OSError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        guess = "" if Path(spec.hf_name).is_dir() else "offline, or no such dataset? "
        raise DataError(f"hf:{spec.hf_name}", f"cannot load split {spec.split!r} ({guess}"
                        f"{type(e).__name__}: {first})") from None
    for i, data in enumerate(ds):
        yield dict(data), f"hf:{spec.hf_name}:{spec.split}[{i}]"


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet,
           "hf": _read_hf}  # format -> `(data, where)` iterator of a SourceSpec


# ----------------------------------------------------------------------------- column mapping
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
    """The records with their mapped fields only; all of them unchanged without a mapping.

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
            out.append(Record({target: _mapped(r.data, paths, r.where, target)
                               for target, paths in parsed.items()}, r.where,
                              tuple(map(str, r.data)) if isinstance(r.data, Mapping) else None))
        except _MissingColumn as missing:
            value = JOIN.join(parsed[missing.target])
            raise _missing_column_error(missing, r, records, key, value) from None
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
