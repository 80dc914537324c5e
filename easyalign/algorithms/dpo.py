"""Direct Preference Optimisation: the policy learns from preference pairs against a frozen
reference.

For a prompt x with chosen response y_w and rejected y_l, the policy π_θ (initialised from the
SFT model) and the frozen reference π_ref (the same SFT model, never updated):

    z = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]

    sigmoid   L = −(1−ε) log σ(β z) − ε log σ(−β z)    (Rafailov et al. 2023; ε = label_smoothing)
    ipo       L = (z − 1/(2β))²                          (Azar et al. 2023)
    hinge     L = max(0, 1 − β z)                        (SLiC)

averaged over pairs (`easyalign.losses.dpo`, registry `DPO_LOSSES`), plus, with
`dpo.sft_weight` = α > 0, an NLL anchor on the chosen responses (RPO, Pang et al. 2024; TRL's
`rpo_alpha`):

    L_total = L + α · mean_pairs[ −(1/|y_w|) Σ_t m_t log π_θ(y_w,t | x, y_w,<t) ]

DPO only constrains the *difference* of log-ratios, so both likelihoods may fall together
("likelihood displacement"); on small models that shows as garbled versions of the chosen
responses. The anchor keeps log π_θ(y_w) up. (TRL averages the NLL over all chosen tokens of
the batch; here each response's token mean is averaged over pairs, which keeps the loss a mean
over pairs — exact under gradient accumulation — and identical in training and evaluation.)

The implicit reward of a response is r(y) = β (log π_θ(y|x) − log π_ref(y|x)); the metrics
report the chosen and rejected rewards, their margin, the reward accuracy P[r(y_w) > r(y_l)]
(held out: the preference accuracy), the policy–reference log-ratio and the chosen NLL. Held
out, `logps/accuracy` = P[log π_θ(y_w) > log π_θ(y_l)] also ranks pairs by the policy alone,
which is defined for the SFT model too (its implicit rewards are all 0) and so compares the two.

Sequence log-probs. log π(y|x) = Σ_t m_t log π(y_t | x, y_<t) over the response mask m
(response tokens and the end of turn; prompt tokens are context): the sum is the likelihood of
the whole response, the quantity the DPO derivation is about. `dpo.average_logps=True` divides
by Σ_t m_t (length normalisation, which removes the sum's bias towards short responses), for
policy and reference.
IPO is defined on length-averaged log-probs (Azar et al. 2023; TRL and torchtune average for
"ipo"): on sums the same per-token margin costs a 50-token answer 100× what it costs a 5-token one.
So `dpo.average_logps` left unset (None) means True for `ipo` and False for the others
(`losses.DPOSettings.from_config`); the resolved value is written to the run's config.json.

One forward per step. Chosen and rejected rows are concatenated along the batch ([2B, T]) and go
through one trunk call, then split: one compiled graph, matmuls twice as tall, and the two halves
of a pair always see the same parameters.

The reference (`dpo.reference`):
  * "live": the frozen SFT params are the step's `frozen` argument (never differentiated, no
    optimizer state) and are run forward every step — memory of a second model, compute of a
    second forward.
  * "cached": before training, one jitted scoring pass computes log π_ref of every training and
    evaluation pair (of the training pairs the run draws, when they are under a quarter of the
    file: `SUBSET_FRACTION`) and stores it under `cache_dir/<sha256 fingerprint of data, reference model
    and chat template>/` (`reference_cache.py`); a re-run with the same data and model reuses it.
    `dpo.cache_dir` is by default `reference_cache/` beside the workdir (`runs/<name>/`): the
    runs of a sweep side by side (`runs/<name>/dpo_lr1`, `…/dpo_lr2`) share one computation.
    Batches then carry `ref_chosen_logps` / `ref_rejected_logps`, looked up by the batch's
    example `index`, and no reference model is held during training.

Resume: `driver.train` restores the train state and loader position; the reference is either
the same SFT checkpoint again (live) or the same cache entry (cached), so a killed run continues
the identical trajectory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyalign import losses
from easyalign.algorithms import reference_cache
from easyalign.algorithms import runsetup
from easyalign.data import loader as data_loader
from easyalign.hf import models
from easyalign.model import lora
from easyalign.train import driver
from easyalign.model.scoring import token_logprobs

REFERENCES = ("live", "cached")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
PAIR_KEYS = ("chosen_tokens", "chosen_loss_mask", "rejected_tokens", "rejected_loss_mask")


def check_config(config) -> None:
    """Fail before any work when the `dpo` block names something that does not exist or sets
    a value out of range (ValueError, one line); resolve `dpo.average_logps` in the block, so
    that the run's config.json records what ran."""
    d = config.dpo
    d.average_logps = losses.DPOSettings.from_config(d).average_logps  # validates the loss's
    if d.reference not in REFERENCES:
        raise ValueError(f"unknown dpo.reference {d.reference!r}; valid: {', '.join(REFERENCES)}")


