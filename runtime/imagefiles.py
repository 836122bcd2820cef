"""Image data from files: ImageNet-style folders (decoded lazily, batch by batch) and numpy ``.npz`` arrays.

Folders follow torchvision's ``ImageFolder`` convention: ``ROOT/<class>/<...>/<image>``, classes sorted by folder
name give labels 0, 1, ...; files are listed in sorted order. A folder without class sub-folders holds unlabelled
images ``ROOT/<image>``, and an ``.npz`` file without a labels array unlabelled arrays.

Each image is decoded with PIL, converted to RGB (or greyscale for one-channel models), resized (shorter side to
``resize``, bilinear with antialiasing, as torchvision's ``Resize``), centre-cropped to ``crop`` and scaled to
[0, 1]. Normalisation is applied by the caller
(:class:`snnconvert.runtime.data.Normalize`), so the same images serve ANN and SNN.

Only the images of the current batch are in memory, so an ImageNet validation folder (50 000 images) works.
"""
from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from snnconvert.convert.errors import DataError, first_line
from snnconvert.runtime.data import TensorDataset, take_labels

log = logging.getLogger(__name__)

#: File suffixes read from image folders (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
#: Accepted ``.npz`` layouts: (images key, labels key) per split.
NPZ_SPLIT_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
NPZ_POOL_KEYS = (("x", "y"), ("images", "labels"))


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a tensor.

    Attributes:
        channels: 3 (RGB) or 1 (greyscale).
        resize: shorter side after resizing (None: keep the size).
        crop: side of the centre crop (None: no crop; then every image must have the same size).
        workers: threads decoding the files of a folder (0: in the caller's thread). With workers, the next batch
            is decoded while the caller works on the current one; the images and their order do not change.
    """

    channels: int = 3
    resize: int | None = None
    crop: int | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"images must be read with 1 or 3 channels, got {self.channels}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise DataError(f"--num-workers must be a number of threads >= 0, got {self.workers!r}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise DataError(f"--{name} must be a positive number of pixels, got {value!r}")
        # the shorter side after resizing is `resize`: a larger crop would be padded with black borders
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise DataError(f"--crop {self.crop} is larger than --resize {self.resize} (the shorter side after "
                            "resizing): the crop would be padded; give --crop N <= --resize N")

    def load(self, path: Path) -> torch.Tensor:
        """Decode one file to float32 ``[C, H, W]`` in [0, 1].

        Raises:
            DataError: the file cannot be decoded.
        """
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        try:
            with Image.open(path) as im:
                if im.mode in _WIDE_GREY:  # 16-bit greyscale: PIL's convert("L") would clip every value above 255
                    im = _wide_grey(im, self.channels)
                else:
                    im = im.convert("RGB" if self.channels == 3 else "L")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        if self.resize is not None:
            im = TF.resize(im, self.resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.crop is not None:
            width, height = (im.shape[-1], im.shape[-2]) if isinstance(im, torch.Tensor) else im.size
            if self.crop > min(width, height):  # torchvision pads a crop larger than the image with zeros: refuse it
                after = f" after resizing to {self.resize}" if self.resize is not None else ""
                raise DataError(f"--crop {self.crop} is larger than image {path} ({width}x{height} pixels"
                                f"{after}): the crop would be padded; give --crop N <= {min(width, height)} or a "
                                "larger --resize N")
            im = TF.center_crop(im, self.crop)
        if isinstance(im, torch.Tensor):
            return im
        return TF.pil_to_tensor(im).float().div_(255.0)


def _image_file(path: Path, root: Path) -> bool:
    """An image file under ``root`` that is not hidden: no part of its path below ``root`` starts with a dot (macOS's
    ``._name.png`` resource forks, ``.ipynb_checkpoints`` copies), as hidden class folders are skipped."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and \
        not any(part.startswith(".") for part in path.relative_to(root).parts)


#: PIL modes of greyscale images wider than 8 bits (16-bit PNG / TIFF), and their full scale
_WIDE_GREY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


def _wide_grey(im, channels: int) -> torch.Tensor:
    """A 16-bit greyscale image as float32 ``[channels, H, W]`` in [0, 1] (its values over 65 535; the grey plane
    repeated for an RGB model), resized and cropped as tensors afterwards."""
    plane = torch.from_numpy(np.asarray(im, dtype=np.float32) / _WIDE_GREY[im.mode]).clamp_(0, 1)
    return plane.unsqueeze(0).expand(channels, -1, -1).contiguous()


@dataclass(frozen=True)
class FolderDataset:
    """Images in an ImageNet-style folder, or in a folder without class sub-folders (unlabelled: ``labels`` None),
    decoded batch by batch (same interface as ``TensorDataset``)."""

    name: str
    split: str
    files: tuple[Path, ...]
    labels: torch.Tensor | None
    classes: tuple[str, ...]
    preprocess: Preprocess

    @classmethod
    def scan(cls, root: Path, *, name: str, preprocess: Preprocess | None = None) -> FolderDataset:
        """List ``root/<class>/**/<image>``, or the images directly in ``root`` when no sub-folder holds any
        (unlabelled). Hidden files and folders (a name starting with a dot) are left out.

        Raises:
            DataError: no images, or images both in ``root`` and in class sub-folders.
        """
        root = Path(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files, labels = [], []
        empty = []
        for label, cls_name in enumerate(classes):
            found = sorted(p for p in (root / cls_name).rglob("*") if _image_file(p, root))
            files += found
            labels += [label] * len(found)
            if not found:
                empty.append(cls_name)
        loose = sorted(p for p in root.iterdir() if _image_file(p, root))
        if files and empty:
            log.warning("%s: class folder(s) %s hold no images; their labels are kept (the sorted class folders "
                        "number the labels, as in torchvision's ImageFolder), check that the folder is complete",
                        name, ", ".join(empty))
        if files and len(classes) == 1:
            log.warning("%s: %s has one class folder (%s): all its images get label 0; for the images of some classes "
                        "only, keep every class folder (empty ones too: the sorted folders number the labels)",
                        name, root, classes[0])
        if files and loose:
            raise DataError(f"{name}: {root} holds {len(loose)} image(s) next to class sub-folders (e.g. "
                            f"{loose[0].name}); put every image in a class folder (labelled), or give a folder of "
                            "images alone (unlabelled)")
        if loose:
            log.debug("%s: %d unlabelled images", name, len(loose))
            return cls(name, "folder", tuple(loose), None, (), preprocess or Preprocess())
        if not files:
            raise DataError(f"{name}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {root} or under "
                            f"{root}/<class>/")
        log.debug("%s: %d images in %d classes", name, len(files), len(classes))
        return cls(name, "folder", tuple(files), torch.tensor(labels, dtype=torch.int64), tuple(classes),
                   preprocess or Preprocess())

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, n: int | None) -> FolderDataset:
        """The first ``n`` files (in class order; prefer :meth:`select` with a permutation)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"asked for {n} images from {self.name}; give a positive count")
        return self.select(torch.arange(n))

    def select(self, indices: torch.Tensor) -> FolderDataset:
        """The files at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return FolderDataset(self.name, self.split, tuple(self.files[i] for i in idx), take_labels(self.labels, idx),
                             self.classes, self.preprocess)

    def real_files(self) -> list[str]:
        """Resolved paths (symlinks followed), to detect files shared by two folders."""
        return [str(p.resolve()) for p in self.files]

    def _stack(self, paths: tuple[Path, ...]) -> torch.Tensor:
        return self._stacked([self.preprocess.load(p) for p in paths])

    def _stacked(self, images: list[torch.Tensor]) -> torch.Tensor:
        shapes = {tuple(x.shape) for x in images}
        if len(shapes) > 1:
            a, b = sorted(shapes)[:2]
            raise DataError(f"{self.name}: images have different sizes ({a} vs {b}); pass --resize N and --crop N "
                            "(or use a model whose card gives them)")
        return torch.stack(images)

    def example(self, n: int) -> torch.Tensor:
        """The first ``n`` images, decoded."""
        return self._stack(self.files[:n])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield decoded ``(images, labels)`` batches in order (labels None for unlabelled images;
        ``preprocess.workers`` threads decode them, one batch ahead of the caller)."""
        starts = range(0, len(self), batch_size)
        if self.preprocess.workers == 0:
            for start in starts:
                yield (self._stack(self.files[start : start + batch_size]),
                       take_labels(self.labels, slice(start, start + batch_size)))
            return
        with ThreadPoolExecutor(self.preprocess.workers, thread_name_prefix="snnconvert-decode") as pool:
            def submit(start: int) -> list[Future]:
                return [pool.submit(self.preprocess.load, p) for p in self.files[start : start + batch_size]]

            pending = submit(0) if starts else []
            try:
                for start in starts:
                    current, pending = pending, (submit(start + batch_size) if start + batch_size < len(self)
                                                 else [])
                    images = self._stacked([f.result() for f in current])
                    yield images, take_labels(self.labels, slice(start, start + batch_size))
            finally:  # an error or a caller that stops early: drop the batch decoded ahead
                for future in pending:
                    future.cancel()


_NPZ_HOW = "save the arrays with numpy.savez(PATH, x=images, y=labels) (or x_train/y_train/x_test/y_test)"


def _open_npz(path: Path):
    try:
        with open(path, "rb") as head:
            magic = head.read(6)
        if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06") and magic != b"\x93NUMPY":
            # np.load would take it for a pickle and advise allow_pickle, which must not be given to untrusted files
            raise DataError(f"{path} is not a numpy .npz file (it is not a zip archive of arrays); {_NPZ_HOW}")
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as a numpy .npz file: {first_line(exc)}; {_NPZ_HOW}") from exc
    if not isinstance(f, np.lib.npyio.NpzFile):  # np.load returns a bare array for a .npy file
        raise DataError(f"{path} holds a single numpy array of shape {getattr(f, 'shape', '?')}, not an .npz "
                        f"archive of named arrays; {_NPZ_HOW}")
    return f


def _npz_array(f, key: str, where: str) -> np.ndarray:
    """One array of an open .npz file; object arrays (pickled Python objects) are never loaded."""
    try:
        return f[key]
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise DataError(f"{where} is an object array (pickled Python objects, e.g. images of different sizes), "
                            "which is not read; store a numeric array (uint8 or float images of one size, integer "
                            "labels)") from None
        raise DataError(f"{where}: cannot read the array: {first_line(exc)}; {_NPZ_HOW}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: cannot read the array: {first_line(exc)}; {_NPZ_HOW}") from exc


def _has_splits(keys) -> bool:
    return all(xk in keys for xk, _ in NPZ_SPLIT_KEYS.values())


def npz_has_splits(path: Path) -> bool:
    """Whether ``path`` holds the two-split layout (``x_train`` and ``x_test``, with ``y_train`` / ``y_test``
    unless unlabelled)."""
    with _open_npz(path) as f:
        return _has_splits(f.files)


def _images_to_tensor(x: np.ndarray, where: str) -> torch.Tensor:
    """uint8 or float arrays ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` -> float32 ``[N, C, H, W]``."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = np.moveaxis(x, -1, 1)  # channels last -> first
    elif x.ndim != 4:
        raise DataError(f"{where}: images must be [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if np.issubdtype(x.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise DataError(f"{where}: images contain NaN or infinite values")
        if t.numel() and float(t.max()) > 2.0:
            log.warning("%s: float images go up to %.4g: used as they are (uint8 arrays are scaled to [0, 1], float "
                        "ones are not); for a model that takes [0, 1], divide them by 255 (CLI: --normalize 0,255)",
                        where, float(t.max()))
        return t
    raise DataError(f"{where}: images must be uint8 (0-255) or float, got {x.dtype}")


def load_npz(path: Path, split: str, *, name: str) -> TensorDataset:
    """Load split ``split`` of a two-split ``.npz`` file, or the whole pool of a one-split file; without a labels
    array the images are unlabelled (labels None).

    Raises:
        DataError: unreadable file, unknown layout, bad shapes or label values.
    """
    with _open_npz(path) as f:
        keys = set(f.files)
        if _has_splits(keys):
            if split not in NPZ_SPLIT_KEYS:
                raise DataError(f"{name}: unknown split {split!r}; use train or test")
            xk, yk = NPZ_SPLIT_KEYS[split]
            split_name = split
        else:
            pair = next(((xk, yk) for xk, yk in NPZ_POOL_KEYS if xk in keys), None)
            if pair is None:
                layouts = ["x_train/y_train/x_test/y_test"] + [f"{a}/{b}" for a, b in NPZ_POOL_KEYS]
                raise DataError(f"{name}: arrays {sorted(keys)} found; expected one of the layouts "
                                f"{', '.join(layouts)} (labels may be left out: unlabelled images)")
            xk, yk = pair
            split_name = "all"
        x = _npz_array(f, xk, f"{name}[{xk}]")
        y = _npz_array(f, yk, f"{name}[{yk}]") if yk in keys else None
        other_labels = sorted(keys & ({k for _, k in NPZ_SPLIT_KEYS.values()} | {k for _, k in NPZ_POOL_KEYS}))
        if y is None and other_labels:  # a misnamed labels array: the images would be compared with the ANN only
            log.warning("%s: the images %s have no labels array %s, but the file holds %s: they are used as "
                        "unlabelled images; name their labels %s", name, xk, yk, ", ".join(other_labels), yk)
    images = _images_to_tensor(x, f"{name}[{xk}]")
    if y is None:
        return TensorDataset(name, split_name, images, None)
    if np.issubdtype(y.dtype, np.floating) and y.ndim >= 1 and len(y) == len(images):
        targets = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        if not torch.isfinite(targets).all():
            raise DataError(f"{name}[{yk}]: regression targets contain NaN or infinite values")
        return TensorDataset(name, split_name, images, targets)
    per_pixel = y.ndim >= 2 and tuple(y.shape[1:]) == tuple(images.shape[2:])
    if not (y.ndim == 1 or per_pixel) or not np.issubdtype(y.dtype, np.integer) or len(y) != len(images):
        raise DataError(f"{name}[{yk}]: labels must be an integer array with one label per image [N] or per pixel "
                        f"[N, {', '.join(map(str, images.shape[2:]))}], or float regression targets [N, ...] "
                        f"(got shape {y.shape}, dtype {y.dtype}, {len(images)} images)")
    if len(y) and y.min() < 0:
        raise DataError(f"{name}[{yk}]: labels must be >= 0")
    return TensorDataset(name, split_name, images, torch.from_numpy(y.astype(np.int64)))
