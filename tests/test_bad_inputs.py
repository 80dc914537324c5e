"""Issue 16: every bad input is one clear line naming the key, file or path.

* one table-driven test runs the CLI on a list of bad inputs — all in ONE subprocess (one jax
  import; 4 fake CPU devices so that the batch/device rule can fail) that calls `cli.main`
  per case with fd 2 captured — and asserts: exit status ≠ 0, exactly one line on stderr naming
  the key, file or path, and nothing written to the workdir;
* the config check: warnings (lr 0, LoRA on a scratch base), did-you-mean for unknown keys and
  registry names, data columns, missing `@stage` references, a pipeline checking every stage
  before the first runs.

What a run directory guarantees when a run fails or is killed is `test_run_directory.py`'s.
"""

from __future__ import annotations

import json
import logging
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_on_cpu_devices
from easyalign import cli, config_check
from easyalign.train import optim, rundir
SFT = ["sft", "--config=configs/sft.py:tiny"]


# ----------------------------------------------------------------------------- fixtures
def hf_dir(root: Path, *, config: str = '{"model_type": "llama"}', truncate: bool = False,
           tokenizer: bool = True) -> Path:
    """A directory shaped like an HF model: config.json, model.safetensors, tokenizer.json."""
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    (root / "config.json").write_text(config)
    save_file({"w": np.zeros((64, 64), np.float32)}, str(root / "model.safetensors"))
    if truncate:
        data = (root / "model.safetensors").read_bytes()
        (root / "model.safetensors").write_bytes(data[: len(data) // 2])
    if tokenizer:
        (root / "tokenizer.json").write_text("{}")
    return root


def cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv after `easyalign`, what the one line must name)."""
    bad_data = tmp / "train.txt"
    bad_data.write_text("{}\n")
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    unfinished = tmp / "stopped"           # a phase workdir without its final model/
    (unfinished / "logs").mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")
    return [
        ("steps 0", SFT + ["--config.train.steps=0"], "train.steps=0"),
        ("steps negative", SFT + ["--config.train.steps=-5"], "train.steps=-5"),
        ("lr negative", SFT + ["--config.optim.lr=-0.01"], "optim.lr=-0.01"),
        ("log_every 0", SFT + ["--config.train.log_every=0"], "train.log_every=0"),
        ("checkpoint_every 0", SFT + ["--config.train.checkpoint_every=0"],
         "train.checkpoint_every=0"),
        ("batch 0", SFT + ["--config.train.batch_size=0"], "train.batch_size=0"),
        ("batch 6 on 4 devices", SFT + ["--config.train.batch_size=6"], "4 data-parallel"),
        ("mesh", SFT + ["--config.mesh.tensor=3"], "mesh"),
        ("model.init typo", SFT + ["--config.model.init=hff"], "model.init='hff'"),
        ("optimizer typo", SFT + ["--config.optim.name=adam"], "optim.name='adam'"),
        ("loss typo", ["dpo", "--config=configs/dpo.py:tiny", "--config.dpo.loss_type=sigmod"],
         "'sigmod'"),
        ("stray positional", SFT + ["stray"], "'stray'"),
        ("config of another phase", ["dpo", "--config=configs/sft.py:tiny"], "configs/dpo.py"),
        ("HF key learning_rate", SFT + ["--config.learning_rate=1e-4"], "optim.lr"),
        ("HF key per_device_train_batch_size",
         SFT + ["--config.per_device_train_batch_size=4"], "train.batch_size"),
        ("HF key num_train_epochs", SFT + ["--config.num_train_epochs=3"], "train.steps"),
        ("preset typo", ["sft", "--config=configs/sft.py:tinyy"],
         "unknown preset 'tinyy' (tiny | real); did you mean 'tiny'?"),
        ("missing config file", ["sft", "--config=configs/nope.py"], "configs/nope.py"),
        ("model alias typo", SFT + ["--config.model.init=gguf", "--config.model.path=smolm2"],
         "did you mean 'smollm2'?"),
        ("missing model path", SFT + ["--config.model.init=hf",
                                      f"--config.model.path={tmp / 'nowhere'}"], "nowhere"),
        ("@sft never ran", ["dpo", "--config=configs/dpo.py:tiny"], "@sft"),
        ("malformed config.json", SFT + ["--config.model.init=hf", "--config.model.path="
                                         + str(hf_dir(tmp / "hf_json", config='{"a": '))],
         "config.json"),
        ("truncated safetensors", SFT + ["--config.model.init=hf", "--config.model.path="
                                         + str(hf_dir(tmp / "hf_cut", truncate=True))],
         "model.safetensors"),
        ("HF dir without tokenizer", SFT + ["--config.model.init=hf", "--config.model.path="
                                            + str(hf_dir(tmp / "hf_tok", tokenizer=False))],
         "tokenizer"),
        ("read-only workdir", SFT + ["--config.workdir=/proc/easyalign-test/run"], "/proc"),
        ("unknown data suffix", SFT + [f"--config.data.source={bad_data}"], "data.format"),
        ("missing data file", SFT + [f"--config.data.source={tmp / 'none.jsonl'}"],
         "none.jsonl"),
        ("workdir locked", SFT, "pid 1 "),
        ("convert: missing checkpoint", ["convert", f"--to_hf={tmp / 'none'}",
                                         f"--out={tmp / 'out'}"],
         "none: no such file or directory"),
        ("sample: missing checkpoint", ["sample", f"--checkpoint={tmp / 'none'}", "--prompt=hi"],
         "none: no such file or directory"),
        ("convert: dtype bf16", ["convert", f"--to_hf={tmp / 'none'}", f"--out={tmp / 'out'}",
                                 "--dtype=bf16"],
         "--dtype='bf16': not one of float32 | bfloat16 | float16; did you mean 'bfloat16'?"),
        ("overrides without --config", ["sft", "--config.train.steps=3"],
         "missing --config=FILE[:preset]"),
        # Reported: a missing variant surfaced after the prompts were loaded, naming no key.
        ("eval: missing variant path", ["eval", "--config=configs/eval.py",
                                        f"--config.eval.variants=('x={tmp / 'nope'}/model',)"],
         f"eval.variants[x]={tmp / 'nope'}/model: no such file or directory"),
        # Reported: a stopped run's workdir as a variant read "no *.safetensors weights".
        ("eval: unfinished run as variant", ["eval", "--config=configs/eval.py",
                                             f"--config.eval.variants=('g={unfinished}',)"],
         f"eval.variants[g]={unfinished}: looks like a phase workdir whose final model/ is "
         "missing (did the run finish?)"),
        # Reported: "IndexError: list index out of range (an internal error …)".
        ("coordinator without a port", SFT + ["--coordinator=127.0.0.1", "--num_processes=2",
                                              "--process_id=0"],
         "--coordinator: '127.0.0.1' is not HOST:PORT (e.g. 10.0.0.1:1234)"),
        # Reported: reported as a missing --config, the misspelt flag unnamed.
        ("--config misspelt", ["sft", "--confg=configs/sft.py:tiny"],
         "unknown flag --confg (--confg=configs/sft.py:tiny): did you mean --config?"),
        # Reported: "holds out all 0 records …; lower it" (no fraction helps), or with no
        # held-out split "no examples", naming no file.
        ("empty data file", SFT + [f"--config.data.source={empty}"],
         f"{empty}: no records (data.source names it)"),
        ("empty data file, no eval split", SFT + [f"--config.data.source={empty}",
                                                  "--config.data.eval_source="],
         f"{empty}: no records (data.source names it)"),
    ]


RUNNER = textwrap.dedent("""
    import json, os, sys, tempfile
    from easyalign import cli

    results = []
    for argv, workdir in json.loads(sys.argv[1]):
        err = tempfile.TemporaryFile(mode="w+")
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        code = 0
        try:
            tool = argv[0] in ("convert", "sample")
            cli.main(["easyalign", *argv, f"--config.workdir={workdir}"]
                     if not tool and not any(a.startswith("--config.workdir") for a in argv)
                     else ["easyalign", *argv])
        except SystemExit as e:  # what the interpreter does with sys.exit(message)
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        sys.stderr.flush()
        os.dup2(saved, 2)
        err.seek(0)
        results.append({"code": code, "stderr": err.read()})
    print(json.dumps(results))
""")


def test_each_bad_input_is_one_line_naming_it_and_writes_nothing(tmp_path):
    table = cases(tmp_path)
    runs = []
    for i, (name, argv, _) in enumerate(table):
        workdir = tmp_path / f"case{i}" / "runs" / "x" / "sft"
        if name == "workdir locked":  # a live run (pid 1, this host) holds the workdir
            import socket

            workdir.mkdir(parents=True)
            (workdir / rundir.LOCK_FILE).write_text(json.dumps(
                {"pid": 1, "host": socket.gethostname(), "started": "then"}))
        runs.append((argv, str(workdir)))
    out = run_on_cpu_devices(4, "-c", RUNNER, json.dumps(runs), timeout=300, cwd=REPO,
                             PYTHONPATH=str(REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    problems = []
    for i, ((name, _, named), result) in enumerate(zip(table, results)):
        lines = result["stderr"].strip().splitlines()
        workdir = tmp_path / f"case{i}" / "runs" / "x" / "sft"
        written = sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []
        if name == "workdir locked":
            written = [w for w in written if w != rundir.LOCK_FILE]
        if result["code"] == 0 or len(lines) != 1 or named not in lines[0] or written:
            problems.append(f"{name}: code {result['code']}, written {written}, stderr "
                            f"{result['stderr'][-600:]!r}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- config check
def test_lr_zero_is_a_warning_and_keys_get_a_did_you_mean():
    from configs import sft

    config = sft.get_config("tiny")
    config.optim.lr = 0.0
    assert any("optim.lr=0" in w for w in config_check.validate(config, "sft", paths=False))
    known = config_check.flat_keys(config)
    assert "optim.lr" in config_check.suggest_key("learning_rate", known)
    assert "train.grad_accum" in config_check.suggest_key("gradient_accumulation_steps", known)
    assert "train.steps" in config_check.suggest_key("train.stepz", known)


def test_lora_on_a_scratch_base_is_one_warning_line():
    """Adapters over a random frozen base: `runsetup.prepare` prints validate's warnings as
    `[config] warning: ...`; a loaded base or a scratch model without adapters has none."""
    def lora_warnings(*flags: str) -> list[str]:
        config = cli.load_config(list(flags))
        return [w for w in config_check.validate(config, paths=False) if "lora" in w]

    assert lora_warnings("--config=configs/sft.py:tiny", "--config.model.lora.rank=8") == [
        "model.lora.rank=8 with model.init=scratch: the adapters train on a randomly "
        "initialised, frozen base; load a trained base with model.init=hf|checkpoint|gguf and "
        "model.path, or set model.lora.rank=0 to train the whole model"]
    assert lora_warnings("--config=configs/sft.py:tiny") == []
    assert lora_warnings("--config=configs/dpo.py:tiny", "--config.model.lora.rank=8") == []
    assert lora_warnings("--config=configs/sft.py:tiny", "--config.model.lora.rank=8",
                         "--config.model.init=checkpoint", "--config.model.path=@sft") == []


def test_adapter_settings_are_checked_before_anything_loads(tmp_path):
    """The trial's `model.lora.rank=-4` failed only after the data had loaded: the config
    check names it up front, in the flag's form."""
    for flag, message in (("rank=-4", "model.lora.rank=-4: must be ≥ 0 (0 = no adapters)"),
                          ("dropout=1.5", "model.lora.dropout=1.5: must be in [0, 1)"),
                          ("alpha=-1.0", "model.lora.alpha=-1.0: must be ≥ 0")):
        config = cli.load_config(["--config=configs/dpo.py:tiny", f"--config.workdir={tmp_path}/dpo",
                                  f"--config.model.lora.{flag}"])
        with pytest.raises(config_check.ConfigError, match=re.escape(message)):
            config_check.validate(config, paths=False)


def test_a_model_path_its_init_does_not_read_is_an_error(tmp_path):
    """`model.path=smollm2` with the preset's `model.init=scratch` would train a random model:
    one line saying which `model.init` loads the path; `init=hf` on a GGUF names `gguf`."""
    def check(*flags: str, paths: bool = False):
        config = cli.load_config(["--config=configs/sft.py:tiny",
                                  f"--config.workdir={tmp_path}/sft", *flags])
        config_check.validate(config, paths=paths)

    with pytest.raises(config_check.ConfigError,
                       match=r"^model.path='smollm2' is not read with model.init=scratch \(a new "
                             r"model from model.preset\): set model.init=gguf to start from it"):
        check("--config.model.path=smollm2")
    with pytest.raises(config_check.ConfigError,
                       match=r"^model.path='smollm2' is a GGUF model .*, not model.init=hf: set "
                             r"model.init=gguf to load it$"):
        check("--config.model.init=hf", "--config.model.path=smollm2", paths=True)
    check("--config.model.path=@sft")  # a stage reference a phase's preset sets may stay
    # Phases whose models are their own keys: the key to set instead.
    for config, key, value in (("teacher_data.py:tiny", "teacher_data.teacher", "smollm2"),
                               ("eval.py", "eval.variants", "('NAME=smollm2',)")):
        with pytest.raises(config_check.ConfigError, match=re.escape(
                f"model.path='smollm2' is not read by {config.split('.')[0]}, whose models are "
                f"{key}: set --config.{key}={value}")):
            config_check.validate(cli.load_config([f"--config=configs/{config}",
                                                   "--config.model.path=smollm2"]), paths=False)


def test_overrides_may_come_before_the_config_file(tmp_path):
    """The trial: `--config.workdir=... --config=...` stopped with absl's "Found
    --config.workdir=... in argv before a value for --config was specified"; the order of the
    file and its overrides does not matter (the overrides keep theirs)."""
    config = cli.load_config([f"--config.workdir={tmp_path}", "--config.train.steps=3",
                              "--config", "configs/sft.py:tiny", "--config.train.steps=5"])
    assert (config.workdir, config.train.steps, config.phase) == (str(tmp_path), 5, "sft")


def test_help_lists_the_commands_flags_and_config_keys_with_comments(capsys):
    cli.main(["easyalign", "dpo", "--help"])
    text = capsys.readouterr().out
    assert "--config=FILE[:preset]" in text and "--debug" in text
    assert "dpo.beta = 0.1" in text and "β: strength of the implicit KL" in text
    assert "optim.name = 'adamw'    # adamw | adafactor | sgd | lion" in text
    cli.main(["easyalign", "convert", "--help"])
    assert "--to_hf" in capsys.readouterr().out
    cli.main(["easyalign", "sft", "--help"])  # a run names its config: there is no default
    text = capsys.readouterr().out
    assert "default" not in text.split("config keys")[0] and "(required)" in text


def test_the_boundary_names_a_full_disk_and_a_divergence_in_one_line():
    from easyalign.train.loop import NonFiniteLossError

    try:
        try:
            raise OSError(28, "No space left on device", "/runs/x/checkpoints/4/state")
        except OSError as inner:
            raise RuntimeError("orbax: commit failed\n  40 more lines") from inner
    except RuntimeError as e:
        line = cli.describe(e)
    assert "no space left" in line and "/runs/x/checkpoints/4" in line and "\n" not in line
    line = cli.describe(NonFiniteLossError("non-finite loss or gradient norm at step 3;\n x"))
    assert line.startswith("non-finite") and "\n" not in line


def test_running_out_of_memory_is_one_line_saying_what_to_change():
    """XLA's RESOURCE_EXHAUSTED (raised by jax as JaxRuntimeError, wrapped or not) is the
    user's config, not an internal error: the size in GiB and the keys that lower the peak."""
    from jax.errors import JaxRuntimeError

    error = JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 56858647624 bytes.")
    line = cli.describe(error, "grpo")
    assert line.startswith("out of device memory allocating 52.95 GiB"), line
    for key in ("train.batch_size", "data.max_length", "train.grad_accum", "model.remat",
                "easyalign doctor --config=configs/doctor.py:grpo"):
        assert key in line, line
    try:
        try:
            raise error
        except JaxRuntimeError as inner:
            raise RuntimeError("while compiling the step") from inner
    except RuntimeError as e:
        assert "52.95 GiB" in cli.describe(e, "pipeline") and "doctor.py:PHASE" in \
            cli.describe(e, "pipeline")
    assert "internal error" not in line and "\n" not in line
    assert "internal error" in cli.describe(RuntimeError("a bug"))


def test_orbax_tracked_metric_warning_is_silenced(tmp_path, caplog):
    from absl import logging as absl_logging

    from easyalign.train.checkpoint import Checkpointer

    Checkpointer(tmp_path / "ckpt", best_metric="loss", async_save=False).close()
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Requested `tracked_metric`; did not provide metrics.")
        absl_logging.warning("something else")
    assert "tracked_metric" not in caplog.text and "something else" in caplog.text


# ----------------------------------------------------------------------------- names, columns
def test_unknown_names_get_the_closest_known_ones(tmp_path):
    from configs import sft
    from easyalign import stages
    from easyalign.config_keys import ConfigError, did_you_mean
    from easyalign.hf.gguf import GGUFError, installed_gguf, resolve_gguf

    assert did_you_mean("smolm2", ["smollm2"]) == "did you mean 'smollm2'?"
    assert did_you_mean("zzz", ["smollm2"]) == ""
    # A model alias typo, wherever the alias is resolved.
    with pytest.raises(GGUFError, match=re.escape(
            "smolm2: no such GGUF file (nor an installed model: did you mean 'smollm2'?)")):
        resolve_gguf("smolm2")
    with pytest.raises(GGUFError, match=re.escape(
            "unknown installed model 'smolm2'; did you mean 'smollm2'?")):
        installed_gguf("smolm2")
    with pytest.raises(GGUFError, match=re.escape("(nor an installed model alias: ['smollm2'])")):
        resolve_gguf(str(tmp_path / "other.gguf"))  # a path: no alias is guessed
    config = sft.get_config("tiny")
    config.workdir = str(tmp_path / "run")
    for init, what in (("gguf", "no such GGUF file"), ("derive", "no such file or directory")):
        config.model.init, config.model.path = init, "smolm2"
        with pytest.raises(ConfigError, match=re.escape(
                f"model.path=smolm2: {what} (nor an installed model: did you mean "
                "'smollm2'?)")):
            config_check.validate(config, "sft")
    # Every registry a config value is checked against (config_check._choices).
    for key, value, line, build in (
            ("name", "adamww", "adamw | adafactor | sgd | lion; did you mean 'adamw'?",
             optim.make_optimizer),
            ("schedule", "cosin", "cosine | linear | constant; did you mean 'cosine'?",
             optim.make_schedule)):
        config = sft.get_config("tiny")
        config.optim[key] = value
        line = re.escape(f"optim.{key}={value!r}: not one of {line}")
        with pytest.raises(ConfigError, match=line):
            config_check.validate(config, "sft", paths=False)
        with pytest.raises(ConfigError, match=line):  # the same line where the registry is read
            build(config.optim, total_steps=10)
    config = sft.get_config("tiny")
    config.model.preset = "world-teachr"
    with pytest.raises(ConfigError, match=re.escape("did you mean 'world-teacher' or")):
        config_check.validate(config, "sft", paths=False)
    with pytest.raises(ValueError, match=re.escape("did you mean 'sft'?")):
        stages.stage_function("sfft")
    with pytest.raises(SystemExit, match=re.escape("unknown command 'grop'; did you mean "
                                                   "'grpo'?")):
        cli.main(["easyalign", "grop"])


def _prompt_file_run(tmp_path, column: str):
    """`configs/generate.py` on a CSV of `goal` prompts, as the Run `runsetup.load_examples`
    reads (what `easyalign generate` calls before it loads any model)."""
    from types import SimpleNamespace

    from configs import generate

    path = tmp_path / "prompts.csv"
    path.write_text("goal,target\nSteal a car,x\nBake bread,y\n")
    config = generate.get_config()
    config.data.source, config.data.columns.prompt = str(path), column
    return SimpleNamespace(config=config, is_main=True), path


def test_generate_takes_its_prompt_column_from_data_columns_prompt(tmp_path):
    from configs import generate
    from easyalign.algorithms import runsetup
    from easyalign.data.sources import DataError

    assert "column" not in generate.get_config().generate  # one key, as in every phase
    with pytest.raises(cli.ConfigError, match=re.escape("did you mean data.columns.prompt")):
        cli.load_config(["--config=configs/generate.py", "--config.generate.column=goal"])
    run, path = _prompt_file_run(tmp_path, "goal")
    assert [ex["prompt"] for ex in runsetup.load_examples(run, "prompt", "train")] == [
        [{"role": "user", "content": "Steal a car"}], [{"role": "user", "content": "Bake bread"}]]
    # Unmapped, the file has no prompt layout: the key to set and the file's columns.
    run, _ = _prompt_file_run(tmp_path, "")
    with pytest.raises(DataError) as error:
        runsetup.load_examples(run, "prompt", "train")
    assert str(error.value).startswith(f"{path}:2: field 'prompt': missing")
    assert str(error.value).endswith("map a column to it with data.columns.prompt: its columns "
                                     "are ['goal', 'target']")
    run, _ = _prompt_file_run(tmp_path, "gaol")
    with pytest.raises(DataError, match=re.escape(
            f"{path}: column 'gaol' (data.columns.prompt='gaol') is in no record of the file; "
            "the file's columns are ['goal', 'target']; did you mean 'goal'?")):
        runsetup.load_examples(run, "prompt", "train")


def test_every_missing_stage_reference_names_its_key_and_the_command(tmp_path):
    """`@stage` in any key (here GRPO's reward model, an eval variant and distillation's
    teacher data) goes through one check: the key, the missing path, the command that makes
    it with the referring config's preset (none where it had none, `[:preset]` where the
    stage's file lacks it), and the key to set instead — as `model.path='@sft'` does."""
    runs = tmp_path / "runs" / "x"
    (runs / "sft" / "model").mkdir(parents=True)
    (runs / "sft" / "model" / "model_config.json").write_text("{}")

    def error(*flags: str) -> str:
        config = cli.load_config(list(flags))
        with pytest.raises(config_check.ConfigError) as caught:
            config_check.validate(config)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    reward = runs / "reward"
    assert error("--config=configs/grpo.py:tiny", f"--config.workdir={runs / 'grpo'}",
                 "--config.grpo.rewards=world:1.0,reward_model:0.5") == (
        f"grpo.reward_model='@reward': {reward / 'model'} does not exist; run the reward stage "
        f"first (easyalign reward --config=configs/reward.py:tiny "
        f"--config.workdir={reward}) or set grpo.reward_model=PATH")
    assert error("--config=configs/eval.py", f"--config.workdir={runs / 'eval'}",
                 "--config.eval.variants=('sft=@sft', 'dpo=@dpo')") == (
        f"eval.variants[dpo]='@dpo': {runs / 'dpo' / 'model'} does not exist; run the dpo stage "
        f"first (easyalign dpo --config=configs/dpo.py "
        f"--config.workdir={runs / 'dpo'}) or give eval.variants 'dpo=PATH'")
    # A KL reference (the trial: LoRA on the installed model, `grpo.reference` left '@sft'):
    # with LoRA the policy's own source is its base with the adapters off; GRPO needs none
    # at β = 0.
    sft_dir = tmp_path / "runs" / "solo" / "sft"
    assert error("--config=configs/grpo.py:tiny", f"--config.workdir={sft_dir.parent / 'grpo'}",
                 f"--config.model.path={runs / 'sft' / 'model'}", "--config.grpo.beta=0.04",
                 "--config.model.lora.rank=8") == (
        f"grpo.reference='@sft': {sft_dir / 'model'} does not exist; run the sft stage first "
        f"(easyalign sft --config=configs/sft.py:tiny --config.workdir={sft_dir}) or set "
        f"grpo.reference=PATH, grpo.reference={runs / 'sft' / 'model'} (with LoRA: the base "
        "with its adapters off, no copy) or grpo.beta=0 (no KL term, no reference)")
    (runs / "teacher_data").mkdir()
    assert error("--config=configs/distill.py:tiny", f"--config.workdir={runs / 'distill'}",
                 "--config.distill.teacher=@sft", "--config.distill.lmbda=0.5").startswith(
        f"distill.teacher_data='@teacher_data': {runs / 'teacher_data' / 'teacher_data.jsonl'} "
        "does not exist; run the teacher_data stage first (easyalign teacher-data "
        "--config=configs/teacher_data.py:tiny ")
    assert ("(easyalign teacher-data --config=configs/teacher_data.py[:preset] --config.workdir="
            in error("--config=configs/distill.py:tiny_offline",  # teacher_data.py lacks it
                     f"--config.workdir={runs / 'distill'}", "--config.distill.teacher=@sft"))
    # A stage name that is no stage and no sibling directory: the closest one.
    assert "run the pipeline stage 'rewrd' first (did you mean 'reward'?)" in error(
        "--config=configs/ppo.py:tiny", f"--config.workdir={runs / 'ppo'}",
        "--config.ppo.reward_model=@rewrd")


@pytest.mark.parametrize("preset", ["tiny", "real"])
def test_a_pipeline_checks_every_stage_before_the_first_runs(tmp_path, monkeypatch, preset):
    """A bad path given to one stage through `pipeline.overrides` fails before any stage runs,
    naming the stage (it failed minutes in, once the stages before had trained); references to
    the pipeline's own earlier stages count as present, so the unchanged presets pass."""
    from configs import pipeline as pipeline_config
    from easyalign import pipeline

    if preset == "real" and not (REPO.parent / "shared" / "data" / "alpaca").is_dir():
        pytest.skip("the real preset reads ../shared/data, absent here")
    ran = []
    monkeypatch.setattr(pipeline.stage_table, "stage_function",
                        lambda command: lambda config: ran.append(command))
    monkeypatch.setattr(pipeline, "save_base", lambda config: ran.append("base"))

    def run(*overrides):
        config = pipeline_config.get_config(preset)
        config.workdir = str(tmp_path / preset / "runs")
        config.pipeline.overrides = (*config.pipeline.overrides, *overrides)
        return pipeline.run_stages(config)

    for override, message in [
            ("dpo:data.source=/nope/pairs.jsonl",
             "pipeline stage dpo: data.source=/nope/pairs.jsonl: no such file"),
            ("dpo:model.path=@sftt", "pipeline stage dpo: model.path='@sftt': ")]:
        with pytest.raises(config_check.ConfigError, match=re.escape(message)):
            run(override)
        assert ran == [] and not (tmp_path / preset / "runs").exists()
    stages = run()
    assert ran == [command for _, command, _ in stages]
