r"""Dequantization kernels: packed GGUF blocks -> float32, one thread per output weight.

The math and the byte layouts are those of ``ref/quants.py`` (read that first). This
file holds

* **device decoders** ``<type>_get(raw, off, j) -> float32``: weight ``j`` of the ggml
  block that starts at byte ``off`` of the flat uint8 array ``raw``. They are
  ``@cuda.jit(device=True)`` functions that the embedding and the quantized
  matrix-vector kernels import, so every kernel decodes a block the same way.
* one **dequantize kernel** per type, made from its decoder by ``_make_kernel``.

Bit-exactness. The reference rounds every product to float32 before adding (as gguf-py
does). CUDA compilers contract ``a * b + c`` into one fused multiply-add (NVVM's default,
``fastmath=False`` included), which rounds once and can differ by an ulp. So every float
product in a decoder goes through ``mul_rn`` = libdevice ``__nv_fmul_rn`` (PTX
``mul.rn.f32``), which the compiler never fuses. float16 scales are widened with exact
integer arithmetic (``f16_at``), so the kernels match ``ref.quants`` bit for bit.

Kernel versions
  v1  one thread per output weight; a thread block of 256 threads covers
      ``ELEMS_PER_BLOCK`` = 1024 consecutive weights (4 K-quant super-blocks, 32 legacy
      blocks), each thread decoding its weight's scales itself. Writes are coalesced;
      block headers are read many times but hit L1.

Left out: BF16 and Q8_K kernels (reference only); the i-quants.
"""
from __future__ import annotations

import math

import numpy as np
from numba import config, cuda, float32, int32
from numba_kernels.runtime import JIT_CACHE

from ref.ggml import BLOCK_SIZES, GGMLType

# --- exact float helpers --------------------------------------------------------------------

if config.ENABLE_CUDASIM:
    # The simulator runs device functions as Python on numpy float32 scalars: a plain
    # product is rounded once and nothing is ever fused. (libdevice has no simulator.)
    @cuda.jit(device=True)
    def mul_rn(a, b):
        return float32(a) * float32(b)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def mul_rn(a, b):
        """float32 a * b rounded to nearest, never contracted into an fma."""
        return libdevice.fmul_rn(float32(a), float32(b))


@cuda.jit(device=True, inline=True)
def f16_at(raw, off):
    """The little-endian IEEE float16 at byte ``off``, widened exactly to float32."""
    bits = int32(raw[off]) | (int32(raw[off + 1]) << 8)
    e = (bits >> 10) & 0x1F
    m = bits & 0x3FF
    if e == 0:                                   # zero or subnormal: m * 2^-24
        mag = float32(m) * float32(2.0 ** -24)
    elif e == 31:                                # inf / nan
        mag = float32(math.inf) if m == 0 else float32(math.nan)
    else:                                        # (1024 + m) * 2^(e - 25), all exact
        mag = float32(m | 0x400) * (float32(1 << e) * float32(2.0 ** -25))
    return -mag if bits & 0x8000 else mag


@cuda.jit(device=True, inline=True)
def i8_at(raw, off):
    """The byte at ``off`` as a signed int8."""
    v = int32(raw[off])
    return v - 256 if v >= 128 else v


@cuda.jit(device=True, inline=True)
def k_scale_min(raw, off, s):
    """6-bit (scale, min) of sub-block ``s`` from the 12 packed bytes at ``off`` (Q4_K, Q5_K)."""
    if s < 4:
        sc = int32(raw[off + s]) & 0x3F
        m = int32(raw[off + s + 4]) & 0x3F
    else:
        sc = (int32(raw[off + s + 4]) & 0x0F) | ((int32(raw[off + s - 4]) >> 6) << 4)
        m = (int32(raw[off + s + 4]) >> 4) | ((int32(raw[off + s]) >> 6) << 4)
    return sc, m


# --- device decoders: weight j of the block at byte off -----------------------------------

@cuda.jit(device=True, inline=True)
def f16_get(raw, off, j):
    return f16_at(raw, off)


@cuda.jit(device=True, inline=True)
def _nibble(raw, qs, j):
    """Legacy 32-weight blocks: weight j < 16 is the low nibble of qs[j], j >= 16 the high one of qs[j-16]."""
    return (int32(raw[qs + (j & 15)]) >> ((j >> 4) << 2)) & 0x0F


@cuda.jit(device=True, inline=True)
def q4_0_get(raw, off, j):
    return mul_rn(f16_at(raw, off), float32(_nibble(raw, off + 2, j) - 8))


@cuda.jit(device=True, inline=True)
def q4_1_get(raw, off, j):
    return mul_rn(f16_at(raw, off), float32(_nibble(raw, off + 4, j))) + f16_at(raw, off + 2)


@cuda.jit(device=True, inline=True)
def _bit(raw, at, j):
    """Bit j of the little-endian bit string starting at byte ``at``."""
    return (int32(raw[at + (j >> 3)]) >> (j & 7)) & 1


@cuda.jit(device=True, inline=True)
def q5_0_get(raw, off, j):
    q = _nibble(raw, off + 6, j) | (_bit(raw, off + 2, j) << 4)
    return mul_rn(f16_at(raw, off), float32(q - 16))


