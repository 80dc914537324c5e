"""Data as every phase loads it (`runsetup.load_examples`): the `data` config block from the
command line and pipeline overrides, `data.on_empty`, the held-out evaluation split of a
real source (`data.eval_source="auto"`) and the built-in sources looked up by name
(`data.builtin`). Real files come from ``../shared/data`` and the tests
that need them skip where it is absent."""
import json
import os
import re
from pathlib import Path

import pytest

from easyalign import pipeline
from easyalign.algorithms import runsetup
from easyalign.cli import load_config
from easyalign.data import builtin
from easyalign.data.holdout import held_out_rows
from easyalign.data.sources import DataError, Record

SHARED = Path(os.environ.get("EASYALIGN_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
HH = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"
ALPACA = SHARED / "alpaca/alpaca_5000.json"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent")
    return path


def run_for(*flags: str, config: str = "configs/sft.py:tiny", world=None) -> runsetup.Run:
    """A Run holding a config parsed like the command line's, with the built-in world's
    directory `world` when given; data loading needs nothing else."""
    return runsetup.Run(config=load_config([f"--config={config}", *flags]), mesh=None,
                        workdir=Path("."), tokenizer=None,
                        source_dirs={"world": world} if world else {})


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sources(examples) -> list[str]:
    return [ex["source"] for ex in examples]


# ----------------------------------------------------------------------------- column flags
ROWS = [{"question": f"Add {i} and 1.", "context": "Be exact." if i % 2 else "",
         "answer": str(i + 1), "id": i} for i in range(40)]
EXPECTED_PROMPTS = [r["question"] + ("\n\nBe exact." if r["context"] else "") for r in ROWS]


@pytest.mark.parametrize("flags", [
    ("--config.data.columns.prompt=question+context", "--config.data.columns.response=answer"),
    ("--config.data.columns={'prompt': ['question', 'context'], 'response': 'answer'}",),
    ("--config.data.columns={'prompt': 'question+context', 'response': 'answer'}",),
], ids=["dotted", "dict-list", "dict-plus"])
def test_column_mapping_from_the_command_line(tmp_path, flags):
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    run = run_for(f"--config.data.source={path}", "--config.data.eval_source=", *flags)
    examples = runsetup.load_examples(run, "sft", "train")
    assert [ex["messages"][0]["content"] for ex in examples] == EXPECTED_PROMPTS
    assert [ex["messages"][1]["content"] for ex in examples] == [r["answer"] for r in ROWS]
    # the row's own fields ride along beside the mapped ones (records.py docstring)
    assert [(ex["question"], ex["answer"], ex["id"]) for ex in examples] == [
        (r["question"], r["answer"], r["id"]) for r in ROWS]


def test_column_mapping_in_pipeline_overrides(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    pipe = load_config(["--config=configs/pipeline.py:tiny", f"--config.workdir={tmp_path}/runs",
                        "--config.pipeline.overrides=("
                        f"'sft:data.source={path}', 'sft:data.eval_source=', "
                        "'sft:data.columns.prompt=question+context', "
                        "'sft:data.columns.response=answer', "
                        f"'dpo:data.source={path}', "
                        "\"dpo:data.columns={'prompt': 'question', 'chosen': 'answer', "
                        "'rejected': 'context'}\")"])
    overrides = pipeline.parse_overrides(pipe.pipeline.overrides)
    sft = pipeline.stage_config(pipe, "sft", "sft", "tiny", overrides)
    run = runsetup.Run(config=sft, mesh=None, workdir=tmp_path, tokenizer=None)
    examples = runsetup.load_examples(run, "sft", "train")
    assert [ex["messages"][0]["content"] for ex in examples] == EXPECTED_PROMPTS
    dpo = pipeline.stage_config(pipe, "dpo", "dpo", "tiny", overrides)
    assert dict(dpo.data.columns) == {"prompt": "question", "chosen": "answer",
                                      "rejected": "context"}


def test_unknown_column_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ROWS)
    run = run_for(f"--config.data.source={path}",
                  "--config.data.columns={'promt': 'question'}")
    with pytest.raises(ValueError, match=r"data.columns: unknown field\(s\) \['promt'\]"):
        runsetup.load_examples(run, "sft", "train")


def test_data_format_names_a_file_without_a_known_suffix(tmp_path):
    path = write_jsonl(tmp_path / "train.data", [{"prompt": "p", "response": "r"}] * 3)
    run = run_for(f"--config.data.source={path}", "--config.data.format=jsonl",
                  "--config.data.eval_source=")
    assert len(runsetup.load_examples(run, "sft", "train")) == 3
    with pytest.raises(ValueError, match="data.format"):
        runsetup.load_examples(run_for(f"--config.data.source={path}"), "sft", "train")


# ----------------------------------------------------------------------------- held-out split
def test_held_out_split_of_a_real_source(tmp_path, capsys):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": f"q{i}", "response": f"a{i}"}
                                               for i in range(100)])
    run = run_for(f"--config.data.source={path}")
    assert run.config.data.eval_source == "auto"
    train = runsetup.load_examples(run, "sft", "train")
    line = capsys.readouterr().out.strip()
    assert line == (f"[data] held out 5 of 100 records of {path} for evaluation "
                    "(data.eval_fraction=0.05, data.eval_max=1000, data.eval_seed=0; "
                    "data.eval_source=auto)")
    held = runsetup.load_examples(run, "sft", "eval")
    assert len(held) == 5 and len(train) == 95
    assert set(sources(train)).isdisjoint(sources(held))
    assert sorted(sources(train) + sources(held), key=lambda w: int(w.rsplit(":", 1)[1])) == [
        f"{path}:{i}" for i in range(1, 101)]
    # Deterministic; the same rows whatever the record kind (a prompt set from the same file).
    assert sources(runsetup.load_examples(run, "sft", "eval")) == sources(held)
    assert sources(runsetup.load_examples(run, "prompt", "eval")) == sources(held)
    # Another seed holds out other rows; a cap and a fraction bound the count.
    other = run_for(f"--config.data.source={path}", "--config.data.eval_seed=1")
    assert sources(runsetup.load_examples(other, "sft", "eval")) != sources(held)
    capped = run_for(f"--config.data.source={path}", "--config.data.eval_fraction=0.5",
                     "--config.data.eval_max=7")
    assert len(runsetup.load_examples(capped, "sft", "eval")) == 7
    assert len(runsetup.load_examples(capped, "sft", "train")) == 93


