"""`easyalign convert`, `easyalign sample` and `easyalign generate`, on tiny models in-process.

The model is a random `world-student` with the built-in world's tokenizer (its chat template
is what `sample` and `generate` render prompts with); the reference for every output is the
`Sampler` called directly, so the tools are checked for plumbing, not model quality.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from easyalign import tools
from easyalign.cli import load_config
from easyalign.hf.autoload import load_model
from easyalign.sampler import Greedy, Sampler
from eval_fixtures import save_model
from hf_fixtures import assert_same_tensors, make_hf_model, safetensors_dir

PROMPTS = ["What is 2 + 3?", "Write the word tiger.", "Tell me Sumar's job.",
           "Reverse the word cat.", "Sort: pear apple fig"]


pytestmark = pytest.mark.usefixtures("full_fp32_matmuls")


@pytest.fixture(scope="module")
def world_model(tmp_path_factory, built_world):
    """`(root, world_dir, checkpoint_dir)`: a phase workdir layout `root/stage/model`."""
    root, world = tmp_path_factory.mktemp("tools"), built_world
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    checkpoint = save_model(root / "stage" / "model", tokenizer, seed=0,
                            tokenizer_dir=world / "tokenizer")
    return root, world, checkpoint


def expected_samples(checkpoint: Path, prompts, max_new_tokens: int) -> list[dict]:
    model = load_model(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint / "tokenizer"))
    return Sampler.from_model(model, tokenizer, batch_size=len(prompts)).sample_texts(
        prompts, max_new_tokens=max_new_tokens, method=Greedy())


def exit_message(excinfo) -> str:
    return str(excinfo.value.code)


# ----------------------------------------------------------------------------- convert
def test_convert_round_trip_is_bit_identical(tmp_path):
    make_hf_model("llama", tmp_path / "hf")
    tools.convert([f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}"])
    assert (tmp_path / "ckpt" / "model_config.json").is_file()
    # A phase workdir (final model in model/) is accepted as the source of an export.
    (tmp_path / "stage").mkdir()
    (tmp_path / "ckpt").rename(tmp_path / "stage" / "model")
    tools.convert([f"--to_hf={tmp_path / 'stage'}", f"--out={tmp_path / 'back'}"])
    assert_same_tensors(tmp_path / "hf", tmp_path / "back")

    tools.convert([f"--to_hf={tmp_path / 'stage'}", f"--out={tmp_path / 'bf16'}",
                   "--dtype=bfloat16", "--max_shard_size=100KB"])
    assert len(list((tmp_path / "bf16").glob("*.safetensors"))) > 1  # sharded, with an index
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    tensors = safetensors_dir(tmp_path / "bf16")
    assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one direction"),
    (["--from_hf=a", "--to_hf=b", "--out=c"], "give exactly one direction"),
    (["--from_hf=a"], "missing --out"),
    (["--to_hf=/nonexistent", "--out=/tmp/x"], "/nonexistent: no such file or directory"),
    (["--to_hf=/tmp", "--out=/tmp/x"], "not an easyalign model checkpoint"),
    (["--to_hf=a", "--out=b", "--dtype=bf16"],
     "--dtype='bf16': not one of float32 | bfloat16 | float16; did you mean 'bfloat16'?"),
    (["--from_hf=a", "--out=b", "--dtype=fp16"], "did you mean 'float16'?"),
    (["--from_hf=/nonexistent", "--out=/tmp/x"], "no config.json"),
    (["--to_hf=a", "--out=b", "stray"], "unexpected argument"),
    (["--frm_hf=a"], "Unknown command line flag 'frm_hf'"),
])
def test_convert_errors_name_the_problem(args, message):
    with pytest.raises(SystemExit) as excinfo:
        tools.convert(args)
    assert exit_message(excinfo).startswith("easyalign convert: ")
    assert message in exit_message(excinfo)


def test_convert_refuses_a_non_empty_output(tmp_path, world_model):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as excinfo:
        tools.convert([f"--to_hf={world_model[2]}", f"--out={tmp_path / 'out'}"])
    assert "not empty" in exit_message(excinfo)


def test_a_phase_workdir_without_its_model_is_explained(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(tools.ModelDirError, match="model/ is missing"):
        tools.resolve_model_dir(tmp_path)


def _save_steps(workdir: Path, checkpoint: Path, world: Path) -> None:
    """`workdir` as a run that saved steps 3 (a plain train state) and 4 (PPO's: params of
    policy and value), but no final model yet, with the run's recorded config."""
    import optax
    from flax import nnx

    from easyalign.sharding import single_device_mesh
    from easyalign.train import checkpoint as ckpt, state as train_state

    config = load_config(["--config=configs/sft.py:tiny", f"--config.workdir={workdir}",
                          f"--config.data.tokenizer={world / 'tokenizer'}"])
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort())
    model = load_model(checkpoint)
    params = nnx.state(model, nnx.Param)
    saver = ckpt.Checkpointer(workdir / "checkpoints", keep=5, async_save=False)
    for step, tree in ((3, params), (4, {"policy": params, "value": params})):
        state = train_state.create_train_state(tree, optax.adam(1e-3), 0, single_device_mesh())
        saver.save(step, state, {}, model.config.to_dict(), force=True)
    saver.close()