@cuda.jit(device=True, inline=True)
def q5_1_get(raw, off, j):
    q = _nibble(raw, off + 8, j) | (_bit(raw, off + 4, j) << 4)
    return mul_rn(f16_at(raw, off), float32(q)) + f16_at(raw, off + 2)


@cuda.jit(device=True, inline=True)
def q8_0_get(raw, off, j):
    return mul_rn(float32(i8_at(raw, off + 2 + j)), f16_at(raw, off))


@cuda.jit(device=True, inline=True)
def _crumb(raw, qs, j):
    """2-bit field of weight j = 128h + 32i + l: bits 2i.. of qs[32h + l] (Q2_K, Q3_K)."""
    return (int32(raw[qs + ((j >> 7) << 5) + (j & 31)]) >> (((j >> 5) & 3) << 1)) & 3


@cuda.jit(device=True, inline=True)
def q2_k_get(raw, off, j):
    sc = int32(raw[off + (j >> 4)])
    dl = mul_rn(f16_at(raw, off + 80), float32(sc & 0x0F))
    ml = mul_rn(f16_at(raw, off + 82), float32(sc >> 4))
    return mul_rn(dl, float32(_crumb(raw, off + 16, j))) - ml


@cuda.jit(device=True, inline=True)
def q3_k_get(raw, off, j):
    s = j >> 4                                                    # sub-block of 16
    low = (int32(raw[off + 96 + (s & 7)]) >> ((s >> 3) << 2)) & 0x0F
    high = (int32(raw[off + 104 + (s & 3)]) >> ((s >> 2) << 1)) & 3
    dl = mul_rn(f16_at(raw, off + 108), float32((low | (high << 4)) - 32))
    hbit = (int32(raw[off + (j & 31)]) >> (j >> 5)) & 1
    q = _crumb(raw, off + 32, j) - ((hbit ^ 1) << 2)
    return mul_rn(dl, float32(q))


# --8<-- [start:k_get]
@cuda.jit(device=True, inline=True)
def _k_get(raw, off, j, q):
    """Q4_K/Q5_K: (d * sc) * q - dmin * m for weight j whose quant is q."""
    sc, m = k_scale_min(raw, off + 4, j >> 5)
    ds = mul_rn(f16_at(raw, off), float32(sc))
    dm = mul_rn(f16_at(raw, off + 2), float32(m))
    return mul_rn(ds, float32(q)) - dm
# --8<-- [end:k_get]


@cuda.jit(device=True, inline=True)
def _k_nibble(raw, qs, j):
    """Weight j = 64c + 32h + l of a K-quant: nibble h of qs[32c + l]."""
    return (int32(raw[qs + ((j >> 6) << 5) + (j & 31)]) >> (((j >> 5) & 1) << 2)) & 0x0F


# --8<-- [start:q4_k_get]
@cuda.jit(device=True, inline=True)
def q4_k_get(raw, off, j):
    return _k_get(raw, off, j, _k_nibble(raw, off + 16, j))
# --8<-- [end:q4_k_get]


@cuda.jit(device=True, inline=True)
def q5_k_get(raw, off, j):
    hbit = (int32(raw[off + 16 + (j & 31)]) >> (j >> 5)) & 1
    return _k_get(raw, off, j, _k_nibble(raw, off + 48, j) | (hbit << 4))


@cuda.jit(device=True, inline=True)
def q6_k_get(raw, off, j):
    h, r = j >> 7, j & 127                                        # half, index inside it
    low = (int32(raw[off + (h << 6) + (r & 63)]) >> ((r >> 6) << 2)) & 0x0F
    high = (int32(raw[off + 128 + (h << 5) + (r & 31)]) >> ((r >> 5) << 1)) & 3
    ds = mul_rn(f16_at(raw, off + 208), float32(i8_at(raw, off + 192 + (j >> 4))))
    return mul_rn(ds, float32((low | (high << 4)) - 32))


@cuda.jit(device=True, inline=True)
def f32_get(raw, off, j):
    """F32 tables are passed as a float32 view: ``off`` counts float32 elements."""
    return raw[off]


DECODERS = {
    GGMLType.F32: f32_get, GGMLType.F16: f16_get,
    GGMLType.Q4_0: q4_0_get, GGMLType.Q4_1: q4_1_get, GGMLType.Q5_0: q5_0_get,
    GGMLType.Q5_1: q5_1_get, GGMLType.Q8_0: q8_0_get, GGMLType.Q2_K: q2_k_get,
    GGMLType.Q3_K: q3_k_get, GGMLType.Q4_K: q4_k_get, GGMLType.Q5_K: q5_k_get,
    GGMLType.Q6_K: q6_k_get,
}


def as_blocks(raw, ggml_type):
    """The flat array a decoder reads, and the size of one block in its elements.

    Quantized and F16 data stay uint8 bytes; F32 data is viewed as float32 so that the
    decoder reads floats without a bit cast.
    """
    qk, block_bytes = BLOCK_SIZES[ggml_type]
    flat = raw.reshape(raw.size)
    if ggml_type == GGMLType.F32:
        return flat.view(np.float32), 1
    return flat, block_bytes


