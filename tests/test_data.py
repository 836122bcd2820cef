"""Data layer: image folders, .npz arrays, torchvision architectures with local weights, and the rule that
calibration and evaluation images never overlap. Everything is generated in tmp_path (nothing downloaded)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from snnconvert.cli.main import app
from snnconvert.convert.errors import ConfigError, DataError, ModelLoadError
from snnconvert.runtime import load
from snnconvert.runtime.data import (
    Normalize,
    check_data_flags,
    load_calib_eval,
    load_dataset,
    load_eval,
    parse_data_spec,
    parse_normalize,
)
from snnconvert.runtime.imagefiles import FolderDataset, Preprocess
from snnconvert.runtime.models import resolve_model

CLASSES = ("ant", "bee", "cat")


def _folder(root, per_class=5, sizes=((40, 52), (48, 36)), mode="RGB", seed=0):
    """root/<class>/<i>.png with alternating image sizes; returns root."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i:02d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    return _folder(tmp_path / "imgs")


def test_folder_scan_labels_and_preprocessing(folder):
    ds = FolderDataset.scan(folder, name="f", preprocess=Preprocess(channels=3, resize=36, crop=32))
    assert ds.classes == CLASSES and len(ds) == 15
    assert ds.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    x, y = next(ds.batches(4))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    # the same decoding torchvision's reference transforms give
    from torchvision.transforms import functional as TF

    with Image.open(ds.files[0]) as im:
        ref = TF.center_crop(TF.resize(im.convert("RGB"), 36, antialias=True), 32)
    assert torch.equal(x[0], TF.pil_to_tensor(ref).float() / 255)
    grey = FolderDataset.scan(folder, name="f", preprocess=Preprocess(channels=1, crop=30)).example(2)
    assert grey.shape == (2, 1, 30, 30)


