r"""RMSNorm (and the fused residual-add + RMSNorm) as CUDA kernels (reference: ``ref/rmsnorm.py``).

$$ y_j = x_j \cdot \Big(\tfrac{1}{C}\textstyle\sum_k x_k^2 + \epsilon\Big)^{-1/2} \cdot w_j $$

Kernel versions
    v1  one thread per row: a serial loop sums the squares, a second loop writes. Simple,
        but T=1 (decode) runs on a single thread.
    v2  one block per row; each thread sums a strided slice, then a tree reduction in shared
        memory (log2(threads) barriers).
    v3  one block per row; warp shuffles reduce within each warp (no barrier), the warp sums
        meet in shared memory and every warp reduces those (at most 32) values again with
        shuffles, so all threads hold the total after two barriers. Used by ``rmsnorm``.
    add_rmsnorm_kernel3  v3 with the residual add fused: ``residual += x`` is written back
        and the norm of the sum goes to ``out``, in one read of x and residual.

Bytes: a row of C floats is read once and written once (8C bytes; 16C + 4C with the fused
add), about 4C FLOPs: deeply memory bound, and at decode (T=1) latency bound.

Precision: squares summed in float32 (as ggml-cuda), then ``scale = 1/sqrt(mean + eps)`` and
``y = (x * scale) * w`` in float32, as ggml. The reference accumulates in float64 (as
ggml-cpu), so results agree to a few float32 ulps. ``out`` may alias ``x``: every element is
read and then written by the same thread.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from numba_kernels.runtime import is_device as _is_device
from numba_kernels.runtime import JIT_CACHE

WARP = 32
MAX_THREADS = 1024


# ----------------------------------------------------------------------------------------------
# kernels
# --8<-- [start:kernels]

@cuda.jit(cache=JIT_CACHE)
def rmsnorm_kernel1(x, w, out, T, C, eps):
    t = cuda.grid(1)                                    # one thread per row
    if t >= T:
        return
    acc = float32(0.0)
    for j in range(C):
        acc += x[t, j] * x[t, j]
    scale = float32(1.0) / math.sqrt(acc / float32(C) + eps)
    for j in range(C):
        out[t, j] = (x[t, j] * scale) * w[j]


@cuda.jit(cache=JIT_CACHE)
def rmsnorm_kernel2(x, w, out, C, eps):
    t = cuda.blockIdx.x                                 # one block per row
    tid = cuda.threadIdx.x
    partial = cuda.shared.array(MAX_THREADS, float32)
    acc = float32(0.0)
    for j in range(tid, C, cuda.blockDim.x):
        acc += x[t, j] * x[t, j]
    partial[tid] = acc
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2                       # blockDim is a power of two
    while stride > 0:
        if tid < stride:
            partial[tid] += partial[tid + stride]
        cuda.syncthreads()
        stride //= 2
    scale = float32(1.0) / math.sqrt(partial[0] / float32(C) + eps)
    for j in range(tid, C, cuda.blockDim.x):
        out[t, j] = (x[t, j] * scale) * w[j]


@cuda.jit(device=True, inline=True)
def _warp_sum(v):
    offset = WARP // 2
    while offset > 0:                                   # butterfly: every lane ends with the sum
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, offset)
        offset //= 2
    return v


@cuda.jit(device=True, inline=True)
def _block_sum(v, warp_sums):
    """Sum ``v`` over the block (blockDim a multiple of 32); every thread gets the total."""
    lane = cuda.threadIdx.x % WARP
    warp = cuda.threadIdx.x // WARP
    v = _warp_sum(v)
    if lane == 0:
        warp_sums[warp] = v
    cuda.syncthreads()
    n_warps = cuda.blockDim.x // WARP
    v = warp_sums[lane] if lane < n_warps else float32(0.0)
    v = _warp_sum(v)
    cuda.syncthreads()                                  # warp_sums may be reused afterwards
    return v


@cuda.jit(device=True, inline=True)
def row_scale(x, t, C, eps, warp_sums):
    """1 / sqrt(mean(x[t]^2) + eps) for row t, every thread of the block (one block per row) summing a strided
    slice; the prefill's norm into float16 pairs (``matmul.norm_pack_f16_kernel``) shares it, so its bits."""
    acc = float32(0.0)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        acc += x[t, j] * x[t, j]
    total = _block_sum(acc, warp_sums)
    return float32(1.0) / math.sqrt(total / float32(C) + eps)


@cuda.jit(cache=JIT_CACHE)
def rmsnorm_kernel3(x, w, out, C, eps):
    t = cuda.blockIdx.x                                 # one block per row
    warp_sums = cuda.shared.array(WARP, float32)
    scale = row_scale(x, t, C, eps, warp_sums)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        out[t, j] = (x[t, j] * scale) * w[j]


