"""PPO phase: rollout scoring, rewards and masks, frozen models, resume, and (on the built-in
world) that PPO raises the reward-model score of the SFT policy on held-out prompts.

GAE and the PPO losses themselves are checked against hand-computed values in
`test_losses_ppo.py`. Every test starts PPO from the cheapest pipeline that still shows the
effect honestly — a `world-student`-sized SFT model (150 steps) and reward model (100 steps)
in the pipeline layout `runs/s/{sft,reward}`, trained once per session
(`student_reward_runs`).
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import eval as eval_config
from configs import ppo as ppo_config
from easyalign.data import world_source
from easyalign import sharding
from easyalign.algorithms import ppo, rollout
from easyalign.algorithms import runsetup
from easyalign.eval import run as eval_run
from easyalign.eval import scoring, suites
from easyalign.hf import autoload
from easyalign.train.loop import to_global_batch
from conftest import host

QUIET = dict(progress_bar=False, plot=False, async_checkpointing=False)


@pytest.fixture(scope="module")
def pipeline(student_reward_runs):
    """`runs/s/sft/model` and `runs/s/reward/model`: the session's small, quickly trained pair."""
    return student_reward_runs


def config_for(root, name, **train):
    c = ppo_config.get_config("tiny")
    c.workdir = str(root / name)
    c.train.update(log_every=1, eval_batches=1, eval_every=0, **QUIET)
    c.train.update(train)
    return c


def one_rollout(s, fn, params):
    """A rollout of the next prompt batch at β = 1: (prompts, generation, batch, rows, metrics)."""
    p, mesh = s.run.config.ppo, s.run.mesh
    with sharding.use_mesh(mesh):
        prompts = to_global_batch(next(s.loader), mesh)
        gen = rollout.sample(s.graphs, params["policy"], prompts, jax.random.key(3),
                             max_new_tokens=p.max_new_tokens, stop_tokens=s.stop_tokens,
                             pad_id=runsetup.pad_id(s.run), mesh=mesh)
        batch, rows, metrics = fn(params, s.frozen, prompts, gen, jnp.float32(1.0))
    return jax.device_get((prompts, gen, batch, rows, metrics))


@pytest.fixture(scope="module")
def first(pipeline):
    """A fresh set-up (policy == reference), its rollout function, and one rollout with an
    8-token budget, so that some responses end with EOS and others are cut."""
    c = config_for(pipeline, "ppo-rollout")
    c.ppo.max_new_tokens = 8
    s = ppo.setup(c)
    fn = rollout.make_rollout_fn(s.graphs, s.settings, runsetup.pad_id(s.run),
                                 s.run.tokenizer.eos_token_id)
    return s, fn, one_rollout(s, fn, s.params)


# ----------------------------------------------------------------------------- rollout
def test_scoring_logps_equal_sampler_logps(first):
    _, _, (prompts, gen, batch, _, metrics) = first
    for b in range(len(gen.lengths)):
        start, n = prompts["prompt_lengths"][b], gen.lengths[b]
        np.testing.assert_allclose(batch["old_logps"][b, start:start + n], gen.logprobs[b, :n],
                                   atol=1e-5, rtol=0)
    assert metrics["logprob_mismatch"] < 1e-5


def test_mask_covers_generated_tokens_and_eos(first):
    s, _, (prompts, gen, batch, _, _) = first
    eos, pad = s.run.tokenizer.eos_token_id, runsetup.pad_id(s.run)
    assert gen.done.any() and not gen.done.all()  # both endings occur in this batch
    for b in range(len(gen.lengths)):
        start, n = prompts["prompt_lengths"][b], gen.lengths[b]
        assert np.flatnonzero(batch["mask"][b]).tolist() == list(range(start, start + n))
        np.testing.assert_array_equal(batch["tokens"][b, :start],
                                      prompts["prompt_tokens"][b, :start])
        np.testing.assert_array_equal(batch["tokens"][b, start:start + n], gen.tokens[b, :n])
        assert (batch["tokens"][b, start + n:] == pad).all()
        assert (batch["tokens"][b, start + n - 1] == eos) == gen.done[b]
    # The advantages and returns live on the response tokens only.
    assert (batch["advantages"][batch["mask"] == 0] == 0).all()
    assert (batch["returns"][batch["mask"] == 0] == 0).all()


def test_reward_read_at_last_real_token(first):
    """Scores equal the eval scorer's on each unpadded prompt + response (+ EOS when cut)."""
    s, _, (prompts, gen, _, rows, _) = first
    eos = s.run.tokenizer.eos_token_id
    sequences = []
    for b in range(len(gen.lengths)):
        start, n = prompts["prompt_lengths"][b], gen.lengths[b]
        ids = prompts["prompt_tokens"][b, :start].tolist() + gen.tokens[b, :n].tolist()
        sequences.append(ids if gen.done[b] else ids + [eos])
    model = nnx.merge(s.graphs.reward, s.frozen["reward"])
    expected = scoring.reward_scores(model, sequences, batch_size=len(sequences),
                                     pad_id=runsetup.pad_id(s.run))
    np.testing.assert_allclose(rows["scores"], expected, atol=1e-4, rtol=1e-4)


