"""`easyalign pipeline` on a directory it ran before: complete stages are skipped only when they
still follow from the pipeline's settings (`pipeline.check_reuse`) — a two-stage pipeline (SFT,
a reward model and DPO from it, a few steps each, and teacher data) on the built-in world — and its closing summary."""

import json
import re
import shutil

import pytest

from configs import pipeline as pipeline_config
from configs import sft as sft_config
from easyalign import pipeline
from easyalign.config_keys import ConfigError
from easyalign.hf.checkpoint import load_checkpoint_model, save_checkpoint_model, saved_at
from easyalign.train import rundir


def pipe_config(workdir, *overrides):
    config = pipeline_config.get_config("tiny")
    config.workdir = str(workdir)
    config.train.progress_bar = False
    config.pipeline.stages = ("base", "sft", "reward", "dpo", "teacher_data=teacher-data")
    config.pipeline.overrides = ("*:train.steps=2", "*:train.plot=False",
                                 "sft:train.steps=60", "teacher_data:teacher_data.limit=8",
                                 *overrides)
    return config


def test_a_rerun_with_other_settings_or_a_stage_to_remake_stops_before_any_stage(tmp_path,
                                                                                capsys):
    """Reported: a rerun with a changed stage setting skipped every stage and reprinted the old
    results. Now: the same settings skip (both stages), a changed one stops naming the stage,
    the key and both values, a stage made from an earlier save of a model saved again since
    (an upstream stage retrained in place) stops naming both saves, and a stage whose source is
    to be made again (its directory removed) stops naming both — before anything is trained or
    removed."""
    root = tmp_path / "runs" / "p"
    pipeline.run_stages(pipe_config(root))
    # Two steps against the presets' warm-up: reward and DPO warn (SFT's 60 steps outlast its
    # warm-up); the base model (untrained: no optimizer) does not (reported: it warned too).
    warned = [line for line in capsys.readouterr().out.splitlines() if "warmup_steps" in line]
    assert len(warned) == 2, warned
    # The same settings: every stage skipped — DPO and teacher data too, whose runs recorded
    # settings they fill in themselves (`FILLED_BY_PHASE`; teacher data skips itself).
    pipeline.run_stages(pipe_config(root))
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "complete, skipped" in line]
    assert len(skipped) == 4 and "complete for these settings; skipping" in out, out

    lr = sft_config.get_config("tiny").optim.lr
    with pytest.raises(ConfigError, match=rf"pipeline stage sft: {root / 'sft'} is complete but "
                                          rf"was made with other settings: optim.lr: {lr!r} → "
                                          r"0.002 — remove it"):
        pipeline.run_stages(pipe_config(root, "sft:optim.lr=0.002"))

    # SFT saved again in place (retrained under the same settings): the stages made from the
    # earlier save (reward, DPO) are stale though every setting still matches.
    before = saved_at(root / "sft" / "model")
    resave(root / "sft" / "model")
    with pytest.raises(ConfigError, match=rf"pipeline stage reward: {root / 'reward'} is complete "
                                          r"but was made from another save of a model it reads "
                                          rf"\(retrained in place\?\): model.path \(saved at\): "
                                          rf"'{re.escape(before)}' → '"):
        pipeline.run_stages(pipe_config(root))

    shutil.move(root / "sft", tmp_path / "sft-aside")
    with pytest.raises(ConfigError, match=rf"pipeline stage reward: {root / 'reward'} is complete "
                                          rf"but was made from sft \({root / 'sft'}\), which is "
                                          "to be made again now"):
        pipeline.run_stages(pipe_config(root))
    assert not (root / "sft").exists()  # refused before the SFT stage started


def resave(model_dir):
    """Save the model checkpoint at `model_dir` again, in place (a new save of the same weights)."""
    aside = model_dir.with_name("model.old")
    model_dir.rename(aside)
    save_checkpoint_model(load_checkpoint_model(aside), model_dir,
                          tokenizer_dir=aside / "tokenizer")
    shutil.rmtree(aside)


def test_when_a_model_was_saved_is_compared_only_where_both_manifests_say(tmp_path):
    """`rundir.models_read` records when each model a run reads was saved; a manifest from
    before that record (or a model now gone) does not count as a difference."""
    from easyalign.model import create_model, preset

    model_dir = save_checkpoint_model(create_model(preset("tiny"), seed=0), tmp_path / "m")
    identify = rundir.models_read(str)
    when = saved_at(model_dir)
    assert identify("model.path", str(model_dir)) == {"model.path (saved at)": when}
    assert identify("model.path", str(tmp_path)) == {}  # not a model checkpoint
    assert identify("eval.variants", (f"sft={model_dir}", "dpo=/nowhere")) == {
        "eval.variants[sft] (saved at)": when}
    old, new = {"optim.lr": 1.0}, {"optim.lr": 1.0, "model.path (saved at)": when}
    assert rundir.differences(old, new) == [] and rundir.differences(new, old) == []
    assert rundir.differences(new, {**new, "model.path (saved at)": "later"}) == [
        f"model.path (saved at): {when!r} → 'later'"]


def test_the_closing_summary_prints_the_latency_line(tmp_path, capsys):
    """Reported: the summary kept only lines starting `Student:` of latency.md, which writes the
    line in bold, so the pipeline's last words never had it. It is read from latency.json."""
    line = "Student: 2.5× faster, 0.51× memory, keeps 90% of the teacher's alignment score"
    (tmp_path / "latency").mkdir()
    (tmp_path / "latency" / "latency.json").write_text(json.dumps({"summary": line}))
    (tmp_path / "latency" / "latency.md").write_text(f"# Latency\n\n**{line}**\n")
    config = pipe_config(tmp_path)
    pipeline.print_results(config)
    assert capsys.readouterr().out.strip().splitlines()[-1] == line