# ----------------------------------------------------------------------------- scoring
def response_logps(model, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token log-probs and response masks `[2B, T]`, chosen rows then rejected rows, from
    one trunk call (right-padded rows: the causal mask alone keeps padding out), and that
    call's MoE router loss (0 for a dense model)."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], axis=0)
    mask = jnp.concatenate([batch["chosen_loss_mask"], batch["rejected_loss_mask"]], axis=0)
    hidden, _, router_loss = model.trunk_with_router_loss(tokens)
    return token_logprobs(model, hidden, tokens), mask, router_loss


def pair_logps(model, batch: dict, average: bool) -> tuple[jax.Array, jax.Array]:
    """Sequence log-probs `[B]` of the chosen and rejected responses (sum, or mean if `average`)."""
    logps, mask, _ = response_logps(model, batch)
    return jnp.split(losses.sequence_logps(logps, mask, average=average), 2)


def _reference(batch, frozen, ref_graphdef, average):
    if ref_graphdef is None:  # cached: the loader attached them
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    ref_w, ref_l = pair_logps(nnx.merge(ref_graphdef, frozen), batch, average)
    return jax.lax.stop_gradient(ref_w), jax.lax.stop_gradient(ref_l)


def _policy(model, batch, d: losses.DPOSettings):
    """`(log π(y_w), log π(y_l), nll_w, router_loss)`, nll_w `[B]` = the chosen response's mean
    token NLL."""
    logps, mask, router_loss = response_logps(model, batch)
    pi_w, pi_l = jnp.split(losses.sequence_logps(logps, mask, average=d.average_logps), 2)
    nll_w = -jnp.split(losses.sequence_logps(logps, mask, average=True), 2)[0]
    return pi_w, pi_l, nll_w, router_loss


def _pair_loss(pi_w, pi_l, ref_w, ref_l, nll_w, d: losses.DPOSettings):
    """DPO-family loss and metrics over `[B]` pairs, plus `sft_weight` × mean chosen NLL."""
    loss, metrics = losses.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=d.beta,
                                    loss_type=d.loss_type, label_smoothing=d.label_smoothing)
    nll = jnp.mean(nll_w)
    return loss + d.sft_weight * nll, dict(metrics, **{"nll/chosen": nll})


def make_loss(graphdef, d: losses.DPOSettings, ref_graphdef=None):
    """`loss_fn(params, batch, rng, frozen)`: `frozen` = reference params (live) or None (cached,
    `ref_graphdef=None`). Every micro-batch has the same number of pairs and the loss is a mean
    over pairs, so weight 1 per micro-batch is exact under gradient accumulation."""

    def loss_fn(params, batch, rng, frozen):
        model = nnx.merge(graphdef, params)
        pi_w, pi_l, nll_w, router_loss = _policy(model, batch, d)
        ref_w, ref_l = _reference(batch, frozen, ref_graphdef, d.average_logps)
        loss, metrics = _pair_loss(pi_w, pi_l, ref_w, ref_l, nll_w, d)
        return losses.add_router_loss(loss, metrics, router_loss, model.config.num_experts)

    return loss_fn


