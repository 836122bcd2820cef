"""Resolve the MODEL argument of the CLI: a zoo name, ``torchvision:NAME``, ``path/to/file.py:factory`` or an
``.onnx`` file.

``torchvision:NAME`` builds a torchvision classification architecture (``torchvision:segmentation.NAME`` a
segmentation one) with ``weights=None`` and loads a local
state dict (``--weights``, required: nothing is downloaded); the number of classes is read from the state dict and
the preprocessing (resize, crop, mean, std) from the metadata of torchvision's default weights for that
architecture.

The zoo is passed in by the caller (the CLI), so the runtime never imports ``snnconvert.models_zoo`` itself.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from snnconvert.convert.artifact import ModelSource, state_mismatch
from snnconvert.convert.errors import ModelLoadError, first_line


@dataclass
class ResolvedModel:
    """A model ready for conversion plus what is known about its data and preprocessing."""

    model: torch.nn.Module | str
    source: ModelSource
    label: str
    dataset: str | None = None
    #: what the caller must apply to [0, 1] images: ``mean``/``std`` (normalisation), ``resize``/``crop`` (files)
    preprocessing: dict[str, Any] | None = None
    #: one image ``(C, H, W)`` when known (zoo card, ONNX input, torchvision crop)
    input_shape: tuple[int, ...] | None = None


def first_conv_channels(model: torch.nn.Module) -> int | None:
    """The input channels of a module's first registered 2-d convolution when 1 or 3 (a greyscale or RGB image
    model), else None: how to read image files for a model whose input shape nothing else gives."""
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None and conv.in_channels in (1, 3) else None


def resolve_model(spec: str, *, weights: str | os.PathLike | None = None, zoo=None,
                  input_layout: str = "channels-first") -> ResolvedModel:
    """Turn the MODEL argument into a model.

    Args:
        spec: a zoo name, ``torchvision:NAME``, ``file.py:factory``, ``package.module:factory`` or a path to an
            ``.onnx`` file.
        weights: optional state-dict file loaded into a Python model.
        zoo: the zoo module (``snnconvert.models_zoo``) providing ``get_entry`` / ``list_models``.
        input_layout: an ONNX model's input layout (``"channels-last"``: ``input_shape`` is given channels-first,
            as the imported module takes it).

    Raises:
        ModelLoadError: unknown zoo name (with the valid names), missing file, bad factory or weights.
    """
    if spec.lower().endswith(".onnx"):
        if weights is not None:
            raise ModelLoadError("--weights applies to Python models only; an .onnx file carries its weights")
        if Path(spec).is_dir():
            raise ModelLoadError(f"ONNX model {spec} is a folder, not a file; give the path of the .onnx file")
        if not Path(spec).is_file():
            raise ModelLoadError(f"ONNX file {spec} does not exist")
        props, shape = onnx_metadata(spec), onnx_input_shape(spec)
        if shape is not None and input_layout == "channels-last" and len(shape) >= 2:
            shape = (shape[-1], *shape[:-1])
        dataset = props.get("snnconvert.dataset")
        preprocessing = _parse_preprocessing(props.get("snnconvert.preprocessing"))
        return ResolvedModel(spec, ModelSource.onnx(spec), label=spec, dataset=dataset, preprocessing=preprocessing,
                             input_shape=shape)
    if spec.startswith("torchvision:"):
        return _torchvision_model(spec, weights)
    if ":" in spec:
        source = ModelSource.python(spec)
        model = source.build()
        label = spec
        dataset = preprocessing = input_shape = None
    elif spec.lower().endswith(".py"):  # not a zoo name: the factory is missing
        raise ModelLoadError(f"{spec} is a Python file: name what builds the model in it as {spec}:factory (a "
                             f"function or class returning the nn.Module, e.g. {spec}:build_model)"
                             + ("" if Path(spec).is_file() else f"; note that {spec} does not exist"))
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
        label, dataset, input_shape = spec, entry.dataset, tuple(entry.input_shape)
        # what the card says the caller must apply to [0, 1] images (the Fashion-MNIST models: nothing)
        preprocessing = dict(entry.preprocessing) if entry.preprocessing else None
    if weights is not None:
        _load_weights(model, weights)
    model.eval()
    return ResolvedModel(model, source, label, dataset, preprocessing, input_shape)


def _torchvision_model(spec: str, weights: str | os.PathLike | None) -> ResolvedModel:
    """``torchvision:NAME`` (a classification architecture) or ``torchvision:segmentation.NAME`` (FCN, DeepLabV3,
    LR-ASPP; its auxiliary head kept when the state dict has one) + a local state dict -> the model, its
    preprocessing and input shape (segmentation: mean and std only; the images are taken at their size)."""
    import torchvision

    name = spec.partition(":")[2]
    dense = name.startswith("segmentation.")
    arch = name.partition(".")[2] if dense else name
    family = torchvision.models.segmentation if dense else torchvision.models
    if arch not in torchvision.models.list_models(module=family):
        example = "segmentation.fcn_resnet50, segmentation.lraspp_mobilenet_v3_large" if dense else \
            "resnet18, vgg16_bn, mobilenet_v2 (segmentation models: segmentation.NAME)"
        raise ModelLoadError(f"unknown torchvision {'segmentation' if dense else 'classification'} model {arch!r}; "
                             f"choose one of torchvision.models.list_models({family.__name__}), e.g. {example}")
    if weights is None:
        raise ModelLoadError(f"{spec} needs --weights FILE (a state dict for it); nothing is downloaded")
    state = _read_state(Path(weights))
    builder = torchvision.models.get_model_builder(arch)
    kwargs: dict[str, Any] = {"weights": None}
    if dense:
        kwargs.update(weights_backbone=None, aux_loss=any(k.startswith("aux_classifier.") for k in state))
    model = builder(**kwargs)
    num_classes = _classes_in_state(model, state)
    if num_classes is not None and num_classes != _classes_in_state(model, model.state_dict()):
        kwargs["num_classes"] = num_classes
        model = builder(**kwargs)
    _fit_state(model, state, Path(weights))
    model.eval()
    transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    preprocessing = {"mean": [float(v) for v in transforms.mean], "std": [float(v) for v in transforms.std]}
    source = ModelSource("python", f"{family.__name__}:{arch}", kwargs, {"torchvision": name})
    if dense:
        return ResolvedModel(model, source, spec, None, preprocessing, None)
    crop = int(transforms.crop_size[0])
    preprocessing.update(resize=int(transforms.resize_size[0]), crop=crop)
    return ResolvedModel(model, source, spec, None, preprocessing, (3, crop, crop))


def _classes_in_state(model: torch.nn.Module, state: dict) -> int | None:
    """Outputs of the model's last Linear/Conv2d layer as stored in ``state`` (its classifier), if found."""
    last = None
    for mod_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            last = mod_name
    tensor = state.get(f"{last}.weight") if last is not None else None
    return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) else None


