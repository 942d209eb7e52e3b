r"""Token embedding kernel: gather rows of a quantized table by token id into float32.

$$ x_t = E[\text{id}_t, :], \qquad \text{out} \in \mathbb{R}^{T \times C} $$

Same math as ``ref/embedding.py``. The table stays quantized on the device; each
thread decodes one weight with the device decoders of ``numba_kernels/dequant.py``, so
the gathered rows are bit-identical to ``ref.embedding.embed``. The ids are read from a
device int32 array, so a captured decode step can change the token without relaunching.

Kernel versions
  v1  one thread block per token (grid = T), 256 threads striding over the C weights of
      its row. Bytes: T * (row_bytes + 4 C). Negligible next to a matmul; it is here to
      avoid dequantizing the whole table.

Left out: out-of-range ids are not checked on the device (the public function checks
NumPy ids; device ids are trusted).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from numba_kernels import ptx
from numba_kernels.dequant import DECODERS, as_blocks
from numba_kernels.runtime import JIT_CACHE
from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes

THREADS = 256


def _make_kernel(get, qk):
    @cuda.jit(fastmath=False, cache=JIT_CACHE)
    def embed_kernel(table, row_stride, block_stride, ids, out):
        ptx.allow_next_grid()                                    # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                                 # nothing another kernel writes is read before
        t = cuda.blockIdx.x                                      # one thread block per token
        table_row = ids[t] * row_stride                          # where its encoded row starts
        for c in range(cuda.threadIdx.x, out.shape[1], THREADS):
            b = c // qk                                          # ggml block of weight c
            out[t, c] = get(table, table_row + b * block_stride, c - b * qk)
    return embed_kernel


KERNELS = {t: _make_kernel(get, BLOCK_SIZES[t][0]) for t, get in DECODERS.items()}


def launch_embed(ggml_type, flat_table, row_stride, block_stride, d_ids, out, stream=0):
    """Grid: T thread blocks (one per token) of 256 threads, each looping over C / 256 weights."""
    T = out.shape[0]
    if T == 0:
        return
    KERNELS[ggml_type][T, THREADS, stream](flat_table, row_stride, block_stride, d_ids, out)


def embed(table_raw, ggml_type, C, ids, out=None, stream=0):
    """table_raw: (V, row_bytes) uint8 (NumPy or device); ids: [T] int32 (NumPy or device).

    Returns [T, C] float32: NumPy when ``table_raw`` is NumPy, else a device array (or ``out``,
    then with no allocation and no synchronization).
    """
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in KERNELS:
        raise ValueError(f"embed: no kernel for ggml type {ggml_type.name}")
    V, nbytes = table_raw.shape
    if nbytes != row_bytes(ggml_type, C):
        raise ValueError(f"embed: a {ggml_type.name} row of {C} weights takes {row_bytes(ggml_type, C)} "
                         f"bytes, the table has {nbytes}")
    if isinstance(ids, np.ndarray) or not hasattr(ids, "copy_to_host"):
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"embed: token ids must be in [0, {V}), got min {ids.min()} max {ids.max()}")
        ids = cuda.to_device(ids, stream=stream)
    on_host = isinstance(table_raw, np.ndarray)
    d_table = cuda.to_device(np.ascontiguousarray(table_raw), stream=stream) if on_host else table_raw
    d_out = cuda.device_array((ids.shape[0], C), np.float32, stream=stream) if out is None else out
    flat, block_stride = as_blocks(d_table, ggml_type)
    row_stride = flat.size // V if V else 0                      # one row, in the flat array's elements
    launch_embed(ggml_type, flat, row_stride, block_stride, ids, d_out, stream)
    return d_out.copy_to_host(stream=stream) if on_host and out is None else d_out


if __name__ == "__main__":
    import time
    import warnings

    from ref import quants as ref_quants
    from ref.embedding import embed as ref_embed

    warnings.filterwarnings("ignore", message="Grid size")             # T=1 is a tiny grid
    rng = np.random.default_rng(0)
    V, C = 151936, 896
    for t in (GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F16, GGMLType.F32):
        qk = BLOCK_SIZES[t][0]
        table = ref_quants.random_blocks(t, V * C // qk, rng).reshape(V, -1)
        ids = rng.integers(0, V, 64).astype(np.int32)
        same = np.array_equal(embed(table, t, C, ids), ref_embed(table, t, C, ids))
        d_table, d_ids = cuda.to_device(table), cuda.to_device(ids[:1])
        d_out = cuda.device_array((1, C), np.float32)
        embed(d_table, t, C, d_ids, out=d_out)
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            embed(d_table, t, C, d_ids, out=d_out)
        cuda.synchronize()
        print(f"{t.name:5s} bit-exact vs ref: {same}   T=1: {(time.perf_counter() - t0) / 100 * 1e6:6.1f} us/call")
