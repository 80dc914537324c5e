"""`easyalign sft`, `reward` and `dpo` run on the unmodified shared Alpaca and HH-RLHF files, as
the README's "Bring your data" commands do (two steps each, the built-in tiny model): empty
records are dropped and reported, and a held-out split of each file is the evaluation set."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EASYALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
ALPACA = SHARED / "alpaca/alpaca_5000.json"
HH = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"


def phase(command: str, workdir: Path, source: Path, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "easyalign", command, f"--config=configs/{command}.py:tiny",
         f"--config.workdir={workdir}", f"--config.data.source={source}",
         "--config.train.steps=2", "--config.train.progress_bar=False",
         "--config.train.plot=False", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "model" / "model_config.json").is_file()
    return result.stdout


def test_sft_reward_dpo_on_the_shared_files(tmp_path):
    for path in (ALPACA, HH):
        if not path.exists():
            pytest.skip(f"shared data file {path} is absent")
    runs = tmp_path / "runs"
    out = phase("sft", runs / "sft", ALPACA)
    assert f"[data] held out 250 of 5000 records of {ALPACA} for evaluation" in out
    assert "[data] sft train: dropped 1 of 4750" in out and "empty response ×1" in out
    for command in ("reward", "dpo"):
        out = phase(command, runs / command, HH)
        assert f"[data] held out 116 of 2312 records of {HH} for evaluation" in out
        assert ("[data] preference train: dropped 4 of 2196 records of "
                f"{HH}: empty final Assistant turn ×4") in out
