"""Coding strategies: how inputs are encoded over time, which neuron replaces a ReLU, how outputs are decoded."""
from __future__ import annotations

from snnconvert.convert.coding.diff import DiffCoding
from snnconvert.convert.coding.rate import RateCoding
from snnconvert.convert.errors import ConfigError

CODINGS = {"rate": RateCoding, "differential": DiffCoding}


def get_coding(name: str):
    """The coding strategy registered as ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid names.
    """
    try:
        return CODINGS[name]()
    except KeyError:
        raise ConfigError(f"unknown coding {name!r}; choose one of: {', '.join(CODINGS)}") from None
