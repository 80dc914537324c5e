"""Bad input to a phase command: one clear error naming the file and line, or the config key —
and nothing written to the checkpoint directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def sft(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "easyalign", "sft", "--config=configs/sft.py:tiny",
         f"--config.workdir={workdir}", "--config.train.steps=2", "--config.data.eval_source=",
         "--config.train.progress_bar=False", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "What is 2 + 3?", "response": "5"})
CASES = {  # lines, where, what the message names, flags
    "malformed line": ([GOOD, '{"prompt": "broken", "response": ', GOOD], ":2", "JSON", ()),
    "missing field": ([GOOD, GOOD, json.dumps({"prompt": "no response here"})], ":3",
                      "response", ()),
    # Empty responses are dropped and reported by default; an error only when asked.
    "empty response": ([GOOD, json.dumps({"prompt": "Say nothing.", "response": ""})], ":2",
                       "data.on_empty", ("--config.data.on_empty=error",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_named_and_nothing_is_checkpointed(tmp_path, case):
    lines, where, field, flags = CASES[case]
    data = write_jsonl(tmp_path / "train.jsonl", lines)
    result = sft(tmp_path / "runs" / "sft", f"--config.data.source={data}",
                 "--config.data.world.dir=" + str(tmp_path / "world"), *flags)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert f"{data}{where}" in message and field in message, message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "sft" / "checkpoints").exists()


def test_unknown_config_key_is_named(tmp_path):
    result = sft(tmp_path / "runs" / "sft", "--config.train.stepz=3")
    assert result.returncode != 0
    assert "stepz" in result.stderr and "steps" in result.stderr
    assert not (tmp_path / "runs" / "sft").exists()
