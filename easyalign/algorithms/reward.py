"""Reward model: a scalar head on the SFT (or base) trunk, trained on preference pairs.

    r(x, y) = w · h_i(x, y)             h_i = final hidden state at the read position i
    L = − mean_b log σ(r(x_b, y_b^chosen) − r(x_b, y_b^rejected))      (Bradley–Terry)

The read position is the one HF's `*ForSequenceClassification` pools at, so that a reward
model scores the same in easyalign and in `transformers`, after export or on import:

    i = max { t : segment_t > 0  and  x_t ≠ pad_token_id }     (0 if there is none)

— the last real token that is not the model config's pad id (transformers'
`LlamaForSequenceClassification.forward`: `(arange(T) * (input_ids != pad)).argmax(-1)`). With
pad = EOS (the usual Llama set-up) a sequence ending in EOS is read one token earlier, at the last
response token; with a pad id of its own, at the end-of-turn token. With no pad id the read is at
the last real token (HF then only handles batches of one row).

Chosen and rejected sequences go through the trunk in one call (stacked along the batch).
Metrics: pairwise accuracy and margin on training batches and held-out pairs; the best
checkpoint by held-out loss is kept besides the latest ones.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import losses
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.train import driver


def read_index(tokens, segment_ids, pad_id: int | None) -> jnp.ndarray:
    """The read position of each right-padded row (module docstring), `[B]` int32.

    tokens, segment_ids: `[B, T]`; segment ids > 0 mark real tokens.
    """
    real = segment_ids > 0
    if pad_id is not None:
        real = real & (tokens != pad_id)
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
    return jnp.max(jnp.where(real, positions, 0), axis=-1)


def sequence_scores(model, tokens, segment_ids, packed_inputs: dict) -> jnp.ndarray:
    """Scalar-head output at each row's read position (module docstring), `[B]` float32."""
    return sequence_scores_and_router_loss(model, tokens, segment_ids, packed_inputs)[0]


def sequence_scores_and_router_loss(model, tokens, segment_ids, packed_inputs: dict
                                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`sequence_scores` and the forward pass's MoE router loss (0 for a dense model)."""
    hidden, _, router_loss = model.trunk_with_router_loss(tokens, **packed_inputs)
    index = read_index(tokens, segment_ids, model.config.pad_token_id)
    return jnp.take_along_axis(model.scores(hidden), index[:, None], axis=1)[:, 0], router_loss


def pair_rewards(model, batch) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Rewards of chosen and rejected sequences from one trunk call over both, and its router
    loss."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], axis=0)
    segments = jnp.concatenate([batch["chosen_segment_ids"], batch["rejected_segment_ids"]], 0)
    rewards, router_loss = sequence_scores_and_router_loss(model, tokens, segments, {})
    half = batch["chosen_tokens"].shape[0]
    return rewards[:half], rewards[half:], router_loss


def make_loss(graphdef):
    def loss_fn(params, batch, rng, frozen):
        model = nnx.merge(graphdef, params)
        chosen, rejected, router_loss = pair_rewards(model, batch)
        loss, metrics = losses.pairwise_reward_loss(chosen, rejected)
        return losses.add_router_loss(loss, metrics, router_loss, model.config.num_experts)

    return loss_fn


def make_eval_metrics(graphdef):
    def metric_fn(params, batch, frozen):
        chosen, rejected, _ = pair_rewards(nnx.merge(graphdef, params), batch)
        valid = batch["valid"].astype(jnp.float32)
        margin = chosen - rejected
        count = jnp.sum(valid)
        return {"loss_sum": -jnp.sum(jnp.log(jnp.clip(nnx.sigmoid(margin), 1e-12)) * valid),
                "loss_count": count,
                "accuracy_sum": jnp.sum((margin > 0) * valid), "accuracy_count": count,
                "margin_sum": jnp.sum(margin * valid), "margin_count": count}

    return metric_fn


def run(config):
    run_ = runsetup.prepare(config)
    train_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "preference", "train"),
                                     "preference")
    eval_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "preference", "eval"),
                                    "preference")
    model = models.init_model(run_, head="scalar")
    eval_batches = list(runsetup.eval_batches(run_, eval_examples, "preference",
                                            limit=config.train.eval_batches))

    def evaluate_for(graphdef):
        return driver.make_evaluator(run_, eval_batches, make_eval_metrics(graphdef))

    return driver.train(
        run_, model=model, loss_fn_for=make_loss,
        loader=runsetup.train_loader(run_, train_examples, "preference"),
        evaluate_for=evaluate_for if eval_batches else None, best_metric="loss",
        tokens=lambda b: int(np.count_nonzero(b["chosen_segment_ids"])
                             + np.count_nonzero(b["rejected_segment_ids"])))