def make_eval_metrics(graphdef, d: losses.DPOSettings, ref_graphdef=None):
    """Held-out `{name_sum, name_count}` per batch: the training loss and metrics pair by pair
    (padding rows excluded), plus `logps/accuracy`, P[log π(y_w) > log π(y_l)], the policy's own
    ranking (defined for the SFT model too, where every implicit reward is 0)."""

    def per_pair(pi_w, pi_l, ref_w, ref_l, nll_w):
        loss, metrics = _pair_loss(pi_w[None], pi_l[None], ref_w[None], ref_l[None],
                                   nll_w[None], d)
        return dict(metrics, loss=loss, **{"logps/accuracy": (pi_w > pi_l).astype(jnp.float32)})

    def metric_fn(params, batch, frozen):
        pi_w, pi_l, nll_w, _ = _policy(nnx.merge(graphdef, params), batch, d)
        ref_w, ref_l = _reference(batch, frozen, ref_graphdef, d.average_logps)
        values = jax.vmap(per_pair)(pi_w, pi_l, ref_w, ref_l, nll_w)
        valid = batch["valid"].astype(jnp.float32)
        out = {f"{k}_sum": jnp.sum(v * valid) for k, v in values.items()}
        return out | {f"{k}_count": jnp.sum(valid) for k in values}

    return metric_fn


# ----------------------------------------------------------------------------- cached reference
def _score(graphdef, average, params, batch):
    ref_w, ref_l = pair_logps(nnx.merge(graphdef, params), batch, average)
    return {"ref_chosen_logps": ref_w, "ref_rejected_logps": ref_l}


def reference_tables(run: runsetup.Run, graphdef, params, datasets: dict[str, list[dict]],
                     average: bool, rows: dict[str, np.ndarray] | None = None
                     ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, bool]]:
    """`{name: {ref_chosen_logps [N], ref_rejected_logps [N]}}` for each tokenised data set, from
    the disk cache or one jitted pass of the reference (length-averaged if `average`); and
    `{name: cache hit}`. `rows[name]` (sorted positions) limits a data set to the pairs a run
    will draw (`data.loader.rows_drawn`): the others are NaN, which `with_reference` refuses."""
    cache_dir = run.config.dpo.cache_dir
    root = Path(cache_dir) if cache_dir else run.workdir.parent / "reference_cache"
    model = {"model": reference_cache.model_digest(nnx.merge(graphdef, params).config.to_dict(),
                                                   params),
             "template": reference_cache.template_digest(run.tokenizer),
             "average_logps": average}

    score = functools.partial(_score, graphdef, average)
    tables, hits = {}, {}
    for name, examples in datasets.items():
        parts = {"kind": "dpo-reference-logps", "num_examples": len(examples),
                 "data": reference_cache.examples_digest(examples, PAIR_KEYS), **model}
        subset = (rows or {}).get(name)
        if subset is not None and len(subset) < len(examples):
            parts["rows"] = hashlib.sha256(np.asarray(subset, np.int64).tobytes()).hexdigest()
        else:
            subset = None

        def compute(examples=examples, subset=subset):
            chosen = examples if subset is None else [examples[i] for i in subset]
            batches = runsetup.eval_batches(run, chosen, "preference")
            table = reference_cache.compute_per_example(score, params, batches, len(chosen),
                                                        run.mesh)
            if subset is None:
                return table
            full = {k: np.full((len(examples),) + v.shape[1:], np.nan, v.dtype)
                    for k, v in table.items()}
            for k, v in table.items():
                full[k][subset] = v
            return full

        tables[name], hits[name] = reference_cache.cached(root, parts, compute)
        if run.is_main:
            scope = (f"{len(examples)} pairs" if subset is None else
                     f"the {len(subset)} of {len(examples)} pairs this run draws")
            print(f"[dpo] reference log-probs ({name}, {scope}): "
                  f"{'cache hit' if hits[name] else 'computed'} in {root}")
    return tables, hits


SUBSET_FRACTION = 4  # the cache scores only the drawn pairs below 1/4 of the file


def with_reference(batch: dict, table: dict[str, np.ndarray]) -> dict:
    """The batch plus its rows' reference log-probs (padding rows, index −1, get 0)."""
    index = np.asarray(batch["index"])
    valid = index >= 0
    out = batch | {k: np.where(valid, table[k][np.where(valid, index, 0)], 0.0).astype(np.float32)
                   for k in REF_KEYS}
    if any(np.isnan(out[k]).any() for k in REF_KEYS):
        # Only when the run draws more than its table was made for (train.steps raised under
        # train.allow_config_change): the reference is the initial policy, gone by now.
        raise ValueError("DPO: a batch drew pairs whose reference log-probs were not computed "
                         "(the cache covers the pairs of the run's train.steps × "
                         "train.batch_size); rerun in a new workdir, or use dpo.reference=live")
    return out


