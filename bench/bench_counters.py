"""Evaluation counters: cost of counting synaptic operations and events, side by side in one run (CPU).

- SOP fan-out of a layer's input (``runtime/energy.py::_fanout_count``: per-position non-zero counts weighted by the
  layer's fan-out map) against the previous method, the 0/1 mask convolved with a one-channel all-ones kernel per
  group (the same integers; checked);
- events of a native differential MT neuron layer: counted in the kernel (``events=``) against the kernel without
  counting plus the pass the event counter makes otherwise (``out.ne(0).sum``); counts checked equal.

Shapes: [T·B, C, H, W] inputs of a depthwise 3x3 and a pointwise 1x1 convolution of fmnist-mobilenet's size at
B = 32, T = 8, about 30 % non-zero. Median of --reps.

    .venv/bin/python bench/bench_counters.py --threads 1
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_kernels import timer  # bench/ is the script's directory

from snnconvert.runtime.energy import _fanout_count
from snnconvert.runtime.kernels import native


def mask_convolution(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The previous SOP fan-out: the 0/1 mask summed per group and convolved with an all-ones kernel."""
    mask = (x != 0).to(torch.float32)
    groups = layer.groups
    per_group = mask.unflatten(1, (groups, mask.shape[1] // groups)).sum(2)
    ones = torch.ones(groups, 1, *layer.kernel_size)
    out = F.conv2d(per_group, ones, None, layer.stride, layer.padding, layer.dilation, groups)
    return out.flatten(1).sum(1, dtype=torch.float64) * (layer.out_channels // groups)


cpu_time = timer("cpu")  # median ms of fn() after one warm-up call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, B, C, H, W = 8, 32, 64, 14, 14
    x = torch.randn(T * B, C, H, W)
    x[x.abs() < 1.0] = 0  # ~32 % non-zero
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), input {list(x.shape)}")
    print("| what | new ms | previous ms | speed-up | equal |")
    print("|---|---|---|---|---|")
    for label, layer in (("SOP fan-out, depthwise 3x3", nn.Conv2d(C, C, 3, padding=1, groups=C)),
                         ("SOP fan-out, pointwise 1x1", nn.Conv2d(C, 2 * C, 1))):
        new = cpu_time(lambda layer=layer: _fanout_count(layer, x), args.reps)
        old = cpu_time(lambda layer=layer: mask_convolution(layer, x), args.reps)
        equal = torch.equal(_fanout_count(layer, x), mask_convolution(layer, x))
        print(f"| {label} | {new:.2f} | {old:.2f} | {old / new:.1f}x | {equal} |")
    ok, reason = native.native_status("cpu")
    if not ok:
        print(f"events: skipped ({reason})")
        return
    kernels = native.KERNELS
    seq = x.reshape(T, B, C, H, W)
    th, b = torch.rand(C, 1, 1) + 0.3, 0.3 * torch.randn(1, C, H, W)

    def counted():
        events = torch.zeros(T, dtype=torch.int64)
        kernels.diff_neuron_run(seq, th, b, kind="mt", n_levels=4, events=events)
        return events

    def recounted():
        out = kernels.mt_diff_multistep(seq, th, b, n_levels=4)
        return out.reshape(T, -1).ne(0).sum(1, dtype=torch.int32)

    new, old = cpu_time(counted, args.reps), cpu_time(recounted, args.reps)
    equal = torch.equal(counted(), recounted().to(torch.int64))
    print(f"| native differential MT layer + its events: in-kernel vs extra pass | {new:.2f} | {old:.2f} | "
          f"{old / new:.1f}x | {equal} |")


if __name__ == "__main__":
    main()
