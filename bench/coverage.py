"""Which torchvision (or, with ``--timm``, timm; with ``--segmentation``, torchvision's segmentation models; with
``--ultralytics``, Ultralytics' YOLO families) architectures convert, and how: one row per family.

Each model is built with random weights (no download), its BatchNorm statistics set by three training-mode passes
on random images, then converted with the differential preset (T = 4; calibration on 32 random images) through the
torch.fx front end. A row gives: converted or refused (with the first line of the reason), ReLU sites (spiking
neurons), identity-neuron sites (signed neurons in front of layers that would read dense values, method.md §4.7;
the default ``identity_neurons="auto"``), graded units by kind (dense outputs, method.md §5), the share of the
ANN's MACs in layers fed by analog or dense inputs (counted as MACs by the extended energy metric; the first
layer's share included), and the largest
difference between the converted graph run as an ANN (``snn.ann_forward``) and the model, relative to the largest
output (fp32 rounding of BatchNorm folding; random-weight outputs can be large). With ``--converge 4,16`` also
the SNN's own error against the model after T steps (4 of the images, ``snn(x, T)``; thresholds fitted for T = 4).

    .venv/bin/python bench/coverage.py --out bench/results/coverage.json
    .venv/bin/pip install timm && .venv/bin/python bench/coverage.py --timm --out bench/results/coverage_timm.json
    .venv/bin/python bench/coverage.py --segmentation --out bench/results/coverage_segmentation.json
    PYTHONPATH=/tmp/ulsite:/tmp/uldeps .venv/bin/python bench/coverage.py --ultralytics \
        --out bench/results/coverage_ultralytics.json   # ultralytics installed there (BENCHMARKS.md)

timm is not a dependency of snnconvert (this bench imports it only with ``--timm``); its models are built with
``pretrained=False`` (nothing is downloaded), transformers at their ``img_size`` where they take one. Neither is
ultralytics (imported only with ``--ultralytics``); its models are built from their YAML files (random weights).

Structure only: random weights say nothing about accuracy (the zoo models on Fashion-MNIST do, BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.errors import SnnConvertError, UnsupportedOpError
from snnconvert.convert.outputs import output_leaves
from snnconvert.runtime.energy import SynapticOpCounter

FAMILIES = ["alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "squeezenet1_1",
            "googlenet", "inception_v3", "mobilenet_v2", "mnasnet0_5", "regnet_x_400mf", "shufflenet_v2_x0_5",
            "mobilenet_v3_small", "mobilenet_v3_large", "regnet_y_400mf", "efficientnet_b0", "efficientnet_v2_s",
            "convnext_tiny", "swin_t", "swin_v2_t", "vit_b_16"]


TIMM_FAMILIES = ["resnet18", "resnet34", "resnet50", "resnet18d", "seresnet18", "vgg16_bn", "densenet121",
                 "inception_v3", "xception41", "dla34", "dpn68", "cspresnet50", "res2net50_14w_8s", "hrnet_w18_small",
                 "regnetx_002", "repvgg_a0", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0",
                 "tf_efficientnet_lite0", "mixnet_s", "ghostnet_100", "rexnet_100", "convnext_atto",
                 "poolformer_s12", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "levit_128s",
                 "swin_tiny_patch4_window7_224"]


def _timm_model(name: str, side: int):
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=side)
    except TypeError:  # a CNN: no img_size argument
        return timm.create_model(name, pretrained=False, num_classes=10)


#: Ultralytics (``pip install ultralytics``; not a dependency): models built from their YAML files, random weights
ULTRALYTICS_FAMILIES = ["yolov3u", "yolov5nu", "yolov6n", "yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-obb",
                        "yolov8n-cls", "yolov9t", "yolov10n", "yolo11n", "yolo11n-seg", "yolo11n-pose", "yolo11n-obb",
                        "yolo11n-cls", "yolo12n", "yolo26n", "rtdetr-l"]


def _ultralytics_model(name: str):
    from ultralytics import RTDETR, YOLO

    return (RTDETR if name.startswith("rtdetr") else YOLO)(f"{name}.yaml").model


SEGMENTATION_FAMILIES = ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                         "lraspp_mobilenet_v3_large"]


def build(name: str, side: int, source: str = "torchvision"):
    if source == "timm":
        model = _timm_model(name, side)
    elif source == "ultralytics":
        model = _ultralytics_model(name)
    elif source == "segmentation":  # dict outputs ({"out": [B, classes, H, W]}), bilinear upsampling
        import torchvision.models.segmentation as tvs

        model = getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=5)
    else:
        import torchvision.models as tvm

        kwargs = {"num_classes": 10}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        if name == "vit_b_16":
            kwargs["image_size"] = side
        model = getattr(tvm, name)(**kwargs)
    with torch.no_grad():  # torchvision's ViT initialises its head to zero: every output would be 0
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
                layer.weight.normal_(0, 0.02)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, side, side))
    return model.eval()


def _relative_errors(snn, model, x: torch.Tensor, steps: tuple[int, ...]) -> list[float]:
    """max |decoded SNN output after t steps - model output| / max |model output| over every output, for each t."""
    with torch.no_grad():
        ref, out = dict(output_leaves(model(x))), dict(output_leaves(snn(x, max(steps))))
    return [max(float((out[k][t - 1] - v).abs().max() / v.abs().max()) for k, v in ref.items()) for t in steps]


def row(name: str, side: int, source: str = "torchvision", converge: tuple[int, ...] = ()) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        model = build(name, side, source)
    except Exception as err:  # noqa: BLE001 - the model itself, not the converter: a row, not a crash
        return {"model": name, "converts": False, "reason": f"the model itself fails on {side}×{side}: "
                f"{type(err).__name__}: {str(err).splitlines()[0]}", "seconds": round(time.perf_counter() - start, 1)}
    x = torch.rand(32, 3, side, side)  # after the model's weights: the recorded tables' random draws
    try:
        res = convert(model, forward_loop=[x], config=ConversionConfig.for_coding("differential", timesteps=4),
                      example_inputs=x[:1])
    except UnsupportedOpError as err:
        kinds = sorted({n.module_type or n.target.rsplit(".", 1)[-1] for n in err.nodes})
        why = "no ReLU: " if "no ReLU" in str(err) else "unsupported: "
        return {"model": name, "converts": False, "reason": f"{why}{len(err.nodes)} node(s) ({', '.join(kinds)})",
                "seconds": round(time.perf_counter() - start, 1)}
    except SnnConvertError as err:  # a trace error: its first clause
        return {"model": name, "converts": False, "reason": f"{type(err).__name__}: {str(err).split(';')[0]}",
                "seconds": round(time.perf_counter() - start, 1)}
    try:  # the SNN runs (2 images, 2 steps): catches what only shows at run time
        res.snn(x[:2], 2)
    except SnnConvertError as err:
        return {"model": name, "converts": False, "reason": f"runs: {str(err).split(';')[0]}",
                "seconds": round(time.perf_counter() - start, 1)}
    counts = res.report.entry("replace_activations").counts
    units = {k[len("GradedUnit("):-1]: v for k, v in counts.items() if k.startswith("GradedUnit(")}
    counter = SynapticOpCounter(res.snn, 1)  # dense MACs per layer and each layer's input kind
    res.snn(x[:1], 1)
    counter.close()
    tot, kinds = counter.counts.tot, counter.counts.kinds
    analog = sum(v for k, v in tot.items() if kinds.get(k) == "analog")
    with torch.no_grad():
        ref, got = dict(output_leaves(model(x[:4]))), dict(output_leaves(res.snn.ann_forward(x[:4])))
        diff = max(((got[k] - v).abs().max() / v.abs().max()).item() for k, v in ref.items())
    identity = res.calibration.count("identity")
    errors = dict(zip(map(str, converge), _relative_errors(res.snn, model, x[:4], converge))) if converge else None
    return {"model": name, "converts": True, "relu_sites": len(res.thresholds) - identity,
            "identity_sites": identity, "graded_units": units,
            "analog_mac_share": analog / sum(tot.values()), "ann_forward_max_rel_diff": diff,
            **({"snn_max_rel_error": errors} if converge else {}), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma list of model names (default: the families of the source)")
    parser.add_argument("--timm", action="store_true", help="timm models instead of torchvision's (needs timm)")
    parser.add_argument("--segmentation", action="store_true", help="torchvision's segmentation models")
    parser.add_argument("--ultralytics", action="store_true", help="Ultralytics' YOLO families (needs ultralytics)")
    parser.add_argument("--side", type=int, default=64, help="input image side (inception_v3 needs >= 75)")
    parser.add_argument("--converge", help="comma list of steps T: also run the SNN on 4 of the images and give "
                        "max |SNN output after T steps - model output| / max |model output| (slower)")
    parser.add_argument("--fused-attn", action="store_true", help="with --timm: the models' fused attention "
                        "(F.scaled_dot_product_attention, masks included; timm.layers.set_fused_attn, experimental "
                        "ones too) instead of timm's default")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.fused_attn:
        if not args.timm:
            parser.error("--fused-attn applies to --timm models")
        from timm.layers import set_fused_attn

        set_fused_attn(True, experimental=True)
    torch.set_grad_enabled(False)
    rows = []
    converge = tuple(int(t) for t in args.converge.split(",")) if args.converge else ()
    extra = "".join(f" SNN error T = {t} |" for t in converge)
    print("| model | converts | ReLU sites | identity sites | graded units (dense outputs) | MACs fed by analog/dense "
          "inputs | converted graph as ANN vs model: max |diff| / max |output| |" + extra)
    print("|---|---|---|---|---|---|---|" + "---|" * len(converge))
    source = ("timm" if args.timm else "segmentation" if args.segmentation else "ultralytics" if args.ultralytics
              else "torchvision")
    default = {"timm": TIMM_FAMILIES, "segmentation": SEGMENTATION_FAMILIES, "ultralytics": ULTRALYTICS_FAMILIES,
               "torchvision": FAMILIES}[source]
    names = args.models.split(",") if args.models else default
    for name in names:
        r = row(name, max(args.side, 80) if "inception" in name or "xception" in name else args.side, source,
                converge)
        rows.append(r)
        if r["converts"]:
            units = ", ".join(f"{k} ×{v}" for k, v in r["graded_units"].items()) or "—"
            print(f"| {name} | yes | {r['relu_sites']} | {r['identity_sites']} | {units} | "
                  f"{100 * r['analog_mac_share']:.1f} % | "
                  f"{r['ann_forward_max_rel_diff']:.1e} |" + "".join(
                      f" {e:.1e} |" for e in r.get("snn_max_rel_error", {}).values()), flush=True)
        else:
            print(f"| {name} | no | | | | | {r['reason']} |" + " |" * len(converge), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
