"""Verifiable instruction following in the IFEval style (Zhou et al., 2023, "Instruction-Following
Evaluation for Large Language Models", arXiv:2311.07911).

Input format: IFEval's public `input_data.jsonl`, one prompt per line,

    {"key": 1000, "prompt": "Write a 300+ word summary ... Do not use any commas ...",
     "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"relation": "at least", "num_words": 300}]}

`kwargs[i]` holds the arguments of `instruction_id_list[i]` (null values are ignored, as in the
public file). Each instruction is a checker `(response, **kwargs) -> bool` of :data:`CHECKERS`,
written after the paper's definitions (Table 1 and its released code); counts compare with
`relation` "less than" (count < N) or "at least" (count ≥ N).

Accuracy (the paper's §3):

* **strict**: the checker on the response as it is;
* **loose**: the instruction counts as followed if the checker passes on any of the response's
  eight variants — as is, without its first line, without its last line, without both, each
  with and without the markdown `*` characters — "to reduce false negatives";
* **prompt-level**: all of a prompt's instructions followed; **instruction-level**: the
  fraction of all instructions followed, pooled over prompts.

Not implemented: `language:response_language` (needs a language identifier such as
`langdetect`, a dependency easyalign does not take); such an instruction is recorded as
skipped and left out of both levels. The `change_case:english_*` checkers test the case only,
not that the text is English.

`score(record, response)` is a plain function of one prompt record and one response, so it can
serve as a verifiable reward (`reward`, registry-friendly: `(record, response) -> float`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from easyalign.data.sources import read_jsonl_objects

RELATIONS = ("less than", "at least")
BUILTIN = Path(__file__).parent / "ifeval_prompts.jsonl"  # 65 prompts written for easyalign
UNSUPPORTED = ("language:response_language",)


def _compare(count: int, relation: str, n: int) -> bool:
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"relation {relation!r} is not one of {RELATIONS}")


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of `\\w` (nltk's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


_ABBREVIATIONS = r"(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bDr)(?<!\bSt)(?<!\be\.g)(?<!\bi\.e)(?<!\betc)"


def count_sentences(text: str) -> int:
    """Sentences: non-empty stretches ended by `.`, `!` or `?` (runs count once, common
    abbreviations do not end one) followed by space or the end of the text."""
    parts = re.split(_ABBREVIATIONS + r"[.!?]+(?=\s|$)", text.strip())
    return sum(1 for p in parts if re.search(r"\w", p))


# ----------------------------------------------------------------------------- checkers
def keywords_existence(response: str, keywords: Sequence[str]) -> bool:
    """Every keyword appears (case-insensitive)."""
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


def keywords_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword's occurrences (case-insensitive) compare with `frequency`."""
    return _compare(len(re.findall(re.escape(keyword), response, re.IGNORECASE)), relation,
                    frequency)


def keywords_forbidden_words(response: str, forbidden_words: Sequence[str]) -> bool:
    """None of the words appears as a whole word (case-insensitive)."""
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, re.IGNORECASE)
                   for w in forbidden_words)


def keywords_letter_frequency(response: str, letter: str, let_frequency: int,
                              let_relation: str) -> bool:
    """The letter's occurrences (case-insensitive) compare with `let_frequency`."""
    return _compare(response.lower().count(letter.lower()), let_relation, let_frequency)


def number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    """The sentence count (`count_sentences`) compares with `num_sentences`."""
    return _compare(count_sentences(response), relation, num_sentences)


def number_words(response: str, num_words: int, relation: str) -> bool:
    """The word count (`count_words`) compares with `num_words`."""
    return _compare(count_words(response), relation, num_words)


def number_paragraphs(response: str, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by the markdown divider `***` (an empty
    paragraph between dividers fails; empty ends are not paragraphs)."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int,
                             first_word: str) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by blank lines, the `nth_paragraph`-th
    (1-based) starting with `first_word` (case and surrounding punctuation ignored)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", response) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
        return False
    words = paragraphs[nth_paragraph - 1].split()
    first = words[0].strip("\"'*#_.,;:!?()[]").lower() if words else ""
    return first == first_word.lower()


