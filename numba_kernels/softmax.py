r"""Row softmax as CUDA kernels (reference: ``ref/softmax.py``).

$$ \operatorname{softmax}(x)_i = e^{x_i - m} / \textstyle\sum_j e^{x_j - m}, \quad m = \max_j x_j $$

Kernel versions
    v1  one thread per row, three serial loops (max, sum, write). Fine for many short rows.
    v2  one block per row, three strided passes; the max and the sum are block reductions
        (warp shuffles, then the warp results in shared memory). Used by ``softmax``.
    v3  one block per row, "online softmax" (Milakov & Gimelshein 2018): a single pass keeps a
        running max ``m`` and a sum ``d`` rescaled by ``exp(m_old - m_new)``; pairs (m, d) merge
        the same way in the reduction. One read of the row instead of two before the write.

Bytes: 8 per element (read, write) plus a second read for v2; 1 exp per element. A
vocabulary-sized row (V = 151936) is 0.6 MB: one block per row uses one SM, which is why the
engine samples with ``numba_kernels.sampling`` instead of materializing probabilities.

Rows that are entirely ``-inf`` give NaN (0/0), as the reference.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from numba_kernels.runtime import is_device as _is_device
from numba_kernels.runtime import JIT_CACHE

WARP = 32
NEG_INF = float32(-np.inf)


@cuda.jit(cache=JIT_CACHE)
def softmax_kernel1(x, out, R, V):
    r = cuda.grid(1)                                    # one thread per row
    if r >= R:
        return
    m = NEG_INF
    for j in range(V):
        m = max(m, x[r, j])
    d = float32(0.0)
    for j in range(V):
        d += math.exp(x[r, j] - m)
    for j in range(V):
        out[r, j] = math.exp(x[r, j] - m) / d


@cuda.jit(device=True, inline=True)
def _warp_max(v):
    offset = WARP // 2
    while offset > 0:
        v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, offset))
        offset //= 2
    return v


@cuda.jit(device=True, inline=True)
def _warp_sum(v):
    offset = WARP // 2
    while offset > 0:
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, offset)
        offset //= 2
    return v


@cuda.jit(device=True, inline=True)
def _block_max(v, scratch):
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    v = _warp_max(v)
    if lane == 0:
        scratch[warp] = v
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP else NEG_INF
    v = _warp_max(v)
    cuda.syncthreads()
    return v


@cuda.jit(device=True, inline=True)
def _block_sum(v, scratch):
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    v = _warp_sum(v)
    if lane == 0:
        scratch[warp] = v
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP else float32(0.0)
    v = _warp_sum(v)
    cuda.syncthreads()
    return v


@cuda.jit(cache=JIT_CACHE)
def softmax_kernel2(x, out, V):
    r = cuda.blockIdx.x                                 # one block per row
    scratch = cuda.shared.array(WARP, float32)
    m = NEG_INF
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        m = max(m, x[r, j])
    m = _block_max(m, scratch)
    d = float32(0.0)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        d += math.exp(x[r, j] - m)
    d = _block_sum(d, scratch)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        out[r, j] = math.exp(x[r, j] - m) / d


@cuda.jit(device=True, inline=True)
def _merge(m_a, d_a, m_b, d_b):
    """Combine two (running max, running sum of exp(x - max)) pairs."""
    m = max(m_a, m_b)
    if m == NEG_INF:
        return m, float32(0.0)
    return m, d_a * math.exp(m_a - m) + d_b * math.exp(m_b - m)


@cuda.jit(cache=JIT_CACHE)
def softmax_kernel3(x, out, V):
    r = cuda.blockIdx.x                                 # one block per row
    ms = cuda.shared.array(WARP, float32)
    ds = cuda.shared.array(WARP, float32)
    m, d = NEG_INF, float32(0.0)
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):   # one pass: online max and sum
        m, d = _merge(m, d, x[r, j], float32(1.0))
    offset = WARP // 2
    while offset > 0:                                   # merge pairs across the warp
        m_o = cuda.shfl_xor_sync(0xFFFFFFFF, m, offset)
        d_o = cuda.shfl_xor_sync(0xFFFFFFFF, d, offset)
        m, d = _merge(m, d, m_o, d_o)
        offset //= 2
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    if lane == 0:
        ms[warp], ds[warp] = m, d
    cuda.syncthreads()
    m, d = NEG_INF, float32(0.0)
    for k in range(cuda.blockDim.x // WARP):            # every thread merges the warp results
        m, d = _merge(m, d, ms[k], ds[k])
    for j in range(cuda.threadIdx.x, V, cuda.blockDim.x):
        out[r, j] = math.exp(x[r, j] - m) / d


def threads_for(V):
    threads = WARP
    while threads < V and threads < 1024:               # a power of two, 32 .. 1024
        threads *= 2
    return threads


def launch_v1(x, out, stream=0):
    R, V = x.shape
    softmax_kernel1[(R + 63) // 64, 64, stream](x, out, R, V)       # one thread per row


def launch_v2(x, out, stream=0):
    R, V = x.shape
    softmax_kernel2[R, threads_for(V), stream](x, out, V)           # one block per row


def launch_v3(x, out, stream=0):
    R, V = x.shape
    softmax_kernel3[R, threads_for(V), stream](x, out, V)           # one block per row




def softmax(x, out=None, stream=0):
    """Softmax over the last axis of x [..., V]; NumPy in -> NumPy out."""
    host = not _is_device(x)
    dx = cuda.to_device(np.ascontiguousarray(x, np.float32), stream=stream) if host else x
    dout = cuda.device_array(x.shape, np.float32, stream=stream) if out is None else out
    V = tuple(x.shape)[-1]
    launch_v2(dx.reshape(-1, V), dout.reshape(-1, V), stream)
    return dout.copy_to_host(stream=stream) if host else dout


if __name__ == "__main__":
    from ref import softmax as ref

    from numba_kernels.runtime import time_us as timed

    rng = np.random.default_rng(0)
    for R, V in ((14 * 512, 512), (1, 151936), (8, 151936)):
        x = (rng.standard_normal((R, V)) * 5).astype(np.float32)
        dx, dout = cuda.to_device(x), cuda.device_array((R, V), np.float32)
        expect = ref.softmax(x)
        for name, launch in (("v1", launch_v1), ("v2", launch_v2), ("v3", launch_v3)):
            launch(dx, dout)
            err = np.abs(dout.copy_to_host() - expect).max()
            us = timed(lambda: launch(dx, dout))
            print(f"softmax {name} R={R:5} V={V}: max|err| {err:.1e}  {us:9.2f} us  {8 * R * V / us / 1e3:7.1f} GB/s")