def test_hidden_files_and_folders_are_left_out_and_empty_classes_named(tmp_path, caplog):
    """macOS's ``._name.png`` resource forks (not images: they stopped the run) and ``.ipynb_checkpoints`` copies
    (counted as images) are left out, as hidden class folders were; a class folder without images keeps its label,
    with a warning naming it."""
    root = _folder(tmp_path / "imgs", per_class=2)
    (root / "bee" / "._00.png").write_bytes(b"\x00\x05\x16\x07 not an image")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "cat" / "00.png", root / "cat" / ".ipynb_checkpoints" / "00-checkpoint.png")
    (root / "dog").mkdir()
    (root / "eel").mkdir()
    shutil.copy(root / "cat" / "01.png", root / "eel" / "00.png")
    with caplog.at_level("WARNING", logger="snnconvert"):
        ds = FolderDataset.scan(root, name="f", preprocess=Preprocess(crop=32))
    assert len(ds) == 7 and ds.classes == ("ant", "bee", "cat", "dog", "eel")
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 4]
    assert "class folder(s) dog hold no images" in caplog.text
    assert next(ds.batches(7))[0].shape == (7, 3, 32, 32)
    assert "one class folder" not in caplog.text
    for cls_name in ("ant", "bee", "dog", "eel"):  # one class folder left: every image is label 0
        shutil.rmtree(root / cls_name)
    with caplog.at_level("WARNING", logger="snnconvert"):
        ds = FolderDataset.scan(root, name="f", preprocess=Preprocess(crop=32))
    assert ds.labels.tolist() == [0, 0] and "has one class folder (cat): all its images get label 0" in caplog.text


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_greyscale_images_are_scaled_not_clipped(tmp_path, channels):
    """A 16-bit greyscale PNG is read over its full scale (PIL's 8-bit conversion clipped every value above 255 to
    white): within one 8-bit step of the same picture saved with 8 bits, resized and cropped alike."""
    wide = (np.arange(40 * 48).reshape(40, 48) * 34).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray((wide // 257).astype(np.uint8)).save(tmp_path / "narrow.png")
    for pre in (Preprocess(channels=channels), Preprocess(channels=channels, resize=36, crop=32)):
        a, b = pre.load(tmp_path / "wide.png"), pre.load(tmp_path / "narrow.png")
        assert a.shape == b.shape == (channels, *((40, 48) if pre.crop is None else (32, 32)))
        assert float((a - b).abs().max()) <= 1.5 / 255  # clipped, every pixel above 255/65535 was 1


def test_decoding_threads_give_the_same_batches_in_order(tmp_path, folder):
    plain = FolderDataset.scan(folder, name="f", preprocess=Preprocess(resize=36, crop=32))
    threaded = FolderDataset.scan(folder, name="f", preprocess=Preprocess(resize=36, crop=32, workers=3))
    ours = list(threaded.batches(4))  # 15 images: batches of 4, 4, 4, 3, each decoded one batch ahead
    assert [len(y) for _, y in ours] == [4, 4, 4, 3]
    for (x, y), (x_ref, y_ref) in zip(ours, plain.batches(4), strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    first = next(threaded.batches(6))  # a caller that stops early: the batch decoded ahead is dropped
    assert torch.equal(first[0], next(plain.batches(6))[0])
    bad = _folder(tmp_path / "bad", per_class=3, sizes=((8, 8),))
    (bad / "bee" / "01.png").write_bytes(b"not a png")  # in the second batch, decoded while the first is used
    batches = FolderDataset.scan(bad, name="b", preprocess=Preprocess(workers=2)).batches(3)
    assert next(batches)[0].shape == (3, 3, 8, 8)
    with pytest.raises(DataError, match="cannot read image .*bee/01.png"):
        next(batches)
    for workers in (-1, 1.5, True):
        with pytest.raises(DataError, match="--num-workers must be a number of threads >= 0"):
            Preprocess(workers=workers)


def test_folder_bad_input(tmp_path, folder):
    ds = FolderDataset.scan(folder, name="f")
    with pytest.raises(DataError, match="different sizes.*--resize N and --crop N"):
        ds.example(2)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        FolderDataset.scan(tmp_path / "empty", name="e")
    with pytest.raises(DataError, match=r"no image files .* in .*empty/a or under .*empty/a/<class>/"):
        FolderDataset.scan(tmp_path / "empty" / "a", name="e")
    bad = _folder(tmp_path / "bad", per_class=1, sizes=((8, 8),))
    (bad / "ant" / "00.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*00.png"):
        next(FolderDataset.scan(bad, name="b").batches(8))
    with pytest.raises(DataError, match="does not exist"):
        parse_data_spec(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="unknown data set 'cifar'.*imagefolder:PATH"):
        parse_data_spec("cifar")
    with pytest.raises(DataError, match="positive number of pixels"):
        Preprocess(crop=0)


def test_same_folder_is_split_without_overlap(folder):
    pre = Preprocess(crop=32)
    spec = f"imagefolder:{folder}"
    sp = load_calib_eval(spec, spec, calib_images=6, eval_images=None, preprocess=pre)
    calib, evald, ci, ei = sp.calib, sp.eval, sp.calib_info, sp.eval_info
    assert sp.select is None and sp.select_info is None
    assert len(calib) == 6 and len(evald) == 9 and ci["images"] == 6 and ei["images"] == 9
    assert not set(calib.files) & set(evald.files)
    assert set(calib.files) | set(evald.files) == set(FolderDataset.scan(folder, name="f").files)
    again = load_calib_eval(spec, spec, calib_images=6, eval_images=4, preprocess=pre)
    assert again.calib.files == calib.files and again.eval.files == evald.files[:4]  # deterministic
    assert "calibration" in ci["split"] and "rest" in ei["split"]
    with pytest.raises(DataError, match="too few to hold out 15"):
        load_calib_eval(spec, spec, calib_images=15, eval_images=None, preprocess=pre)


def test_folder_subset_is_a_seeded_sample_not_the_first_class(tmp_path):
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "b", seed=1)
    sp = load_calib_eval(f"imagefolder:{a}", f"imagefolder:{b}", calib_images=6, eval_images=None)
    calib, ci = sp.calib, sp.calib_info
    assert len(set(calib.labels.tolist())) > 1 and "seeded permutation" in ci["selection"]


def test_two_folders_sharing_files_are_refused(tmp_path, folder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "ant").symlink_to(folder / "ant")
    with pytest.raises(DataError, match="share 5 image file"):
        load_calib_eval(f"imagefolder:{folder}", f"imagefolder:{other}", calib_images=4, eval_images=None)


def test_float_npz_images_in_pixel_units_are_named(tmp_path, caplog):
    """Float images are used as they are: a float array in [0, 255] (uint8 ones are scaled) gets a warning saying how
    to scale it; one in [0, 1] gets none."""
    rng = np.random.default_rng(0)
    for scale, warned in ((255.0, True), (1.0, False)):
        path = tmp_path / f"f{int(scale)}.npz"
        np.savez(path, x=(rng.random((6, 8, 8)) * scale).astype(np.float32), y=np.arange(6) % 2)
        caplog.clear()
        with caplog.at_level("WARNING", logger="snnconvert"):
            load_dataset(f"npz:{path}", "train")
        assert ("divide them by 255 (CLI: --normalize 0,255)" in caplog.text) is warned


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    two = tmp_path / "two.npz"
    np.savez(two, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 256, (7, 8, 8), dtype=np.uint8), y_test=np.arange(7) % 3)
    sp = load_calib_eval(str(two), f"npz:{two}", calib_images=5, eval_images=None)
    calib, evald, ci, ei = sp.calib, sp.eval, sp.calib_info, sp.eval_info
    assert calib.images.shape == (5, 1, 8, 8) and evald.images.shape == (7, 1, 8, 8)
    assert ci["split"] == "train" and ei["split"] == "test"
    assert torch.equal(calib.images[0], torch.from_numpy(np.load(two)["x_train"][0]).float().unsqueeze(0) / 255)
    one = tmp_path / "one.npz"
    nhwc = rng.random((12, 6, 6, 3)).astype(np.float32)
    np.savez(one, images=nhwc, labels=np.arange(12) % 2)
    sp = load_calib_eval(f"npz:{one}", f"npz:{one}", calib_images=4, eval_images=None)
    calib, evald = sp.calib, sp.eval
    assert calib.images.shape == (4, 3, 6, 6) and len(evald) == 8
    pooled = load_dataset(f"npz:{one}", "test")
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([calib.images, evald.images])}
    assert len(rows) == 12 and rows == {tuple(r.flatten().tolist()) for r in pooled.images}
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="expected one of the layouts"):
        load_dataset(f"npz:{bad}", "train")
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((2, 4, 4), np.nan, dtype=np.float32), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="NaN"):
        load_dataset(f"npz:{nan}", "train")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz is not a numpy .npz file"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}", "train")
    (tmp_path / "cut.npz").write_bytes(bad.read_bytes()[:40])  # a zip cut short
    with pytest.raises(DataError, match="cannot read .*cut.npz as a numpy .npz file"):
        load_dataset(f"npz:{tmp_path / 'cut.npz'}", "train")


