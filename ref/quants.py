r"""Dequantization: turn the packed blocks of a GGUF tensor back into float32 weights.

A quantized ggml tensor is a sequence of fixed-size *blocks*. Each block holds ``QK``
weights (32 for the "legacy" types Q4_0 ... Q8_0, 256 for the K-quants Q2_K ... Q8_K) as
small integers ``q`` plus one or two float16 scales, and the weight is an affine function
of ``q``:

$$ x = d \cdot q \quad\text{(symmetric types)} \qquad x = d \cdot q + m \quad\text{or}\quad
x = d_s \cdot q - m_s \quad\text{(types with an offset)} $$

The K-quants split a 256-weight super-block into sub-blocks of 16 or 32 weights, each
with its own small integer scale (and min) that multiplies the super-block's float16
``d`` (and ``dmin``).

Every function below takes the tensor as an ``(n_blocks, block_bytes)`` uint8 view and
returns ``(n_blocks, QK)`` float32, vectorized across blocks. Its docstring gives the byte
layout of one block and the formula. The float operations are done in float32 and in
the same order as gguf-py (``gguf.quants``), so the results are bit-exact with it; e.g.
for Q4_K ``(d * sc) * q - (dmin * m)`` with each product rounded to float32 (no fused
multiply-add).

Left out: the i-quants (IQ*), the ternary types (TQ*), MXFP4/NVFP4 and quantization (the
other direction). Q8_K is a scratch type ggml uses for dot products; it is here for
completeness (gguf-py cannot dequantize it).

References: ggml/src/ggml-quants.c (``dequantize_row_*``), ggml/src/ggml-common.h (the
``block_*`` structs), gguf-py/gguf/quants.py.
"""
from __future__ import annotations

import math

import numpy as np

from ref.ggml import BLOCK_SIZES, QK_K, GGMLType


# --- small helpers ------------------------------------------------------------------------

def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 stored at byte ``at`` of every block, as float32, shape (n, 1)."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32)


