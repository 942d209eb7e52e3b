"""Backends: the stage functions the forward pass is written over.

The forward pass (``llama_beta/model.py``) is written once. It calls a backend for every
stage; a backend decides where arrays live and which implementation runs:

- ``numpy`` (:mod:`llama_beta.backends.numpy_backend`): the ``ref`` stages on the CPU, with
  the weight matrices dequantized once at load so a decode step is a few BLAS calls;
- ``cuda`` (:mod:`llama_beta.backends.cuda_backend`): the ``numba_kernels`` stages on the GPU,
  reading the quantized weight bytes directly.

Every backend offers the same methods (shapes in the project's vocabulary):

========================================  ==============================================
``matrix(raw, ggml_type, shape, bias)``   a weight matrix [N, K] (+ bias [N]) handle
``prepare(weights)``                      after loading: per-matrix choices over the whole model
``vector(array)``                         a float32 vector (norm weights, RoPE factors)
``embedding(raw, ggml_type, shape)``      the token table [V, C], looked up row by row
``kv_cache(n_layers, S, nkv, hs, dtype)`` per-layer K and V caches [S, nkv, hs] (float32/16)
``embed(table, ids)``                     [T] -> [T, C]
``rmsnorm(x, w, eps)``                    [T, C] -> [T, C]
``matmul(x, W)``                          [T, K] -> [T, N]
``rope(x, positions, rope)``              [T, n, hs] -> [T, n, hs]
``attend(q, k, v, cache, layer, pos)``    append k, v at pos; causal GQA -> [T, nh, hs]
``swiglu(gate, up)``                      [T, F] x2 -> [T, F]
``add(a, b)``                             residual add
``to_host(x)``                            a NumPy copy
========================================  ==============================================
"""
from __future__ import annotations

import os


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run on this machine (``cuda`` without a usable GPU)."""


def _why_no_gpu() -> str:
    """Numba's reason for having no GPU, in one line (its message spans several)."""
    try:
        from numba import cuda

        cuda.current_context()
    except Exception as exc:  # CudaSupportError, CudaDriverError, ImportError ...
        lines = [ln.strip(" :") for ln in str(exc).splitlines() if ln.strip(" :")]
        useful = [ln for ln in lines if not ln.startswith("Error at driver init")]
        return (useful or lines or [type(exc).__name__])[0]
    return "Numba reports no CUDA device"


def cuda_usable() -> bool:
    """True when Numba can launch kernels on a real GPU (not the simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def require_cuda() -> None:
    """Raise ``BackendUnavailable`` (one line: Numba's reason) unless kernels can run: on a GPU, or in
    Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, the tests)."""
    if not cuda_usable() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise BackendUnavailable(f"the cuda backend needs an NVIDIA GPU that Numba can use: "
                                 f"{_why_no_gpu().rstrip('.')}; --backend numpy runs on the CPU")


def get_backend(name: str = "auto", **options):
    """A backend instance by name: ``numpy``, ``cuda`` or ``auto`` (the GPU when usable).

    ``options`` go to the cuda backend (``total_bytes`` and ``progress`` for the upload bar)."""
    if name == "auto":
        name = "cuda" if cuda_usable() else "numpy"
    if name == "numpy":
        from llama_beta.backends.numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "cuda":
        require_cuda()
        from llama_beta.backends.cuda_backend import CudaBackend

        return CudaBackend(**options)
    raise ValueError(f"unknown backend '{name}': expected auto, numpy or cuda")