def number_placeholders(response: str, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders such as `[address]`."""
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= num_placeholders


def postscript(response: str, postscript_marker: str) -> bool:
    """A line starting with the postscript marker ("P.S.", "P.P.S", …)."""
    marker = postscript_marker.strip().lower()
    if marker == "p.p.s":
        pattern = r"^\s*p\.\s?p\.\s?s"
    elif marker == "p.s.":
        pattern = r"^\s*p\.\s?s\."
    else:
        pattern = r"^\s*" + re.escape(marker)
    return bool(re.search(pattern, response.lower(), re.MULTILINE))


def number_bullet_lists(response: str, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines (`* item` or `- item`)."""
    bullets = re.findall(r"^\s*\*[^\*].*$", response, re.MULTILINE)
    bullets += re.findall(r"^\s*-.*$", response, re.MULTILINE)
    return len(bullets) == num_bullets


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(response: str) -> bool:
    """Contains one of the fixed answers of :data:`CONSTRAINED_OPTIONS`."""
    return any(option in response.strip() for option in CONSTRAINED_OPTIONS)


def number_highlighted_sections(response: str, num_highlights: int) -> bool:
    """At least `num_highlights` markdown-highlighted spans (`*text*` or `**text**`)."""
    spans = re.findall(r"\*[^\n\*]*\*", response) + re.findall(r"\*\*[^\n\*]*\*\*", response)
    return sum(1 for s in spans if s.strip("*").strip()) >= num_highlights


def multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections, each opened by `<section_spliter> <number>`."""
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


def json_format(response: str) -> bool:
    """The whole response is JSON (a ```json fence around it is allowed)."""
    text = response.strip()
    text = re.sub(r"^```(?:json)?\s*", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s*```$", "", text).strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    """A non-empty title in double angular brackets, such as `<<poem of joy>>`."""
    return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+?>>", response))


def two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by six asterisks `******`."""
    parts = [p.strip() for p in response.split("******") if p.strip()]
    return len(parts) == 2 and parts[0] != parts[1]


def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    """Starts with `prompt_to_repeat`, word for word (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(response: str, end_phrase: str) -> bool:
    """Ends with `end_phrase` exactly, nothing after it (case and a closing quote ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def capital_word_frequency(response: str, capital_frequency: int,
                           capital_relation: str) -> bool:
    """The number of all-capital words compares with `capital_frequency`."""
    words = re.findall(r"\b\w+\b", response)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def english_capital(response: str) -> bool:
    """Every letter is a capital (and there is at least one)."""
    return response.isupper()


def english_lowercase(response: str) -> bool:
    """No capital letter (and at least one letter)."""
    return response.islower()


def no_comma(response: str) -> bool:
    """No comma at all."""
    return "," not in response


def quotation(response: str) -> bool:
    """The whole response is wrapped in double quotation marks."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# instruction id (IFEval's names) -> checker
CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}


# ----------------------------------------------------------------------------- records
def check_record(record: Mapping[str, Any], where: str = "record") -> dict[str, Any]:
    """A validated prompt record: `{"prompt", "instruction_id_list", "kwargs"}` with kwargs
    cleaned of nulls. Raises ValueError naming `where` and the key on a bad record."""
    prompt, ids = record.get("prompt"), record.get("instruction_id_list")
    kwargs = record.get("kwargs", [{}] * len(ids or []))
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: key 'prompt' missing or empty")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{where}: key 'instruction_id_list' must be a non-empty list of ids")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise ValueError(f"{where}: key 'kwargs' must be a list of {len(ids)} objects, one per "
                         "instruction")
    cleaned = []
    for i, (instruction, args) in enumerate(zip(ids, kwargs)):
        if instruction not in CHECKERS and instruction not in UNSUPPORTED:
            raise ValueError(f"{where}: instruction_id_list[{i}] {instruction!r} is unknown; "
                             f"known: {sorted(CHECKERS)}")
        args = {k: v for k, v in (args or {}).items() if v is not None}
        if instruction in CHECKERS:
            try:
                CHECKERS[instruction]("", **args)
            except TypeError as e:
                raise ValueError(f"{where}: kwargs[{i}] for {instruction!r}: {e}") from None
            except ValueError as e:
                raise ValueError(f"{where}: kwargs[{i}] for {instruction!r}: {e}") from None
        cleaned.append(args)
    return {**record, "prompt": prompt, "instruction_id_list": ids, "kwargs": cleaned}


