"""LoRA: low-rank adapters beside frozen base projections (Hu et al. 2021, "LoRA", eq. 3).

A targeted projection y = x W (+ b) becomes

    y = x W (+ b) + s · (drop(x) A) B,     A [in, r], B [r, out],  s = α / r

(rsLoRA, Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
eq. 4: s = α / √r). A is drawn as PEFT draws it — `nn.Linear`'s default, Kaiming-uniform with
a = √5, i.e. U(−1/√fan_in, 1/√fan_in), fan_in = the projection's input width — and B = 0, so
at step 0 the adapted model computes the base model's function exactly (x A B = 0 added).
`drop` is inverted dropout of rate `dropout` on the adapter's input only (PEFT's
`lora_dropout`), active only when a forward is given a dropout key.

LoRA is a property of the model (`ModelConfig.lora`), not of a phase: with it, every targeted
`Einsum` holds `lora_a` / `lora_b` next to its `kernel`, in the kernel's head structure (A's
input axes are the kernel's contracted axes, B's output axes the kernel's output axes, so
tensor parallelism splits B by heads like the kernel). The adapter runs unmerged in every
forward — training, scoring and KV-cache sampling — so there is no merge/unmerge round trip;
`merge` folds it into the base for export or for the next stage.

Targets are projection names: `q k v o gate up down`, HF/PEFT's `q_proj … down_proj`, the fused
HF names `qkv_proj` (q, k, v) and `gate_up_proj` (gate, up), the groups `attn` and `mlp`, `all`,
or a regular expression matched against the short and HF names (`[qv]_proj`). A mixture of
experts (Qwen3-MoE) has no `gate/up/down` projections for adapters: its experts stay frozen.

Training splits the parameters into the trainable part (the adapters, and a scalar head) and
the frozen base (`split` / `join`): the optimizer and its state see only the former, and the
base reaches the train step as a frozen argument (no gradient computed, never donated).
`base_dtype` stores the frozen base in another dtype (bfloat16: half the memory of an fp32
base) while the adapters keep the master `param_dtype`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Short name → (module path under a layer, HF/PEFT module name).
PROJECTIONS: dict[str, tuple[str, str]] = {
    "q": ("attn.q_proj", "q_proj"), "k": ("attn.k_proj", "k_proj"),
    "v": ("attn.v_proj", "v_proj"), "o": ("attn.o_proj", "o_proj"),
    "gate": ("mlp.gate_proj", "gate_proj"), "up": ("mlp.up_proj", "up_proj"),
    "down": ("mlp.down_proj", "down_proj")}
GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(PROJECTIONS), "all-linear": tuple(PROJECTIONS),
    "attn": ("q", "k", "v", "o"), "self_attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"), "qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}
ADAPTER_NAMES = ("lora_a", "lora_b")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Adapters of rank `rank` on the projections `targets` (short names, resolved).

    `alpha` sets the scale s = alpha / rank (or alpha / √rank with `rslora`); `dropout` is the
    adapter-input dropout rate; `base_dtype` the dtype the frozen base weights are stored in
    ("" = the model's `param_dtype`). Raises ValueError on a rank < 1, a negative alpha, a
    dropout outside [0, 1), an unknown dtype or target.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(PROJECTIONS)
    rslora: bool = False
    base_dtype: str = ""

    def __post_init__(self):
        if isinstance(self.targets, (list, str)):  # JSON gives lists; keep the config hashable
            object.__setattr__(self, "targets", resolve_targets(self.targets))
        problems = [
            (self.rank >= 1, f"rank must be ≥ 1, got {self.rank}"),
            (self.alpha >= 0, f"alpha must be ≥ 0, got {self.alpha}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.base_dtype in ("",) + DTYPES,
             f"base_dtype {self.base_dtype!r} not in {('',) + DTYPES}"),
            (set(self.targets) <= set(PROJECTIONS) and self.targets,
             f"targets {self.targets} must be a non-empty subset of {tuple(PROJECTIONS)}"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"model.lora: {message}")

    @property
    def scaling(self) -> float:
        """s = α / r (Hu et al. eq. 3), or α / √r with rsLoRA (Kalajdzievski 2023)."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def resolve_targets(spec: str | Sequence[str],
                    available: Sequence[str] = tuple(PROJECTIONS)) -> tuple[str, ...]:
    """Short projection names (in `PROJECTIONS` order) that `spec` selects among `available`.

    `spec` is a comma-separated string or a sequence of names, groups or regular expressions
    (module docstring). Raises ValueError naming an entry that selects none of `available`.
    """
    entries = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    chosen: set[str] = set()
    for entry in filter(None, entries):
        if entry in GROUPS:
            hits = set(GROUPS[entry]) & set(available)
        elif entry in PROJECTIONS:
            hits = {entry} & set(available)
        else:
            try:
                pattern = re.compile(entry)
            except re.error as e:
                raise ValueError(f"model.lora.targets: {entry!r} is not a name or a regular "
                                 f"expression ({e})") from None
            hits = {name for name in available
                    if pattern.fullmatch(name) or pattern.fullmatch(PROJECTIONS[name][1])}
        if not hits:
            names = ", ".join(f"{PROJECTIONS[n][1]} ({n})" for n in available)
            raise ValueError(f"model.lora.targets: {entry!r} matches no projection of this "
                             f"model; its projections are {names}")
        chosen |= hits
    if not chosen:
        raise ValueError("model.lora.targets is empty; e.g. 'all' or 'q_proj,v_proj'")
    return tuple(name for name in PROJECTIONS if name in chosen)