class ReferenceLoader:
    """A training loader whose batches carry cached reference log-probs; state passes through."""

    def __init__(self, loader, table: dict[str, np.ndarray]):
        self.loader, self.table = loader, table
        self.fingerprint = loader.fingerprint  # the batches' shape, for the driver's MFU

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return with_reference(next(self.loader), self.table)

    def get_state(self) -> bytes:
        return self.loader.get_state()

    def set_state(self, state) -> None:
        self.loader.set_state(state)


# ----------------------------------------------------------------------------- the phase
@dataclasses.dataclass
class Setup:
    """Everything `train` needs, built by `setup` (tests inspect it before and after training)."""

    run: runsetup.Run
    settings: losses.DPOSettings  # the loss's static settings, from the `dpo` block
    model: Any                    # the policy, initialised from the SFT model
    loader: Any
    eval_batches: list[dict]
    frozen: Any = None            # live: the reference params; cached: None
    ref_graphdef: Any = None      # live: the reference graphdef; cached: None
    cache_hits: dict[str, bool] = dataclasses.field(default_factory=dict)


def setup(config) -> Setup:
    check_config(config)
    settings = losses.DPOSettings.from_config(config.dpo)
    run_ = runsetup.prepare(config)
    c = config.train
    train_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "preference", "train"),
                                     "preference")
    eval_examples = runsetup.tokenize(run_, runsetup.load_examples(run_, "preference", "eval"),
                                    "preference")
    if c.eval_batches:
        eval_examples = eval_examples[:c.eval_batches * c.batch_size]
    model = models.init_model(run_, head="lm")
    loader = runsetup.train_loader(run_, train_examples, "preference")
    eval_batches = list(runsetup.eval_batches(run_, eval_examples, "preference")) \
        if eval_examples else []
    graphdef, params = nnx.split(model)
    if config.dpo.reference == "live":
        # A copy, not the policy's buffers (the train step donates those); with LoRA, the
        # policy's own base weights with the adapters off: no second copy (lora.live_reference).
        frozen, ref_graphdef = lora.live_reference(model)
        return Setup(run_, settings, model, loader, eval_batches, frozen=frozen,
                     ref_graphdef=ref_graphdef)
    # The reference is the policy's initial model: score with it now, before training moves it.
    datasets = {"train": train_examples} | ({"eval": eval_examples} if eval_examples else {})
    # A run that draws under a quarter of its file (a smoke run: 2 steps of the real preset
    # draw 8 of 2,292 HH pairs) scores just those pairs, not the file (hours on a CPU); past
    # that the whole file is scored once, for this run's later steps and its sweep siblings.
    drawn = data_loader.rows_drawn(len(train_examples), c.seed, c.steps * c.batch_size)
    rows = {"train": drawn} if len(drawn) * SUBSET_FRACTION < len(train_examples) else None
    tables, hits = reference_tables(run_, graphdef, params, datasets, settings.average_logps,
                                    rows=rows)
    eval_batches = [with_reference(b, tables["eval"]) for b in eval_batches]
    return Setup(run_, settings, model, ReferenceLoader(loader, tables["train"]), eval_batches,
                 cache_hits=hits)


def train(s: Setup):
    """Run the generic loop; returns `(params, graphdef)` and writes `workdir/model/`."""
    d = s.settings

    def evaluate_for(graphdef):
        return driver.make_evaluator(s.run, s.eval_batches,
                                     make_eval_metrics(graphdef, d, s.ref_graphdef), s.frozen)

    return driver.train(
        s.run, model=s.model, loss_fn_for=lambda g: make_loss(g, d, s.ref_graphdef),
        loader=s.loader, frozen=s.frozen,
        evaluate_for=evaluate_for if s.eval_batches else None, best_metric="loss",
        tokens=lambda b: int(np.count_nonzero(b["chosen_segment_ids"])
                             + np.count_nonzero(b["rejected_segment_ids"])))


def run(config):
    return train(setup(config))
