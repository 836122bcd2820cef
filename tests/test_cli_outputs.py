"""CLI: output paths, devices and option values are checked before anything slow, a failed run leaves none of its
outputs behind, file-system and memory failures are one line, and library messages use the command's flags."""
from __future__ import annotations

import pytest
from test_cli import NETS, _one_line_error, _run

from snnconvert.cli.options import as_flags

#: a tiny run of the zoo VGG on Fashion-MNIST (about 10 s)
TINY = ("--calib-images", 16, "--eval-images", 16, "-T", 2)


def _last_line_error(result) -> str:
    """A failure at the end of a run: the tables were printed, then one error line (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    line = [ln for ln in result.output.splitlines() if ln.strip()][-1]
    assert line.startswith("error: ")
    return line


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the run gets as far as loading a model: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run resolved the model before its options were checked")

    monkeypatch.setattr("snnconvert.runtime.models.resolve_model", refuse)


@pytest.mark.parametrize(("args", "message"), [
    (("--report", "{tmp}/same", "--markdown", "{tmp}/same"), "--report and --markdown both name"),
    (("--report", "{tmp}"), "is a folder; give a file path"),
    (("--report", "{tmp}/file.txt/r.json"), "file.txt is a file, not a folder"),
    (("--output", "{tmp}/file.txt"), "is a file; give a folder path"),
    (("--output", "{tmp}/full"), "a folder with other files in it"),
    (("--nir", "{tmp}/file.txt/g.nir"), "is a file, not a folder"),
    (("--output", "{tmp}/snn", "--report", "{tmp}/snn/r.json"), "--report {tmp}/snn/r.json is inside the --output "
                                                               "folder {tmp}/snn, which saving the SNN replaces"),
    (("--report", "/dev/null"), "--report /dev/null is not a regular file; give the path of a file to write"),
    (("--report", "-", "--markdown", "-"), "--report and --markdown both name standard output (-)"),
    (("--nir", "-"), "--nir -: standard output takes the JSON report (--report -) or the Markdown report"),
    (("--output", "-"), "give --output a file path"),
    (("--device", "tpu"), "--device 'tpu' is not a device"),
    (("--device", "meta"), "runs on cpu or cuda"),
    (("--mode", "both"), "--mode 'both' is not valid"),
    (("--num-workers", "-1"), "--num-workers must be a number of threads >= 0, got -1"),
])
def test_bad_outputs_and_devices_fail_before_the_model_is_loaded(tmp_path, no_model, args, message):
    (tmp_path / "file.txt").write_text("keep")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = _one_line_error(_run("fmnist-vgg", *TINY, *(a.format(tmp=tmp_path) for a in args)))
    assert message.format(tmp=tmp_path) in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no probe file, no output left
    assert (tmp_path / "file.txt").read_text() == "keep"


def test_unwritable_folder_is_one_line(tmp_path, no_model):
    line = _one_line_error(_run("fmnist-vgg", *TINY, "--report", "/proc/snnconvert-report.json"))
    assert "cannot write in /proc" in line


def test_output_folders_that_do_not_exist_yet_are_created(tmp_path):
    result = _run("fmnist-vgg", *TINY, "--report", tmp_path / "a" / "r.json", "--markdown", tmp_path / "b" / "r.md")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "r.json").is_file() and (tmp_path / "b" / "r.md").is_file()


def test_a_failing_output_removes_the_ones_written_before_it(tmp_path, monkeypatch):
    from snnconvert.convert import ConversionResult

    def full_disk(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ConversionResult, "save", full_disk)
    report, markdown, snn = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "snn"
    line = _last_line_error(_run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data",
                                 "fashion-mnist", *TINY, "--report", report, "--markdown", markdown, "--output", snn))
    assert "No space left on device" in line
    assert not report.exists() and not markdown.exists() and not snn.exists()


def test_an_existing_report_gets_its_content_back_when_the_run_fails(tmp_path, monkeypatch):
    from snnconvert.convert import ConversionResult

    monkeypatch.setattr(ConversionResult, "save", lambda self, path: (_ for _ in ()).throw(OSError(13, "denied")))
    report, markdown = tmp_path / "r.json", tmp_path / "r.md"
    report.write_text('{"kept": 1}')
    _last_line_error(_run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                          *TINY, "--report", report, "--markdown", markdown, "--output", tmp_path / "snn"))
    assert report.read_text() == '{"kept": 1}'  # written by the run, then restored: the run failed
    assert not markdown.exists()


def test_outputs_through_links_and_into_an_empty_folder(tmp_path):
    """A --report that is a symbolic link writes its target (the link stays); --output may name an empty folder
    (it was accepted up front, then refused by the save after the whole run)."""
    target, link = tmp_path / "kept" / "report.json", tmp_path / "report.json"
    target.parent.mkdir()
    target.write_text("{}")
    link.symlink_to(target)
    (tmp_path / "empty").mkdir()
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist", *TINY,
                  "--report", link, "--output", tmp_path / "empty")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and '"snn_accuracy"' in target.read_text()
    assert (tmp_path / "empty" / "source.json").is_file() and (tmp_path / "empty" / "manifest.json").is_file()


def test_out_of_memory_is_one_line_with_advice(monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 321126400000 bytes")

    import snnconvert.runtime as runtime

    monkeypatch.setattr(runtime, "sweep", no_memory)
    line = _one_line_error(_run("fmnist-vgg", *TINY), code=1)
    assert line.startswith("error: out of memory") and "--batch-size" in line and "--mode single" in line


@pytest.mark.parametrize(("text", "message"), [
    ("timesteps: true", "timesteps: True is not an integer"),
    ("timesteps: 2.0", "timesteps: 2.0 is not an integer"),
    ("threshold-scale: true", "threshold-scale: True is not a float"),
])
def test_config_values_of_the_wrong_type(tmp_path, no_model, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    assert message in _one_line_error(_run("fmnist-vgg", "--config", config))


def test_library_messages_name_the_flags():
    assert as_flags("neuron 'if' has a single threshold; got levels=4: use neuron='mt'") == \
        "--neuron 'if' has a single threshold; got --levels 4: use --neuron mt"
    assert as_flags("granularity 'x' is not valid") == "--granularity 'x' is not valid"
    assert as_flags("threshold '101%': a percentile must be in (0, 100]") == \
        "--threshold '101%': a percentile must be in (0, 100]"
    # a message about a threshold tensor is not about the flag
    assert as_flags("threshold has 2 non-finite value(s)") == "threshold has 2 non-finite value(s)"
    assert as_flags("threshold_aggregation 'x' is not valid") == "--aggregation 'x' is not valid"
    assert as_flags("the levels of a neuron") == "the levels of a neuron"  # prose words are left alone
    assert as_flags("levels must be an integer in [1, 16], got 17") == "--levels must be an integer in [1, 16], got 17"
    assert as_flags("leave a node analog with allow_ann_ops, glob patterns (e.g. allow_ann_ops='cumsum*')") == \
        "leave a node analog with --allow-ann-op, glob patterns (e.g. --allow-ann-op cumsum*)"
    assert "-T/--timesteps must be a positive integer" in _one_line_error(_run("fmnist-vgg", "-T", 0))
    line = _one_line_error(_run("fmnist-vgg", "--identity-levels", 3, "--neuron", "if"))
    assert "--identity-levels 3 needs multi-threshold neurons" in line and "use --neuron mt" in line
    for flag, value in (("--threshold", "101%"), ("--granularity", "x"), ("--coding", "x"), ("--neuron", "x")):
        assert _one_line_error(_run("fmnist-vgg", flag, value)).startswith(f"error: {flag} '{value}'")
    line = _one_line_error(_run("fmnist-vgg", "--identity-threshold", "foo"))
    assert "--identity-threshold 'foo' is not valid" in line and "iterate" not in line


@pytest.mark.parametrize(("labels", "message"), [
    ("few", "the labels use 4 classes but the model has 10 outputs"),
    ("one-hot", "the float labels are one-hot rows"),
])
def test_labels_that_hardly_fit_the_model_are_warned_about(tmp_path, caplog, labels, message):
    import numpy as np

    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4 if labels == "few" else 10, 200)
    y = classes if labels == "few" else np.eye(10, dtype=np.float32)[classes]
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((200, 1, 28, 28), dtype=np.float32), y=y)
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", f"npz:{path}", "--eval-data", f"npz:{path}",
                  "--calib-images", 16, "--eval-images", 128, "-T", 1)
    assert result.exit_code == 0, result.output
    assert any(message in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize(("args", "message"), [
    (["fmnist-vgg", "-T", "2.5"], "Invalid value for '--timesteps'"),
    (["fmnist-vgg", "--bogus"], "No such option: --bogus"),
])
def test_the_command_prints_usage_errors_in_one_line(args, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from snnconvert.cli.main import run; run()", *args],
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: ") and message in lines[0] and "--help" in lines[0]


@pytest.mark.parametrize("flag", ["--report", "--markdown"])
def test_a_report_to_standard_output_is_all_that_goes_there(tmp_path, flag):
    """``--report -`` (``--markdown -``): standard output holds the report alone (JSON that parses, Markdown starting
    with its title); the tables and lines go to stderr; no file named ``-`` is written."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from snnconvert.cli.main import run; run()", f"{NETS}:SpellingsNet",
                           "--calib-data", "fashion-mnist", "--calib-images", "32", "--eval-images", "50", "-T", "2",
                           flag, "-"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    if flag == "--report":
        doc = json.loads(done.stdout)
        assert doc["timesteps"] == 2 and len(doc["snn_accuracy"]) == 2 and doc["eval_images"] == 50
    else:
        assert done.stdout.startswith("# ") and "| t |" in done.stdout
    assert "vs time step" in done.stderr and "written to standard output" in done.stderr
    assert not (tmp_path / "-").exists()


