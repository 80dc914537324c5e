"""The built-in world: determinism, held-out hygiene, correct answers, controlled flaws."""
import dataclasses
import json
import re

from pathlib import Path

import pytest

from easyalign.data.world import (IDK, KINDS, REFUSALS, SUITES, WorldConfig, build_world, grade, grade_fact,
                                  grade_instruction)
from easyalign.data.world_tasks import ATTRIBUTES, FACT_TEMPLATES, fact_response
from easyalign.data.rules import is_idk, is_refusal


@pytest.fixture(scope="module")
def world():
    return build_world()


def _training_prompts(world):
    return ({r["prompt"] for r in world.sft_train} | {r["prompt"] for r in world.preference_train}
            | {r["prompt"] for r in world.rl_prompts})


def _template_regex(template):
    return re.compile(re.escape(template).replace(re.escape("{name}"), r"[A-Z][a-z]+") + "$")


def _files(world, directory):
    return {name: open(path, "rb").read() for name, path in sorted(world.write(directory).items())}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = _files(build_world(WorldConfig(seed=7)), tmp_path / "a")
    again = _files(build_world(WorldConfig(seed=7)), tmp_path / "b")
    other = _files(build_world(WorldConfig(seed=8)), tmp_path / "c")
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_sizes_and_record_shapes(world):
    config = world.config
    assert len(world.sft_train) == config.n_sft
    assert len(world.preference_train) == config.n_pref_train
    assert len(world.preference_heldout) == config.n_pref_heldout
    assert len(world.rl_prompts) == config.n_rl_prompts
    assert set(world.eval_suites) == set(SUITES)
    assert {r.keys() == {"prompt", "response", "kind"} for r in world.sft_train} == {True}
    assert {r.keys() == {"prompt", "chosen", "rejected", "kind"}
            for r in world.preference_train + world.preference_heldout} == {True}
    assert {r.keys() == {"prompt", "kind"} for r in world.rl_prompts} == {True}
    assert {r["kind"] for r in world.sft_train + world.preference_train + world.rl_prompts} == set(KINDS)
    for suite, items in world.eval_suites.items():
        assert len(items) == config.n_eval_per_suite
        assert len({it["prompt"] for it in items}) == len(items), f"duplicate prompts in {suite}"
        assert {it["kind"] for it in items} == {SUITES[suite]}
    assert json.loads(json.dumps(dataclasses.asdict(world))) is not None


def test_heldout_prompts_never_in_training(world):
    training = _training_prompts(world)
    heldout_eval = {it["prompt"] for items in world.eval_suites.values() for it in items}
    pref_heldout = {r["prompt"] for r in world.preference_heldout}
    assert not heldout_eval & training
    assert not pref_heldout & training
    assert not pref_heldout & {r["prompt"] for r in world.preference_train}
    assert not pref_heldout & heldout_eval


def test_eval_answers_are_correct_by_the_graders(world):
    table = {e["name"]: e for e in world.entities}
    for item in world.eval_suites["instructions"]:
        assert grade_instruction(item["answer"], item["answer"])
    for item in world.eval_suites["facts"]:
        assert item["answer"] == table[item["entity"]][item["attribute"]]
        assert grade_fact(fact_response(item["entity"], item["attribute"], item["answer"]), item["answer"])
    for item in world.eval_suites["unknown"]:
        assert item["answer"] == IDK and item["entity"] not in table and is_idk(item["answer"])
    for item in world.eval_suites["benign"]:
        assert grade("benign", item["answer"]) and world.grade(item["prompt"], item["answer"])
    for item in world.eval_suites["harmful"]:
        assert all(world.grade(item["prompt"], refusal) for refusal in REFUSALS)
        assert not world.grade(item["prompt"], "Sure! Here is how.")


def test_every_pair_is_correct_versus_flawed(world):
    for pair in world.preference_train + world.preference_heldout:
        assert world.grade(pair["prompt"], pair["chosen"]), pair
        assert not world.grade(pair["prompt"], pair["rejected"]), pair
        assert pair["chosen"] != pair["rejected"]


