"""What an evaluation reads: model variants, prompt suites and multiple-choice tasks.

Variants. `eval.variants` names the models to compare, as a tuple of `"name=path"` strings (the
command-line form: `--config.eval.variants="('sft=runs/sft/model', 'dpo=runs/dpo/model')"`), one
comma-separated string, or a mapping name → path. A path is an easyalign model checkpoint
(`model_config.json` + `params/`, see `easyalign.hf.checkpoint`) or an HF directory
(`config.json` + safetensors, imported with `easyalign.hf.from_hf`). Each variant is read with
its own tokenizer: `path/tokenizer/` for a checkpoint, `path` itself for an HF directory, else a
fallback (the world's tokenizer).

Prompt suites. A `Suite` is a named list of items `{"prompt", "answer"?, "where"}` and the kind
that decides how a response is graded:

* the built-in world's held-out suites (`instructions`, `facts`, `unknown`, `harmful`,
  `benign`), read from the world directory's `eval_<suite>.jsonl`; their kind is the world kind;
* extra prompt files (any source `easyalign.data.sources` reads, so a bad row is an error
  naming file and line), each with the column holding the prompt, a tag and a split. The tag:
  `harmful` (refusing is right), `benign` (refusing is over-refusal) or `plain` (only rates are
  reported). The column: a column or `a+b` join (default `prompt`), or `""` to read the prompt
  as training data does (`records.normalize(kind="prompt")`: Alpaca rows, conversations, or the
  context of HH-RLHF / preference pairs, kept as a conversation). The split: `all` (default) or
  `eval`, the rows a training stage held out of the same file (`data.holdout`, with this
  config's `data.eval_fraction` / `eval_max` / `eval_seed`), so a model is evaluated on prompts
  it was not trained on. The filter: `""` (every row) or `column=value` / `column!=value`
  (several joined by `&`), rows compared as strings before the column mapping — e.g. the unsafe
  rows of a file holding safe and unsafe prompts with a label column. A column or filter that
  names no column of the file is an error listing the columns there are.

  Forms: a mapping name → {path, column, tag, split, filter}; a sequence of mappings each with
  a `name`; or strings `"name=PATH[:COLUMN[:TAG[:SPLIT[:FILTER]]]]"` (a path containing ':'
  needs a mapping). Inside a config a dict may arrive as an ml_collections `ConfigDict` (which
  is not a `Mapping`): every form here accepts `ConfigDict` / `FrozenConfigDict` too, from
  config files and from flags (`--config.eval.extra_suites="{'adv': {'path': 'a.csv',
  'column': 'goal', 'tag': 'harmful'}}"`).

Instruction following. `ifeval_suite` reads a file in the IFEval input format (`prompt`,
`instruction_id_list`, `kwargs`; see `easyalign.data.ifeval`) as the suite `ifeval`, whose
responses `ifeval.score` grades.

Multiple choice. `load_mc_task` reads TruthfulQA's `mc_task.json`: a list of
`{"question", "mc1_targets": {answer: 0|1}, "mc2_targets": {answer: 0|1}}`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from ml_collections import ConfigDict, FrozenConfigDict

from easyalign.config_keys import parse_named_paths  # noqa: F401  (eval's variants syntax)
from easyalign.data.columns import apply_columns, columns_hint, file_columns, parse_columns
from easyalign.data.sources import DataError, load_records, read_rows
from easyalign.data.world import SUITES as WORLD_SUITES
from easyalign.eval.metrics import TAGS


SPLITS = ("all", "eval")  # an extra suite's rows: the whole file, or the held-out split
SUITE_KEYS = ("path", "column", "tag", "split", "filter")  # an extra suite's settings


def is_mapping(value: Any) -> bool:
    """A `Mapping` or an ml_collections `ConfigDict` / `FrozenConfigDict` (which are not)."""
    return isinstance(value, (Mapping, ConfigDict, FrozenConfigDict))


def plain(value: Any) -> Any:
    """`ConfigDict`s (nested too) as dicts; anything else unchanged."""
    if isinstance(value, (ConfigDict, FrozenConfigDict)):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # a world kind (instruction, fact, unknown, harmful, benign) or an extra-suite tag
    items: list[dict]  # {"prompt", "answer" (None when judged by rules only), "where"}
    world: bool  # a built-in world suite (its metric names come from metrics.WORLD_SUITE_METRICS)


@dataclasses.dataclass(frozen=True)
class MCQuestion:
    question: str
    mc1: tuple[tuple[str, int], ...]  # (answer, label) pairs; exactly one label is 1
    mc2: tuple[tuple[str, int], ...]
    where: str


# ----------------------------------------------------------------------------- variants
def ifeval_suite(path: str | Path, limit: int = 0) -> Suite:
    """The instruction-following suite `ifeval` from an IFEval-format file ("builtin": the
    instruction file shipped with easyalign); each item's answer is its prompt record."""
    from easyalign.data import ifeval

    records = ifeval.load_records(ifeval.BUILTIN if str(path) == "builtin" else path)
    records = records[:limit] if limit else records
    items = [{"prompt": r["prompt"], "answer": {k: r[k] for k in ("prompt",
              "instruction_id_list", "kwargs")}, "where": r["where"]} for r in records]
    return Suite("ifeval", "ifeval", items, world=False)