def available_targets(num_experts: int) -> tuple[str, ...]:
    """Projections that can take adapters: all seven, or the attention's four for an MoE."""
    return GROUPS["attn"] if num_experts else tuple(PROJECTIONS)


# ----------------------------------------------------------------------------- the adapter
@dataclasses.dataclass(frozen=True)
class AdapterEquations:
    """The adapter's einsums derived from a projection's `equation` ("btd,dhk->bthk").

    A holds the kernel's contracted (input) axes then the rank axis, B the rank axis then the
    kernel's output axes, both in the kernel's own order:

        q_proj  btd,dhk->bthk   A [d, r]      B [r, h, k]
        o_proj  bthk,dhk->btd   A [h, k, r]   B [r, d]
        down    btf,df->btd     A [f, r]      B [r, d]
    """

    kernel: str
    inputs: str      # kernel axes contracted with x
    outputs: str     # kernel axes that reach y
    down: str        # x, A -> x A        [..., r]
    up: str          # x A, B -> y
    merged: str      # A, B -> ΔW in the kernel's layout (stacked axes as "...")

    @classmethod
    def parse(cls, equation: str) -> "AdapterEquations":
        operands, out = equation.split("->")
        x, kernel = operands.split(",")
        rank = next(c for c in "rzyxwvuts" if c not in equation)
        inputs = "".join(c for c in kernel if c in x)
        outputs = "".join(c for c in kernel if c not in x)
        kept = "".join(c for c in x if c not in kernel)
        a, b = inputs + rank, rank + outputs
        return cls(kernel, inputs, outputs, f"{x},{a}->{kept}{rank}",
                   f"{kept}{rank},{b}->{out}", f"...{a},...{b}->...{kernel}")

    def shapes(self, kernel_shape: Sequence[int], rank: int
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        size = dict(zip(self.kernel, kernel_shape))
        return (tuple(size[c] for c in self.inputs) + (rank,),
                (rank,) + tuple(size[c] for c in self.outputs))

    def names(self, kernel_names: Sequence[str | None]):
        """Logical axes of A and B: the kernel's own for its axes, the rank replicated."""
        named = dict(zip(self.kernel, kernel_names))
        return (tuple(named[c] for c in self.inputs) + (None,),
                (None,) + tuple(named[c] for c in self.outputs))


def init_a(key: jax.Array, shape: Sequence[int], dtype) -> jax.Array:
    """A ~ U(−1/√fan_in, 1/√fan_in), fan_in = Π shape[:-1] (the projection's input width).

    PEFT initialises lora_A as `nn.init.kaiming_uniform_(W, a=√5)`: bound = gain·√(3/fan_in)
    with gain = √(2/(1+a²)) = √(1/3), so bound = 1/√fan_in.
    """
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, tuple(shape), jnp.float32, -bound, bound).astype(dtype)


