"""A reward model scores the same in easyalign and in `transformers`, both ways, pad = EOS or not.

HF's `*ForSequenceClassification` pools at the last token that is not `pad_token_id`. With
pad = EOS (the usual Llama set-up and easyalign's fallback) a sequence that ends with EOS is
read one token before it; with a pad id of its own, at the EOS. easyalign's `reward.read_index`
must agree, on import of an HF reward model and after export of its own.
"""
import numpy as np
import pytest
import torch
import transformers

from easyalign.algorithms.reward import read_index
from easyalign.eval.scoring import reward_scores
from easyalign.hf import from_hf, to_hf
from easyalign.model import create_model
from easyalign.sharding import make_mesh
from hf_fixtures import SHAPE, hf_config

EOS, PAD = 2, 0
# Responses end with EOS, as reward data does; one contains an inner EOS-valued token too.
SEQUENCES = [[5, 17, 33, 9, EOS], [5, 17, 40, 41, 42, 43, 44, EOS], [7, EOS, 8, 9, 10, EOS]]


def hf_pooled(model, sequences, pad_id) -> np.ndarray:
    width = max(map(len, sequences))
    ids = np.full((len(sequences), width), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)], mask[row, :len(seq)] = seq, 1
    with torch.no_grad():
        return model(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits[:, 0] \
            .numpy()


@pytest.mark.parametrize("pad_id", [EOS, PAD], ids=["pad_is_eos", "pad_of_its_own"])
def test_imported_hf_reward_model_scores_the_same(tmp_path, pad_id):
    torch.manual_seed(0)
    config = hf_config("llama", num_labels=1, pad_token_id=pad_id, eos_token_id=EOS)
    hf_model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    hf_model.save_pretrained(tmp_path)
    model = from_hf(tmp_path, dtype="float32")
    assert model.config.pad_token_id == pad_id
    ours = reward_scores(model, SEQUENCES, batch_size=4, pad_id=pad_id)
    np.testing.assert_allclose(ours, hf_pooled(hf_model, SEQUENCES, pad_id), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad_id", [EOS, PAD], ids=["pad_is_eos", "pad_of_its_own"])
def test_exported_reward_model_scores_the_same(tmp_path, pad_id):
    from easyalign.hf import to_model_config

    config = to_model_config(hf_config("llama", num_labels=1, architectures=[
        "LlamaForSequenceClassification"]).to_dict()).replace(
        pad_token_id=pad_id, eos_token_id=EOS, dtype="float32", head="scalar")
    model = create_model(config, make_mesh(1, 1, 1), seed=3)
    to_hf(model, tmp_path)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf_model.config.pad_token_id == pad_id
    ours = reward_scores(model, SEQUENCES, batch_size=4, pad_id=pad_id)
    np.testing.assert_allclose(ours, hf_pooled(hf_model, SEQUENCES, pad_id), atol=1e-5, rtol=0)


def test_read_index_is_the_last_non_pad_token():
    tokens = np.array([[5, 6, EOS, PAD, PAD], [5, EOS, 6, EOS, PAD], [EOS, EOS, PAD, PAD, PAD]])
    segments = (np.arange(5)[None, :] < np.array([[3], [4], [2]])).astype(np.int32)
    assert read_index(tokens, segments, EOS).tolist() == [1, 2, 0]  # pad = EOS: before the EOS
    assert read_index(tokens, segments, PAD).tolist() == [2, 3, 1]  # at the EOS
    assert read_index(tokens, segments, None).tolist() == [2, 3, 1]  # the last real token
    assert SHAPE["vocab_size"] > max(map(max, SEQUENCES))