def test_an_intermediate_checkpoint_is_exported_and_sampled(world_model, tmp_path, capsys):
    """`--to_hf` / `--checkpoint` = `<workdir>/checkpoints/<step>`: the model of that step with
    the run's tokenizer, the same as the model it was saved from; elsewhere a step is one line
    saying what to pass, and a workdir without its final model names its latest step."""
    _, world, checkpoint = world_model
    workdir = tmp_path / "runs" / "sft"
    _save_steps(workdir, checkpoint, world)
    tools.convert([f"--to_hf={checkpoint}", f"--out={tmp_path / 'final'}"])
    for step in (3, 4):
        out = tmp_path / f"step{step}"
        tools.convert([f"--to_hf={workdir / 'checkpoints' / str(step)}", f"--out={out}"])
        assert_same_tensors(tmp_path / "final", out)
        assert (out / "tokenizer.json").is_file()
    capsys.readouterr()
    args = [f"--prompt={PROMPTS[0]}", "--max_new_tokens=8", "--json"]
    tools.sample([f"--checkpoint={workdir / 'checkpoints' / '3'}", *args])
    tools.sample([f"--checkpoint={checkpoint}", *args])
    from_step, from_model = capsys.readouterr().out.strip().splitlines()
    assert from_step == from_model
    with pytest.raises(tools.ModelDirError, match="intermediate checkpoint .step 3.*--to_hf="):
        tools.resolve_model_dir(workdir / "checkpoints" / "3")
    with pytest.raises(tools.ModelDirError, match=r"latest checkpoint .*checkpoints/4"):
        tools.resolve_model_dir(workdir)
    with pytest.raises(tools.ModelDirError, match=r"or one step .*checkpoints/4 is the latest"):
        tools.resolve_model_dir(workdir / "checkpoints")
    # A run's model.path naming a step: the config check says what to pass instead.
    from easyalign.config_keys import ConfigError
    from easyalign.config_paths import check_model_source

    step = workdir / "checkpoints" / "3"
    with pytest.raises(ConfigError, match=re.escape(
            f"model.path={step} is step 3's train state, not a model: give the run's workdir "
            f"({workdir}) once it finishes, or export the step with `easyalign convert "
            f"--to_hf={step} --out=DIR`")):
        check_model_source({}, "model.path", str(step), "checkpoint")