def test_kl_penalty_is_zero_when_policy_is_reference(first):
    s, fn, (_, _, _, _, metrics) = first
    assert metrics["kl"] == 0.0 and metrics["non_score_reward"] == 0.0  # at β = 1
    # ... and not by construction: a moved policy is penalised.
    leaves, treedef = jax.tree.flatten(s.frozen["reference"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    moved = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape)
                                         for x, k in zip(leaves, keys)])
    metrics = one_rollout(s, fn, {"policy": moved, "value": s.params["value"]})[-1]
    assert metrics["kl"] != 0.0 and metrics["non_score_reward"] != 0.0


def test_response_span_loss_equals_the_full_pass(full_fp32_matmuls):
    """PPO's loss with its heads on the response columns only (`rollout.response_span`, width
    `ppo.max_new_tokens`, as the rollout scores too) equals, value and gradients, the loss of a
    full pass that materialises `[B, T, vocab]` logits and values at every position — rows
    with different prompt lengths, one response cut at the width."""
    import dataclasses

    from easyalign import losses
    from easyalign.model import abstract_model, preset

    rng = np.random.default_rng(2)

    def random_model(config):
        """`(graphdef, params)` filled from numpy — no initialiser to compile: norm scales
        1 + N(0, 0.1²), every other weight N(0, 0.1²)."""
        graphdef, shapes, _ = abstract_model(config)
        return graphdef, jax.tree_util.tree_map_with_path(
            lambda k, a: jnp.asarray(("scale" in jax.tree_util.keystr(k))
                                     + rng.normal(0, 0.1, a.shape), a.dtype), shapes)

    config = preset("tiny", dtype="float32")
    policy_graph, policy_params = random_model(config)
    value_graph, value_params = random_model(config.replace(head="scalar"))
    rows, width, new = 4, 14, 5
    tokens = jnp.asarray(rng.integers(3, config.vocab_size, (rows, width)), jnp.int32)
    starts, lengths = np.array([1, 4, 9, 6]), np.array([3, 5, 5, 1])  # row 2: cut at the width
    mask = np.zeros((rows, width), np.float32)
    for i in range(rows):
        mask[i, starts[i]:starts[i] + lengths[i]] = 1.0
    # The random policy is near uniform: old log-probs log(1/V) + noise give ratios around 1,
    # some clipped; old values and returns around the value head's small outputs.
    old_logps = -np.log(config.vocab_size) + rng.normal(0, 0.5, mask.shape)
    batch = {k: jnp.asarray(v * mask, jnp.float32) for k, v in (
        ("old_logps", old_logps), ("old_values", rng.normal(0, 0.3, mask.shape)),
        ("advantages", rng.normal(0, 1.0, mask.shape)),
        ("returns", rng.normal(0, 1.0, mask.shape)))}
    batch |= {"tokens": tokens, "mask": jnp.asarray(mask)}
    settings = dataclasses.replace(
        losses.PPOSettings.from_config(ppo_config.get_config().ppo), max_new_tokens=new,
        entropy_coef=0.01)

    def full_loss(p):
        """The loss from log-probs, entropy and values at every position, whole logits."""
        policy, value = nnx.merge(policy_graph, p["policy"]), nnx.merge(value_graph, p["value"])
        logits = policy.logits(policy.trunk(tokens)[0])
        logps = losses.logprobs_from_logits(logits, tokens)
        entropy = losses.shift_to_tokens(losses.entropy_from_logits(logits))
        values = losses.shift_to_tokens(value.scores(value.trunk(tokens)[0]))
        pg, _ = losses.ppo_policy_loss(logps, batch["old_logps"], batch["advantages"],
                                       batch["mask"], settings.clip_eps)
        vf, _ = losses.ppo_value_loss(values, batch["old_values"], batch["returns"],
                                      batch["mask"], settings.value_clip_eps)
        return (pg + settings.vf_coef * vf
                - settings.entropy_coef * losses.masked_mean(entropy, batch["mask"]))

    span_loss = ppo.make_loss(rollout.Graphs(policy_graph, value_graph, None, None), settings)
    # One compilation for both (the compile, not the tiny model, is this test's cost).
    (want, want_grads), ((got, metrics), grads) = jax.jit(lambda p: (
        jax.value_and_grad(full_loss)(p),
        jax.value_and_grad(span_loss, has_aux=True)(p, batch, None, None)))(
        {"policy": policy_params, "value": value_params})
    assert 0 < float(metrics["pg_clipfrac"]) < 1 and 0 < float(metrics["vf_clipfrac"]) < 1
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-7)
    for a, b in zip(host(grads), host(want_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(pipeline):
    """A reduced PPO run from the pipeline's SFT and reward models, with its models before and
    after training (host copies)."""
    s = ppo.setup(config_for(pipeline, "ppo", steps=20, checkpoint_every=10))
    before = {k: host(v) for k, v in (s.params | s.frozen).items()}
    params, _ = ppo.train(s)
    after = {k: host(v) for k, v in (params | s.frozen).items()}
    return before, after


def test_policy_and_value_move_frozen_models_stay(trained):
    before, after = trained
    for name in ("policy", "value"):
        moved = [not np.array_equal(a, b) for a, b in zip(before[name], after[name])]
        assert all(moved), f"{name}: {moved.count(False)} of {len(moved)} arrays did not move"
    for name in ("reference", "reward"):
        assert all(np.array_equal(a, b) for a, b in zip(before[name], after[name])), name


def test_metrics_samples_and_model_written(pipeline, trained):
    workdir = pipeline / "ppo"
    rows = [json.loads(line) for line in (workdir / "logs" / "metrics.jsonl").read_text()
            .splitlines()]
    train_rows = [row for row in rows if "reward" in row]
    assert [row["step"] for row in train_rows] == list(range(1, 21))
    assert {"kl", "kl_coef", "pg_clipfrac", "approx_kl", "vf_loss", "pg_loss", "entropy",
            "response_length", "logprob_mismatch", "sample_tokens_per_s",
            "update_tokens_per_s"} <= train_rows[-1].keys()
    assert all(row["sample_tokens_per_s"] > 0 and row["update_tokens_per_s"] > 0
               for row in train_rows)
    assert max(row["logprob_mismatch"] for row in train_rows) < 1e-5
    assert [row["step"] for row in rows if "eval/reward" in row] == [0, 20]
    assert "[reward" in (workdir / "logs" / "samples.txt").read_text()
    assert (workdir / "model" / "model_config.json").exists()


@pytest.mark.slow
def test_resume_continues_the_same_trajectory(pipeline, trained):
    """The run killed after its iteration-10 checkpoint: resuming gives the same final model."""
    workdir = pipeline / "ppo-resumed"
    shutil.copytree(pipeline / "ppo", workdir)
    shutil.rmtree(workdir / "checkpoints" / "20")
    shutil.rmtree(workdir / "model")
    params, _ = ppo.run(config_for(pipeline, "ppo-resumed", steps=20, checkpoint_every=10))
    _, after = trained
    for name in ("policy", "value"):
        for a, b in zip(after[name], host(params[name])):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_ppo_raises_reward_over_sft_on_held_out_prompts(pipeline, trained):
    """The SFT and the PPO model answer the world's held-out suites greedily; the reward model
    scores both (the eval package's own sampler and scorer, not the training code)."""
    e = eval_config.get_config().eval
    e.update(limit_per_suite=16, max_new_tokens=16, batch_size=40)
    world = world_source.world_dir(config_for(pipeline, "ppo"))
    world_suites = suites.world_suites(world, e.suites, e.limit_per_suite)
    scorer = eval_run.Frozen(autoload.load_model(pipeline / "reward" / "model"),
                             autoload.load_tokenizer(pipeline / "reward" / "model"))
    results = {}
    for name in ("sft", "ppo"):
        entry, _ = eval_run.evaluate_variant(
            name, pipeline / name / "model", world_suites, [], e, None, reference=None,
            reward=scorer, fallback_tokenizer=world / "tokenizer", notes=[])
        results[name] = entry["metrics"]
    print({n: {k: m[k] for k in ("reward", "harmful_refusal", "benign_over_refusal")}
           for n, m in results.items()})
    assert results["ppo"]["reward"] > results["sft"]["reward"] + 0.3


# ----------------------------------------------------------------------------- config
def test_config_errors_and_stage_paths(tmp_path):
    c = ppo_config.get_config("tiny")
    c.workdir = str(tmp_path / "runs" / "demo" / "ppo")
    assert ppo.model_block(c, c.ppo.reward_model).path == str(
        tmp_path / "runs" / "demo" / "reward" / "model")
    assert ppo.model_block(c, "@sft").init == "checkpoint"
    with pytest.raises(ValueError, match="ppo.kl_estimator 'k4'; valid: k1, k2, k3"):
        ppo.check_config(_with(c, kl_estimator="k4"))
    with pytest.raises(ValueError, match="must divide train.batch_size"):
        ppo.check_config(_with(c, minibatch_size=12))
    with pytest.raises(ValueError, match="valid: fixed, adaptive"):
        ppo.check_config(_with(c, kl_controller="pid"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        ppo.check_config(_with(c, max_new_tokens=48))


def _with(config, **fields):
    c = config.copy_and_resolve_references()
    c.ppo.update(fields)
    return c
