"""`easyalign sft`, `reward` and `dpo` run on the unmodified shared Alpaca and HH-RLHF files, as
the README's "Bring your data" commands do (two steps each, the built-in tiny model, in-process
through the same `run(config)` the CLI calls): empty records are dropped and reported, and a
held-out split of each file is the evaluation set."""
import os
from pathlib import Path

import pytest

from easyalign.cli import load_config
from easyalign.stages import stage_function as phase_function

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EASYALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
ALPACA = SHARED / "alpaca/alpaca_5000.json"
HH = SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"


def phase(command: str, workdir: Path, source: Path, capsys, *flags: str) -> str:
    config = load_config([f"--config=configs/{command}.py:tiny", f"--config.workdir={workdir}",
                          f"--config.data.source={source}", "--config.train.steps=2",
                          "--config.train.progress_bar=False", "--config.train.plot=False",
                          "--config.train.eval_batches=1", *flags])
    phase_function(command)(config)
    assert (workdir / "model" / "model_config.json").is_file()
    return capsys.readouterr().out


def test_sft_reward_dpo_on_the_shared_files(tmp_path, capsys, monkeypatch):
    for path in (ALPACA, HH):
        if not path.exists():
            pytest.skip(f"shared data file {path} is absent")
    monkeypatch.chdir(REPO)  # config paths are relative to the repository, as for the CLI
    runs = tmp_path / "runs"
    out = phase("sft", runs / "sft", ALPACA, capsys)
    assert f"[data] held out 250 of 5000 records of {ALPACA} for evaluation" in out
    assert "[data] sft train: dropped 1 of 4750" in out and "empty response ×1" in out
    # DPO's live reference: the cached one would score all 2,196 pairs for two steps.
    for command, flags in (("reward", ()), ("dpo", ("--config.dpo.reference=live",))):
        out = phase(command, runs / command, HH, capsys, *flags)
        assert f"[data] held out 116 of 2312 records of {HH} for evaluation" in out
        assert ("[data] preference train: dropped 4 of 2196 records of "
                f"{HH}: empty final Assistant turn ×4") in out
