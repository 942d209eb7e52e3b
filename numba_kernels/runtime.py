"""The small device runtime every kernel file shares: telling device arrays from host arrays,
moving inputs to the device, and timing a launch with CUDA events.

(The chunked weight upload lives in ``upload.py``; the GPU memory plan in ``llama_beta/memory.py``.)
"""
from __future__ import annotations

import os

import numpy as np
from numba import cuda

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


def time_us(fn, reps: int = 50) -> float:
    """Microseconds per call of ``fn`` (which launches work), by CUDA events after one warm-up call.

    Includes the host's launch cost when launches do not queue up ahead of the GPU; kernel files
    that need pure kernel time hold the stream with a sleeping kernel first.
    """
    fn()
    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) * 1000 / reps
