"""Read raw records, with provenance, from JSONL, JSON, CSV (plain or ``.gz``), Parquet and HF
``datasets``.

This is the first stage of the data pipeline (DESIGN decision 8)::

    load_records(spec) -> list[Record]         # this module: read_rows, then columns.py's
                                                #   apply_columns
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

``columns`` maps *target field -> source column* (``columns.py``: dotted paths, joined columns,
``data.mix`` suffixes and the errors of a mapping that does not fit the file).

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
from typing import Any
from urllib.parse import urlparse

__all__ = ["DataError", "FORMATS", "Record", "SourceSpec", "as_spec", "load_records",
           "read_jsonl_objects", "read_rows", "source_file"]

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
# File suffixes (after an optional ".gz") and the format each one means.
SUFFIXES = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
            (".parquet", "parquet"))


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
    # The row as its file has it, when a column mapping made `data` (`apply_columns`): the
    # fields that ride along into the normalised example beside the mapped ones
    # (`records.normalize`), never read to detect its layout.
    row: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where to read records from.

    Attributes:
      path: a local ``.jsonl`` (``.ndjson``), ``.json``, ``.csv`` file (each optionally ``.gz``)
        or a ``.parquet`` file; or use hf_name.
      hf_name: a ``datasets.load_dataset`` name or local path (hub names need network access).
      split: the split to read from an HF dataset.
      format: one of ``FORMATS``; inferred from the suffix of ``path`` (``hf`` for hf_name).
      columns: optional mapping target field -> source column(s) (``columns.py``).
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
    from easyalign.data.columns import apply_columns  # it builds on this module's Record

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
            raise DataError(where, f"malformed JSON line ({_json_problem(e)})") from None
        except _DuplicateKey as e:
            raise _duplicate(where, e.key) from None
        if not isinstance(data, dict):
            raise DataError(where, f"expected a JSON object, got {type(data).__name__}")
        yield data, where


def _json_problem(error: json.JSONDecodeError) -> str:
    """`json`'s message and the column it points at: "Expecting ',' delimiter: column 12"
    (its messages may end in "at", as "Unterminated string starting at")."""
    return f"{error.msg}: column {error.colno}"


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
            raise DataError(f"{path}:{e.lineno}",
                            f"malformed JSON ({_json_problem(e)}, char {e.pos})") from None
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
