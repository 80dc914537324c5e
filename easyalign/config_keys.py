"""The config error every layer raises, and the dotted keys of a config (`optim.lr`, …).

Low in the layering: the run directory's manifest check (`train.rundir`) and the CLI use them
as well as the config checks (`config_check`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key or value the user gave cannot be used; the message says which."""


def flat_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a ConfigDict, dotted (`optim.lr`, `data.world.seed`, ...)."""
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        out += flat_keys(value, name + ".") if hasattr(value, "items") else [name]
    return out
