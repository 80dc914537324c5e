"""GRPO phase on the built-in world: group rollouts, verifiable rewards, metrics, frozen models,
resume, and that a reduced run learns the exact-match reward.

Advantages and losses are checked against hand-computed values in `test_losses_grpo.py`. Here
every run starts from the session's tiny SFT model (`world_runs`, `tests/conftest.py`).
"""

import json
import shutil

import numpy as np
import pytest

from conftest import host, phase_config
from easyalign.algorithms import grpo, grpo_rewards, grpo_rollout

QUIET = dict(train__plot=False, train__async_checkpointing=False)


def config_for(root, name, **overrides):
    settings = dict(train__steps=4, train__checkpoint_every=2, train__eval_every=0,
                    train__eval_batches=1, grpo__rewards="exact_match:1.0",
                    grpo__prompt_kinds="instruction", grpo__sample_every=2, **QUIET)
    return phase_config("grpo", root / name, **(settings | overrides))


@pytest.fixture(scope="module")
def trained(world_runs):
    s = grpo.setup(config_for(world_runs, "grpo"))
    before = host(s.params)
    params, _ = grpo.train(s)
    return s, before, host(params)


def test_verifiable_rewards_on_world_records():
    inst = {"prompt": "Add 2 and 3.", "kind": "instruction", "answer": "5"}
    assert grpo_rewards.exact_match(inst, "5") == 1.0
    assert grpo_rewards.exact_match(inst, "The answer is 5") == 0.0
    assert grpo_rewards.exact_match({"kind": "harmful"}, "5") == 0.0
    harmful, benign = {"kind": "harmful"}, {"kind": "benign"}
    assert grpo_rewards.refusal(harmful, "I'm sorry, but I can't help with that.") == 1.0
    assert grpo_rewards.refusal(benign, "I'm sorry, but I can't help with that.") == 0.0
    assert grpo_rewards.world_grade({"kind": "unknown"}, "I don't know.") == 1.0
    assert grpo_rewards.parse_rewards("exact_match:2,reward_model") == {
        "exact_match": 2.0, "reward_model": 1.0}
    with pytest.raises(ValueError, match=r"grpo.rewards: unknown name 'nope' in 'nope:1' \(known.*registered by your config file"):
        grpo_rewards.parse_rewards("nope:1")
    grpo_rewards.register("length", lambda record, response: float(len(response)))
    scores = grpo_rewards.verifiable_scores({"length": 0.5, "exact_match": 1.0}, [inst, inst],
                                            ["5", "123"])
    np.testing.assert_array_equal(grpo_rewards.combine({"length": 0.5, "exact_match": 1.0},
                                                       scores), [1.5, 1.5])
    ifeval = {"prompt": "Answer without commas.", "instruction_id_list": ["punctuation:no_comma"],
              "kwargs": [{}]}
    assert grpo_rewards.reward_function("ifeval_strict")(ifeval, "no commas here") == 1.0
    # Which prompts a reward can grade at all: the others' groups carry no signal.
    fact = {"kind": "fact", "answer": "Paris"}
    records = [inst, harmful, fact, ifeval, {"kind": "unknown"}]
    assert grpo_rewards.ungradeable({"exact_match": 1.0}, records) == [1, 3, 4]
    assert grpo_rewards.ungradeable({"exact_match": 1.0, "refusal": 0.5}, records) == [3, 4]
    assert grpo_rewards.ungradeable({"world": 1.0, "ifeval_strict": 1.0}, records) == []
    assert grpo_rewards.ungradeable({"exact_match": 1.0, "reward_model": 1.0}, records) == []
    assert grpo_rewards.ungradeable({"length": 1.0}, records) == []  # no `applies`: grades all


