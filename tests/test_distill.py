"""Distillation wiring: chunked divergences equal full-logits ones, on-policy sequences, frozen
teacher, λ = 0 never samples, reward weighting, the sampled-token estimator's gradient, and a
reduced built-in-world run in which the student gets closer to the teacher.

The teacher is the session's briefly SFT-trained `world-student` model (`student_runs` in
conftest: it has something to teach); the student is a smaller `tiny` (one layer, narrower MLP). Teacher data is a slice of
the world's SFT demonstrations written as `{prompt, teacher_response}` records.
"""

import dataclasses
import json
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import distill as distill_config
from easyalign.data import world_source
from easyalign import losses, sharding
from easyalign.algorithms import distill, teacher_data
from easyalign.train import driver
from easyalign.algorithms import distill_losses as DL
from easyalign.hf import save_checkpoint_model
from easyalign.model import create_model
from conftest import host, phase_config

STUDENT = "num_layers=1,intermediate_size=64"
N_TEACHER = 64


pytestmark = pytest.mark.usefixtures("full_fp32_matmuls")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, student_runs):
    """`runs/p/`: `sft/model` (the teacher: the session's SFT model, copied so that this
    module's stages stay apart) and `teacher_data/teacher_data.jsonl`; the session's world."""
    root = tmp_path_factory.mktemp("runs") / "p"
    shutil.copytree(student_runs / "sft" / "model", root / "sft" / "model")
    world = world_source.world_dir(phase_config("sft", student_runs / "sft"))
    demos = [json.loads(line) for line in
             (world / "sft_train.jsonl").read_text().splitlines()[:N_TEACHER]]
    (root / "teacher_data").mkdir()
    (root / "teacher_data" / "teacher_data.jsonl").write_text("".join(
        json.dumps({"prompt": d["prompt"], "teacher_response": d["response"]}) + "\n"
        for d in demos))
    return root, world


def tiny_config(pipeline, workdir, **fields):
    root, world = pipeline
    c = distill_config.get_config()
    c.workdir = str(root / workdir)
    c.model.preset, c.model.overrides = "tiny", STUDENT
    c.model.logits_chunk = 8  # sequences of 40: every loss really goes chunk by chunk
    c.data.world.dir = str(world)
    c.data.max_length = 40
    c.train.update(batch_size=8, steps=3, log_every=1, eval_every=0, eval_batches=1,
                   checkpoint_every=3, plot=False, progress_bar=False, async_checkpointing=False)
    c.optim.update(lr=1e-3, warmup_steps=0, schedule="constant")
    c.distill.update(dict(teacher="@sft", max_new_tokens=8) | fields)
    return c


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "logs" / "metrics.jsonl").read_text()
            .splitlines()]


