"""Saved SNN artifacts: a folder with ``config.json``, ``thresholds.pt``, ``report.json``, ``source.json``, the
source model (``ann_state.pt`` for Python factories, ``model.onnx`` for ONNX files) and ``manifest.json`` (each
file's SHA-256 and a digest of the converted graph). Modules are never pickled: loading rebuilds the ANN from its
source and re-runs the passes with the stored thresholds; a file changed after saving, or model code that now builds
another graph, is refused.

Writing is atomic: everything goes to a temporary folder next to the target, which is renamed at the end, so an
interrupted save leaves no half-written artifact.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.config import ConversionConfig
from snnconvert.convert.errors import ArtifactError, ConfigError, ModelLoadError, first_line

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


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
        """A factory ``pkg.module:fn`` or ``path/to/file.py:fn`` (the file made absolute, so that a saved folder
        rebuilds from any working directory, as an ONNX source does)."""
        module_part, sep, attr = ref.rpartition(":")
        if sep and module_part.endswith(".py"):
            ref = f"{Path(module_part).resolve()}:{attr}"
        return cls("python", ref, dict(kwargs))

    @classmethod
    def onnx(cls, path: str | os.PathLike) -> ModelSource:
        return cls("onnx", str(Path(path).resolve()))

    def build(self, *, named_by: str = "a model reference") -> torch.nn.Module | str:
        """Instantiate the model (Python) or return the ONNX path. A Python source imports its module and calls its
        factory: user code, run only after :func:`resolve_factory` has checked that it names a model factory.

        Args:
            named_by: who named the factory, for the message that refuses one ("the folder" for a saved SNN).

        Raises:
            ModelLoadError: the file, module or factory does not exist, is not a model factory, or fails.
        """
        if self.kind == "onnx":
            if not Path(self.ref).is_file():
                raise ModelLoadError(f"ONNX file {self.ref} does not exist")
            return self.ref
        if self.kind != "python":
            raise ModelLoadError(f"unknown model source kind {self.kind!r}")
        factory = resolve_factory(self.ref, named_by=named_by)
        try:
            with _file_folder_importable(self.ref):
                model = factory(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelLoadError(f"{self.ref}() failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise ModelLoadError(f"{self.ref}() returned {type(model).__name__}, not a torch.nn.Module")
        return model


def _in_stdlib(module_name: str) -> bool:
    """Whether a module's top-level package is part of the standard library (``builtins`` included)."""
    return module_name.partition(".")[0] in sys.stdlib_module_names


def _stdlib_file(path: Path) -> bool:
    """Whether ``path`` is a standard-library file: inside the stdlib folders but not in a site-packages folder
    (a virtual environment's stdlib folder holds its site-packages)."""
    paths, where = sysconfig.get_paths(), path.resolve()

    def inside(keys: tuple[str, ...]) -> bool:
        return any(where.is_relative_to(Path(paths[k]).resolve()) for k in keys if k in paths)

    return inside(("stdlib", "platstdlib")) and not inside(("purelib", "platlib"))


def _not_a_factory(factory: Any) -> str | None:
    """Why ``factory`` must not be called to build a model, or None. Only a class (``nn.Module`` subclass) or a plain
    Python function defined outside the standard library is called: a saved folder's ``source.json`` names the
    callable, and without this check a tampered one could name ``os:system`` or ``subprocess:run`` with the shell
    command as kwargs."""
    if inspect.isclass(factory):
        if not issubclass(factory, torch.nn.Module):
            return f"{factory.__name__} is a class but not a torch.nn.Module"
    elif not inspect.isfunction(factory):
        return f"it is a {type(factory).__name__}, not a class or Python function"
    module_name = getattr(factory, "__module__", None) or ""
    if _in_stdlib(module_name):
        return f"it is defined in the standard library module {module_name}"
    return None


def _refused(ref: str, reason: str, named_by: str) -> ModelLoadError:
    return ModelLoadError(f"{ref!r} is not a model factory ({reason}); {named_by} must name a model factory: a class "
                          "or Python function defined outside the standard library")