def test_held_out_split_keeps_duplicates_together_and_refuses_to_hold_out_everything():
    from easyalign.data.sources import Record

    rows = [Record({"prompt": f"q{i % 10}"}, f"f:{i}") for i in range(100)]  # 10 copies each
    held = held_out_rows(rows, 0.05, 0, seed=0)
    assert len(held) == 10 and len({rows[i].data["prompt"] for i in held}) == 1
    with pytest.raises(ValueError, match=r"data.eval_fraction=1.0 must be in \[0, 1\)"):
        held_out_rows(rows, 1.0, 0, seed=0)
    assert held_out_rows(rows, 0.0, 0, seed=0) == set()


def test_explicit_eval_sources_and_the_world(tmp_path, built_world):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "e", "response": "b"}] * 3)
    run = run_for(f"--config.data.source={train}", f"--config.data.eval_source={evaluation}")
    assert len(runsetup.load_examples(run, "sft", "train")) == 4  # nothing held out
    assert sources(runsetup.load_examples(run, "sft", "eval")) == [f"{evaluation}:{i}"
                                                                for i in (1, 2, 3)]
    assert runsetup.load_examples(run_for(f"--config.data.source={train}",
                                        "--config.data.eval_source="), "sft", "eval") == []
    # On the world (the default source), eval stays the world's own held-out file.
    run = run_for(world=built_world)
    assert sources(runsetup.load_examples(run, "sft", "eval"))[0] == (
        f"{built_world}/preference_heldout.jsonl:1")
    assert len(runsetup.load_examples(run, "sft", "train")) == 3000


