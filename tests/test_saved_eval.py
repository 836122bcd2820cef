"""``snnconvert SNN_DIR``: a saved SNN (``--output``) and its ANN evaluated again without calibration, on the images
and with the preprocessing recorded at conversion; conversion options refused; ``runtime.load_result``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import BoxNet, SpellingsNet
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.cli.saved import is_artifact
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.artifact import ModelSource
from snnconvert.convert.errors import ArtifactError
from snnconvert.runtime import load, load_result

NETS = str(Path(__file__).parent / "nets.py")


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(result, code=2) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """BoxNet converted (differential, T = 6) on a one-split pool of 96 images with float targets, normalised,
    evaluated on 50 images: the first conversion's report, the artifact folder and the data file."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    x = torch.rand(96, 1, 12, 12)
    with torch.no_grad():
        y = BoxNet()((x - 0.3) / 0.2) + 0.05 * torch.randn(96, 4)
    data = root / "pool.npz"
    np.savez(data, x=(x.numpy() * 255).astype(np.uint8), y=y.numpy())
    report, snn = root / "first.json", root / "snn"
    cwd = os.getcwd()
    os.chdir(root)  # the data given by a relative path
    try:
        result = _run(f"{NETS}:BoxNet", "--coding", "differential", "-T", 6, "--calib-data", data.name,
                      "--eval-data", data.name,
                      "--calib-images", 40, "--eval-images", 50, "--normalize", "0.3,0.2", "--report", report,
                      "--output", snn)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text()), snn, data, root


def test_a_saved_snn_evaluates_as_at_conversion(saved):
    first, snn, data, root = saved
    again = root / "again.json"
    result = _run(snn, "--report", again)  # from another working directory: the data path was recorded absolute
    assert result.exit_code == 0, result.output
    doc = json.loads(again.read_text())
    # the same 50 images (of the 56 left after the pool's 40 calibration images), normalised the same way: the same
    # figures
    assert doc["data"]["evaluation"]["dataset"] == f"npz:{data.resolve()}" and doc["eval_images"] == 50
    for part in ("calibration", "evaluation"):
        assert {k: v for k, v in doc["data"][part].items() if k != "dataset"} == \
            {k: v for k, v in first["data"][part].items() if k != "dataset"}
    for key in ("ann_mse", "snn_mse", "ann_mae", "snn_mae", "events", "synaptic_ops", "thresholds", "config"):
        assert doc[key] == first[key], key
    assert doc["model"] == f"{snn} (saved SNN of {NETS}:BoxNet)"


def test_other_steps_backend_and_images(saved):
    first, snn, _, root = saved
    longer = root / "longer.json"
    from snnconvert.runtime.kernels.native import native_status

    backend = "native" if native_status("cpu")[0] else "torch"  # another backend than at conversion, where there is
    result = _run(snn, "-T", 8, "--backend", backend, "--eval-images", 20, "--report", longer)
    assert result.exit_code == 0, result.output
    assert "the thresholds were fitted for T=6; running T=8" in " ".join(result.output.split())
    doc = json.loads(longer.read_text())
    assert doc["timesteps"] == 8 and len(doc["snn_mse"]) == 8 and doc["eval_images"] == 20
    assert doc["thresholds"]["fitted_for"]["timesteps"] == 6


def test_conversion_options_do_not_apply(saved, tmp_path):
    _, snn, _, _ = saved
    line = _one_line(_run(snn, "--coding", "rate", "--calib-images", 10))
    assert f"{snn} is a saved SNN, evaluated as it was converted: --coding, --calib-images do not apply" in line
    cfg = tmp_path / "run.json"  # from a --config file too
    cfg.write_text(json.dumps({"threshold": "max"}))
    assert "--threshold does not apply" in _one_line(_run(snn, "--config", cfg))


def test_an_api_saved_snn_needs_its_evaluation_data(tmp_path):
    x = torch.rand(32, 1, 28, 28)
    model = SpellingsNet().eval()
    res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=3),
                  source=ModelSource.python(f"{NETS}:SpellingsNet"))
    res.save(tmp_path / "snn")
    line = _one_line(_run(tmp_path / "snn"))
    assert "does not record its evaluation data (saved through the API); pass --eval-data" in line
    result = _run(tmp_path / "snn", "--eval-data", "fashion-mnist", "--eval-images", 16)
    assert result.exit_code == 0, result.output
    assert "calibration images not recorded" in " ".join(result.output.split())


