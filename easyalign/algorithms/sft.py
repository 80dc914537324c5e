"""Supervised fine-tuning: next-token cross-entropy on response tokens.

    L = − Σ_{b,t} m_{b,t} log π(x_{b,t} | x_{b,<t}) / Σ_{b,t} m_{b,t}

with m the response-and-end-of-turn mask (prompt tokens are context, not targets). The step weights
micro-batches by their token counts, so gradient accumulation gives the same token mean as one
large batch. Evaluation reports the same loss on held-out examples.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import losses
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.train import driver
from easyalign.model.scoring import token_logprobs


def make_loss(graphdef, packed: bool):
    def loss_fn(params, batch, rng, frozen):
        model = nnx.merge(graphdef, params)
        # MoE hook: `router_loss` = router_aux_loss_coef · load-balancing loss (0 if dense).
        hidden, _, router_loss = model.trunk_with_router_loss(  # rng: LoRA's dropout, if any
            batch["tokens"], **runsetup.attention_inputs(batch, packed), dropout_key=rng)
        logps = token_logprobs(model, hidden, batch["tokens"])
        loss, metrics = losses.sft_loss(logps, batch["loss_mask"])
        return losses.add_router_loss(
            loss, {"nll": metrics["nll"], "loss_weight": metrics["tokens"]}, router_loss,
            model.config.num_experts)

    return loss_fn


def make_eval_metrics(graphdef, packed: bool):
    def metric_fn(params, batch, frozen):
        model = nnx.merge(graphdef, params)
        hidden, _ = model.trunk(batch["tokens"], **runsetup.attention_inputs(batch, packed))
        logps = token_logprobs(model, hidden, batch["tokens"])
        mask = batch["loss_mask"] * batch["valid"][:, None]
        return {"loss_sum": -jnp.sum(logps * mask), "loss_count": jnp.sum(mask)}

    return metric_fn


def run(config):
    run_ = runsetup.prepare(config)
    train_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "sft", "train"), "sft")
    eval_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "sft", "eval"), "sft")
    model = models.init_model(run_, head="lm")
    packed = config.data.pack
    eval_batches = list(runsetup.eval_batches(run_, eval_examples, "sft",
                                            limit=config.train.eval_batches))

    def evaluate_for(graphdef):
        return driver.make_evaluator(run_, eval_batches, make_eval_metrics(graphdef, False))

    return driver.train(
        run_, model=model, loss_fn_for=lambda g: make_loss(g, packed),
        loader=runsetup.train_loader(run_, train_examples, "sft"),
        evaluate_for=evaluate_for if eval_batches else None, best_metric="loss",
        tokens=lambda b: int(np.count_nonzero(b["segment_ids"])))
