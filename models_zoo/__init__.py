"""Model zoo: small seeded Fashion-MNIST networks with trained weights shipped in ``weights/``.

Each entry of :data:`REGISTRY` names a factory (seeded init, plain PyTorch, see :mod:`.fmnist`) and the three files
that :mod:`snnconvert.models_zoo.train` writes for it: the fp32 state dict (``.pt``), an ONNX export (``.onnx``) and a
model card (``.json``). Nothing is ever downloaded; the weights are package data, found next to this file.

Example::

    from snnconvert.models_zoo import get_model, list_models
    model = get_model("fmnist-vgg")          # eval mode, shipped weights
    fresh = get_model("fmnist-vit", pretrained=False)

This module imports only torch and the standard library (layering rule, architecture.md §1).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snnconvert.models_zoo.fmnist import fmnist_mnv3, fmnist_mobilenet, fmnist_resnet, fmnist_vgg, fmnist_vit

__all__ = ["REGISTRY", "WEIGHTS_DIR", "ZooEntry", "get_entry", "get_model", "list_models"]

#: Folder holding the shipped ``.pt`` / ``.onnx`` / ``.json`` files (package data, no absolute path).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, where its files live and what input it expects.

    Attributes:
        name: registry key, e.g. ``"fmnist-vgg"``.
        factory: ``factory(seed=0) -> nn.Module`` with seeded initialisation.
        weights_file / onnx_file / card_file: file names inside :data:`WEIGHTS_DIR`.
        input_shape: one image, ``(C, H, W)``.
        preprocessing: ``None`` for raw [0, 1] images, else ``{"mean": [...], "std": [...]}``.
        dataset: the data set the weights were trained on.
        num_classes: number of logits.
    """

    name: str
    factory: Callable[..., nn.Module]
    weights_file: str
    onnx_file: str
    card_file: str
    input_shape: tuple[int, int, int] = (1, 28, 28)
    preprocessing: dict[str, tuple[float, ...]] | None = None
    dataset: str = "fashion-mnist"
    num_classes: int = 10

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights_file

    @property
    def onnx_path(self) -> Path:
        return WEIGHTS_DIR / self.onnx_file

    @property
    def card_path(self) -> Path:
        return WEIGHTS_DIR / self.card_file


def _entry(name: str, factory: Callable[..., nn.Module]) -> ZooEntry:
    return ZooEntry(name, factory, f"{name}.pt", f"{name}.onnx", f"{name}.json")


#: name → :class:`ZooEntry`; the only place model names are defined.
REGISTRY: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _entry("fmnist-vgg", fmnist_vgg),
        _entry("fmnist-resnet", fmnist_resnet),
        _entry("fmnist-mobilenet", fmnist_mobilenet),
        _entry("fmnist-mnv3", fmnist_mnv3),
        _entry("fmnist-vit", fmnist_vit),
    )
}


def list_models() -> list[str]:
    """Names of every zoo model, in registry order."""
    return list(REGISTRY)


def get_entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``name``.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def get_model(name: str, *, pretrained: bool = True) -> nn.Module:
    """Build zoo model ``name`` (seed 0 init) and, by default, load its shipped weights; returned in eval mode.

    Args:
        name: a registry key (see :func:`list_models`).
        pretrained: load ``weights/<name>.pt``; ``False`` returns the seeded, untrained network.

    Returns:
        The model on the CPU, in eval mode.

    Raises:
        KeyError: unknown name (the message lists the valid names).
        FileNotFoundError: the weights file is missing (the message gives the command that writes it).
    """
    entry = get_entry(name)
    model = entry.factory(seed=0)
    if pretrained:
        path = entry.weights_path
        if not path.is_file():
            raise FileNotFoundError(
                f"weights for {name!r} not found at {path}; "
                f"run `python -m snnconvert.models_zoo.train {name} --out {path.parent}`"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
