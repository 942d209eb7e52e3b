"""Warp shuffles for Numba's CUDA simulator.

The simulator (``NUMBA_ENABLE_CUDASIM=1``) runs every thread of a block as a Python
thread but does not implement ``cuda.shfl_*_sync``. Our kernels use warp shuffles
for reductions, so the test suite gives the simulator an implementation here.

How it works: each participating thread writes its value into a per-block
scratch table, all threads meet at the block barrier, each reads its partner's
value, and they meet again before the table is reused. The barrier is
block-wide, so a kernel must call a shuffle from every live thread of the block
(threads that already returned do not count) - the same uniformity the real
hardware wants for a full-mask shuffle.
"""
from __future__ import annotations

import threading

WARP = 32


def _exchange(value, src_lane_of):
    me = threading.current_thread()
    manager = me._manager
    table = manager.__dict__.setdefault("_shfl_table", {})
    tid = me.thread_id
    table[tid] = value
    me.syncthreads()
    lane = tid % WARP
    src = src_lane_of(lane)
    if 0 <= src < WARP:
        partner = tid - lane + src
        out = table.get(partner, value)
    else:
        out = value
    me.syncthreads()
    return out


def shfl_sync(self, mask, value, src_lane):
    return _exchange(value, lambda lane: src_lane % WARP)


def shfl_up_sync(self, mask, value, delta):
    return _exchange(value, lambda lane: lane - delta)


def shfl_down_sync(self, mask, value, delta):
    return _exchange(value, lambda lane: lane + delta)


def shfl_xor_sync(self, mask, value, lane_mask):
    return _exchange(value, lambda lane: lane ^ lane_mask)


def syncwarp(self, mask=0xFFFFFFFF):
    threading.current_thread().syncthreads()


def nanosleep(self, ns) -> None:
    """``cuda.nanosleep``: a hint to the scheduler on the GPU, a real sleep here."""
    import time

    time.sleep(ns * 1e-9)


def install() -> None:
    """Add the shuffles (and nanosleep) to the simulator's fake ``cuda`` module (idempotent)."""
    from numba.cuda.simulator import kernelapi

    fake = kernelapi.FakeCUDAModule
    for name, fn in [("shfl_sync", shfl_sync), ("shfl_up_sync", shfl_up_sync),
                     ("shfl_down_sync", shfl_down_sync), ("shfl_xor_sync", shfl_xor_sync),
                     ("syncwarp", syncwarp), ("nanosleep", nanosleep)]:
        if not hasattr(fake, name):
            setattr(fake, name, fn)
