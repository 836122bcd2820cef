"""Data sets read from local disk; nothing is ever downloaded.

Specs accepted by :func:`load_calib_eval` (the CLI's ``--calib-data`` / ``--eval-data``):

- ``fashion-mnist``: the IDX files (Debian's ``dataset-fashion-mnist``, ``--data-dir`` or ``$SNNCONVERT_DATA_DIR``);
  calibration reads the TRAIN split, evaluation the TEST split;
- ``imagefolder:PATH``: an ImageNet-style folder ``PATH/<class>/<image>`` (classes sorted by name, as torchvision's
  ``ImageFolder``), or a folder of images without labels ``PATH/<image>`` (a detector's COCO ``train2017``),
  decoded with the model's preprocessing (resize, centre crop; :mod:`snnconvert.runtime.imagefiles`);
- ``npz:PATH`` (or any ``PATH.npz``): numpy arrays ``x_train``/``y_train``/``x_test``/``y_test`` (two splits) or
  ``x``/``y`` or ``images``/``labels`` (one split), or the image arrays alone (unlabelled); integer labels one per
  image ``[N]`` or one per pixel ``[N, H, W]`` (segmentation: evaluated by pixel accuracy and mean IoU,
  ``runtime/evaluate.py``), or float targets ``[N, ...]`` (regression: evaluated by mean squared and absolute error).

Images come out as float32 ``[N, C, H, W]`` (uint8 files scaled to [0, 1]); labels as int64, regression targets as
float32; unlabelled images with labels None (calibration needs no labels; their evaluation compares the SNN's
outputs with the ANN's: ``runtime/scores.py``, task ``fidelity``). Normalisation
``(x - mean) / std`` is applied on the fly by :class:`Normalize`.

Calibration and evaluation never overlap: two-split sources use their train/test splits; when both flags name the
same one-split source (the same folder or file), a seeded permutation holds the calibration images out and the
evaluation uses only the rest; two different folders are checked for shared files. Images held out to choose
among candidate conversions (``select_images``: the T of a sweep) come from the calibration source, after the
calibration images.
"""
from __future__ import annotations