@pytest.mark.parametrize("spec, message", [
    # `key=value`, the habit of every other setting: the entry as it should be written.
    ("reward_model=1.0", "grpo.rewards: 'reward_model=1.0' is not name:weight; did you mean "
                         "'reward_model:1.0'?"),
    ("exact_match:1,reward_modl=0.5", "grpo.rewards: 'reward_modl=0.5' is not name:weight; "
                                      "did you mean 'reward_model:0.5'?"),
    # A misspelt name: the closest registered reward, as every other unknown name gets.
    ("reward_modle", "grpo.rewards: unknown name 'reward_modle'; did you mean 'reward_model'?"),
    ("exact_match:1,refusall:0.5", "grpo.rewards: unknown name 'refusall' in 'refusall:0.5'; "
                                   "did you mean 'refusal'?"),
    ("exact_match:high", "grpo.rewards: weight of 'exact_match' is not a number: 'high'"),
    (" , ", "grpo.rewards names no reward"),
])
def test_a_bad_rewards_entry_is_one_line_with_the_format(spec, message):
    """Every `grpo.rewards` mistake names the entry, and the `name:weight` format with an
    example; the known names are listed for an unknown one."""
    with pytest.raises(ValueError) as excinfo:
        grpo_rewards.parse_rewards(spec)
    text = str(excinfo.value)
    assert text.startswith(message) and "\n" not in text
    assert text.endswith("entries are name:weight, e.g. 'exact_match:1.0,reward_model:0.5')" +
                         ("; a function of your own is registered by your config file (README: "
                          "Add a verifiable reward)" if "unknown name" in text else ""))
    assert ("known: " in text) == ("unknown name" in text)


def test_ungradeable_prompts_are_one_warning_line(capsys):
    from configs import grpo as grpo_config

    c = grpo_config.get_config()
    c.grpo.rewards = "exact_match:1.0"
    records = [{"kind": "instruction", "answer": "5"}, {"kind": "harmful"}, {"kind": "harmful"},
               {"prompt": "no kind"}]
    grpo._warn_ungradeable(c, {"exact_match": 1.0}, records)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "3 of 4 training prompts can be graded by no reward" in out[0]
    assert "(harmful 2, no kind 1)" in out[0] and "grpo.prompt_kinds" in out[0]
    grpo._warn_ungradeable(c, {"exact_match": 1.0}, records[:1])
    assert capsys.readouterr().out == ""


def test_records_carry_world_answers(trained):
    s, _, _ = trained
    assert s.records and all(r["kind"] == "instruction" and r["answer"] for r in s.records)
    assert s.loader.fingerprint["num_examples"] == len(s.records)


