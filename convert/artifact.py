"""Saved SNN artifacts: a folder with ``config.json``, ``thresholds.pt``, ``report.json``, ``source.json`` and the
source model (``ann_state.pt`` for Python factories, ``model.onnx`` for ONNX files). Modules are never pickled:
loading rebuilds the ANN from its source and re-runs the passes with the stored thresholds.

Writing is atomic: everything goes to a temporary folder next to the target, which is renamed at the end, so an
interrupted save leaves no half-written artifact.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ArtifactError, ConfigError, ModelLoadError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSource:
    """How to rebuild an ANN: a Python factory (``"pkg.module:fn"`` or ``"path/file.py:fn"``) or an ONNX file.

    ``kwargs`` are passed to the factory. ``meta`` carries free-form facts (zoo name, data set, preprocessing).
    """

    kind: str
    ref: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def python(cls, ref: str, **kwargs) -> ModelSource:
        return cls("python", ref, dict(kwargs))

    @classmethod
    def onnx(cls, path: str | os.PathLike) -> ModelSource:
        return cls("onnx", str(Path(path).resolve()))

    def build(self) -> torch.nn.Module | str:
        """Instantiate the model (Python) or return the ONNX path.

        Raises:
            ModelLoadError: the file, module or factory does not exist or fails.
        """
        if self.kind == "onnx":
            if not Path(self.ref).is_file():
                raise ModelLoadError(f"ONNX file {self.ref} does not exist")
            return self.ref
        if self.kind != "python":
            raise ModelLoadError(f"unknown model source kind {self.kind!r}")
        factory = resolve_factory(self.ref)
        try:
            model = factory(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelLoadError(f"{self.ref}() failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise ModelLoadError(f"{self.ref}() returned {type(model).__name__}, not a torch.nn.Module")
        return model


def resolve_factory(ref: str):
    """``"pkg.module:fn"`` or ``"path/to/file.py:fn"`` -> the callable.

    Raises:
        ModelLoadError: malformed reference, missing file/module or attribute.
    """
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise ModelLoadError(
            f"model reference {ref!r} must look like path/to/file.py:factory or package.module:factory")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"snnconvert_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {module_part!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelLoadError(f"{module_part} has no callable {attr!r}; callables there: {', '.join(names[:20])}")
    return factory


def ordinary_permissions(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile.mkstemp`` / ``mkdtemp`` (owner-only) the permissions a plain
    ``open`` / ``mkdir`` would give it under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield the name of a new temporary file next to ``path`` (its folder is created if missing); when the block
    succeeds the file gets a plainly created file's permissions and is renamed over ``path``, otherwise it is
    removed: ``path`` is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save(result, path: str | os.PathLike) -> Path:
    """Write a conversion result as an artifact folder at ``path`` (replacing an existing artifact atomically).

    Raises:
        ArtifactError: the result has no rebuildable source (pass ``source=`` to ``convert``).
    """
    if result.source is None:
        raise ArtifactError("this conversion has no model source to save; pass source=ModelSource.python("
                            "'pkg.module:factory') (or an .onnx path) to convert()")
    target = Path(path)
    if target.exists() and not (target / "source.json").is_file():
        raise ArtifactError(f"{target} exists and is not an snnconvert artifact; choose another --output path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_json(tmp / "config.json", {"format_version": FORMAT_VERSION, "config": result.config.to_dict()})
        torch.save({k: v.detach().cpu() for k, v in result.thresholds.items()}, tmp / "thresholds.pt")
        _write_json(tmp / "report.json", result.report.to_dict())
        source = asdict(result.source)
        if result.source.kind == "onnx":
            import onnx

            onnx.save_model(onnx.load(result.source.ref), str(tmp / "model.onnx"))
            source["ref"] = "model.onnx"
        else:
            if result.ann_state is None:
                raise ArtifactError("the conversion kept no weights snapshot; convert an nn.Module to save it")
            torch.save(result.ann_state, tmp / "ann_state.pt")
        _write_json(tmp / "source.json", source)
        ordinary_permissions(tmp)  # mkdtemp's folder is owner-only; a saved artifact is an ordinary folder
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class Artifact:
    """A loaded artifact: the rebuilt ANN (module or ONNX path), thresholds, config and the saved report."""

    model: torch.nn.Module | str
    thresholds: dict[str, torch.Tensor]
    config: ConversionConfig
    report: dict[str, Any]
    source: ModelSource


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read an artifact folder written by :func:`save` and rebuild its ANN.

    Raises:
        ArtifactError: missing files or an unknown format version.
    """
    root = Path(path)
    needed = ["config.json", "thresholds.pt", "report.json", "source.json"]
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise ArtifactError(f"{root} is not an snnconvert artifact (missing {', '.join(missing)})")
    cfg_doc = json.loads((root / "config.json").read_text())
    if cfg_doc.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format {cfg_doc.get('format_version')} is not supported "
                            f"(this snnconvert reads format {FORMAT_VERSION}); convert the model again")
    saved = dict(cfg_doc["config"])
    saved.setdefault("identity_neurons", "off")  # written before identity neurons existed: there were none
    try:
        config = ConversionConfig.from_dict(saved)
    except ConfigError as exc:
        raise ArtifactError(f"{root}: invalid config.json: {exc}") from exc
    thresholds = torch.load(root / "thresholds.pt", weights_only=True)
    source = ModelSource(**json.loads((root / "source.json").read_text()))
    if source.kind == "onnx":
        model: torch.nn.Module | str = str(root / source.ref)
    else:
        model = source.build()
        state = torch.load(root / "ann_state.pt", weights_only=True)
        model.load_state_dict(state)
        model.eval()
    return Artifact(model, thresholds, config, json.loads((root / "report.json").read_text()), source)
