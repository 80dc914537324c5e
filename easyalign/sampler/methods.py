"""Sampling methods: how one token is drawn from a row's logits, and their config registry.

Every method is a frozen dataclass with `sample(logits [B, V] float32, rng) -> [B] int32`; the
decoder calls it once per row with that row's own key (`decode.row_keys`), so a row's draw does
not depend on which batch or slot it sits in. `SAMPLING_METHODS` is the one name → class table:
configs name a method there and carry the flat fields `temperature`, `top_k`, `top_p`; each
class's `config_fields` says which of them its arguments come from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

@dataclasses.dataclass(frozen=True)
class Greedy:
    """The most likely token (ties go to the lowest token id)."""

    config_fields: ClassVar[dict[str, str]] = {}


    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        del rng
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
    """Sample from softmax(logits / temperature); temperature 1 is the model's distribution."""

    temperature: float = 1.0
    config_fields: ClassVar[dict[str, str]] = {"temperature": "temperature"}

    def __post_init__(self):
        _check_temperature(self.temperature)

    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        return jax.random.categorical(rng, logits / self.temperature, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Sample among the k most likely tokens, from softmax(top-k logits / temperature).

    The draw is over the indices `lax.top_k` returns, so exactly k candidates exist even when
    logits tie at the k-th value (the tie is broken towards the lower token id). A `k` larger
    than the vocabulary means the whole vocabulary.
    """

    k: int
    temperature: float = 1.0
    config_fields: ClassVar[dict[str, str]] = {"k": "top_k", "temperature": "temperature"}

    def __post_init__(self):
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"TopK: k must be a positive integer, got {self.k!r}")
        _check_temperature(self.temperature)


    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        values, indices = jax.lax.top_k(logits, min(self.k, logits.shape[-1]))
        choice = jax.random.categorical(rng, values / self.temperature, axis=-1)
        return jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Nucleus sampling: draw from the smallest set of most likely tokens whose mass is ≥ p.

    Temperature is applied first; the nucleus is taken from softmax(logits / temperature) and
    renormalised. Tokens are ranked by a stable descending sort; token j (in rank order) is kept
    iff the mass of the tokens ranked strictly above it is < p. Hence:

    * the most likely token is always kept (p → 0 is greedy);
    * the kept set is minimal: dropping its last member leaves mass < p;
    * tokens tied with the last kept one are ranked by token id, so the lower ids get in;
    * `p = 1` is plain temperature sampling (handled as such: a float32 cumulative sum can reach
      1.0 before the tail and would otherwise drop tokens of negligible mass).
    """

    p: float
    temperature: float = 1.0
    config_fields: ClassVar[dict[str, str]] = {"p": "top_p", "temperature": "temperature"}

    def __post_init__(self):
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"TopP: p must be in (0, 1], got {self.p!r}")
        _check_temperature(self.temperature)


    def sample(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
        scaled = logits / self.temperature
        if self.p >= 1.0:
            return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
        order = jnp.argsort(scaled, axis=-1, descending=True, stable=True)
        ranked = jnp.take_along_axis(scaled, order, axis=-1)
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_above = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumsum; exactly 0 at rank 0
        ranked = jnp.where(mass_above < self.p, ranked, -jnp.inf)
        choice = jax.random.categorical(rng, ranked, axis=-1)
        return jnp.take_along_axis(order, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use Greedy for argmax), got {temperature!r}")


SamplingMethod = Greedy | Temperature | TopK | TopP

SAMPLING_METHODS: dict[str, type] = {
    "greedy": Greedy,
    "temperature": Temperature,
    "top_k": TopK,
    "top_p": TopP,
}


def sampling_from_config(name: str, **kwargs: Any) -> SamplingMethod:
    """A sampling method by registry name, e.g. `sampling_from_config("top_p", p=0.9)`."""
    if name not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {name!r}; valid: {sorted(SAMPLING_METHODS)}")
    cls = SAMPLING_METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"sampling method {name!r}: unknown argument(s) {unknown}; "
                         f"valid: {sorted(fields)}")
    return cls(**kwargs)


def sampling_method(name: str, temperature: float = 1.0, top_k: int = 40,
                    top_p: float = 0.9) -> SamplingMethod:
    """The method a config names, from the flat fields configs carry (each class takes those its
    `config_fields` name)."""
    if name not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {name!r}; valid: {sorted(SAMPLING_METHODS)}")
    flat = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    fields = SAMPLING_METHODS[name].config_fields
    return sampling_from_config(name, **{arg: flat[field] for arg, field in fields.items()})


def method_from_config(block) -> SamplingMethod:
    """`sampling_method` of a config block with `sampling`, `temperature`, `top_k`, `top_p`."""
    return sampling_method(block.sampling, block.temperature, block.top_k, block.top_p)