def test_selection_images_are_held_out_after_the_calibration_images(tmp_path, folder):
    pre = Preprocess(crop=32)
    spec = f"imagefolder:{folder}"
    # one pool: calibration, selection and evaluation split it without overlap; calibration is unchanged
    sp = load_calib_eval(spec, spec, calib_images=6, eval_images=None, select_images=4, preprocess=pre)
    plain = load_calib_eval(spec, spec, calib_images=6, eval_images=None, preprocess=pre)
    parts = [set(sp.calib.files), set(sp.select.files), set(sp.eval.files)]
    assert [len(p) for p in parts] == [6, 4, 5] and sp.select_info["images"] == 4
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(FolderDataset.scan(folder, name="f").files)
    assert sp.calib.files == plain.calib.files and set(sp.eval.files) < set(plain.eval.files)
    assert "selection" in sp.eval_info["split"] and sp.select_info["split"] == "held out for selection"
    with pytest.raises(DataError, match="too few to hold out 6 for calibration and 9 for selection"):
        load_calib_eval(spec, spec, calib_images=6, eval_images=None, select_images=9, preprocess=pre)
    # two folders: the selection comes from the calibration folder's permutation, after the calibration images
    other = _folder(tmp_path / "other", seed=1)
    sp = load_calib_eval(spec, f"imagefolder:{other}", calib_images=6, eval_images=None, select_images=4,
                         preprocess=pre)
    plain = load_calib_eval(spec, f"imagefolder:{other}", calib_images=6, eval_images=None, preprocess=pre)
    assert sp.calib.files == plain.calib.files and len(sp.eval) == len(plain.eval) == 15
    assert len(sp.select) == 4 and not set(sp.select.files) & set(sp.calib.files)
    assert set(sp.select.files) <= set(FolderDataset.scan(folder, name="f").files)
    with pytest.raises(DataError, match="too few for 6 calibration and 10 selection images"):
        load_calib_eval(spec, f"imagefolder:{other}", calib_images=6, eval_images=None, select_images=10)
    # a train split read in order: the images right after the calibration images
    two = tmp_path / "two.npz"
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.savez(two, x_train=x_train, y_train=np.arange(20) % 3, x_test=x_train[:7], y_test=np.arange(7) % 3)
    sp = load_calib_eval(str(two), str(two), calib_images=5, eval_images=None, select_images=3)
    assert torch.equal(sp.select.images, torch.from_numpy(x_train[5:8]).float().unsqueeze(1) / 255)
    assert sp.select_info == {"split": "train", "selection": "the 3 after the calibration images",
                              "dataset": str(two), "images": 3}
    with pytest.raises(DataError, match="positive number of images, got 0"):
        load_calib_eval(str(two), str(two), calib_images=5, eval_images=None, select_images=0)