def resolve_factory(ref: str, *, named_by: str = "a model reference"):
    """``"pkg.module:fn"`` or ``"path/to/file.py:fn"`` -> the callable, checked to be a model factory before anyone
    calls it: a class (``nn.Module`` subclass) or Python function defined outside the standard library. Importing
    the module runs its code (a user's model file), so a reference must come from a trusted source.

    Args:
        named_by: who named ``ref``, for the message that refuses it ("the folder" for a saved SNN).

    Raises:
        ModelLoadError: malformed reference, missing file/module or attribute, or not a model factory.
    """
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise ModelLoadError(
            f"model reference {ref!r} must look like path/to/file.py:factory or package.module:factory")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist" + (
                "; restore it there (a saved folder rebuilds its model from that file), or convert the model again"
                if named_by == "the folder" else ""))
        if _stdlib_file(path):
            raise _refused(ref, f"{path} is a standard library file", named_by)
        spec = importlib.util.spec_from_file_location(f"snnconvert_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            with _file_folder_importable(ref):
                spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        if _in_stdlib(module_part):  # refused before it is imported: some stdlib modules act on import
            raise _refused(ref, f"{module_part} is in the standard library", named_by)
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {module_part!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise ModelLoadError(f"{module_part} has no callable {attr!r}; callables there: {', '.join(names[:20])}")
    reason = _not_a_factory(factory)
    if reason is not None:
        raise _refused(ref, reason, named_by)
    return factory


@contextmanager
def _file_folder_importable(ref: str) -> Iterator[None]:
    """While a model file (``path/to/file.py:factory``) is imported and its factory runs, its folder is first on
    ``sys.path``, as for ``python path/to/file.py``: a model file that imports a module next to it
    (``from blocks import C2f``) loads. Taken off again after (no lasting change to the process)."""
    module_part = ref.rpartition(":")[0]
    folder = str(Path(module_part).resolve().parent) if module_part.endswith(".py") else None
    if folder is None or folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with suppress(ValueError):
            sys.path.remove(folder)


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
    path = writable_path(path)
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


def writable_path(path: str | os.PathLike) -> Path:
    """Where writing ``path`` puts the file: a symbolic link's target (the link stays a link), ``path`` otherwise.

    Raises:
        ConfigError: ``path`` exists and is neither a regular file nor a folder (``/dev/null``, a pipe): a rename
            over it would replace it.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ConfigError(f"{path} is not a regular file; give the path of a file to write")
    return path


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors' names, dtypes, shapes and values (on the CPU: the same wherever they live)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in blocks), as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


#: what :func:`graph_digest` hashes: 1, the nodes; 2 (since 2026-12-01), also each layer's settings
DIGEST_SCHEME = 2


def graph_digest(gm, scheme: int = DIGEST_SCHEME) -> dict[str, Any]:
    """A converted network's graph in a few numbers: its node count and a SHA-256 of every node's op, target and
    constant arguments in order (node names and tensor values left out), and (``scheme`` 2) of every layer's class
    and settings (``Conv2d(1, 4, kernel_size=(3, 3), stride=(2, 2))``: its ``extra_repr``; the stateful units' class
    alone), with the versions that traced it. Equal for the same model code; another forward (``x * 0.5`` added, a
    constant changed) or another layer setting (a stride, a padding mode) gives another digest."""
    index: dict[fx.Node, int] = {}

    def text(value) -> str:
        if isinstance(value, fx.Node):
            return f"%{index[value]}"
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(text(v) for v in value) + ")"
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{text(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
        if isinstance(value, torch.Tensor):
            return f"tensor{list(value.shape)}"
        if isinstance(value, (int, float, bool, str, type(None), torch.dtype, torch.device, slice)):
            return repr(value)
        return getattr(value, "__qualname__", type(value).__qualname__)

    lines = []
    for i, node in enumerate(gm.graph.nodes):
        index[node] = i
        target = node.target if isinstance(node.target, str) else text(node.target)
        args = node.args[:1] if node.target is torch._assert else node.args  # a guard's message names the example's
        line = f"{node.op} {target} {text(args)} {text(node.kwargs)}"  # batch and the file's path and line
        if scheme >= 2 and node.op == "call_module":
            module = gm.get_submodule(node.target)
            unit = isinstance(module, StepModule)  # a neuron or graded unit: its thresholds are saved on their own
            line += f" {type(module).__qualname__}" + ("" if unit else f"({module.extra_repr()})")
        lines.append(line)
    return {"nodes": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "torch": torch.__version__, "snnconvert": package_version(), "scheme": scheme}


def package_version() -> str:
    """This snnconvert's installed version ("unknown" when run from a source tree that is not installed)."""
    try:
        return version("snnconvert")
    except PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _check_unedited(result) -> None:
    """An artifact holds the model's weights and the thresholds at conversion and rebuilds the SNN from them: an SNN
    or a thresholds dict changed since (``result.digests``, taken at conversion) would be saved as another network.

    Raises:
        ArtifactError: naming which was changed and how to save the changed network.
    """
    digests = getattr(result, "digests", None)
    if digests is None:
        return
    snn_digest, thresholds_digest = digests
    if tensors_digest(result.snn.state_dict()) != snn_digest:
        raise ArtifactError("result.snn's weights or thresholds were changed after conversion; a saved SNN is rebuilt "
                            "from the model's weights and the thresholds at conversion, so it would not be this "
                            "network: convert the changed model again (changed thresholds: convert_with_thresholds) "
                            "and save that")
    if tensors_digest(result.thresholds) != thresholds_digest:
        raise ArtifactError("result.thresholds was changed after conversion, but result.snn still runs the thresholds "
                            "it was built with: build the SNN of the changed thresholds with convert_with_thresholds "
                            "and save that")


def save(result, path: str | os.PathLike) -> Path:
    """Write a conversion result as an artifact folder at ``path`` (replacing an existing artifact atomically).

    Raises:
        ArtifactError: the result has no rebuildable source (pass ``source=`` to ``convert``), its Python source
            builds another model than the converted one, or ``path`` is not a place a folder can be written to.
    """
    if result.source is None:
        raise ArtifactError("this conversion has no model source to save; pass source=ModelSource.python("
                            "'pkg.module:factory') (or an .onnx path) to convert()")
    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)  # a link stays a link
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} is a file; give a folder path for the saved SNN")
    if target.exists() and any(target.iterdir()) and not (target / "source.json").is_file():
        raise ArtifactError(f"{target} exists and is not an snnconvert artifact; choose another path")
    _check_json(result.source)
    _check_unedited(result)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:  # a file where a folder should be, no permission
        raise ArtifactError(f"cannot save to {target}: {exc.strerror or exc} ({exc.filename or target.parent}); "
                            "choose another path") from exc
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
            _check_rebuilds(result.source, result.ann_state)
            torch.save({k: v.detach().cpu() for k, v in result.ann_state.items()}, tmp / "ann_state.pt")
        _write_json(tmp / "source.json", source)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        _write_json(tmp / MANIFEST, {"format_version": FORMAT_VERSION, "files": files,
                                     "graph": graph_digest(result.snn.gm)})
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


