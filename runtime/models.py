"""Resolve the MODEL argument of the CLI: a zoo name, ``path/to/file.py:factory`` or an ``.onnx`` file.

The zoo is passed in by the caller (the CLI), so the runtime never imports ``snnconvert.models_zoo`` itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from snnconvert.convert.artifact import ModelSource
from snnconvert.convert.errors import ModelLoadError


@dataclass
class ResolvedModel:
    """A model ready for conversion plus what is known about its data and preprocessing."""

    model: torch.nn.Module | str
    source: ModelSource
    label: str
    dataset: str | None = None
    preprocessing: dict[str, Any] | None = None


def resolve_model(spec: str, *, weights: str | os.PathLike | None = None, zoo=None) -> ResolvedModel:
    """Turn the MODEL argument into a model.

    Args:
        spec: a zoo name, ``file.py:factory``, ``package.module:factory`` or a path to an ``.onnx`` file.
        weights: optional state-dict file loaded into a Python model.
        zoo: the zoo module (``snnconvert.models_zoo``) providing ``get_entry`` / ``list_models``.

    Raises:
        ModelLoadError: unknown zoo name (with the valid names), missing file, bad factory or weights.
    """
    if spec.endswith(".onnx"):
        if weights is not None:
            raise ModelLoadError("--weights applies to Python models only; an .onnx file carries its weights")
        if not Path(spec).is_file():
            raise ModelLoadError(f"ONNX file {spec} does not exist")
        props = onnx_metadata(spec)
        dataset = props.get("snnconvert.dataset")
        preprocessing = _parse_preprocessing(props.get("snnconvert.preprocessing"))
        return ResolvedModel(spec, ModelSource.onnx(spec), label=spec, dataset=dataset, preprocessing=preprocessing)
    if ":" in spec:
        source = ModelSource.python(spec)
        model = source.build()
        label = spec
        dataset = preprocessing = None
    else:
        if zoo is None:
            raise ModelLoadError(f"{spec!r} is not a file.py:factory reference or an .onnx file")
        try:
            entry = zoo.get_entry(spec)
        except KeyError as exc:
            raise ModelLoadError(str(exc).strip("'\"")) from None
        ref = f"{entry.factory.__module__}:{entry.factory.__name__}"
        source = ModelSource("python", ref, {"seed": 0}, {"zoo_name": spec})
        if weights is None:
            try:
                model = zoo.get_model(spec)
            except FileNotFoundError as exc:
                raise ModelLoadError(str(exc)) from None
        else:
            model = source.build()
        label, dataset, preprocessing = spec, entry.dataset, entry.preprocessing
    if weights is not None:
        _load_weights(model, weights)
    model.eval()
    return ResolvedModel(model, source, label, dataset, preprocessing)


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read without external data; empty when unreadable: the importer
    reports unreadable files with its own clear message)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the importer raises the real error later
        return {}
    return {p.key: p.value for p in model.metadata_props}


def _parse_preprocessing(text: str | None) -> dict[str, Any] | None:
    """``"none"`` / absent -> None; JSON ``{"mean": [...], "std": [...]}`` -> that dict."""
    if not text or text.strip().lower() == "none":
        return None
    try:
        doc = json.loads(text)
        return {k: [float(v) for v in doc[k]] for k in ("mean", "std")}
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"unreadable snnconvert.preprocessing metadata {text!r}; expected JSON with "
                             "'mean' and 'std' lists") from None


def _load_weights(model: torch.nn.Module, weights: str | os.PathLike) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ModelLoadError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"weights {path} do not fit the model: {first}") from exc