@pytest.fixture
def r18_weights(tmp_path):
    path = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    return path


def test_torchvision_model_from_local_weights(r18_weights):
    resolved = resolve_model("torchvision:resnet18", weights=r18_weights)
    assert resolved.model.fc.out_features == 3 and resolved.input_shape == (3, 224, 224)
    assert resolved.preprocessing["crop"] == 224 and resolved.preprocessing["resize"] == 256
    assert resolved.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    ref = torch.load(r18_weights)
    assert torch.equal(resolved.model.state_dict()["layer1.0.conv1.weight"], ref["layer1.0.conv1.weight"])
    with pytest.raises(ModelLoadError, match="needs --weights FILE"):
        resolve_model("torchvision:resnet18")
    with pytest.raises(ModelLoadError, match="unknown torchvision classification model 'resnet19'"):
        resolve_model("torchvision:resnet19", weights=r18_weights)
    with pytest.raises(ModelLoadError, match="do not fit the model"):
        resolve_model("torchvision:vgg11", weights=r18_weights)


runner = CliRunner()


def test_cli_torchvision_on_image_folder(tmp_path, folder, r18_weights):
    report, output = tmp_path / "report.json", tmp_path / "snn"
    spec = f"imagefolder:{folder}"
    result = runner.invoke(app, ["torchvision:resnet18", "--weights", str(r18_weights), "--calib-data", spec,
                                 "--eval-data", spec, "--resize", "36", "--crop", "32", "--calib-images", "6",
                                 "-T", "2", "--report", str(report), "--output", str(output)])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    cal, ev = doc["data"]["calibration"], doc["data"]["evaluation"]
    assert cal["images"] == 6 and ev["images"] == 9 and cal["dataset"] == ev["dataset"] == spec
    assert doc["calib_images"] == 6 and doc["eval_images"] == 9
    # the saved artifact rebuilds the torchvision model (weights=None, 3 classes) with identical outputs
    snn = load(output)
    x = FolderDataset.scan(folder, name="f", preprocess=Preprocess(resize=36, crop=32)).example(2)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    assert snn(x, 2).shape == (2, 2, 3)
    assert torch.equal(snn.gm.get_submodule("fc").weight, torch.load(r18_weights)["fc.weight"])