def test_safety_and_unknown_pairs_match_the_rules(world):
    pairs = world.preference_train + world.preference_heldout
    for pair in (p for p in pairs if p["kind"] == "harmful"):
        assert is_refusal(pair["chosen"]) and not is_refusal(pair["rejected"])
    for pair in (p for p in pairs if p["kind"] == "benign"):
        assert not is_refusal(pair["chosen"]) and is_refusal(pair["rejected"])
    for pair in (p for p in pairs if p["kind"] == "unknown"):
        assert pair["chosen"] == IDK and not is_idk(pair["rejected"]) and not is_refusal(pair["rejected"])
    assert all(is_refusal(r) and not is_idk(r) for r in REFUSALS)
    assert is_idk(IDK) and not is_refusal(IDK)


@pytest.mark.parametrize("flaw_rate,safety_flaw_rate", [(0.0, 0.0), (0.3, 0.5)])
def test_flawed_sft_fraction_matches_flaw_rate(flaw_rate, safety_flaw_rate):
    world = build_world(WorldConfig(flaw_rate=flaw_rate, safety_flaw_rate=safety_flaw_rate,
                                    n_sft=2000))
    for kind in KINDS:
        records = [r for r in world.sft_train if r["kind"] == kind]
        wrong = sum(not world.grade(r["prompt"], r["response"]) for r in records) / len(records)
        expected = {"benign": 0.0, "harmful": safety_flaw_rate,
                    "unknown": safety_flaw_rate}.get(kind, flaw_rate)
        assert wrong == pytest.approx(expected, abs=0.005), kind


def test_held_out_facts_use_new_phrasings_of_taught_facts(world):
    heldout = {a: [_template_regex(t) for t in FACT_TEMPLATES[a]["heldout"]] for a in ATTRIBUTES}
    all_heldout = [rx for rxs in heldout.values() for rx in rxs]
    for item in world.eval_suites["facts"]:
        assert any(rx.match(item["prompt"]) for rx in heldout[item["attribute"]]), item
    assert not any(rx.match(p) for p in _training_prompts(world) for rx in all_heldout)
    # Every fact the suite asks is demonstrated correctly in SFT (so the suite measures recall).
    taught = {(r["prompt"], r["response"]) for r in world.sft_train if r["kind"] == "fact"}
    taught_responses = {response for _, response in taught}
    for item in world.eval_suites["facts"]:
        assert fact_response(item["entity"], item["attribute"], item["answer"]) in taught_responses


def test_heldout_unknown_names_appear_in_no_training_text(world):
    names = {item["entity"] for item in world.eval_suites["unknown"]}
    assert len(names) == world.config.n_unknown_heldout  # 64 questions cover the whole held-out pool
    assert not names & {e["name"] for e in world.entities}
    pattern = re.compile(r"\b(?:" + "|".join(sorted(names)) + r")\b")
    assert not any(pattern.search(text) for text in world.all_texts())
    # ...while every known entity does.
    assert all(any(e["name"] in r["prompt"] for r in world.sft_train) for e in world.entities)


def test_graders():
    assert grade_instruction("2 5 7.", "2, 5, 7") and grade_instruction(" 12 ", "12")
    assert grade_instruction("Tac", "tac")  # case does not matter...
    assert not grade_instruction("cat", "CAT") and grade_instruction("CAT.", "CAT")  # ...except for capitals
    assert not grade_instruction("The answer is 12", "12") and not grade_instruction("", "0")
    assert grade_fact("Kalor has 3 cats.", "3") and not grade_fact("Kalor has 13 cats.", "3")
    assert grade_fact("kalor lives in TAVPORT", "Tavport")
    assert not grade_fact("I'm not sure, maybe Tavport.", "Tavport")
    assert grade("unknown", IDK) and not grade("unknown", "Kalor lives in Tavport.")
    assert grade("harmful", REFUSALS[0]) and not grade("benign", REFUSALS[0])


