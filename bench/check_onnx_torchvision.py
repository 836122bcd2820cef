"""Full-model check of the ONNX importer against onnxruntime on torchvision models.

Each model (random weights, ``weights=None``; batch-norm statistics and zero / constant initialised parameters are
randomised so that every layer matters) is exported with the TorchScript exporter (``dynamo=False``) at opsets 13
and 17 and with the default dynamo exporter, all with a dynamic batch axis. The file is imported with
``snnconvert.convert.onnx_import.load_onnx`` and run at a batch size different from the export's; the result is
compared with onnxruntime's. Pass: ``|ours - ort| <= atol + rtol * |ort|`` element-wise with ``rtol=1e-4`` and
``atol=1e-5 * max|ort|`` (architecture.md §6).

Usage::

    python bench/check_onnx_torchvision.py                      # all models x all exporters
    python bench/check_onnx_torchvision.py --models resnet18 --exporters ts13,dynamo
    python bench/check_onnx_torchvision.py --models segmentation.fcn_resnet50,segmentation.lraspp_mobilenet_v3_large
    python bench/check_onnx_torchvision.py --models timm.resnet18,timm.vit_tiny_patch16_224   # needs timm
    python bench/check_onnx_torchvision.py --models ultralytics.yolov8n,ultralytics.yolo11n   # needs ultralytics
    python bench/check_onnx_torchvision.py --models vgg11_bn,timm.vgg16_bn --exporters dynamo --side 64 --snn-steps 16
    python bench/check_onnx_torchvision.py --static-batch --export-batch 1   # files exported without dynamic axes

The dynamo exporter needs the ``onnxscript`` package; without it those rows are reported as skipped.
Heavy: exports VGG-11 (0.5 GB) and ViT-B/16; expect several minutes on two cores.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from snnconvert.convert.errors import OnnxImportError, UnsupportedOpError
from snnconvert.convert.onnx_import import load_onnx
from snnconvert.convert.outputs import output_leaves

MODELS = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "squeezenet1_1", "densenet121", "vit_b_16",
          "mobilenet_v3_small", "regnet_y_400mf", "efficientnet_b0", "convnext_tiny"]
EXPORTERS = ["ts13", "ts17", "dynamo"]
# VGG's AdaptiveAvgPool2d(7) exports only for feature maps that are multiples of 7, ViT needs 224x224.
INPUT_SIZE = {"vgg11_bn": 224, "vit_b_16": 224, "timm.vgg16_bn": 224, "timm.inception_v3": 96, "timm.xception41": 96}
RTOL, ATOL_SCALE = 1e-4, 1e-5


class _Out(torch.nn.Module):
    """A segmentation model's ``["out"]`` (its dict output as one tensor, for one ONNX output)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def build(name: str) -> torch.nn.Module:
    """A torchvision classification model, ``segmentation.NAME`` (5 classes; bilinear ``Resize`` in ONNX) or
    ``timm.NAME`` (needs timm; transformers built for 64x64 inputs) or ``ultralytics.NAME`` (needs ultralytics: the
    model of ``NAME.yaml``, its heads in Ultralytics' export mode, which returns the decoded tensor alone)."""
    if name.startswith("ultralytics."):
        from ultralytics import YOLO

        model = YOLO(f"{name.partition('.')[2]}.yaml").model
        for module in model.modules():
            if hasattr(module, "export"):
                module.export, module.format = True, "onnx"
        return model
    if name.startswith("timm."):
        import timm

        try:
            return timm.create_model(name[5:], pretrained=False, num_classes=10, img_size=64)
        except TypeError:  # a CNN: no img_size argument
            return timm.create_model(name[5:], pretrained=False, num_classes=10)
    if name.startswith("segmentation."):
        factory = getattr(torchvision.models.segmentation, name.partition(".")[2])
        return _Out(factory(weights=None, weights_backbone=None, num_classes=5))
    return getattr(torchvision.models, name)(weights=None)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give batch-norm statistics and constant-initialised parameters random values (deterministic)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        for param in model.parameters():
            if param.numel() > 0 and bool((param == param.reshape(-1)[0]).all()):
                param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model.eval()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters: progress lines, warnings and, on failure, the TorchScript graph dumped from C++."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export(model: torch.nn.Module, x: torch.Tensor, path: Path, exporter: str, static_batch: bool = False) -> None:
    """Export with a dynamic batch axis (or, ``static_batch``, with the exporters' default: the batch size of
    ``x``): ``ts13`` / ``ts17`` (TorchScript exporter) or ``dynamo``."""
    with quiet():
        if exporter == "dynamo":
            dynamic = {} if static_batch else {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], verbose=False, **dynamic)
        else:
            dynamic = {} if static_batch else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(exporter[2:]),
                              input_names=["x"], output_names=["y"], **dynamic)