def _f32(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float32 stored at byte ``at`` of every block, shape (n, 1)."""
    return blocks[:, at:at + 4].copy().view(np.float32)


def _low_high_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k): the k low nibbles, then the k high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _crumbs(qs: np.ndarray, bits: int) -> np.ndarray:
    """(n, k) bytes -> (n, 8//bits * k): bit-fields of width ``bits``, lowest field first.

    Output element ``i * k + l`` is field ``i`` (bits ``i*bits ..``) of byte ``l``.
    """
    mask = (1 << bits) - 1
    return np.concatenate([(qs >> (i * bits)) & mask for i in range(8 // bits)], axis=-1)


# --- plain float types ----------------------------------------------------------------------

def dequant_f32(blocks: np.ndarray) -> np.ndarray:
    """F32: 4 bytes, a little-endian IEEE float32. $x = x$."""
    return blocks.copy().view(np.float32)


def dequant_f16(blocks: np.ndarray) -> np.ndarray:
    """F16: 2 bytes, an IEEE float16, widened exactly to float32."""
    return blocks.copy().view(np.float16).astype(np.float32)


def dequant_bf16(blocks: np.ndarray) -> np.ndarray:
    """BF16: 2 bytes, the upper half of a float32: $x = \\text{bits} \\ll 16$ reinterpreted."""
    return (blocks.copy().view(np.uint16).astype(np.uint32) << 16).view(np.float32)


# --- legacy 32-weight blocks ----------------------------------------------------------------

def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    r"""Q4_0, 18 bytes: ``d`` f16 @0, ``qs`` 16 bytes @2.

    Weight ``j < 16`` is the low nibble of ``qs[j]``, weight ``j + 16`` its high nibble.
    $$x_j = d \cdot (q_j - 8)$$
    """
    d = _f16(blocks, 0)
    q = _low_high_nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def dequant_q4_1(blocks: np.ndarray) -> np.ndarray:
    r"""Q4_1, 20 bytes: ``d`` f16 @0, ``m`` f16 @2, ``qs`` 16 bytes @4 (nibbles as Q4_0).
    $$x_j = d \cdot q_j + m$$
    """
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _low_high_nibbles(blocks[:, 4:20]).astype(np.float32)
    return d * q + m


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) bits, bit j of the word at j."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def dequant_q5_0(blocks: np.ndarray) -> np.ndarray:
    r"""Q5_0, 22 bytes: ``d`` f16 @0, ``qh`` u32 @2 (bit j = 5th bit of weight j), ``qs`` 16 bytes @6.
    $$x_j = d \cdot (q_j - 16), \quad q_j = \text{nibble}_j + 16\,\text{bit}_j(qh)$$
    """
    d = _f16(blocks, 0)
    q = _low_high_nibbles(blocks[:, 6:22]) | (_fifth_bits(blocks[:, 2:6]) << 4)
    return d * (q.astype(np.int8) - np.int8(16)).astype(np.float32)


def dequant_q5_1(blocks: np.ndarray) -> np.ndarray:
    r"""Q5_1, 24 bytes: ``d`` f16 @0, ``m`` f16 @2, ``qh`` u32 @4, ``qs`` 16 bytes @8.
    $$x_j = d \cdot q_j + m, \quad q_j = \text{nibble}_j + 16\,\text{bit}_j(qh)$$
    """
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _low_high_nibbles(blocks[:, 8:24]) | (_fifth_bits(blocks[:, 4:8]) << 4)
    return d * q.astype(np.float32) + m


def dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    r"""Q8_0, 34 bytes: ``d`` f16 @0, ``qs`` 32 int8 @2.
    $$x_j = q_j \cdot d$$
    """
    d = _f16(blocks, 0)
    return blocks[:, 2:34].view(np.int8).astype(np.float32) * d


def planar_q8_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 rows [N, 34 K/32] as two planes: the quants int8 [N, K] and the scales float16 [N, K/32].

    The same bytes, regrouped (a memory layout, not a new function): row n's weight k is
    ``qs[n, k] * d[n, k // 32]``. The CUDA output product v22 reads this layout, so that the quants
    of a row are contiguous and 16-byte aligned (a block of 34 bytes is only 2-byte aligned).
    """
    n, row_bytes = raw.shape
    blocks = np.ascontiguousarray(raw).reshape(n, row_bytes // 34, 34)
    qs = blocks[:, :, 2:].reshape(n, -1).view(np.int8)
    d = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16).reshape(n, -1)
    return qs.copy(), d


# --- K-quants: 256-weight super-blocks ----------------------------------------------------

def dequant_q2_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q2_K, 84 bytes: ``scales`` 16 bytes @0, ``qs`` 64 bytes @16, ``d`` f16 @80, ``dmin`` f16 @82.

    16 sub-blocks of 16; ``scales[s]`` holds the sub-block's 4-bit scale (low nibble) and
    4-bit min (high nibble). Weight ``j = 128h + 32i + l`` is bits ``2i..2i+1`` of ``qs[32h + l]``.
    $$x_j = (d \cdot sc_s) \cdot q_j - (d_{min} \cdot m_s), \quad s = \lfloor j/16 \rfloor$$
    """
    n = blocks.shape[0]
    sc, qs = blocks[:, 0:16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]            # (n, 16, 1)
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]           # (n, 16, 1)
    q = np.concatenate([_crumbs(qs[:, 0:32], 2), _crumbs(qs[:, 32:64], 2)], axis=-1)
    q = q.reshape(n, 16, 16).astype(np.float32)                      # (n, sub-block, 16)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(sc: np.ndarray) -> np.ndarray:
    """(n, 12) packed bytes -> (n, 16) signed 6-bit scales (stored with a +32 bias).

    Scale ``i``: low 4 bits are nibble ``i // 8`` of byte ``i % 8``; high 2 bits are bits
    ``2 (i // 4) ..`` of byte ``8 + i % 4``.
    """
    low = _low_high_nibbles(sc[:, 0:8])                              # (n, 16)
    high = _crumbs(sc[:, 8:12], 2)                                   # (n, 16)
    return ((low | (high << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)


def dequant_q3_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q3_K, 110 bytes: ``hmask`` 32 bytes @0, ``qs`` 64 bytes @32, ``scales`` 12 bytes @96, ``d`` f16 @108.

    Weight ``j = 128h + 32i + l``: low 2 bits are bits ``2i..`` of ``qs[32h + l]``; its high
    bit is bit ``j // 32`` of ``hmask[l]``, and a *clear* high bit subtracts 4.
    $$x_j = (d \cdot sc_s) \cdot q_j, \quad q_j = \text{low}_j - 4\,(1 - \text{hbit}_j) \in [-4, 3], \quad s = \lfloor j/16 \rfloor$$
    """
    n = blocks.shape[0]
    hmask, qs = blocks[:, 0:32], blocks[:, 32:96]
    d = _f16(blocks, 108)
    dl = (d * _q3_k_scales(blocks[:, 96:108]))[:, :, None]          # (n, 16, 1)
    low = np.concatenate([_crumbs(qs[:, 0:32], 2), _crumbs(qs[:, 32:64], 2)], axis=-1)
    hbit = _crumbs(hmask, 1)                                         # (n, 256)
    q = low.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


# --8<-- [start:k_scale_min]
def k_scale_min(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> two (n, 8) arrays: the 6-bit scale and min of each sub-block.

    Sub-blocks 0-3 keep their scale/min in the low 6 bits of bytes 0-3 / 4-7. Sub-blocks
    4-7 take their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the
    spare top bits of bytes 0-3 (scale) / 4-7 (min).
    """
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
    minimum = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return scale, minimum
# --8<-- [end:k_scale_min]


def _k_affine(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: x = (d * sc) * q - dmin * m over 8 sub-blocks of 32; q is (n, 256)."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, m = k_scale_min(blocks[:, 4:16])
    ds = (d * sc.astype(np.float32))[:, :, None]                     # (n, 8, 1)
    dm = (dmin * m.astype(np.float32))[:, :, None]                   # (n, 8, 1)
    return (ds * q.reshape(n, 8, 32).astype(np.float32) - dm).reshape(n, QK_K)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 256): each 32-byte chunk gives 32 low nibbles then 32 high ones."""
    return np.concatenate([_low_high_nibbles(qs[:, i:i + 32]) for i in range(0, 128, 32)], axis=-1)


# --8<-- [start:dequant_q4_k]
def dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q4_K, 144 bytes: ``d`` f16 @0, ``dmin`` f16 @2, ``scales`` 12 bytes @4, ``qs`` 128 bytes @16.

    8 sub-blocks of 32 with 6-bit scales/mins (see ``k_scale_min``). Weight
    ``j = 64c + 32h + l`` is nibble ``h`` of ``qs[32c + l]``.
    $$x_j = (d \cdot sc_s) \cdot q_j - (d_{min} \cdot m_s), \quad s = \lfloor j/32 \rfloor$$
    """
    return _k_affine(blocks, _k_nibbles(blocks[:, 16:144]))
# --8<-- [end:dequant_q4_k]


def dequant_q5_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q5_K, 176 bytes: ``d`` @0, ``dmin`` @2, ``scales`` 12 bytes @4, ``qh`` 32 bytes @16, ``qs`` 128 bytes @48.

    As Q4_K, plus a 5th bit: bit ``j // 32`` of ``qh[j % 32]``.
    $$x_j = (d \cdot sc_s) \cdot q_j - (d_{min} \cdot m_s), \quad q_j = \text{nibble}_j + 16\,\text{hbit}_j$$
    """
    return _k_affine(blocks, k_quants(blocks))


def k_quants(blocks: np.ndarray) -> np.ndarray:
    """Q4_K [n, 144] or Q5_K [n, 176] blocks -> their 256 unsigned quants each, [n, 256] in sub-block order
    (0..15, or 0..31 with Q5_K's fifth bits)."""
    if blocks.shape[1] == 144:                                        # Q4_K: qs @16
        return _k_nibbles(blocks[:, 16:144])
    return _k_nibbles(blocks[:, 48:176]) | (_crumbs(blocks[:, 16:48], 1) << 4)   # Q5_K: qs @48, 5th bits from qh @16


def dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q6_K, 210 bytes: ``ql`` 128 bytes @0, ``qh`` 64 bytes @128, ``scales`` 16 int8 @192, ``d`` f16 @208.

    16 sub-blocks of 16 with int8 scales. Weight ``j = 128h + 32i + l``: low 4 bits are
    nibble ``i // 2`` of ``ql[64h + 32 (i \bmod 2) + l]``, top 2 bits are bits ``2i..`` of ``qh[32h + l]``.
    $$x_j = (d \cdot sc_s) \cdot (q_j - 32), \quad s = \lfloor j/16 \rfloor$$
    """
    n = blocks.shape[0]
    ds = (_f16(blocks, 208) * blocks[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]
    q = q6_k_quants(blocks)
    return (ds * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def q6_k_quants(blocks: np.ndarray) -> np.ndarray:
    """Q6_K blocks [n, 210] -> their 256 quants each, int8 [n, 256] in -32..31 (``q_j - 32`` above)."""
    ql, qh = blocks[:, 0:128], blocks[:, 128:192]
    low = np.concatenate([_low_high_nibbles(ql[:, 0:64]), _low_high_nibbles(ql[:, 64:128])], axis=-1)
    high = np.concatenate([_crumbs(qh[:, 0:32], 2), _crumbs(qh[:, 32:64], 2)], axis=-1)
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def dequant_q8_k(blocks: np.ndarray) -> np.ndarray:
    r"""Q8_K, 292 bytes: ``d`` **f32** @0, ``qs`` 256 int8 @4, ``bsums`` 16 int16 @260 (unused here).
    $$x_j = d \cdot q_j$$
    """
    return _f32(blocks, 0) * blocks[:, 4:260].view(np.int8).astype(np.float32)


DEQUANTIZERS = {
    GGMLType.F32: dequant_f32, GGMLType.F16: dequant_f16, GGMLType.BF16: dequant_bf16,
    GGMLType.Q4_0: dequant_q4_0, GGMLType.Q4_1: dequant_q4_1,
    GGMLType.Q5_0: dequant_q5_0, GGMLType.Q5_1: dequant_q5_1, GGMLType.Q8_0: dequant_q8_0,
    GGMLType.Q2_K: dequant_q2_k, GGMLType.Q3_K: dequant_q3_k, GGMLType.Q4_K: dequant_q4_k,
    GGMLType.Q5_K: dequant_q5_k, GGMLType.Q6_K: dequant_q6_k, GGMLType.Q8_K: dequant_q8_k,
}

# Byte offset and dtype of every float field of a block: its scales (for test data).
FLOAT_FIELDS = {
    GGMLType.F32: ((0, np.float32),), GGMLType.F16: ((0, np.float16),), GGMLType.BF16: (),
    GGMLType.Q4_0: ((0, np.float16),), GGMLType.Q4_1: ((0, np.float16), (2, np.float16)),
    GGMLType.Q5_0: ((0, np.float16),), GGMLType.Q5_1: ((0, np.float16), (2, np.float16)),
    GGMLType.Q8_0: ((0, np.float16),), GGMLType.Q2_K: ((80, np.float16), (82, np.float16)),
    GGMLType.Q3_K: ((108, np.float16),), GGMLType.Q4_K: ((0, np.float16), (2, np.float16)),
    GGMLType.Q5_K: ((0, np.float16), (2, np.float16)), GGMLType.Q6_K: ((208, np.float16),),
    GGMLType.Q8_K: ((0, np.float32),),
}


def random_blocks(ggml_type, n_blocks: int, rng: np.random.Generator, scale: float = 4.0) -> np.ndarray:
    """Random ``(n_blocks, block_bytes)`` uint8 blocks whose float fields are finite.

    Random bytes make every packed integer field uniform; the float fields (scales) are
    drawn from [-scale, scale], since random bits would give inf/NaN scales. (BF16 keeps
    random bits but a clear top exponent bit, so it is finite too.)
    """
    ggml_type = GGMLType(ggml_type)
    _, block_bytes = BLOCK_SIZES[ggml_type]
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for at, dtype in FLOAT_FIELDS[ggml_type]:
        size = np.dtype(dtype).itemsize
        values = rng.uniform(-scale, scale, (n_blocks, 1)).astype(dtype)
        blocks[:, at:at + size] = values.view(np.uint8).reshape(n_blocks, size)
    if ggml_type == GGMLType.BF16:
        blocks[:, 1] &= 0xBF                                        # exponent < 128: finite
    return blocks


_CHUNK_ELEMS = 1 << 20  # weights per vectorized step: bounds the temporaries to a few MiB


def dequantize(raw: np.ndarray, ggml_type, shape) -> np.ndarray:
    """Dequantize a whole tensor: ``raw`` holds exactly its bytes; returns float32 of ``shape``.

    ``shape`` is in numpy order (last dimension = row length, a whole number of blocks).
    """
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in DEQUANTIZERS:
        raise ValueError(f"dequantize: ggml type {ggml_type.name} is not supported "
                         f"(supported: {', '.join(t.name for t in DEQUANTIZERS)})")
    shape = tuple(int(s) for s in shape)
    qk, block_bytes = BLOCK_SIZES[ggml_type]
    if not shape or shape[-1] % qk:
        raise ValueError(f"dequantize: {ggml_type.name} rows must be a whole number of {qk}-element "
                         f"blocks, got shape {shape}")
    n_blocks = math.prod(shape) // qk
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise ValueError(f"dequantize: raw must be uint8 bytes, got {raw.dtype}")
    if raw.size != n_blocks * block_bytes:
        raise ValueError(f"dequantize: {ggml_type.name} tensor of shape {shape} needs "
                         f"{n_blocks * block_bytes} bytes, got {raw.size}")
    blocks = np.ascontiguousarray(raw).reshape(n_blocks, block_bytes)   # (n_blocks, block_bytes)
    out = np.empty((n_blocks, qk), dtype=np.float32)                     # (n_blocks, QK)
    fn = DEQUANTIZERS[ggml_type]
    step = max(1, _CHUNK_ELEMS // qk)
    for start in range(0, n_blocks, step):
        out[start:start + step] = fn(blocks[start:start + step])
    return out.reshape(shape)