def test_a_run_failing_after_the_report_leaves_standard_output_empty(tmp_path, monkeypatch):
    """The report for standard output is written after every other output: saving the SNN fails (a full disk), and
    standard output stays empty while stderr ends with the one error line."""
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("snnconvert.cli.main._save", full_disk)
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--calib-images", 16, "--eval-images", 16,
                  "-T", 1, "--report", "-", "--output", tmp_path / "snn")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("error: No space left on device")


def test_evaluation_images_the_model_cannot_take_are_one_line_before_calibration(tmp_path, monkeypatch):
    """Evaluation images of another size than a flatten + linear model takes: a data error naming both sizes, before
    the calibration (it was an "internal error" after it); the same for a saved SNN."""
    import numpy as np

    images = np.random.default_rng(0).random((8, 1, 20, 20)).astype(np.float32)
    np.savez(tmp_path / "small.npz", x_train=images, y_train=np.arange(8) % 10, x_test=images, y_test=np.arange(8) % 10)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated")

    monkeypatch.setattr("snnconvert.convert.convert_grid", no_calibration)
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data",
                                f"npz:{tmp_path / 'small.npz'}", *TINY))
    assert "the model fails on the evaluation images ([1, 20, 20]) although it runs on the calibration images " \
           "([1, 28, 28])" in line and "--resize" in line
    monkeypatch.undo()
    done = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", *TINY, "--output", tmp_path / "snn")
    assert done.exit_code == 0, done.output
    line = _one_line_error(_run(tmp_path / "snn", "--eval-data", f"npz:{tmp_path / 'small.npz'}"))
    assert "the model fails on the evaluation images ([1, 20, 20]):" in line
