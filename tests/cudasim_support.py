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

Block barriers without polling: the simulator's own ``BlockManager.run`` finds the threads
waiting at ``syncthreads`` by polling them in a loop that never blocks, so the main thread keeps
taking the interpreter lock from the threads it waits for, and every barrier (each shuffle is two)
costs milliseconds. ``install`` replaces it with a condition-variable barrier that counts the live
threads of the block, with the same semantics: a barrier opens once every thread that has not yet
returned is waiting at it, and an exception in one thread aborts the others and is raised to the
launch with the thread's coordinates.
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


class _BlockBarrier:
    """``syncthreads`` for one simulated block: opens when every live thread waits at it."""

    def __init__(self, n_threads: int):
        self.cond = threading.Condition()
        self.live, self.waiting, self.generation, self.aborted = n_threads, 0, 0, False

    def _open(self) -> None:
        self.waiting, self.generation = 0, self.generation + 1
        self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads call")
            generation = self.generation
            self.waiting += 1
            if self.waiting == self.live:
                self._open()
            while generation == self.generation and not self.aborted:
                self.cond.wait()
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads clear")

    def leave(self) -> None:
        """A thread returned: the others no longer wait for it."""
        with self.cond:
            self.live -= 1
            if self.waiting and self.waiting == self.live:
                self._open()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


def _thread_run(self):
    """BlockThread.run: the simulator's (it records an exception with the thread's coordinates), then
    leave the block's barrier, aborting it if the thread failed."""
    try:
        _simulator_thread_run(self)
    finally:
        barrier = self._manager._barrier
        barrier.abort() if self.exception else barrier.leave()


def _thread_syncthreads(self):
    self._manager._barrier.wait()


def _block_run(self, grid_point, *args):
    """BlockManager.run: start one thread per point of the block, wait for all, raise the first failure."""
    from numba.cuda.simulator.kernel import BlockThread
    import numpy as np

    points = list(np.ndindex(*self._block_dim))
    self._barrier = _BlockBarrier(len(points))
    threads = [BlockThread(lambda: self._f(*args), self, grid_point, point, self._debug) for point in points]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [t.exception for t in threads if t.exception]
    first = [e for e in errors if "abort flag" not in str(e[0])] or errors   # the cause, not the aborts
    if first:
        raise first[0][0].with_traceback(first[0][1])


_simulator_thread_run = None


def install() -> None:
    """Add the shuffles (and nanosleep) to the simulator's fake ``cuda`` module and put the condition-variable
    barrier in place of its polling one (idempotent)."""
    from numba.cuda.simulator import kernelapi

    fake = kernelapi.FakeCUDAModule
    for name, fn in [("shfl_sync", shfl_sync), ("shfl_up_sync", shfl_up_sync),
                     ("shfl_down_sync", shfl_down_sync), ("shfl_xor_sync", shfl_xor_sync),
                     ("syncwarp", syncwarp), ("nanosleep", nanosleep)]:
        if not hasattr(fake, name):
            setattr(fake, name, fn)
    global _simulator_thread_run
    from numba.cuda.simulator import kernel

    if _simulator_thread_run is None:
        _simulator_thread_run = kernel.BlockThread.run
        kernel.BlockThread.run = _thread_run
        kernel.BlockThread.syncthreads = _thread_syncthreads
        kernel.BlockManager.run = _block_run