def _check_json(source: ModelSource) -> None:
    """The factory's kwargs and the meta facts must be JSON values (source.json stores them).

    Raises:
        ArtifactError: naming the first value that is not.
    """
    for part in ("kwargs", "meta"):
        for key, value in getattr(source, part).items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise ArtifactError(f"cannot save: the model source's {part} {key!r} is a {type(value).__name__}, "
                                    "which source.json cannot store; pass JSON values (numbers, strings, lists, "
                                    "dicts) and build the object inside the factory (e.g. a dtype from its "
                                    "name)") from None


@dataclass
class Artifact:
    """A loaded artifact: the rebuilt ANN (module or ONNX path), thresholds, config and the saved report."""

    model: torch.nn.Module | str
    thresholds: dict[str, torch.Tensor]
    config: ConversionConfig
    report: dict[str, Any]
    source: ModelSource
    graph: dict[str, Any] | None = None  # graph_digest of the saved SNN (None: saved before manifests existed)


def _damaged(root: Path, name: str, what: str) -> ArtifactError:
    """The one line for a saved folder whose file ``name`` is missing or damaged: it cannot be repaired, only
    written again."""
    return ArtifactError(f"{root}: {name} {what}; convert the model again with --output DIR (or save the conversion "
                         "again with ConversionResult.save)")


