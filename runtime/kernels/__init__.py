"""Fused Triton neuron kernels: not built yet. `snnconvert.runtime.compile(snn, backend="triton")` raises
BackendUnavailableError until they exist (no silent fallback to the torch reference)."""
