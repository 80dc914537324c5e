"""LoRA ⇄ PEFT (issue 19): an exported adapter gives PEFT + transformers easyalign's logits, a
PEFT-made adapter imports with PEFT's logits, and the merged export is the unmerged model.

Expected logits come from `peft` and `transformers` on the same tiny random HF base
(`hf_fixtures`), never from easyalign.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import transformers

from easyalign import from_hf, to_hf
from easyalign.hf.peft import PeftAdapterError, from_peft, read_peft_config, to_peft
from easyalign.model import LoraConfig, lora
from hf_fixtures import batch, hf_logits, make_hf_model, ours

peft = pytest.importorskip("peft")


def random_b(model, seed):
    """A trained-looking adapter: B drawn by numpy (B = 0 would hide every layout error)."""
    from flax import nnx
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        if path[-1] == "lora_b":
            var.set_value(jnp.asarray(0.2 * rng.standard_normal(var.get_value().shape),
                                      jnp.float32))
    nnx.update(model, state)
    return model


@pytest.mark.parametrize("case", ["llama", "phi3"])  # phi3: fused qkv_proj / gate_up_proj
def test_adapters_round_trip_through_peft(case, tmp_path):
    hf_base = make_hf_model(case, tmp_path / "base")
    ids, mask = batch()
    valid = mask.astype(bool)
    base = from_hf(tmp_path / "base", dtype="float32")
    targets = ("q", "k", "v", "o", "up", "down")  # phi3: qkv whole, gate_up half-adapted
    model = random_b(lora.attach(base, LoraConfig(rank=4, alpha=6.0, rslora=True,
                                                  targets=targets), seed=1), seed=2)
    want = ours(model, ids, mask)

    # 1. easyalign → PEFT: peft + transformers compute easyalign's logits.
    to_peft(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["r"] == 4 and written["use_rslora"] is True
    # Both files with the mode open() gives (safetensors alone writes 0o600: the trial's F15).
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "adapter").iterdir()}
    assert modes == {stat.S_IMODE((tmp_path / "adapter" / "adapter_config.json").stat().st_mode)}
    peft_model = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
        tmp_path / "adapter").eval()
    got = hf_logits(peft_model, ids, mask)
    assert np.abs(got - hf_logits(hf_base, ids, mask))[valid].max() > 1e-2  # adapters act
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)

    # 2. The merged export is the unmerged model (transformers loads it as a plain model).
    to_hf(model, tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(hf_logits(merged, ids, mask)[valid], want[valid], atol=1e-4,
                               rtol=0)

    # 3. PEFT → easyalign: an adapter made by peft (random B) imports with peft's logits.
    made = peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
        peft.LoraConfig(r=4, lora_alpha=6.0, use_rslora=True, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "down_proj"] if case == "llama"
                        else ["qkv_proj", "down_proj"])).eval()
    made.save_pretrained(tmp_path / "made")
    imported = from_peft(from_hf(tmp_path / "base", dtype="float32"), tmp_path / "made")
    assert imported.config.lora.targets == (("q", "v", "down") if case == "llama"
                                            else ("q", "k", "v", "down"))
    np.testing.assert_allclose(ours(imported, ids, mask)[valid],
                               hf_logits(made, ids, mask)[valid], atol=1e-4, rtol=0)
    if case == "phi3":  # our own block-diagonal export of a fused module imports back
        again = from_peft(from_hf(tmp_path / "base", dtype="float32"), tmp_path / "adapter")
        np.testing.assert_allclose(ours(again, ids, mask)[valid], want[valid], atol=1e-5,
                                   rtol=0)


def test_unsupported_peft_settings_are_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
         "use_dora": True, "bias": "all"}))
    with pytest.raises(PeftAdapterError, match="unsupported PEFT setting.*use_dora=True.*"
                                               "bias='all'"):
        read_peft_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["wq"]}))
    with pytest.raises(PeftAdapterError, match="'wq' matches no projection"):
        read_peft_config(tmp_path)


# ----------------------------------------------------------------------------- the base
def _stage(root, module, model_block, base_model=None, seed=0):
    """A LoRA stage's workdir `root/<module>` as a run leaves it: the run's config.json (from
    `configs/<module>.py`, `model.path` resolved as `runsetup.prepare` does) and its final
    model/, built by the phases' own `init_model` (a LoRA source merged, fresh adapters
    attached) with a trained-looking B."""
    from types import SimpleNamespace

    from conftest import phase_config
    from easyalign import sharding
    from easyalign.algorithms.runsetup import stage_path
    from easyalign.hf import models, save_checkpoint_model

    config = phase_config(module, root / module, model__lora__rank=4, model__lora__alpha=8.0,
                          **{f"model__{k}": v for k, v in model_block.items()})
    config.model.path = stage_path(config, config.model.path)
    tokenizer = SimpleNamespace(eos_token_id=2, bos_token_id=1, pad_token_id=0)
    run_ = SimpleNamespace(config=config, tokenizer=tokenizer,
                           mesh=sharding.single_device_mesh())
    model = random_b(models.init_model(run_), seed)
    save_checkpoint_model(model, root / module / "model")
    (root / module / "config.json").write_text(config.to_json_best_effort())
    return model


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """`(root, sft model, dpo model)`: an SFT LoRA stage on an HF base (`root/base`), and a DPO
    LoRA stage started from it (`model.path=@sft`: its base is the merged SFT model)."""
    root = tmp_path_factory.mktemp("lora_runs")
    make_hf_model("llama", root / "base")
    sft = _stage(root, "sft", {"init": "hf", "path": str(root / "base")}, seed=3)
    dpo = _stage(root, "dpo", {"init": "checkpoint", "path": "@sft"}, seed=4)
    return root, sft, dpo


def convert_fails(args) -> str:
    from easyalign import tools

    with pytest.raises(SystemExit) as excinfo:
        tools.convert(args)
    message = str(excinfo.value.code)
    assert message.startswith("easyalign convert: ") and "\n" not in message, message
    return message


def peft_logits(adapter_dir):
    """PEFT's own loading of an adapter directory: the base from base_model_name_or_path."""
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).eval()
    return hf_logits(model, *batch())


