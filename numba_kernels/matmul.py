r"""Matrix products over quantized weights: Numba CUDA kernels.

Computes the same function as ``ref/matmul.py`` (read its docstring for the math):
$y_{t,n} = \sum_k x_{t,k} W_{n,k} + b_n$ where row ``n`` of ``W`` is stored as raw GGUF
quantization blocks, uint8 ``[N, row_bytes]`` on the device, and is dequantized *in
registers* inside the product - the float32 matrix is never written to memory.

Decoding unit. Every kernel asks one per-type device function, ``decode8``, for 8
consecutive weights ``W[n, k:k+8]`` (``k`` a multiple of 8). Eight consecutive weights
always share their scale(s) and sit in 8 consecutive bytes (or nibbles of 8 consecutive
bytes) at an even byte offset, for every supported type, so ``decode8`` reads four 16-bit
words of quants plus the block's float16 scale(s). The kernels see the weight through two
*views* of the same bytes (``_views``): uint16 words for the quants and float16 for the
scales (the block sizes 18, 22, 34, 144, 176, 210 are even, so every scale is 2-aligned;
a 4-byte view would not fit Q8_0/Q6_K rows with an odd number of blocks).

Kernel versions (llm.c dev/cuda style; ``__main__`` checks each against ``ref``)
- v1 ``matvec_v1``: decode (one token). One warp per output row, 4 rows per block of 128
  threads. Lane ``l`` decodes weights ``k = 256 s + 8 l .. +8`` for steps ``s`` (a warp
  step reads 256 consecutive weights, i.e. one contiguous stretch of the row), multiplies
  them with ``x`` read straight from global memory (it stays in L1/L2: every block reads
  it), and the 32 partial sums meet in a warp-shuffle tree. Simple; the ``x`` loads are
  strided (8 floats per lane), costing L1 bandwidth.
- v2 ``matvec_v2``: x copied once per block into shared memory, padded with one float
  every 32 (index ``p + p // 32``) so that the 32 lanes reading ``x[256 s + 8 l + i]``
  hit 32 different banks; and each warp computes ``R_ROWS = 4`` rows at once (rows past
  ``N`` re-read row ``N - 1`` and are not stored), so every lane has 4x the independent
  loads in flight and each read of x serves 4 rows. v1 measured 0.67 TB/s (15 %) at
  151936 x 896 Q8_0: far too few bytes in flight per SM (~9 KB, ~30 KB needed at 4.3
  TB/s and ~0.8 us latency), which is what v2 addresses. ``matvec`` uses v2 when ``K``
  fits in shared memory (``K <= 11 912``, the 48 KiB default of dynamic shared memory) and
  ``N >= 4096``; below that v1 measured faster (v2 has 4x fewer warps).
- v3 ``matmul_tiled``: prefill (``T`` tokens). One block of 256 threads per tile of
  ``TT = 64`` tokens x ``TN = 64`` rows. Per step of ``KC = 32`` weights, every thread
  decodes 8 weights of the W tile into shared memory (once per tile, reused by the 64
  tokens) and copies 8 values of the x tile; then each thread accumulates a 4 x 4
  micro-tile of outputs in registers (float32 FMA). Rows of the W tile are padded to 33
  floats so the 16 threads of a row of the block read 16 different banks.

Expected speed on an H200 (memory-bound decode: time = weight bytes / bandwidth; 4.3
TB/s device-to-device copy). Target >= 70 % (3 TB/s) at 151936x896 Q8_0 and the FFN
shapes. v1 reaches ~15 % (measured); v2 should be bound by the weight loads and the
int->float conversions (one ``I2F`` per weight, a quarter-rate instruction: a ceiling near
2.5 TB/s for 4-bit types, 4.5 TB/s for Q8_0). Small-N shapes (896 x 4864) have only N/4
warps of work, too few loads in flight; a split-K version would help.
Measured (H200, first run, docs/matmul.md): v2 1.12 TB/s (26 %) at 151936x896 Q8_0,
0.46 TB/s (11 %) at 16384x3072 Q4_K; v1 0.23-0.35 TB/s on the 896-row FFN shapes; v3
12-14 TFLOP/s at T=512. So both matvec kernels are well short of the target: next, fewer
instructions per weight (64-bit index arithmetic and per-8-weight scale decoding show up in
the PTX: ~300 u64 ops in v2's Q8_0 kernel), wider loads, split-K for small N.

Left out (later optimizations, noted here so nobody repeats the analysis):
- int->float via the exponent trick (``int_as_float(0x4B000000 | q) - 2^23``: one
  integer op + one FADD at full rate instead of ``I2F``); needs a bit cast, which the
  CUDA simulator cannot run (``libdevice`` is a stub there).
- quantizing x to int8 and ``dp4a`` dot products (llama.cpp ``mul_mat_vec_q``): fewer
  bytes of x, 4 MACs per instruction, but no longer the reference's float32 numerics.
- several rows per warp sharing the registers of x; split-K for small N.
- a half-precision / tensor-core (``mma``) prefill path: v3 is plain float32 FMA.

References: llama.cpp ``ggml-cuda/mmvq.cu``, ``dmmv.cu`` (per-type fused decode in
matrix-vector products), ``ggml-cuda/vecdotq.cuh``; llm.c ``dev/cuda/matmul_forward.cu``
(tiling, kernel-versions layout); NVIDIA, *CUDA C++ Best Practices Guide*, "Shared
memory bank conflicts".
"""
from __future__ import annotations

