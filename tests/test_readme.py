"""The README's Python snippet runs as written, on a tiny random HF model (only its placeholder
paths are replaced), and `easyalign.run` is the stage table's entry point."""

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_fixtures import make_hf_model
from tokenizer_styles import make_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python(marker: str) -> str:
    """The README's one Python snippet that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"the README has one Python snippet with {marker!r}"
    return found[0]


def test_every_readme_python_snippet_is_tested():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 4, "a new Python snippet in the README needs a test here"


def test_readme_python_snippet_runs(tmp_path):
    import transformers

    model_dir, out = tmp_path / "model", tmp_path / "out"
    make_hf_model("llama", model_dir, vocab_size=512)
    make_tokenizer("llama3", vocab_size=400).save_pretrained(model_dir)
    code = readme_python("/path/to/Llama-3.2-1B").replace("/path/to/Llama-3.2-1B", str(model_dir))
    code = code.replace('"out/"', repr(str(out)))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["logits"].shape == namespace["token_ids"].shape + (512,)
    assert np.isfinite(np.asarray(namespace["logits"], np.float32)).all()
    assert transformers.AutoModelForCausalLM.from_pretrained(out) is not None


def test_run_names_the_stages():
    import easyalign

    with pytest.raises(ValueError, match="unknown stage 'rlhf'; known: sft, reward, dpo, ppo"):
        easyalign.run("rlhf", None)


def test_readme_reward_snippet_registers_a_verifiable_reward():
    from easyalign.algorithms import grpo_rewards

    namespace: dict = {}
    try:
        exec(compile(readme_python("def has_citation("), str(README), "exec"), namespace)
        assert grpo_rewards.parse_rewards("has_citation:1.0") == {"has_citation": 1.0}
        reward = grpo_rewards.reward_function("has_citation")
        assert reward({}, "as shown in [1].") == 1.0 and reward({}, "no source") == 0.0
    finally:
        grpo_rewards.VERIFIABLE_REWARDS.pop("has_citation", None)


def test_readme_reward_config_file_registers_it_for_the_command_line(tmp_path, monkeypatch):
    """The README's config-file recipe, as written (its `my_rewards` module beside it): the
    CLI's loader reads it, and the config check accepts the name it registered — the CLI's
    only way to a reward of one's own (reported: `unknown name`, no recipe)."""
    from easyalign import config_check
    from easyalign.algorithms import grpo_rewards
    from easyalign.cli import load_config

    (tmp_path / "my_rewards.py").write_text(
        "def has_citation(record, response):\n    return float('[1]' in response)\n")
    (tmp_path / "my_grpo.py").write_text(readme_python("def get_config("))
    # Reported: the CLI did not find `my_rewards` beside the config file ("an internal error").
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    try:
        config = load_config([f"--config={tmp_path / 'my_grpo.py'}:tiny",
                              f"--config.workdir={tmp_path / 'run'}"])
        config_check.validate(config, "grpo", paths=False)
        assert config.grpo.rewards == "has_citation:1.0"
        assert grpo_rewards.reward_function("has_citation")({}, "see [1]") == 1.0
    finally:
        grpo_rewards.VERIFIABLE_REWARDS.pop("has_citation", None)


def test_a_syntax_error_in_a_config_file_is_one_line(tmp_path):
    """Reported: "SyntaxError: '(' was never closed … (an internal error: --debug shows the
    traceback)": the user's file, its line."""
    from easyalign.cli import load_config
    from easyalign.config_keys import ConfigError

    (tmp_path / "broken.py").write_text("def get_config(preset=''):\n    return (\n")
    with pytest.raises(ConfigError) as raised:
        load_config([f"--config={tmp_path / 'broken.py'}:tiny"])
    line = str(raised.value)
    assert line.startswith(f"--config={tmp_path / 'broken.py'}:tiny: ") and "line 2" in line, line
    assert "internal error" not in line


def test_readme_sampling_snippet_runs(tmp_path, built_world):
    """The sampling snippet as written, on a random world-student model saved with the world's
    tokenizer (its path replaced; 8 new tokens instead of 32 and 256): one line per question,
    then 4 samples per prompt in rows n·4 + g, each row's tokens decoded to text."""
    from transformers import AutoTokenizer

    from eval_fixtures import save_model

    tokenizer = AutoTokenizer.from_pretrained(str(built_world / "tokenizer"))
    model_dir = save_model(tmp_path / "model", tokenizer, seed=0,
                           tokenizer_dir=built_world / "tokenizer")
    code = (readme_python("sampler.generate").replace("runs/demo/sft/model", str(model_dir))
            .replace("max_new_tokens=256", "max_new_tokens=8")
            .replace("max_new_tokens=32", "max_new_tokens=8"))
    printed = []
    namespace = {"print": lambda *args: printed.append(args)}
    exec(compile(code, str(README), "exec"), namespace)
    assert [line[0] for line in printed] == namespace["questions"]
    assert all(line[1] == "→" and isinstance(line[2], str) for line in printed)
    out, ids = namespace["out"], namespace["ids"]
    # The prompts are the chat template's rendering, ending with the assistant's header.
    assert tokenizer.decode(ids[0]).endswith(
        tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}],
                                      tokenize=False, add_generation_prompt=True)[-20:])
    assert out.tokens.shape == (8, 8) and out.lengths.shape == (8,)
    assert ((out.lengths >= 1) & (out.lengths <= 8)).all()
    assert len({tuple(row) for row in np.asarray(out.tokens)[:4].tolist()}) > 1  # 4 samples
