"""Train one zoo model on the CPU from a seed and write its weights, ONNX export and model card.

Usage::

    python -m snnconvert.models_zoo.train NAME --out DIR [--epochs E] [--seed S] [--threads N]

Only the Fashion-MNIST *train* split is used for training; the full 10k test split is evaluated once, at the end,
for the model card. The run is deterministic given the seed and the thread count: the initial weights come from the
seeded factory, and shuffling, augmentation (random crop with 2 pixels of padding, horizontal flip) and dropout draw
from generators seeded from ``seed``.

Files written into ``--out`` (required; the package's ``weights/`` folder replaces the shipped files), each via a
temporary file and a rename:

- ``<name>.pt``: fp32 state dict, contiguous tensors.
- ``<name>.onnx``: ``torch.onnx.export(..., dynamo=False, opset_version=17)``, input ``"input"`` with a dynamic batch
  axis, ``snnconvert.*`` metadata; checked against the torch model with onnxruntime (max abs diff < 1e-4).
- ``<name>.json``: model card (architecture, parameters, MACs per image, test accuracy, command, seed, timing).

Heavy or project-internal imports (``snnconvert.runtime.data``, ``onnx``, ``onnxruntime``) happen inside the
functions that need them, so importing :mod:`snnconvert.models_zoo` keeps depending on torch only.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from snnconvert.models_zoo import WEIGHTS_DIR, ZooEntry, get_entry, list_models

log = logging.getLogger(__name__)

#: Largest |torch - onnxruntime| accepted on the verification batch.
ONNX_MAX_ABS_DIFF = 1e-4
ONNX_OPSET = 17
#: Stands for the output folder in the ``train_command`` a card records (the folder does not change the result).
OUT_PLACEHOLDER = "DIR"


@dataclass(frozen=True)
class TrainRecipe:
    """Hyper-parameters of one zoo model; the defaults below are what the shipped weights were trained with.

    The learning rate warms up linearly over ``warmup_epochs`` and then follows a cosine to zero, per step.
    """

    epochs: int
    optimizer: str  # "sgd" (Nesterov momentum 0.9) or "adamw"
    lr: float
    weight_decay: float
    batch_size: int = 128
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None


RECIPES: dict[str, TrainRecipe] = {
    "fmnist-vgg": TrainRecipe(epochs=15, optimizer="sgd", lr=0.1, weight_decay=5e-4),
    "fmnist-resnet": TrainRecipe(epochs=20, optimizer="sgd", lr=0.1, weight_decay=5e-4),
    "fmnist-mobilenet": TrainRecipe(epochs=15, optimizer="sgd", lr=0.1, weight_decay=1e-4),
    "fmnist-mnv3": TrainRecipe(epochs=10, optimizer="sgd", lr=0.1, weight_decay=1e-4),
    "fmnist-vit": TrainRecipe(
        epochs=30, optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=2.0, label_smoothing=0.1,
        grad_clip=1.0,
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def augment(images: torch.Tensor, generator: torch.Generator, *, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and random horizontal flip of a batch ``[B, 1, H, W]``."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    crops = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)  # [B, 1, H, W]
    flip = (torch.rand(b, generator=generator) < 0.5)[:, None, None, None]
    return torch.where(flip, crops.flip(-1), crops)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> int:
    """Number of correctly classified images (model in eval mode)."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct


