"""Low-precision accuracy of the converted zoo models: the same SNN compiled for fp32 and for bf16 (or fp16).

The Triton-runtime issue asks for "bf16 path accuracy within 0.1 pp of fp32 on the zoo models". Each model is
converted once, calibrated in fp32 on the CPU on the first --calib-images TRAIN images in batches of 256 (as the CLI
does, whatever its ``--dtype`` and ``--device``: the same thresholds), then compiled for every dtype of --dtypes on
--backend / --device and evaluated on the TEST split (--eval-images, default all 10 000). ``compile`` rounds the
thresholds to the dtype (runtime/lower.py). One conversion per model instead of one per CLI run and dtype.

    python bench/bf16_accuracy.py --backend triton --device cuda --out OUTDIR            # the GPU check
    python bench/bf16_accuracy.py --backend native --eval-images 500 --out /tmp/bf16    # CPU smoke run

Writes ``bf16_accuracy.json`` and ``bf16_accuracy.md`` to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert
from snnconvert.runtime import backend_status, compile, evaluate
from snnconvert.runtime.data import load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-vgg,fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--coding", default="differential", choices=["rate", "differential"])
    ap.add_argument("--timesteps", "-T", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16", help=f"comma list of {', '.join(DTYPES)}")
    ap.add_argument("--backend", default="triton", help="torch, triton or native")
    ap.add_argument("--device", default=None, help="cuda or cpu [default: cpu for --backend native, else cuda]")
    ap.add_argument("--calib-images", type=int, default=5000)
    ap.add_argument("--eval-images", type=int, default=None, help="default: the whole test split")
    ap.add_argument("--batch-size", type=int, default=512, help="images per evaluation batch")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args()


def run_model(name: str, args, calib, test, device: torch.device) -> list[dict]:
    model = models_zoo.get_model(name).eval()
    cfg = ConversionConfig.for_coding(args.coding, timesteps=args.timesteps)
    start = time.perf_counter()
    # calibration as the CLI runs it (on the CPU, batches of 256), so the thresholds are the CLI's
    res = convert(model, forward_loop=lambda m: [m(x) for x, _ in calib.batches(256)], config=cfg)
    convert_s = time.perf_counter() - start
    rows = []
    for dtype_name in args.dtypes.split(","):
        if dtype_name not in DTYPES:
            raise SystemExit(f"bf16_accuracy: unknown dtype {dtype_name!r}; choose from {', '.join(DTYPES)}")
        snn = compile(res.snn, args.backend, device=device, dtype=DTYPES[dtype_name])
        start = time.perf_counter()
        ev = evaluate(snn, test.batches(args.batch_size), ann=model, timesteps=args.timesteps, device=device)
        rows.append({"model": name, "dtype": dtype_name, "ann_accuracy": ev.ann_accuracy,
                     "snn_accuracy": ev.snn_accuracy, "events_per_image": sum(ev.events_per_step),
                     "images": ev.images, "convert_s": round(convert_s, 2),
                     "eval_s": round(time.perf_counter() - start, 2)})
        print(f"{name} {dtype_name}: SNN {100 * ev.snn_accuracy[-1]:.2f} % at T={args.timesteps} "
              f"(ANN {100 * ev.ann_accuracy:.2f} %, {ev.images} images, {rows[-1]['eval_s']} s)", flush=True)
    return rows


def to_markdown(result: dict) -> str:
    info = result["info"]
    lines = [f"Low-precision accuracy: {info['coding']} coding, T = {info['T']}, backend {info['backend']} on "
             f"{info['device_name']}, calibration on {info['calib_images']} train images (fp32), "
             f"{info['eval_images']} test images; torch {info['torch']}", "",
             "| model | dtype | ANN % | SNN % at T | minus the first dtype (pp) | events / image | eval s |",
             "|---|---|---|---|---|---|---|"]
    base: dict[str, float] = {}
    for r in result["rows"]:
        acc = r["snn_accuracy"][-1]
        base.setdefault(r["model"], acc)
        lines.append(f"| {r['model']} | {r['dtype']} | {100 * r['ann_accuracy']:.2f} | {100 * acc:.2f} | "
                     f"{100 * (acc - base[r['model']]):+.2f} | {r['events_per_image']:.0f} | {r['eval_s']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    device = torch.device(args.device or ("cpu" if args.backend == "native" else "cuda"))
    ok, reason = backend_status(args.backend, device)
    if not ok:
        print(f"bf16_accuracy: {reason}", file=sys.stderr)
        return 2
    if device.type == "cpu":
        keep_freed_memory()
    else:  # full fp32 layers: TF32 would blur the fp32 reference
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    calib = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test")
    if args.eval_images is not None:
        test = test.subset(args.eval_images)
    info = {"coding": args.coding, "T": args.timesteps, "backend": args.backend, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or "cpu", "calib_images": args.calib_images, "eval_images": len(test), "torch": torch.__version__}
    result = {"info": info, "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        result["rows"] += run_model(name, args, calib, test, device)
        # written after every model: a run stopped by a time limit keeps what it measured
        (args.out / "bf16_accuracy.json").write_text(json.dumps(result, indent=2))
        (args.out / "bf16_accuracy.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
