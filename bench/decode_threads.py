"""Image-folder decoding with and without threads (``--num-workers``): images per second through
``FolderDataset.batches``, side by side in one run.

The folder is generated (nothing is downloaded): ``--images`` JPEG files of ImageNet's typical size (500x375,
quality 90, smooth random content) in 10 class folders, decoded with ResNet's preprocessing (resize 256, centre
crop 224). Each setting is timed ``--repeats`` times over the whole folder, interleaved, and the median is kept;
the first pass (page cache, imports) is not timed. A second table times the same loop with a consumer that runs
``--work-ms`` of single-threaded torch matrix products per batch in the main thread (a stand-in for the SNN, which
releases the GIL in torch's kernels as a model does), where decoding one batch ahead overlaps it.

    .venv/bin/python bench/decode_threads.py --images 400 --workers 0,1,2,4 --out bench/results/decode_threads.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snnconvert.runtime.imagefiles import FolderDataset, Preprocess


def make_folder(root: Path, images: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((500, 375), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def run(ds: FolderDataset, batch_size: int, work_s: float) -> float:
    """Seconds for one pass over the folder."""
    a = torch.rand(384, 384)
    start = time.perf_counter()
    for x, _ in ds.batches(batch_size):
        if work_s:
            end = time.perf_counter() + work_s
            while time.perf_counter() < end:  # torch work in the main thread (it releases the GIL, as a model does)
                a = torch.mm(a, a).clamp_(-1, 1)
        del x
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", default="0,1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-ms", type=float, default=200.0, help="consumer work per batch in the second table")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the consumer uses one core; the decoding threads the others
    settings = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "imgs", args.images)
        datasets = {w: FolderDataset.scan(root, name="bench", preprocess=Preprocess(resize=256, crop=224, workers=w))
                    for w in settings}
        run(datasets[settings[0]], args.batch_size, 0.0)  # warm-up: page cache, imports
        rows = {}
        for label, work in (("decode only", 0.0), (f"with {args.work_ms:g} ms work per batch", args.work_ms / 1e3)):
            times: dict[int, list[float]] = {w: [] for w in settings}
            for _ in range(args.repeats):
                for w in settings:  # interleaved: the settings share the machine's state
                    times[w].append(run(datasets[w], args.batch_size, work))
            rows[label] = {w: statistics.median(t) for w, t in times.items()}
    base = settings[0]
    print(f"{args.images} JPEGs 500x375 -> resize 256, crop 224; batch {args.batch_size}; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}; median of {args.repeats}")
    print("| loop | " + " | ".join(f"workers={w}" for w in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for label, row in rows.items():
        cells = [f"{args.images / row[w]:.0f} img/s ({row[base] / row[w]:.2f}x)" for w in settings]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats, "work_ms": args.work_ms,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "seconds": {label: {str(w): t for w, t in row.items()}
                                                     for label, row in rows.items()},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
