"""Fused Triton neuron kernels: achieved memory bandwidth vs the device's copy bandwidth, and the torch twins.

For every kernel (rate IF, rate MT n=4, differential MT n=4, differential IF, and the fused bounded-ReLU pair of two
differential MT n=4 neurons, ``y = r − hi(r − a)``, ``r = lo(x)``), T in --timesteps and dtype in --dtypes, on a
per-step shape S = [B, C, H, W] with N = B·C·H·W neurons (default 16·64·64·64 = 2^22), per-channel θ [C, 1, 1] and a
captured bias [1, C, H, W]:

- kernel time (median of ``triton.testing.do_bench``) and bandwidth = bytes moved / time, where bytes = read x
  [T, N] + write out [T, N] + the θ and bias tables (state stays in registers, nothing else touches memory);
- the device's copy bandwidth on a buffer of the same size (``torch.clone`` of [T, N] in the dtype: 2·T·N·size
  bytes moved), and the kernel's bandwidth as a percentage of it;
- the torch reference twin (``*_multistep_ref``) time on the same input, the speed-up, and the number of outputs
  that differ from the twin (expected 0: the arithmetic is the same);
- SpikingJelly's Triton IF neuron (``IFNode(step_mode="m", v_reset=None)`` with ``SJ_IF_CUDA_IMPLEMENTATION=triton``
  in SpikingJelly 2.x, ``backend="triton"`` in 0.0.0.0.14) at the same shape, when ``import spikingjelly`` works;
  skipped with the reason otherwise (``make gpu-wheels`` stages its wheels for a machine without a registry).

Writes ``bench_kernels.json`` and ``bench_kernels.md`` to --out. Triton kernels: CUDA only; ``--interpret-smoke``
runs a tiny size on CPU under the Triton interpreter to check that the script works (timings meaningless).
``--native`` measures the native C kernels on the CPU instead (``torch.get_num_threads()`` threads, or
``--threads``), with the torch backend's neuron (``SpikingNeuron`` in multi-step mode, its fast path) as the twin
column: the speed-up is native vs the torch backend, and the outputs must be identical. ``--inductor`` does the same
for the inductor backend's compiled neuron loops (compiled on the first call, before timing).

    python bench/bench_kernels.py --out bench/results/kernels
    python bench/bench_kernels.py --interpret-smoke --out /tmp/kernels_smoke
    python bench/bench_kernels.py --native --shape 32,64,14,14 --timesteps 8 --dtypes fp32 --out bench/results/native
    python bench/bench_kernels.py --inductor --shape 32,64,14,14 --timesteps 8 --dtypes fp32 --out bench/results/ind
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

KERNELS = ("if_rate", "mt_rate_n4", "mt_diff_n4", "if_diff", "pair_diff_n4")
#: The bound a of the fused bounded-ReLU pair row (exact in every dtype); the upper neuron gets θ/2 and bias −a.
PAIR_CEILING = 0.75
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (bench_kernels.json, bench_kernels.md)")
    ap.add_argument("--shape", default="16,64,64,64", help="per-step shape B,C,H,W (N = product)")
    ap.add_argument("--timesteps", default="4,8,16")
    ap.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of {', '.join(DTYPES)}")
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--no-reference", action="store_true", help="skip the torch twins (faster)")
    ap.add_argument("--interpret-smoke", action="store_true",
                    help="tiny run on CPU under TRITON_INTERPRET=1 (checks the script, not the speed)")
    ap.add_argument("--native", action="store_true", help="the native C kernels on the CPU instead of Triton")
    ap.add_argument("--inductor", action="store_true",
                    help="the inductor backend's compiled neuron loops on the CPU instead of Triton")
    ap.add_argument("--threads", type=int, default=None, help="--native / --inductor: torch.set_num_threads")
    return ap.parse_args()


def timer(device: str):
    """Median time in ms of ``fn()``: triton's do_bench on CUDA (L2 flushed between runs), a wall clock on CPU."""
    if device == "cuda":
        import triton.testing

        def cuda_time(fn) -> float:
            ms = triton.testing.do_bench(fn, warmup=10, rep=50, quantiles=[0.5])
            return float(ms[0] if isinstance(ms, (list, tuple)) else ms)

        return cuda_time

    def cpu_time(fn, reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * sorted(times)[len(times) // 2]

    return cpu_time


def make_calls(name, x, th, b, kernels, ref):
    """(kernel call, torch twin call) for one kernel name."""
    if name == "if_rate":
        return (lambda: kernels.if_rate_multistep(x, th)), (lambda: ref.if_rate_multistep_ref(x, th))
    if name == "mt_rate_n4":
        return ((lambda: kernels.mt_rate_multistep(x, th, n_levels=4)),
                (lambda: ref.mt_rate_multistep_ref(x, th, n_levels=4)))
    if name == "mt_diff_n4":
        return ((lambda: kernels.mt_diff_multistep(x, th, b, n_levels=4)),
                (lambda: ref.mt_diff_multistep_ref(x, th, b, n_levels=4)))
    if name == "if_diff":
        return (lambda: kernels.if_diff_multistep(x, th, b)), (lambda: ref.if_diff_multistep_ref(x, th, b))
    if name == "pair_diff_n4":
        def twin():  # the unfused graph: two neurons and two subtractions
            r = ref.mt_diff_multistep_ref(x, th, b, n_levels=4)
            return r - ref.mt_diff_multistep_ref(r - PAIR_CEILING, th * 0.5, -PAIR_CEILING + 0 * b, n_levels=4)

        return (lambda: kernels.bounded_relu_pair_run(x, PAIR_CEILING, th, th * 0.5, b, -PAIR_CEILING + 0 * b,
                                                      coding="differential", kind="mt", n_levels=4)[0]), twin
    raise SystemExit(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")


def moved_bytes(name: str, x, shape) -> int:
    """Bytes a kernel must move: read x [T, N], write out [T, N], and its θ (per channel) and bias (per neuron)
    tables, two of each for a pair."""
    _, C, H, W = shape
    tables = 4 * C + (4 * C * H * W if "diff" in name else 0)
    return 2 * x.numel() * x.element_size() + tables * (2 if name.startswith("pair") else 1)


def torch_backend_call(name, x, th, b):
    """The torch backend's neuron module (multi-step, fast path) for one kernel name: the twin of --native."""
    from snnconvert.convert.coding.neurons import SpikingNeuron

    kind, coding = ("if" if name.startswith("if") else "mt"), ("differential" if "diff" in name else "rate")
    neuron = SpikingNeuron(th, kind=kind, coding=coding, n_levels=4 if kind == "mt" else 1)
    if coding == "differential":
        neuron.bias = b
    if name == "pair_diff_n4":  # the unfused graph on the torch backend
        upper = SpikingNeuron(th * 0.5, kind=kind, coding=coding, n_levels=4)
        upper.bias = -PAIR_CEILING + 0 * b

        def pair():
            r = neuron.multistep(x)
            return r - upper.multistep(r - PAIR_CEILING)

        return pair
    return lambda: neuron.multistep(x)


def spikingjelly_row(x, measure) -> dict:
    """SpikingJelly's Triton IF neuron on the same input, or the reason it could not run.

    SpikingJelly 2.x picks an IF neuron's CUDA implementation from ``SJ_IF_CUDA_IMPLEMENTATION`` (read when its
    kernels are imported; set to ``triton`` here unless the caller set it) and its ``IFNode`` has no ``backend``
    argument; 0.0.0.0.14 takes ``backend="triton"``. Both are handled.
    """
    os.environ.setdefault("SJ_IF_CUDA_IMPLEMENTATION", "triton")
    try:
        import inspect

        import spikingjelly
        import torch
        from spikingjelly.activation_based import neuron
    except Exception as exc:  # noqa: BLE001 - optional comparison
        return {"skipped": f"import spikingjelly failed: {type(exc).__name__}: {exc}"}
    version = getattr(spikingjelly, "__version__", None) or _dist_version("spikingjelly")
    legacy = "backend" in inspect.signature(neuron.IFNode.__init__).parameters
    how = "backend='triton'" if legacy else f"SJ_IF_CUDA_IMPLEMENTATION={os.environ['SJ_IF_CUDA_IMPLEMENTATION']}"
    try:
        node = neuron.IFNode(step_mode="m", v_reset=None, **({"backend": "triton"} if legacy else {})).to(x.device)

        def call():
            node.reset()
            with torch.no_grad():
                return node(x)

        call()
        ms = measure(call)
    except Exception as exc:  # noqa: BLE001 - report whatever SpikingJelly raises
        return {"skipped": f"SpikingJelly {version} IFNode ({how}) failed: {type(exc).__name__}: {exc}"}
    moved = 2 * x.numel() * x.element_size()
    return {"ms": ms, "gbps": moved / ms / 1e6, "T": x.shape[0], "dtype": str(x.dtype).replace("torch.", ""),
            "version": version, "implementation": how}


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def main() -> int:
    args = parse_args()
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton or the kernels are imported
    import torch

    if args.native or args.inductor:
        return run_cpu(args, "inductor" if args.inductor else "native")
    if not args.interpret_smoke and not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA device (torch sees none); use --interpret-smoke to check the script on CPU",
              file=sys.stderr)
        return 2
    import triton

    from snnconvert.convert.coding import neurons as ref
    from snnconvert.runtime.kernels import load_kernels, triton_status

    device = "cpu" if args.interpret_smoke else "cuda"
    ok, reason = triton_status(device)
    if not ok:
        print(f"bench_kernels: {reason}", file=sys.stderr)
        return 2
    kernels = load_kernels()
    shape = (2, 4, 8, 8) if args.interpret_smoke else tuple(int(v) for v in args.shape.split(","))
    steps = [2] if args.interpret_smoke else [int(v) for v in args.timesteps.split(",")]
    names = args.kernels.split(",")
    measure = timer(device)
    B, C, H, W = shape
    N = B * C * H * W
    torch.manual_seed(0)
    th = (torch.rand(C, 1, 1, device=device) + 0.5)
    b = 0.3 * torch.randn(1, C, H, W, device=device)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "shape": list(shape), "N": N, "interpreter": bool(kernels.INTERPRETED)}
    rows, copies = [], {}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dtype_name])
        th_d, b_d = th.to(dtype).float(), b.to(dtype).float()  # the compile-time rounding for low precision
        for T in steps:
            x = (0.7 * torch.randn(T, *shape, device=device)).to(dtype)
            copy_ms = measure(lambda x=x: x.clone())
            copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
            copies[f"{dtype_name}/T{T}"] = {"ms": copy_ms, "gbps": copy_gbps}
            for name in names:
                call, twin = make_calls(name, x, th_d, b_d, kernels, ref)
                out = call()
                kernel_ms = measure(call)
                moved = moved_bytes(name, x, shape)
                row = {"kernel": name, "dtype": dtype_name, "T": T, "kernel_ms": kernel_ms,
                       "gbps": moved / kernel_ms / 1e6, "copy_gbps": copy_gbps,
                       "pct_of_copy": 100.0 * (moved / kernel_ms / 1e6) / copy_gbps}
                if not args.no_reference:
                    row["ref_ms"] = measure(twin)
                    row["speedup"] = row["ref_ms"] / kernel_ms
                    row["mismatches"] = int((out != twin()).sum())
                rows.append(row)
                print(f"{name:11s} {dtype_name} T={T:3d}: {kernel_ms:8.3f} ms {row['gbps']:8.1f} GB/s "
                      f"({row['pct_of_copy']:5.1f} % of copy)", flush=True)
    sj = spikingjelly_row((torch.randn(steps[-1], *shape, device=device) > 0).float(), measure)
    result = {"info": info, "copy": copies, "rows": rows, "spikingjelly_if": sj}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_kernels.json").write_text(json.dumps(result, indent=2))
    (args.out / "bench_kernels.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


def run_cpu(args, backend: str) -> int:
    """--native / --inductor: the C kernels or the compiled neuron loops on the CPU against the torch backend's neurons
    and the CPU copy bandwidth."""
    import torch

    from snnconvert.runtime import backend_status
    from snnconvert.runtime.kernels import inductor, native
    from snnconvert.runtime.malloc import keep_freed_memory

    kept = keep_freed_memory()  # as the CLI does: no page faults on every fresh output and copy (BENCHMARKS.md)
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = inductor.KERNELS if backend == "inductor" else native.KERNELS
    ok, reason = backend_status(backend, "cpu")
    if not ok:
        print(f"bench_kernels: {reason}", file=sys.stderr)
        return 2
    shape = tuple(int(v) for v in args.shape.split(","))
    B, C, H, W = shape
    measure = timer("cpu")
    torch.manual_seed(0)
    th = torch.rand(C, 1, 1) + 0.5
    b = 0.3 * torch.randn(1, C, H, W)
    implementation = {"native": "native C", "inductor": "inductor (torch.compile)"}[backend]
    info = {"device": f"{native.cpu_model()}, {torch.get_num_threads()} thread(s)", "torch": torch.__version__,
            "implementation": implementation, "python": platform.python_version(), "shape": list(shape),
            "N": B * C * H * W,
            "interpreter": False, "twin": "torch backend (SpikingNeuron fast path)", "keep_freed_memory": kept}
    rows, copies = [], {}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dtype_name])
        th_d, b_d = th.to(dtype).float(), b.to(dtype).float()
        for T in [int(v) for v in args.timesteps.split(",")]:
            x = (0.7 * torch.randn(T, *shape)).to(dtype)
            copy_ms = measure(lambda x=x: x.clone())
            copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
            copies[f"{dtype_name}/T{T}"] = {"ms": copy_ms, "gbps": copy_gbps}
            for name in args.kernels.split(","):
                if name.startswith("pair") and dtype_name != "fp32":  # as compile(fuse=True) does: the two neurons
                    skipped = f"the CPU pair kernels take float32 inputs ({dtype_name} runs the two neurons)"
                    rows.append({"kernel": name, "dtype": dtype_name, "T": T, "skipped": skipped})
                    print(f"{name:11s} {dtype_name} T={T:3d}: skipped: {skipped}", flush=True)
                    continue
                call = make_calls(name, x, th_d, b_d, kernels, None)[0]
                out = call()
                kernel_ms = measure(call)
                moved = moved_bytes(name, x, shape)
                row = {"kernel": name, "dtype": dtype_name, "T": T, "kernel_ms": kernel_ms,
                       "gbps": moved / kernel_ms / 1e6, "copy_gbps": copy_gbps,
                       "pct_of_copy": 100.0 * (moved / kernel_ms / 1e6) / copy_gbps}
                twin_text = ""
                if not args.no_reference:
                    twin = torch_backend_call(name, x, th_d, b_d)
                    row["ref_ms"] = measure(twin)
                    row["speedup"] = row["ref_ms"] / kernel_ms
                    row["mismatches"] = int((out != twin()).sum())
                    twin_text = (f", torch backend {row['ref_ms']:.3f} ms (x{row['speedup']:.2f}), mismatches "
                                 f"{row['mismatches']}")
                rows.append(row)
                print(f"{name:11s} {dtype_name} T={T:3d}: {kernel_ms:8.3f} ms {row['gbps']:6.1f} GB/s "
                      f"({row['pct_of_copy']:5.1f} % of copy){twin_text}", flush=True)
    result = {"info": info, "copy": copies, "rows": rows,
              "spikingjelly_if": {"skipped": "not compared on the CPU (its kernels are Triton/CuPy, GPU only)"}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_kernels.json").write_text(json.dumps(result, indent=2))
    (args.out / "bench_kernels.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


def to_markdown(result: dict) -> str:
    info = result["info"]
    twin = info.get("twin", "torch twin")
    what = info.get("implementation") or f"triton {info['triton']}"
    lines = [f"Neuron kernels on {info['device']} (torch {info['torch']}, {what}"
             f"{', interpreter' if info['interpreter'] else ''}), per-step shape {info['shape']} (N = {info['N']})",
             "",
             f"| kernel | dtype | T | kernel ms | GB/s | % of copy | {twin} ms | speed-up | mismatches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['T']} | skipped: {r['skipped']} | | | | | |")
            continue
        ref_ms = f"{r['ref_ms']:.3f}" if "ref_ms" in r else "—"
        speedup = f"{r['speedup']:.1f}×" if "speedup" in r else "—"
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['T']} | {r['kernel_ms']:.3f} | {r['gbps']:.0f} | "
                     f"{r['pct_of_copy']:.0f} | {ref_ms} | {speedup} | {r.get('mismatches', '—')} |")
    sj = result["spikingjelly_if"]
    lines.append("")
    if "skipped" in sj:
        lines.append(f"SpikingJelly Triton IF: skipped ({sj['skipped']})")
    else:
        lines.append(f"SpikingJelly {sj['version']} IF ({sj['implementation']}; {sj['dtype']} input, T = {sj['T']}, "
                     f"same N): {sj['ms']:.3f} ms, {sj['gbps']:.0f} GB/s (bytes: read x + write spikes)")
    copies = ", ".join(f"{k}: {v['gbps']:.0f} GB/s" for k, v in result["copy"].items())
    lines += ["", f"Copy bandwidth (torch clone, same size): {copies}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
