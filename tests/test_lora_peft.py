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
import torch
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
