"""The built-in world, trained for real: SFT learns it, the reward model ranks held-out pairs.

Numbers are measured on held-out data the models never saw (the world's evaluation suites and
`preference_heldout`), with the README's `tiny` presets.
"""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from easyalign.data import world_source
from easyalign.algorithms.reward import pair_rewards
from easyalign.data.loader import make_eval_batches
from easyalign.data.records import normalize
from easyalign.data.sources import load_records
from easyalign.data.tokenize import TruncationPolicy, pad_token_id, tokenize_examples
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
    world = build_world(world_source.world_settings(json_config(world_runs / "sft")))
    before = held_out_exact_match(untrained, tokenizer, world)
    after = held_out_exact_match(trained, tokenizer, world)
    assert after >= before + 0.25, (before, after)


def json_config(workdir):
    """The resolved config a phase wrote, as a ConfigDict."""
    from ml_collections import ConfigDict

    return ConfigDict(json.loads((workdir / "config.json").read_text()))


def held_out_pair_accuracy_by_kind(workdir) -> dict[str, float]:
    """Pairwise accuracy of the reward model in `workdir` on `preference_heldout`, per kind,
    through the library's own loading, tokenisation, batching and pair scoring."""
    model = load_checkpoint_model(workdir / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(workdir / "model" / "tokenizer"))
    path, = workdir.parent.glob("world-*/preference_heldout.jsonl")
    examples = normalize(load_records({"path": str(path)}), "preference")
    policy = TruncationPolicy(max_length=64, on_overflow="error")
    tokenized, _ = tokenize_examples(examples, "preference", tokenizer, policy)
    right = {}
    for batch in make_eval_batches(tokenized, kind="preference", batch_size=64, max_length=64,
                                   pad_id=pad_token_id(tokenizer)):
        chosen, rejected, _ = pair_rewards(model, batch)
        right.update((int(i), bool(ok)) for i, ok, valid in
                     zip(batch["index"], np.asarray(chosen > rejected), batch["valid"]) if valid)
    kinds = sorted({ex["kind"] for ex in examples})
    return {k: float(np.mean([right[i] for i, ex in enumerate(examples) if ex["kind"] == k]))
            for k in kinds}


def test_reward_model_ranks_held_out_pairs(world_runs):
    """Safety pairs (harmful, benign, unknown-entity) must all rank right; fact pairs and the
    whole held-out set well above chance.

    Measured on six runs of the tiny presets (seeds 0–2, code before and after the kernel
    layout change of 2026-11-27): safety kinds 1.0 in every run; facts 0.77–0.87; arithmetic
    and word instructions 0.52–0.82 (at chance in one run: a knowledge limit of the 4-layer,
    128-wide trunk, not asserted); overall 0.785–0.9+. Seed 0 alone gave ≥ 0.9 before the
    change and 0.895 after, from the same initial weights (transposed kernels round
    differently); twice the SFT steps (800) gave 0.855, 400 reward steps 0.90. An overall
    bound of 0.9 tested one draw, not the model; the bounds sit under the measured spread.
    """
    evals = [r for r in metrics_rows(world_runs / "reward") if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] >= 0.75, evals
    by_kind = held_out_pair_accuracy_by_kind(world_runs / "reward")
    assert set(by_kind) == {"benign", "fact", "harmful", "instruction", "unknown"}, by_kind
    for kind in ("benign", "harmful", "unknown"):
        assert by_kind[kind] >= 0.95, by_kind
    assert by_kind["fact"] >= 0.7, by_kind
    # The best-by-validation-loss checkpoint is kept besides the latest.
    steps = {int(p.name) for p in (world_runs / "reward" / "checkpoints").iterdir()
             if p.name.isdigit()}
    best = min(evals, key=lambda r: r["eval/loss"])["step"]
    assert best in steps and max(steps) in steps