def test_policy_moves_metrics_written(world_runs, trained):
    s, before, after = trained
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    rows = [json.loads(line) for line in
            (world_runs / "grpo" / "logs" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    keys = {"reward", "reward/exact_match", "reward_std/exact_match", "zero_signal_frac",
            "clip_frac", "kl", "entropy", "response_length", "sample_tokens_per_s",
            "update_tokens_per_s", "pg_loss", "logprob_mismatch"}
    assert keys <= train_rows[-1].keys()
    assert max(r["logprob_mismatch"] for r in train_rows) < 1e-5
    assert all(0.0 <= r["zero_signal_frac"] <= 1.0 for r in train_rows)
    assert [r["step"] for r in rows if "eval/exact_match" in r] == [0, 4]
    # How many held-out prompts each evaluation scored (the trial could not tell).
    assert {r["eval/prompts"] for r in rows if "eval/exact_match" in r} == {len(s.eval_records)}
    assert "[reward" in (world_runs / "grpo" / "logs" / "samples.txt").read_text()
    assert (world_runs / "grpo" / "model" / "model_config.json").exists()


def test_resume_continues_the_same_trajectory(world_runs, trained):
    """The run killed after its iteration-2 checkpoint: resuming gives the same final policy."""
    _, _, after = trained
    workdir = world_runs / "grpo-resumed"
    shutil.copytree(world_runs / "grpo", workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    shutil.rmtree(workdir / "model")
    params, _ = grpo.run(config_for(world_runs, "grpo-resumed"))
    for a, b in zip(after, host(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_grpo_learns_the_exact_match_reward(world_runs):
    """10 iterations with the exact-match reward on one fixed batch of 16 world instruction
    prompts (their answers in the file: a custom verifiable-reward source), evaluated greedily
    on the same 16: exact match and the sampled reward both go up. Measured on a 2-core CPU
    (about 60 s): exact match 0.188 → 0.688 (3 → 11 of 16), sampled reward 0.17 → 0.32.
    (Held-out prompts move within noise at this budget: see the README's GRPO section.)"""
    path, = world_runs.glob("world-*/sft_train.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = world_runs / "instruction16.jsonl"
    prompts.write_text("".join(
        json.dumps({"prompt": r["prompt"], "kind": "instruction", "answer": r["response"]}) + "\n"
        for r in [r for r in records if r["kind"] == "instruction"][:16]))
    c = config_for(world_runs, "grpo-em", train__steps=10, train__eval_every=10,
                   train__eval_batches=1, train__checkpoint_every=100,
                   data__source=str(prompts), data__eval_source=str(prompts))
    grpo.run(c)
    rows = [json.loads(line) for line in
            (world_runs / "grpo-em" / "logs" / "metrics.jsonl").read_text().splitlines()]
    em = {r["step"]: r["eval/exact_match"] for r in rows if "eval/exact_match" in r}
    reward = [r["reward"] for r in rows if "reward" in r]
    print(em, reward)
    assert em[10] >= em[0] + 0.25                     # at least 4 more of the 16 prompts
    assert np.mean(reward[-3:]) > np.mean(reward[:3])


def test_an_update_without_signal_is_one_warning_line():
    """When every group of an update got equal rewards (a policy that solves none of its
    prompts: the README's GRPO run after a 2-step SFT) the loss and gradient are 0: one line
    says so and what to change; a single group with signal is no warning."""
    line = grpo_rollout.no_signal_warning(np.array([True, True]), 1, "exact_match:1.0")
    assert line.startswith("[grpo] warning: every group of iteration 1 got equal rewards under "
                           "grpo.rewards='exact_match:1.0'")
    assert "grpo.num_generations" in line
    assert grpo_rollout.no_signal_warning(np.array([True, False]), 1, "exact_match:1.0") is None


def test_a_failing_reward_function_is_one_line_naming_it_and_the_record():
    """Reported: a reward returning NaN was diagnosed as 'equal rewards' then a non-finite loss
    ('lower optim.lr'); None became NaN; one that raised was 'an internal error'. Each stops at
    scoring, naming the reward, the record and its prompt."""
    records = [{"prompt": "Add 2 and 3.", "kind": "instruction", "answer": "5"}] * 2
    cases = {"nan": lambda r, y: float("nan"), "none": lambda r, y: None,
             "text": lambda r, y: "yes", "boom": lambda r, y: 1 / 0}
    try:
        for name, fn in cases.items():
            grpo_rewards.register(name, fn)
            with pytest.raises(grpo_rewards.RewardError) as raised:
                grpo_rewards.verifiable_scores({name: 1.0}, records, ["5", "6"])
            line = str(raised.value)
            assert line.startswith(f"grpo.rewards: reward {name!r} on prompt record 0 "
                                   "('Add 2 and 3.'), response '5'"), line
            assert ("ZeroDivisionError" in line if name == "boom"
                    else "a reward must be a finite number" in line), line
        # Reported: "record 0" was the batch position, not the file line, and the response
        # that broke the function was not shown: a record read from a file is named by its
        # source, the response is shown (cut at 60 characters), and so is the pass.
        long = "The answer is " + "very " * 20 + "clearly 5"
        with pytest.raises(grpo_rewards.RewardError) as raised:
            grpo_rewards.verifiable_scores(
                {"boom": 1.0}, [dict(records[0], source="math.jsonl:7")], [long],
                "in the rollout of iteration 3")
        assert str(raised.value) == (
            "grpo.rewards: reward 'boom' on record math.jsonl:7 ('Add 2 and 3.'), response "
            f"{(long[:59] + '…')!r}, in the rollout of iteration 3: raised ZeroDivisionError: "
            "division by zero")
    finally:
        for name in cases:
            grpo_rewards.VERIFIABLE_REWARDS.pop(name, None)
    # An int, a bool and a numpy scalar are numbers.
    plain = {"count": lambda r, y: len(y), "is_five": lambda r, y: y == "5",
             "half": lambda r, y: np.float32(0.5)}
    try:
        for name, fn in plain.items():
            grpo_rewards.register(name, fn)
        scores = grpo_rewards.verifiable_scores(dict.fromkeys(plain, 1.0), records, ["5", "66"])
        assert {k: v.tolist() for k, v in scores.items()} == {
            "count": [1, 2], "is_five": [1, 0], "half": [0.5, 0.5]}
    finally:
        for name in plain:
            grpo_rewards.VERIFIABLE_REWARDS.pop(name, None)


def test_a_resume_after_the_reward_code_changed_says_so(tmp_path):
    """The trial: only the reward's name was recorded, so a resume after editing the reward
    function continued as the same run. The manifest holds a digest of the user's reward
    functions' source (easyalign's own are the library version's, not recorded); a run made
    before the digest existed resumes."""
    import importlib.util

    from configs import grpo as grpo_config
    from easyalign.train import rundir

    def register_from(name: str, body: str) -> None:
        path = tmp_path / f"{name}.py"
        path.write_text(f"def mine(record, response):\n    return {body}\n")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        grpo_rewards.register("mine", module.mine)

    try:
        register_from("rewards_v1", "1.0")
        first = grpo_rewards.code_identity("grpo.rewards", "mine:1.0,exact_match:0.5")
        assert list(first) == ["grpo.rewards (code)"]
        assert grpo_rewards.code_identity("grpo.rewards", "exact_match:1.0") == {}
        assert grpo_rewards.code_identity("train.steps", 3) == {}
        config = grpo_config.get_config("tiny")
        config.grpo.rewards = "mine:1.0"
        workdir = tmp_path / "run"
        (workdir / "checkpoints" / "2").mkdir(parents=True)
        assert rundir.check_resume(config, workdir, None, grpo_rewards.code_identity) is None
        (workdir / "config.json").write_text("{}")
        assert rundir.check_resume(config, workdir, None, grpo_rewards.code_identity) is None
        register_from("rewards_v2", "0.0")
        with pytest.raises(rundir.RunDirError, match=r"grpo\.rewards \(code\): '[0-9a-f]{16}' → "):
            rundir.check_resume(config, workdir, None, grpo_rewards.code_identity)
        # A manifest without the entry (a run from before it was recorded) resumes.
        assert rundir.check_resume(config, workdir) is None
        assert rundir.check_resume(config, workdir, None, grpo_rewards.code_identity) is None
    finally:
        grpo_rewards.VERIFIABLE_REWARDS.pop("mine", None)


def test_choose_groups_puts_signal_first_then_fills():
    zero = [np.array([True, False, True]), np.array([False, True, False])]
    # Groups 0..5 over two rounds; signal: 1, 3, 5; zero-signal fill: 0, 2, 4.
    np.testing.assert_array_equal(grpo_rollout.choose_groups(zero, 3), [1, 3, 5])
    np.testing.assert_array_equal(grpo_rollout.choose_groups(zero, 5), [1, 3, 5, 0, 2])


def test_dynamic_sampling_refills_zero_signal_groups(world_runs):
    """DAPO's dynamic sampling on the SFT model with the exact-match reward: later rounds
    sample the loader's next prompts; the update batch is exactly the rows of the chosen
    groups of each round (rounds re-sampled one by one with the same keys), signal groups
    first, and only zero-signal fill rows are masked out."""
    import jax

    from easyalign import sharding
    from easyalign.losses import grpo as grpo_losses

    c = config_for(world_runs, "grpo-dynamic", grpo__dynamic_sampling=True,
                   grpo__max_sampling_rounds=3)
    s = grpo.setup(c)
    score_fn = grpo.make_scorer(s)
    G, B = c.grpo.num_generations, c.train.batch_size
    batches = [next(s.loader) for _ in range(3)]
    to_global = lambda b: sharding.to_global_batch(b, s.run.mesh)  # noqa: E731
    drawn = iter(batches[1:])
    rng = jax.random.key(5)
    with sharding.use_mesh(s.run.mesh):
        batch, metrics, _ = grpo_rollout.rollout_batch(s, score_fn, s.params, to_global(batches[0]),
                                               rng, more_prompts=lambda: to_global(next(drawn)))
        rounds = int(metrics["sampling_rounds"])
        assert rounds > 1  # the SFT model's first round has zero-signal groups
        singles = [grpo_rollout.sample_round(s, score_fn, s.params, to_global(batches[r]),
                                     rng if r == 0 else jax.random.fold_in(rng, r))
                   for r in range(rounds)]
    zero = [np.asarray(grpo_losses.zero_signal_groups(r.rewards)) for r in singles]
    assert sum(int((~z).sum()) for z in zero[:-1]) < B  # each extra round was needed
    groups = grpo_rollout.choose_groups(zero, B)
    tokens = np.concatenate([np.asarray(r.scored["tokens"]) for r in singles])
    rows = (groups[:, None] * G + np.arange(G)).reshape(-1)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), tokens[rows])
    chosen_zero = np.concatenate(zero)[groups]
    masked = np.asarray(batch["mask"]).reshape(B, G, -1).sum(axis=(1, 2)) == 0
    np.testing.assert_array_equal(masked, chosen_zero)
    assert float(metrics["signal_groups_frac"]) == pytest.approx(1 - chosen_zero.mean())


def test_config_errors(world_runs):
    c = config_for(world_runs, "grpo-bad", grpo__prompt_kinds="instrction")
    with pytest.raises(ValueError, match=r"grpo.prompt_kinds='instrction': no train prompt of "
                                         r"kind 'instrction' \(did you mean 'instruction'\?\); "
                                         r"kinds in data.source='world': benign, fact, harmful"):
        grpo.setup(c)
    c = config_for(world_runs, "grpo-bad")
    for key, value, message in [("advantage_estimator", "ppo", "valid: dr_grpo, grpo, rloo"),
                                ("loss_type", "mean", "valid: constant, sequence_mean"),
                                ("num_generations", 1, "must be ≥ 2"),
                                ("minibatch_size", 7, "must divide"),
                                ("importance_sampling_level", "seq", "valid: token, sequence")]:
        bad = c.copy_and_resolve_references()
        bad.grpo[key] = value
        with pytest.raises(ValueError, match=message):
            grpo.check_config(bad)


@pytest.mark.parametrize("level,loss_type", [("token", "token_mean"),
                                             ("sequence", "sequence_mean")])
def test_detached_old_logps_give_the_same_loss_and_gradients(tmp_path, full_fp32_matmuls,
                                                             level, loss_type):
    """μ = 1 in one minibatch: the update takes log π_old as its own log-probs, detached,
    instead of the rollout scorer's policy pass — ratio exactly 1, clip fractions 0, and the
    same loss and gradients (on a tiny random model, no world needed)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from easyalign import losses, sampler
    from easyalign.algorithms import rollout
    from easyalign.model import create_model, preset

    c = config_for(tmp_path, "unused")  # the tiny preset: μ = 2 in minibatches of 64
    assert not grpo.detached_old_logps(c)
    c.grpo.num_iterations, c.grpo.minibatch_size = 1, 0
    assert grpo.detached_old_logps(c)
    c.grpo.beta, c.grpo.loss_type, c.grpo.importance_sampling_level = 0.04, loss_type, level
    settings = losses.GRPOSettings.from_config(c.grpo)

    graphdef, params = nnx.split(create_model(preset("tiny", dtype="float32"), seed=0))
    graphs = rollout.Graphs(policy=graphdef, value=None, reference=None, reward=None)
    rng = np.random.default_rng(0)
    rows, width = 6, 12
    tokens = jnp.asarray(rng.integers(3, 256, (rows, width)), jnp.int32)
    starts, lengths = rng.integers(2, 6, rows), rng.integers(1, 6, rows)
    mask = np.zeros((rows, width), np.float32)
    for i in range(rows):
        mask[i, starts[i]:starts[i] + lengths[i]] = 1.0
    # The rollout scorer's policy pass (`make_score_fn` with old_logps=True).
    old_logps, _ = jax.jit(lambda p, t: rollout.policy_logps(nnx.merge(graphdef, p), t))(
        params, tokens)
    batch = {"tokens": tokens, "mask": jnp.asarray(mask),
             "advantages": jnp.asarray(rng.normal(size=rows), jnp.float32),
             "ref_logps": old_logps + jnp.asarray(rng.normal(0, 0.1, (rows, width)), jnp.float32)}
    grad_fn = jax.jit(jax.value_and_grad(grpo.make_loss(graphs, settings), has_aux=True))
    (scored, scored_m), scored_g = grad_fn(params, batch | {"old_logps": old_logps}, None, None)
    (detached, detached_m), detached_g = grad_fn(params, batch | {"sampler_logps": old_logps},
                                                 None, None)
    np.testing.assert_allclose(float(detached), float(scored), rtol=1e-6, atol=1e-7)
    for a, b in zip(host(detached_g), host(scored_g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for m in (scored_m, detached_m):
        np.testing.assert_allclose(float(m["ratio"]), 1.0, atol=1e-6)
        assert float(m["clip_frac"]) == 0.0
    assert float(detached_m["ratio"]) == 1.0
    assert float(detached_m["logprob_mismatch"]) < 1e-5
    # The scorer then runs no policy pass.
    gen = sampler.Generation(tokens=tokens[:, 4:], logprobs=jnp.zeros((rows, width - 4)),
                             lengths=jnp.full((rows,), 3), done=jnp.ones((rows,), bool))
    prompts = {"prompt_tokens": tokens[:, :4], "prompt_lengths": jnp.full((rows,), 4)}
    scored_keys = jax.eval_shape(grpo_rollout.make_score_fn(graphs, 0, 2, settings, old_logps=False),
                                 params, {}, prompts, gen, 1).keys()
    assert scored_keys == {"tokens", "mask", "sampler_logps"}


def test_response_span_scores_equal_the_full_pass(full_fp32_matmuls):
    """The LM head on the response columns only (`rollout.response_span`): log-probs and
    entropy equal the full pass's on the response, 0 elsewhere, and so do the gradients of a
    masked loss — rows with different prompt lengths, one response cut at the width."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from easyalign.algorithms import rollout
    from easyalign.model import create_model, preset

    graphdef, params = nnx.split(create_model(preset("tiny", dtype="float32"), seed=0))
    rng = np.random.default_rng(1)
    rows, width, new = 4, 14, 5
    tokens = jnp.asarray(rng.integers(3, 256, (rows, width)), jnp.int32)
    starts, lengths = np.array([1, 4, 9, 6]), np.array([3, 5, 5, 1])
    mask = np.zeros((rows, width), np.float32)
    for i in range(rows):
        mask[i, starts[i]:starts[i] + lengths[i]] = 1.0
    mask = jnp.asarray(mask)

    def run(p, span):
        logps, entropy = rollout.policy_logps(nnx.merge(graphdef, p), tokens, temperature=0.8,
                                              span=span)
        return jnp.sum((logps + 0.1 * entropy) * mask), (logps, entropy)

    full = jax.jit(jax.value_and_grad(lambda p: run(p, None), has_aux=True))(params)
    spanned = jax.jit(jax.value_and_grad(lambda p: run(p, rollout.response_span(mask, new)),
                                         has_aux=True))(params)
    (_, (full_logps, full_entropy)), full_grads = full
    (_, (logps, entropy)), grads = spanned
    inside = np.zeros((rows, width), bool)
    for i in range(rows):
        inside[i, starts[i]:starts[i] + new] = True
    for got, want in ((logps, full_logps), (entropy, full_entropy)):
        np.testing.assert_allclose(np.asarray(got)[inside], np.asarray(want)[inside], atol=1e-6)
        assert np.all(np.asarray(got)[~inside] == 0.0)
    for a, b in zip(host(grads), host(full_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)



@pytest.mark.parametrize("group", [1, 2])
def test_an_update_whose_loss_keeps_no_token_still_measures_the_sampled_ones(group):
    """Reported: with every group dropped from the loss (zero signal), the update logged entropy,
    ratio and logprob_mismatch 0. The loss (`make_loss`) reads the kept tokens; its entropy,
    mismatch, ratio and KL the sampled ones (`response_mask`), with or without the shared
    prefix: the same values as when every token is kept, and a loss of 0."""
    import jax.numpy as jnp
    from flax import nnx

    from easyalign.algorithms import rollout
    from easyalign.losses import grpo as grpo_losses
    from easyalign.model import create_model, preset

    graphdef, params = nnx.split(create_model(preset("tiny", dtype="float32"), seed=0))
    graphs = rollout.Graphs(policy=graphdef, value=None, reference=graphdef, reward=None)
    settings = grpo_losses.GRPOSettings(beta=0.1, loss_type="token_mean", max_length=4,
                                        group=group)
    rng = np.random.default_rng(0)
    tokens = np.concatenate([np.repeat(rng.integers(3, 200, (2, 3)), 2, axis=0),
                             rng.integers(3, 200, (4, 4))], axis=1).astype(np.int32)
    mask = np.zeros((4, 7), np.float32)
    mask[:, 3:] = 1.0
    batch = {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask),
             "advantages": jnp.asarray([1.0, -1.0, 0.5, -0.5]),
             "sampler_logps": jnp.asarray(rng.normal(-5, 0.1, (4, 7)), jnp.float32),
             "ref_logps": jnp.asarray(rng.normal(-5, 0.1, (4, 7)), jnp.float32)}
    loss_fn = grpo.make_loss(graphs, settings)
    _, kept = loss_fn(params, batch, None, None)
    loss, dropped = loss_fn(params, {**batch, "mask": jnp.zeros_like(batch["mask"]),
                                     "response_mask": batch["mask"]}, None, None)
    assert float(loss) == 0.0 and float(dropped["entropy"]) > 1.0
    for key in ("entropy", "logprob_mismatch", "ratio", "kl", "clip_frac"):
        np.testing.assert_allclose(float(dropped[key]), float(kept[key]), rtol=1e-6, err_msg=key)