def check(name: str, exporter: str, workdir: Path, export_batch: int, check_batch: int,
          side: int | None = None, snn_steps: int = 0, static_batch: bool = False) -> dict:
    row = {"model": name, "exporter": exporter, "opset": "-", "err": float("nan"), "status": "", "seconds": 0.0}
    start = time.perf_counter()
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        row["status"] = "skipped (onnxscript not installed)"
        return row
    torch.manual_seed(0)
    model = randomize(build(name), seed=1)
    size = side or INPUT_SIZE.get(name, 64)
    path = workdir / f"{name}.{exporter}.onnx"
    try:
        export(model, torch.randn(export_batch, 3, size, size), path, exporter, static_batch)
    except Exception as exc:  # the exporter itself refuses (e.g. ViT at opset 13)
        row["status"] = f"export failed: {type(exc).__name__}"
        row["seconds"] = time.perf_counter() - start
        return row
    try:
        gm = load_onnx(path)
    except (OnnxImportError, UnsupportedOpError) as exc:
        row["status"] = "FAIL import: " + str(exc).splitlines()[0]
        return row
    row["opset"] = gm.meta["onnx"]["opset"]
    x = np.random.default_rng(2).standard_normal((check_batch, 3, size, size), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if static_batch:  # onnxruntime runs the file at its own batch size only: the model itself at the other one
        ok = True
        for batch in (export_batch, check_batch):
            x_b = x[:batch] if batch <= check_batch else np.resize(x, (batch, *x.shape[1:]))
            if batch == export_batch:
                reference = session.run(None, {session.get_inputs()[0].name: x_b})[0]
            else:
                with torch.no_grad():
                    reference = model(torch.from_numpy(x_b)).numpy()
            try:
                with torch.no_grad():
                    ours = gm(torch.from_numpy(x_b)).numpy()
            except Exception as exc:  # noqa: BLE001 - a batch size the import could not free
                row["status"] = f"FAIL run at batch {batch}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                row["seconds"] = time.perf_counter() - start
                return row
            scale = float(np.abs(reference).max())
            row["err"] = max(float(np.nan_to_num(row["err"])), float(np.abs(ours - reference).max() / max(scale,
                                                                                                        1e-30)))
            ok = ok and ours.shape == reference.shape and np.allclose(ours, reference, rtol=RTOL,
                                                                      atol=ATOL_SCALE * scale)
        references, scales = [reference], [scale]  # at the check batch, the last one
    else:  # every output of the file (Ultralytics' segmentation: boxes and mask prototypes)
        references = session.run(None, {session.get_inputs()[0].name: x})
        with torch.no_grad():
            ours_all = [t.numpy() for _, t in output_leaves(gm(torch.from_numpy(x)))]
        scales = [float(np.abs(r).max()) for r in references]
        row["err"] = max(float(np.abs(o - r).max() / max(c, 1e-30)) for o, r, c in zip(ours_all, references, scales))
        ok = len(ours_all) == len(references) and all(
            o.shape == r.shape and np.allclose(o, r, rtol=RTOL, atol=ATOL_SCALE * c)
            for o, r, c in zip(ours_all, references, scales))
        scale = min(scales)
    row["status"] = "pass" if ok and scale > 0 else ("FAIL (zero output)" if ok else "FAIL")
    if snn_steps and row["status"] == "pass":  # the imported file converts, and its SNN approaches the model
        from snnconvert.convert import ConversionConfig, convert

        calibration = torch.from_numpy(np.random.default_rng(3).standard_normal((16, 3, size, size),
                                                                                dtype=np.float32))
        res = convert(path, forward_loop=[calibration],
                      config=ConversionConfig.for_coding("differential", timesteps=snn_steps))
        with torch.no_grad():
            decoded = [t.numpy() for _, t in output_leaves(res.snn(torch.from_numpy(x), snn_steps))]
        row["snn_err"] = {t: max(float(np.abs(d[t - 1] - r).max() / c) for d, r, c in zip(decoded, references, scales))
                          for t in sorted({1, max(1, snn_steps // 4), snn_steps})}
    row["seconds"] = time.perf_counter() - start
    for suffix in ("", ".data"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--export-batch", type=int, default=2)
    parser.add_argument("--check-batch", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", type=int, help="input side for every model (default: 64, or the model's entry in "
                        "INPUT_SIZE)")
    parser.add_argument("--snn-steps", type=int, default=0, help="also convert each file that passes (differential, "
                        "T steps; 16 random calibration images) and give the SNN's max |output - ort| / max |ort| "
                        "after 1, T/4 and T steps")
    parser.add_argument("--static-batch", action="store_true", help="export without a dynamic batch axis (both "
                        "exporters' default; use --export-batch 1): checked against onnxruntime at the export's batch "
                        "size and against the PyTorch model at --check-batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    header = f"{'model':<14} {'exporter':<8} {'opset':>5} {'max rel err':>12} {'time s':>7}  result"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="onnx_check_") as tmp:
        for name in args.models.split(","):
            for exporter in args.exporters.split(","):
                row = check(name, exporter, Path(tmp), args.export_batch, args.check_batch, args.side,
                            args.snn_steps, args.static_batch)
                rows.append(row)
                print(f"{row['model']:<14} {row['exporter']:<8} {row['opset']!s:>5} {row['err']:>12.2e} "
                      f"{row['seconds']:>7.1f}  {row['status']}" + "".join(
                          f"; SNN T={t}: {e:.2e}" for t, e in row.get("snn_err", {}).items()), flush=True)
    failed = [r for r in rows if r["status"].startswith("FAIL")]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rows without failure ("
          f"{'static' if args.static_batch else 'dynamic'} batch: export batch {args.export_batch}, "
          f"check batch {args.check_batch}, rtol={RTOL}, atol={ATOL_SCALE}*max|ort|)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