def test_cli_data_errors_are_one_line(tmp_path, folder, r18_weights):
    def one_line(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
        return lines[0]

    spec = f"imagefolder:{folder}"
    assert "--resize must be a positive number" in one_line(
        "torchvision:resnet18", "--weights", r18_weights, "--calib-data", spec, "--eval-data", spec, "--resize", "0")
    assert "needs --weights" in one_line("torchvision:resnet18", "--calib-data", spec, "--eval-data", spec)
    two = _folder(tmp_path / "two_classes", per_class=2, sizes=((32, 32),))
    for extra in ("dog", "emu"):
        (two / extra).mkdir()
        Image.new("RGB", (32, 32)).save(two / extra / "0.png")
    line = one_line("torchvision:resnet18", "--weights", r18_weights, "--calib-data", spec, "--eval-data",
                    f"imagefolder:{two}", "--crop", "32", "--calib-images", "3", "-T", "1")
    assert "labels go up to 4 but the model has 3 outputs" in line


NETS = str(Path(__file__).parent / "nets.py")


def test_npz_images_without_their_labels_array_are_named_when_others_have_one(tmp_path, caplog):
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    labelled = tmp_path / "half.npz"
    np.savez(labelled, x_train=images, y_train=np.zeros(2, dtype=np.int64), x_test=images, y_val=np.zeros(2))
    mixed = tmp_path / "mixed.npz"
    np.savez(mixed, x=images, labels=np.zeros(2, dtype=np.int64))
    plain = tmp_path / "plain.npz"
    np.savez(plain, x_train=images, x_test=images, y_test=np.zeros(2, dtype=np.int64))
    with caplog.at_level("WARNING", logger="snnconvert"):
        assert load_dataset(f"npz:{labelled}", "train").labels is not None
        assert "no labels array" not in caplog.text
        assert load_dataset(f"npz:{labelled}", "test").labels is None
        assert "images x_test have no labels array y_test, but the file holds y_train" in caplog.text
        caplog.clear()
        assert load_dataset(f"npz:{mixed}", "test").labels is None
        assert "images x have no labels array y, but the file holds labels" in caplog.text
        caplog.clear()
        load_dataset(f"npz:{plain}", "train")  # unlabelled calibration images: what calibration needs
    assert "no labels array y_train" in caplog.text


def test_npz_spec_naming_a_npy_file_or_object_arrays_is_a_data_error(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"plain\.npy holds a single numpy array.*not an \.npz archive.*numpy\.savez"):
        load_dataset(f"npz:{plain}", "test")
    with pytest.raises(DataError, match="plain.npy holds a single numpy array"):
        load_calib_eval(f"npz:{plain}", f"npz:{plain}", calib_images=1, eval_images=None)
    for name, content in (("text.npz", b"x,y\n1,2\n"), ("empty.npz", b"")):  # np.load would unpickle them
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name} is not a numpy \.npz file") as info:
            load_dataset(f"npz:{tmp_path / name}", "test")
        assert "pickle" not in str(info.value)
    ragged = tmp_path / "ragged.npz"
    np.savez(ragged, x=np.array([np.zeros((4, 4)), np.zeros((5, 5))], dtype=object), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match=r"ragged\.npz\[x\] is an object array.*store a numeric array"):
        load_dataset(f"npz:{ragged}", "test")
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((2, 4, 4), dtype=np.uint8), y=np.array(["a", None], dtype=object))
    with pytest.raises(DataError, match=r"labels\.npz\[y\] is an object array"):
        load_dataset(f"npz:{labels}", "test")


