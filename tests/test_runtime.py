"""The shared device helpers: telling device arrays apart and moving inputs to the device."""
from __future__ import annotations

import numpy as np

from conftest import ON_GPU, requires_cuda


@requires_cuda
def test_to_device_passes_device_arrays_through_and_copies_host_arrays():
    from numba_kernels.runtime import is_device, to_device

    host = np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2]        # non-contiguous, float64
    dev = to_device(host)
    assert is_device(dev) and not is_device(host)
    assert dev.dtype == np.float32 and np.array_equal(dev.copy_to_host(), host.astype(np.float32))
    assert to_device(dev) is dev and to_device(None) is None
    ids = to_device(np.array([3, 1]), dtype=np.int32)
    assert ids.dtype == np.int32 and list(ids.copy_to_host()) == [3, 1]


def _record_kernel():
    """A one-thread kernel appending its argument i to a log (``cuda`` a module global, as the simulator needs)."""
    global cuda
    from numba import cuda

    @cuda.jit
    def record(log, slot, i):
        if cuda.threadIdx.x == 0:
            log[slot[0]] = i
            slot[0] += 1

    return record


@requires_cuda
def test_kernel_time_us_runs_each_launch_once_behind_the_hold():
    """The warm-up launch gets index 0, then every index 0..reps-1 once, in order; the result is a time."""
    from numba_kernels.runtime import kernel_time_us

    record = _record_kernel()
    log, slot = cuda.to_device(np.full(8, -1, np.int32)), cuda.to_device(np.zeros(1, np.int32))
    us = kernel_time_us(lambda stream, i: record[1, 1, stream](log, slot, i), reps=5)
    assert list(log.copy_to_host()) == [0, 0, 1, 2, 3, 4, -1, -1]
    if ON_GPU:                                    # the simulator's events record no time (they return -1)
        assert us > 0


def _fill_kernel():
    """Every thread of one block writes, then reads back, its share of n floats of dynamic shared memory."""
    global cuda
    from numba import cuda, float32

    @cuda.jit
    def fill(n, out):
        buf = cuda.shared.array(0, float32)
        i = cuda.threadIdx.x
        while i < n:
            buf[i] = float32(i) * float32(0.5)
            i += cuda.blockDim.x
        cuda.syncthreads()
        i = cuda.threadIdx.x
        while i < n:
            out[i] = buf[n - 1 - i]
            i += cuda.blockDim.x

    return fill


@requires_cuda
def test_launch_with_shared_gives_a_block_more_than_48_kib():
    """matmul v18's blocks hold up to 227 KiB of dynamic shared memory; a launch asking for more than 48 KiB
    fails unless the kernel opts in, which ``launch_with_shared`` does (twice: the second launch reuses it)."""
    from numba import cuda

    from numba_kernels.runtime import SHARED_DEFAULT, launch_with_shared

    n = (SHARED_DEFAULT + 16 * 1024) // 4 if ON_GPU else 4096          # 64 KiB on the GPU (the simulator is slow)
    fill = _fill_kernel()
    for _ in range(2):
        out = cuda.to_device(np.zeros(n, np.float32))
        launch_with_shared(fill, 1, 256, 0, 4 * n, n, out)
        np.testing.assert_array_equal(out.copy_to_host(), (np.arange(n, dtype=np.float32) * 0.5)[::-1])
