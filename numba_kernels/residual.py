"""Residual add ``out = a + b`` as a CUDA kernel (reference: ``ref/residual.py``).

Kernel versions
    v1  one thread per element, ``grid = ceil(n / 256)`` blocks of 256.
    v2  grid-stride loop over a fixed grid of ``4 * SMs`` blocks: the same kernel serves any
        size with one launch configuration (what a captured CUDA graph wants).
    The public ``add`` uses v2. Element-wise adds are memory bound: 12 bytes moved per FLOP.

``out`` may alias ``a`` (``a += b``): every element is read and written by one thread.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from numba_kernels.runtime import is_device as _is_device
from numba_kernels.runtime import JIT_CACHE

BLOCK = 256


@cuda.jit(cache=JIT_CACHE)
def add_kernel1(a, b, out, n):
    i = cuda.grid(1)
    if i < n:
        out[i] = a[i] + b[i]


@cuda.jit(cache=JIT_CACHE)
def add_kernel2(a, b, out, n):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        out[i] = a[i] + b[i]


def launch_v1(a, b, out, stream=0):
    n = a.size
    grid = (n + BLOCK - 1) // BLOCK                     # one thread per element
    add_kernel1[grid, BLOCK, stream](a, b, out, n)


def _fixed_grid(n):
    try:
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    except Exception:                                   # the simulator has no SM count
        sms = 1
    return max(1, min(4 * sms, (n + BLOCK - 1) // BLOCK))


def launch_v2(a, b, out, stream=0):
    n = a.size
    add_kernel2[_fixed_grid(n), BLOCK, stream](a, b, out, n)   # grid-stride loop covers the rest




def add(a, b, out=None, stream=0):
    """``a + b`` for float32 arrays of one shape; NumPy in -> NumPy out, device in -> device out."""
    host = not _is_device(a)
    if a.shape != b.shape:
        raise ValueError(f"residual add: shapes {a.shape} and {b.shape} differ")
    da = cuda.to_device(np.ascontiguousarray(a, np.float32), stream=stream) if host else a
    db = b if _is_device(b) else cuda.to_device(np.ascontiguousarray(b, np.float32), stream=stream)
    dout = cuda.device_array(a.shape, np.float32, stream=stream) if out is None else out
    launch_v2(da.reshape(-1), db.reshape(-1), dout.reshape(-1), stream)
    return dout.copy_to_host(stream=stream) if host else dout


if __name__ == "__main__":
    import time

    from ref import residual as ref

    rng = np.random.default_rng(0)
    for n in (1, 896, 896 * 512, 3584 * 512):
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        da, db, dout = cuda.to_device(a), cuda.to_device(b), cuda.device_array(n, np.float32)
        for name, launch in (("v1", launch_v1), ("v2", launch_v2)):
            launch(da, db, dout)
            assert np.array_equal(dout.copy_to_host(), ref.add(a, b)), name
            cuda.synchronize()
            reps = 100
            t0 = time.perf_counter()
            for _ in range(reps):
                launch(da, db, dout)
            cuda.synchronize()
            us = (time.perf_counter() - t0) / reps * 1e6
            print(f"add {name} n={n:>8}: {us:8.2f} us/launch  {12 * n / us / 1e3:7.1f} GB/s")