def test_built_in_sources_are_looked_up_by_name(tmp_path, built_world):
    """A stage prepares the built-in sources its config reads or whose tokenizer a scratch
    model needs, and takes files and tokenizer from them through `data.builtin` alone."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    config = load_config(["--config=configs/sft.py:tiny",
                          f"--config.data.world.dir={built_world}"])
    assert builtin.used(config) == ["world"]  # the default data.source
    assert builtin.prepare(config) == {"world": built_world}  # generated already: reused
    config.data.source = str(train)
    assert builtin.used(config) == ["world"]  # a scratch model's default tokenizer
    config.data.tokenizer = str(built_world / "tokenizer")
    assert builtin.used(config) == []
    config.data.eval_source = "world"
    assert builtin.used(config) == ["world"]
    assert builtin.resolve(str(train)) is None and builtin.resolve("hf:x/y") is None
    assert builtin.scratch_tokenizer_dir(config) == built_world / "tokenizer"
    # The tokenizer a prepared source provides is the last fallback of `load_tokenizer`.
    config.data.tokenizer = ""
    config.model.update(init="hf", path="")
    assert runsetup.load_tokenizer(config, {"world": built_world}).eos_token == "<|end|>"
    with pytest.raises(ValueError, match="no tokenizer: set data.tokenizer"):
        runsetup.load_tokenizer(config, {})
    # A kind the source has no file for is one line naming what it serves.
    with pytest.raises(ValueError, match=re.escape(
            "data source 'world' has no teacher records for train (it serves sft train, sft "
            "eval, preference train, preference eval, prompt train, prompt eval)")):
        runsetup.load_examples(run_for(world=built_world), "teacher", "train")


# ----------------------------------------------------------------------------- data.mix
def test_mixed_files_add_their_training_side_only(tmp_path, capsys):
    main = write_jsonl(tmp_path / "main.jsonl", [{"prompt": f"m{i}"} for i in range(20)])
    extra = write_jsonl(tmp_path / "extra.jsonl",
                        [{"instruction": f"x{i}", "input": "", "output": "o"} for i in range(40)])
    run = run_for(f"--config.data.source={main}", f"--config.data.mix=('{extra}*10',)",
                  config="configs/ppo.py:tiny")
    train = runsetup.load_examples(run, "prompt", "train")
    mixed = [ex for ex in train if ex["source"].startswith(str(extra))]
    assert len(train) == 19 + 10 and len(mixed) == 10  # 1 of main's 20 held out (5%)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"[data] prompt train: mixed in 10 of the 40 records of {extra} (2 held out for "
        "evaluation; data.mix)")
    # The mixed file's held-out rows — the ones its own evaluation suite takes — never enter.
    rows = [Record(json.loads(line), "") for line in extra.read_text().splitlines()]
    held = {f"{extra}:{i + 1}" for i in held_out_rows(rows, 0.05, 1000, 0)}
    assert len(held) == 2 and held.isdisjoint(sources(mixed))
    # Alpaca's layout is detected (instruction -> prompt); eval is data.source's alone.
    assert all(ex["prompt"][-1]["content"].startswith("x") for ex in mixed)
    assert all(ex["source"].startswith(str(main))
               for ex in runsetup.load_examples(run, "prompt", "eval"))
    # "PATH" alone mixes every training record; a seed change draws other ones.
    every = run_for(f"--config.data.source={main}", f"--config.data.mix=('{extra}',)",
                    config="configs/ppo.py:tiny")
    assert len(runsetup.load_examples(every, "prompt", "train")) == 19 + 38
    reseeded = run_for(f"--config.data.source={main}", f"--config.data.mix=('{extra}*10',)",
                       "--config.train.seed=1", config="configs/ppo.py:tiny")
    assert sources(runsetup.load_examples(reseeded, "prompt", "train")) != sources(train)


@pytest.mark.parametrize("entry, message", [
    ("{extra}*0", r"data.mix: '.*\*0': the count after '\*' must be a positive integer"),
    ("{extra}*x", r"the count after '\*' must be a positive integer"),
    ("{extra}*39", r"asks for 39 records; .*extra.jsonl has 38 outside its held-out split"),
])
def test_mix_entries_are_checked(tmp_path, entry, message):
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"prompt": f"x{i}"} for i in range(40)])
    run = run_for(f"--config.data.mix=('{entry.format(extra=extra)}',)",
                  config="configs/ppo.py:tiny")
    run.config.data.source = str(extra)
    with pytest.raises(ValueError, match=message):
        runsetup.load_examples(run, "prompt", "train")


def test_mix_entries_map_their_own_columns(tmp_path):
    """A mixed file of another layout: its entry's `:FIELD=COLUMN` suffix maps it, and a file
    left unmapped is one error naming the file and that suffix (not `data.columns`)."""
    main = write_jsonl(tmp_path / "main.jsonl", [{"prompt": f"m{i}"} for i in range(20)])
    goals = tmp_path / "goals.csv"
    goals.write_text("goal,target\n" + "".join(f"Do {i},ok\n" for i in range(20)))
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"}
                                             for i in range(20)])
    run = run_for(f"--config.data.source={main}",
                  f"--config.data.mix=('{goals}*5:prompt=goal', '{qa}:prompt=question')",
                  config="configs/ppo.py:tiny")
    train = runsetup.load_examples(run, "prompt", "train")
    mixed = [ex["prompt"][0]["content"] for ex in train if not ex["source"].startswith(str(main))]
    assert len(mixed) == 5 + 19 and all(m.startswith(("Do ", "q")) for m in mixed)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"p{i}", "response": "r"}
                                                   for i in range(20)])
    sft = run_for(f"--config.data.source={pairs}",
                  f"--config.data.mix=('{qa}*3:prompt=question,response=answer',)")
    assert [ex["messages"][-1]["content"][0] for ex in runsetup.load_examples(sft, "sft", "train")
            if ex["source"].startswith(str(qa))] == ["a"] * 3
    # Unmapped: the file and line, the suffix that maps the column, the file's columns.
    bare = run_for(f"--config.data.source={main}", f"--config.data.mix=('{goals}*5',)",
                   config="configs/ppo.py:tiny")
    with pytest.raises(DataError, match=re.escape(
            f"{goals}:") + r"\d+: field 'prompt': missing .*; map a column to it with " +
            re.escape(f"data.mix '{goals}*5:prompt=COLUMN': its columns are ['goal', 'target']")):
        runsetup.load_examples(bare, "prompt", "train")
    # A field the mapping leaves out: the file's columns, not the mapped record's.
    partial = run_for(f"--config.data.source={pairs}",
                      f"--config.data.mix=('{goals}*5:prompt=goal',)")
    with pytest.raises(DataError, match=r"field 'response': missing.*" + re.escape(
            "the file's columns are ['goal', 'target']")):
        runsetup.load_examples(partial, "sft", "train")
    # A mapped column the file lacks names the entry's mapping and the closest column.
    typo = run_for(f"--config.data.source={main}", f"--config.data.mix=('{goals}:prompt=gaol',)",
                   config="configs/ppo.py:tiny")
    with pytest.raises(DataError, match=re.escape(
            f"column 'gaol' (data.mix '{goals}:prompt=gaol') is in no record of the file; the "
            "file's columns are ['goal', 'target']; did you mean 'goal'?")):
        runsetup.load_examples(typo, "prompt", "train")


def test_a_partly_mapped_mix_entry_is_suggested_whole(tmp_path):
    """An entry that maps some fields but not a required one: the suggestion keeps the pairs it
    maps already, and the suggested entry, its COLUMN filled in, parses and loads."""
    from easyalign.data.columns import MixEntry, parse_mix_entry

    goals = tmp_path / "goals.csv"
    goals.write_text("goal,target\n" + "".join(f"Do {i},ok\n" for i in range(20)))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"p{i}", "response": "r"}
                                                   for i in range(20)])
    entry = f"{goals}*5:prompt=goal"
    with pytest.raises(DataError) as error:
        runsetup.load_examples(run_for(f"--config.data.source={pairs}",
                                       f"--config.data.mix=('{entry}',)"), "sft", "train")
    suggested = re.search(r"data\.mix '([^']*)'", str(error.value)).group(1)
    assert suggested == f"{goals}*5:prompt=goal,response=COLUMN"
    assert parse_mix_entry(suggested) == MixEntry(str(goals), 5,
                                                  {"prompt": "goal", "response": "COLUMN"})
    fixed = suggested.replace("COLUMN", "target")
    mixed = [ex for ex in runsetup.load_examples(
        run_for(f"--config.data.source={pairs}", f"--config.data.mix=('{fixed}',)"), "sft",
        "train") if ex["source"].startswith(str(goals))]
    assert [(ex["messages"][0]["content"][:3], ex["messages"][-1]["content"]) for ex in mixed
            ] == [("Do ", "ok")] * 5


@pytest.mark.parametrize("entry, message", [
    ("a.csv:promt=goal", "data.mix: 'a.csv:promt=goal': unknown field 'promt' (did you mean "
                         "'prompt'?); write \"PATH[*N][:FIELD=COLUMN,...]\""),
    ("a.csv:prompt=goal*5", "'*N' goes before the columns"),
    ("a.csv:prompt=goal,prompt=x", "'prompt' is mapped twice"),
    ("a.csv:prompt=goal,response", "'response' is not FIELD=COLUMN"),
])
def test_mix_column_suffixes_are_checked(entry, message):
    from easyalign.data.columns import MixEntry, parse_mix_entry

    assert parse_mix_entry("a/b.csv*5:prompt=goal, response=x+y") == MixEntry(
        "a/b.csv", 5, {"prompt": "goal", "response": "x+y"})
    assert parse_mix_entry("c:d.jsonl") == MixEntry("c:d.jsonl", 0, {})
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_mix_entry(entry)


def test_mix_paths_are_checked_before_the_run(tmp_path):
    from easyalign import config_check, config_paths

    config = load_config(["--config=configs/ppo.py:tiny",
                          f"--config.data.mix=('{tmp_path}/nothing.jsonl*5',)"])
    with pytest.raises(config_check.ConfigError, match=r"data.mix: .*no such file"):
        config_paths.check_mix_entry(config.data.mix[0])
    with pytest.raises(config_check.ConfigError, match=r"is a directory; name one file in it"):
        config_paths.check_mix_entry(f"{tmp_path}*5")


def test_a_bad_record_is_named_at_its_first_line_in_the_file(tmp_path):
    """The file's first bad record is the one named, whichever side of the held-out split it
    falls on: the training side checked alone named a later line (the user fixed it, and the
    next run named the earlier one)."""
    from easyalign.data.holdout import held_out_rows
    from easyalign.data.sources import read_rows

    run = run_for(f"--config.data.source={tmp_path / 'sft.jsonl'}")
    data = run.config.data
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(30)]
    first, second = 3, 20  # 0-based; both lack a response
    for variant in range(1000):  # the prompt text that puts line 4 on the held-out side
        rows[first] = {"prompt": f"question {first} ({variant})"}
        rows[second] = {"prompt": f"question {second}"}
        path = write_jsonl(tmp_path / "sft.jsonl", rows)
        held = held_out_rows(read_rows(str(path)), data.eval_fraction, data.eval_max,
                             data.eval_seed)
        if first in held and second not in held:
            break
    else:
        pytest.fail("no file with a held-out bad line before a training one")
    for split in ("train", "eval"):
        with pytest.raises(ValueError, match=re.escape(f"{path}:{first + 1}")):
            runsetup.load_examples(run, "sft", split)


def test_auto_evaluates_a_directory_on_its_own_test_split(tmp_path, capsys):
    """`data.eval_source=auto` on an `hf:DIR` holding `train.jsonl` and `test.jsonl` trains on
    all of train and evaluates on test (datasets' split convention), saying so; a directory
    with no test files holds records out of train as for any file."""
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(40)])
    write_jsonl(d / "test.jsonl", [{"prompt": f"q{i}", "response": "r"} for i in range(3)])
    run = run_for(f"--config.data.source=hf:{d}")
    train = runsetup.load_examples(run, "sft", "train")
    assert len(train) == 40
    assert f"evaluating on the 'test' split of hf:{d}" in capsys.readouterr().out
    assert sources(runsetup.load_examples(run, "sft", "eval")) == [
        f"{d}/test.jsonl:{i}" for i in (1, 2, 3)]
    (d / "test.jsonl").unlink()
    train, held = (runsetup.load_examples(run, "sft", split) for split in ("train", "eval"))
    assert len(train) + len(held) == 40 and 0 < len(held) < 40
    assert "held out" in capsys.readouterr().out


def test_a_directory_as_data_source_points_at_hf_datasets(tmp_path):
    """A directory given as `data.source` says so (it read "unknown file type") and names the
    setting that reads a directory of data files, which then loads."""
    from easyalign import config_check, config_paths
    from easyalign.data.sources import SourceSpec, load_records

    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"part-{i}.jsonl").write_text(
            json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n")
    config = load_config(["--config=configs/sft.py:tiny"])
    key, value = "data.source", str(tmp_path / "shards")
    with pytest.raises(config_check.ConfigError, match=re.escape(
            f"{key}={value}: a directory; name one file in it, or read the directory's data "
            f"files with HF datasets: {key}=hf:{value}")):
        config_paths.check_data_source(config, key, value)
    config_paths.check_data_source(config, key, f"hf:{value}")
    with pytest.raises(config_check.ConfigError, match=re.escape(  # a misspelled local path
            f"{key}=hf:{value}x: no such file or directory {value}x")):
        config_paths.check_data_source(config, key, f"hf:{value}x")
    records = load_records(SourceSpec(hf_name=value))  # what runsetup makes of hf:PATH
    assert sorted(r.data["prompt"] for r in records) == ["p0", "p1"]


# ----------------------------------------------------------------------------- real files
def test_hh_rlhf_through_load_examples(capsys):
    path = shared(HH)
    run = run_for(f"--config.data.source={path}", "--config.data.eval_source=",
                  config="configs/dpo.py:tiny")
    pairs = runsetup.load_examples(run, "preference", "train")
    assert len(pairs) == 2308
    assert capsys.readouterr().out.strip() == (
        f"[data] preference train: dropped 4 of 2312 records of {path}: empty final Assistant "
        "turn ×4 (test.jsonl.gz:87, test.jsonl.gz:517, test.jsonl.gz:926, 1 more) "
        "[data.on_empty=drop]")
    error = run_for(f"--config.data.source={path}", "--config.data.on_empty=error",
                    config="configs/reward.py:tiny")
    with pytest.raises(DataError, match=re.escape(f"{path}:87: field 'chosen': empty final "
                                                  "Assistant turn (data.on_empty=error); set "
                                                  "data.on_empty=drop")):
        runsetup.load_examples(error, "preference", "train")
    keep = run_for(f"--config.data.source={path}", "--config.data.on_empty=keep",
                   "--config.data.eval_source=", config="configs/dpo.py:tiny")
    kept = runsetup.load_examples(keep, "preference", "train")
    assert len(kept) == 2312 and kept[86]["chosen"] == ""
    # PPO reads the same file as prompts: every pair gives one, none is dropped.
    prompts = runsetup.load_examples(run_for(f"--config.data.source={path}",
                                           config="configs/ppo.py:tiny"), "prompt", "train")
    assert len(prompts) == 2312 - 116 and prompts[0]["prompt"][-1]["role"] == "user"


def test_hh_rlhf_held_out_pairs_are_the_held_out_prompts():
    path = shared(HH)
    run = run_for(f"--config.data.source={path}", config="configs/dpo.py:tiny")
    pairs = runsetup.load_examples(run, "preference", "eval")
    prompts = runsetup.load_examples(run, "prompt", "eval")
    assert len(prompts) == 116  # ⌈0.05 · 2312⌉
    # Reward, DPO and PPO on one file hold out the same rows (minus dropped empty pairs).
    assert set(sources(pairs)) <= set(sources(prompts))
    assert len(pairs) >= 116 - 4


def test_alpaca_through_load_examples(capsys):
    path = shared(ALPACA)
    rows = json.loads(path.read_text(encoding="utf-8"))
    empty = [i for i, row in enumerate(rows) if not row["output"].strip()]
    run = run_for(f"--config.data.source={path}", "--config.data.eval_source=")
    examples = runsetup.load_examples(run, "sft", "train")
    assert len(examples) == len(rows) - len(empty)
    shown = ", ".join(f"alpaca_5000.json[{i}]" for i in empty[:3])
    assert f"dropped {len(empty)} of {len(rows)} records of {path}: empty response ×" \
           f"{len(empty)} ({shown}" in capsys.readouterr().out
    held = run_for(f"--config.data.source={path}")
    train = runsetup.load_examples(held, "sft", "train")
    evaluation = runsetup.load_examples(held, "sft", "eval")
    assert len(train) + len(evaluation) == len(rows) - len(empty)
    assert 245 <= len(evaluation) <= 250  # ⌈0.05 · 5000⌉ held out, less any empty output


# ----------------------------------------------------------------------------- evaluation suites
def test_shared_eval_preset_asks_no_world_suites_unless_told(built_world):
    from easyalign.eval.run import load_suites

    shared(SHARED / "advbench/harmful_behaviors.csv")
    config = load_config(["--config=configs/eval.py:shared"])
    assert config.eval.suites == ()
    assert [s.name for s in load_suites(config, None)] == ["advbench", "ifeval"]
    asked = load_config(["--config=configs/eval.py:shared",
                         "--config.eval.suites=('harmful','benign')"])
    assert [(s.name, s.world) for s in load_suites(asked, built_world)] == [
        ("harmful", True), ("benign", True), ("advbench", False), ("ifeval", False)]


def test_identical_pairs_are_reported_without_the_on_empty_key(tmp_path, capsys):
    rows = [{"prompt": f"q{i}", "chosen": "same" if i < 2 else "good", "rejected": "same" if i < 2
             else "bad"} for i in range(6)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = run_for(f"--config.data.source={path}", "--config.data.eval_source=",
                  config="configs/dpo.py:tiny")
    assert len(runsetup.load_examples(run, "preference", "train")) == 4
    assert capsys.readouterr().out.strip() == (
        f"[data] preference train: dropped 2 of 6 records of {path}: chosen == rejected ×2 "
        "(pairs.jsonl:1, pairs.jsonl:2)")
