"""DPO phase: frozen reference, cached = live reference, the cache's fingerprint, config errors,
resume, and (on the built-in world) that DPO moves held-out behaviour the right way.

Most tests run a tiny random model on a 64-pair slice of the world's preference data, so each
compiles and trains in seconds; the world test trains DPO on the session's short SFT model
(`student_runs` in conftest).
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

from configs import dpo as dpo_config
from easyalign import sharding
from easyalign.algorithms import dpo, reference_cache
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.train import driver
from conftest import host

N_TRAIN, N_EVAL = 64, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory, built_world):
    """`runs/w/`: the world + tokenizer (`world/`) and small slices of its preference data."""
    root = tmp_path_factory.mktemp("runs") / "w"
    root.mkdir()
    (root / "world").symlink_to(built_world)
    lines = (root / "world" / "preference_train.jsonl").read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n")
    held = (root / "world" / "preference_heldout.jsonl").read_text().splitlines()
    (root / "eval.jsonl").write_text("\n".join(held[:N_EVAL]) + "\n")
    return root


def tiny_config(world, workdir, **dpo_fields):
    """A tiny random policy (and reference: the same initialisation) on the 64-pair slice."""
    c = dpo_config.get_config()
    c.workdir = str(workdir)
    c.model.init, c.model.preset, c.model.path = "scratch", "tiny", ""
    c.data.world.dir = str(world / "world")
    c.data.tokenizer = str(world / "world" / "tokenizer")
    c.data.source, c.data.eval_source = str(world / "train.jsonl"), str(world / "eval.jsonl")
    c.data.max_length = 48
    c.train.update(batch_size=8, steps=4, log_every=2, eval_every=0, eval_batches=0,
                   checkpoint_every=2, plot=False, progress_bar=False, async_checkpointing=False)
    # A constant rate: a run of 2 steps then resumed to 4 takes the same steps as a run of 4.
    c.optim.update(lr=1e-3, warmup_steps=0, schedule="constant")
    c.dpo.update(dpo_fields)
    return c


@pytest.fixture(scope="module")
def live_run(world, tmp_path_factory):
    """4 steps with a live reference; arrays copied before training for comparison."""
    workdir = tmp_path_factory.mktemp("live") / "dpo"
    s = dpo.setup(tiny_config(world, workdir, reference="live"))
    before = {"policy": host(nnx.state(s.model)), "reference": host(s.frozen)}
    params, _ = dpo.train(s)
    return dict(setup=s, before=before, params=params, workdir=workdir)


# ----------------------------------------------------------------------------- reference
def test_policy_moves_reference_stays(live_run):
    before, s = live_run["before"], live_run["setup"]
    assert all(np.array_equal(a, b) for a, b in zip(before["policy"], before["reference"]))
    assert all(not np.array_equal(a, b) for a, b in zip(before["policy"], host(live_run["params"])))
    assert all(np.array_equal(a, b) for a, b in zip(before["reference"], host(s.frozen)))
    last = json.loads((live_run["workdir"] / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"eval/loss", "eval/rewards/accuracy", "eval/logps/accuracy"} <= last.keys()


def test_sequence_logps_match_a_full_forward(live_run):
    """One [2B, T] trunk call then split == each side scored on its own from full logits."""
    s = live_run["setup"]
    model = nnx.merge(s.ref_graphdef, s.frozen)
    batch = s.eval_batches[0]
    with sharding.use_mesh(s.run.mesh):
        chosen, rejected = jax.jit(lambda b: dpo.pair_logps(model, b, False))(batch)
        for side, got in (("chosen", chosen), ("rejected", rejected)):
            tokens, mask = batch[f"{side}_tokens"], batch[f"{side}_loss_mask"]
            logp = jax.nn.log_softmax(model(tokens), axis=-1)[:, :-1]
            picked = np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]
            np.testing.assert_allclose(got, (picked * mask[:, 1:]).sum(-1), atol=1e-4, rtol=1e-5)
    assert np.all(mask[:, 0] == 0)  # position 0 is prompt, never a target


@pytest.mark.parametrize("loss_type,average,sft_weight", [("sigmoid", False, 0.0),
                                                          ("ipo", True, 1.0)])
def test_cached_reference_loss_equals_live(world, tmp_path, live_run, loss_type, average,
                                           sft_weight):
    live = live_run["setup"]  # its frozen reference: the same initialisation, never updated
    cached = dpo.setup(tiny_config(world, tmp_path / "cached", loss_type=loss_type,
                                   average_logps=average, sft_weight=sft_weight))
    assert cached.frozen is None and cached.ref_graphdef is None
    graphdef, params = nnx.split(cached.model)
    # Move the policy off the reference, so the log-ratios (and the loss) are not trivially 0.
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(next(keys), p.shape), params)
    batch = next(cached.loader)
    assert set(dpo.REF_KEYS) <= batch.keys()
    d = cached.settings
    with sharding.use_mesh(cached.run.mesh):
        rng = jax.random.key(0)
        loss_live, m_live = jax.jit(dpo.make_loss(graphdef, d, live.ref_graphdef))(
            params, batch, rng, live.frozen)
        loss_cached, m_cached = jax.jit(dpo.make_loss(graphdef, d))(params, batch, rng, None)
    assert abs(float(loss_live) - float(loss_cached)) < 1e-5
    assert abs(float(m_live["log_ratio"])) > 1e-3
    for key in m_live:
        np.testing.assert_allclose(m_cached[key], m_live[key], atol=1e-5, rtol=1e-5)


def test_cache_reused_and_invalidated(world, tmp_path):
    cache = tmp_path / "cache"
    first = dpo.setup(tiny_config(world, tmp_path / "a", cache_dir=str(cache)))
    assert first.cache_hits == {"train": False, "eval": False}
    original = reference_cache.load(_entry(cache, N_TRAIN))
    # A re-run, with settings the reference log-probs do not depend on changed: a hit.
    again = tiny_config(world, tmp_path / "b", cache_dir=str(cache), beta=0.5, loss_type="hinge")
    again.optim.lr, again.train.steps = 3e-4, 9
    assert dpo.setup(again).cache_hits == {"train": True, "eval": True}
    # The data changes (one chosen response): the training entry is recomputed, eval is reused,
    # and only that pair's reference log-prob differs.
    records = [json.loads(line) for line in (world / "train.jsonl").read_text().splitlines()]
    records[5]["chosen"] += " Indeed."
    (tmp_path / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data_changed = tiny_config(world, tmp_path / "c", cache_dir=str(cache))
    data_changed.data.source = str(tmp_path / "edited.jsonl")
    assert dpo.setup(data_changed).cache_hits == {"train": False, "eval": True}
    fresh = reference_cache.load(_entry(cache, N_TRAIN, newest=True))
    differs = ~np.isclose(original["ref_chosen_logps"], fresh["ref_chosen_logps"], atol=1e-5)
    assert differs.nonzero()[0].tolist() == [5]
    np.testing.assert_array_equal(original["ref_rejected_logps"], fresh["ref_rejected_logps"])
    # By default the cache lies beside the workdir: a sibling run (a sweep) finds the entry.
    assert dpo.setup(tiny_config(world, tmp_path / "runs" / "lr1")).cache_hits == {
        "train": False, "eval": False}
    assert dpo.setup(tiny_config(world, tmp_path / "runs" / "lr2")).cache_hits == {
        "train": True, "eval": True}
    assert (tmp_path / "runs" / "reference_cache").is_dir()
    # The reference model changes (another initialisation): both entries are recomputed.
    model_changed = tiny_config(world, tmp_path / "d", cache_dir=str(cache))
    model_changed.train.seed = 1
    assert dpo.setup(model_changed).cache_hits == {"train": False, "eval": False}
    assert len(list(cache.iterdir())) == 5


def test_a_short_run_scores_only_the_pairs_it_draws(world, tmp_path):
    """1 step × 8 pairs of 64 (under a quarter): the cache scores those 8 — the values a full
    table has — and NaN elsewhere; a batch reaching an unscored pair is an error, not a loss
    on NaN. (The trial: 2 steps of the real preset scored all 2,292 HH pairs, hours on a CPU.)"""
    from easyalign.data.loader import rows_drawn

    full = dpo.setup(tiny_config(world, tmp_path / "full", cache_dir=str(tmp_path / "c1")))
    short_config = tiny_config(world, tmp_path / "short", cache_dir=str(tmp_path / "c2"))
    short_config.train.steps = 1
    short = dpo.setup(short_config)
    table, reference = short.loader.table, full.loader.table
    drawn = rows_drawn(N_TRAIN, short_config.train.seed, 8)
    assert len(drawn) == 8
    finite = np.isfinite(table["ref_chosen_logps"])
    assert finite.nonzero()[0].tolist() == drawn.tolist()
    for key in dpo.REF_KEYS:
        np.testing.assert_allclose(table[key][drawn], reference[key][drawn], atol=1e-6)
    batch = next(short.loader)  # the run's one step: every pair scored
    assert sorted(batch["index"].tolist()) == drawn.tolist()
    with pytest.raises(ValueError, match="reference log-probs were not computed"):
        for _ in range(N_TRAIN // 8):
            next(short.loader)


def _entry(cache, num_examples, newest=False):
    entries = [e for e in cache.iterdir()
               if json.loads((e / "key.json").read_text())["num_examples"] == num_examples]
    return sorted(entries, key=lambda e: e.stat().st_mtime)[-1 if newest else 0]


def test_params_digest_sees_any_change():
    x = jnp.arange(12.0).reshape(3, 4)
    digest = reference_cache.params_digest({"w": x})
    assert digest == reference_cache.params_digest({"w": jnp.arange(12.0).reshape(3, 4)})
    assert digest != reference_cache.params_digest({"w": x.T.reshape(3, 4)})  # permuted
    assert digest != reference_cache.params_digest({"w": x.at[1, 2].add(1e-3)})
    assert digest != reference_cache.params_digest({"v": x})
    assert reference_cache.fingerprint({"a": 1}) != reference_cache.fingerprint({"a": 2})


def test_params_digest_statistics_are_exact_integer_sums():
    """The statistics are wrapping uint32 sums of the float32 bit patterns (so no reduction
    order can change them: a GPU's float sums differed between runs of the same checkpoint):
    the device values equal NumPy's over a shuffled order, for bf16 and f32 tensors."""
    x = jax.random.normal(jax.random.key(0), (37, 5, 11), jnp.float32) * 3
    for array in (x, x.astype(jnp.bfloat16)):
        bits = np.asarray(array.astype(jnp.float32)).view(np.uint32)
        i, j, k = np.indices(bits.shape, dtype=np.uint64)
        p = 1021
        weight = (((i % p) * 2 + (j % p) * 3 + (k % p) * 4) % p + 1).astype(np.uint64)
        mixed = (bits ^ (bits >> np.uint32(15))).astype(np.uint64)
        order = np.random.default_rng(0).permutation(bits.size)
        flat = lambda a: a.reshape(-1)[order]  # noqa: E731
        expected = [int(np.sum(flat(bits.astype(np.uint64)))) % 2**32,
                    int(np.sum(flat(bits.astype(np.uint64) * weight % 2**32))) % 2**32,
                    int(np.sum(flat(mixed * mixed % 2**32))) % 2**32]
        got = [int(v) for v in np.asarray(reference_cache._tensor_stats(array))]
        assert got == expected, (array.dtype, got, expected)


# ----------------------------------------------------------------------------- config, resume
def test_bad_loss_type_is_a_clear_error(world, tmp_path):
    config = tiny_config(world, tmp_path / "dpo", loss_type="kto")
    with pytest.raises(ValueError, match=r"dpo.loss_type 'kto'; valid: hinge, ipo, sigmoid"):
        dpo.run(config)
    assert not (tmp_path / "dpo").exists()  # rejected before any work
    with pytest.raises(ValueError, match="valid: live, cached"):
        dpo.check_config(tiny_config(world, tmp_path / "dpo", reference="frozen"))
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo.check_config(tiny_config(world, tmp_path / "dpo", loss_type="ipo",
                                     label_smoothing=0.1))


def test_default_model_path_is_the_pipeline_sft_stage(tmp_path):
    config = dpo_config.get_config("tiny")
    config.workdir = str(tmp_path / "runs" / "demo" / "dpo")
    assert runsetup.stage_path(config, config.model.path) == str(
        tmp_path / "runs" / "demo" / "sft" / "model")


def test_resume_after_kill_continues_the_same_trajectory(world, live_run, tmp_path):
    """A copy of the 4-step run as if killed after its step-2 checkpoint resumes to the same
    params."""
    workdir = tmp_path / "dpo"
    shutil.copytree(live_run["workdir"], workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    shutil.rmtree(workdir / "model")
    params, _ = dpo.run(tiny_config(world, workdir, reference="live"))
    assert models.stage_done(workdir)
    for a, b in zip(host(live_run["params"]), host(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- the built-in world
@pytest.fixture(scope="module")
def pipeline(student_runs):
    """`runs/s/{sft,dpo}`: the session's short SFT of the world's small student shape (weak
    enough to leave room: it refuses ~89% of held-out harmful prompts), then `dpo.py:tiny`."""
    config = dpo_config.get_config("tiny")
    config.workdir = str(student_runs / "dpo")  # model.path "@sft": runs/s/sft/model
    config.train.update(plot=False, progress_bar=False)
    dpo.run(config)
    return student_runs, config


def held_out_refusal(model_dir, world_dir) -> dict[str, float]:
    """Refusal rate on the world's harmful suite and over-refusal on its benign look-alikes."""
    from easyalign.data.rules import is_refusal
    from easyalign.hf import load_checkpoint_model
    from easyalign.sampler import Sampler

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    sampler = Sampler.from_model(load_checkpoint_model(model_dir), tokenizer, batch_size=64)
    rates = {}
    for suite in ("harmful", "benign"):
        prompts = [json.loads(line)["prompt"] for line in
                   (world_dir / f"eval_{suite}.jsonl").read_text().splitlines()]
        outs = sampler.sample_texts(prompts, max_new_tokens=24)
        rates[suite] = sum(is_refusal(o["response"]) for o in outs) / len(outs)
    return rates


def test_dpo_improves_held_out_preferences_and_safety(pipeline):
    from easyalign.hf import load_checkpoint_model

    root, config = pipeline
    s = dpo.setup(config)  # the SFT model as the initial policy, the cached reference (a hit)
    assert s.cache_hits == {"train": True, "eval": True}
    preference = {}
    for stage, model in (("sft", s.model), ("dpo", load_checkpoint_model(root / "dpo" / "model"))):
        graphdef, params = nnx.split(model)
        evaluate = driver.make_evaluator(s.run, s.eval_batches,
                                         dpo.make_eval_metrics(graphdef, s.settings))
        preference[stage] = evaluate(params)
    refusal = {stage: held_out_refusal(root / stage / "model", s.run.source_dirs["world"])
               for stage in ("sft", "dpo")}
    print({stage: {"preference_accuracy": preference[stage]["logps/accuracy"],
                   "reward_accuracy": preference[stage]["rewards/accuracy"],
                   "refusal": refusal[stage]["harmful"], "over_refusal": refusal[stage]["benign"]}
           for stage in ("sft", "dpo")})
    # The policy's own ranking of held-out pairs, log π(y_w) > log π(y_l), improves...
    assert preference["dpo"]["logps/accuracy"] > preference["sft"]["logps/accuracy"] + 0.02
    # ... and the implicit reward β log π/π_ref ranks most pairs right (0 for the SFT model).
    assert preference["dpo"]["rewards/accuracy"] > 0.7
    assert refusal["dpo"]["harmful"] > refusal["sft"]["harmful"]
    assert refusal["dpo"]["benign"] <= refusal["sft"]["benign"] + 0.05