def test_peft_export_of_a_stage_on_a_merged_lora_base_names_that_base(lora_runs, tmp_path,
                                                                      capsys):
    """Fault A: the DPO stage's base is the merged SFT model, which no name PEFT loads stands
    for. The export refuses in one line naming that base and the command that writes it; that
    command's output is then accepted (checked weight by weight), recorded, and PEFT loading
    the adapter by itself computes easyalign's logits. The original HF model — the wrong base
    (0.009 apart in the report) — is refused."""
    from easyalign import tools

    root, _, dpo = lora_runs
    ids, mask = batch()
    valid = mask.astype(bool)
    message = convert_fails([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'a'}",
                             "--adapter=peft"])
    assert "the merged model of the LoRA run" in message and str(root / "sft") in message
    assert f"--to_hf={root / 'dpo'} --adapter=base --out=BASE_DIR" in message
    assert "--base_model=BASE_DIR" in message and not (tmp_path / "a").exists()

    tools.convert([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'base'}", "--adapter=base"])
    assert (tmp_path / "base" / "config.json").is_file()
    capsys.readouterr()
    tools.convert([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'adapter'}", "--adapter=peft",
                   f"--base_model={tmp_path / 'base'}"])
    assert f"base_model_name_or_path: {tmp_path / 'base'})" in capsys.readouterr().out
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str(tmp_path / "base")
    np.testing.assert_allclose(peft_logits(tmp_path / "adapter")[valid],
                               ours(dpo, ids, mask)[valid], atol=1e-4, rtol=0)

    # The SFT stage's merged export is the same base (up to one float32 rounding): accepted.
    tools.convert([f"--to_hf={root / 'sft'}", f"--out={tmp_path / 'sft-merged'}"])
    tools.convert([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'adapter2'}",
                   "--adapter=peft", f"--base_model={tmp_path / 'sft-merged'}"])
    # The original model under the SFT adapters is not.
    message = convert_fails([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'b'}",
                             "--adapter=peft", f"--base_model={root / 'base'}"])
    assert f"--base_model={root / 'base'} is not the adapters' base" in message
    assert "weights differ" in message and not (tmp_path / "b").exists()