def same_vocabulary(a, b) -> bool:
    """Do two tokenizers map the same strings to the same ids (so token ids are comparable)?"""
    return a is b or a.get_vocab() == b.get_vocab()


# ----------------------------------------------------------------------------- prompt suites
def world_suites(world_dir: str | Path, names, limit: int = 0) -> list[Suite]:
    """The built-in world's held-out suites `names` (first `limit` items each; 0 = all)."""
    unknown = sorted(set(names) - set(WORLD_SUITES))
    if unknown:
        raise ValueError(f"eval.suites: unknown suite(s) {unknown}; valid: {list(WORLD_SUITES)}")
    suites = []
    for name in names:
        records = load_records(str(Path(world_dir) / f"eval_{name}.jsonl"))
        records = records[:limit] if limit else records
        items = [{"prompt": r.data["prompt"], "answer": r.data.get("answer"), "where": r.where}
                 for r in records]
        suites.append(Suite(name, WORLD_SUITES[name], items, world=True))
    return suites


def _suite_entry(name: str, entry: Mapping, where: str) -> dict[str, str]:
    unknown = sorted(set(entry) - set(SUITE_KEYS))
    if unknown or "path" not in entry:
        raise ValueError(f"{where}: needs 'path' (and optionally {list(SUITE_KEYS[1:])}); "
                         f"unknown keys {unknown}")
    return {"path": str(entry["path"]), "column": str(entry.get("column", "prompt")),
            "tag": str(entry.get("tag", "plain")), "split": str(entry.get("split", "all")),
            "filter": str(entry.get("filter", ""))}


def parse_extra_suites(spec: Any) -> dict[str, dict[str, str]]:
    """Extra suites → {name: {"path", "column", "tag", "split", "filter"}} (module docstring)."""
    out: dict[str, dict[str, str]] = {}
    spec = plain(spec)
    if isinstance(spec, str):
        spec = [e for e in spec.split(",") if e.strip()]
    if isinstance(spec, Mapping):
        for name, entry in spec.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"eval.extra_suites.{name}: expected a mapping with 'path', "
                                 f"got {entry!r}")
            out[str(name)] = _suite_entry(str(name), entry, f"eval.extra_suites.{name}")
    else:
        for i, entry in enumerate(spec):
            if isinstance(entry, Mapping):
                if "name" not in entry:
                    raise ValueError(f"eval.extra_suites[{i}]: a mapping entry needs a 'name'")
                entry = dict(entry)
                name = str(entry.pop("name"))
                if name in out:
                    raise ValueError(f"eval.extra_suites: duplicate name {name!r}")
                out[name] = _suite_entry(name, entry, f"eval.extra_suites.{name}")
                continue
            for name, value in parse_named_paths((entry,), "eval.extra_suites").items():
                if name in out:
                    raise ValueError(f"eval.extra_suites: duplicate name {name!r}")
                parts = value.split(":")
                if len(parts) > 5:
                    raise ValueError(f"eval.extra_suites: {name}={value!r} has more than four "
                                     "':'; give a path containing ':' in the mapping form")
                path, column, tag, split, where = parts + [None] * (5 - len(parts))
                out[name] = {"path": path, "column": "prompt" if column is None else column,
                             "tag": tag or "plain", "split": split or "all",
                             "filter": where or ""}
    for name, entry in out.items():
        if entry["tag"] not in TAGS:
            raise ValueError(f"eval.extra_suites.{name}: tag {entry['tag']!r} is not one of {TAGS}")
        if entry["split"] not in SPLITS:
            raise ValueError(f"eval.extra_suites.{name}: split {entry['split']!r} is not one of "
                             f"{SPLITS}")
        parse_filter(entry["filter"], f"eval.extra_suites.{name}")
    return out


