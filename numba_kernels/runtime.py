"""The small device runtime every kernel file shares: telling device arrays from host arrays,
moving inputs to the device, and timing launches with CUDA events (with and without the host's
launch cost).

(The chunked weight upload lives in ``upload.py``; the GPU memory plan in ``llama_beta/memory.py``.)
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
from numba import config, cuda

# Kernels are compiled on first use (seconds each); with the on-disk cache a later process loads them
# instead. LLAMA_BETA_JIT_CACHE=0 turns the cache off (e.g. while editing device functions of another
# file, which Numba's cache key does not see).
JIT_CACHE = os.environ.get("LLAMA_BETA_JIT_CACHE", "1") != "0"


def is_device(x) -> bool:
    """True for a Numba device array (the simulator's too) or any CUDA Array Interface object."""
    return hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")


def to_device(x, dtype=np.float32, stream=0):
    """``x`` itself if it is already on the device (or None), else a contiguous copy of type ``dtype``."""
    if x is None or is_device(x):
        return x
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype), stream=stream)


def time_us(fn, reps: int = 50, stream=0) -> float:
    """Microseconds per call of ``fn`` (which launches work on ``stream``), by CUDA events recorded on
    that stream after one warm-up call.

    Includes the host's launch cost when launches do not queue up ahead of the GPU; kernel files
    that need pure kernel time hold the stream with a sleeping kernel first.
    """
    fn()
    start, end = cuda.event(), cuda.event()
    start.record(stream)
    for _ in range(reps):
        fn()
    end.record(stream)
    end.synchronize()
    return cuda.event_elapsed_time(start, end) * 1000 / reps


def programmatic_launch_supported() -> bool:
    """Programmatic dependent launch (``ptx.py``) needs a real sm_90+ GPU and a ``cuda.core`` whose
    LaunchConfig takes ``programmatic_stream_serialization`` (the one Numba launches through)."""
    if config.ENABLE_CUDASIM or not cuda.is_available():
        return False
    try:
        from numba.cuda import dispatcher
        dispatcher.LaunchConfig(grid=1, block=1, programmatic_stream_serialization=True)
    except (ImportError, AttributeError, TypeError):
        return False
    return cuda.get_current_device().compute_capability >= (9, 0)


@contextlib.contextmanager
def programmatic_launches(on: bool = True):
    """Inside: every Numba kernel launch carries the launch attribute ``programmatic_stream_serialization``,
    so it may start before the launch ahead of it in the stream finishes (``ptx.allow_next_grid`` /
    ``wait_previous_grid`` say how far). Only for launches of kernels that call ``ptx.wait_previous_grid``
    before reading what other kernels write (the decode step's). Numba builds a ``cuda.core`` LaunchConfig
    per launch; the context swaps in one that adds the attribute, and puts Numba's back on leaving."""
    if not on or config.ENABLE_CUDASIM:                 # (the simulator launches without a LaunchConfig)
        yield
        return
    from numba.cuda import dispatcher
    plain = dispatcher.LaunchConfig

    def with_pdl(*args, **kwargs):
        return plain(*args, programmatic_stream_serialization=True, **kwargs)

    dispatcher.LaunchConfig = with_pdl
    try:
        yield
    finally:
        dispatcher.LaunchConfig = plain


SHARED_DEFAULT = 48 * 1024   # dynamic shared memory a kernel may use without opting in
_shared_opted_in: set = set()


def _opt_in_shared(nbytes: int):
    """A pre-launch callback: let the compiled kernel use ``nbytes`` of dynamic shared memory (the driver's
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES; once per kernel and size)."""
    def opt_in(kernel, launch_config):
        from numba.cuda.cudadrv.driver import binding, driver

        func = kernel._codelibrary.get_cufunc()
        key = (int(func.handle), nbytes)
        if key not in _shared_opted_in:
            attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            driver.cuKernelSetAttribute(attr, nbytes, func.handle, func.device.id)
            _shared_opted_in.add(key)
    return opt_in


def launch_with_shared(kernel, blocks, threads, stream, nbytes, *args):
    """``kernel[blocks, threads, stream, nbytes](*args)``; above 48 KiB of dynamic shared memory the kernel
    opts in first (sm_70+ allow up to 227 KiB a block on Hopper, but only when asked)."""
    launch = kernel[blocks, threads, stream, nbytes]
    if nbytes > SHARED_DEFAULT and not config.ENABLE_CUDASIM:
        launch.pre_launch_callbacks.append(_opt_in_shared(nbytes))
    launch(*args)


def install_simulator_shuffles() -> None:
    """In Numba's CUDA simulator, add the warp shuffles, __syncwarp and nanosleep it lacks (the test
    suite's implementation, ``tests/cudasim_support.py``), so a kernel file's ``__main__`` runs there."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import cudasim_support

    cudasim_support.install()


@cuda.jit(cache=JIT_CACHE)
def _hold(ms):
    """One thread sleeps ms[0] milliseconds: it holds a stream while the host queues launches."""
    for _ in range(ms[0]):
        cuda.nanosleep(1000000)


def kernel_time_us(launch, reps: int = 20) -> float:
    """Device microseconds per ``launch(stream, i)``, i = 0..reps-1: the kernels alone.

    A sleeping kernel holds the stream while the host queues the ``reps`` launches behind it, so
    the events around them measure the GPU's time, not Numba's 25-60 us of host time per launch.
    (The first call, before the timing, compiles and warms up.)
    """
    stream = cuda.stream()
    launch(stream, 0)
    stream.synchronize()
    _hold[1, 1, stream](cuda.to_device(np.array([10 + reps // 2], np.int32), stream=stream))
    start, end = cuda.event(), cuda.event()
    start.record(stream)
    for i in range(reps):
        launch(stream, i)
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) * 1000 / reps
