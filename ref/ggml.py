"""The ggml tensor types that GGUF files name, and the size of one block of each.

Every quantized ggml type stores a row of weights as a sequence of fixed-size
*blocks*: ``block_elems`` weights packed into ``block_bytes`` bytes. A row of
``n`` weights therefore takes ``n // block_elems * block_bytes`` bytes, and ``n``
must be a whole number of blocks. Plain types (F32, F16, BF16, I8 ...) are
"blocks" of one element.

The ids and sizes are those of ggml's ``ggml_type`` enum and ``type_traits`` table
(ggml/include/ggml.h, ggml/src/ggml.c); gguf-py mirrors them in
``gguf.constants.GGML_QUANT_SIZES``.
"""
from __future__ import annotations

from enum import IntEnum

QK_K = 256  # elements in one "K-quant" super-block


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# type -> (elements per block, bytes per block)
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 4 + 4 + 32),
    GGMLType.Q2_K: (256, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (256, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (256, 2 + 2 + QK_K // 2 + 12),
    GGMLType.Q5_K: (256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    GGMLType.Q6_K: (256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    GGMLType.Q8_K: (256, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (256, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (256, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (256, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: (256, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (256, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (256, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 2 + 4 * 13),
    GGMLType.TQ2_0: (256, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
    GGMLType.NVFP4: (64, 4 + 32),
    GGMLType.Q1_0: (128, 2 + 16),
}


def row_bytes(ggml_type: GGMLType, n_elems: int) -> int:
    """Bytes taken by ``n_elems`` consecutive weights (a whole number of blocks)."""
    elems, nbytes = BLOCK_SIZES[ggml_type]
    if n_elems % elems:
        raise ValueError(f"{ggml_type.name}: {n_elems} elements is not a whole number of {elems}-element blocks")
    return n_elems // elems * nbytes