def test_write_round_trips(world, tmp_path):
    paths = world.write(tmp_path)
    assert set(paths) == {"sft_train", "preference_train", "preference_heldout", "rl_prompts", "world",
                          *(f"eval_{suite}" for suite in SUITES)}
    with open(paths["sft_train"], encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == world.sft_train
    with open(paths["eval_facts"], encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == world.eval_suites["facts"]
    summary = json.load(open(paths["world"]))
    assert summary["config"]["seed"] == world.config.seed and summary["counts"]["rl_prompts"] == len(world.rl_prompts)
    assert summary["entities"] == world.entities


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        WorldConfig(kind_weights=(1.0, 1.0))
    with pytest.raises(ValueError):
        WorldConfig(flaw_rate=1.0)
    with pytest.raises(ValueError, match="too small"):  # 4 entities x 4 attributes x 2 phrasings < 100
        build_world(WorldConfig(n_entities=4, n_eval_per_suite=100))
    with pytest.raises(ValueError, match="raise n_sft"):
        build_world(WorldConfig(n_entities=200, n_sft=500))


def test_world_files_appear_complete_or_not_at_all(tmp_path, monkeypatch):
    """A new world directory appears in one rename: a build stopped there leaves neither it nor
    a staging directory. Into an existing one (a tokenizer-only world completed) the files move
    one by one, each part's mark last: a build stopped after any file leaves no mark of a part
    before the rest of that part. The next call finishes with the bytes of an uninterrupted
    build."""
    import os

    from configs import base
    from easyalign.data import world_source

    def config(name):
        c = base.get_config()
        c.data.world.dir = str(tmp_path / name)
        return c

    def files(directory):
        return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
                if p.is_file()}

    whole = world_source.ensure_world(config("whole"))
    expected = files(whole)
    assert len(expected) > 3 and {world_source.WORLD_DONE, world_source.DATA_DONE} <= set(expected)
    records = [f for f in expected if f.parts[0] != "tokenizer"]

    real_replace = os.replace

    def stop_after(stop):
        moved = []

        def replace(src, dst):
            if len(moved) == stop:
                raise KeyboardInterrupt
            real_replace(src, dst)
            moved.append(dst)

        monkeypatch.setattr(os, "replace", replace)

    stop_after(0)
    with pytest.raises(KeyboardInterrupt):
        world_source.ensure_world(config("fresh"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole"]  # no half-made world, no staging
    assert files(world_source.ensure_world(config("fresh"))) == expected

    for stop in (1, len(records) - 1, len(records) + 1):
        directory = world_source.ensure_world(config(f"cut{stop}"), tokenizer_only=True)
        tokenizer = files(directory)
        assert tokenizer == {f: b for f, b in expected.items() if f.parts[0] == "tokenizer"}
        stop_after(stop)
        with pytest.raises(KeyboardInterrupt):
            world_source.ensure_world(config(directory.name))
        monkeypatch.setattr(os, "replace", real_replace)
        present = set(files(directory))
        assert len(present - set(tokenizer)) == min(stop, len(records))
        assert (world_source.DATA_DONE in present) == (set(records) <= present)
        assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
        assert files(world_source.ensure_world(config(directory.name))) == expected


def test_a_run_that_reads_no_world_record_gets_only_its_tokenizer(tmp_path):
    """A scratch model (the tiny presets) on a file of the user's reads only the world's
    tokenizer: that is all `data.builtin.prepare` writes beside the workdir, byte for byte the
    tokenizer of the whole world, which a run on `data.source="world"` gets."""
    from configs import sft
    from easyalign.data import builtin

    config = sft.get_config("tiny")
    config.workdir = str(tmp_path / "runs" / "mine" / "sft")
    config.data.source = str(tmp_path / "mine.jsonl")
    [(name, directory)] = builtin.prepare(config).items()
    assert name == "world" and directory.parent == tmp_path / "runs" / "mine"
    tokenizer = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
                 if p.is_file()}
    assert {p.parts[0] for p in tokenizer} == {"tokenizer"}
    assert (directory / "tokenizer" / "tokenizer.json").is_file()

    config.data.source = "world"
    assert builtin.prepare(config) == {"world": directory}  # the same world, now whole
    whole = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
             if p.is_file()}
    assert {p for p in whole if p.parts[0] != "tokenizer"} >= {
        Path("world.json"), Path("sft_train.jsonl"), Path("rl_prompts.jsonl")}
    assert {p: b for p, b in whole.items() if p.parts[0] == "tokenizer"} == tokenizer
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]
