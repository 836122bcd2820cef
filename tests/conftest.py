"""Shared fixtures: seeding, tolerances, the real Fashion-MNIST data, gpu marker auto-skip, Triton interpreter."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without CUDA the triton kernels run on CPU tensors through the Triton interpreter. @triton.jit reads
# TRITON_INTERPRET when it decorates a kernel (older triton: at import), so it is set here, before any test module
# imports triton or snnconvert's kernels. An explicit TRITON_INTERPRET in the environment wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))  # tests/nets.py

# The allocator setting of the snnconvert command (runtime/malloc.py), for the whole session: the first in-process CLI
# test applies it to the process anyway, so every test runs under it, not only those after that one; large
# activations are then not paged in again at every layer call (the ViT accuracy check: 4.9 million page faults).
from snnconvert.runtime.malloc import keep_freed_memory  # noqa: E402

keep_freed_memory()

#: One table of tolerances (architecture.md §6); never loosen one to make a test pass.
TOLERANCES = {
    "pass_equivalence": {"rtol": 1e-4, "atol": 1e-5},
    "onnx_vs_ort": {"rtol": 1e-4, "atol": 1e-5},
    "single_vs_multi": {"rtol": 1e-6, "atol": 1e-6},
    # triton kernel vs its *_ref twin (architecture.md §6): fp32 membrane / running means; fp16/bf16 outputs
    "kernel_vs_ref_fp32": {"rtol": 1e-6, "atol": 1e-6},
    # whole network, backend="triton" vs backend="torch" (same layers, neurons with identical arithmetic)
    "triton_vs_torch_network": {"rtol": 1e-6, "atol": 1e-6},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fmnist_train():
    from snnconvert.runtime.data import load_fashion_mnist

    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def fmnist_test():
    from snnconvert.runtime.data import load_fashion_mnist

    return load_fashion_mnist("test")