# ----------------------------------------------------------------------------- pure pieces
def test_join_prompt_response():
    prompts = jnp.array([[5, 6, 7, 0], [8, 0, 0, 0]])
    response = jnp.array([[1, 2, 9], [3, 9, 0]])
    seq = DL.join_prompt_response(prompts, jnp.array([3, 1]), response, jnp.array([3, 2]), 0)
    np.testing.assert_array_equal(seq["tokens"], [[5, 6, 7, 1, 2, 9, 0], [8, 3, 9, 0, 0, 0, 0]])
    np.testing.assert_array_equal(seq["loss_mask"], [[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(seq["segment_ids"], [[1, 1, 1, 1, 1, 1, 0],
                                                       [1, 1, 1, 0, 0, 0, 0]])


def test_terms_come_from_the_registries_and_unknown_names_are_one_line():
    wiring = DL.Wiring(mode="on_policy", divergence="jsd", beta=0.5, temperature=1.0,
                       sampling=None, max_new_tokens=4, stop_tokens=(), pad_id=0)
    assert wiring.terms() == DL.Terms(DL.full_vocab_term, DL.full_vocab_term)
    sampled = dataclasses.replace(wiring, divergence="sampled_reverse_kl")
    assert sampled.terms() == DL.Terms(DL.sampled_reverse_kl_term, DL.teacher_nll_term)
    assert dataclasses.replace(wiring, mode="offline").terms() == DL.OFFLINE_TERMS
    # config_check validates against the names in losses.distill: the same names.
    assert tuple(DL.MODES) == losses.distill.DISTILL_MODES
    assert tuple(DL.DIVERGENCE_TERMS) == losses.distill.DIVERGENCE_NAMES
    for fields, message in [
            (dict(mode="both"), "unknown distill.mode 'both'; valid: offline, on_policy"),
            (dict(divergence="tvd", mode="offline"), "unknown distill.divergence 'tvd'; valid: "
             "forward_kl, jsd, reverse_kl, sampled_reverse_kl")]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            dataclasses.replace(wiring, **fields)


def test_reward_weights_formula():
    present = jnp.array([True, True, True, False])
    np.testing.assert_allclose(DL.reward_weights(jnp.full(4, 2.5), present, 1.0), [1, 1, 1, 0],
                               atol=1e-6)
    scores = jnp.array([0.0, 1.0, 2.0, 50.0])  # the absent row's score plays no part
    w = np.asarray(DL.reward_weights(scores, present, 0.5))
    z = (np.array([0.0, 1.0, 2.0]) - 1.0) / np.sqrt(2 / 3)
    expected = 3 * np.exp(z / 0.5) / np.exp(z / 0.5).sum()
    np.testing.assert_allclose(w, [*expected, 0.0], rtol=1e-5)
    # Standardised: the reward model's scale and offset do not matter.
    np.testing.assert_allclose(DL.reward_weights(10 * scores - 3, present, 0.5), w, rtol=1e-5)
    # A batch without responses weighs nothing (and is not NaN).
    np.testing.assert_array_equal(DL.reward_weights(scores, present & False, 1.0), np.zeros(4))


def test_sampled_reverse_kl_gradient_direction():
    """The estimator raises log p_S(y_t) where log p_T(y_t) > log p_S(y_t), lowers it elsewhere."""

    steps, vocab = 5, 7

    class Linear:  # a "model" whose logits at position t are row t of a table
        config = types.SimpleNamespace(logits_chunk=512, vocab_size=vocab)

        def __init__(self, table):
            self.table = table

        def logits(self, hidden):
            return hidden @ self.table

    rng = np.random.default_rng(0)
    hidden = jnp.eye(steps)[None]                     # one-hot positions [1, T, T]
    tokens = jnp.asarray(rng.integers(0, vocab, (1, steps)), jnp.int32)
    mask = jnp.ones((1, steps)).at[0, 0].set(0.0)
    student_table = jnp.asarray(rng.normal(size=(steps, vocab)), jnp.float32)
    teacher = Linear(jnp.asarray(rng.normal(size=(steps, vocab)) * 2, jnp.float32))

    def logps(table):
        return DL.token_logprobs(Linear(table), hidden, tokens)[0]

    def loss(table):
        return DL.sampled_reverse_kl(Linear(table), hidden, teacher, hidden, tokens, mask,
                                     None)[0]

    gap = logps(teacher.table) - logps(student_table)  # the advantage A_t
    stepped = student_table - 0.05 * jax.grad(loss)(student_table)
    change = logps(stepped) - logps(student_table)
    for t in range(1, steps):
        assert np.sign(change[t]) == np.sign(gap[t]), (t, gap[t], change[t])
    # The loss value is the policy loss −mean_t A_t (ratio 1), its metric the sampled KL.
    value, kl = DL.sampled_reverse_kl(Linear(student_table), hidden, teacher, hidden, tokens,
                                      mask, None)
    np.testing.assert_allclose(value, -np.mean(gap[1:]), rtol=1e-5)
    np.testing.assert_allclose(kl, -np.mean(gap[1:]), rtol=1e-5)


def test_mixed_loader_schedule_and_state():
    class Counter:
        def __init__(self, name):
            self.name, self.i = name, 0

        def __next__(self):
            self.i += 1
            return {self.name: self.i}

        def get_state(self):
            return str(self.i).encode()

        def set_state(self, state):
            self.i = int(state)

    def kinds(loader, n):
        return [next(iter(next(loader))) for _ in range(n)]

    half = distill.MixedLoader(Counter("prompts"), Counter("teacher"), 0.5, seed=1)
    first = kinds(half, 40)
    assert 10 < first.count("prompts") < 30
    state = half.get_state()
    rest = kinds(half, 10)
    again = distill.MixedLoader(Counter("prompts"), Counter("teacher"), 0.5, seed=1)
    again.set_state(state)
    assert kinds(again, 10) == rest
    assert again.prompts.i == half.prompts.i and again.teacher.i == half.teacher.i
    assert set(kinds(distill.MixedLoader(None, Counter("teacher"), 0.0, 1), 20)) == {"teacher"}
    assert set(kinds(distill.MixedLoader(Counter("prompts"), None, 1.0, 1), 20)) == {"prompts"}


# ----------------------------------------------------------------------------- models
def full_logits_loss(student, teacher, seq, divergence, beta=0.5, weights=None):
    """The token-mean divergence from whole `[B, T, V]` logits (the unchunked reference)."""
    s_logits = student(seq["tokens"])[:, :-1]
    t_logits = teacher(seq["tokens"])[:, :-1]
    per_token = losses.DIVERGENCES[divergence](s_logits, t_logits, beta=beta, temperature=1.0)
    per_token = jnp.pad(per_token, ((0, 0), (1, 0)))
    return losses.distill_loss(per_token, seq["loss_mask"], weights)[0]


@pytest.fixture(scope="module")
def half(pipeline):
    """An on-policy set-up with λ = 0.5: both loaders (prompts and teacher data) exist."""
    return distill.setup(tiny_config(pipeline, "half", lmbda=0.5))


def test_chunked_divergence_equals_full_logits(half):
    graphdef, params = nnx.split(half.model)
    teacher = nnx.merge(half.eval_wiring.teacher, half.frozen["teacher"])
    rng = jax.random.key(7)
    batch, prompts = next(half.loader.teacher), next(half.loader.prompts)
    with sharding.use_mesh(half.run.mesh):
        for divergence in ("forward_kl", "reverse_kl", "jsd"):
            wiring = dataclasses.replace(half.wiring, divergence=divergence)
            loss, metrics = jax.jit(DL.make_loss(graphdef, wiring))(params, batch, rng,
                                                                   half.frozen)
            expected = full_logits_loss(half.model, teacher, batch, divergence)
            np.testing.assert_allclose(loss, expected, atol=1e-5, rtol=0, err_msg=divergence)
            assert float(metrics["on_policy"]) == 0.0
        # On-policy: the step samples with `rng`; the reference re-samples with the same key.
        loss, metrics = jax.jit(DL.make_loss(graphdef, wiring))(params, prompts, rng,
                                                               half.frozen)
        seq = jax.jit(lambda p, b: DL.student_samples(graphdef, p, b, rng, wiring))(params,
                                                                                    prompts)
        expected = full_logits_loss(half.model, teacher, seq, "jsd")
    np.testing.assert_allclose(loss, expected, atol=1e-5, rtol=0)
    assert float(metrics["on_policy"]) == 1.0
    np.testing.assert_allclose(metrics["length"], seq["loss_mask"].sum(1).mean(), rtol=1e-6)
    # Each row is its own prompt, then the response (the only trained tokens).
    lengths = np.asarray(prompts["prompt_lengths"])
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(seq["tokens"][row, :n], prompts["prompt_tokens"][row, :n])
        assert seq["loss_mask"][row, :n].sum() == 0 and seq["loss_mask"][row].sum() > 0


def test_reward_weighting_equal_scores_equals_unweighted(pipeline, half):
    reward = create_model(half.model.config.replace(head="scalar"), seed=1)
    reward.score.kernel[...] = jnp.zeros_like(reward.score.kernel[...])  # one score for all
    save_checkpoint_model(reward, pipeline[0] / "reward" / "model")
    reward_graphdef, reward_params = nnx.split(
        teacher_data.frozen_model(half.run, "@reward", head="scalar"))
    weighted = dataclasses.replace(half.wiring, reward=reward_graphdef)
    graphdef, params = nnx.split(half.model)
    rng, prompts = jax.random.key(3), next(half.loader.prompts)
    with sharding.use_mesh(half.run.mesh):
        plain, m_plain = jax.jit(DL.make_loss(graphdef, half.wiring))(params, prompts, rng,
                                                                      half.frozen)
        equal, m_equal = jax.jit(DL.make_loss(graphdef, weighted))(
            params, prompts, rng, dict(half.frozen, reward=reward_params))
    np.testing.assert_allclose(equal, plain, atol=1e-6, rtol=0)
    np.testing.assert_allclose(m_equal["weight_max"], 1.0, atol=1e-6)
    np.testing.assert_allclose(m_equal["loss_weight"], m_plain["loss_weight"], rtol=1e-6)


def test_offline_loss_is_cross_entropy_plus_topk_kl(pipeline, monkeypatch):
    read = []
    real_load = distill.runsetup.load_examples
    monkeypatch.setattr(distill.runsetup, "load_examples",
                        lambda run, kind, split: read.append((kind, split)) or real_load(
                            run, kind, split))
    s = distill.setup(tiny_config(pipeline, "offline", mode="offline"))
    assert s.frozen["teacher"] is None and s.wiring.teacher is None  # no teacher in training
    # Offline steps never sample: the training prompts are not read (nor warned about).
    assert ("prompt", "train") not in read and ("prompt", "eval") in read
    graphdef, params = nnx.split(s.model)
    batch = next(s.loader)
    k = 3
    rng = np.random.default_rng(0)
    batch["teacher_topk_ids"] = rng.integers(0, s.model.config.vocab_size,
                                             batch["tokens"].shape + (k,)).astype(np.int32)
    batch["teacher_topk_logprobs"] = rng.normal(size=batch["tokens"].shape + (k,)).astype(
        np.float32)
    wiring = dataclasses.replace(s.wiring, topk_weight=0.5)
    with sharding.use_mesh(s.run.mesh):
        loss, metrics = jax.jit(DL.make_loss(graphdef, wiring))(params, batch, None, s.frozen)
    logits = s.model(batch["tokens"])[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    topk = losses.topk_forward_kl(logits, batch["teacher_topk_logprobs"][:, 1:],
                                  batch["teacher_topk_ids"][:, 1:])
    mask = batch["loss_mask"][:, 1:]
    np.testing.assert_allclose(metrics["nll"], losses.masked_mean(nll, mask), rtol=1e-5)
    np.testing.assert_allclose(loss, losses.masked_mean(nll + 0.5 * topk, mask), rtol=1e-5)


# ----------------------------------------------------------------------------- training
def test_student_gets_closer_teacher_stays(pipeline):
    """A reduced world run (on-policy JSD): on held-out prompts, the divergence on the
    student's own samples falls; the teacher's params never move, the student's do."""
    config = tiny_config(pipeline, "closer", max_new_tokens=12)
    config.train.update(steps=40, log_every=10, eval_batches=2, checkpoint_every=40)
    config.optim.lr = 3e-3
    s = distill.setup(config)
    graphdef, params = nnx.split(s.model)
    student_before, teacher_before = host(params), host(s.frozen["teacher"])
    evaluate = driver.make_evaluator(
        s.run, s.eval_batches,
        DL.make_eval_metrics(graphdef, s.eval_wiring, jax.random.key(config.train.seed)),
        s.eval_frozen)
    before = evaluate(params)["divergence"]
    params, _ = distill.train(s)
    metrics = read_metrics(pipeline[0] / "closer")
    after = metrics[-1]["eval/divergence"]
    assert after < 0.7 * before, (before, after)
    assert all(not np.array_equal(a, b) for a, b in zip(student_before, host(params)))
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, host(s.frozen["teacher"])))
    assert all(m["on_policy"] == 1.0 for m in metrics if "loss" in m)
    assert {"divergence", "length", "weight_max"} <= metrics[0].keys()
    assert (pipeline[0] / "closer" / "model" / "model_config.json").is_file()


def test_lmbda_zero_never_samples(pipeline, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("lmbda=0 must not sample")

    s = distill.setup(tiny_config(pipeline, "lmbda0", lmbda=0.0))
    assert s.loader.prompts is None
    monkeypatch.setattr(DL, "generate", no_sampling)
    s.eval_batches = []  # evaluation samples by design; this test is about training steps
    distill.train(s)
    assert all(m["on_policy"] == 0.0 for m in read_metrics(pipeline[0] / "lmbda0") if "loss" in m)


def test_config_errors(pipeline):
    for fields, match in [(dict(mode="both"), "mode"), (dict(divergence="tvd"), "divergence"),
                          (dict(topk_weight=1.0), "topk_weight"),
                          (dict(max_new_tokens=40), "max_length")]:
        with pytest.raises(ValueError, match=match):
            distill.check_config(tiny_config(pipeline, "errors", **fields))
    # Ranges are the config check's (`config_check.RANGES`), as for every phase.
    from easyalign import config_check

    with pytest.raises(ValueError, match="lmbda"):
        config_check.validate(tiny_config(pipeline, "errors", lmbda=1.5), paths=False)
    missing = tiny_config(pipeline, "errors", mode="offline", teacher_data="/nonexistent.jsonl")
    with pytest.raises(FileNotFoundError, match="teacher-data"):
        distill.setup(missing)
