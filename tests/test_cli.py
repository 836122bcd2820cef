"""CLI: bad input gives one clear line and a non-zero exit, no traceback unless --debug; the happy path writes a
report with the documented schema and an artifact that reloads."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snnconvert.cli.main import app

NETS = str(Path(__file__).parent / "nets.py")
runner = CliRunner()


def _run(*args):
    """``snnconvert ARGS`` in process, on a fresh thread. CPython 3.11 holds Python frames in chunks of its data
    stack and frees a chunk as soon as the stack shrinks below it; under pytest's and click's frames the Triton
    interpreter's calls kept crossing a chunk boundary (an mmap, page faults and a munmap each time: 7 million page
    faults, the Triton CLI test 54 s instead of 12 s). A new thread's frame stack starts empty."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", runner.invoke(app, [str(a) for a in args])))
    thread.start()
    thread.join()
    return box["result"]


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_file():
    line = _one_line_error(_run("does/not/exist.py:factory"))
    assert "does/not/exist.py does not exist" in line


def test_missing_onnx_file():
    assert "does not exist" in _one_line_error(_run("nope.onnx"))


def test_unknown_zoo_name_lists_valid_names():
    line = _one_line_error(_run("fmnist-nope"))
    assert "unknown zoo model 'fmnist-nope'" in line and "fmnist-vgg" in line


@pytest.mark.parametrize("T", [0, -3])
def test_non_positive_timesteps(T):
    assert "timesteps must be a positive integer" in _one_line_error(_run(f"{NETS}:SpellingsNet", "-T", T))


def test_unknown_coding():
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--coding", "temporal"))
    assert "coding 'temporal' is not valid" in line and "differential" in line


def test_missing_data_set(tmp_path):
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data",
                                "fashion-mnist", "--data-dir", tmp_path))
    assert "Fashion-MNIST not found" in line and "apt-get install dataset-fashion-mnist" in line


def test_unknown_data_set_and_missing_data_flag():
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--calib-data", "cifar-11", "--eval-data", "cifar-11"))
    assert "unknown data set 'cifar-11'" in line
    assert "--calib-data" in _one_line_error(_run(f"{NETS}:SpellingsNet"))


def test_bad_factory_and_bad_weights(tmp_path):
    assert "no callable 'Nope'" in _one_line_error(_run(f"{NETS}:Nope"))
    bad = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--weights", bad))
    assert "do not fit the model" in line


def test_unsupported_model_exits_1_listing_all_nodes():
    result = _run(f"{NETS}:Unsupported", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                  "--calib-images", 8, "--eval-images", 8)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "3 unsupported node(s)" in result.output and "sort" in result.output
    assert "scaled_dot_product_attention" in result.output and "write the attention out" in result.output


def test_debug_shows_traceback():
    result = _run("fmnist-nope", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output


def test_happy_path_report_and_artifact(tmp_path):
    report = tmp_path / "out" / "report.json"
    output = tmp_path / "snn"
    # one data set named: its train split calibrates, its test split evaluates
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist",
                  "--calib-images", 64, "--eval-images", 32, "-T", 4, "--report", report, "--output", output)
    assert result.exit_code == 0, result.output
    assert "accuracy vs time step" in result.output and "ANN accuracy" in result.output
    doc = json.loads(report.read_text())
    ops = doc["synaptic_ops"]  # the console shows the report's energy ratios after each step and at the end
    assert f"{ops['energy_ratio_reference'][-1]:.3f} / {ops['energy_ratio_extended'][-1]:.3f}" in result.output
    assert f"energy vs ANN after T steps: {ops['energy_ratio_reference'][-1]:.3f}" in result.output
    assert "E_AC 0.9 pJ, E_MAC 4.6 pJ" in result.output
    left_out = ops["not_in_energy"]  # SpellingsNet: neurons and max-pool units, both stated, neither priced
    assert left_out["neuron_updates_per_step"] > 0 and left_out["graded_unit_outputs_per_step"] > 0
    text = " ".join(result.output.split())
    assert (f"not priced: {left_out['neuron_updates_per_step']:.0f} neuron updates and "
            f"{left_out['graded_unit_outputs_per_step']:.0f} graded-unit evaluations per image and step") in text
    for key in ("coding", "timesteps", "ann_accuracy", "snn_accuracy", "eval_images", "calib_images", "thresholds",
                "conversion", "timings", "events", "schema_version", "data"):
        assert key in doc, key
    assert doc["coding"] == "rate" and doc["timesteps"] == 4
    assert doc["eval_images"] == 32 and doc["calib_images"] == 64
    assert 0.0 <= doc["ann_accuracy"] <= 1.0 and len(doc["snn_accuracy"]) == 4
    top5 = doc["snn_accuracy_top5"]  # 10 classes: top-5 at every step, never below top-1, on the console too
    assert len(top5) == 4 and all(a5 >= a1 for a5, a1 in zip(top5, doc["snn_accuracy"]))
    assert doc["ann_accuracy_top5"] >= doc["ann_accuracy"]
    assert f"(top-5 {100 * doc['ann_accuracy_top5']:.2f} %)" in text and f"(top-5 {100 * top5[-1]:.2f} %)" in text
    assert doc["data"]["calibration"]["split"] == "train" and doc["data"]["evaluation"]["split"] == "test"
    assert doc["data"]["evaluation"]["dataset"] == "fashion-mnist"
    sites = doc["thresholds"]["sites"]
    assert len(sites) == 6 and {"site", "threshold"} <= set(sites[0])
    assert doc["thresholds"]["method"] == "99.9%" and doc["thresholds"]["granularity"] == "channel"
    assert (output / "thresholds.pt").is_file()
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith(".")], "temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)  # written atomically through temporary files, yet with ordinary permissions (not owner-only)
    assert (report.stat().st_mode & 0o777, output.stat().st_mode & 0o777) == (0o666 & ~umask, 0o777 & ~umask)


