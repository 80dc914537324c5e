"""The config error every layer raises, the dotted keys of a config (`optim.lr`, …), the
"did you mean" of an unknown name and the one line of a value outside its registry.

Low in the layering: the run directory's manifest check (`train.rundir`), the optimizer
registries (`train.optim`) and the CLI use them as well as the config checks (`config_check`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A config file, key or value the user gave cannot be used; the message says which."""


# The suffix of a run manifest's keys recording when a model the run read was saved
# (`train.rundir.models_read`: "model.path (saved at)"; `hf.peft.run_base` reads them too).
SAVED_AT_SUFFIX = " (saved at)"



def shown_path(path) -> str:
    """`path` as a user types it in a message: relative to the working directory when below
    it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)

def flat_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a ConfigDict, dotted (`optim.lr`, `data.world.seed`, ...)."""
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        out += flat_keys(value, name + ".") if hasattr(value, "items") else [name]
    return out


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """`"did you mean 'smollm2'?"` when `name` is close to known names (difflib), else "".

    The one "did you mean" of every lookup by name (model aliases, registries, data columns),
    so that each unknown-name error suggests the same way.
    """
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=0.6)
    return f"did you mean {' or '.join(map(repr, close))}?" if close else ""


def check_choice(key: str, value, choices: Iterable[str]) -> None:
    """Raise ConfigError unless `value` is one of `choices` (a registry's names), in one line:
    `optim.name='adamww': not one of adamw | adafactor | sgd | lion; did you mean 'adamw'?`."""
    choices = tuple(choices)
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigError(f"{key}={value!r}: not one of {' | '.join(map(str, choices))}"
                          + (f"; {hint}" if hint else ""))


def parse_named_paths(spec: Any, what: str = "eval.variants") -> dict[str, str]:
    """`"a=p,b=q"` | `("a=p", "b=q")` | `{"a": "p"}` (a ConfigDict too) → {name: path}, in
    the given order. Raises ValueError naming `what` for a malformed entry or a duplicate name."""
    if hasattr(spec, "to_dict"):  # ml_collections' ConfigDict / FrozenConfigDict
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        pairs = []
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            name, sep, path = entry.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"{what}: expected 'name=path', got {entry!r}")
            pairs.append((name.strip(), path.strip()))
    names = [n for n, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what}: duplicate name(s) {duplicates}")
    return dict(pairs)


def parse_weights(spec: str, what: str, known: Iterable[str] | None = None,
                  example: str = "", unknown_hint: str = "") -> dict[str, float]:
    """`"name:weight,name"` → {name: weight} (1 when omitted), in order.

    Every mistake is one ConfigError naming `what` and the entry, with the format
    (`name:weight`, e.g. `example`) where the entry breaks it: `name=weight` (the `key=value`
    habit of every other setting) is answered with the entry as it should be, a weight that is
    not a number is named, and with `known` (a registry's names) an unknown name gets the
    registry's "did you mean" and its list (and `unknown_hint`, how a name gets registered).
    Without `known` the names are not checked here."""
    form = "entries are name:weight" + (f", e.g. {example!r}" if example else "")
    known = None if known is None else tuple(known)
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, colon, weight = part.partition(":")
        if not colon and "=" in part:
            name, _, weight = (p.strip() for p in part.partition("="))
            if known is not None and name not in known:  # suggest the name it most likely is
                name = next(iter(difflib.get_close_matches(name, known, 1, 0.6)), name)
            raise ConfigError(f"{what}: {part!r} is not name:weight; did you mean "
                              f"'{name}:{weight}'? ({form})")
        name = name.strip()
        try:
            out[name] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConfigError(f"{what}: weight of {name!r} is not a number: "
                              f"{weight.strip()!r} ({form})") from None
        if known is not None and name not in known:
            hint = did_you_mean(name, known)
            raise ConfigError(f"{what}: unknown name {name!r}"
                              + (f" in {part!r}" if part != name else "")
                              + (f"; {hint}" if hint else "")
                              + f" (known: {', '.join(sorted(known))}; {form})"
                              + (f"; {unknown_hint}" if unknown_hint else ""))
    return out