def test_load_result_rebuilds_the_conversion(saved, tmp_path):
    _, snn, _, _ = saved
    result, ann = load_result(snn)
    x = torch.rand(5, 1, 12, 12)
    assert result.config.coding == "differential" and result.config.timesteps == 6
    assert result.calibration.sites and result.calibration.quantisation_levels == 6 * 16
    with torch.no_grad():
        assert torch.equal(ann(x), BoxNet().eval()(x))  # the ANN with its saved weights (BoxNet's seeded init)
        decoded = result.snn(x)
        assert torch.equal(decoded, load(snn)(x))  # the same SNN as runtime.load's
    result.save(tmp_path / "copy")  # saved again from the loaded result: identical outputs
    copy, _ = load_result(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(copy.snn(x), decoded)


def test_evaluated_elsewhere_without_the_calibration_data(tmp_path):
    """Converted on a two-split file, evaluated on another machine where only other test data exists: the
    calibration data is not needed."""
    torch.manual_seed(1)
    x = torch.rand(40, 1, 12, 12)
    with torch.no_grad():
        y = BoxNet()(x)
    pixels = (x.numpy() * 255).astype(np.uint8)
    first, other = tmp_path / "first.npz", tmp_path / "other.npz"
    np.savez(first, x_train=pixels[:20], y_train=y[:20].numpy(), x_test=pixels[20:30], y_test=y[20:30].numpy())
    np.savez(other, x=pixels[30:], y=y[30:].numpy())
    snn = tmp_path / "snn"
    result = _run(f"{NETS}:BoxNet", "--calib-data", first, "--eval-data", first, "--output", snn)
    assert result.exit_code == 0, result.output
    first.unlink()
    assert "does not exist" in _one_line(_run(snn))  # its own evaluation data is gone: one line
    again = tmp_path / "again.json"
    result = _run(snn, "--eval-data", other, "--report", again)
    assert result.exit_code == 0, result.output
    doc = json.loads(again.read_text())
    assert doc["eval_images"] == 10 and doc["data"]["calibration"]["images"] == 20


def _copy(snn: Path, to: Path, **source) -> Path:
    """A copy of the saved folder ``snn`` at ``to``, with ``source`` written over its source.json fields and without
    its manifest (which would refuse the changed file first: the checks tested here guard a folder without one, or
    with an edited one)."""
    shutil.copytree(snn, to)
    (to / "manifest.json").unlink()
    doc = json.loads((to / "source.json").read_text())
    (to / "source.json").write_text(json.dumps({**doc, **source}))
    return to


@pytest.mark.parametrize("factory", ["os:system", "subprocess:run", "builtins:exec", "SUBPROCESS_FILE:run",
                                     "EVIL_FILE:run", "torch:zeros", "numpy:ndarray"])
def test_a_tampered_source_is_refused_before_it_is_called(saved, tmp_path, factory):
    """source.json names the callable that rebuilds the ANN: a standard-library function (os:system), one imported
    into a user file, a builtin or a class that is no nn.Module is refused before it is called."""
    _, snn, _, _ = saved
    marker = tmp_path / "called"
    evil = tmp_path / "evil.py"
    evil.write_text("from subprocess import run  # noqa: F401\n")
    ref = factory.replace("SUBPROCESS_FILE", subprocess.__file__).replace("EVIL_FILE", str(evil))
    # what would run the shell command if called (the others are refused before any keyword is looked at)
    kwargs = {"command": f"touch {marker}"} if ref == "os:system" else {"args": f"touch {marker}", "shell": True}
    folder = _copy(snn, tmp_path / "snn", ref=ref, kwargs=kwargs)
    with pytest.raises(ArtifactError, match="the folder must name a model factory: a class or Python function "
                                            "defined outside the standard library") as info:
        load_result(folder)
    assert not marker.exists()
    assert f"{ref!r} is not a model factory" in str(info.value) and str(folder) in str(info.value)
    if ref == "os:system":  # the command line: one line, exit 2
        assert "is not a model factory" in _one_line(_run(folder))
        assert not marker.exists()


def test_a_module_factory_round_trips(tmp_path):
    """A factory named by module (tests/nets.py is importable as ``nets``) is rebuilt from the saved folder."""
    x = torch.rand(8, 1, 28, 28)
    res = convert(SpellingsNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=3),
                  source=ModelSource.python("nets:SpellingsNet"))
    res.save(tmp_path / "snn")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "snn")(x), res.snn(x))