@cuda.jit(cache=JIT_CACHE)
def add_rmsnorm_kernel3(x, residual, w, out, C, eps):
    t = cuda.blockIdx.x                                 # one block per row
    warp_sums = cuda.shared.array(WARP, float32)
    acc = float32(0.0)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        r = residual[t, j] + x[t, j]
        residual[t, j] = r                              # residual += x, in place
        acc += r * r
    total = _block_sum(acc, warp_sums)
    scale = float32(1.0) / math.sqrt(total / float32(C) + eps)
    for j in range(cuda.threadIdx.x, C, cuda.blockDim.x):
        out[t, j] = (residual[t, j] * scale) * w[j]     # this thread's own write above

# --8<-- [end:kernels]

# ----------------------------------------------------------------------------------------------
# launch helpers: the grid arithmetic

def threads_for(C):
    """Threads per row: one per element, rounded up to a whole power of two, 32 to 1024."""
    threads = WARP
    while threads < C and threads < MAX_THREADS:
        threads *= 2
    return threads


def launch_v1(x, w, out, eps, stream=0):
    T, C = x.shape
    block = 64
    grid = (T + block - 1) // block                     # one thread per row
    rmsnorm_kernel1[grid, block, stream](x, w, out, T, C, np.float32(eps))


def launch_v2(x, w, out, eps, stream=0):
    T, C = x.shape
    rmsnorm_kernel2[T, threads_for(C), stream](x, w, out, C, np.float32(eps))   # T blocks


def launch_v3(x, w, out, eps, stream=0):
    T, C = x.shape
    rmsnorm_kernel3[T, threads_for(C), stream](x, w, out, C, np.float32(eps))   # T blocks


def launch_add_v3(x, residual, w, out, eps, stream=0):
    T, C = x.shape
    add_rmsnorm_kernel3[T, threads_for(C), stream](x, residual, w, out, C, np.float32(eps))


# ----------------------------------------------------------------------------------------------
# public functions



def _to_device(a, stream):
    return a if _is_device(a) else cuda.to_device(np.ascontiguousarray(a, np.float32), stream=stream)


def _rows(a):
    return a.reshape(1, a.shape[0]) if a.ndim == 1 else a          # [C] -> [1, C]


def rmsnorm(x, weight, eps, out=None, stream=0):
    """RMSNorm of every row of x [T, C] times weight [C]; NumPy in -> NumPy out."""
    host = not _is_device(x)
    dx, dw = _to_device(x, stream), _to_device(weight, stream)
    dout = cuda.device_array(x.shape, np.float32, stream=stream) if out is None else out
    launch_v3(_rows(dx), dw, _rows(dout), eps, stream)
    return dout.copy_to_host(stream=stream) if host else dout


def add_rmsnorm(x, residual, weight, eps, out=None, stream=0):
    """``residual += x`` (in place on the device) and ``out = rmsnorm(residual)``.

    Returns ``(out, residual)``; with NumPy inputs both are new NumPy arrays and the caller's
    ``residual`` is left untouched.
    """
    host = not _is_device(x)
    dx, dres, dw = _to_device(x, stream), _to_device(residual, stream), _to_device(weight, stream)
    dout = cuda.device_array(x.shape, np.float32, stream=stream) if out is None else out
    launch_add_v3(_rows(dx), _rows(dres), dw, _rows(dout), eps, stream)
    if host:
        return dout.copy_to_host(stream=stream), dres.copy_to_host(stream=stream)
    return dout, dres


if __name__ == "__main__":
    from ref import rmsnorm as ref

    from numba_kernels.runtime import time_us as timed

    rng = np.random.default_rng(0)
    eps = 1e-6
    for T, C in ((1, 896), (512, 896), (1, 3072), (512, 3072)):
        x = rng.standard_normal((T, C)).astype(np.float32)
        r = rng.standard_normal((T, C)).astype(np.float32)
        w = rng.standard_normal(C).astype(np.float32)
        dx, dw, dout = cuda.to_device(x), cuda.to_device(w), cuda.device_array((T, C), np.float32)
        expect = ref.rmsnorm(x, w, eps)
        for name, launch in (("v1", launch_v1), ("v2", launch_v2), ("v3", launch_v3)):
            launch(dx, dw, dout, eps)
            err = np.abs(dout.copy_to_host() - expect).max() / np.abs(expect).max()
            us = timed(lambda: launch(dx, dw, dout, eps))
            print(f"rmsnorm {name} T={T:4} C={C}: rel err {err:.1e}  {us:8.2f} us  {8 * T * C / us / 1e3:7.1f} GB/s")
        dr = cuda.to_device(r)
        launch_add_v3(dx, dr, dw, dout, eps)
        n_exp, r_exp = ref.add_rmsnorm(x, r, w, eps)
        err = np.abs(dout.copy_to_host() - n_exp).max() / np.abs(n_exp).max()
        assert np.array_equal(dr.copy_to_host(), r_exp)
        us = timed(lambda: launch_add_v3(dx, dr, dw, dout, eps))
        print(f"add_rmsnorm v3 T={T:4} C={C}: rel err {err:.1e}  {us:8.2f} us  {16 * T * C / us / 1e3:7.1f} GB/s")