def init_a_host(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """`init_a` drawn with numpy (float32): every process draws the same array from the seed.
    A stacked `[L, ..., r]` adapter's fan-in excludes the layer axis."""
    bound = 1.0 / math.sqrt(math.prod(shape[1:-1]))
    return rng.uniform(-bound, bound, tuple(shape)).astype(np.float32)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability `rate`, scale the rest by 1/(1−rate);
    the identity without a key (evaluation, scoring, sampling) or at rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def split_key(key: jax.Array | None, n: int) -> list:
    """`n` independent dropout keys, or `n` Nones without a key (no dropout)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def adapter_delta(eqs: AdapterEquations, x: jax.Array, a: jax.Array, b: jax.Array,
                  scaling: float) -> jax.Array:
    """s · (x A) B in x's dtype (the compute dtype). The scale multiplies the rank-r
    intermediate, the smallest tensor of the three."""
    xa = jnp.einsum(eqs.down, x, a.astype(x.dtype))
    return jnp.einsum(eqs.up, xa * jnp.asarray(scaling, x.dtype), b.astype(x.dtype))


def merged_delta(eqs: AdapterEquations, a: jax.Array, b: jax.Array, scaling: float
                 ) -> jax.Array:
    """ΔW = s · A B in the kernel's layout (leading stacked axes kept), in float32."""
    return scaling * jnp.einsum(eqs.merged, a.astype(jnp.float32), b.astype(jnp.float32),
                                precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------- parameter trees
def _keys(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_adapter(path, value=None) -> bool:
    """An nnx filter (or a pytree-path test): the parameter is an adapter (`lora_a`/`lora_b`).
    A pytree path may end in keys below the parameter (the Variable's value), so any key
    counts."""
    return any(k in ADAPTER_NAMES for k in _keys(path))


def is_trainable(path, value=None) -> bool:
    """An nnx filter: what a LoRA run trains — the adapters, and a scalar (reward/value) head,
    which has no pretrained value to keep (`score.kernel`)."""
    keys = _keys(path)
    return is_adapter(path) or any(keys[i:i + 2] == ["score", "kernel"]
                                   for i in range(len(keys)))


def has_adapters(tree: Any) -> bool:
    """Does the parameter tree (an nnx State, or a dict of them) hold any adapter?"""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return any(is_adapter(path) for path, _ in leaves)


def split(params: Any) -> tuple[Any, Any]:
    """`(trainable, frozen base)` of a parameter tree (an nnx State, or a dict of States as
    PPO's policy and value): the same structure, each leaf in exactly one of the two. A model
    without adapters (PPO's value model beside a LoRA policy) is trained whole."""
    if isinstance(params, dict) and not isinstance(params, nnx.State):
        parts = {k: split(v) for k, v in params.items()}
        return {k: p[0] for k, p in parts.items()}, {k: p[1] for k, p in parts.items()}
    if not has_adapters(params):
        return params, nnx.State({})
    return nnx.split_state(params, is_trainable, ...)


def join(trainable: Any, base: Any) -> Any:
    """The inverse of `split`: one tree with every leaf."""
    if isinstance(trainable, dict) and not isinstance(trainable, nnx.State):
        return {k: join(trainable[k], base[k]) for k in trainable}
    return nnx.merge_state(base, trainable)


@jax.tree_util.register_pytree_node_class
class BaseReference:
    """A stand-in, in a train step's `frozen` argument, for "the policy's own base weights,
    adapters off": the step replaces it by the base part of the params (`resolve`), so a
    reference model (DPO, PPO) costs no second copy of the weights. A pytree with no leaves.

    `key` names the entry of a dict of models (PPO's `policy`) whose base it stands for.
    """

    def __init__(self, key: str | None = None):
        self.key = key

    def tree_flatten(self):
        return (), self.key

    @classmethod
    def tree_unflatten(cls, key, children):
        return cls(key)

    def __repr__(self) -> str:
        return f"BaseReference({self.key!r})"


def resolve(frozen: Any, params: Any) -> Any:
    """`frozen` with every `BaseReference` replaced by the base (non-adapter) part of `params`
    (the whole params: trainable and base joined)."""
    def base_of(ref: BaseReference):
        source = params if ref.key is None else params[ref.key]
        return nnx.split_state(source, is_adapter, ...)[1]

    return jax.tree.map(lambda x: base_of(x) if isinstance(x, BaseReference) else x, frozen,
                        is_leaf=lambda x: isinstance(x, BaseReference))


def base_config(config):
    """The ModelConfig of a LoRA model's base: no adapters, weights in the base dtype."""
    if config.lora is None:
        return config
    return config.replace(lora=None, param_dtype=str(config.weight_dtype))


def live_reference(model) -> tuple[Any, Any]:
    """`(frozen, graphdef)` of a reference equal to `model` as it is now, for a train step.

    Without adapters: a copy of the params (the step donates, and so overwrites, the policy's
    own buffers), held in the compute dtype (`layers.cast_for_compute`: the same numbers, half
    the memory of float32 master weights). With adapters: `BaseReference()` and the base
    model's graphdef — the policy's base weights with the adapters off, which is the model at
    step 0 (B = 0) and costs no copy.
    """
    if model.config.lora is None:
        from easyalign.model.layers import cast_for_compute  # layers imports this module

        graphdef, params = nnx.split(model)
        reference = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))
        cast_for_compute(reference, model.config.compute_dtype)
        return nnx.split(reference)[1], graphdef
    from easyalign.model import abstract_model

    graphdef, _, _ = abstract_model(base_config(model.config))
    return BaseReference(), graphdef


# ----------------------------------------------------------------------------- model surgery
def _projection_modules(model) -> dict[str, Any]:
    """`{"attn.q_proj": Einsum, ...}` of the (stacked) layers: every module with adapters."""
    out = {}
    for name in PROJECTIONS.values():
        module = model.layers
        for part in name[0].split("."):
            module = getattr(module, part, None)
        if module is not None and getattr(module, "lora_a", None) is not None:
            out[name[0]] = module
    return out


def attach(model, lora: LoraConfig, mesh=None, seed: int = 0, param_dtype: str | None = None):
    """A model with fresh adapters (A drawn, B = 0) on the base weights of `model`.

    `param_dtype` is the master dtype of the adapters (and a scalar head), default the model's
    own; a base built in `lora.base_dtype` (`base_config`) has lost it, so the caller passes it.

    The base arrays are reused as they are when their dtype is the base dtype (no copy), cast
    otherwise; the adapters are created in their shardings by one jit. Returns a new model of
    `model.config.replace(lora=lora)`; raises ValueError if `model` already has adapters or a
    target is not one of its projections.
    """
    from easyalign import sharding
    from easyalign.model import abstract_model

    if model.config.lora is not None:
        raise ValueError("attach: the model already has adapters (merge them first)")
    mesh = mesh or sharding.single_device_mesh()
    resolve_targets(lora.targets, available_targets(model.config.num_experts))
    graphdef, abstract, shardings = abstract_model(
        model.config.replace(lora=lora, param_dtype=param_dtype or model.config.param_dtype), mesh)
    flat = dict(nnx.to_flat_state(abstract))
    where = {p: v.get_value() for p, v in nnx.to_flat_state(shardings)}
    source = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    fresh = sorted(p for p in flat if p not in source)
    unknown = [".".join(map(str, p)) for p in fresh if p[-1] not in ADAPTER_NAMES]
    if unknown:
        raise ValueError(f"attach: the model has no parameter(s) {unknown}")
    cast = [p for p in flat if p in source and source[p].dtype != flat[p].get_value().dtype]
    if cast:
        casted = jax.jit(lambda values: {p: values[p].astype(flat[p].get_value().dtype)
                                         for p in cast},
                         out_shardings={p: where[p] for p in cast})({p: source[p] for p in cast})
        source |= casted
    rng = np.random.default_rng(seed)
    for path in fresh:  # drawn on the host (no compile); each device takes its block
        shape, dtype = flat[path].get_value().shape, flat[path].get_value().dtype
        host = (init_a_host(rng, shape) if path[-1] == "lora_a"
                else np.zeros(shape, np.float32)).astype(dtype)
        source[path] = jax.make_array_from_callback(shape, where[path], lambda i, h=host: h[i])
    for path, variable in flat.items():
        variable.set_value(source[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def merge(model, dtype: str | None = None):
    """The model without adapters computing the same function: W ← W + s·A B per targeted
    projection (in float32, then cast to `dtype`, default the model's `param_dtype`).

    Returns a new model of the base config (the other weights are shared, cast when the
    dtype changes; one jit). A model without adapters is returned as it is.
    """
    from easyalign import sharding
    from easyalign.model import abstract_model

    config = model.config
    if config.lora is None:
        return model
    dtype = jnp.dtype(dtype or config.param_dtype)
    graphdef, abstract, _ = abstract_model(config.replace(lora=None, param_dtype=str(dtype)),
                                           sharding.single_device_mesh())
    flat = dict(nnx.to_flat_state(abstract))
    source = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    adapted = {("layers",) + tuple(name.split(".")) + ("kernel",):
               AdapterEquations.parse(module.equation)
               for name, module in _projection_modules(model).items()}
    changed = [p for p in flat if p in adapted or source[p].dtype != dtype]

    def fold(values):
        out = {}
        for path in changed:
            w = values[path]
            if path in adapted:  # every weight keeps its sharding (jit follows the inputs)
                a, b = values[path[:-1] + ("lora_a",)], values[path[:-1] + ("lora_b",)]
                w = w.astype(jnp.float32) + merged_delta(adapted[path], a, b, config.lora.scaling)
            out[path] = w.astype(dtype)
        return out

    needed = set(changed) | {p[:-1] + (ab,) for p in adapted for ab in ADAPTER_NAMES}
    folded = jax.jit(fold)({p: source[p] for p in needed})
    for path, variable in flat.items():
        variable.set_value(folded.get(path, source[path]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def projection_widths(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of one layer of `config` (an MoE expert's MLP
    is not adapted: `available_targets`)."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d),
            "gate": (d, f), "up": (d, f), "down": (f, d)}


def param_count(config) -> int:
    """Adapter parameters of `config` (0 without LoRA): r·(in + out) per targeted projection
    and layer."""
    lora = config.lora
    if lora is None:
        return 0
    widths = projection_widths(config)
    return config.num_layers * lora.rank * sum(sum(widths[t]) for t in lora.targets)


def rank_warning(config) -> str | None:
    """One line when `config.lora.rank` reaches the narrower side of a targeted weight: ΔW = B·A
    has rank ≤ min(in, out) (Hu et al. 2021, LoRA §4.1), so a larger r adds parameters (r · (in
    + out) ≥ in · out) and no expressiveness. None when every targeted weight is wider."""
    lora = config.lora
    if lora is None:
        return None
    widths = projection_widths(config)
    name = min(lora.targets, key=lambda t: min(widths[t]))
    narrow = min(widths[name])
    if lora.rank < narrow:
        return None
    return (f"[config] warning: model.lora.rank={lora.rank} ≥ {narrow}, the narrower side of "
            f"{PROJECTIONS[name][1]} ({widths[name][0]} × {widths[name][1]}): an adapter of that "
            "rank can express any update of the weight, with more parameters than the weight "
            "itself; LoRA ranks are usually 8–64 (model.lora.rank=0 trains the whole model)")