def _other_state(path: Path) -> None:
    torch.save(torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)]).state_dict(), path)


def _bigger_state(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({k: torch.zeros(*v.shape, 2) for k, v in state.items()}, path)


def _foreign_thresholds(path: Path) -> None:
    torch.save({"features_0_act": torch.ones(3)}, path)


@pytest.mark.parametrize("name, damage, says", [
    ("config.json", '{"format_version": 1, "config": ', "is not valid JSON"),
    ("report.json", "garbage", "is not valid JSON"),
    ("source.json", '{"kind": ', "is not valid JSON"),
    ("config.json", "[1]", "holds a JSON list, not an object"),
    ("config.json", None, "is missing"),
    ("thresholds.pt", b"not a pickle", "is not a valid thresholds file"),
    ("thresholds.pt", _foreign_thresholds, "does not fit the model"),
    ("ann_state.pt", b"not a pickle", "is not a valid state dict"),
    ("ann_state.pt", None, "is missing"),
    ("ann_state.pt", _other_state, "does not fit the model"),
    ("ann_state.pt", _bigger_state, "does not fit the model"),
])
def test_a_damaged_folder_is_one_line_naming_the_file(saved, tmp_path, name, damage, says):
    _, snn, _, _ = saved
    folder = tmp_path / "snn"
    shutil.copytree(snn, folder)
    (folder / "manifest.json").unlink()  # the checks of each file (the manifest's own: the next test)
    file = folder / name
    if damage is None:
        file.unlink()
    elif isinstance(damage, str):
        file.write_text(damage)
    elif isinstance(damage, bytes):
        file.write_bytes(damage)
    else:
        damage(file)
    line = _one_line(_run(folder))
    assert f"{folder}: {name} {says}" in line and "convert the model again with --output" in line
    assert "weights_only" not in line and len(line) - len(str(folder)) < 400, line
    if damage is _other_state:  # a few keys of each kind, not all of them
        assert "(6 missing key(s) 'conv1.weight', 'conv1.bias', 'conv2.weight' (+3 more); " \
               "8 unexpected key(s) '0.weight', '0.bias', '1.weight' (+5 more))" in line


def _doubled(path: Path) -> None:
    torch.save({k: 2 * v for k, v in torch.load(path, weights_only=True).items()}, path)


def _negative(path: Path) -> None:
    torch.save({k: -v for k, v in torch.load(path, weights_only=True).items()}, path)


@pytest.mark.parametrize("name, damage", [
    ("thresholds.pt", _doubled),  # still a valid file: another SNN
    ("config.json", lambda p: p.write_text(p.read_text().replace('"levels": 4', '"levels": 2'))),
    ("ann_state.pt", _bigger_state),
    ("report.json", lambda p: p.write_text(p.read_text().replace('"input_shape": [', '"input_shape": [7, '))),
    ("source.json", lambda p: p.write_text(p.read_text().replace('"meta": {', '"meta": {"x": 1, '))),
])
def test_a_file_changed_after_saving_is_refused(saved, tmp_path, name, damage):
    """manifest.json keeps every file's SHA-256: a changed file (valid or not) is one line naming it, before it is
    read (an edited thresholds or config file was another SNN, loaded silently)."""
    _, snn, _, _ = saved
    folder = tmp_path / "snn"
    shutil.copytree(snn, folder)
    before = (folder / name).read_bytes()
    damage(folder / name)
    assert (folder / name).read_bytes() != before
    line = _one_line(_run(folder))
    assert f"{folder}: {name} was changed after saving (its SHA-256 differs from manifest.json); restore it, or " \
           "convert the model again" in line, line
    with pytest.raises(ArtifactError, match=f"{name} was changed after saving"):
        load(folder)


def test_thresholds_that_no_conversion_writes_are_refused_without_a_manifest(saved, tmp_path, caplog):
    _, snn, _, _ = saved
    folder = tmp_path / "snn"
    shutil.copytree(snn, folder)
    (folder / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger="snnconvert"):
        load(folder)  # read, with a warning that nothing was checked (it was a debug line)
    assert "no manifest.json" in caplog.text and "not checked" in caplog.text
    _negative(folder / "thresholds.pt")  # were clamped to 0 silently
    with pytest.raises(ArtifactError, match=r"thresholds.pt is not a valid thresholds file \('.*': thresholds are "
                                            r"finite float32 values >= 0\)"):
        load(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": "1"}))
    with pytest.raises(ArtifactError, match=r"artifact format '1' is not supported \(this snnconvert reads format "
                                            r"1\)"):
        load(folder)


_EDITABLE = """
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1){edit})
"""


@pytest.mark.parametrize("coding", ["rate", "differential"])
def test_model_code_edited_after_saving_is_refused(tmp_path, coding):
    """A saved Python model is rebuilt from its file: a forward edited since (``* 0.5``, a constant changed) rebuilt
    another network with the saved weights and thresholds, silently. The graph's digest in manifest.json tells."""
    file = tmp_path / "net.py"
    file.write_text(_EDITABLE.format(edit=" * 0.5"))
    x = torch.rand(16, 1, 12, 12)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("editable_net", file)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    res = convert(module.Net(), forward_loop=[x], config=ConversionConfig.for_coding(coding, timesteps=4),
                  source=ModelSource.python(f"{file}:Net"))
    folder = res.save(tmp_path / "snn")
    with torch.no_grad():
        assert torch.equal(load(folder)(x), res.snn(x))  # unchanged code: the same network
    for edit in (" * 0.25", "", " * 0.5 + 0"):
        file.write_text(_EDITABLE.format(edit=edit))
        with pytest.raises(ArtifactError, match=rf"{folder}: the model {file}:Net now converts to another network "
                                                r"than the one saved \(\d+ graph nodes then, \d+ now\): its code "
                                                r"changed since saving \(or this snnconvert, .*\); restore that code, "
                                                "or convert the model again"):
            load(folder)
    file.write_text(_EDITABLE.format(edit=" * 0.5"))
    load(folder)


def test_a_differential_snn_keeps_its_state_dict_keys_after_a_call():
    """The step-0 capture stores each neuron's bias: state (recomputed per input shape), not a saved value; it made
    the state dict of a used SNN have more keys than a fresh one's, so loading one into the other failed."""
    x = torch.rand(8, 1, 28, 28)
    fresh, used = (convert(SpellingsNet(), forward_loop=[x], config=ConversionConfig.for_coding("differential",
                                                                                               timesteps=4)).snn
                   for _ in range(2))
    keys = set(fresh.state_dict())
    with torch.no_grad():
        used(x)
    assert set(used.state_dict()) == keys
    fresh.load_state_dict(used.state_dict())
    used.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), used(x))


