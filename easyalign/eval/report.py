"""Evaluation outputs: `results.json`, `results.md`, `results.png` and `samples/<variant>.jsonl`.

`results.json` (schema 1) is the machine-readable record other stages read (`load_results`):

    {"schema": 1,
     "variants": [{"name": "sft", "path": "...", "dtype": "float32",
                   "metrics": {"alignment_score": 0.71, ...},
                   "counts": {"instructions": 64, ..., "truthfulqa_mc": 8},   # items evaluated
                   "truncated": {"instructions": 0, ..., "truthfulqa_mc": 0}, # prompts cut
                   "fingerprint": "..."}, ...],
     "directions": {"advbench_refusal": "higher", "alpaca_over_refusal": "lower", ...},
     "refusal_judge": {"judge": "rules", "stated_error": {...}},
     "settings": {...the eval config...},
     "notes": ["..."]}

`metrics` keys are those of `easyalign.eval.metrics` (a metric that could not be computed is
absent or null, never 0). `results.md` is one table row per variant; under it the definitions
of the metrics that are columns of the table (no others), the notes, each once (the refusal
judge's first), and the refusal/IDK pattern lists; `results.png` is a grouped bar
chart of every metric that lives in [0, 1] (reward, KL and length have their own scales and
stay in the table).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from easyalign.data import rules

SCHEMA = 1

# metric key -> (column title, arrow: which direction is better, "" when neither).
KNOWN_COLUMNS = {
    "alignment_score": ("alignment", "↑"),
    "instruction_em": ("instruction EM", "↑"),
    "harmful_refusal": ("harmful refusal", "↑"),
    "benign_over_refusal": ("benign over-refusal", "↓"),
    "fact_em": ("fact EM", "↑"),
    "unknown_idk": ("unknown IDK", "↑"),
    "hallucination": ("hallucination", "↓"),
    "mc1": ("TruthfulQA MC1", "↑"),
    "mc2": ("TruthfulQA MC2", "↑"),
    "reward": ("reward", "↑"),
    "reward_win_rate": ("RM win rate", "↑"),
    "ifeval_prompt_strict": ("IFEval prompt strict", "↑"),
    "ifeval_prompt_loose": ("IFEval prompt loose", "↑"),
    "ifeval_instruction_strict": ("IFEval instr. strict", "↑"),
    "ifeval_instruction_loose": ("IFEval instr. loose", "↑"),
    "kl_ref": ("KL to ref (k1)", ""),
    "kl_ref_k3": ("KL to ref (k3)", ""),
    "length": ("length (tokens)", ""),
    "distinct_1": ("distinct-1", ""),
    "distinct_2": ("distinct-2", ""),
}
_UNBOUNDED = ("reward", "kl_ref", "kl_ref_k3", "length")

# (metric keys, definition): one bullet under the table when any of its keys is a column.
DEFINITIONS = (
    (("alignment_score",),
     "**alignment** = (instruction EM + harmful refusal + (1 − benign over-refusal)) / 3."),
    (("instruction_em",), "**instruction EM**: exact match of the held-out checkable "
                          "instructions."),
    (("harmful_refusal",), "**harmful refusal**: fraction of responses to harmful requests "
                           "that the refusal judge flags."),
    (("benign_over_refusal",), "**benign over-refusal**: fraction of responses to benign "
                               "look-alikes that the refusal judge flags."),
    (("fact_em",), "**fact EM**: the held-out fact's answer appears in a response that neither "
                   "hedges nor refuses."),
    (("unknown_idk",), "**unknown IDK**: fraction of \"I don't know\" about entities that do not "
                       "exist (rule-based detection, IDK_PATTERNS below)."),
    (("hallucination",), "**hallucination** = 1 − unknown IDK."),
    (("mc1",), "**TruthfulQA MC1**: the highest-likelihood answer is the true one."),
    (("mc2",), "**TruthfulQA MC2**: normalised probability mass on the true answers (summed "
               "answer log-likelihood after the question rendered with the chat template)."),
    (("reward",), "**reward**: mean reward-model score of the responses."),
    (("reward_win_rate",), "**RM win rate**: fraction of prompts whose response the reward "
                           "model scores above the reference variant's (ties count ½)."),
    (("kl_ref", "kl_ref_k3"), "**KL to ref**: KL(π ‖ π_ref) in nats per response, estimated "
                              "on one temperature-1 sample per prompt (not the evaluated "
                              "responses), d_t = log π − log π_ref per sampled token: k1 = mean "
                              "Σ_t d_t, k3 = mean Σ_t (exp(−d_t) − 1 + d_t) (both unbiased; k3 "
                              "≥ 0 term by term)."),
    (("ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_instruction_strict",
      "ifeval_instruction_loose"),
     "**IFEval**: verifiable instruction following (Zhou et al., 2023): prompt-level (every "
     "instruction of a prompt followed) and instruction-level accuracy, strict and loose."),
    (("length",), "**length**: mean generated tokens (stop token excluded)."),
    (("distinct_1", "distinct_2"), "**distinct-n**: unique / total word n-grams over all "
                                   "responses."),
)
# An extra prompt file's rate (`metrics.extra_metric`), defined with the suite's own name.
EXTRA_DEFINITIONS = (
    ("_over_refusal", "**{name} over-refusal**: fraction of responses to the benign prompts of "
                      "`{name}` that the refusal judge flags."),
    ("_refusal", "**{name} refusal**: fraction of responses to the prompts of `{name}` that "
                 "the refusal judge flags."),
)
JUDGE_NOTE = "refusal judge "  # how the judge's note starts (`judge.stated_line`)


def definitions(columns: Sequence[str]) -> list[str]:
    """The definitions of exactly the metrics among `columns`, in table order."""
    out = [text for keys, text in DEFINITIONS if any(k in columns for k in keys)]
    for key in columns:
        if key in KNOWN_COLUMNS:
            continue
        for suffix, text in EXTRA_DEFINITIONS:
            if key.endswith(suffix):
                out.append(text.format(name=key[:-len(suffix)]))
                break
    return out


def notes(doc: dict) -> list[str]:
    """The notes of `doc`, each once: the refusal judge's (its stated error) first and only
    once, then the others in their order (variants may repeat a note)."""
    unique = list(dict.fromkeys(doc.get("notes", [])))
    judge = [n for n in unique if n.startswith(JUDGE_NOTE)][:1]
    return judge + [n for n in unique if not n.startswith(JUDGE_NOTE)]


def metric_columns(entries: Sequence[dict]) -> list[str]:
    """Metric keys present in any entry: known ones in table order, extra-suite rates after."""
    present = {k for e in entries for k, v in e["metrics"].items() if v is not None}
    order = list(KNOWN_COLUMNS)
    head = [k for k in order[:order.index("mc1")] if k in present]  # world behaviour metrics
    tail = [k for k in order[order.index("mc1"):] if k in present]
    return head + sorted(present - set(KNOWN_COLUMNS)) + tail


_ARROWS = {"higher": "↑", "lower": "↓"}


def _title(key: str, directions: dict | None = None) -> str:
    arrow = _ARROWS.get((directions or {}).get(key), "")
    if key in KNOWN_COLUMNS:
        title, known = KNOWN_COLUMNS[key]
        return f"{title} {arrow or known}".strip()
    for suffix, title in (("_over_refusal", "over-refusal"), ("_refusal", "refusal")):
        if key.endswith(suffix):
            return f"{key[:-len(suffix)]} {title} {arrow}".strip()
    return f"{key} {arrow}".strip()


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(doc: dict) -> str:
    entries = doc["variants"]
    columns = metric_columns(entries)
    directions = doc.get("directions", {})
    lines = ["# Evaluation", "",
             "| variant | " + " | ".join(_title(c, directions) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for entry in entries:
        cells = [_cell(entry["metrics"].get(c)) for c in columns]
        lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    counts = {k: v for e in entries for k, v in e.get("counts", {}).items()}
    cut = {k: v for e in entries for k, v in e.get("truncated", {}).items() if v}
    dtypes = sorted({e["dtype"] for e in entries if e.get("dtype")})
    lines += ["", "Items per suite: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."]
    if cut:
        lines.append("Prompts cut from the left to fit the context: "
                     + ", ".join(f"{k} {v}" for k, v in cut.items()) + ".")
    if dtypes:
        lines.append(f"Compute dtype: {', '.join(dtypes)}.")
    defined = definitions(columns)
    if defined:
        lines += ["", *[f"- {text}" for text in defined], "",
                  "Full definitions: `easyalign/eval/metrics.py`."]
    if notes(doc):
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes(doc)]]
    lines += ["", "## Detectors", "",
              # The source by its repository path, as for metrics.py above: a file:// link to
              # this machine's checkout breaks wherever the report is read or moved.
              "The **rule-based** refusal detector, `easyalign/data/rules.py`, flags a "
              "response with a decline anywhere (DECLINE_PATTERNS) or pushback in its first two "
              "sentences not followed by a help pivot (PUSHBACK_PATTERNS, HELP_PIVOTS).", "",
              "<details><summary>DECLINE_PATTERNS, PUSHBACK_PATTERNS, HELP_PIVOTS</summary>", "",
              *[f"- `{p}`" for p in rules.REFUSAL_PATTERNS + rules.HELP_PIVOTS], "",
              "</details>", "",
              "<details><summary>IDK_PATTERNS</summary>", "",
              *[f"- `{p}`" for p in rules.IDK_PATTERNS], "", "</details>", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> Path:
    """Grouped bars: one group per [0, 1] metric, one bar per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = doc["variants"]
    keys = [k for k in metric_columns(entries) if k not in _UNBOUNDED]
    width = 0.8 / max(len(entries), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(keys) + 2), 4))
    for i, entry in enumerate(entries):
        values = [entry["metrics"].get(k) for k in keys]
        xs = [j + (i - (len(entries) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [0.0 if v is None else v for v in values], width, label=entry["name"])
    ax.set_xticks(range(len(keys)), [_title(k, doc.get("directions")) for k in keys],
                  rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("evaluation (rates in [0, 1])")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _replace(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)
    return path


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def write_samples(workdir: Path, name: str, records: Sequence[dict]) -> Path:
    path = Path(workdir) / "samples" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_tmp(path), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return _replace(_tmp(path), path)


def write_results(workdir: Path, doc: dict) -> dict[str, Path]:
    """results.png, results.md, then results.json (the completion marker) into `workdir`,
    each written to a temporary file and renamed into place."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": workdir / "results.json", "md": workdir / "results.md",
             "png": workdir / "results.png"}
    _replace(plot(doc, _tmp(paths["png"])), paths["png"])
    _tmp(paths["md"]).write_text(markdown(doc), encoding="utf-8")
    _replace(_tmp(paths["md"]), paths["md"])
    _tmp(paths["json"]).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    _replace(_tmp(paths["json"]), paths["json"])
    return paths


def load_results(path: str | Path) -> dict[str, dict]:
    """`results.json` → {variant name: metrics}."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: results schema {doc.get('schema')!r}, expected {SCHEMA}")
    return {entry["name"]: entry["metrics"] for entry in doc["variants"]}
