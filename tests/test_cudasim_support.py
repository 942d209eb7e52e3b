"""The simulator support of ``cudasim_support.py``: block barriers that count only the live threads,
failures raised to the launch, and the warp shuffles. (On a GPU the hardware does all of this; the
kernels below run there too, except the failing one.)"""
from __future__ import annotations

import numpy as np
import pytest
from numba import cuda, float32, int32

from conftest import ON_GPU, SIMULATOR, requires_cuda


@cuda.jit
def _early_exit_sum(x, out):
    # threads past the data return first; the rest meet at two barriers: the sum of x in shared memory
    tid = cuda.threadIdx.x
    if tid >= x.shape[0]:
        return
    buf = cuda.shared.array(64, float32)
    buf[tid] = x[tid]
    cuda.syncthreads()
    if tid == 0:
        s = float32(0.0)
        for i in range(x.shape[0]):
            s += buf[i]
        buf[63] = s
    cuda.syncthreads()
    out[tid] = buf[63]


@cuda.jit
def _xor_butterfly(x, out):
    # lane i ends with the sum of its warp's 32 values (the reduction every kernel uses)
    v = x[cuda.grid(1)]
    for off in (16, 8, 4, 2, 1):
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, off)
    out[cuda.grid(1)] = v


@cuda.jit
def _one_thread_fails(x):
    tid = cuda.threadIdx.x
    cuda.syncthreads()
    if tid == 5:
        x[1000000] = 1                 # out of bounds: the simulator raises IndexError in this thread
    cuda.syncthreads()                 # the others wait here and are aborted
    x[tid] = tid


@requires_cuda
@pytest.mark.parametrize("live", [1, 17, 40])
def test_barrier_counts_only_the_threads_still_running(live):
    x = np.arange(1, live + 1, dtype=np.float32)
    out = np.zeros(live, np.float32)
    _early_exit_sum[1, 64](x, out)
    np.testing.assert_array_equal(out, np.full(live, x.sum(), np.float32))   # integers: exact


@requires_cuda
def test_xor_shuffle_sums_each_warp():
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(128, np.float32)
    _xor_butterfly[2, 64](x, out)       # two blocks of two warps: each warp sums only its own lanes
    want = np.repeat(x.reshape(4, 32).sum(axis=1), 32).astype(np.float32)
    np.testing.assert_array_equal(out, want)


@pytest.mark.skipif(not SIMULATOR or ON_GPU, reason="the simulator's failure path")
def test_a_failing_thread_is_raised_with_its_coordinates():
    x = np.zeros(32, np.int32)
    with pytest.raises(IndexError, match=r"tid=\[5, 0, 0\] ctaid=\[0, 0, 0\]"):
        _one_thread_fails[1, 32](x)
    assert int32(x[0]) == 0             # nobody passed the second barrier