def load_records(path: str | Path) -> list[dict]:
    """The prompt records of an IFEval-format JSONL file (validated, see `check_record`)."""
    records = [{**check_record(data, where), "where": where}
               for data, where in read_jsonl_objects(path)]
    if not records:
        raise ValueError(f"{path}: no prompt records")
    return records


# ----------------------------------------------------------------------------- scoring
def loose_variants(response: str) -> list[str]:
    """The paper's eight loose variants: first/last line removed or not, `*` removed or not."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
           "\n".join(lines[1:-1]).strip()]
    return cut + [c.replace("*", "") for c in cut]


def score(record: Mapping[str, Any], response: str) -> dict[str, Any]:
    """Strict and loose results of one response to one prompt record.

    Returns `{"instructions_strict": [bool], "instructions_loose": [bool], "prompt_strict":
    bool, "prompt_loose": bool, "scored": [ids], "skipped": [ids]}` over the supported
    instructions (`UNSUPPORTED` ones are listed in `skipped`). A record with unchecked kwargs
    goes through `check_record` first.
    """
    record = check_record(record)
    strict, loose, scored, skipped = [], [], [], []
    variants = [v for v in loose_variants(response) if v.strip()]
    for instruction, args in zip(record["instruction_id_list"], record["kwargs"]):
        if instruction in UNSUPPORTED:
            skipped.append(instruction)
            continue
        check = CHECKERS[instruction]
        scored.append(instruction)
        strict.append(bool(response.strip()) and check(response, **args))
        loose.append(any(check(v, **args) for v in variants))
    return {"instructions_strict": strict, "instructions_loose": loose,
            "prompt_strict": bool(strict) and all(strict),
            "prompt_loose": bool(loose) and all(loose), "scored": scored, "skipped": skipped}


def reward(record: Mapping[str, Any], response: str) -> float:
    """A verifiable reward in [0, 1]: the fraction of the prompt's instructions followed
    (strict). For GRPO-style training: `(prompt record, response text) -> float`."""
    result = score(record, response)
    return sum(result["instructions_strict"]) / max(len(result["scored"]), 1)


def reward_loose(record: Mapping[str, Any], response: str) -> float:
    """As `reward`, with the loose criterion."""
    result = score(record, response)
    return sum(result["instructions_loose"]) / max(len(result["scored"]), 1)


VERIFIABLE_REWARDS: dict[str, Callable[[Mapping[str, Any], str], float]] = {
    "ifeval_strict": reward, "ifeval_loose": reward_loose}


def accuracy(results: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Prompt- and instruction-level strict and loose accuracy over `score` results (prompts
    with no supported instruction left out; None when nothing is left)."""
    results = [r for r in results if r["scored"]]
    if not results:
        return dict.fromkeys(("ifeval_prompt_strict", "ifeval_prompt_loose",
                              "ifeval_instruction_strict", "ifeval_instruction_loose"))
    pooled = {k: [x for r in results for x in r[f"instructions_{k}"]] for k in ("strict", "loose")}
    return {"ifeval_prompt_strict": sum(r["prompt_strict"] for r in results) / len(results),
            "ifeval_prompt_loose": sum(r["prompt_loose"] for r in results) / len(results),
            "ifeval_instruction_strict": sum(pooled["strict"]) / len(pooled["strict"]),
            "ifeval_instruction_loose": sum(pooled["loose"]) / len(pooled["loose"])}
