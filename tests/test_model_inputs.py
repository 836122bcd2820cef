"""MODEL and --weights mistakes (runtime/models.py): each is one ModelLoadError that says what the file is and how to
write a usable one, never torch's multi-paragraph text or a later internal error. Files are made in tmp_path."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert.errors import ModelLoadError
from snnconvert.runtime.models import resolve_model

FACTORY = '''import torch


def build():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
'''


@pytest.fixture
def net(tmp_path):
    """``tmp_path/net.py:build`` and a state dict that fits it."""
    path = tmp_path / "net.py"
    path.write_text(FACTORY)
    torch.manual_seed(0)
    return f"{path}:build", torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
                                                ).state_dict()


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path, net):
    spec, good = net
    bad = {"0.weight": torch.zeros(5, 4), "0.bias": good["0.bias"], "2.weight": torch.zeros(2, 7),
           **{f"extra{i}": torch.zeros(1) for i in range(5)}}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError) as info:
        resolve_model(spec, weights=tmp_path / "bad.pt")
    text = str(info.value)
    assert "\n" not in text and "do not fit the model: 1 missing key(s) '2.bias'" in text
    assert "5 unexpected key(s) 'extra0', 'extra1', 'extra2' (+2 more)" in text
    assert "2 shape mismatch(es), e.g. '0.weight' (file [5, 4], model [3, 4])" in text
    torch.save({f"module.{k}": v for k, v in good.items()}, tmp_path / "dp.pt")
    with pytest.raises(ModelLoadError, match="start with 'module.' .*DataParallel"):
        resolve_model(spec, weights=tmp_path / "dp.pt")
    torch.save(good, tmp_path / "good.pt")
    assert torch.equal(resolve_model(spec, weights=tmp_path / "good.pt").model[0].weight, good["0.weight"])


def test_pickled_model_or_garbage_is_not_a_state_dict(tmp_path, net):
    spec, _ = net
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError) as info:
        resolve_model(spec, weights=tmp_path / "whole.pt")
    text = str(info.value)
    assert "\n" not in text and "not a state dict" in text and "torch.nn.modules.container.Sequential" in text
    assert "torch.save(model.state_dict(), FILE)" in text and "weights_only" not in text
    (tmp_path / "garbage.pt").write_bytes(b"these are not weights" * 8)
    with pytest.raises(ModelLoadError, match=r"garbage\.pt are not a state dict.*torch\.save\(model\.state_dict"):
        resolve_model(spec, weights=tmp_path / "garbage.pt")


def test_empty_weights_file(tmp_path, net):
    (tmp_path / "empty.pt").touch()
    with pytest.raises(ModelLoadError, match=r"empty\.pt is empty; save the weights with torch\.save"):
        resolve_model(net[0], weights=tmp_path / "empty.pt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_non_finite_values_are_refused(tmp_path, net, bad):
    spec, good = net
    good["2.weight"][1, 0] = bad
    torch.save(good, tmp_path / "nan.pt")
    with pytest.raises(ModelLoadError, match=r"tensor '2\.weight' holds NaN or infinite values"):
        resolve_model(spec, weights=tmp_path / "nan.pt")


def test_folder_as_weights_or_onnx_model(tmp_path, net):
    with pytest.raises(ModelLoadError, match="a folder, not a file"):
        resolve_model(net[0], weights=tmp_path)
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ModelLoadError, match=r"model\.onnx is a folder, not a file"):
        resolve_model(str(tmp_path / "model.onnx"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.onnx"))


def test_python_file_without_factory(tmp_path, net):
    path = str(tmp_path / "net.py")
    with pytest.raises(ModelLoadError, match=r"net\.py is a Python file: .*net\.py:factory \(a function or class "
                                             r"returning the nn\.Module") as info:
        resolve_model(path, zoo=object())
    assert "does not exist" not in str(info.value)
    with pytest.raises(ModelLoadError, match=r"nope\.py:factory.*nope\.py does not exist"):
        resolve_model("nope.py", zoo=object())


def test_cli_model_input_errors_are_one_line(tmp_path, net):
    runner = CliRunner()

    def one_line(*args) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
        return lines[0]

    assert "is a Python file" in one_line(tmp_path / "net.py")
    (tmp_path / "empty.pt").touch()
    assert "is empty" in one_line(net[0], "--weights", tmp_path / "empty.pt")
    assert "a folder, not a file" in one_line(net[0], "--weights", tmp_path)
