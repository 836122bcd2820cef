"""Data sets read from local disk: Fashion-MNIST IDX files (and later ImageFolder / npz).

Nothing is ever downloaded. Images come out as float32 in [0, 1], shape ``[N, 1, 28, 28]``; labels as int64.
Optional normalisation ``(x - mean) / std`` is applied by :class:`Normalize` on the fly.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnconvert.convert.errors import DataError

log = logging.getLogger(__name__)

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable that points at a folder with the IDX files (checked after an explicit ``data_dir``).
DATA_DIR_ENV = "SNNCONVERT_DATA_DIR"

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "install Debian's package (apt-get install dataset-fashion-mnist), or pass --data-dir pointing at a folder "
    "with the four IDX files (train-images-idx3-ubyte[.gz], ...), or a torchvision root holding FashionMNIST/raw/"
)


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        root = Path(data_dir)
        return [root, root / "FashionMNIST" / "raw", root / "raw"]
    dirs = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [Path(env), Path(env) / "FashionMNIST" / "raw"]
    dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder holding the Fashion-MNIST IDX files.

    Raises:
        DataError: when no candidate folder holds all four files; the message says how to get them.
    """
    tried = _candidate_dirs(data_dir)
    for folder in tried:
        if all(_find_file(folder, stem) for pair in _SPLIT_FILES.values() for stem in pair):
            return folder
    where = ", ".join(str(p) for p in tried)
    raise DataError(f"Fashion-MNIST not found (looked in {where}): {_HOW_TO_GET}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; reinstall the data set") from exc
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file (too short); reinstall the data set")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file; reinstall the data set")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values); reinstall the data set")
    return body.reshape(dims)


@dataclass(frozen=True)
class TensorDataset:
    """An in-memory split: ``images`` float32 ``[N, C, H, W]`` in [0, 1], ``labels`` int64 ``[N]``."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None) -> TensorDataset:
        """The first ``n`` samples (deterministic); ``None`` keeps everything."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"asked for {n} images from {self.name}/{self.split}; give a positive count")
        return TensorDataset(self.name, self.split, self.images[:n], self.labels[:n])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> TensorDataset:
    """Load one split (``"train"`` or ``"test"``) of Fashion-MNIST as float32 images in [0, 1].

    Raises:
        DataError: unknown split, files missing or malformed.
    """
    if split not in _SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; use one of {sorted(_SPLIT_FILES)}")
    folder = find_fashion_mnist(data_dir)
    img_stem, lbl_stem = _SPLIT_FILES[split]
    images = _read_idx(_find_file(folder, img_stem))
    labels = _read_idx(_find_file(folder, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"Fashion-MNIST files in {folder} have inconsistent shapes {images.shape} / {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    log.debug("loaded fashion-mnist/%s: %d images from %s", split, len(y), folder)
    return TensorDataset("fashion-mnist", split, x, y)


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` with one value or one value per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise DataError(f"normalize: {len(mean)} mean value(s) but {len(std)} std value(s); give as many of each")
        if any(s <= 0 for s in std):
            raise DataError(f"normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


#: Data set names the CLI accepts for --calib-data / --eval-data.
DATASETS = ("fashion-mnist",)


def load_dataset(spec: str, split: str, data_dir: str | os.PathLike | None = None) -> TensorDataset:
    """Load split ``split`` of the data set named ``spec``.

    Raises:
        DataError: unknown name (the message lists the valid ones) or missing files (with how to get them).
    """
    if spec == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    raise DataError(f"unknown data set {spec!r}; choose one of: {', '.join(DATASETS)}")


def parse_normalize(text: str) -> Normalize:
    """``"MEAN,STD"`` (one value each) or ``"M1,..,Mc,S1,..,Sc"`` (one per channel) -> :class:`Normalize`."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"--normalize {text!r}: give numbers as MEAN,STD or M1,..,Mc,S1,..,Sc") from None
    if len(values) < 2 or len(values) % 2:
        raise DataError(f"--normalize {text!r}: give as many means as stds, e.g. 0.286,0.353")
    half = len(values) // 2
    return Normalize(values[:half], values[half:])
