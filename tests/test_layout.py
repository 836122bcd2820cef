"""Repository layout: packages listed in pyproject, import layering, no print in library code."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"convert": "snnconvert.convert", "runtime": "snnconvert.runtime", "cli": "snnconvert.cli",
           "models_zoo": "snnconvert.models_zoo"}
#: which top-level sub-packages each one may import
ALLOWED = {
    "convert": {"convert"},
    "runtime": {"convert", "runtime"},
    "cli": {"convert", "runtime", "cli", "models_zoo"},
    "models_zoo": {"models_zoo"},
}
#: scripts (not library code) that may print and may use the data layer
SCRIPTS = {ROOT / "models_zoo" / "train.py"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for folder, pkg in FOLDERS.items():
        assert cfg["package-dir"][pkg] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found == listed


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node, "." * node.level + (node.module or "")  # relative: reported, the package imports absolutely
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module


def test_layering_and_no_bare_imports():
    problems = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node, name in _imports(path):
                if name.startswith("."):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} relative import {name}")
                    continue
                top = name.split(".")[0]
                if top in FOLDERS:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports bare {name}")
                if name.startswith("snnconvert."):
                    sub = name.split(".")[1]
                    allowed = ALLOWED[folder] | ({"runtime"} if path in SCRIPTS else set())
                    if sub not in allowed:
                        problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not problems, "\n".join(problems)


def test_no_print_in_library_code():
    offenders = []
    for folder in ("convert", "runtime", "models_zoo"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in SCRIPTS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_console_script_and_namespace():
    project = _pyproject()["project"]
    assert project["scripts"]["snnconvert"] == "snnconvert.cli.main:run"
    assert not (ROOT / "snnconvert").exists(), "snnconvert must stay an implicit namespace (no top-level folder)"
    import snnconvert.convert

    assert Path(snnconvert.convert.__file__).resolve().parent == ROOT / "convert"
