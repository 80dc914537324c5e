"""IFEval-style instruction following (Zhou et al., 2023): each checker on responses that pass and
fail it (counts worked out by hand in the comments), loose variants, accuracy levels, bad records
and the shipped instruction file."""

import json

import pytest

from easyalign.data import ifeval as I

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["durable", "leak-proof"]},
     "A DURABLE, leak-proof bottle.", "A durable bottle."),
    ("keywords:frequency", {"keyword": "coffee", "frequency": 3, "relation": "at least"},
     "Coffee, coffee and more coffee.", "Coffee and tea, then coffee."),  # 3 vs 2
    ("keywords:frequency", {"keyword": "green", "frequency": 2, "relation": "less than"},
     "A green park.", "Green trees, green roofs."),  # 1 vs 2
    ("keywords:forbidden_words", {"forbidden_words": ["water", "boil"]},
     "Heat the kettle; waterfalls are nice.", "Boil it first."),  # 'waterfalls' is not 'water'
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 4, "let_relation": "at least"},
     "Zany zebras zigzag Z.", "Zebras graze."),  # z: 5 (capitals counted) vs 2
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 5, "let_relation": "less than"},
     "Hot sun, cool pool.", "Eleven eels everywhere."),  # e: 0 vs 9
    ("length_constraints:number_sentences", {"num_sentences": 4, "relation": "less than"},
     "One. Two! Three?", "One. Two. Three. Four."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith came. He sat. He left...", "Mr. Brown ate e.g. bread. Done."),  # abbreviations
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"},
     "Four words right here.", "Five words are right here."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "it's fine", "one two"),  # "it's fine" = it, s, fine: 3 \w runs
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "A\n***\nB\n***\nC\n***", "A\n***\n\n***\nC"),  # trailing divider ok; empty middle fails
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "tides"},
     "The moon.\n\n**Tides,** rise and fall.\n\nEnd.", "The moon.\n\nWaves.\n\nTides."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], see you on [date].", "Dear [name], see you soon. []"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Thanks!\n\np.s. see you", "Thanks! Note: PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Bye.\nP.P.S. one more", "Bye.\nP.S. one more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "Tips:\n* one\n* two\n- three", "* one\n* two\n**bold** line"),  # '**bold**' is no bullet
    ("detectable_format:constrained_response", {},
     "My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "A *first* and **second** part.", "A *first* and ** ** part."),  # empty span not counted
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nPlan.\nSECTION 2\nGo.", "SECTION 1\nPlan and go."),
    ("detectable_format:json_format", {},
     "```json\n{\"a\": [1, 2]}\n```", "{'a': 1}"),  # single quotes are not JSON
    ("detectable_format:title", {}, "<<Rain Song>>\nDrip drop.", "<< >>\nDrip drop."),
    ("combination:two_responses", {}, "Bread Co.\n******\nCrumbs.", "Bread Co.\n******\nBread Co."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a painter."},
     "name a painter. Monet.", "Monet. Name a painter."),
    ("startend:end_checker", {"end_phrase": "Enjoy your meal."},
     "Eggs and toast. Enjoy your meal.", "Enjoy your meal. Bye."),
    ("startend:quotation", {}, '"Read more."', '"Read more.'),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "BIG SALE today, NOW!", "Big SALE today!"),  # 3 (BIG, SALE, NOW) vs 1
    ("change_case:english_capital", {}, "DANGER: KEEP OUT!", "DANGER: Keep out!"),
    ("change_case:english_lowercase", {}, "a quiet evening, 8 pm.", "a quiet Evening."),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, one here."),
]


@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_checker_passes_and_fails(instruction, kwargs, good, bad):
    check = I.CHECKERS[instruction]
    assert check(good, **kwargs) is True
    assert check(bad, **kwargs) is False


def test_every_checker_is_tested():
    assert {c[0] for c in CASES} == set(I.CHECKERS)


def test_counts():
    assert I.count_words("Hello, world! It's 2 o'clock.") == 7  # Hello world It s 2 o clock
    assert I.count_sentences("One. Two?! Three") == 3
    assert I.count_sentences("") == 0


def test_loose_variants_and_score():
    record = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma",
                                                       "startend:end_checker"],
              "kwargs": [{}, {"end_phrase": "Bye."}]}
    # The first line has a comma and the last line follows the end phrase: strict fails the
    # comma rule, loose passes it by dropping the first line; the end rule fails both ways.
    response = "Sure, here it is:\nNo commas in this part. Bye.\nHope this helps"
    result = I.score(record, response)
    assert result["instructions_strict"] == [False, False]
    assert result["instructions_loose"] == [True, True]  # last line dropped: ends with "Bye."
    assert result["prompt_strict"] is False and result["prompt_loose"] is True
    assert len(I.loose_variants("a\nb\nc")) == 8
    assert I.loose_variants("*a*\nb\n*c*")[4:] == ["a\nb\nc", "b\nc", "a\nb", "b"]
    # Markdown asterisks around the answer: strict fails, loose (asterisks removed) passes.
    assert I.score({"prompt": "p", "instruction_id_list": ["startend:quotation"]},
                   '**"Hi."**')["instructions_loose"] == [True]
    assert I.score(record, "")["prompt_strict"] is False  # an empty response follows nothing


def test_accuracy_levels():
    results = [{"scored": ["a", "b"], "instructions_strict": [True, False],
                "instructions_loose": [True, True], "prompt_strict": False, "prompt_loose": True},
               {"scored": ["a"], "instructions_strict": [True], "instructions_loose": [True],
                "prompt_strict": True, "prompt_loose": True},
               {"scored": [], "instructions_strict": [], "instructions_loose": [],
                "prompt_strict": False, "prompt_loose": False}]  # nothing scored: left out
    assert I.accuracy(results) == {"ifeval_prompt_strict": 0.5, "ifeval_prompt_loose": 1.0,
                                   "ifeval_instruction_strict": pytest.approx(2 / 3),
                                   "ifeval_instruction_loose": 1.0}
    assert I.accuracy([])["ifeval_prompt_strict"] is None


def test_reward_is_a_plain_function_and_language_is_skipped():
    record = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma",
                                                       "language:response_language",
                                                       "change_case:english_lowercase"],
              "kwargs": [{}, {"language": "fr"}, {"capital_frequency": None}]}  # nulls ignored
    assert I.reward(record, "all lower, but a comma") == 0.5
    assert I.VERIFIABLE_REWARDS["ifeval_strict"](record, "fine") == 1.0
    assert I.score(record, "fine")["skipped"] == ["language:response_language"]


def test_bad_records_name_file_line_and_key(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {"prompt": "p", "instruction_id_list": ["length_constraints:number_words"],
           "kwargs": [{"num_words": 5, "relation": "about"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: kwargs\[0\].*'about'"):
        I.load_records(path)
    path.write_text(json.dumps({**good, "instruction_id_list": ["x:y"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: instruction_id_list\[0\] 'x:y'"):
        I.load_records(path)
    path.write_text(json.dumps({**good, "kwargs": [{"nope": 1}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: kwargs\[0\].*nope"):
        I.load_records(path)
    path.write_text(json.dumps({"instruction_id_list": ["punctuation:no_comma"]}) + "\n")
    with pytest.raises(ValueError, match="key 'prompt'"):
        I.load_records(path)


def test_shipped_instruction_file_covers_every_checker():
    records = I.load_records(I.BUILTIN)
    assert 50 <= len(records) <= 100
    assert {i for r in records for i in r["instruction_id_list"]} == set(I.CHECKERS)
    assert len({r["prompt"] for r in records}) == len(records)