import gzip
import logging
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from snnconvert.convert.errors import ConfigError, DataError

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
    env = os.environ.get(DATA_DIR_ENV)
    if env:  # the user's choice, like --data-dir: not silently replaced by the system's copy
        return [Path(env), Path(env) / "FashionMNIST" / "raw"]
    return [DEBIAN_FASHION_MNIST]


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
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        raise DataError(f"Fashion-MNIST not found in ${DATA_DIR_ENV} (looked in {where}): point it at the folder of "
                        f"the IDX files, or unset it to use {DEBIAN_FASHION_MNIST}")
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
    """An in-memory split: ``images`` float32 ``[N, C, H, W]`` in [0, 1]; ``labels`` int64 ``[N]`` (classes) or
    ``[N, H, W]`` (per pixel), float32 ``[N, ...]`` (regression targets), or None (unlabelled images: batches are
    ``(images, None)`` and the evaluation compares the SNN's outputs with the ANN's)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None) -> TensorDataset:
        """The first ``n`` samples (deterministic); ``None`` keeps everything."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"asked for {n} images from {self.name}/{self.split}; give a positive count")
        return TensorDataset(self.name, self.split, self.images[:n], take_labels(self.labels, slice(0, n)))

    def select(self, indices: torch.Tensor) -> TensorDataset:
        """The samples at ``indices`` (in that order)."""
        return TensorDataset(self.name, self.split, self.images[indices], take_labels(self.labels, indices))

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` images (for tracing and shape checks)."""
        return self.images[:n]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(images, labels)`` in order, ``batch_size`` at a time (labels None for unlabelled images)."""
        for start in range(0, len(self), batch_size):
            batch = slice(start, start + batch_size)
            yield self.images[batch], take_labels(self.labels, batch)


def take_labels(labels: torch.Tensor | None, index) -> torch.Tensor | None:
    """``labels[index]``, or None for unlabelled images."""
    return None if labels is None else labels[index]


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
        if not all(math.isfinite(v) for v in (*mean, *std)):  # NaN passes `s <= 0` and poisons every input
            raise DataError(f"normalize: mean and std must be finite numbers, got mean {list(mean)}, std {list(std)}")
        if any(s <= 0 for s in std):
            raise DataError(f"normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ImageDataset(Protocol):
    """What calibration and evaluation need from a data set (in memory or read from files on the fly)."""

    name: str
    split: str
    labels: torch.Tensor | None

    def __len__(self) -> int: ...
    def subset(self, n: int | None) -> ImageDataset: ...
    def select(self, indices: torch.Tensor) -> ImageDataset: ...
    def example(self, n: int) -> torch.Tensor: ...
    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]: ...


#: Data set names and prefixes the CLI accepts for --calib-data / --eval-data.
DATASETS = ("fashion-mnist", "imagefolder:PATH", "npz:PATH")
#: Seed of the permutation that selects images from folders and one-split sources.
SELECTION_SEED = 0


@dataclass(frozen=True)
class DataSource:
    """A parsed data spec: ``kind`` is ``"fashion-mnist"``, ``"imagefolder"`` or ``"npz"``; ``path`` the resolved
    folder or file (None for Fashion-MNIST)."""

    spec: str
    kind: str
    path: Path | None = None

    @property
    def two_splits(self) -> bool:
        """Whether the source has its own train and test splits (else it is one pool of images)."""
        if self.kind == "fashion-mnist":
            return True
        if self.kind == "npz":
            from snnconvert.runtime.imagefiles import npz_has_splits

            return npz_has_splits(self.path)
        return False


def parse_data_spec(spec: str) -> DataSource:
    """``fashion-mnist`` | ``imagefolder:PATH`` | ``npz:PATH`` | ``PATH.npz`` -> :class:`DataSource`.

    Raises:
        DataError: unknown spec (the message lists the valid forms) or a missing folder/file.
    """
    if spec == "fashion-mnist":
        return DataSource(spec, "fashion-mnist")
    kind, sep, rest = spec.partition(":")
    if spec.endswith(".npz") and kind != "npz":
        kind, rest, sep = "npz", spec, ":"
    if sep and kind in ("imagefolder", "npz") and rest:
        path = Path(rest).expanduser()
        if kind == "imagefolder" and not path.is_dir():
            raise DataError(f"{spec}: folder {path} does not exist; give an ImageNet-style folder PATH/<class>/<image> "
                            "or a folder of images")
        if kind == "npz" and not path.is_file():
            raise DataError(f"{spec}: file {path} does not exist")
        return DataSource(spec, kind, path.resolve())
    raise DataError(f"unknown data set {spec!r}; choose one of: {', '.join(DATASETS)}")


def load_dataset(
    spec: str | DataSource,
    split: str,
    data_dir: str | os.PathLike | None = None,
    preprocess=None,
) -> ImageDataset:
    """Load split ``split`` (``"train"``, ``"test"``; one-split sources ignore it) of the data set ``spec``.

    Args:
        spec: a data spec (see the module docstring) or a parsed :class:`DataSource`.
        split: ``"train"`` or ``"test"``.
        data_dir: Fashion-MNIST folder override.
        preprocess: :class:`snnconvert.runtime.imagefiles.Preprocess` for image folders (resize, crop, channels).

    Raises:
        DataError: unknown name (the message lists the valid ones), missing or unreadable files.
    """
    source = spec if isinstance(spec, DataSource) else parse_data_spec(spec)
    if source.kind == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    from snnconvert.runtime import imagefiles

    if source.kind == "npz":
        return imagefiles.load_npz(source.path, split, name=source.spec)
    return imagefiles.FolderDataset.scan(source.path, name=source.spec, preprocess=preprocess)


def _take(ds: ImageDataset, n: int | None, *, shuffle: bool, flag: str, where: str | None = None
          ) -> tuple[ImageDataset, str]:
    """The first ``n`` images, or ``n`` images of a seeded permutation (folders are sorted by class). Asking for
    more than there are takes them all, with a warning (``flag``: the option asked for ``n``; ``where``: what
    holds the images, default the data set and split), so that a report's image count is never a surprise."""
    if n is not None and n > len(ds):
        log.warning("%s %d: %s only %d images; using all %d", flag, n,
                    where or f"{ds.name} ({ds.split}) holds", len(ds), len(ds))
    if n is None or n >= len(ds):
        return ds, "all"
    if n <= 0:
        raise DataError(f"asked for {n} images from {ds.name}; give a positive count")
    if not shuffle:
        return ds.subset(n), f"first {n}"
    return ds.select(_order(ds, True)[:n]), f"{n} of a seeded permutation (seed {SELECTION_SEED})"


def _order(ds: ImageDataset, shuffle: bool) -> torch.Tensor:
    """The order images are taken from ``ds`` in: as stored, or the seeded permutation (folders)."""
    if shuffle:
        return torch.randperm(len(ds), generator=torch.Generator().manual_seed(SELECTION_SEED))
    return torch.arange(len(ds))


@dataclass
class Splits:
    """The images of one run, pairwise disjoint: ``calib`` (thresholds), ``eval`` (the reported accuracy) and, when
    asked for, ``select`` (held-out images of the calibration source that choose among candidate conversions, e.g.
    the T of a sweep, so that the choice never sees the evaluation images). Each ``*_info`` (for the report) holds
    ``dataset``, ``split``, ``selection`` and ``images``."""

    calib: ImageDataset
    eval: ImageDataset
    calib_info: dict
    eval_info: dict
    select: ImageDataset | None = None
    select_info: dict | None = None


def _sampled(source: DataSource) -> bool:
    """Whether images are taken as a seeded sample rather than the first N: folders list their files by class."""
    return source.kind == "imagefolder"


def load_calib_eval(
    calib_spec: str,
    eval_spec: str,
    *,
    calib_images: int,
    eval_images: int | None,
    select_images: int | None = None,
    data_dir: str | os.PathLike | None = None,
    preprocess=None,
) -> Splits:
    """Load the calibration, evaluation and (optional) selection sets so that no two share an image.

    The selection images are the ``select_images`` images that follow the calibration images in the calibration
    source's order (its train split, or the seeded permutation of a folder or one-split pool), so adding them never
    changes the calibration set; a one-split pool then evaluates on what is left after both.

    Raises:
        DataError: bad specs, missing files, too few images, or two folders that share files.
    """
    if calib_images <= 0:
        raise DataError(f"calibration needs a positive number of images, got {calib_images}")
    if select_images is not None and select_images <= 0:
        raise DataError(f"the held-out selection needs a positive number of images, got {select_images}")
    held = select_images or 0
    cs, es = parse_data_spec(calib_spec), parse_data_spec(eval_spec)
    select = select_info = None
    if same_pool(cs, es):
        pool = load_dataset(cs, "all", data_dir, preprocess)
        if calib_images + held >= len(pool):
            wanted = f"{calib_images} for calibration" + (f" and {held} for selection" if held else "")
            raise DataError(f"{cs.spec} holds {len(pool)} images: too few to hold out {wanted} and keep some for "
                            "evaluation; lower --calib-images" + (" or --select-images" if held else "")
                            + " or give a separate --eval-data")
        perm = _order(pool, True)
        calib, rest = pool.select(perm[:calib_images]), pool.select(perm[calib_images + held:])
        evald, sel = _take(rest, eval_images, shuffle=False, flag="--eval-images",
                           where=f"after the hold-out, {cs.spec} has")
        how = f"seeded permutation (seed {SELECTION_SEED}) of one pool"
        calib_info = {"split": "held out for calibration", "selection": f"first {calib_images} of a {how}"}
        eval_info = {"split": "rest after the calibration" + (" and selection hold-outs" if held else " hold-out"),
                     "selection": f"{'all' if sel == 'all' else sel} of the remaining {len(rest)}"}
        if held:
            select = pool.select(perm[calib_images:calib_images + held])
            select_info = {"split": "held out for selection",
                           "selection": f"the {held} after the calibration images of the same permutation"}
    else:
        calib_all, eval_all = load_dataset(cs, "train", data_dir, preprocess), load_dataset(es, "test", data_dir,
                                                                                            preprocess)
        if cs.kind == es.kind == "imagefolder":
            _check_disjoint(calib_all, eval_all)
        mixed = _sampled(cs)
        if held:
            if calib_images + held > len(calib_all):
                raise DataError(f"{cs.spec} ({calib_all.split}) holds {len(calib_all)} images: too few for "
                                f"{calib_images} calibration and {held} selection images; lower --calib-images or "
                                "--select-images")
            order = _order(calib_all, mixed)
            select = calib_all.select(order[calib_images:calib_images + held])
            select_info = {"split": select.split,
                           "selection": f"the {held} after the calibration images"
                                        + (f" (seeded permutation, seed {SELECTION_SEED})" if mixed else "")}
        calib, calib_sel = _take(calib_all, calib_images, shuffle=mixed, flag="--calib-images")
        evald, eval_info = _eval_part(eval_all, es, eval_images)
        calib_info = {"split": calib.split, "selection": calib_sel}
    calib_info.update(dataset=cs.spec, images=len(calib))
    eval_info.update(dataset=es.spec, images=len(evald))
    if select_info is not None:
        select_info.update(dataset=cs.spec, images=len(select))
    if len(evald) == 0:
        raise DataError(f"{es.spec}: no images left for evaluation")
    return Splits(calib, evald, calib_info, eval_info, select, select_info)


def load_calib(calib_spec: str, *, calib_images: int, data_dir: str | os.PathLike | None = None, preprocess=None
               ) -> ImageDataset:
    """The calibration images of a run whose evaluation images came from another source, as
    :func:`load_calib_eval` took them (the first ``calib_images`` of the train split; a folder's seeded sample).

    Raises:
        DataError: bad spec, missing files.
    """
    source = parse_data_spec(calib_spec)
    calib, _ = _take(load_dataset(source, "train", data_dir, preprocess), calib_images,
                     shuffle=_sampled(source), flag="--calib-images")
    return calib


def same_pool(calib: DataSource, evaluation: DataSource) -> bool:
    """Whether calibration and evaluation read the same one-split pool (same folder or file): then a seeded
    permutation holds the calibration images out of the evaluation."""
    return calib.kind == evaluation.kind and calib.path == evaluation.path and not calib.two_splits


def _eval_part(eval_all: ImageDataset, source: DataSource, eval_images: int | None) -> tuple[ImageDataset, dict]:
    """The evaluation images of a split (image folders: a seeded sample) and their ``split`` / ``selection``."""
    evald, selection = _take(eval_all, eval_images, shuffle=_sampled(source), flag="--eval-images")
    return evald, {"split": evald.split, "selection": selection}


def load_eval(
    eval_spec: str, *, eval_images: int | None, data_dir: str | os.PathLike | None = None, preprocess=None,
) -> tuple[ImageDataset, dict]:
    """The evaluation images alone (the TEST split of a two-split source, all of a one-split one) and their report
    entry (``dataset``, ``split``, ``selection``, ``images``): for an SNN whose calibration images are not known.

    Raises:
        DataError: bad spec, missing files, no images.
    """
    source = parse_data_spec(eval_spec)
    evald, info = _eval_part(load_dataset(source, "test", data_dir, preprocess), source, eval_images)
    if len(evald) == 0:
        raise DataError(f"{source.spec}: no images to evaluate")
    return evald, {**info, "dataset": source.spec, "images": len(evald)}


def _check_disjoint(a, b) -> None:
    shared = set(a.real_files()) & set(b.real_files())
    if shared:
        example = sorted(shared)[0]
        raise DataError(f"the calibration and evaluation folders share {len(shared)} image file(s) (e.g. {example}); "
                        "use disjoint folders, or give the same folder to both flags to split it without overlap")


def parse_normalize(text: str) -> Normalize:
    """``"MEAN,STD"`` (one value each) or ``"M1,..,Mc,S1,..,Sc"`` (one per channel) -> :class:`Normalize`."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"--normalize {text!r}: give numbers as MEAN,STD or M1,..,Mc,S1,..,Sc") from None
    if not all(math.isfinite(v) for v in values):  # float() accepts "nan" and "inf"
        raise DataError(f"--normalize {text!r}: means and stds must be finite numbers, e.g. 0.286,0.353")
    if len(values) < 2 or len(values) % 2:
        raise DataError(f"--normalize {text!r}: give as many means as stds, e.g. 0.286,0.353")
    half = len(values) // 2
    return Normalize(values[:half], values[half:])


def check_data_flags(specs: Sequence[str], *, resize: int | None, crop: int | None,
                     data_dir: str | os.PathLike | None = None, num_workers: int | None = None) -> None:
    """The user's own ``--resize`` / ``--crop`` (not a model card's defaults, which fit any source) must reach an
    image folder: arrays (Fashion-MNIST, ``.npz``) are used at their stored size, so the flags would be ignored; and
    ``--data-dir`` (the Fashion-MNIST folder) must reach Fashion-MNIST, and ``--num-workers`` an image folder.

    Raises:
        ConfigError: a flag is given and none of ``specs`` is data it applies to.
        DataError: a bad spec.
    """
    kinds = {parse_data_spec(spec).kind for spec in specs}
    listed = ", ".join(dict.fromkeys(specs))
    given = [f"--{name} {value}" for name, value in (("resize", resize), ("crop", crop)) if value is not None]
    if given and "imagefolder" not in kinds:
        raise ConfigError(f"{' and '.join(given)}: --resize/--crop apply to image folders (imagefolder:PATH); "
                          f"the data ({listed}) are arrays used at their stored size: "
                          "drop the flag(s), or resize the arrays before saving them")
    if num_workers is not None and "imagefolder" not in kinds:
        raise ConfigError(f"--num-workers {num_workers}: the threads decode image folders (imagefolder:PATH); the "
                          f"data ({listed}) are arrays already in memory: drop --num-workers")
    if data_dir is not None and "fashion-mnist" not in kinds:
        raise ConfigError(f"--data-dir {data_dir}: it is the folder of the Fashion-MNIST files, and the data here "
                          f"({listed}) name their own paths: drop --data-dir")
