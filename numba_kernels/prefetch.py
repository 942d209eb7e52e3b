"""Asking L2 for weight bytes before a launch reads them: the decode step's prefetch branch.

A decode step is a chain of short launches, and between the large products (norms, attention, the ends and
starts of launches) the DRAM sits idle: the Phi-3-mini-shaped step moves 2.2 GB in 2.56 ms (0.9 TB/s of the
4.3 TB/s the copy reaches). The launch after the current one reads weights that are known long before: this
kernel asks L2 for them while the current launch runs, so the next launch finds them in L2.

``l2_prefetch`` has no arithmetic and no result. Thread 0 of each of its blocks issues
``cp.async.bulk.prefetch.L2`` (``ptx.prefetch_l2``) for its share of up to three byte buffers, in pieces of
``CHUNK`` bytes, and the block exits: nothing comes back to the SM and nothing waits. ``CudaDecoder`` launches
it on a second stream that forks from the step's stream before each launch and joins it at the step's end,
so that inside the captured graph it is a side branch (``LLAMA_BETA_PREFETCH_MB``; see cuda_decode.py).

Versions
- v1 (eleventh session, opt-in, NOT yet measured on the GPU): this file.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from numba_kernels import ptx
from numba_kernels.runtime import JIT_CACHE

CHUNK = 1 << 20           # bytes per bulk prefetch instruction
BLOCKS = 16               # blocks per launch: the instructions of a large tensor spread over 16 SMs
SLOTS = 3                 # buffers per launch (Q/K/V's three)


@cuda.jit(device=True, inline=True)
def _ask_share(buf, n):
    """Block b's share of the bytes [0, n) of ``buf``: [b s, (b + 1) s) with s = ceil(n / blocks) rounded up to 16
    (``prefetch_l2`` asks for the 16-byte aligned part of a range: shares that start aligned lose no bytes), in
    CHUNKs."""
    share = ((n + cuda.gridDim.x - 1) // cuda.gridDim.x + 15) // 16 * 16
    start = cuda.blockIdx.x * share
    end = min(n, start + share)
    while start < end:
        size = min(CHUNK, end - start)
        ptx.prefetch_l2(buf, start, size)
        start += size


@cuda.jit(cache=JIT_CACHE)
def l2_prefetch(a, na, b, nb, c, nc):
    """Ask L2 for the first na / nb / nc bytes of the uint8 buffers a, b, c (thread 0 of each block)."""
    if cuda.threadIdx.x == 0:
        _ask_share(a, na)
        _ask_share(b, nb)
        _ask_share(c, nc)


def as_bytes(w):
    """A weight's raw bytes (a contiguous uint8 device array, [N, row_bytes]) as one flat view."""
    assert w.dtype == np.uint8, w.dtype
    return w.reshape(w.size)


def launch_prefetch(buffers, stream, blocks: int = BLOCKS) -> None:
    """Queue ``l2_prefetch`` launches on ``stream`` for the flat uint8 device arrays ``buffers`` (SLOTS per launch;
    an empty slot is the first buffer with 0 bytes)."""
    for i in range(0, len(buffers), SLOTS):
        group = list(buffers[i:i + SLOTS])
        args = []
        for s in range(SLOTS):
            buf = group[s] if s < len(group) else group[0]
            args += [buf, buf.shape[0] if s < len(group) else 0]
        l2_prefetch[blocks, ptx.WARP, stream](*args)