def onnx_input_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """One sample's shape (without the batch dim) of the first graph input, when every dim is a number."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        first = next(i for i in model.graph.input if i.name not in inits)
        dims = first.type.tensor_type.shape.dim[1:]
    except Exception:  # noqa: BLE001 - the importer reports unreadable files
        return None
    values = tuple(d.dim_value for d in dims)
    return values if values and all(v > 0 for v in values) else None


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
    """``"none"`` / absent -> None; JSON ``{"mean": [...], "std": [...], "resize": N, "crop": N}`` -> that dict
    (``resize`` and ``crop`` optional)."""
    if not text or text.strip().lower() == "none":
        return None
    try:
        doc = json.loads(text)
        out: dict[str, Any] = {k: [float(v) for v in doc[k]] for k in ("mean", "std")}
        out.update({k: int(doc[k]) for k in ("resize", "crop") if doc.get(k) is not None})
        return out
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"unreadable snnconvert.preprocessing metadata {text!r}; expected JSON with "
                             "'mean' and 'std' lists (and optional 'resize', 'crop')") from None


#: how to write a weights file that :func:`_read_state` reads
_SAVE_HOW = "save the weights with torch.save(model.state_dict(), FILE)"


def _read_state(path: Path) -> dict:
    """A state dict from ``path`` (plain, or under a ``"state_dict"`` key as training checkpoints store it), read
    with ``weights_only=True`` (no code in the file runs) and with finite values only: NaN weights would otherwise
    fail much later, inside calibration."""
    if path.is_dir():
        raise ModelLoadError(f"weights {path}: a folder, not a file; give the state-dict file ({_SAVE_HOW})")
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"weights file {path} is empty; {_SAVE_HOW}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: torch's text explains how to run it
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        raise ModelLoadError(f"weights {path} are not a state dict: the file holds {what} (e.g. a whole model saved "
                             f"with torch.save(model)), which is not loaded; {_SAVE_HOW}") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ModelLoadError(f"weights {path} are not a state dict that torch.load reads ({type(exc).__name__}: "
                             f"{first_line(exc)}); {_SAVE_HOW}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, not a state dict; {_SAVE_HOW}")
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelLoadError(f"weights {path}: tensor {key!r} holds NaN or infinite values (a diverged "
                                 "training run?); save weights from a checkpoint with finite values")
    return state


def _load_weights(model: torch.nn.Module, weights: str | os.PathLike) -> None:
    path = Path(weights)
    _fit_state(model, _read_state(path), path)


def _fit_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load ``state`` strictly; a mismatch names the keys (torch's own message is many lines, its first says
    nothing)."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"weights {path} do not fit the model: {state_mismatch(model, state) or first_line(exc)}; "
                             "save the state dict of this architecture") from exc