import functools

import numpy as np
from numba import config, cuda, float32, int32

from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes

from numba_kernels.runtime import is_device as _is_device, to_device as _device

WARP = 32
MV_WARPS = 4              # warps (= rows in flight) per block of the matvec kernels
MV_THREADS = MV_WARPS * WARP
R_ROWS = 4                # rows per warp in matvec_v2
V2_MIN_ROWS = 4096        # matvec uses v2 from this many rows up (measured: v1 is faster below)
R_WEIGHTS = 8 * R_ROWS    # decoded weights a lane of matvec_v2 holds per step
STEP = 8 * WARP           # weights a warp decodes per step (8 per lane)
SMEM_LIMIT = 48 * 1024    # shared memory a block may use without opting in
MAX_K_SHARED = (SMEM_LIMIT // 4) * 32 // 33 // 8 * 8   # largest K whose padded x fits (11 912)
TT, TN, KC = 64, 64, 32   # matmul tile: tokens x rows x weights per step
KC_PAD = KC + 1           # padded row of the decoded W tile (bank-conflict free)
MM_THREADS = 256          # 16 x 16 threads, each a 4 x 4 micro-tile


# ---------------------------------------------------------------------------------------------
# decode8: 8 consecutive weights W[row, k:k+8] -> dst[d0:d0+8], per type.
# q16 is the row as uint16 words, h16 the same bytes as float16 (for the scales).
# ---------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _byte(q16, row, at):
    """Byte ``at`` of the row (little-endian words)."""
    return (int32(q16[row, at >> 1]) >> ((at & 1) * 8)) & 0xFF


@cuda.jit(device=True)
def _decode8_q8_0(q16, h16, row, k, dst, d0):
    # block of 34 bytes: d f16 @0, 32 int8 @2;  x_j = d * q_j
    base = (k >> 5) * 34
    d = float32(h16[row, base >> 1])
    word0 = (base + 2 + (k & 31)) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        lo = w & 0xFF
        hi = w >> 8
        dst[d0 + 2 * i] = d * float32(lo - ((lo & 0x80) << 1))       # sign-extend int8
        dst[d0 + 2 * i + 1] = d * float32(hi - ((hi & 0x80) << 1))


@cuda.jit(device=True)
def _decode8_q4_0(q16, h16, row, k, dst, d0):
    # block of 18 bytes: d f16 @0, qs @2; weight j<16 = low nibble of qs[j], j+16 = high
    base = (k >> 5) * 18
    j = k & 31
    d = float32(h16[row, base >> 1])
    shift = (j >> 4) * 4
    word0 = (base + 2 + (j & 15)) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        dst[d0 + 2 * i] = d * float32(((w >> shift) & 0xF) - 8)
        dst[d0 + 2 * i + 1] = d * float32(((w >> (8 + shift)) & 0xF) - 8)


@cuda.jit(device=True)
def _decode8_q5_0(q16, h16, row, k, dst, d0):
    # block of 22 bytes: d f16 @0, qh u32 @2 (bit j = 5th bit of weight j), qs @6
    base = (k >> 5) * 22
    j = k & 31
    d = float32(h16[row, base >> 1])
    high = _byte(q16, row, base + 2 + (j >> 3))       # 5th bits of weights j .. j+7
    shift = (j >> 4) * 4
    word0 = (base + 6 + (j & 15)) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        q0 = ((w >> shift) & 0xF) | (((high >> (2 * i)) & 1) << 4)
        q1 = ((w >> (8 + shift)) & 0xF) | (((high >> (2 * i + 1)) & 1) << 4)
        dst[d0 + 2 * i] = d * float32(q0 - 16)
        dst[d0 + 2 * i + 1] = d * float32(q1 - 16)


@cuda.jit(device=True)
def _k_scale_min(q16, row, base, s):
    """Q4_K/Q5_K: 6-bit (scale, min) of sub-block s from the 12 bytes at base+4."""
    if s < 4:
        sc = _byte(q16, row, base + 4 + s) & 63
        m = _byte(q16, row, base + 8 + s) & 63
    else:
        lo = _byte(q16, row, base + 8 + s)               # byte 8 + (s - 4) of scales
        sc = (lo & 0xF) | ((_byte(q16, row, base + s) >> 6) << 4)
        m = (lo >> 4) | ((_byte(q16, row, base + 4 + s) >> 6) << 4)
    return sc, m


@cuda.jit(device=True)
def _decode8_q4_k(q16, h16, row, k, dst, d0):
    # 144 bytes: d @0, dmin @2, scales @4, qs @16; j = 64c + 32h + l -> nibble h of qs[32c + l]
    base = (k >> 8) * 144
    j = k & 255
    s = j >> 5                                        # sub-block of 32 = 2c + h
    sc, m = _k_scale_min(q16, row, base, s)
    ds = float32(h16[row, base >> 1]) * float32(sc)
    dm = float32(h16[row, (base >> 1) + 1]) * float32(m)
    shift = (s & 1) * 4
    word0 = (base + 16 + (j >> 6) * 32 + (j & 31)) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        dst[d0 + 2 * i] = ds * float32((w >> shift) & 0xF) - dm
        dst[d0 + 2 * i + 1] = ds * float32((w >> (8 + shift)) & 0xF) - dm


@cuda.jit(device=True)
def _decode8_q5_k(q16, h16, row, k, dst, d0):
    # 176 bytes: d @0, dmin @2, scales @4, qh @16, qs @48; 5th bit of j = bit j//32 of qh[j%32]
    base = (k >> 8) * 176
    j = k & 255
    s = j >> 5
    sc, m = _k_scale_min(q16, row, base, s)
    ds = float32(h16[row, base >> 1]) * float32(sc)
    dm = float32(h16[row, (base >> 1) + 1]) * float32(m)
    shift = (s & 1) * 4
    word0 = (base + 48 + (j >> 6) * 32 + (j & 31)) >> 1
    hword0 = (base + 16 + (j & 31)) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        h = int32(q16[row, hword0 + i]) >> s               # bit s of both bytes
        q0 = ((w >> shift) & 0xF) | ((h & 1) << 4)
        q1 = ((w >> (8 + shift)) & 0xF) | (((h >> 8) & 1) << 4)
        dst[d0 + 2 * i] = ds * float32(q0) - dm
        dst[d0 + 2 * i + 1] = ds * float32(q1) - dm


@cuda.jit(device=True)
def _decode8_q6_k(q16, h16, row, k, dst, d0):
    # 210 bytes: ql @0, qh @128, int8 scales @192, d @208; j = 128n + 32i + l
    base = (k >> 8) * 210
    j = k & 255
    n = j >> 7
    quarter = (j >> 5) & 3
    l0 = j & 31
    sc = _byte(q16, row, base + 192 + 8 * n + (l0 >> 4) + 2 * quarter)
    ds = float32(h16[row, (base + 208) >> 1]) * float32(sc - ((sc & 0x80) << 1))
    shift = (quarter >> 1) * 4                          # quarters 2, 3: high nibbles
    word0 = (base + 64 * n + 32 * (quarter & 1) + l0) >> 1
    hword0 = (base + 128 + 32 * n + l0) >> 1
    for i in range(4):
        w = int32(q16[row, word0 + i])
        h = int32(q16[row, hword0 + i]) >> (2 * quarter)
        q0 = ((w >> shift) & 0xF) | ((h & 3) << 4)
        q1 = ((w >> (8 + shift)) & 0xF) | (((h >> 8) & 3) << 4)
        dst[d0 + 2 * i] = ds * float32(q0 - 32)
        dst[d0 + 2 * i + 1] = ds * float32(q1 - 32)


@cuda.jit(device=True)
def _decode8_float(wa, wb, row, k, dst, d0):
    # F16 / F32: the view already has the element type; widen to float32
    for i in range(8):
        dst[d0 + i] = float32(wa[row, k + i])


DECODERS = {
    GGMLType.Q4_0: _decode8_q4_0, GGMLType.Q5_0: _decode8_q5_0, GGMLType.Q8_0: _decode8_q8_0,
    GGMLType.Q4_K: _decode8_q4_k, GGMLType.Q5_K: _decode8_q5_k, GGMLType.Q6_K: _decode8_q6_k,
    GGMLType.F16: _decode8_float, GGMLType.F32: _decode8_float,
}
# dtype of the two views each decoder reads (quants, scales)
_VIEWS = {t: (np.uint16, np.float16) for t in DECODERS}
_VIEWS[GGMLType.F16] = (np.float16, np.float16)
_VIEWS[GGMLType.F32] = (np.float32, np.float32)


# ---------------------------------------------------------------------------------------------
# kernels (one compiled set per type, built lazily)
# ---------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _warp_sum(v):
    for offset in (16, 8, 4, 2, 1):
        v += cuda.shfl_down_sync(0xFFFFFFFF, v, offset)
    return v


@functools.lru_cache(maxsize=None)
def _kernels(ggml_type: GGMLType):
    """(matvec_v1, matvec_v2, matmul_tiled) for one type: decode8 is a compile-time constant."""
    decode8 = DECODERS[ggml_type]

    @cuda.jit
    def matvec_v1(x, wa, wb, bias, has_bias, K, out):
        # x [K], wa/wb views of W [N, ...], out [N]; one warp per row
        lane = cuda.threadIdx.x % WARP
        row = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.x // WARP
        if row >= out.shape[0]:
            return                                  # whole warp leaves together
        w = cuda.local.array(8, float32)
        acc = float32(0.0)
        for k0 in range(0, K, STEP):
            k = k0 + 8 * lane
            if k < K:
                decode8(wa, wb, row, k, w, 0)
                for i in range(8):
                    acc += w[i] * x[k + i]
        acc = _warp_sum(acc)
        if lane == 0:
            out[row] = acc + bias[row] if has_bias else acc

    @cuda.jit
    def matvec_v2(x, wa, wb, bias, has_bias, K, out):
        # x staged in padded shared memory; each warp R_ROWS rows at once, so every lane has
        # 4 * R_ROWS independent loads in flight and each x value read serves R_ROWS rows
        xs = cuda.shared.array(0, float32)          # dynamic: K + K // 32 floats
        for p in range(cuda.threadIdx.x, K, MV_THREADS):
            xs[p + (p >> 5)] = x[p]
        cuda.syncthreads()
        N = out.shape[0]
        lane = cuda.threadIdx.x % WARP
        row0 = (cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.x // WARP) * R_ROWS
        if row0 >= N:
            return
        w = cuda.local.array(R_WEIGHTS, float32)
        acc = cuda.local.array(R_ROWS, float32)
        for r in range(R_ROWS):
            acc[r] = 0.0
        for k0 in range(0, K, STEP):
            k = k0 + 8 * lane
            if k < K:
                for r in range(R_ROWS):             # rows past N re-read row N-1, never stored
                    decode8(wa, wb, min(row0 + r, N - 1), k, w, 8 * r)
                pad = k + (k >> 5)                  # (k + i) >> 5 == k >> 5 for i < 8
                for i in range(8):
                    xv = xs[pad + i]
                    for r in range(R_ROWS):
                        acc[r] += w[8 * r + i] * xv
        for r in range(R_ROWS):
            total = _warp_sum(acc[r])
            if lane == 0 and row0 + r < N:
                out[row0 + r] = total + bias[row0 + r] if has_bias else total

    @cuda.jit
    def matmul_tiled(x, wa, wb, bias, has_bias, K, out):
        # x [T, K], out [T, N]; block (bx, by) -> rows bx*TN.., tokens by*TT..
        Ws = cuda.shared.array((TN, KC_PAD), float32)   # decoded W tile, padded rows
        Xs = cuda.shared.array((TT, KC), float32)
        tid = cuda.threadIdx.x
        tx = tid % 16                                   # rows tx + 16 j
        ty = tid // 16                                  # tokens ty + 16 i
        n0 = cuda.blockIdx.x * TN
        t0 = cuda.blockIdx.y * TT
        N, T = out.shape[1], out.shape[0]
        acc = cuda.local.array((4, 4), float32)
        for i in range(4):
            for j in range(4):
                acc[i, j] = 0.0
        wtile = cuda.local.array(8, float32)
        r = tid // 4                                    # this thread decodes row r ...
        c = 8 * (tid % 4)                               # ... weights c .. c+8 of the step
        for k0 in range(0, K, KC):
            inside = k0 + c < K                         # F16/F32 rows may end mid-step
            if n0 + r < N and inside:
                decode8(wa, wb, n0 + r, k0 + c, wtile, 0)
            for i in range(8):
                Ws[r, c + i] = wtile[i] if n0 + r < N and inside else 0.0
                Xs[r, c + i] = x[t0 + r, k0 + c + i] if t0 + r < T and inside else 0.0
            cuda.syncthreads()
            for kk in range(KC):
                for i in range(4):
                    a = Xs[ty + 16 * i, kk]
                    for j in range(4):
                        acc[i, j] += a * Ws[tx + 16 * j, kk]
            cuda.syncthreads()
        for i in range(4):
            for j in range(4):
                t, n = t0 + ty + 16 * i, n0 + tx + 16 * j
                if t < T and n < N:
                    out[t, n] = acc[i, j] + bias[n] if has_bias else acc[i, j]

    return matvec_v1, matvec_v2, matmul_tiled


# ---------------------------------------------------------------------------------------------
# launch helpers: the grid arithmetic
# ---------------------------------------------------------------------------------------------
def _views(w_raw, ggml_type):
    """The two views of the raw bytes [N, row_bytes] that decode8 reads."""
    a, b = _VIEWS[ggml_type]
    return w_raw.view(a), w_raw.view(b)


def _bias(bias, out):
    """(bias array, has_bias): without a bias the kernel gets a 1-D stand-in it never reads."""
    return (bias, True) if bias is not None else (out.reshape(out.size), False)


def launch_matvec_v1(x, w_raw, ggml_type, K, bias, out, stream=0):
    N = w_raw.shape[0]
    grid = (N + MV_WARPS - 1) // MV_WARPS             # one warp per row, MV_WARPS rows a block
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    _kernels(ggml_type)[0][grid, MV_THREADS, stream](x, wa, wb, b, has, K, out)


def launch_matvec_v2(x, w_raw, ggml_type, K, bias, out, stream=0):
    N = w_raw.shape[0]
    rows_per_block = MV_WARPS * R_ROWS
    grid = (N + rows_per_block - 1) // rows_per_block   # R_ROWS rows per warp
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    smem = 4 * (K + K // 32)                          # padded copy of x
    _kernels(ggml_type)[1][grid, MV_THREADS, stream, smem](x, wa, wb, b, has, K, out)


def launch_matmul_tiled(x, w_raw, ggml_type, K, bias, out, stream=0):
    T, N = out.shape
    grid = ((N + TN - 1) // TN, (T + TT - 1) // TT)   # x: tiles of TN rows, y: tiles of TT tokens
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    _kernels(ggml_type)[2][grid, MM_THREADS, stream](x, wa, wb, b, has, K, out)


# ---------------------------------------------------------------------------------------------
# public functions: NumPy in -> NumPy out; device arrays in -> device arrays out
# ---------------------------------------------------------------------------------------------



def _check(w_raw, ggml_type, K) -> GGMLType:
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in DECODERS:
        raise ValueError(f"matmul kernels: ggml type {ggml_type.name} is not supported "
                         f"(supported: {', '.join(t.name for t in DECODERS)})")
    rb = row_bytes(ggml_type, K)
    if len(w_raw.shape) != 2 or w_raw.shape[1] != rb or np.dtype(w_raw.dtype) != np.uint8:
        raise ValueError(f"matmul kernels: {ggml_type.name} weight with K={K} must be uint8 "
                         f"[N, {rb}], got {w_raw.dtype} {tuple(w_raw.shape)}")
    if K % 8:
        raise ValueError(f"matmul kernels: K={K} must be a multiple of 8")
    return ggml_type


def matvec(x, w_raw, ggml_type, K, bias=None, out=None, stream=0):
    """y [N] = W x (+ bias) for x [K] (or [1, N] from [1, K]); the decode path.

    ``w_raw``: the raw GGUF bytes, uint8 [N, row_bytes], NumPy or device. With ``out`` (a device
    array [N] or [1, N]) nothing is allocated and nothing synchronized.
    """
    ggml_type = _check(w_raw, ggml_type, K)
    shape = tuple(x.shape)                          # (the simulator's shapes reject shape[-1])
    if shape not in ((K,), (1, K)):
        raise ValueError(f"matvec: x must be [K] or [1, K] with K={K}, got {shape}")
    host = not _is_device(x)
    N = w_raw.shape[0]
    x_d = _device(x, np.float32, stream).reshape(K)
    w_d = _device(w_raw, np.uint8, stream)
    b_d = _device(bias, np.float32, stream)
    out_d = out if out is not None else cuda.device_array((N,), np.float32, stream=stream)
    flat = out_d.reshape(N)
    # measured on the H200: v2 wins for large N, v1 for the 896/128-row matrices (see docs)
    launch = launch_matvec_v2 if K <= MAX_K_SHARED and N >= V2_MIN_ROWS else launch_matvec_v1
    launch(x_d, w_d, ggml_type, K, b_d, flat, stream)
    if out is not None:
        return out
    y = out_d.reshape(shape[:-1] + (N,))
    return y.copy_to_host(stream=stream) if host else y


def matmul(x, w_raw, ggml_type, K, bias=None, out=None, stream=0):
    """y [T, N] = x [T, K] W^T (+ bias); the prefill path (tiled, float32 accumulation)."""
    ggml_type = _check(w_raw, ggml_type, K)
    if len(x.shape) != 2 or x.shape[1] != K:
        raise ValueError(f"matmul: x must be [T, K] with K={K}, got {tuple(x.shape)}")
    host = not _is_device(x)
    T, N = x.shape[0], w_raw.shape[0]
    x_d = _device(x, np.float32, stream)
    w_d = _device(w_raw, np.uint8, stream)
    b_d = _device(bias, np.float32, stream)
    out_d = out if out is not None else cuda.device_array((T, N), np.float32, stream=stream)
    launch_matmul_tiled(x_d, w_d, ggml_type, K, b_d, out_d, stream)
    if out is not None or not host:
        return out_d
    return out_d.copy_to_host(stream=stream)


# ---------------------------------------------------------------------------------------------
# __main__: check every version against ref, then time them
# ---------------------------------------------------------------------------------------------
def random_weight(rng, ggml_type, N, K):
    """Random valid raw blocks [N, row_bytes]: random bytes with finite float16 scales."""
    ggml_type = GGMLType(ggml_type)
    elems, nbytes = BLOCK_SIZES[ggml_type]
    if ggml_type == GGMLType.F32:
        return rng.standard_normal((N, K)).astype(np.float32).view(np.uint8)
    if ggml_type == GGMLType.F16:
        return rng.standard_normal((N, K)).astype(np.float16).view(np.uint8)
    blocks = rng.integers(0, 256, (N * K // elems, nbytes), dtype=np.uint8)
    scales = {GGMLType.Q6_K: [208], GGMLType.Q4_K: [0, 2], GGMLType.Q5_K: [0, 2]}.get(ggml_type, [0])
    for at in scales:                                  # scales in [2^-10, 2^-6): finite, varied
        blocks[:, at:at + 2] = rng.uniform(1e-3, 1.5e-2, len(blocks)).astype(np.float16)[:, None].view(np.uint8)
    return blocks.reshape(N, -1)


MAIN_TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K,
              GGMLType.Q6_K, GGMLType.F16, GGMLType.F32]
SHAPES = [  # (name, N, K, type): Qwen2.5-0.5B, then Phi-3-mini
    ("qwen output", 151936, 896, GGMLType.Q8_0), ("qwen ffn_gate/up", 4864, 896, GGMLType.Q5_0),
    ("qwen ffn_down", 896, 4864, GGMLType.Q6_K), ("qwen attn_q/o", 896, 896, GGMLType.Q5_0),
    ("qwen attn_k/v", 128, 896, GGMLType.Q5_0),
    ("phi3 attn_q/o", 3072, 3072, GGMLType.Q4_K), ("phi3 attn_qkv", 9216, 3072, GGMLType.Q5_K),
    ("phi3 ffn_gate_up", 16384, 3072, GGMLType.Q4_K), ("phi3 ffn_down", 3072, 8192, GGMLType.Q6_K),
    ("phi3 ffn_down q4k", 3072, 8192, GGMLType.Q4_K), ("phi3 output", 32064, 3072, GGMLType.Q6_K),
]
COPY_BW = 4.3e12


@cuda.jit
def _spin(n):
    for _ in range(n[0]):
        cuda.nanosleep(1000000)


def _time(launch, reps=20):
    """GPU seconds per launch: a sleeping kernel holds the stream while the host queues the
    launches, so the events time the kernels, not Numba's ~30-80 us of launch overhead."""
    stream = cuda.stream()
    launch(stream)
    n = cuda.to_device(np.array([5 * reps], np.int32), stream=stream)
    _spin[1, 1, stream](n)
    start, end = cuda.event(), cuda.event()
    start.record(stream)
    for _ in range(reps):
        launch(stream)
    end.record(stream)
    end.synchronize()
    return cuda.event_elapsed_time(start, end) * 1e-3 / reps


def _main():
    from ref.matmul import matmul as ref_matmul, term_magnitude

    rng = np.random.default_rng(0)
    sim = bool(config.ENABLE_CUDASIM)
    N, K, T = (12, 512, 3) if sim else (300, 2048, 70)
    print(f"check vs ref (N={N}, K={K}, T={T}); error / sum|x w|:")
    for gt in MAIN_TYPES:
        w = random_weight(rng, gt, N, K)
        x = rng.standard_normal((T, K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        want = ref_matmul(x, w, gt, K, bias)
        scale = term_magnitude(x, w, gt, K) + np.abs(bias)
        x_d, w_d, b_d = cuda.to_device(x[:1].reshape(K)), cuda.to_device(w), cuda.to_device(bias)
        errs = []
        for launch in (launch_matvec_v1, launch_matvec_v2):
            o = cuda.device_array(N, np.float32)
            launch(x_d, w_d, gt, K, b_d, o)
            errs.append(np.max(np.abs(o.copy_to_host() - want[0]) / scale[0]))
        got = matmul(x, w, gt, K, bias)
        errs.append(np.max(np.abs(got - want) / scale))
        print(f"  {gt.name:5s} v1 {errs[0]:.1e}  v2 {errs[1]:.1e}  matmul {errs[2]:.1e}")
        assert max(errs) < 1e-5, gt.name
    if sim:
        return
    print("\nmatvec timings (weight bytes / time; % of 4.3 TB/s copy bandwidth)")
    for name, N, K, gt in SHAPES:
        w_d = cuda.to_device(random_weight(rng, gt, N, K))
        x_d = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        o = cuda.device_array(N, np.float32)
        line = f"  {name:18s} {N:6d}x{K:<5d} {gt.name:5s}"
        for v, launch in (("v1", launch_matvec_v1), ("v2", launch_matvec_v2)):
            if v == "v2" and K > MAX_K_SHARED:
                continue
            s = _time(lambda st: launch(x_d, w_d, gt, K, None, o, st))
            gbs = w_d.nbytes / s / 1e9
            line += f"  {v} {s * 1e6:7.1f} us {gbs:6.0f} GB/s {100 * gbs * 1e9 / COPY_BW:3.0f}%"
        print(line)
    print("\nmatmul (prefill, T=512) timings")
    for name, N, K, gt in SHAPES:
        w_d = cuda.to_device(random_weight(rng, gt, N, K))
        x_d = cuda.to_device(rng.standard_normal((512, K)).astype(np.float32))
        o = cuda.device_array((512, N), np.float32)
        s = _time(lambda st: launch_matmul_tiled(x_d, w_d, gt, K, None, o, st), reps=5)
        print(f"  {name:18s} {N:6d}x{K:<5d} {gt.name:5s} {s * 1e3:8.2f} ms {2 * 512 * N * K / s / 1e9:8.0f} GFLOP/s")


if __name__ == "__main__":
    _main()