def _read_json(root: Path, name: str) -> dict[str, Any]:
    """The JSON object in ``root / name``."""
    try:
        doc = json.loads((root / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(root, name, f"is not valid JSON ({first_line(exc)})") from exc
    if not isinstance(doc, dict):
        raise _damaged(root, name, f"holds a JSON {type(doc).__name__}, not an object")
    return doc


def _read_tensors(root: Path, name: str, what: str) -> dict[str, Any]:
    """The dict ``torch.save`` wrote to ``root / name`` (read as weights only: no code runs). torch's own message
    for a file it cannot read is paragraphs long, so the line names the file and what it should hold instead."""
    try:
        data = torch.load(root / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any damaged or foreign file
        raise _damaged(root, name, f"is not a valid {what} ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise _damaged(root, name, f"is not a valid {what} (it holds a {type(data).__name__})")
    return data


def state_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> str:
    """How ``state`` does not fit ``model``: up to 3 missing and 3 unexpected keys and the first shape mismatch,
    with counts (torch's own message lists every key over many lines); empty when it fits."""
    own = model.state_dict()

    def some(keys: list[str]) -> str:
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(repr(k) for k in keys[:3]) + more

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {some(unexpected)}")
        if missing and all(k.startswith("module.") for k in unexpected):
            parts.append("the file's keys start with 'module.' (saved from DataParallel): save model.module's "
                         "state dict")
    if shapes:
        first = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es), e.g. {first!r} (file {list(state[first].shape)}, model "
                     f"{list(own[first].shape)})")
    return "; ".join(parts)


def _split_buffers(model: torch.nn.Module, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state`` (a weights snapshot) as the model's state dict and its non-persistent buffers."""
    persistent, state = model.state_dict(), dict(state)
    buffers = {name: state.pop(name) for name, _ in list(model.named_buffers())
               if name not in persistent and name in state}
    return state, buffers


def _fit_state(root: Path, model: torch.nn.Module, state: dict[str, Any], ref: str) -> None:
    """Load the saved weights into the rebuilt ANN, and the non-persistent buffers saved with them; weights of
    another model are named by a few keys."""
    state, buffers = _split_buffers(model, state)
    mismatch = state_mismatch(model, state)
    if mismatch:
        raise _damaged(root, "ann_state.pt", f"does not fit the model {ref} ({mismatch}): it holds the weights of "
                                             "another model")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:  # e.g. a value that is not a tensor
        raise _damaged(root, "ann_state.pt", f"does not fit the model {ref} ({first_line(exc)})") from exc
    for name, value in buffers.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        module._buffers[attr] = value.to(module._buffers[attr].device) if module._buffers[attr] is not None else value


def _check_rebuilds(source: ModelSource, state: dict[str, Any]) -> None:
    """A Python source must rebuild a model the saved weights fit: checked when saving, not first when loading.

    Raises:
        ArtifactError: the factory fails, or builds a model of other layers or shapes.
    """
    try:
        model = source.build()
    except ModelLoadError as exc:
        raise ArtifactError(f"cannot save: the model source {source.ref!r} does not rebuild the model ({exc})") from exc
    mismatch = state_mismatch(model, _split_buffers(model, state)[0])
    if mismatch:
        raise ArtifactError(f"cannot save: the model source {source.ref!r} (kwargs {source.kwargs}) builds another "
                            f"model than the converted one ({mismatch}); pass the factory and kwargs of this model")


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Read an artifact folder written by :func:`save` and rebuild its ANN.

    A folder whose ``source.json`` names a Python factory imports that module and calls the factory (after checking
    that it is a class or Python function defined outside the standard library): like any model code, a saved
    folder must come from a trusted source.

    Raises:
        ArtifactError: not an artifact folder, a missing or damaged file (named, with what to do), an unknown format
            version, or a model source that cannot be rebuilt or is not a model factory.
    """
    root = Path(path)
    needed = ["config.json", "thresholds.pt", "report.json", "source.json"]
    missing = [n for n in needed if not (root / n).is_file()]
    if "source.json" in missing:
        raise ArtifactError(f"{root} is not an snnconvert artifact (missing {', '.join(missing)})")
    doc = _read_json(root, "source.json")
    try:
        source = ModelSource(**doc)
    except TypeError as exc:
        raise _damaged(root, "source.json", "does not describe a model source (kind, ref, kwargs, meta)") from exc
    if not (isinstance(source.ref, str) and isinstance(source.kwargs, dict) and isinstance(source.meta, dict)):
        raise _damaged(root, "source.json", "does not describe a model source (kind, ref, kwargs, meta)")
    if source.kind == "python":
        needed.append("ann_state.pt")
    elif source.kind == "onnx":
        needed.append(source.ref)
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise _damaged(root, ", ".join(missing), "is missing" if len(missing) == 1 else "are missing")
    graph = _check_manifest(root)
    cfg_doc = _read_json(root, "config.json")
    fmt = cfg_doc.get("format_version")
    if type(fmt) is not int or fmt != FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format {fmt!r} is not supported (this snnconvert reads format "
                            f"{FORMAT_VERSION}); convert the model again")
    if not isinstance(cfg_doc.get("config"), dict):
        raise _damaged(root, "config.json", "holds no configuration")
    saved = dict(cfg_doc["config"])
    saved.setdefault("identity_neurons", "off")  # written before identity neurons existed: there were none
    try:
        config = ConversionConfig.from_dict(saved)
    except (ConfigError, TypeError, ValueError) as exc:
        raise _damaged(root, "config.json", f"is not a valid configuration ({first_line(exc)})") from exc
    thresholds = _read_tensors(root, "thresholds.pt", "thresholds file")
    if not all(isinstance(v, torch.Tensor) for v in thresholds.values()):
        raise _damaged(root, "thresholds.pt", "is not a valid thresholds file (it holds values that are not tensors)")
    bad = next((k for k, v in thresholds.items() if v.dtype != torch.float32 or not bool(torch.isfinite(v).all())
                or bool((v < 0).any())), None)
    if bad is not None:
        raise _damaged(root, "thresholds.pt", f"is not a valid thresholds file ({bad!r}: thresholds are finite float32 "
                                              "values >= 0)")
    report = _read_json(root, "report.json")
    if source.kind == "onnx":
        model: torch.nn.Module | str = str(root / source.ref)
    else:
        state = _read_tensors(root, "ann_state.pt", "state dict")
        try:
            model = source.build(named_by="the folder")
        except ModelLoadError as exc:
            raise ArtifactError(f"{root}: cannot rebuild the model named in source.json: {exc}") from exc
        _fit_state(root, model, state, source.ref)
        model.eval()
    return Artifact(model, thresholds, config, report, source, graph)


def _check_manifest(root: Path) -> dict[str, Any] | None:
    """Each file ``manifest.json`` lists must have the SHA-256 it had when saved; returns the saved graph digest
    (None for a folder saved before manifests existed, which is read as it is).

    Raises:
        ArtifactError: a listed file is missing or was changed after saving (its checksum differs).
    """
    if not (root / MANIFEST).is_file():
        log.warning("%s: no %s (saved by an earlier snnconvert, or deleted): the files and the model's code are not "
                    "checked against what was saved; save the conversion again to have them checked", root, MANIFEST)
        return None
    doc = _read_json(root, MANIFEST)
    files, graph = doc.get("files"), doc.get("graph")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) or not (
            graph is None or isinstance(graph, dict)):
        raise _damaged(root, MANIFEST, "does not list the folder's files")
    for name, digest in files.items():
        if not (root / name).is_file():
            raise _damaged(root, name, "is missing")
        if file_sha256(root / name) != digest:
            raise ArtifactError(f"{root}: {name} was changed after saving (its SHA-256 differs from {MANIFEST}); "
                                "restore it, or convert the model again with --output DIR (or save the conversion "
                                "again with ConversionResult.save)")
    return graph
