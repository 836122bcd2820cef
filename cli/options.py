"""The command's options: a ``--config`` file (YAML or JSON) under the command line's flags, and library messages
in the command's words (the API's field names become the flags that set them)."""
from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Optional

import typer

from snnconvert.convert.errors import ConfigError

#: options the command line gives -> the --config file's options it replaces (they cannot go together)
_EXCLUDES = {"timesteps": ("sweep", "target_gap", "select_images"), "sweep": ("timesteps",)}

_NOT_RUN_OPTIONS = ("config", "debug", "verbose")  # parameters of the command, not of the run


def _read_config(path: Path) -> dict:
    """The mapping in a ``--config`` file (``.yaml``/``.yml`` or ``.json``)."""
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: reading YAML needs the pyyaml package; install it or write the "
                              "options as JSON") from None
        load, errors = yaml.safe_load, (yaml.YAMLError,)
    elif suffix == ".json":
        load, errors = json.loads, (json.JSONDecodeError,)
    else:
        raise ConfigError(f"--config {path}: use a .yaml, .yml or .json file")
    try:
        doc = load(path.read_text())
    except errors as exc:
        raise ConfigError(f"--config {path} is not valid: {' '.join(str(exc).split())}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option names to values")
    return doc


def read_options(ctx: typer.Context, config: Optional[Path]) -> dict:
    """The run options: the parsed command line, with the ``--config`` file's values for every option the command
    line did not give. Values go through the same parsing as flags."""
    values = {k: v for k, v in ctx.params.items() if k not in _NOT_RUN_OPTIONS}
    given = {k for k in values if (src := ctx.get_parameter_source(k)) is not None and src.name == "COMMANDLINE"}
    if config is not None:
        params = {p.name: p for p in ctx.command.params if p.name not in _NOT_RUN_OPTIONS}
        names = {opt.lstrip("-").replace("-", "_"): p.name for p in params.values() for opt in p.opts}
        names.update({name: name for name in params})
        negated = {opt.lstrip("-").replace("-", "_"): p.name for p in params.values()
                   for opt in getattr(p, "secondary_opts", ())}  # a switch's --no-... spelling
        # a flag on the command line also overrides the file's options it excludes (-T a file's sweep, and back)
        overridden = {n for g in given if values[g] is not None for n in _EXCLUDES.get(g, ())}
        keys: dict[str, str] = {}  # option -> the file's key that set it
        for key, raw in _read_config(config).items():
            spelled = str(key).replace("-", "_")
            name = names.get(spelled) or negated.get(spelled)
            if spelled in negated and spelled not in names:
                if not isinstance(raw, bool):
                    raise ConfigError(f"--config {config}: {key}: {raw!r} is not true or false")
                raw = not raw
            if name is not None and name in keys:
                raise ConfigError(f"--config {config}: {keys[name]!r} and {key!r} set the same option; keep one")
            if name is not None:
                keys[name] = str(key)
            if name is None:
                spellings = (next((o for o in p.opts if o.startswith("--")), p.name).lstrip("-")
                             for p in params.values())
                raise ConfigError(f"--config {config}: unknown option {key!r}; valid: {', '.join(sorted(spellings))}")
            source = ctx.get_parameter_source(name)
            if (source is not None and source.name == "COMMANDLINE" and values[name] is not None) or name in overridden:
                continue  # a flag (or MODEL) on the command line wins
            param = params[name]
            if param.multiple and isinstance(raw, str):
                raw = [raw]
            elif not param.multiple and isinstance(raw, list):  # a YAML/JSON list for a comma-list flag
                raw = ",".join(str(v) for v in raw)
            expected = annotation(param)
            if (isinstance(raw, bool) and expected not in (bool, None)) or (isinstance(raw, float) and expected is int):
                what = "an integer" if expected is int else f"a {getattr(expected, '__name__', 'value')}"
                raise ConfigError(f"--config {config}: {key}: {raw!r} is not {what}")
            try:
                values[name] = param.process_value(ctx, raw)
            except typer.BadParameter as exc:
                raise ConfigError(f"--config {config}: {key}: {exc.format_message()}") from None
            given.add(name)
    if not values["model"]:
        where = f"or `model: ...` in {config}" if config is not None else "or in a --config file (`model: ...`)"
        raise ConfigError(f"no MODEL given: name it on the command line (e.g. snnconvert fmnist-vgg) {where}")
    values["allow_ann_op"] = tuple(values["allow_ann_op"])
    values["config_file"] = config
    values["given"] = frozenset(given)
    return values


#: Configuration fields as the library's messages name them, and the flags that set them.
_FIELD_FLAGS = {"threshold_aggregation": "--aggregation", "identity_neurons": "--identity-neurons",
                "identity_threshold": "--identity-threshold", "identity_tail": "--identity-tail",
                "token_channel": "--token-channel", "threshold_scale": "--threshold-scale",
                "identity_levels": "--identity-levels", "input_layout": "--input-layout",
                "allow_ann_ops": "--allow-ann-op", "levels": "--levels",
                "neuron": "--neuron", "timesteps": "-T/--timesteps", "granularity": "--granularity",
                "backend": "--backend", "device": "--device", "coding": "--coding", "threshold": "--threshold"}
_FIELD_ASSIGNMENT = re.compile(r"\b(" + "|".join(_FIELD_FLAGS) + r")=(['\"]?)([\w.%*-]+)\2")
_FIELD_NAME = re.compile(r"\b(" + "|".join(f for f in _FIELD_FLAGS if "_" in f) + r")\b")
# "levels must be ...", "granularity 'x' is not valid" (not "threshold has 2 non-finite values": a tensor, not the flag)
_FIELD_SUBJECT = re.compile(r"^(" + "|".join(f for f in _FIELD_FLAGS if f != "threshold") + r") (?=must |is |has )"
                            r"|^(" + "|".join(_FIELD_FLAGS) + r") (?='[^']*'[ :])")


def as_flags(text: str) -> str:
    """A library message in the command's words: ``neuron='mt'`` -> ``--neuron mt``, ``identity_levels`` ->
    ``--identity-levels`` (the API's field names are the Python spelling of the flags)."""
    text = _FIELD_ASSIGNMENT.sub(lambda m: f"{_FIELD_FLAGS[m.group(1)]} {m.group(3)}", text)
    text = _FIELD_NAME.sub(lambda m: _FIELD_FLAGS[m.group(1)], text)
    text = _FIELD_SUBJECT.sub(lambda m: f"{_FIELD_FLAGS[m.group(1) or m.group(2)]} ", text)
    for flag in set(_FIELD_FLAGS.values()):  # "(--flag)" after the field's own name, now the flag too
        if text.count(flag) > 1:
            text = text.replace(f" ({flag})", "")
    return text


def annotation(param) -> type | None:
    """The Python type a command parameter takes (``int`` for ``Optional[int]``), None where not known."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    annotation = args[0] if len(args) == 1 else annotation
    return annotation if isinstance(annotation, type) else None
