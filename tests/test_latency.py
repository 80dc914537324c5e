"""Latency: positive numbers for two tiny models, in-process and isolated; the summary line."""

import json
import re

import pytest

from easyalign.cli import load_config
from easyalign.eval import latency
from eval_fixtures import save_model

SUMMARY = re.compile(r"^Student: \d+\.\d× faster, \d+\.\d\d× memory, keeps \d+% of the "
                     r"teacher's alignment score$")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    teacher = save_model(root / "teacher", None, seed=0, name="world-teacher")
    student = save_model(root / "student", None, seed=1, name="world-student")
    results = root / "results.json"
    results.write_text(json.dumps({"schema": 1, "variants": [
        {"name": "teacher", "metrics": {"alignment_score": 0.8}},
        {"name": "student", "metrics": {"alignment_score": 0.6}}]}))
    return root, teacher, student, results


def _run(root, teacher, student, results, isolate: bool):
    config = load_config([
        "--config=configs/latency.py:tiny", f"--config.workdir={root}/out-{isolate}",
        f"--config.latency.variants=('teacher={teacher}', 'student={student}')",
        "--config.latency.teacher=teacher", "--config.latency.student=student",
        f"--config.latency.results={results}", f"--config.latency.isolate={isolate}"])
    return latency.run(config)


@pytest.mark.parametrize("isolate", [False, True])
def test_latency_two_tiny_models(models, isolate):
    root, teacher, student, results = models
    doc = _run(root, teacher, student, results, isolate)
    assert list(doc["variants"]) == ["teacher", "student"]
    for entry in doc["variants"].values():
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_token_p50",
                    "decode_ms_per_token_p90", "ttft_ms_p50", "peak_memory_bytes",
                    "param_count", "param_bytes", "kv_cache_bytes"):
            assert entry[key] > 0, key
        assert entry["decode_ms_per_token_p90"] >= entry["decode_ms_per_token_p50"]
        if entry["memory_source"].startswith("estimated"):
            assert entry["peak_memory_bytes"] == entry["param_bytes"] + entry["kv_cache_bytes"]
    t, s = doc["variants"]["teacher"], doc["variants"]["student"]
    assert t["param_count"] > s["param_count"]
    assert SUMMARY.match(doc["summary"]), doc["summary"]
    assert doc["summary"].endswith("keeps 75% of the teacher's alignment score")
    out = root / f"out-{isolate}"
    assert json.loads((out / "latency.json").read_text())["summary"] == doc["summary"]
    assert doc["summary"] in (out / "latency.md").read_text()


def test_summary_line_format():
    assert latency.summary_line(3.14159, 0.4242, {"alignment_score": 96.4}) == (
        "Student: 3.1× faster, 0.42× memory, keeps 96% of the teacher's alignment score")
    assert latency.summary_line(2.0, 0.5, {}) == "Student: 2.0× faster, 0.50× memory"
    entries = {"t": {"decode_tokens_per_s": 100.0, "peak_memory_bytes": 1000},
               "s": {"decode_tokens_per_s": 250.0, "peak_memory_bytes": 250}}
    scores = {"t": {"alignment_score": 0.5}, "s": {"alignment_score": 0.45}}
    line = latency.student_summary(entries, "t", "s", scores)
    assert line == ("Student: 2.5× faster, 0.25× memory, "
                    "keeps 90% of the teacher's alignment score")
    scores = {"t": {"advbench_refusal": 0.8, "reward_win_rate": 0.6},
              "s": {"advbench_refusal": 0.72, "reward_win_rate": 0.3}}
    line = latency.student_summary(entries, "t", "s", scores,
                                   ("advbench_refusal", "reward_win_rate", "mc1"))
    assert line == ("Student: 2.5× faster, 0.25× memory, keeps 90% of the teacher's advbench "
                    "refusal, 50% of its reward win rate")
    # Reported: a teacher refusal rate of 0 dropped the metric from the line without a word.
    scores = {"t": {"advbench_refusal": 0.0, "reward_win_rate": 0.6},
              "s": {"advbench_refusal": 0.03, "reward_win_rate": 0.3}}
    line = latency.student_summary(entries, "t", "s", scores,
                                   ("advbench_refusal", "reward_win_rate"))
    assert line == ("Student: 2.5× faster, 0.25× memory, keeps 50% of the teacher's reward win "
                    "rate; advbench refusal: the teacher's is 0 (the student's 0.030)")
    with pytest.raises(ValueError, match="not a measured variant"):
        latency.student_summary(entries, "t", "x", None)
