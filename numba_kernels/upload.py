"""Chunked host-to-device upload through one pinned staging buffer.

A GGUF file is memory-mapped: its tensors are pageable host memory that the OS reads
from disk on first touch. ``cuda.to_device`` on such memory makes the driver copy through
its own small staging buffers, and a 500 MiB model would show no progress. Here the bytes
go through ONE pinned (page-locked) buffer that we own:

1. copy the next chunk of the host array into a half of the pinned buffer (this is where
   the page faults / disk reads happen),
2. start an asynchronous DMA of that half to its place in the device array,
3. move to the other half; before refilling a half, wait for its previous DMA.

With two halves the disk read of chunk ``k + 1`` overlaps the DMA of chunk ``k``
(double buffering). A tqdm bar counts the bytes.

Left out: concurrent uploads from several threads; device-to-host transfers.
Reference: the CUDA C Programming Guide, "Page-Locked Host Memory" and "Asynchronous
Concurrent Execution".
"""
from __future__ import annotations

import numpy as np
from numba import cuda

DEFAULT_CHUNK_BYTES = 64 << 20   # 64 MiB: two 32 MiB halves


class Uploader:
    """Upload many arrays through one pinned buffer of ``chunk_bytes`` (two halves).

    >>> with Uploader(total_bytes, progress=True) as up:
    ...     d_w = up.upload(w)            # DeviceNDArray, same shape and dtype as w
    """

    def __init__(self, total_bytes: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = True,
                 desc: str = "upload"):
        if chunk_bytes < 2:
            raise ValueError(f"Uploader: chunk_bytes must be at least 2, got {chunk_bytes}")
        self.half = chunk_bytes // 2
        self.staging = cuda.pinned_array(2 * self.half, dtype=np.uint8)   # the one pinned buffer
        self.stream = cuda.stream()
        self.done = [cuda.event(), cuda.event()]                         # "half h is free again"
        self.used = [False, False]
        self.next_half = 0
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)

    def upload(self, array, out=None):
        """Copy a host array to the device; returns ``out`` or a new DeviceNDArray."""
        if self.staging is None:
            raise ValueError("Uploader: upload() after close()")
        host = np.asarray(array, order="C")                             # (keeps 0-d arrays 0-d)
        dev = cuda.device_array(host.shape, host.dtype) if out is None else out
        if dev.shape != host.shape or dev.dtype != host.dtype:
            raise ValueError(f"Uploader: out is {dev.shape} {dev.dtype}, array is {host.shape} {host.dtype}")
        src = host.reshape(host.size).view(np.uint8)                     # bytes of the host array
        dst = dev.reshape(dev.size).view(np.uint8)                       # bytes of the device array
        for start in range(0, src.size, self.half):
            self._copy_chunk(src, dst, start, min(start + self.half, src.size))
        self.stream.synchronize()                                        # dev is complete on return
        return dev

    def _copy_chunk(self, src, dst, start, stop):
        h = self.next_half
        self.next_half ^= 1
        if self.used[h]:
            self.done[h].synchronize()                                   # its last DMA has finished
        buf = self.staging[h * self.half: h * self.half + (stop - start)]
        buf[:] = src[start:stop]                                         # host -> pinned (page faults here)
        dst[start:stop].copy_to_device(buf, stream=self.stream)          # pinned -> device, async
        self.done[h].record(self.stream)
        self.used[h] = True
        if self.bar is not None:
            self.bar.update(stop - start)

    def close(self):
        """Wait for pending copies and free the pinned buffer."""
        if self.staging is not None:
            self.stream.synchronize()
            self.staging = None                                          # numba frees pinned memory on GC
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_device_chunked(array, chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = False):
    """Upload one array through a temporary pinned buffer of ``chunk_bytes``."""
    host = np.asarray(array)
    with Uploader(host.nbytes, chunk_bytes=min(chunk_bytes, max(2, 2 * host.nbytes)), progress=progress) as up:
        return up.upload(host)


if __name__ == "__main__":
    import time

    n = 512 << 20
    host = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
    for chunk in (8 << 20, 64 << 20, 256 << 20):
        with Uploader(n, chunk_bytes=chunk, progress=False) as up:
            up.upload(host[: 1 << 20])                                  # warm-up
            t0 = time.perf_counter()
            dev = up.upload(host)
            dt = time.perf_counter() - t0
        ok = np.array_equal(dev.copy_to_host(), host)
        print(f"chunk {chunk >> 20:4d} MiB: {n / dt / 1e9:6.2f} GB/s  round trip {'ok' if ok else 'MISMATCH'}")
    t0 = time.perf_counter()
    cuda.to_device(host)
    print(f"cuda.to_device (pageable): {n / (time.perf_counter() - t0) / 1e9:6.2f} GB/s")