# ---------------------------------------------------------------------------------------------------------------
# MACs
# ---------------------------------------------------------------------------------------------------------------
class _MatmulCounter(TorchFunctionMode):
    """Counts the MACs of ``torch.matmul`` / ``@`` / ``bmm`` calls made outside ``nn.Linear`` modules."""

    _OPS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self._OPS:
            # out has [..., M, N]; each element takes K = a.shape[-1] multiply-accumulates
            self.macs += out.numel() * args[0].shape[-1]
        return out


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per image of Conv2d, Linear and free matmuls, measured with forward hooks on one image.

    Returns:
        ``{"conv": ..., "linear": ..., "matmul": ..., "total": ...}``.
    """
    counts: Counter[str] = Counter()

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        counts["conv"] += out.numel() * k

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        counts["linear"] += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with _MatmulCounter() as mm:
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts["matmul"] = mm.macs
    return {k: int(counts[k]) for k in ("conv", "linear", "matmul")} | {"total": int(sum(counts.values()))}


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def _make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases, norm parameters, class token and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    raise ValueError(f"recipe optimizer {recipe.optimizer!r} is unknown; use 'sgd' or 'adamw'")


def _lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``: linear warm-up, then cosine to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, recipe: TrainRecipe, seed: int
) -> nn.Module:
    """Train ``model`` in place on ``(images, labels)`` following ``recipe``; returns it in eval mode.

    Training runs in channels-last memory format (about 1.3x faster on CPU convolutions); the model is returned in
    the default contiguous format.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    model = model.to(memory_format=torch.channels_last).train()
    opt = _make_optimizer(model, recipe)
    n = len(labels)
    steps_per_epoch = n // recipe.batch_size  # drop the last partial batch: keeps BN statistics well-defined
    total = steps_per_epoch * recipe.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: _lr_factor(s, warmup_steps=int(recipe.warmup_epochs * steps_per_epoch), total_steps=total),
    )
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            x = augment(images[idx], gen).contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        seen = steps_per_epoch * recipe.batch_size
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.2f %%  lr %.2e  %.1f s",
            epoch + 1, recipe.epochs, loss_sum / seen, 100.0 * correct / seen, sched.get_last_lr()[0],
            time.perf_counter() - t0,
        )
    return model.to(memory_format=torch.contiguous_format).eval()


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (never leaves a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_metadata(entry: ZooEntry) -> dict[str, str]:
    """The ``metadata_props`` written into every zoo ONNX file."""
    if entry.preprocessing is None:
        pre = "none"
    else:
        pre = json.dumps({k: list(v) for k, v in entry.preprocessing.items()})
    return {
        "snnconvert.dataset": entry.dataset,
        "snnconvert.preprocessing": pre,
        "snnconvert.zoo_name": entry.name,
        "snnconvert.num_classes": str(entry.num_classes),
    }


def export_onnx(model: nn.Module, entry: ZooEntry, path: Path, check_inputs: torch.Tensor) -> float:
    """Export ``model`` to ``path`` (TorchScript exporter, opset 17, dynamic batch) and verify it.

    Returns:
        The max abs difference between onnxruntime and torch on ``check_inputs``.

    Raises:
        RuntimeError: the difference is ``>= ONNX_MAX_ABS_DIFF``.
    """
    import onnx
    import onnxruntime as ort

    model.eval()
    measured: dict[str, float] = {}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # the TorchScript exporter is chosen on purpose (dynamo=False); its deprecation notice is expected
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (check_inputs[:2],),
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in onnx_metadata(entry).items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        proto.doc_string = f"snnconvert model zoo: {entry.name}"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": check_inputs.numpy()})[0]
        with torch.no_grad():
            want = model(check_inputs).numpy()
        diff = measured["diff"] = float(abs(got - want).max())
        if not diff < ONNX_MAX_ABS_DIFF:
            raise RuntimeError(
                f"{entry.name}: onnxruntime differs from torch by {diff:.2e} (limit {ONNX_MAX_ABS_DIFF}); "
                "check the exporter version and the model's ops"
            )

    _atomic_write(path, write)
    return measured["diff"]


def _architecture_summary(model: nn.Module) -> dict[str, object]:
    """Class name, first docstring paragraph and a count of leaf modules by type, for the model card."""
    doc = (type(model).__doc__ or "").strip().split("\n\n")[0]
    layers = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    return {"class": type(model).__name__, "description": " ".join(doc.split()), "leaf_modules": dict(layers)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------
def run(
    name: str,
    *,
    epochs: int | None,
    seed: int,
    out: Path,
    threads: int,
    command: str,
    train_limit: int | None = None,
) -> dict[str, object]:
    """Train ``name``, write ``<name>.pt/.onnx/.json`` into ``out`` and return the model card.

    ``train_limit`` keeps only the first N training images (smoke tests); the test split is always complete.
    """
    from snnconvert.runtime.data import load_fashion_mnist

    entry = get_entry(name)
    recipe = RECIPES[name]
    if epochs is not None:
        recipe = TrainRecipe(**(asdict(recipe) | {"epochs": epochs}))
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)

    train = load_fashion_mnist("train").subset(train_limit)
    test = load_fashion_mnist("test")
    log.info("training %s: %s, seed %d, %d threads, %d train images", name, recipe, seed, threads, len(train))

    t0 = time.perf_counter()
    model = train_model(entry.factory(seed=seed), train.images, train.labels, recipe=recipe, seed=seed)
    train_time = time.perf_counter() - t0

    weights = out / entry.weights_file
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda tmp: torch.save(state, tmp))

    # evaluate exactly what ships: a fresh model with the saved state dict
    shipped = entry.factory(seed=0)
    shipped.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    shipped.eval()
    correct = evaluate(shipped, test.images, test.labels)
    accuracy = 100.0 * correct / len(test)
    log.info("%s: test accuracy %.2f %% (%d/%d)", name, accuracy, correct, len(test))

    check = torch.cat([test.images[:14], torch.rand(2, *entry.input_shape, generator=torch.Generator().manual_seed(0))])
    onnx_path = out / entry.onnx_file
    diff = export_onnx(shipped, entry, onnx_path, check)
    log.info("%s: ONNX export verified with onnxruntime, max abs diff %.2e", name, diff)

    macs = count_macs(shipped, entry.input_shape)
    card: dict[str, object] = {
        "name": name,
        "dataset": entry.dataset,
        "num_classes": entry.num_classes,
        "input_shape": list(entry.input_shape),
        "input_range": [0.0, 1.0],
        "preprocessing": None if entry.preprocessing is None else {k: list(v) for k, v in entry.preprocessing.items()},
        "architecture": _architecture_summary(shipped),
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "macs_per_image": macs,
        "test_accuracy": round(accuracy, 4),
        "test_correct": correct,
        "test_images": len(test),
        "train_images": len(train),
        "train_command": command,
        "seed": seed,
        "epochs": recipe.epochs,
        "recipe": asdict(recipe),
        "augmentation": "random crop (zero padding 2) + horizontal flip",
        "train_wall_time_s": round(train_time, 1),
        "threads": threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "onnx": {"opset": ONNX_OPSET, "exporter": "torchscript (dynamo=False)", "max_abs_diff_vs_torch": diff},
        "files": {
            "weights": {"file": entry.weights_file, "sha256": _sha256(weights)},
            "onnx": {"file": entry.onnx_file, "sha256": _sha256(onnx_path)},
        },
    }
    card_path = out / entry.card_file
    _atomic_write(card_path, lambda tmp: tmp.write_text(json.dumps(card, indent=2) + "\n"))
    log.info("%s: wrote %s, %s, %s", name, weights, onnx_path, card_path)
    return card


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (argparse exits with 2 on a usage error).

    The recorded ``train_command`` repeats every option that changes the result (seed, epochs, threads, limit) and
    ends in ``--out DIR`` (:data:`OUT_PLACEHOLDER`): the output folder does not change the result.
    """
    args = command_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parts = ["python -m snnconvert.models_zoo.train", args.name, "--seed", str(args.seed)]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    if args.threads != 2:
        parts += ["--threads", str(args.threads)]
    if args.train_limit is not None:
        parts += ["--train-limit", str(args.train_limit)]
    parts += ["--out", OUT_PLACEHOLDER]
    run(
        args.name,
        epochs=args.epochs,
        seed=args.seed,
        out=args.out,
        threads=args.threads,
        command=" ".join(parts),
        train_limit=args.train_limit,
    )
    return 0


def command_parser() -> argparse.ArgumentParser:
    """The training command's parser (also reads the ``train_command`` a zoo card records)."""
    parser = argparse.ArgumentParser(
        prog="python -m snnconvert.models_zoo.train", description="Train one zoo model on the CPU from a seed."
    )
    parser.add_argument("name", choices=list_models())
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output folder (required: {WEIGHTS_DIR} replaces the shipped files)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N train images (smoke test)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
