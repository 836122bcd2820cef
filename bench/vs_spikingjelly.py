"""snnconvert against SpikingJelly 2.0's ann2snn on the zoo models, in one run on this machine (users.md §5: compare
with a SpikingJelly run on the same machine, in the same run).

Both convert the same trained ANN, calibrate on the same TRAIN images (batches of 250, in order) and are evaluated on
the same TEST images; accuracy is that of the output accumulated up to step t (SpikingJelly's ``val()``, our report).

- SpikingJelly 2.0.0, ``Converter(recipe=RateCodingRecipe(dataloader, ...)).convert(ann)`` (Conv-BN fusion, IF
  neurons with soft reset, analog input at every step, single-step mode, ``functional.reset_net`` per batch), in
  three settings: ``mode="Max"`` (its default), ``mode="99.9%"`` (layer-wise), and ``mode="99.9%",
  channel_wise=True, pre_spike_maxpool=True, half_threshold=True`` (its per-channel recipe with the max-pool in front
  of the neuron and the membrane started at half the threshold). Calibration statistics are its EMA over batches
  (``momentum=0.1``). More settings through ``--sj-settings``: the per-channel options one at a time, and
  ``LocalThresholdBalancingRecipe`` (Bu, Li & Yu, CVPR 2025: thresholds raised by twice the mean overflow after
  every calibration batch, so ``--calib-batch`` sets how many updates they get).
- snnconvert: ``--coding rate`` (IF, 99.9 % per channel: the preset) and ``--coding differential`` (the preset: MT
  n = 4, threshold iteration per channel, fitted for each T), torch backend.

SpikingJelly is not a dependency of this project; install it beside the venv without touching it::

    .venv/bin/pip download --no-deps spikingjelly==2.0.0 -d /tmp/sj
    .venv/bin/pip install --no-deps --target /tmp/sjsite /tmp/sj/spikingjelly-2.0.0-py3-none-any.whl
    .venv/bin/pip install --target /tmp/sjdeps "loguru<1,>=0.7" tqdm requests scipy matplotlib h5py
    # then delete from /tmp/sjdeps what the venv already has (numpy, PIL, packaging, ...), so nothing is shadowed
    PYTHONPATH=/tmp/sjsite:/tmp/sjdeps .venv/bin/python bench/vs_spikingjelly.py --steps 32 \
        --out bench/results/vs_spikingjelly.json

``--speed REPEATS`` times the evaluation loops instead (no accuracy table).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from snnconvert import models_zoo
from snnconvert.convert import ConversionConfig, convert_sweep
from snnconvert.runtime import sweep
from snnconvert.runtime.data import load_fashion_mnist
from snnconvert.runtime.malloc import keep_freed_memory

SJ_SETTINGS = {
    "max (layer)": {"mode": "Max"},
    "99.9% (layer)": {"mode": "99.9%"},
    "99.9% per channel, pre-spike max-pool, half threshold": {
        "mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True, "half_threshold": True},
    "99.9% per channel": {"mode": "99.9%", "channel_wise": True},
    "99.9% per channel, half threshold": {"mode": "99.9%", "channel_wise": True, "half_threshold": True},
    "99.9% per channel, pre-spike max-pool": {"mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True},
    # Bu, Li & Yu, CVPR 2025 (arXiv:2409.03368): per-channel thresholds balanced over the calibration batches
    # (θ += 2·mean(relu(x − θ))), half-threshold IF neurons, max-pools in front of the neuron
    "local threshold balancing": {"recipe": "LocalThresholdBalancingRecipe"},
}
#: what a run does by default (the per-channel options one by one: ``--sj-settings``)
DEFAULT_SETTINGS = list(SJ_SETTINGS)[:3]


def sj_convert(ann, calib, options: dict):
    """A SpikingJelly recipe (``options["recipe"]``, default its rate-coding recipe; the other options are the
    recipe's arguments) applied to a copy of ``ann`` (eval mode)."""
    from spikingjelly.activation_based import ann2snn

    options = dict(options)
    recipe = getattr(ann2snn, options.pop("recipe", "RateCodingRecipe"))
    return ann2snn.Converter(recipe=recipe(dataloader=calib, **options), device="cpu").convert(
        copy.deepcopy(ann)).eval()


def sj_accumulated(snn, x: torch.Tensor, steps: int):
    """SpikingJelly's single-step run of ``x``: the output summed up to each step, step by step (state reset first)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(snn)
    out = 0
    for _ in range(steps):
        out = out + snn(x)
        yield out


def spikingjelly_run(ann, calib, test, steps: int, options: dict, batch: int) -> dict:
    """Convert with a SpikingJelly recipe and evaluate ``steps`` steps; accuracy after every step."""
    started = time.perf_counter()
    try:
        snn = sj_convert(ann, calib, options)
    except Exception as exc:  # noqa: BLE001 - a refusal is a result
        return {"refused": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    convert_s = time.perf_counter() - started
    correct, total = torch.zeros(steps), 0
    started = time.perf_counter()
    with torch.no_grad():
        for x, y in test.batches(batch):
            for t, out in enumerate(sj_accumulated(snn, x, steps)):
                correct[t] += (out.argmax(1) == y).sum()
            total += len(y)
    return {"accuracy": (correct / total).tolist(), "convert_seconds": round(convert_s, 1),
            "eval_seconds": round(time.perf_counter() - started, 1)}


def speed(ann, calib, test, steps: int, repeats: int, batch: int) -> dict:
    """Seconds to run ``steps`` steps over ``test`` (no ANN pass), side by side: SpikingJelly's per-channel recipe in
    single- and multi-step mode against snnconvert's rate preset on the torch and native backends, multi- and
    single-step, with and without counting synaptic operations. The best of ``repeats`` runs each."""
    from spikingjelly.activation_based import functional

    from snnconvert.convert import convert
    from snnconvert.runtime import compile, evaluate
    from snnconvert.runtime.kernels.native import native_status

    sj = sj_convert(ann, calib, SJ_SETTINGS["99.9% per channel"])

    def run_sj() -> None:
        with torch.no_grad():
            for x, _ in test.batches(batch):
                for _ in sj_accumulated(sj, x, steps):
                    pass

    def run_sj_multi() -> None:  # [T, B, ...] through every layer at once; the same outputs (checked by hand)
        functional.set_step_mode(sj, "m")
        try:
            with torch.no_grad():
                for x, _ in test.batches(batch):
                    functional.reset_net(sj)
                    sj(x.unsqueeze(0).expand(steps, *x.shape).contiguous()).sum(0)
        finally:
            functional.set_step_mode(sj, "s")

    ours = convert(ann, forward_loop=calib, config=ConversionConfig.for_coding("rate", timesteps=steps)).snn
    runs = {"SpikingJelly, single-step": run_sj, "SpikingJelly, multi-step": run_sj_multi}
    backends = ["torch"] + (["native"] if native_status("cpu")[0] else [])
    for backend in backends:
        program = compile(ours, backend)
        for mode in ("multi", "single"):
            for count in (True, False):
                runs[f"snnconvert {backend}, {mode}-step{', counting SOPs' if count else ''}"] = (
                    lambda p=program, m=mode, c=count: evaluate(p, test.batches(batch), timesteps=steps, mode=m,
                                                                 count_ops=c))
    seconds = {}
    for label, run in runs.items():
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        seconds[label] = round(best, 2)
        print(f"{label}: {best:.2f} s", flush=True)
    return seconds


def snnconvert_run(ann, calib, test, coding: str, steps: list[int], ann_scores, batch: int) -> tuple[dict, dict]:
    """Convert with a preset (one calibration, thresholds for each T) and evaluate; per T: accuracy after every
    step, events and the extended energy ratio."""
    cfg = ConversionConfig.for_coding(coding, timesteps=max(steps))
    started = time.perf_counter()
    results = convert_sweep(ann, forward_loop=calib, config=cfg, timesteps=steps)
    convert_s = time.perf_counter() - started
    started = time.perf_counter()
    report = sweep(results, lambda: test.batches(batch), ann=ann if ann_scores is None else None, backend="torch",
                   ann_scores=ann_scores)
    runs = {T: {"accuracy": ev.snn_accuracy, "events_per_image": sum(ev.events_per_step),
                "energy_ratio_extended": ev.ops["energy_ratio_extended"][-1]}
            for T, ev in report.evaluations.items()}
    return ({"runs": runs, "convert_seconds": round(convert_s, 1),
             "eval_seconds": round(time.perf_counter() - started, 1)}, report.ann_scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-vgg,fmnist-resnet")
    parser.add_argument("--steps", type=int, default=64, help="rate-coded runs: steps evaluated (all t <= this)")
    parser.add_argument("--diff-timesteps", default="1,2,4,8", help="differential coding: T fitted and run")
    parser.add_argument("--calib-images", type=int, default=5000)
    parser.add_argument("--calib-batch", type=int, default=250,
                        help="calibration batch size (both tools; SpikingJelly's statistics are updated per batch)")
    parser.add_argument("--eval-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--sj-settings", default=";".join(DEFAULT_SETTINGS),
                        help=f"SpikingJelly settings, separated by ';' (of: {'; '.join(SJ_SETTINGS)})")
    parser.add_argument("--no-snnconvert", action="store_true", help="run the SpikingJelly settings only")
    parser.add_argument("--speed", type=int, metavar="REPEATS",
                        help="time the runs instead (see speed()); best of REPEATS, first model only")
    parser.add_argument("--batch", type=int, default=500, help="evaluation batch size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = [s.strip() for s in args.sj_settings.split(";") if s.strip()]
    unknown = [s for s in settings if s not in SJ_SETTINGS]
    if unknown:
        parser.error(f"unknown --sj-settings {unknown}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    import spikingjelly

    train = load_fashion_mnist("train").subset(args.calib_images)
    test = load_fashion_mnist("test").subset(args.eval_images)
    calib = [x for x, _ in train.batches(args.calib_batch)]
    doc = {"spikingjelly": getattr(spikingjelly, "__version__", "2.0.0"), "torch": torch.__version__,
           "calib_images": len(train), "calib_batch": args.calib_batch, "eval_images": len(test),
           "threads": torch.get_num_threads(), "models": {}}
    if args.speed:
        name = args.models.split(",")[0]
        seconds = speed(models_zoo.get_model(name).eval(), calib, test, args.steps, args.speed, args.batch)
        doc["speed"] = {name: {"timesteps": args.steps, "batch": args.batch, "seconds": seconds}}
        if args.out is not None:
            args.out.write_text(json.dumps(doc, indent=1))
        return
    for name in args.models.split(","):
        ann = models_zoo.get_model(name).eval()
        entry = doc["models"][name] = {"spikingjelly": {}, "snnconvert": {}}
        if not args.no_snnconvert:
            rate, ann_scores = snnconvert_run(ann, calib, test, "rate", [args.steps], None, args.batch)
            entry["ann_accuracy"] = ann_scores["ann_accuracy"]
            entry["snnconvert"]["rate (IF, 99.9% per channel)"] = rate
            diff, _ = snnconvert_run(ann, calib, test, "differential",
                                     [int(t) for t in args.diff_timesteps.split(",")], ann_scores, args.batch)
            entry["snnconvert"]["differential (MT n=4, iteration per channel)"] = diff
        else:
            with torch.no_grad():
                right = sum(int((ann(x).argmax(1) == y).sum()) for x, y in test.batches(args.batch))
            entry["ann_accuracy"] = right / len(test)
        for label in settings:
            entry["spikingjelly"][label] = spikingjelly_run(ann, calib, test, args.steps, SJ_SETTINGS[label],
                                                            args.batch)
            print(name, "SpikingJelly", label, json.dumps(entry["spikingjelly"][label])[:200], flush=True)
        print_table(name, entry, args.steps)
        if args.out is not None:
            args.out.write_text(json.dumps(doc, indent=1))


def print_table(name: str, entry: dict, steps: int) -> None:
    marks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= steps]
    print(f"\n{name}: ANN {100 * entry['ann_accuracy']:.2f} %")
    print("| tool, setting | " + " | ".join(f"T = {t}" for t in marks) + " | convert s | eval s |")
    print("|---|" + "---|" * (len(marks) + 2))
    for label, run in entry["spikingjelly"].items():
        if "refused" in run:
            print(f"| SpikingJelly {label} | refused: {run['refused']} |")
            continue
        print(f"| SpikingJelly {label} | " + " | ".join(f"{100 * run['accuracy'][t - 1]:.2f}" for t in marks)
              + f" | {run['convert_seconds']} | {run['eval_seconds']} |")
    for label, run in entry["snnconvert"].items():
        runs = run["runs"]
        if len(runs) == 1:  # rate: one run at the largest T gives every t
            acc = next(iter(runs.values()))["accuracy"]
            cells = [f"{100 * acc[t - 1]:.2f}" for t in marks]
        else:  # differential: thresholds fitted per T, the accuracy after T steps of the run fitted for T
            cells = [f"{100 * runs[t]['accuracy'][-1]:.2f}" if t in runs else "" for t in marks]
        print(f"| snnconvert {label} | " + " | ".join(cells) + f" | {run['convert_seconds']} | {run['eval_seconds']} |")


if __name__ == "__main__":
    main()