# --- kernels ------------------------------------------------------------------------------

THREADS = 256            # threads per thread block
ELEMS_PER_BLOCK = 1024   # output weights per thread block: 4 per thread


def _make_kernel(get, qk):
    """v1: thread t of thread block b writes weights b*1024 + t, + 256, + 512, + 768."""
    @cuda.jit(fastmath=False, cache=JIT_CACHE)
    def dequant_kernel(raw, block_stride, n, out):
        first = cuda.blockIdx.x * ELEMS_PER_BLOCK
        last = min(first + ELEMS_PER_BLOCK, n)
        for e in range(first + cuda.threadIdx.x, last, THREADS):
            b = e // qk                                           # ggml block of weight e
            out[e] = get(raw, b * block_stride, e - b * qk)
    return dequant_kernel


KERNELS = {t: _make_kernel(get, BLOCK_SIZES[t][0]) for t, get in DECODERS.items()}


def launch_dequant(ggml_type, flat_raw, block_stride, out_flat, stream=0):
    """Grid: ceil(n / 1024) thread blocks of 256 threads; n = number of output weights."""
    n = out_flat.size
    if n == 0:
        return
    grid = (n + ELEMS_PER_BLOCK - 1) // ELEMS_PER_BLOCK
    KERNELS[ggml_type][grid, THREADS, stream](flat_raw, block_stride, n, out_flat)


# --- public -------------------------------------------------------------------------------

def _check(raw, ggml_type, shape):
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in KERNELS:
        raise ValueError(f"dequantize: no kernel for ggml type {ggml_type.name} "
                         f"(kernels: {', '.join(t.name for t in KERNELS)})")
    qk, block_bytes = BLOCK_SIZES[ggml_type]
    shape = tuple(int(s) for s in shape)
    if not shape or shape[-1] % qk:
        raise ValueError(f"dequantize: {ggml_type.name} rows must be whole {qk}-element blocks, got {shape}")
    if raw.dtype != np.uint8 or raw.size != math.prod(shape) // qk * block_bytes:
        raise ValueError(f"dequantize: {ggml_type.name} {shape} needs {math.prod(shape) // qk * block_bytes} "
                         f"uint8 bytes, got {raw.size} of {raw.dtype}")
    return ggml_type, shape


def dequantize(raw, ggml_type, shape, out=None, stream=0):
    """Dequantize a tensor's bytes ``raw`` (NumPy or device uint8) to float32 of ``shape``.

    NumPy in -> NumPy out. With a device ``raw`` the result is a device array; with
    ``out`` (a device float32 array of ``shape``) nothing is allocated and nothing is
    synchronized.
    """
    ggml_type, shape = _check(raw, ggml_type, shape)
    on_host = isinstance(raw, np.ndarray)
    d_raw = cuda.to_device(np.ascontiguousarray(raw), stream=stream) if on_host else raw
    d_out = cuda.device_array(shape, np.float32, stream=stream) if out is None else out
    flat, stride = as_blocks(d_raw, ggml_type)
    launch_dequant(ggml_type, flat, stride, d_out.reshape(d_out.size), stream)
    return d_out.copy_to_host(stream=stream) if on_host and out is None else d_out


# --- __main__: check against the reference and time -----------------------------------------

def _main():
    import time

    import warnings

    from ref import quants as ref_quants

    warnings.filterwarnings("ignore", message="Grid size")             # tiny check grids

    rng = np.random.default_rng(0)
    print("check against ref.quants (bit-exact):")
    for t in KERNELS:
        qk, _ = BLOCK_SIZES[t]
        C = {1: 65, 32: 96, 256: 256}[qk]                             # row length
        shape = (3, C)
        raw = ref_quants.random_blocks(t, 3 * C // qk, rng)           # (n_blocks, block_bytes)
        expected = ref_quants.dequantize(raw, t, shape)
        got = dequantize(raw, t, shape)
        same = np.array_equal(got.view(np.uint32), expected.view(np.uint32))
        print(f"  {t.name:5s} {'ok' if same else 'MISMATCH'}")

    rows, C = 151936 * 896 // 1024, 1024          # as many weights as the 151936x896 embedding table
    print(f"timing on a {rows}x{C} tensor (GB/s counts bytes read + written):")
    for t in KERNELS:
        qk, block_bytes = BLOCK_SIZES[t]
        raw = ref_quants.random_blocks(t, rows * C // qk, rng)
        d_raw = cuda.to_device(raw)
        d_out = cuda.device_array((rows, C), np.float32)
        dequantize(d_raw, t, (rows, C), out=d_out)                      # warm-up / compile
        cuda.synchronize()
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            dequantize(d_raw, t, (rows, C), out=d_out)
        cuda.synchronize()
        dt = (time.perf_counter() - t0) / reps
        nbytes = raw.nbytes + d_out.size * 4
        print(f"  {t.name:5s} {dt * 1e3:8.3f} ms  {nbytes / dt / 1e9:8.1f} GB/s")


if __name__ == "__main__":
    _main()