def test_neuron_granularity(tmp_path):
    report = tmp_path / "report.json"
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                  "--calib-images", 64, "--eval-images", 16, "-T", 2, "--coding", "differential", "--granularity",
                  "neuron", "--report", report)
    assert result.exit_code == 0, result.output
    assert "thresholds iterate per neuron" in result.output
    doc = json.loads(report.read_text())
    assert doc["thresholds"]["granularity"] == "neuron" and doc["config"]["granularity"] == "neuron"
    counts = [site["threshold"]["count"] for site in doc["thresholds"]["sites"]]
    assert max(counts) == 6 * 14 * 14, counts  # the first site, behind the max-pool moved before it: one per element
    line = _one_line_error(_run(f"{NETS}:SpellingsNet", "--granularity", "pixel"))
    assert "granularity 'pixel' is not valid" in line and "layer, channel, neuron" in line


def test_config_file_with_command_line_overrides(tmp_path):
    """``--config`` (YAML or JSON; keys: flag names, their aliases, a switch's ``no-`` spelling or the Python
    names) fills every option the command line does not give; ``--time-steps`` and ``--calib-samples`` are aliases
    of ``-T`` and ``--calib-images`` (users.md §3)."""
    config = tmp_path / "run.yaml"
    config.write_text("coding: differential\ntime-steps: 3\ncalib-samples: 48\neval_images: 16\n"
                      "calib-data: fashion-mnist\neval-data: fashion-mnist\nthreshold: max\n"
                      "allow-ann-op: nothing_matches\nlayer-errors: true\nno-calibration-check: true\n")
    report = tmp_path / "r.json"
    markdown = tmp_path / "r.md"
    result = _run(f"{NETS}:SpellingsNet", "--config", config, "--time-steps", 2, "--report", report,
                  "--markdown", markdown)
    assert result.exit_code == 0, result.output
    assert f"Options read from `{config.resolve()}`" in markdown.read_text()
    doc = json.loads(report.read_text())
    assert doc["coding"] == "differential" and doc["timesteps"] == 2  # the flag beats the file's 3
    assert (doc["calib_images"], doc["eval_images"]) == (48, 16) and doc["config"]["threshold"] == "max"
    assert doc["config"]["allow_ann_ops"] == ["nothing_matches"] and doc["layer_errors"]
    assert doc["config_file"] == str(config.resolve())  # the report says which file it read
    assert doc["calibration_check"] is None  # a switch's --no-... spelling as a key
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"coding": "rate", "timesteps": 2, "calib_images": 32, "eval-images": 8,
                                   "calib_data": "fashion-mnist", "eval_data": "fashion-mnist"}))
    result = _run(f"{NETS}:SpellingsNet", "--config", as_json, "--calib-samples", 40, "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert (doc["coding"], doc["timesteps"], doc["calib_images"], doc["eval_images"]) == ("rate", 2, 40, 8)
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                  "--calib-images", 16, "--eval-images", 8, "-T", 2, "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["config_file"] is None


def test_config_file_may_name_the_model(tmp_path):
    """A ``--config`` file can be the whole run: ``model`` is one of its keys (MODEL on the command line wins); with
    neither, one error line."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {NETS}:SpellingsNet\ncalib-data: fashion-mnist\neval-data: fashion-mnist\n"
                      "calib-images: 16\neval-images: 8\ntimesteps: 2\n")
    report = tmp_path / "r.json"
    result = _run("--config", config, "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["model"] == f"{NETS}:SpellingsNet"
    result = _run(f"{NETS}:ClipNet", "--config", config, "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["model"] == f"{NETS}:ClipNet"
    # -T on the command line replaces the file's sweep (and its options), --sweep the file's T
    config.write_text(f"model: {NETS}:SpellingsNet\ncalib-data: fashion-mnist\ncalib-images: 16\neval-images: 8\n"
                      "sweep: [1, 2]\ntarget-gap: 0.5\n")
    result = _run("--config", config, "-T", 3, "--report", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["timesteps"] == 3 and doc.get("sweep") is None, doc.get("sweep")
    config.write_text(f"model: {NETS}:SpellingsNet\ncalib-data: fashion-mnist\ncalib-images: 16\neval-images: 8\n"
                      "timesteps: 3\n")
    result = _run("--config", config, "--sweep", "1,2", "--report", report)
    assert result.exit_code == 0, result.output
    assert [run["timesteps"] for run in json.loads(report.read_text())["sweep"]["runs"]] == [1, 2]
    config.write_text("coding: rate\n")
    assert "no MODEL given" in _one_line_error(_run("--config", config))
    assert "no MODEL given" in _one_line_error(_run("--coding", "rate"))


@pytest.mark.parametrize("text, suffix, message", [
    ("timesteps: 4\nthreshods: max\n", ".yaml", "unknown option 'threshods'; valid: aggregation, allow-ann-op, "),
    ("timesteps: four\n", ".yaml", "timesteps: Invalid value for '--timesteps'"),
    ("[1, 2]", ".json", "must hold a mapping of option names to values"),
    ("{coding: [", ".yaml", "is not valid: "),
    ("coding = 'rate'", ".toml", "use a .yaml, .yml or .json file"),
    ("timesteps: 4\ntime-steps: 2\n", ".yaml", "'timesteps' and 'time-steps' set the same option; keep one"),
    ("calibration-check: true\nno-calibration-check: true\n", ".yaml", "set the same option"),
    ("no-calibration-check: 1\n", ".yaml", "no-calibration-check: 1 is not true or false"),
])
def test_bad_config_file_is_one_line(tmp_path, text, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    assert message in _one_line_error(_run(f"{NETS}:SpellingsNet", "--config", path))
    assert "does not exist" in _one_line_error(_run(f"{NETS}:SpellingsNet", "--config", tmp_path / "none.yaml"))


def test_markdown_report_shows_the_json_report(tmp_path):
    """``--markdown``: the JSON report's figures as tables (summary, every step, the sweep, one row per site, per
    layer and per unit's error, the configuration), rendered from the JSON report alone."""
    from snnconvert.runtime.report_md import report_markdown

    report, markdown = tmp_path / "r.json", tmp_path / "r.md"
    result = _run(f"{NETS}:SpellingsNet", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                  "--calib-images", 64, "--eval-images", 32, "--coding", "differential", "--sweep", "1,3",
                  "--layer-errors", "--report", report, "--markdown", markdown)
    assert result.exit_code == 0, result.output
    doc, text = json.loads(report.read_text()), markdown.read_text()
    assert text == report_markdown(doc)
    dead = json.loads(report.read_text())  # a unit the ANN leaves all zero (a dead ReLU site) has no relative error
    dead["layer_errors"][next(iter(dead["layer_errors"]))]["relative_error"] = None
    assert "n/a (ANN value 0)" in report_markdown(dead)  # it raised a TypeError
    ann, snn = doc["ann_accuracy"], doc["snn_accuracy"]
    top5 = doc["snn_accuracy_top5"]  # SpellingsNet has 10 classes
    summary = (f"| {100 * ann:.2f} % | {100 * snn[-1]:.2f} % | {100 * (snn[-1] - ann):+.2f} pp | "
               f"{100 * doc['ann_accuracy_top5']:.2f} % | {100 * top5[-1]:.2f} % | "
               f"{doc['events']['total_per_image']:,.0f}".replace(",", " "))
    assert summary in text
    for t, acc in enumerate(snn, start=1):
        assert f"| {t} | {100 * acc:.2f} % | {100 * (acc - ann):+.2f} pp | {100 * top5[t - 1]:.2f} % |" in text
    assert all(len(run["snn_accuracy_top5"]) == run["timesteps"] for run in doc["sweep"]["runs"])
    rec = doc["sweep"]["recommended_timesteps"]
    assert "## T sweep" in text
    assert (f"Recommended: T = {rec}." if rec is not None else "No T in the sweep reaches the target") in text
    assert "Chosen on 32 evaluation images (fashion-mnist, test, first 32)." in text
    held = dict(doc, sweep={**doc["sweep"], "selected_on": {"dataset": "fashion-mnist", "split": "train", "images": 8,
                                                             "selection": "the 8 after", "held_out": True}})
    assert "Chosen on 8 held-out images (fashion-mnist, train, the 8 after); the tables above" in report_markdown(held)
    assert all(f"| `{s['site']}` | relu |" in text for s in doc["thresholds"]["sites"])
    assert all(f"| `{name}` | {layer['input']} |" in text for name, layer in doc["synaptic_ops"]["layers"].items())
    assert '"coding": "differential"' in text
    final = doc["timesteps"]
    assert doc["layer_errors"] and all(f"| `{name}` | {e['ann_rms']:.4g} |" in text and
                                       f"{e['relative_error'][final - 1]:.3f} |" in text
                                       for name, e in doc["layer_errors"].items())


def test_failed_run_leaves_no_report(tmp_path):
    report = tmp_path / "report.json"
    result = _run(f"{NETS}:Unsupported", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                  "--calib-images", 8, "--eval-images", 8, "--report", report)
    assert result.exit_code == 1
    assert "3 unsupported node(s)" in result.output and "internal error" not in result.output, result.output
    assert not report.exists() and not list(tmp_path.iterdir())


def test_onnx_model_converts_saves_and_reloads(tmp_path):
    """An .onnx file (imported once by the CLI, also the ANN it compares against) converts, and the saved artifact
    rebuilds from its ONNX copy with the same thresholds (threshold keys are the importer's node names)."""
    from snnconvert.runtime import load

    onnx_path = Path(__file__).resolve().parents[1] / "models_zoo" / "weights" / "fmnist-resnet.onnx"
    report, output = tmp_path / "report.json", tmp_path / "snn"
    result = _run(str(onnx_path), "--coding", "differential", "--calib-images", 64, "--eval-images", 32, "-T", 2,
                  "--report", report, "--output", output)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["ann_accuracy"] > 0.5 and len(doc["snn_accuracy"]) == 2
    snn = load(output)
    saved = torch.load(output / "thresholds.pt")
    assert {name for name, _ in snn.neurons()} == set(saved)
    for name, neuron in snn.neurons():
        torch.testing.assert_close(neuron.threshold, saved[name], rtol=0, atol=0)
    again = tmp_path / "again.json"  # evaluated again from the folder: the ONNX copy is the ANN, same figures
    result = _run(output, "--report", again)
    assert result.exit_code == 0, result.output
    redo = json.loads(again.read_text())
    for key in ("ann_accuracy", "snn_accuracy", "events", "eval_images", "data"):
        assert redo[key] == doc[key], key


@pytest.mark.parametrize("backend,net,pairs", [
    ("native", "SpellingsNet", 0), ("native", "ClipNet", 3), ("triton", "SpellingsNet", 0), ("triton", "ClipNet", 3),
    ("inductor", "ClipNet", 3)])  # inductor: one network (each neuron configuration compiles for seconds)
def test_kernel_backends_give_the_torch_backend_report(tmp_path, backend, net, pairs):
    """--backend native (fused C neuron kernels), --backend triton (the interpreter on the CPU) and --backend inductor
    (torch.compile) reproduce the torch backend's accuracy, events and SOPs exactly, also with bounded ReLUs run as
    fused pairs (ClipNet: ReLU6, hardtanh(0, 1.5), clamp(0, 2)) and events counted in the kernels."""
    import shutil

    from snnconvert.runtime import backend_status

    if backend == "native" and shutil.which("cc") is None:
        pytest.skip("no C compiler for the native backend")
    if backend in ("triton", "inductor") and not backend_status(backend, "cpu")[0]:
        pytest.skip(backend_status(backend, "cpu")[1])
    docs = {}
    for name in ("torch", backend):
        report = tmp_path / f"{name}.json"
        result = _run(f"{NETS}:{net}", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                      "--calib-images", 64, "--eval-images", 16, "-T", 4, "--coding", "differential",
                      "--backend", name, "--report", report)
        assert result.exit_code == 0, result.output
        docs[name] = json.loads(report.read_text())
    assert docs[backend]["runtime"]["backend"] == backend
    assert docs[backend]["runtime"]["fused_pairs"] == docs["torch"]["runtime"]["fused_pairs"] == pairs
    for key in ("snn_accuracy", "events", "synaptic_ops"):
        assert docs[backend][key] == docs["torch"][key], key
    assert docs[backend]["thresholds"]["sites"] == docs["torch"]["thresholds"]["sites"]  # per-site events too


def test_unavailable_backend_fails_before_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("SNNCONVERT_CACHE_DIR", str(tmp_path))
    from snnconvert.runtime.kernels import native

    native.load_library.cache_clear()  # a library loaded earlier in this process would hide the missing compiler
    try:
        line = _one_line_error(_run("fmnist-vgg", "--backend", "native", "--calib-images", 8, "--eval-images", 8))
    finally:
        native.load_library.cache_clear()
    assert "--backend native" in line and "/nonexistent/cc" in line and "--backend torch" in line


def test_inductor_without_a_cxx_compiler_fails_before_calibration(monkeypatch):
    # no C++ compiler (simulated: torch caches its compiler search per process; a fresh process with CXX pointing
    # nowhere is tested in test_kernels.py): one line, exit 2, before any calibration
    from snnconvert.runtime.kernels import inductor

    monkeypatch.setattr(inductor, "_cxx_compiler", lambda: None)
    line = _one_line_error(_run("fmnist-vgg", "--backend", "inductor", "--calib-images", 8, "--eval-images", 8))
    assert "--backend inductor" in line and "no C++ compiler was found" in line and "--backend native" in line


_FAULTS = """
import ctypes, resource, torch
from snnconvert.runtime.malloc import keep_freed_memory
applied = keep_freed_memory()
x = torch.ones(64 << 18)  # 64 MiB, above glibc's largest mmap threshold
faults = []
for _ in range(12):  # two 64 MiB temporaries per iteration, like a layer's output and the next one
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = x * 2
    z = y + 1
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# 2.25 GiB freed at the top of the heap (address space only: no page is touched): kept, or handed back (trimmed)
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], MallInfo2
libc.free(libc.malloc(ctypes.c_size_t(9 << 28)))
print(applied, libc.mallinfo2().keepcost >> 20, *faults[4:])  # faults after the heap has settled (aligned blocks
# take a few rounds to be reused)
"""


def test_cli_allocator_setting_keeps_large_blocks_mapped():
    """runtime/malloc.py: with the setting, repeated 64 MiB temporaries reuse the same pages (no page faults once the
    heap has settled), and more than 2 GiB freed at the top of the heap stay with the process (a finite trim
    threshold gave them back and paged them in again on the next layer call); without it (opt-out, or glibc knobs the
    user set, which are respected) every temporary is paged in again."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    runs = {}
    for name, extra in (("on", {}), ("off", {"SNNCONVERT_KEEP_FREED_MEMORY": "0"}),
                        ("user", {"MALLOC_TRIM_THRESHOLD_": "131072"})):
        out = subprocess.run([sys.executable, "-c", _FAULTS], env={**base, **extra}, capture_output=True, text=True,
                             check=True).stdout.split()
        runs[name] = (out[0] == "True", int(out[1]), [int(f) for f in out[2:]])
    assert runs["on"][0] and not runs["off"][0] and not runs["user"][0]
    pages = 2 * (64 << 20) // 4096  # one iteration's temporaries
    assert min(runs["off"][2]) > pages // 2  # every iteration pages them in again
    # most iterations reuse the kept pages (glibc's heap layout sometimes takes one more round to settle)
    assert sum(f < pages // 8 for f in runs["on"][2]) >= 6, runs["on"][2]
    # the 2.25 GiB block: kept at the top of the heap with the setting; mmapped and unmapped (off) or trimmed (the
    # user's threshold) without it
    assert runs["on"][1] >= 2304 and runs["off"][1] < 64 and runs["user"][1] < 64, runs


def test_a_model_that_fails_on_the_data_gives_one_line_naming_the_node(tmp_path):
    """torch's shape propagation prints a traceback to stderr before it raises: swallowed, one line remains."""
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\n"
                   "def build():\n"
                   "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5, 10))\n")
    line = _one_line_error(_run(f"{net}:build", "--calib-data", "fashion-mnist", "--eval-data", "fashion-mnist",
                                "--calib-images", 8, "--eval-images", 8))
    assert "the model fails on an input of shape [2, 1, 28, 28] (node _3: mat1 and mat2 shapes cannot be" in line
