"""Distillation: a frozen teacher (the aligned model) into a smaller student, same tokenizer.

    easyalign distill --config=configs/distill.py[:preset]

The teacher (`distill.teacher`, default `@dpo`) and the student (`model`: the `world-student`
preset from scratch by default, or `model.init="checkpoint"`) live on the same mesh; the teacher
is read-only params passed to the step as `frozen`, with no optimizer state. Two modes
(`distill.mode`; the formulas are in `distill_losses`):

* **offline** — sequence-level KD: cross-entropy on the teacher's responses from
  `teacher-data` (`distill.teacher_data`), plus `topk_weight` × the KL to the stored top-k
  teacher log-probs. No teacher forward in training.
* **on_policy** — GKD: each step, with probability λ (`distill.lmbda`), the student samples
  responses to a batch of prompts *inside the jitted train step* (the sampler's `generate`
  traced into the step), one teacher trunk pass scores the student's tokens, and the loss is
  `distill.divergence` (forward_kl, reverse_kl, jsd(β)) over the full vocabulary from chunked
  logits, or the sampled-token reverse-KL policy gradient (`sampled_reverse_kl`); otherwise
  (probability 1 − λ) the step takes a batch of teacher responses and the same divergence.

Why sampling inside the step. The loop's loader yields host batches and never sees the
parameters; the step does. Sampling there uses the parameters where they are (no copy, no
second program), so sample → score → update is one compiled function per batch kind. The
`MixedLoader` below decides per step, on the host, which kind of batch comes — deterministic in
(`train.seed`, step) — and hands out prompts or teacher data from two Grain loaders; its state
(step count and both loaders' positions) is checkpointed, and the sampling key is the train
state's RNG, so a resumed run repeats the identical trajectory.

Reward weighting (`distill.reward_model`, "" = off): every sequence's loss is weighted by
B · softmax of its standardised reward-model score over the batch, at temperature
`distill.reward_temperature` (`distill_losses.reward_weights`).

Training metrics (`logs/metrics.jsonl`): loss, divergence (the unweighted token mean of the
training term; offline: nll and topk_kl too), length (response tokens per row, stop token included),
on_policy (the fraction of sampled steps, over a logging interval), weight_max (the largest
sequence weight of the batch: 1 without reward weighting; the mean weight is 1 by
construction), plus the loop's lr, grad_norm, tokens/s.

Evaluation (every `train.eval_every` steps, both modes): the student samples responses to
held-out prompts with a fixed key, the teacher scores them, and `eval/divergence` is the
full-vocabulary divergence on those tokens (`eval/length` their mean length): the ablations'
common yardstick of how close the student is to the teacher on its own outputs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from easyalign import losses
from easyalign.algorithms import distill_losses as DL, teacher_data
from easyalign.algorithms import runsetup
from easyalign.hf import models
from easyalign.train import driver
from easyalign.data import records as data_records
from easyalign.data.chat_format import stop_token_ids
from easyalign.data import sources as data_sources
from easyalign.data.collate import TOPK_KEYS
from easyalign.sampler import method_from_config


def check_config(config) -> None:
    """Fail before any work when the `distill` block asks for something that does not exist."""
    d = config.distill
    # ValueErrors listing the valid names: the registries `make_loss` dispatches through.
    losses.get(DL.MODES, d.mode, "distill.mode")
    losses.get(DL.DIVERGENCE_TERMS, d.divergence, "distill.divergence")
    # Ranges (lmbda, beta, temperatures, topk_weight ≥ 0, …): `config_check.RANGES`.
    if d.topk_weight and d.mode != "offline":
        raise ValueError("distill.topk_weight applies to mode='offline' only: on-policy "
                         "training reads the live teacher's full distribution")
    if d.reward_model and config.data.pack:
        raise ValueError("distill.reward_model weighs whole sequences; set data.pack=False")
    if d.mode == "on_policy" and config.data.max_length <= d.max_new_tokens:
        raise ValueError(f"data.max_length ({config.data.max_length}) must exceed "
                         f"distill.max_new_tokens ({d.max_new_tokens}): it bounds prompt + "
                         "response")


def teacher_data_path(config) -> Path:
    """`@stage` → `<parent of workdir>/<stage>/teacher_data.jsonl`; other values are paths."""
    value = config.distill.teacher_data
    if value.startswith("@"):
        return Path(config.workdir).absolute().parent / value[1:] / teacher_data.OUTPUT
    return Path(value)


def load_teacher_examples(run: runsetup.Run, topk: bool) -> list[dict]:
    path = teacher_data_path(run.config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no teacher data; run `easyalign teacher-data` first "
                                "(or set distill.teacher_data)")
    examples = data_records.normalize(data_sources.load_records({"path": str(path)}), "teacher")
    tokenized = runsetup.tokenize(run, examples, "teacher")
    if topk and not all(k in ex for ex in tokenized for k in TOPK_KEYS):
        raise ValueError(f"distill.topk_weight > 0 but {path} has no teacher_topk; run "
                         "teacher-data with teacher_data.topk = k > 0")
    if not topk:  # unused arrays: keep them out of the batches
        tokenized = [{k: v for k, v in ex.items() if k not in TOPK_KEYS} for ex in tokenized]
    return tokenized


class MixedLoader:
    """Per step: a prompt batch (on-policy: the step samples) with probability λ, else a
    teacher-data batch. The draw for step s is `default_rng([seed, s]).random() < λ`, so the
    sequence of batch kinds is a function of the seed alone (λ = 0 never samples, λ = 1 always).
    """

    def __init__(self, prompts, teacher, lmbda: float, seed: int):
        self.prompts, self.teacher, self.lmbda, self.seed = prompts, teacher, lmbda, seed
        self.step = 0

    def on_policy(self, step: int) -> bool:
        if self.lmbda in (0.0, 1.0):
            return self.lmbda == 1.0
        return bool(np.random.default_rng([self.seed, step]).random() < self.lmbda)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        source = self.prompts if self.on_policy(self.step) else self.teacher
        self.step += 1
        return next(source)

    def get_state(self) -> bytes:
        state = {"step": self.step}
        for name in ("prompts", "teacher"):
            loader = getattr(self, name)
            state[name] = loader.get_state().decode() if loader is not None else None
        return json.dumps(state).encode()

    def set_state(self, state: bytes | str) -> None:
        state = json.loads(state)
        self.step = state["step"]
        for name in ("prompts", "teacher"):
            if state[name] is not None:
                getattr(self, name).set_state(state[name].encode())


@dataclasses.dataclass
class Setup:
    """Everything `train` needs (tests inspect it before and after training)."""

    run: runsetup.Run
    model: Any                    # the student
    loader: Any
    wiring: DL.Wiring             # graphdefs of the frozen models + static loss settings
    frozen: dict                  # {"teacher": params | None, "reward": params | None}
    eval_wiring: DL.Wiring        # evaluation reads the teacher in both modes ...
    eval_frozen: dict             # ... and these params: {"teacher": params}
    eval_batches: list[dict]


def _prompts(run: runsetup.Run, max_new_tokens: int, sampled: bool
             ) -> tuple[list[dict], list[dict], int]:
    """Tokenised train and held-out prompts, cut to leave room for the response, and the
    prompt-block width that fits all of them. Training prompts only when the student samples
    on them (`sampled`: on-policy steps); offline runs read only the held-out ones, for
    evaluation — no warning about prompts they never use."""
    budget = run.config.data.max_length - max_new_tokens
    train = (runsetup.tokenize(run, runsetup.load_examples(run, "prompt", "train"), "prompt",
                               budget) if sampled else [])
    held = runsetup.tokenize(run, runsetup.load_examples(run, "prompt", "eval"), "prompt", budget)
    if sampled and not train:
        raise ValueError("distill: no prompts to sample on (data.source)")
    width = max((len(ex["prompt_tokens"]) for ex in train + held), default=1)
    return train, held, width


def setup(config) -> Setup:
    check_config(config)
    d, c = config.distill, config.train
    teacher_data.teacher_tokenizer(config, d.teacher)
    run_ = runsetup.prepare(config)
    student = models.init_model(run_, head="lm")
    teacher = teacher_data.frozen_model(run_, d.teacher, key="distill.teacher")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocabulary ({teacher.config.vocab_size}) differs from the "
                         f"student's ({student.config.vocab_size}): distillation needs one "
                         "tokenizer")
    teacher_graphdef, teacher_params = nnx.split(teacher)
    reward_graphdef = reward_params = None
    if d.reward_model:
        reward_graphdef, reward_params = nnx.split(
            teacher_data.frozen_model(run_, d.reward_model, head="scalar",
                                      key="distill.reward_model"))
    on_policy = d.mode == "on_policy"
    train_prompts, held_prompts, width = _prompts(run_, d.max_new_tokens,
                                                  sampled=on_policy and d.lmbda > 0)
    wiring = DL.Wiring(
        mode=d.mode, divergence=d.divergence, beta=d.beta, temperature=d.temperature,
        sampling=method_from_config(d), max_new_tokens=d.max_new_tokens,
        stop_tokens=stop_token_ids(run_.tokenizer, student.config),
        pad_id=runsetup.pad_id(run_), packed=config.data.pack, topk_weight=d.topk_weight,
        reward_temperature=d.reward_temperature,
        # Offline training never runs the teacher: keep it out of the step.
        teacher=teacher_graphdef if on_policy else None, reward=reward_graphdef)
    teacher_loader = None
    if d.mode == "offline" or d.lmbda < 1.0:
        teacher_loader = runsetup.train_loader(
            run_, load_teacher_examples(run_, d.topk_weight > 0), "teacher")
    if on_policy:
        prompt_loader = (runsetup.train_loader(run_, train_prompts, "prompt", max_length=width)
                         if d.lmbda > 0 else None)
        loader = MixedLoader(prompt_loader, teacher_loader, d.lmbda, c.seed)
    else:
        loader = teacher_loader
    held_prompts = held_prompts[:c.eval_batches * c.batch_size] if c.eval_batches else held_prompts
    eval_batches = list(runsetup.eval_batches(run_, held_prompts, "prompt", max_length=width))
    return Setup(run_, student, loader, wiring,
                 frozen={"teacher": teacher_params if on_policy else None,
                         "reward": reward_params},
                 eval_wiring=dataclasses.replace(wiring, teacher=teacher_graphdef),
                 eval_frozen={"teacher": teacher_params}, eval_batches=eval_batches)


def train(s: Setup):
    """Run the generic loop; returns `(params, graphdef)` and writes `workdir/model/`."""
    c = s.run.config
    eval_key = jax.random.key(c.train.seed)

    def evaluate_for(graphdef):
        return driver.make_evaluator(s.run, s.eval_batches,
                                     DL.make_eval_metrics(graphdef, s.eval_wiring, eval_key),
                                     s.eval_frozen)

    response = c.distill.max_new_tokens

    def tokens(batch):
        if "prompt_tokens" in batch:  # an upper bound: every row at its full budget
            return int(batch["prompt_tokens"].shape[0] * (batch["prompt_tokens"].shape[1]
                                                           + response))
        return int(np.count_nonzero(batch["segment_ids"]))  # teacher data: its real tokens

    return driver.train(
        s.run, model=s.model, loss_fn_for=lambda g: DL.make_loss(g, s.wiring), loader=s.loader,
        frozen=s.frozen, evaluate_for=evaluate_for if s.eval_batches else None,
        best_metric="divergence", tokens=tokens)


def run(config):
    return train(setup(config))
