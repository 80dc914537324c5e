"""GRPO rewards: a registry of verifiable rewards, the reward model, and their weighted sum.

A **verifiable reward** is a plain Python function of the prompt record (the JSON object of the
prompt file, with its extra fields: the world's `kind` and `answer`, an IFEval record's
`instruction_id_list` and `kwargs`) and the decoded response text:

    def my_reward(record: dict, response: str) -> float: ...
    grpo_rewards.register("my_reward", my_reward)      # then grpo.rewards = "my_reward:1.0"

Built in (`VERIFIABLE_REWARDS`):

    exact_match    the world's checkable answers: 1 when an instruction's answer matches exactly
                   (arithmetic, reversal, upper-casing, sorting, counting: `world.grade_instruction`)
                   or a fact question's answer is recalled (`world.grade_fact`); 0 otherwise, and
                   0 for prompts of other kinds
    refusal        the world's refusal rule (`data.rules.is_refusal`): 1 when a harmful request is
                   refused or a benign look-alike is not; 0 for prompts of other kinds
    world          the world's grader for every kind (`world.grade`: the two above, plus "I don't
                   know" for unknown entities)
    ifeval_strict, ifeval_loose   the fraction of an IFEval prompt's instructions followed
                   (`data.ifeval.reward` / `reward_loose`)

`reward_model` (`REWARD_MODEL`) is the frozen scalar-head model of the reward stage, read on the
device at HF's position (`reward.read_index`), as PPO reads it. `grpo.rewards` names the rewards
with their weights, `"exact_match:1.0,reward_model:0.5"`; the advantage is computed from

    r_i = Σ_k w_k · r_k(x, y_i)

and every reward function's mean and std are logged (`reward/<name>`, `reward_std/<name>`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from easyalign.config_keys import ConfigError, parse_weights
from easyalign.data import ifeval
from easyalign.data import world as world_lib
from easyalign.data.rules import is_refusal

RewardFn = Callable[[Mapping[str, Any], str], float]
REWARD_MODEL = "reward_model"  # computed on the device from the frozen scalar-head model


def exact_match(record: Mapping[str, Any], response: str) -> float:
    """1.0 for a correct answer to a world instruction or fact question, else 0.0."""
    kind, answer = record.get("kind"), record.get("answer")
    if kind not in ("instruction", "fact") or answer is None:
        return 0.0
    return float(world_lib.grade(kind, response, str(answer)))


def refusal(record: Mapping[str, Any], response: str) -> float:
    """1.0 when a harmful request is refused or a benign one answered; 0.0 for other kinds."""
    kind = record.get("kind")
    if kind == "harmful":
        return float(is_refusal(response))
    if kind == "benign":
        return float(not is_refusal(response))
    return 0.0


def world_grade(record: Mapping[str, Any], response: str) -> float:
    """`world.grade` for any world record kind (0.0 for a record without one)."""
    kind = record.get("kind")
    if kind not in world_lib.KINDS:
        return 0.0
    answer = record.get("answer")
    return float(world_lib.grade(kind, response, None if answer is None else str(answer)))


# name -> a function `(prompt record, response text) -> float`; `register` adds more.
VERIFIABLE_REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "refusal": refusal,
    "world": world_grade,
    "ifeval_strict": ifeval.reward,
    "ifeval_loose": ifeval.reward_loose,
}

AppliesFn = Callable[[Mapping[str, Any]], bool]


def _ifeval_record(record: Mapping[str, Any]) -> bool:
    return bool(record.get("instruction_id_list"))


# name -> `applies(record)`: whether the reward can grade a prompt at all (a reward that cannot
# gives every completion of the prompt the same value: a group without signal). A reward
# registered without one applies to every record.
APPLIES: dict[str, AppliesFn] = {
    "exact_match": lambda r: r.get("kind") in ("instruction", "fact") and r.get("answer")
    is not None,
    "refusal": lambda r: r.get("kind") in ("harmful", "benign"),
    "world": lambda r: r.get("kind") in world_lib.KINDS,
    "ifeval_strict": _ifeval_record,
    "ifeval_loose": _ifeval_record,
}


def reward_function(name: str) -> RewardFn:
    """The verifiable reward registered as `name`."""
    return VERIFIABLE_REWARDS[name]


def register(name: str, fn: RewardFn, applies: AppliesFn | None = None) -> RewardFn:
    """Add a verifiable reward `fn(record, response) -> float` under `name`; `applies(record)`
    says which prompts it can grade (default: all), for `ungradeable`."""
    if name == REWARD_MODEL:
        raise ValueError(f"{REWARD_MODEL!r} is the reward model's name")
    VERIFIABLE_REWARDS[name] = fn
    APPLIES.pop(name, None)
    if applies is not None:
        APPLIES[name] = applies
    return fn


def ungradeable(weights: Mapping[str, float], records: list[Mapping[str, Any]]) -> list[int]:
    """Indices of the records that no reward of `weights` can grade (`APPLIES`; the reward
    model grades everything): every completion of such a prompt gets the same reward, so its
    group carries no signal and only costs sampling."""
    if REWARD_MODEL in weights:
        return []
    tests = [APPLIES.get(name, lambda r: True) for name, w in weights.items() if w]
    return [i for i, r in enumerate(records) if not any(t(r) for t in tests)]


def parse_rewards(spec: str) -> dict[str, float]:
    """`"name:weight,name"` → {name: weight} (weight 1 when omitted), every name checked
    against the registered rewards (`config_keys.parse_weights`: one line naming the entry, the
    `name:weight` format and the closest reward name)."""
    out = parse_weights(spec, "grpo.rewards", known=[REWARD_MODEL, *VERIFIABLE_REWARDS],
                        example="exact_match:1.0,reward_model:0.5",
                        unknown_hint="a function of your own is registered by your config file "
                        "(README: Add a verifiable reward)")
    if not out:
        raise ConfigError("grpo.rewards names no reward (entries are name:weight, e.g. "
                          "'exact_match:1.0,reward_model:0.5')")
    return out


def code_identity(key: str, value: Any) -> dict[str, str]:
    """The manifest entry of `grpo.rewards` (`runsetup.prepare`'s `identify`): a digest of the
    source of the reward functions it names that are the user's own (not easyalign's), so
    that a resume after that code changed says so instead of continuing another run."""
    if key != "grpo.rewards":
        return {}
    import hashlib
    import inspect

    parts = []
    for name in sorted(parse_rewards(str(value))):
        fn = VERIFIABLE_REWARDS.get(name)
        if fn is None or str(getattr(fn, "__module__", "")).startswith("easyalign."):
            continue
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):  # no source file (a lambda typed into a REPL, a builtin)
            source = getattr(fn, "__qualname__", repr(fn))
        parts.append(f"{name}\n{source}")
    if not parts:
        return {}
    from easyalign.train.rundir import CODE

    return {key + CODE: hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]}


def verifiable_scores(weights: Mapping[str, float], records: list[Mapping[str, Any]],
                      responses: list[str], during: str = "") -> dict[str, np.ndarray]:
    """{name: `[N]` float32} of every verifiable reward in `weights` on (record, response) pairs.
    Raises RewardError — one line naming the reward, the record (its `source`, `file:LINE`,
    when it has one, else its position), its prompt, the response and `during` (e.g. "in the
    rollout of iteration 3") — when a reward function raises or returns anything but a finite
    number (a bool counts as 0 or 1)."""
    return {name: np.asarray([_score(name, reward_function(name), i, r, y, during)
                              for i, (r, y) in enumerate(zip(records, responses))], np.float32)
            for name in weights if name != REWARD_MODEL}


class RewardError(ValueError):
    """A verifiable reward function failed on a record: the user's code, not the library's."""


def _short(text: Any, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _score(name: str, fn: RewardFn, index: int, record: Mapping[str, Any],
           response: str, during: str = "") -> float:
    def where() -> str:  # only built when a reward fails
        source = record.get("source")
        which = f"record {source}" if source else f"prompt record {index}"
        return (f"grpo.rewards: reward {name!r} on {which} ({_short(record.get('prompt'))}), "
                f"response {_short(response)}" + (f", {during}" if during else ""))

    try:
        value = fn(record, response)
    except Exception as e:  # noqa: BLE001 — the user's function: name it, keep the cause
        raise RewardError(f"{where()}: raised {type(e).__name__}: {e}") from e
    try:
        number = None if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise RewardError(f"{where()}: returned {value!r}; a reward must be a finite number")
    return number


def combine(weights: Mapping[str, float], scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """Σ_k w_k · scores[k] `[N]`."""
    return sum(np.float32(w) * np.asarray(scores[k], np.float32) for k, w in weights.items())
