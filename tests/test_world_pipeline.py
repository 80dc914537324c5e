"""The built-in world, trained for real: SFT learns it, the reward model ranks held-out pairs.

Numbers are measured on held-out data the models never saw (the world's evaluation suites and
`preference_heldout`), with the README's `tiny` presets.
"""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from easyalign.algorithms import common
from easyalign.data.world import build_world, grade
from easyalign.hf import load_checkpoint_model
from easyalign.model import create_model
from easyalign.sampler import Sampler

pytestmark = pytest.mark.slow


def metrics_rows(workdir):
    return [json.loads(line) for line in (workdir / "logs" / "metrics.jsonl").open()]


def held_out_exact_match(model, tokenizer, world) -> float:
    items = world.eval_suites["instructions"] + world.eval_suites["facts"]
    outs = Sampler.from_model(model, tokenizer, batch_size=64).sample_texts(
        [x["prompt"] for x in items], max_new_tokens=24)
    return float(np.mean([grade(x["kind"], o["response"], x["answer"])
                          for x, o in zip(items, outs)]))


def test_sft_loss_falls_and_held_out_answers_become_right(world_runs):
    rows = [r for r in metrics_rows(world_runs / "sft") if "loss" in r]
    assert rows[-1]["loss"] < 0.25 * rows[0]["loss"], (rows[0]["loss"], rows[-1]["loss"])
    trained = load_checkpoint_model(world_runs / "sft" / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(world_runs / "sft" / "model" / "tokenizer"))
    untrained = create_model(trained.config, seed=123)
    world = build_world(common.world_settings(json_config(world_runs / "sft")))
    before = held_out_exact_match(untrained, tokenizer, world)
    after = held_out_exact_match(trained, tokenizer, world)
    assert after >= before + 0.25, (before, after)


def json_config(workdir):
    """The resolved config a phase wrote, as a ConfigDict."""
    from ml_collections import ConfigDict

    return ConfigDict(json.loads((workdir / "config.json").read_text()))


def test_reward_model_ranks_held_out_pairs(world_runs):
    evals = [r for r in metrics_rows(world_runs / "reward") if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] >= 0.9, evals
    # The best-by-validation-loss checkpoint is kept besides the latest.
    steps = {int(p.name) for p in (world_runs / "reward" / "checkpoints").iterdir()
             if p.name.isdigit()}
    best = min(evals, key=lambda r: r["eval/loss"])["step"]
    assert best in steps and max(steps) in steps
