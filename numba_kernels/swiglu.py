"""SwiGLU ``silu(gate) * up`` as CUDA kernels (reference: ``ref/swiglu.py``).

Kernel versions
    v1  separate inputs: one thread per output element of gate [T, F] and up [T, F].
    v2  fused input gate_up [T, 2F] (Phi-3's fused ffn_up): the thread for output (t, j)
        reads gate at column j and up at column F + j of row t; no split copy is made.
    Both are memory bound: 12 bytes and about 5 FLOPs (plus one exp) per output.

``silu(g) = g / (1 + expf(-g))`` in float32, as ggml-cpu's ``ggml_silu_f32``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from numba_kernels.runtime import is_device as _is_device
from numba_kernels.runtime import JIT_CACHE

BLOCK = 256


@cuda.jit(device=True, inline=True)
def _silu(g):
    return g / (float32(1.0) + math.exp(-g))


@cuda.jit(cache=JIT_CACHE)
def swiglu_kernel1(gate, up, out):
    T, F = out.shape
    i = cuda.grid(1)                                    # flat index into [T, F]
    if i < T * F:
        t, j = i // F, i % F
        out[t, j] = _silu(gate[t, j]) * up[t, j]


@cuda.jit(cache=JIT_CACHE)
def swiglu_fused_kernel2(gate_up, out):
    T, F = out.shape
    i = cuda.grid(1)                                    # flat index into out [T, F]
    if i < T * F:
        t, j = i // F, i % F
        out[t, j] = _silu(gate_up[t, j]) * gate_up[t, F + j]   # gate | up halves of row t


def _rows(a):
    return a.reshape(1, a.shape[0]) if a.ndim == 1 else a      # [F] -> [1, F]


def launch_v1(gate, up, out, stream=0):
    n = out.size
    grid = (n + BLOCK - 1) // BLOCK                     # one thread per output element
    swiglu_kernel1[grid, BLOCK, stream](_rows(gate), _rows(up), _rows(out))


def launch_v2(gate_up, out, stream=0):
    n = out.size
    grid = (n + BLOCK - 1) // BLOCK                     # one thread per output element
    swiglu_fused_kernel2[grid, BLOCK, stream](_rows(gate_up), _rows(out))




def _to_device(x, stream):
    return x if _is_device(x) else cuda.to_device(np.ascontiguousarray(x, np.float32), stream=stream)


def swiglu(gate, up, out=None, stream=0):
    """``silu(gate) * up`` for gate, up [T, F]; NumPy in -> NumPy out."""
    host = not _is_device(gate)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} differ")
    dg, du = _to_device(gate, stream), _to_device(up, stream)
    dout = cuda.device_array(gate.shape, np.float32, stream=stream) if out is None else out
    launch_v1(dg, du, dout, stream)
    return dout.copy_to_host(stream=stream) if host else dout


def swiglu_fused(gate_up, out=None, stream=0):
    """SwiGLU of gate_up [T, 2F] (gate = first F columns, up = last F) -> [T, F]."""
    host = not _is_device(gate_up)
    *lead, two_f = tuple(gate_up.shape)
    if two_f % 2:
        raise ValueError(f"swiglu_fused: last dimension {two_f} is not even")
    dgu = _to_device(gate_up, stream)
    shape = (*lead, two_f // 2)
    dout = cuda.device_array(shape, np.float32, stream=stream) if out is None else out
    launch_v2(dgu, dout, stream)
    return dout.copy_to_host(stream=stream) if host else dout


if __name__ == "__main__":
    import time

    from ref import swiglu as ref

    rng = np.random.default_rng(0)
    for T, F in ((1, 4864), (512, 4864), (1, 8192)):
        gu = (rng.standard_normal((T, 2 * F)) * 4).astype(np.float32)
        d_gu, d_out = cuda.to_device(gu), cuda.device_array((T, F), np.float32)
        d_g, d_u = cuda.to_device(np.ascontiguousarray(gu[:, :F])), cuda.to_device(np.ascontiguousarray(gu[:, F:]))
        expect = ref.swiglu_fused(gu)
        for name, go in (("v1", lambda: launch_v1(d_g, d_u, d_out)), ("v2", lambda: launch_v2(d_gu, d_out))):
            go()
            err = np.abs(d_out.copy_to_host() - expect).max()
            cuda.synchronize()
            reps = 100
            t0 = time.perf_counter()
            for _ in range(reps):
                go()
            cuda.synchronize()
            us = (time.perf_counter() - t0) / reps * 1e6
            print(f"swiglu {name} T={T} F={F}: max|err|={err:.2e} {us:8.2f} us  {12 * T * F / us / 1e3:7.1f} GB/s")
