"""teacher-data phase: valid JSONL that `normalize_teacher` and `tokenize_teacher` accept, top-k
rows equal to the teacher's own distribution at each response token, dropped/kept responses,
skip when complete, rewrite when the settings change.

A tiny random teacher (vocabulary of the world's tokenizer) samples 16 of the world's prompts,
so the run compiles and samples in seconds; its responses are gibberish, which is fine: the
file format and the alignment of the top-k rows do not depend on quality.
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from transformers import AutoTokenizer

from configs import teacher_data as teacher_data_config
from easyalign.algorithms import teacher_data
from easyalign.algorithms import runsetup
from easyalign.data import records as data_records
from easyalign.data import sources as data_sources
from easyalign.data import tokenize as data_tokenize
from easyalign.hf import load_checkpoint_model, save_checkpoint_model
from easyalign.model import create_model, preset
from easyalign.sampler import method_from_config

N_PROMPTS, TOPK = 16, 3


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, built_world):
    """`(runs/p/, the world)`: a random tiny teacher at `runs/p/dpo/model` (`@dpo`)."""
    root, world = tmp_path_factory.mktemp("runs") / "p", built_world
    root.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    model = create_model(preset("tiny", vocab_size=len(tokenizer), dtype="float32",
                                eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id), seed=3)
    save_checkpoint_model(model, root / "dpo" / "model", tokenizer_dir=world / "tokenizer")
    return root, world


def tiny_config(pipeline, workdir, **fields):
    root, world = pipeline
    c = teacher_data_config.get_config()
    c.workdir = str(root / workdir)
    c.data.world.dir = str(world)
    c.teacher_data.update(dict(limit=N_PROMPTS, batch_size=8, max_new_tokens=6, topk=TOPK,
                               keep_unfinished=True) | fields)
    return c


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_valid_with_topk_aligned_to_teacher(pipeline):
    config = tiny_config(pipeline, "teacher_data")
    path = teacher_data.run(config)
    records = read_lines(path)
    summary = json.loads((path.parent / teacher_data.SUMMARY).read_text())
    assert summary["counts"]["written"] == len(records) > N_PROMPTS // 2
    prompts = [json.loads(line)["prompt"] for line in
               (pipeline[1] / "rl_prompts.jsonl").read_text().splitlines()[:N_PROMPTS]]
    assert {r["prompt"] for r in records} <= set(prompts)
    assert all(r["kind"] for r in records)  # the prompt record's fields ride along

    # The consumer's own readers accept every line, top-k included, with matching row counts.
    examples = data_records.normalize_teacher(data_sources.load_records({"path": str(path)}))
    tokenizer = AutoTokenizer.from_pretrained(str(pipeline[1] / "tokenizer"))
    policy = data_tokenize.TruncationPolicy(max_length=256, on_overflow="error")
    tokenized, _ = data_tokenize.tokenize_examples(examples, "teacher", tokenizer, policy)
    assert len(tokenized) == len(records)

    # Row t of the stored top-k is the teacher's distribution predicting token t.
    teacher = load_checkpoint_model(pipeline[0] / "dpo" / "model")
    forward = jax.jit(lambda tokens: jax.nn.log_softmax(teacher(tokens), axis=-1))
    for ex in tokenized[:6]:
        # One width for all rows (one compilation); causal attention ignores the padding after.
        padded = np.zeros((1, 64), np.int32)
        padded[0, :len(ex["tokens"])] = ex["tokens"]
        logp = np.asarray(forward(padded))[0]
        rows = np.nonzero(ex["loss_mask"])[0]
        assert len(rows) == ex["teacher_topk_ids"][rows].shape[0]
        for t in rows:
            expected = np.argsort(-logp[t - 1], kind="stable")[:TOPK]
            np.testing.assert_array_equal(ex["teacher_topk_ids"][t], expected)
            np.testing.assert_allclose(ex["teacher_topk_logprobs"][t], logp[t - 1, expected],
                                       atol=1e-5)


def test_complete_run_skipped_other_settings_rewritten(pipeline, capsys):
    path = teacher_data.run(tiny_config(pipeline, "rerun"))
    before = path.stat().st_mtime_ns
    capsys.readouterr()
    assert teacher_data.run(tiny_config(pipeline, "rerun")) == path
    assert "skipping" in capsys.readouterr().out
    assert path.stat().st_mtime_ns == before
    teacher_data.run(tiny_config(pipeline, "rerun", topk=0))
    assert path.stat().st_mtime_ns != before
    assert all("teacher_topk" not in r for r in read_lines(path))
    assert not list(path.parent.glob("*.tmp"))


def test_unfinished_and_empty_responses(pipeline):
    """Responses cut by the budget are dropped unless kept; empty ones always are."""
    tokenizer = AutoTokenizer.from_pretrained(str(pipeline[1] / "tokenizer"))
    run = runsetup.Run(config=None, mesh=None, workdir=None, tokenizer=tokenizer)
    eos = tokenizer.eos_token_id
    words = tokenizer("I don't know.", add_special_tokens=False)["input_ids"]
    prompts = [{"prompt": [{"role": "user", "content": f"q{i}"}], "kind": "fact",
                "source": f"p:{i}"} for i in range(3)]
    samples = [{"tokens": words + [eos], "finished": True},   # complete
               {"tokens": words, "finished": False},          # ran out of budget
               {"tokens": [eos], "finished": True}]           # empty
    records, counts = teacher_data.build_records(run, prompts, samples, keep_unfinished=False)
    assert records == [{"prompt": "q0", "teacher_response": "I don't know.", "kind": "fact"}]
    assert counts == {"prompts": 3, "unfinished": 1, "empty": 1, "written": 1}
    records, counts = teacher_data.build_records(run, prompts, samples, keep_unfinished=True)
    assert [r["prompt"] for r in records] == ["q0", "q1"] and counts["written"] == 2


def test_no_usable_response_says_what_would_help():
    """Reported: all 8 responses empty, and the hint said to raise max_new_tokens or keep
    unfinished ones — neither helps an empty response. The hint follows the counts, in keys."""
    empty = teacher_data.no_response_hint({"prompts": 8, "unfinished": 0, "empty": 8})
    assert "teacher_data.sampling=temperature" in empty and "max_new_tokens" not in empty
    cut = teacher_data.no_response_hint({"prompts": 8, "unfinished": 8, "empty": 0})
    assert "teacher_data.max_new_tokens" in cut and "teacher_data.keep_unfinished=True" in cut
    assert "sampling" not in cut


def test_sampling_method_and_errors():
    config = teacher_data_config.get_config("tiny").teacher_data
    config.sampling = "top_p"
    assert method_from_config(config).p == config.top_p
    config.sampling = "beam"
    with pytest.raises(ValueError, match="beam"):
        method_from_config(config)


def test_prompt_text_round_trip():
    single = [{"role": "user", "content": "Hi"}]
    assert data_records.prompt_text(single) == "Hi"
    multi = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert data_records.prompt_text(multi) == multi
    for prompt in (single, multi):
        record = data_sources.Record({"prompt": data_records.prompt_text(prompt),
                                      "teacher_response": "x"}, "t:1")
        assert data_records.normalize_teacher([record])[0]["prompt"] == prompt


def test_frozen_model_keeps_checkpoint_shape(pipeline):
    config = tiny_config(pipeline, "shape")
    config.model.overrides = "num_layers=1"  # a student's override must not reach the teacher
    teacher_data.teacher_tokenizer(config, config.teacher_data.teacher)
    run = runsetup.prepare(config)
    model = teacher_data.frozen_model(run, "@dpo")
    assert model.config.num_layers == 2
    stored = load_checkpoint_model(pipeline[0] / "dpo" / "model")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(stored))):
        np.testing.assert_array_equal(a, b)


def test_a_teacher_is_any_model_by_path_and_a_bad_one_names_its_key(pipeline, tmp_path):
    """`teacher_data.teacher` / `distill.teacher` take what every model key takes — here the
    teacher exported as an HF directory gives the same weights as its checkpoint — and an empty
    or modelless path is one line naming the key (it was `init=checkpoint` only: an alias or a
    .gguf file failed after the prompts were read, naming neither)."""
    import re

    from easyalign import to_hf
    from easyalign.config_keys import ConfigError

    stored = load_checkpoint_model(pipeline[0] / "dpo" / "model")
    to_hf(stored, tmp_path / "hf", tokenizer=AutoTokenizer.from_pretrained(
        str(pipeline[1] / "tokenizer")))
    config = tiny_config(pipeline, "any_path")
    run = runsetup.prepare(config)
    model = teacher_data.frozen_model(run, str(tmp_path / "hf"))
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(stored))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=re.escape("teacher_data.teacher is empty: set it")):
        teacher_data.frozen_model(run, "", key="teacher_data.teacher")
    with pytest.raises(ConfigError, match=re.escape(f"distill.teacher='{tmp_path}': ")):
        teacher_data.frozen_model(run, str(tmp_path), key="distill.teacher")


def test_a_batch_the_devices_do_not_divide_runs(pipeline):
    """`teacher_data.batch_size=6` on 4 devices: the top-k scoring pass rounds its batch up to
    whole rows per device (it crashed placing a `[6, T]` batch on a 4-way axis; the sampler,
    eval and generate already padded). Same prompts, same lines, top-k aligned."""
    from conftest import REPO, run_on_cpu_devices

    root, world = pipeline
    workdir = root / "td_four_devices"
    result = run_on_cpu_devices(
        4, "-m", "easyalign", "teacher-data", "--config=configs/teacher_data.py",
        f"--config.workdir={workdir}", f"--config.data.world.dir={world}",
        f"--config.teacher_data.limit={N_PROMPTS}", "--config.teacher_data.batch_size=6",
        "--config.teacher_data.max_new_tokens=6", f"--config.teacher_data.topk={TOPK}",
        "--config.teacher_data.keep_unfinished=True", timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_lines(workdir / "teacher_data.jsonl")
    assert len(records) == N_PROMPTS
    examples = data_records.normalize_teacher(data_sources.load_records(
        {"path": str(workdir / "teacher_data.jsonl")}))
    assert all(len(ex["teacher_topk"]["ids"][0]) == TOPK for ex in examples)


def test_ppo_and_grpo_frozen_model_blocks_take_the_kind_found_at_the_path(pipeline, tmp_path):
    """PPO's and GRPO's reference / reward / value keys (`ppo.model_block`): the init is the
    kind found at the path — a phase workdir (which has the run's config.json) is a checkpoint,
    not an HF directory as the old config.json test took it; an HF export is `hf`."""
    from easyalign import to_hf
    from easyalign.algorithms.ppo import model_block

    workdir = pipeline[0] / "dpo"
    (workdir / "config.json").write_text("{}")  # what a finished phase workdir has
    to_hf(load_checkpoint_model(workdir / "model"), tmp_path / "hf")
    config = tiny_config(pipeline, "blocks")
    assert model_block(config, str(workdir)).init == "checkpoint"
    assert model_block(config, "@dpo").init == "checkpoint"
    assert model_block(config, str(tmp_path / "hf")).init == "hf"
