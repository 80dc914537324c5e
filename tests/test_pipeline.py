"""The pipeline on the built-in world (the README's main job, minus the base model and latency):
DPO and PPO refuse harmful requests more often than SFT, and the student keeps at least 80% of
the teacher's alignment score. Reuses the session's SFT and reward stages (conftest), so this
also checks that complete stages are skipped rather than redone.
"""

import pytest

from configs import pipeline as pipeline_config
from easyalign import pipeline
from easyalign.eval.report import load_results

pytestmark = pytest.mark.slow

STAGES = ("sft", "reward", "dpo", "ppo", "teacher_data=teacher-data", "distill", "eval")


@pytest.fixture(scope="module")
def results(world_runs):
    config = pipeline_config.get_config("tiny")
    config.workdir = str(world_runs)
    config.train.progress_bar = False
    config.pipeline.stages = STAGES
    # No KL estimate (tests/test_eval.py checks it): one sampling pass per variant less on the
    # suite's longest chain; the pipeline's eval still names the SFT model as its reference.
    # Only the suites the alignment score reads (instructions, harmful, benign): facts and
    # unknown entities are the eval tests' (tests/test_eval.py), not this chain's.
    config.pipeline.overrides = (*config.pipeline.overrides, "eval:eval.kl_samples=none",
                                 "eval:eval.suites=('instructions','harmful','benign')")
    pipeline.run_stages(config)
    return config, load_results(world_runs / "eval" / "results.json")


def test_alignment_moves_and_the_student_keeps_it(results):
    _, r = results
    assert set(r) == {"sft", "dpo", "ppo", "student"}
    assert not any("kl_ref" in metrics for metrics in r.values())  # eval.kl_samples="none"
    for aligned in ("dpo", "ppo"):
        assert r[aligned]["harmful_refusal"] > r["sft"]["harmful_refusal"], (aligned, r)
        assert r[aligned]["benign_over_refusal"] <= r["sft"]["benign_over_refusal"] + 0.05
    assert r["student"]["alignment_score"] >= 0.8 * r["dpo"]["alignment_score"], r


def test_outputs_written_and_a_rerun_skips_every_stage(results, world_runs, capsys):
    config, _ = results
    for name in ("results.json", "results.md", "results.png"):
        assert (world_runs / "eval" / name).exists()
    # Every stage released its workdir's lock when it ended (not at the process's exit).
    names = [stage.split("=")[0] for stage in STAGES]
    assert not [name for name in names if (world_runs / name / "run.lock").exists()]
    pipeline.run_stages(config)
    lines = [line for line in capsys.readouterr().out.splitlines() if "[pipeline]" in line]
    skipped = [line for line in lines if "complete, skipped" in line]
    # Every stage but teacher-data (which verifies its own settings, then skips itself).
    assert len(skipped) == len(STAGES) - 1, lines