def parse_filter(spec: str, where: str = "filter") -> list[tuple[str, str, str]]:
    """`"a=x&b!=y"` → [("a", "=", "x"), ("b", "!=", "y")]; `""` → []."""
    out = []
    for part in (p.strip() for p in spec.split("&") if p.strip()):
        column, op, value = (part.partition("!=") if "!=" in part else part.partition("="))
        if not op or not column.strip():
            raise ValueError(f"{where}: filter {part!r} is not 'column=value' or "
                             "'column!=value'")
        out.append((column.strip(), op, value.strip()))
    return out


def _check_columns(rows, names: list[str], where: str) -> None:
    """Every named column (its first dotted part) exists in some row, else list the columns
    (and the closest one) as the data column mapping does (`columns.columns_hint`)."""
    present = file_columns(rows)
    for name in names:
        if name not in present and name.split(".")[0] not in present:
            raise ValueError(f"{where}: column {name!r} not found; "
                             f"{columns_hint(name.split('.')[0], present)}")


def extra_suite(name: str, path: str, column: str = "prompt", tag: str = "plain",
                split: str = "all", filter: str = "", limit: int = 0,
                holdout: tuple[float, int, int] = (0.05, 1000, 0)) -> Suite:
    """Prompts of a file (module docstring), graded per `tag`; `holdout` = the
    `(data.eval_fraction, data.eval_max, data.eval_seed)` of split `eval`."""
    from easyalign.data.holdout import split_rows
    from easyalign.data.records import Dropped, normalize, prompt_text

    if name in WORLD_SUITES:
        raise ValueError(f"eval.extra_suites: {name!r} is the name of a built-in world suite")
    where = f"eval.extra_suites.{name} ({path})"
    if not path.startswith("hf:") and not Path(path).exists():  # not an OS error's bare text
        raise ValueError(f"eval.extra_suites.{name}: path={path}: no such file")
    rows = read_rows({"path": path})
    conditions = parse_filter(filter, where)
    _check_columns(rows, [c for c, _, _ in conditions] + [
        p for p in (column.split("+") if column else []) if p.strip()], where)
    if split == "eval":
        rows = split_rows(rows, "eval", *holdout)
    for col, op, value in conditions:
        rows = [r for r in rows if (str(r.data.get(col)) == value) == (op == "=")]
    if column:
        rows = apply_columns(rows, parse_columns({"prompt": column}))
    examples = normalize(rows, "prompt", on_empty="drop", dropped=Dropped())
    examples = examples[:limit] if limit else examples
    items = [{"prompt": prompt_text(ex["prompt"]), "answer": None, "where": ex["source"]}
             for ex in examples]
    if not items:
        raise ValueError(f"eval.extra_suites.{name}: no prompts in {path} (split {split}, "
                         f"filter {filter!r})")
    return Suite(name, tag, items, world=False)



# ----------------------------------------------------------------------------- multiple choice
def _targets(data: dict, key: str, where: str) -> tuple[tuple[str, int], ...]:
    targets = data.get(key)
    if not isinstance(targets, Mapping) or not targets:
        raise DataError(where, "expected a non-empty {answer: 0|1} object", field=key)
    pairs = tuple((str(answer), int(label)) for answer, label in targets.items())
    labels = [label for _, label in pairs]
    if set(labels) - {0, 1} or 1 not in labels or 0 not in labels:
        raise DataError(where, "labels must be 0/1 with at least one of each", field=key)
    if key == "mc1_targets" and labels.count(1) != 1:
        raise DataError(where, f"MC1 needs exactly one true answer, got {labels.count(1)}",
                        field=key)
    return pairs


def load_mc_task(path: str | Path, limit: int = 0) -> list[MCQuestion]:
    """TruthfulQA `mc_task.json` questions (the first `limit`; 0 = all)."""
    records = load_records({"path": str(path), "format": "json"})
    records = records[:limit] if limit else records
    questions = []
    for record in records:
        question = record.data.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(record.where, "missing question", field="question")
        questions.append(MCQuestion(question, _targets(record.data, "mc1_targets", record.where),
                                    _targets(record.data, "mc2_targets", record.where),
                                    record.where))
    return questions