def test_cli_npy_as_eval_data_is_one_line(tmp_path):
    good, plain = tmp_path / "good.npz", tmp_path / "plain.npy"
    np.savez(good, x=np.zeros((8, 28, 28), dtype=np.uint8), y=np.zeros(8, dtype=np.int64))
    np.save(plain, np.zeros((8, 28, 28), dtype=np.uint8))
    result = runner.invoke(app, [f"{NETS}:SpellingsNet", "--calib-data", f"npz:{good}", "--eval-data",
                                 f"npz:{plain}", "--calib-images", "4", "-T", "2"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "plain.npy holds a single numpy array" in lines[0]


@pytest.mark.parametrize("text", ["nan,1", "0.5,inf", "0,0,0,-inf,1,1", "nan,nan"])
def test_normalize_refuses_non_finite_values(text):
    with pytest.raises(DataError, match="must be finite numbers"):
        parse_normalize(text)


def test_normalize_module_refuses_non_finite_values():
    with pytest.raises(DataError, match="must be finite numbers"):
        Normalize([float("nan")], [1.0])
    with pytest.raises(DataError, match="must be finite numbers"):
        Normalize([0.5], [float("nan")])


def test_explicit_resize_crop_and_data_dir_need_their_data(tmp_path, folder):
    arrays = tmp_path / "a.npz"
    np.savez(arrays, x=np.zeros((4, 8, 8), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(ConfigError, match=r"--resize 32: --resize/--crop apply to image folders \(imagefolder:PATH\)"):
        check_data_flags(["fashion-mnist", "fashion-mnist"], resize=32, crop=None)
    with pytest.raises(ConfigError, match=r"--crop 20: .*image folders.*\(npz:"):
        check_data_flags([f"npz:{arrays}"], resize=None, crop=20)
    check_data_flags(["fashion-mnist"], resize=None, crop=None)  # nothing given (a card's values are not checked)
    check_data_flags([f"imagefolder:{folder}", f"npz:{arrays}"], resize=36, crop=32)  # the folder uses them
    with pytest.raises(ConfigError, match=r"--data-dir .*folder of the Fashion-MNIST files.*drop --data-dir"):
        check_data_flags([f"npz:{arrays}", f"imagefolder:{folder}"], resize=None, crop=None, data_dir=tmp_path)
    check_data_flags(["fashion-mnist", f"npz:{arrays}"], resize=None, crop=None, data_dir=tmp_path)  # it applies
    with pytest.raises(ConfigError, match=r"--num-workers 2: the threads decode image folders"):
        check_data_flags(["fashion-mnist", f"npz:{arrays}"], resize=None, crop=None, num_workers=2)
    check_data_flags([f"imagefolder:{folder}", "fashion-mnist"], resize=None, crop=None, num_workers=0)


def test_a_data_folder_the_user_names_is_never_replaced_by_the_system_copy(tmp_path, monkeypatch):
    from snnconvert.runtime.data import find_fashion_mnist

    real = find_fashion_mnist()  # the folder the suite reads Fashion-MNIST from
    monkeypatch.setenv("SNNCONVERT_DATA_DIR", str(real))
    assert find_fashion_mnist() == real
    monkeypatch.setenv("SNNCONVERT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"not found in \$SNNCONVERT_DATA_DIR .*or unset it"):
        find_fashion_mnist()
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        find_fashion_mnist(tmp_path)  # --data-dir wins over the variable, and is not replaced either
    assert find_fashion_mnist(real) == real


def test_crop_larger_than_the_image_is_refused(tmp_path, folder):
    with pytest.raises(DataError, match=r"--crop 40 is larger than --resize 36"):
        Preprocess(resize=36, crop=40)
    small = _folder(tmp_path / "small", per_class=1, sizes=((28, 28),), mode="L")
    with pytest.raises(DataError, match=r"--crop 64 is larger than image .*00\.png \(28x28 pixels\)"):
        FolderDataset.scan(small, name="s", preprocess=Preprocess(channels=1, crop=64)).example(1)
    # 40x52 and 48x36 images: the 48x36 one is too small for a crop of 40
    with pytest.raises(DataError, match=r"\(36x48 pixels\).*--crop N <= 36"):
        next(FolderDataset.scan(folder, name="f", preprocess=Preprocess(crop=40)).batches(4))
    assert FolderDataset.scan(small, name="s", preprocess=Preprocess(channels=1, crop=28)).example(1).shape == (
        1, 1, 28, 28)


def test_more_images_than_available_warns_and_uses_all(tmp_path, folder, caplog):
    rng = np.random.default_rng(0)
    two = tmp_path / "two.npz"
    np.savez(two, x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 256, (7, 8, 8), dtype=np.uint8), y_test=np.arange(7) % 3)
    with caplog.at_level(logging.WARNING, logger="snnconvert.runtime.data"):
        sp = load_calib_eval(str(two), str(two), calib_images=10_000_000, eval_images=50)
    assert len(sp.calib) == 20 and len(sp.eval) == 7
    text = caplog.text
    assert "--calib-images 10000000" in text and "holds only 20 images; using all 20" in text
    assert "--eval-images 50" in text and "only 7 images" in text
    caplog.clear()
    spec = f"imagefolder:{folder}"
    with caplog.at_level(logging.WARNING, logger="snnconvert.runtime.data"):
        sp = load_calib_eval(spec, spec, calib_images=6, eval_images=100, preprocess=Preprocess(crop=32))
        evald, _ = load_eval(f"npz:{two}", eval_images=8)
    assert len(sp.eval) == 9 and "--eval-images 100: after the hold-out" in caplog.text and "only 9" in caplog.text
    assert len(evald) == 7 and "--eval-images 8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="snnconvert.runtime.data"):
        load_calib_eval(str(two), str(two), calib_images=20, eval_images=7)  # exactly what is there: no warning
    assert not caplog.records


def test_image_files_are_read_with_the_channels_of_the_models_first_convolution(tmp_path):
    """A Python model has no card: image files were read as RGB, and a greyscale model (its first convolution takes
    one channel) failed on them with no way round it; they are now read as greyscale for it."""
    from nets import SpellingsNet

    from snnconvert.runtime.models import first_conv_channels

    assert first_conv_channels(SpellingsNet()) == 1
    assert first_conv_channels(torchvision.models.resnet18()) == 3
    assert first_conv_channels(torch.nn.Linear(4, 2)) is None
    folder = _folder(tmp_path / "rgb", sizes=((28, 28),))  # RGB files
    result = CliRunner().invoke(app, [f"{NETS}:SpellingsNet", "--calib-data", f"imagefolder:{folder}",
                                      "--calib-images", "6", "-T", "2", "--no-calibration-check"])
    assert result.exit_code == 0, result.output