def test_a_lora_runs_step_is_its_base_and_adapters_merged(tmp_path, capsys):
    """Reported: a LoRA run's steps could not be exported or sampled (its train state holds
    the adapters alone). A step is the base loaded as the run loaded it (here from the run's
    seed: a scratch base) with the step's adapters, merged: the last step exports exactly the
    finished run's merged model, an earlier step another one, and it samples."""
    from conftest import phase_config
    from easyalign import stages

    workdir = tmp_path / "runs" / "l" / "sft"
    stages.run("sft", phase_config("sft", workdir, train__steps=2, train__checkpoint_every=1,
                                   train__plot=False, model__lora__rank=4))
    tools.convert([f"--to_hf={workdir}", f"--out={tmp_path / 'final'}"])  # merged
    for step in (1, 2):
        tools.convert([f"--to_hf={workdir / 'checkpoints' / str(step)}",
                       f"--out={tmp_path / f'step{step}'}"])
    assert_same_tensors(tmp_path / "final", tmp_path / "step2")
    with pytest.raises(AssertionError):  # step 1's adapters are not step 2's
        assert_same_tensors(tmp_path / "final", tmp_path / "step1")
    capsys.readouterr()
    tools.sample([f"--checkpoint={workdir / 'checkpoints' / '1'}", f"--prompt={PROMPTS[0]}",
                  "--max_new_tokens=4", "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["response"] is not None


# ----------------------------------------------------------------------------- sample
def test_sample_prints_the_samplers_completions(world_model, capsys):
    root, _, checkpoint = world_model
    expected = expected_samples(checkpoint, PROMPTS[:2], 12)
    args = [f"--prompt={p}" for p in PROMPTS[:2]] + ["--max_new_tokens=12"]
    # A checkpoint and the phase workdir holding it are the same model.
    tools.sample([f"--checkpoint={root / 'stage'}", "--json", *args])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["response"] for line in lines] == [e["response"] for e in expected]
    for line, e in zip(lines, expected):
        assert line["prompt"] == e["prompt"] and line["finished"] == e["finished"]
        assert line["num_tokens"] == len(e["tokens"]) - int(e["finished"])

    # Reported: a sampling flag the method does not read was taken without a word.
    tools.sample([f"--checkpoint={checkpoint}", "--temperature=0.5", *args])
    captured = capsys.readouterr()
    text = captured.out
    assert f"### prompt 1: {PROMPTS[0]}" in text and f"### prompt 2: {PROMPTS[1]}" in text
    assert expected[1]["response"] in text  # greedy: the temperature changed nothing
    assert "note: --temperature not read by --method=greedy" in captured.err


def test_sample_reads_an_hf_directory_and_seeds_random_methods(world_model, tmp_path, capsys):
    _, _, checkpoint = world_model
    tools.convert([f"--to_hf={checkpoint}", f"--out={tmp_path / 'hf'}"])  # tokenizer copied too
    capsys.readouterr()
    runs = []
    for source in (checkpoint, tmp_path / "hf"):
        tools.sample([f"--checkpoint={source}", f"--prompt={PROMPTS[2]}", "--json",
                      "--method=top_k", "--top_k=5", "--temperature=2.0", "--seed=3",
                      "--max_new_tokens=10"])
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("args, message", [
    (["--prompt=hi"], "missing --checkpoint"),
    (["--checkpoint=X"], "missing --prompt"),
    (["--checkpoint=X", "--prompt=hi", "--max_new_tokens=0"], "max_new_tokens must be ≥ 1"),
    # Reported: "TopP: p must be in (0, 1]", "temperature must be > 0 (use Greedy …)": the
    # sampler's class names, not the flags.
    (["--checkpoint=X", "--prompt=hi", "--method=top_p", "--top_p=1.5"],
     "--top_p=1.5: must be in (0, 1] for --method='top_p'"),
    (["--checkpoint=X", "--prompt=hi", "--method=top_k", "--top_k=-1"],
     "--top_k=-1: must be ≥ 1 for --method='top_k'"),
    (["--checkpoint=X", "--prompt=hi", "--method=temperature", "--temperature=0"],
     "--temperature=0.0: must be in [0.0001, 10000.0] for --method='temperature'; greedy "
     "decoding is "
     "--method='greedy'"),
    (["--checkpoint=X", "--prompt=hi", "--method=beam"], "value should be one of"),
])
def test_sample_errors_name_the_problem(args, message):
    with pytest.raises(SystemExit) as excinfo:
        tools.sample(args)
    assert exit_message(excinfo).startswith("easyalign sample: ")
    assert message in exit_message(excinfo)


# ----------------------------------------------------------------------------- generate
def _generate_config(root: Path, world: Path, *overrides: str):
    return load_config(["--config=configs/generate.py", f"--config.workdir={root}/gen",
                        f"--config.data.world.dir={world}", "--config.generate.model=@stage",
                        "--config.generate.batch_size=2", "--config.generate.max_new_tokens=12",
                        *overrides])


def test_generate_writes_one_line_per_prompt_in_order(world_model):
    from easyalign.algorithms import generate

    root, world, checkpoint = world_model
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    # 5 prompts in batches of 2: the last batch has a padding row.
    output = generate.run(_generate_config(root, world, f"--config.data.source={prompts}"))
    assert output == root / "gen" / "generations.jsonl"
    # No generate.output: the workdir holds it and the run's records, as every command's.
    assert {"config.json", "manifest.json"} <= {p.name for p in output.parent.iterdir()}
    assert not output.with_name(output.name + ".partial").exists()
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    expected = expected_samples(checkpoint, PROMPTS, 12)
    assert [line["id"] for line in lines] == list(range(len(PROMPTS)))
    for line, e in zip(lines, expected):
        assert set(line) == {"id", "prompt", "response", "finished", "num_tokens"}
        assert (line["prompt"], line["response"], line["finished"]) == (
            e["prompt"], e["response"], e["finished"])
        assert line["num_tokens"] == len(e["tokens"]) - int(e["finished"])
        assert line["finished"] or line["num_tokens"] == 12


def test_generate_reads_a_csv_column_and_samples_reproducibly(world_model, tmp_path):
    from easyalign.algorithms import generate

    root, world, _ = world_model
    with open(tmp_path / "prompts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["goal", "target"])
        writer.writerows([[p, "x"] for p in PROMPTS[:3]])
    outputs = []
    for name in ("a.jsonl", "b.jsonl"):
        outputs.append(generate.run(_generate_config(
            root, world, f"--config.data.source={tmp_path / 'prompts.csv'}",
            "--config.data.columns.prompt=goal", f"--config.generate.output={tmp_path / name}",
            "--config.generate.sampling=temperature", "--config.generate.seed=7")))
    a, b = (p.read_text().splitlines() for p in outputs)
    assert a == b and len(a) == 3
    assert [json.loads(line)["prompt"] for line in a] == PROMPTS[:3]
    # The CSV's columns ride along, the mapped one too (`goal` is not an output key).
    assert [{k: v for k, v in json.loads(line).items() if k in ("goal", "target")}
            for line in a] == [{"goal": p, "target": "x"} for p in PROMPTS[:3]]
    assert all(set(json.loads(line)) == {"goal", "target", "prompt", "response", "finished",
                                         "num_tokens"} for line in a)


def test_generate_carries_every_input_field_and_writes_only_its_output(world_model, tmp_path):
    """MT-Bench's layout, prompt read from `turns.0`: every input field reaches the output
    line (`question_id` joins it back); an input field named like an output key keeps its
    value as `input_<name>` unless it is the same value. With `generate.output` set, nothing
    is written in the workdir."""
    from easyalign.algorithms import generate

    root, world, checkpoint = world_model
    questions = [{"question_id": 81 + i, "category": "writing", "turns": [p, "Shorter."],
                  "response": f"reference {i}", "finished": "yes"}
                 for i, p in enumerate(PROMPTS[:3])]
    questions[1]["prompt"] = PROMPTS[1]      # the prompt itself: not repeated
    questions[2]["prompt"] = "another text"  # kept as input_prompt
    source = tmp_path / "question.jsonl"
    source.write_text("".join(json.dumps(q) + "\n" for q in questions))
    workdir, output = tmp_path / "runs" / "gen", tmp_path / "out" / "answers.jsonl"
    config = _generate_config(root, world, f"--config.data.source={source}",
                              "--config.data.columns.prompt=turns.0",
                              f"--config.generate.output={output}")
    config.workdir = str(workdir)
    config.generate.model = str(checkpoint)
    assert generate.run(config) == output
    assert not (tmp_path / "runs").exists()  # no workdir, no world, no records
    assert sorted(p.name for p in output.parent.iterdir()) == ["answers.jsonl"]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    expected = expected_samples(checkpoint, PROMPTS[:3], 12)
    for q, line, e in zip(questions, lines, expected):
        carried = {"question_id": q["question_id"], "category": "writing", "turns": q["turns"],
                   "input_response": q["response"], "input_finished": "yes"}
        if q.get("prompt", PROMPTS[1]) != PROMPTS[1]:
            carried["input_prompt"] = q["prompt"]
        assert line == {"prompt": q["turns"][0], **carried, "response": e["response"],
                        "finished": e["finished"],
                        "num_tokens": len(e["tokens"]) - int(e["finished"])}


def test_generate_refuses_model_keys_it_would_not_read(world_model):
    """`generate` samples `generate.model`: a `model.path` given instead is an error naming the
    key to set, not a silent fall-back to the default `@sft`."""
    from easyalign.algorithms import generate

    root, world, _ = world_model
    config = _generate_config(root, world, "--config.model.path=smollm2")
    with pytest.raises(ValueError, match=r"model.path='smollm2' is not read by generate.*"
                                         r"--config.generate.model=smollm2"):
        generate.run(config)
