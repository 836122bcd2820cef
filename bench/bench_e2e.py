"""End-to-end speed: converted SNN (T steps, multi-step mode) vs the ANN on a T·B batch, with a time breakdown.

For every model x coding x T x batch B x backend, the script converts the model once (calibration on fixed images),
then times, interleaved and after warm-ups, under ``torch.no_grad``:

- ``ann``: the ANN as given (eval mode; BatchNorm NOT folded) on a batch of T·B images;
- ``ann_fused``: the same ANN with every conv-BN pair folded (``torch.fx.experimental.optimization.fuse``), the
  stricter baseline (the SNN's convolutions are folded too);
- ``snn``: ``snn(x, T)`` on a batch of B images (encode, T steps layer by layer over ``[T·B]`` batches, decode);
- ``snn_single`` (``--single``): the same in single-step (streaming) mode;
- ``snn_torch`` (kernel backends only): the torch-backend SNN in the same interleave, for the speed-up of the
  kernel backend over the torch reference runtime, plus a check that both give bit-identical outputs;
- ``snn_ref`` (``--reference``): the same SNN with the readable reference loops of the neurons and graded units
  (``fast_path = False``: the code before the fast paths), plus a check that both give bit-identical outputs;
- ``snn_unfused`` (``--unfused``): the same backend compiled with ``fuse=False`` (every decomposed ReLU6 / clamp as
  two neurons and two subtractions instead of one fused unit, ``runtime/fuse.py``), plus a check that both give
  bit-identical outputs.

It reports the medians and the ratios SNN / ANN, plus a per-module breakdown of one SNN run (and one ANN run)
measured with forward hooks (perf_counter; CUDA synchronised at each hook on a GPU, so the breakdown runs apart from
the timed repetitions): spiking neurons, graded units, convolutions / linear layers, the other modules, and the
rest (functional ops such as residual adds, encode, decode, Python overhead).

Models: zoo names (``fmnist-vgg``, ``fmnist-resnet``; Fashion-MNIST calibration images, test images as input) and
``torchvision:resnet18`` / ``torchvision:resnet34`` (random seeded weights, random-but-fixed 224x224 images, BN
folded by the converter; the ``ann_fused`` column is the fair baseline there). Backends are asked for with
``snnconvert.runtime.compile(snn, backend=..., device=...)``; a ``BackendUnavailableError`` is recorded as
"unavailable" and the run goes on. ``--dtype`` is passed to ``compile`` when it has a ``dtype`` parameter; otherwise
rows with a dtype other than float32 are skipped with a note.

Examples::

    .venv/bin/python bench/bench_e2e.py                                   # zoo CNNs, rate + diff, T=8, B=32, CPU
    .venv/bin/python bench/bench_e2e.py --batch 32,128 --single
    .venv/bin/python bench/bench_e2e.py --models torchvision:resnet18,torchvision:resnet34 --device cuda \\
        --backends torch,triton --batch 32 --dtype bfloat16

Outputs ``<out>/<name>.json`` and ``<out>/<name>.md`` (default ``bench/results/e2e_<device>.*``) and prints the
table. Timings on a shared machine are noisy: compare ratios from one run, not absolute times across runs. On a CPU
that other jobs keep busy, every OpenMP parallel region of a multi-threaded run can wait for a descheduled worker
thread; the SNN issues far more (and smaller) tensor operations than the ANN, so its multi-threaded times then swing
by up to 10x between repetitions. ``--threads 1`` gives stable ratios there.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from snnconvert import models_zoo, runtime
from snnconvert.convert import ConversionConfig, convert
from snnconvert.convert.coding.neurons import SpikingNeuron
from snnconvert.convert.coding.stepping import StepModule
from snnconvert.convert.coding.units import GradedUnit
from snnconvert.convert.errors import BackendUnavailableError
from snnconvert.runtime.malloc import keep_freed_memory

DEFAULT_MODELS = "fmnist-vgg,fmnist-resnet,fmnist-mobilenet"
TORCHVISION_PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------------------------------


def load_model(spec: str, args) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """``(ann, calibration images, input pool, note)``; images are fixed for a given spec and seed."""
    if spec.startswith(TORCHVISION_PREFIX):
        import torchvision

        arch = spec[len(TORCHVISION_PREFIX):]
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = getattr(torchvision.models, arch)(weights=None)
        gen = torch.Generator().manual_seed(args.seed)
        size = args.image_size
        n_in = max(args.batch)  # B distinct images; the ANN's T·B batch cycles through them (ann_batch)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        calib = (torch.rand(args.tv_calib_images, 3, size, size, generator=gen) - mean) / std
        pool = (torch.rand(n_in, 3, size, size, generator=gen) - mean) / std
        return model.eval(), calib, pool, f"random weights (seed {args.seed}), random {size}x{size} images"
    model = models_zoo.get_model(spec)
    entry = models_zoo.get_entry(spec)
    try:
        from snnconvert.runtime.data import load_dataset

        calib = load_dataset(entry.dataset, "train").subset(args.calib_images).images
        pool = load_dataset(entry.dataset, "test").subset(max(args.batch) * max(args.timesteps)).images
        note = f"{entry.dataset}: {len(calib)} train images for calibration, test images as input"
    except Exception as exc:  # noqa: BLE001 - no data set here: fixed random images keep the timing meaningful
        gen = torch.Generator().manual_seed(args.seed)
        calib = torch.rand(args.calib_images, *entry.input_shape, generator=gen)
        pool = torch.rand(max(args.batch) * max(args.timesteps), *entry.input_shape, generator=gen)
        note = f"data set unavailable ({type(exc).__name__}); random images"
    return model, calib, pool, note


def ann_batch(pool: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` images: the pool's first ``n``, cycled when the pool is smaller (torchvision inputs)."""
    if pool.shape[0] >= n:
        return pool[:n].contiguous()
    reps = -(-n // pool.shape[0])
    return pool.repeat(reps, *([1] * (pool.dim() - 1)))[:n].contiguous()


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with conv-BN pairs folded (eval mode); the model itself when fx cannot trace it."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # noqa: BLE001 - untraceable model: no folded baseline
        return model


def convert_model(model: nn.Module, calib: torch.Tensor, coding: str, T: int, args):
    overrides = {"timesteps": T}
    if args.threshold:
        overrides["threshold"] = args.threshold
    cfg = ConversionConfig.for_coding(coding, **overrides)
    batches = list(calib.split(args.calib_batch))
    start = time.perf_counter()
    result = convert(model, forward_loop=lambda m: [m(x) for x in batches], config=cfg)
    return result.snn, cfg, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


class Timer:
    """Wall time of a call: perf_counter on the CPU, CUDA events (after a synchronize) on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], timer: Timer, reps: int, warmup: int) -> dict[str, list]:
    """Warm every function up, then run ``reps`` rounds calling each once per round (order rotated per round)."""
    names = list(fns)
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(timer(fns[name]))
    return times


# ---------------------------------------------------------------------------------------------------------------------
# Breakdown (forward hooks)
# ---------------------------------------------------------------------------------------------------------------------


def category(module: nn.Module) -> str:
    if isinstance(module, SpikingNeuron) or getattr(module, "site_names", None):  # a neuron or a fused pair
        return "neurons"
    if isinstance(module, GradedUnit):
        return "graded units"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return "conv/linear"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "relu"
    return "other modules"


def leaf_modules(root: nn.Module):
    """Modules that do work themselves: stateful units (whose inner ``f`` is timed as part of them; it may also be
    registered elsewhere in the graph under its original name) and the other modules without children."""
    inner: set[int] = set()
    for module in root.modules():
        if isinstance(module, StepModule):
            inner.update(id(m) for m in module.modules() if m is not module)
    for name, module in root.named_modules():
        if id(module) in inner:
            continue
        if isinstance(module, StepModule) or not any(True for _ in module.children()):
            yield name, module


def macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = int(torch.tensor(module.kernel_size).prod())
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def breakdown(root: nn.Module, call: Callable[[], object], timer: Timer, reps: int) -> dict:
    """Per-module time of ``call()`` (hooks on the leaf modules) in the run of median total time, grouped by
    category, plus the rest (time outside every hooked module)."""
    per_module: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict] = {}
    starts: dict[str, float] = {}
    handles = []

    def pre(name):
        def hook(module, args):
            timer.sync()
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, out):
            timer.sync()
            elapsed = time.perf_counter() - starts.pop(name)
            per_module[name].append(elapsed)
            if name not in info and isinstance(out, torch.Tensor):
                x = args[0] if args and isinstance(args[0], torch.Tensor) else out
                # per sample (one image at one step): the SNN's static-prefix layers see B rows, the rest T·B
                # a fused pair of neurons counts its input once per neuron, like the unfused graph
                sites = len(getattr(module, "site_names", ())) or 1
                info[name] = {"category": category(module), "type": type(module).__name__,
                              "elements_per_image": x[0].numel() * sites,
                              "macs_per_image": macs(module, out) // out.shape[0]}
        return hook

    for name, module in leaf_modules(root):
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    totals = []
    try:
        with torch.no_grad():
            call()  # warm-up with hooks
            per_module.clear()
            for _ in range(reps):
                totals.append(timer(call))
    finally:
        for h in handles:
            h.remove()
    # per run: the sum of each module's calls (single-step mode calls each module T times); the breakdown reported is
    # the run whose total is the median, so that its parts add up
    ncalls = {name: len(v) // reps for name, v in per_module.items()}
    runs = [{name: sum(v[i * ncalls[name]:(i + 1) * ncalls[name]]) for name, v in per_module.items()}
            for i in range(reps)]
    pick = sorted(range(reps), key=lambda i: totals[i])[reps // 2]
    med, total = runs[pick], totals[pick]
    cats: dict[str, float] = defaultdict(float)
    for name, t in med.items():
        cats[info.get(name, {}).get("category", "other modules")] += t
    cats["rest (functional ops, encode/decode, overhead)"] = max(0.0, total - sum(med.values()))
    top = sorted(med.items(), key=lambda kv: -kv[1])[:8]
    return {
        "total_s": total,
        "categories_s": dict(cats),
        "categories_pct": {k: 100.0 * v / total for k, v in cats.items()},
        "top_modules": [{"name": n, "seconds": t, **info.get(n, {})} for n, t in top],
        "neuron_elements_per_image": sum(v["elements_per_image"] for v in info.values() if v["category"] == "neurons"),
        "graded_elements_per_image": sum(v["elements_per_image"] for v in info.values()
                                         if v["category"] == "graded units"),
        "macs_per_image": sum(v["macs_per_image"] for v in info.values()),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------------------------------------------------


def compile_snn(snn, backend: str, device: torch.device, dtype: torch.dtype, fuse: bool = True):
    """``(compiled, note)``; ``compiled`` is None with the reason in ``note`` when the row cannot run."""
    params = inspect.signature(runtime.compile).parameters
    kwargs = {"device": device}
    if not fuse:
        if "fuse" not in params:
            return None, "skipped: runtime.compile has no fuse parameter"
        kwargs["fuse"] = False
    if dtype != torch.float32:
        if "dtype" not in params:
            return None, f"skipped: runtime.compile has no dtype parameter ({dtype} not supported)"
        kwargs["dtype"] = dtype
    target = snn if backend == "torch" else copy.deepcopy(snn)
    try:
        return runtime.compile(target, backend=backend, **kwargs), ""
    except BackendUnavailableError as exc:
        return None, f"unavailable: {exc}"


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    timer = Timer(device)
    rows = []
    for spec in args.models:
        model, calib, pool, data_note = load_model(spec, args)
        fused = fold_bn(model)
        for coding in args.codings:
            for T in args.timesteps:
                snn, cfg, conv_s = convert_model(model, calib, coding, T, args)
                print(f"[{spec} {coding} T={T}] converted in {conv_s:.1f} s ({cfg.neuron}, {cfg.threshold})",
                      flush=True)
                torch_snn = None  # the torch backend, timed next to every kernel backend (same interleave)
                for backend in args.backends:
                    compiled, note = compile_snn(snn, backend, device, dtype)
                    if backend != "torch" and compiled is not None and torch_snn is None:
                        torch_snn = compile_snn(snn, "torch", device, dtype)[0]
                    for B in args.batch:
                        row = {"model": spec, "coding": coding, "neuron": cfg.neuron, "levels": cfg.levels,
                               "threshold": str(cfg.threshold), "T": T, "B": B, "backend": backend,
                               "device": str(device), "dtype": args.dtype, "data": data_note,
                               "convert_s": round(conv_s, 2)}
                        if compiled is None:
                            row["status"] = note
                            print(f"  {backend} B={B}: {note}", flush=True)
                            rows.append(row)
                            continue
                        unfused = None
                        if args.unfused and has_pairs(compiled):  # nothing to compare where nothing was fused
                            unfused = compile_snn(snn, backend, device, dtype, fuse=False)[0]
                        rows.append(measure(row, model, fused, compiled, pool, T, B, device, dtype, timer, args,
                                            torch_snn=torch_snn if backend != "torch" else None, unfused=unfused))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"meta": meta(args), "results": rows}


def has_pairs(snn) -> bool:
    """Whether ``snn`` holds a fused bounded-ReLU pair (``runtime/fuse.py``; False on versions without fusion)."""
    return any(getattr(m, "site_names", None) for _, m in snn.stateful())


def reference_copy(snn):
    """A copy of ``snn`` whose neurons and graded units run the readable reference loops (``fast_path = False``):
    the code before the fast paths, timed side by side with them."""
    ref = copy.deepcopy(snn)
    for _, module in ref.stateful():
        if hasattr(module, "fast_path"):
            module.fast_path = False
    return ref


def measure(row, model, fused, snn, pool, T, B, device, dtype, timer, args, torch_snn=None, unfused=None) -> dict:
    ann = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    ann_f = copy.deepcopy(fused).to(device=device, dtype=dtype).eval() if fused is not model else None
    x_ann = ann_batch(pool, T * B).to(device=device, dtype=dtype)
    x_snn = x_ann[:B].contiguous()
    fns = {"ann": lambda: ann(x_ann), "snn": lambda: snn(x_snn, T)}
    if ann_f is not None:
        fns["ann_fused"] = lambda: ann_f(x_ann)
    if args.single:
        fns["snn_single"] = lambda: snn(x_snn, T, mode="single")
    if args.reference:
        snn_ref = reference_copy(snn)
        fns["snn_ref"] = lambda: snn_ref(x_snn, T)
    if torch_snn is not None:
        fns["snn_torch"] = lambda: torch_snn(x_snn, T)
    if unfused is not None:
        fns["snn_unfused"] = lambda: unfused(x_snn, T)
    times = time_interleaved(fns, timer, args.reps, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    row.update({"status": "ok", "seconds": med, "seconds_all": times,
                "ratio": med["snn"] / med["ann"],
                "ratio_fused": med["snn"] / med["ann_fused"] if "ann_fused" in med else None})
    if args.single:
        row["ratio_single"] = med["snn_single"] / med["ann"]
    if unfused is not None:
        row["speedup_vs_unfused"] = med["snn_unfused"] / med["snn"]
        with torch.no_grad():
            row["equal_to_unfused"] = bool(torch.equal(snn(x_snn, T), unfused(x_snn, T)))
    if torch_snn is not None:
        row["speedup_vs_torch"] = med["snn_torch"] / med["snn"]
        with torch.no_grad():
            row["equal_to_torch"] = bool(torch.equal(snn(x_snn, T), torch_snn(x_snn, T)))
    if args.reference:
        row["ratio_ref"] = med["snn_ref"] / med["ann"]
        with torch.no_grad():
            row["ref_bit_identical"] = bool(torch.equal(snn(x_snn, T), snn_ref(x_snn, T)))
    if args.breakdown:
        row["breakdown_snn"] = breakdown(snn, fns["snn"], timer, args.breakdown_reps)
        row["breakdown_ann"] = breakdown(ann, fns["ann"], timer, args.breakdown_reps)
    print("  " + summary_line(row), flush=True)
    return row


def summary_line(row: dict) -> str:
    s = row["seconds"]
    text = (f"{row['backend']} B={row['B']}: ann {s['ann'] * 1e3:.1f} ms"
            + (f", ann_fused {s['ann_fused'] * 1e3:.1f} ms" if "ann_fused" in s else "")
            + f", snn {s['snn'] * 1e3:.1f} ms -> ratio {row['ratio']:.2f}"
            + (f" (vs fused {row['ratio_fused']:.2f})" if row.get("ratio_fused") else ""))
    if "snn_single" in s:
        text += f"; single-step {s['snn_single'] * 1e3:.1f} ms (ratio {row['ratio_single']:.2f})"
    if "snn_torch" in s:
        text += (f"; torch backend {s['snn_torch'] * 1e3:.1f} ms (x{row['speedup_vs_torch']:.2f}, outputs "
                 f"{'bit-identical' if row['equal_to_torch'] else 'DIFFERENT'})")
    if "snn_unfused" in s:
        text += (f"; unfused {s['snn_unfused'] * 1e3:.1f} ms (x{row['speedup_vs_unfused']:.2f}, outputs "
                 f"{'bit-identical' if row['equal_to_unfused'] else 'DIFFERENT'})")
    if "snn_ref" in s:
        text += (f"; reference loops {s['snn_ref'] * 1e3:.1f} ms (ratio {row['ratio_ref']:.2f}, outputs "
                 f"{'bit-identical' if row['ref_bit_identical'] else 'DIFFERENT'})")
    if "breakdown_snn" in row:
        text += "\n    snn breakdown: " + pct_line(row["breakdown_snn"])
        text += "\n    ann breakdown: " + pct_line(row["breakdown_ann"])
    return text


def pct_line(bd: dict) -> str:
    items = sorted(bd["categories_pct"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0f} %" for k, v in items if v >= 0.5)


def meta(args) -> dict:
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), "reps": args.reps, "warmup": args.warmup,
            "keep_freed_memory": getattr(args, "keep_freed_memory", False),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}}
    try:
        cpu = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
               if ln.startswith("model name")]
        info["cpu"] = f"{cpu[0]} x{len(cpu)}" if cpu else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def markdown(doc: dict) -> str:
    m = doc["meta"]
    lines = [f"# End-to-end SNN / ANN speed ({m['date']})", "",
             f"`{m['command']}`  ", f"torch {m['torch']}, {m.get('gpu') or m.get('cpu')}, {m['threads']} threads, "
             f"median of {m['reps']} interleaved repetitions after {m['warmup']} warm-ups; allocator: "
             + ("glibc heap only, freed memory kept (runtime/malloc.py)" if m.get("keep_freed_memory")
                else f"as configured ({m.get('malloc_env') or 'glibc defaults'})") + ".", "",
             "Timings on a shared machine are noisy: compare ratios within one run.", "",
             "ratio = SNN (T steps, multi-step, B images) / ANN on T·B images; `fused` = ANN with BN folded.", "",
             "| model | coding | T | B | backend | dtype | ANN ms | ANN fused ms | SNN ms | ratio | ratio vs fused"
             " | single-step ratio | reference-loop ratio | speed-up vs torch backend | speed-up vs unfused"
             " | SNN time: where it goes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        head = f"| {r['model']} | {r['coding']} | {r['T']} | {r['B']} | {r['backend']} | {r['dtype']} |"
        if r["status"] != "ok":
            lines.append(head + f" | | | | | | | | | {r['status'][:120]} |")
            continue
        s = r["seconds"]
        fused = f"{s['ann_fused'] * 1e3:.1f}" if "ann_fused" in s else "-"
        rf = f"{r['ratio_fused']:.2f}" if r.get("ratio_fused") else "-"
        single = f"{r['ratio_single']:.2f}" if "ratio_single" in r else "-"
        ref = f"{r['ratio_ref']:.2f}" if "ratio_ref" in r else "-"
        where = pct_line(r["breakdown_snn"]) if "breakdown_snn" in r else ""
        vs_torch = "-"
        if "speedup_vs_torch" in r:
            vs_torch = f"{r['speedup_vs_torch']:.2f}" + ("" if r["equal_to_torch"] else " (outputs DIFFER)")
        vs_unfused = "-"
        if "speedup_vs_unfused" in r:
            vs_unfused = f"{r['speedup_vs_unfused']:.2f}" + ("" if r["equal_to_unfused"] else " (outputs DIFFER)")
        lines.append(head + f" {s['ann'] * 1e3:.1f} | {fused} | {s['snn'] * 1e3:.1f} | **{r['ratio']:.2f}** | {rf}"
                     f" | {single} | {ref} | {vs_torch} | {vs_unfused} | {where} |")
    lines += ["", "Per image: neuron elements (inputs to spiking neurons), graded-unit elements, conv/linear MACs:", ""]
    seen = set()
    for r in doc["results"]:
        bd = r.get("breakdown_snn")
        if bd and r["model"] not in seen:
            seen.add(r["model"])
            lines.append(f"- {r['model']}: {bd['neuron_elements_per_image']:,} neuron elements, "
                         f"{bd['graded_elements_per_image']:,} graded-unit elements, {bd['macs_per_image']:,} MACs")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list: zoo names, torchvision:resnet18, ...")
    ap.add_argument("--codings", default="rate,differential")
    ap.add_argument("--timesteps", default="8", help="comma list of T")
    ap.add_argument("--batch", default=None, help="comma list of B (default 32)")
    ap.add_argument("--backends", default="torch", help="comma list: torch, triton, native, inductor")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--threshold", default=None, help="override the coding's default threshold method")
    ap.add_argument("--single", action="store_true", help="also time single-step (streaming) mode")
    ap.add_argument("--reference", action="store_true",
                    help="also time the SNN with the readable reference neuron/unit loops (fast_path=False)")
    ap.add_argument("--unfused", action="store_true",
                    help="also time the same backend without fused bounded-ReLU pairs (compile(..., fuse=False))")
    ap.add_argument("--system-malloc", dest="keep_freed_memory", action="store_false",
                    help="leave glibc malloc as configured (default: the CLI's setting, runtime/malloc.py)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    ap.add_argument("--breakdown-reps", type=int, default=3)
    ap.add_argument("--calib-images", type=int, default=256, help="zoo models: calibration images (train split)")
    ap.add_argument("--tv-calib-images", type=int, default=16, help="torchvision models: random calibration images")
    ap.add_argument("--calib-batch", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=224, help="torchvision models: input size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--name", default=None, help="output file stem (default e2e_<device>)")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.codings = [c for c in args.codings.split(",") if c]
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    args.batch = [int(b) for b in (args.batch or "32").split(",")]
    args.backends = [b for b in args.backends.split(",") if b]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # the CLI's allocator setting (runtime/malloc.py), so the timings are those of `snnconvert` runs
    args.keep_freed_memory = keep_freed_memory() if args.keep_freed_memory else False
    if args.threads:
        torch.set_num_threads(args.threads)
    doc = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"e2e_{args.device.split(':')[0]}"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (args.out / f"{stem}.md").write_text(md)
    print()
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