def test_source_values_that_json_cannot_store_are_named_when_saving(tmp_path):
    x = torch.rand(8, 1, 28, 28)
    res = convert(SpellingsNet(), forward_loop=[x],
                  source=ModelSource.python(f"{NETS}:SpellingsNet", dtype=torch.float32))
    with pytest.raises(ArtifactError, match="cannot save: the model source's kwargs 'dtype' is a dtype, which "
                                            "source.json cannot store"):
        res.save(tmp_path / "snn")
    assert not (tmp_path / "snn").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [[], ["config.json", "notes.txt"]])
def test_a_folder_that_is_not_a_saved_snn(tmp_path, content):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in content:
        (folder / name).write_text("{}")
    line = _one_line(_run(folder))
    assert f"{folder} is a folder but not a saved SNN (no source.json): give a folder written by --output, or a " \
           "model (zoo name, file.onnx, file.py:factory)" in line


def test_a_folder_named_like_a_zoo_model_is_not_a_saved_snn(tmp_path, monkeypatch):
    """A folder that merely has a zoo model's name in the working directory does not hide the zoo model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-vgg").mkdir()
    assert not is_artifact("fmnist-vgg") and is_artifact(str(tmp_path / "fmnist-vgg"))


def test_a_relative_file_factory_loads_from_another_working_directory(tmp_path, monkeypatch):
    """``file.py:factory`` as typed on the command line is relative; the folder records it absolute."""
    monkeypatch.chdir(Path(NETS).parent)
    x = torch.rand(8, 1, 28, 28)
    res = convert(SpellingsNet().eval(), forward_loop=[x], config=ConversionConfig.for_coding("rate", timesteps=3),
                  source=ModelSource.python("nets.py:SpellingsNet"))
    assert res.source.ref == f"{NETS}:SpellingsNet"
    res.save(tmp_path / "snn")
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "snn")(x), res.snn(x))


def test_a_model_file_importing_a_module_next_to_it_converts_saves_and_loads(tmp_path):
    """``path/net.py:Net`` whose file imports ``blocks.py`` from its own folder loads as ``python path/net.py`` would
    (was "No module named 'blocks'"); the folder is on sys.path only while the file is imported and built."""
    import sys

    (tmp_path / "blocks_for_snn_test.py").write_text(
        "import torch.nn as nn\n\n\ndef block(c_in, c_out):\n    return nn.Sequential(nn.Conv2d(c_in, c_out, 3), "
        "nn.ReLU())\n")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\nfrom blocks_for_snn_test import block\n\n\ndef Net():\n    return nn.Sequential("
        "block(1, 4), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))\n")
    source = ModelSource.python(f"{tmp_path / 'net.py'}:Net")
    x = torch.rand(8, 1, 12, 12)
    res = convert(source.build(), forward_loop=[x], source=source)
    assert str(tmp_path) not in sys.path
    sys.modules.pop("blocks_for_snn_test", None)  # loading imports it again, from the saved file's folder
    with torch.no_grad():
        assert torch.equal(load(res.save(tmp_path / "snn"))(x), res.snn(x))
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize("name", ["report.json", "notes.md"])
def test_outputs_inside_the_saved_folder_being_evaluated_are_refused(saved, tmp_path, name):
    """``snnconvert DIR --report DIR/report.json`` overwrote a file its manifest lists: every later load failed."""
    _, snn, _, _ = saved
    folder = tmp_path / "snn"
    shutil.copytree(snn, folder)
    flag = "--report" if name.endswith(".json") else "--markdown"
    line = _one_line(_run(folder, flag, folder / name))
    assert f"{flag} {folder / name} is inside the saved SNN folder {folder} being evaluated" in line
    load(folder)  # untouched


_POOLED = """
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3{conv}), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d({body}, 1).flatten(1))
"""


def test_a_layer_setting_or_an_added_unit_edited_after_saving_is_refused(tmp_path):
    """Edits that keep the node count and the weights (a stride, a padding mode) changed the network silently: the
    digest now holds each layer's settings. An added ReLU made the saved thresholds not fit: the message says the
    model's code changed (the manifest vouches for thresholds.pt), not that the thresholds file is another's."""
    from importlib.util import module_from_spec, spec_from_file_location

    file, body = tmp_path / "pooled.py", "F.relu(self.conv(x))"
    file.write_text(_POOLED.format(conv="", body=body))
    spec = spec_from_file_location("pooled_net", file)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.rand(16, 1, 12, 12)
    res = convert(module.Net(), forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4),
                  source=ModelSource.python(f"{file}:Net"))
    folder = res.save(tmp_path / "snn")
    for conv in (", stride=2", ", padding=1, padding_mode='reflect'"):
        file.write_text(_POOLED.format(conv=conv, body=body))
        with pytest.raises(ArtifactError, match="now converts to another network than the one saved"):
            load(folder)
    file.write_text(_POOLED.format(conv="", body="F.relu(self.conv(x)) + F.relu(self.conv(x) - 1)"))
    with pytest.raises(ArtifactError, match=rf"the model {file}:Net no longer fits the saved thresholds .*: its code "
                                            "changed since saving"):
        load(folder)
    file.write_text(_POOLED.format(conv="", body=body))
    with torch.no_grad():
        assert torch.equal(load(folder)(x), res.snn(x))
