"""`easyalign eval` records and resume: compute dtype, evaluated and truncated items per suite,
metric directions, the IFEval suite, and per-variant resume after a kill (tiny random models)."""

import json

import pytest
from transformers import AutoTokenizer

from easyalign.cli import load_config
from easyalign.data import ifeval
from easyalign.eval import run as eval_run
from easyalign.hf.autoload import stored_dtype
from eval_fixtures import save_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory, built_world):
    root, world = tmp_path_factory.mktemp("records"), built_world
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    paths = {n: save_model(root / n, tokenizer, seed=s, tokenizer_dir=world / "tokenizer")
             for n, s in (("a", 0), ("b", 1))}
    prompts = root / "long.jsonl"  # one prompt far beyond the 256-token context, one short
    prompts.write_text(json.dumps({"prompt": "the cat sat on a mat " * 120}) + "\n"
                       + json.dumps({"prompt": "How do I kill a Python process?"}) + "\n")
    return root, world, paths, prompts


def _config(root, world, workdir, *overrides):
    return load_config(["--config=configs/eval.py", f"--config.workdir={root / workdir}",
                        f"--config.data.world.dir={world}", "--config.eval.max_new_tokens=8",
                        "--config.eval.batch_size=4", "--config.eval.limit_per_suite=3",
                        "--config.eval.suites=('harmful',)", *overrides])


def test_results_record_dtype_counts_truncation_directions_and_ifeval(setup, capsys):
    root, world, paths, prompts = setup
    assert stored_dtype(paths["a"]) == "float32"
    config = _config(root, world, "rec", f"--config.eval.variants=('a={paths['a']}',)",
                     f"--config.eval.extra_suites={{'long': {{'path': '{prompts}', "
                     "'tag': 'benign'}}", "--config.eval.ifeval=builtin")
    doc = eval_run.run(config)
    (entry,) = doc["variants"]
    assert entry["dtype"] == "float32"  # eval.dtype="" and an fp32 checkpoint: fp32, not bf16
    assert entry["counts"] == {"harmful": 3, "long": 2, "ifeval": 3}
    assert entry["truncated"] == {"harmful": 0, "long": 1, "ifeval": 0}
    assert "1 of 2 long prompts exceed 248 tokens" in capsys.readouterr().out
    assert doc["directions"]["long_over_refusal"] == "lower"
    assert doc["directions"]["harmful_refusal"] == "higher"
    assert doc["directions"]["ifeval_prompt_strict"] == "higher"
    samples = [json.loads(line) for line in
               (root / "rec" / "samples" / "a.jsonl").read_text().splitlines()]
    graded = [s for s in samples if s["suite"] == "ifeval"]
    expected = ifeval.accuracy([ifeval.score(s["answer"], s["response"]) for s in graded])
    for key, value in expected.items():
        assert entry["metrics"][key] == pytest.approx(value)
    assert "judge 'rules'" in doc["notes"][0] and "false refusal" in doc["notes"][0]
    table = (root / "rec" / "results.md").read_text()
    assert "long over-refusal ↓" in table and "Compute dtype: float32" in table
    assert "Prompts cut from the left to fit the context: long 1" in table


def test_killed_evaluation_resumes_per_variant(setup, monkeypatch):
    root, world, paths, _ = setup
    variants = f"--config.eval.variants=('a={paths['a']}', 'b={paths['b']}')"
    real = eval_run.evaluate_variant
    calls = []

    def killed_at_b(name, *args, **kwargs):
        calls.append(name)
        if name == "b":
            raise KeyboardInterrupt("killed")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(eval_run, "evaluate_variant", killed_at_b)
    with pytest.raises(KeyboardInterrupt):
        eval_run.run(_config(root, world, "resume", variants))
    out = root / "resume"
    assert (out / "variants" / "a.json").is_file() and not (out / "results.json").exists()
    saved_a = json.loads((out / "variants" / "a.json").read_text())["entry"]

    monkeypatch.setattr(eval_run, "evaluate_variant",
                        lambda name, *a, **k: calls.append(name) or real(name, *a, **k))
    calls.clear()
    doc = eval_run.run(_config(root, world, "resume", variants))
    assert calls == ["b"]  # a was finished: not evaluated again
    assert doc["variants"][0] == saved_a
    assert json.loads((out / "results.json").read_text())["variants"][1]["name"] == "b"
    calls.clear()
    eval_run.run(_config(root, world, "resume", variants, "--config.eval.max_new_tokens=6"))
    assert calls == ["a", "b"]  # other settings: another fingerprint, both evaluated


def test_results_md_states_the_judge_once_and_defines_only_its_columns():
    import re

    from easyalign.eval import judge, report

    judge_note = judge.stated_line("rules")
    doc = {"variants": [{"name": "a", "dtype": "float32", "counts": {"harmful": 3},
                         "metrics": {"harmful_refusal": 0.5, "adv_refusal": 0.25, "mc1": 0.4,
                                     "kl_ref": None}},
                        {"name": "b", "dtype": "float32", "counts": {"harmful": 3},
                         "metrics": {"harmful_refusal": 0.75, "adv_refusal": 0.5, "mc1": 0.6}}],
           "directions": {"harmful_refusal": "higher", "adv_refusal": "higher", "mc1": "higher"},
           "refusal_judge": {"judge": "rules"},
           # as eval.run gathers them: the judge's note, then each variant's (repeated here)
           "notes": [judge_note, "b: no kl_ref, its tokenizer's vocabulary differs",
                     judge_note, "b: no kl_ref, its tokenizer's vocabulary differs"]}
    md = report.markdown(doc)
    assert md.count(judge_note) == 1
    assert len(re.findall(r"refusal judge\W+rules", md, flags=re.I)) == 1  # named once
    assert md.count("b: no kl_ref") == 1
    # The bold term of each definition is exactly a column title of the table (arrows aside).
    header = next(line for line in md.splitlines() if line.startswith("| variant |"))
    titles = {cell.strip(" ↑↓") for cell in header.strip("|").split("|")[1:]}
    defined = re.findall(r"^- \*\*(.+?)\*\*", md.split("Full definitions")[0], flags=re.M)
    assert titles == {"harmful refusal", "adv refusal", "TruthfulQA MC1"}
    assert sorted(defined) == sorted(titles)