def test_peft_export_records_the_runs_own_hf_base(lora_runs, tmp_path):
    """A stage loaded from an HF directory as it is: that directory (absolute) is recorded
    without --base_model, and PEFT loading the adapter by itself gives easyalign's logits."""
    from easyalign import tools

    root, sft, _ = lora_runs
    ids, mask = batch()
    valid = mask.astype(bool)
    tools.convert([f"--to_hf={root / 'sft'}", f"--out={tmp_path / 'adapter'}", "--adapter=peft"])
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == str(root / "base")
    np.testing.assert_allclose(peft_logits(tmp_path / "adapter")[valid],
                               ours(sft, ids, mask)[valid], atol=1e-4, rtol=0)


def test_base_model_alias_checkpoint_and_hub_id(lora_runs, tmp_path, capsys):
    """Fault B: `--base_model=smollm2` (easyalign's alias of an installed GGUF file, which
    PEFT would look up as huggingface.co/smollm2) is refused, naming the hub original and the
    base export; an easyalign checkpoint too. A hub repo id is recorded, with a note saying
    what it must hold; --base_model without --adapter=peft is an error."""
    from easyalign import tools

    root, _, _ = lora_runs
    message = convert_fails([f"--to_hf={root / 'sft'}", f"--out={tmp_path / 'a'}",
                             "--adapter=peft", "--base_model=smollm2"])
    assert "--base_model=smollm2 is easyalign's alias of the GGUF file" in message
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in message and "--adapter=base" in message
    message = convert_fails([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'a'}",
                             "--adapter=peft", f"--base_model={root / 'sft'}"])
    assert "is an easyalign checkpoint, which PEFT cannot load" in message
    message = convert_fails([f"--to_hf={root / 'sft'}", f"--out={tmp_path / 'a'}",
                             "--adapter=peft", f"--base_model={tmp_path / 'missing'}"])
    assert "no such directory" in message
    assert "goes with --adapter=peft" in convert_fails(
        [f"--to_hf={root / 'sft'}", f"--out={tmp_path / 'a'}", "--base_model=org/model"])
    assert not (tmp_path / "a").exists()

    capsys.readouterr()
    tools.convert([f"--to_hf={root / 'dpo'}", f"--out={tmp_path / 'hub'}", "--adapter=peft",
                   "--base_model=someone/sft-merged"])
    out = capsys.readouterr().out
    assert "note: --base_model=someone/sft-merged is recorded unchecked" in out
    assert "the merged model of the LoRA run" in out
    written = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == "someone/sft-merged"


def test_run_base_of_a_gguf_alias_and_other_sources(tmp_path):
    """What `run_base` reads from a run's config: an installed GGUF alias is named with the
    hub repo it was quantised from (not loadable: the weights differ); scratch, a student and
    an overridden HF source are not loadable either; a checkpoint without a run is unknown."""
    from easyalign.hf.peft import run_base

    def base(block):
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "config.json").write_text(json.dumps({"model": block}))
        return run_base(tmp_path / "run" / "model")

    gguf = base({"init": "gguf", "path": "smollm2"})
    assert gguf.hf_dir is None and gguf.hub_original == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in gguf.what
    assert base({"init": "scratch", "path": ""}).hf_dir is None
    assert "student" in base({"init": "derive", "path": "teacher"}).what
    make_hf_model("llama", tmp_path / "hf")
    assert base({"init": "hf", "path": str(tmp_path / "hf")}).hf_dir == tmp_path / "hf"
    assert base({"init": "hf", "path": str(tmp_path / "hf"), "overrides": "rope_theta=5.0"}
                ).hf_dir is None
    assert run_base(tmp_path / "elsewhere" / "model") is None
    # A LoRA source saved again after the run read it (an SFT stage retrained in place): the
    # base is that model as it was, which the message says.
    (tmp_path / "sft" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "model" / "model_config.json").write_text(json.dumps({"lora": {}}))
    (tmp_path / "sft" / "model" / "saved.json").write_text(json.dumps({"saved_at": "T2"}))
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"model.path (saved at)": "T1"}))
    merged = base({"init": "checkpoint", "path": str(tmp_path / "sft" / "model")})
    assert merged.what == (f"the merged model of the LoRA run {tmp_path / 'sft'} as saved at T1 "
                           "(saved again since)") and merged.hf_dir is None
