r"""Matrix products over quantized weights: the reference.

Every linear layer of a transformer is $y = x W^\top (+ b)$ with the weight matrix stored
row by row in the GGUF file: ``W`` has ``N`` rows (one per output feature) of ``K`` weights
(one per input feature), and each row is a sequence of quantization blocks. For ``T``
tokens

$$ y_{t,n} = \sum_{k=0}^{K-1} x_{t,k}\, W_{n,k} \;+\; b_n,
   \qquad W_{n,k} = \mathrm{dequantize}(\text{row } n)_k . $$

The reference does exactly that: dequantize the whole matrix to float32 with
``ref.quants.dequantize`` and call NumPy's matrix product, in float32.

Accumulation order: float32 addition is not associative, so the rounding of the sum
depends on the order of the terms. NumPy's BLAS sums in blocked, vectorized order; the
GPU kernels sum each lane's share first and then combine lanes in a tree. Results agree
to a few float32 ulps *of the magnitude of the terms*: the error of a float32 sum of
``K`` terms is bounded by about $\gamma_K \sum_k |x_{t,k} W_{n,k}|$ with
$\gamma_K \approx K \cdot 2^{-24}$ (in practice $\sqrt{K} \cdot 2^{-24}$), which can be
large relative to $|y_{t,n}|$ when terms cancel. Compare kernels against this function
with a tolerance scaled by $\sum_k |x_{t,k} W_{n,k}|$, not by $|y|$.

Quantized activations (``quantize_x8``, ``matmul_x8``): llama.cpp's decode products round ``x`` to
8-bit blocks of 32 and multiply with integer dot products. ``matmul`` keeps ``x`` in float32;
``matmul_x8`` is the reference of the kernels that quantize it (matmul v20, opt-in, Q4_K):
per block $j$ of 32, $d_j = \max_i |x_i| / 127$ and $q_i = \mathrm{rint}(x_i / d_j)$ (int8), so
$x_i \approx d_j q_i$; a Q4_K sub-block of 32 weights $W_i = d_s c_s u_i - d_m m_s$ ($u_i$ the 4-bit
codes) meets exactly one block of $x$, and its share of the dot product is
$d_j\, (d_s c_s) \sum_i u_i q_i - (d_m m_s) \sum_i x_i$: an exact integer sum of 32 products, two
scalings, and the float sum of $x$ over the block (kept exact rather than rounded: the min term
does not need the integer path). The error against ``matmul`` is the rounding of $x$: at most
$d_j / 2$ per element, i.e. $|x| \cdot 2^{-8}$ relative to the block's largest element.

Left out: batching several matrices, and any memory saving (the dequantized matrix is materialized).

References: llama.cpp ``ggml_compute_forward_mul_mat`` (CPU) and
``ggml-cuda/mmv*.cu`` (GPU); Higham, *Accuracy and Stability of Numerical Algorithms*,
ch. 4 (error of summation).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes
from ref.quants import dequantize, k_quants, k_scale_min, q6_k_quants


def check_weight(w_raw: np.ndarray, ggml_type, K: int) -> GGMLType:
    """Validate a raw weight [N, row_bytes] for rows of K weights; return the GGMLType."""
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in BLOCK_SIZES:
        raise ValueError(f"matmul: ggml type {ggml_type.name} has no block size")
    expected = row_bytes(ggml_type, K)  # raises ValueError if K is not a whole number of blocks
    if w_raw.ndim != 2 or w_raw.shape[1] != expected or w_raw.dtype != np.uint8:
        raise ValueError(f"matmul: {ggml_type.name} weight with K={K} must be uint8 [N, {expected}], "
                         f"got {w_raw.dtype} {tuple(w_raw.shape)}")
    return ggml_type


# --8<-- [start:matmul]
def matmul(x: np.ndarray, w_raw: np.ndarray, ggml_type, K: int, bias: np.ndarray | None = None) -> np.ndarray:
    """y [T, N] = x [T, K] @ dequantize(w_raw).T (+ bias [N]), all in float32.

    ``w_raw`` is the weight's raw GGUF bytes, uint8 [N, row_bytes] (``GGUFFile.raw(name)``).
    A 1-D ``x`` [K] is treated as one token and gives y [N].
    """
    ggml_type = check_weight(w_raw, ggml_type, K)
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != K:
        raise ValueError(f"matmul: x has {x.shape[-1]} features, the weight rows have K={K}")
    N = w_raw.shape[0]
    W = dequantize(w_raw, ggml_type, (N, K))       # [N, K] float32
    y = x @ W.T                                    # [T, K] @ [K, N] -> [T, N]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32)  # [T, N] + [N]
    return y.astype(np.float32, copy=False)
# --8<-- [end:matmul]


def term_magnitude(x: np.ndarray, w_raw: np.ndarray, ggml_type, K: int) -> np.ndarray:
    r"""$\sum_k |x_{t,k} W_{n,k}|$ [T, N]: the scale of the float32 rounding error of ``matmul``."""
    ggml_type = check_weight(w_raw, ggml_type, K)
    W = dequantize(w_raw, ggml_type, (w_raw.shape[0], K))                       # [N, K]
    return np.abs(np.asarray(x, dtype=np.float64)) @ np.abs(W.astype(np.float64)).T  # [T, N]


# --8<-- [start:quantize_x8]
def fragment_order(pairs: np.ndarray) -> np.ndarray:
    """The layout of float16 pairs that the tensor-core prefill over float16 weights (``numba_kernels/matmul.py``
    v23) reads: in each group of 16 consecutive pairs of a row (32 values of k), pair p moves to position
    4 (p % 4) + p // 4, so the four pairs one mma lane needs (t, t + 4, t + 8, t + 12) are one 16-byte line.
    pairs [..., 16 m] -> the same shape, permuted along the last axis (the same values)."""
    p = np.asarray(pairs)
    if p.shape[-1] % 16:
        raise ValueError(f"fragment_order: rows of {p.shape[-1]} pairs are not whole groups of 16")
    return p.reshape(*p.shape[:-1], -1, 4, 4).swapaxes(-1, -2).reshape(p.shape)


def a_tile_index(T: int, K: int) -> np.ndarray:
    """Where the tensor-core prefill over float16 weights (v23) keeps x's float16 pair (t, p) (token t, pair p = k / 2)
    in its x16 buffer: int64 [T, K / 2] of word indices. Tokens go in blocks of 16 (an mma's rows; the buffer holds
    ceil(T / 16) whole blocks) and each block's K-steps of 32 values of k in 256 words: per k16 slice s (pairs
    8 s .. 8 s + 7 of the step) and lane (g, t') of the mma, the line [x(g, t'), x(g + 8, t'), x(g, t' + 4),
    x(g + 8, t' + 4)] (pairs of the slice), the lane's A operand in the instruction's register order, at word
    128 s + 4 (4 g + t')."""
    if K % 32:
        raise ValueError(f"a_tile_index: K={K} is not a multiple of 32")
    t, p = np.meshgrid(np.arange(T), np.arange(K // 2), indexing="ij")
    step, q = p // 16, p % 16                      # K-step, pair within it
    s, w = q // 8, q % 8                           # k16 slice, pair within the slice
    g, hi = t % 8, (t % 16) // 8                   # row in the mma's half, which half
    line = 4 * g + w % 4
    return ((t // 16) * (K // 32) + step) * 256 + 128 * s + 4 * line + 2 * (w // 4) + hi


def quantize_x8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [K] (K a multiple of 32) -> (q int8 [K], d float32 [K/32], s float32 [K/32]) per block of 32:
    d = max|x| / 127, q = rint(x * (1 / d)) (0 where d = 0), s = the block's sum of x. All in float32, in
    the order the kernel computes them (the sum excepted: the kernel's order differs; tests allow for it)."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)                   # [K/32, 32]
    d = np.abs(xb).max(axis=1) / np.float32(127)                      # [K/32] float32
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d > 0)
    q = np.rint(xb * inv[:, None]).astype(np.int8)                    # |x * inv| <= 127 (+ rounding of inv)
    return q.reshape(-1), d, xb.sum(axis=1, dtype=np.float32)
# --8<-- [end:quantize_x8]


# --8<-- [start:matmul_x8]
X8_K_MULTIPLE = {GGMLType.Q4_K: 256, GGMLType.Q5_K: 256, GGMLType.Q6_K: 256,   # the types matmul_x8 takes, and
                 GGMLType.Q8_0: 64, GGMLType.Q5_0: 64}                         # the K their rows need (v20's pairs)


def x8_fits(ggml_type, K: int) -> bool:
    """Whether ``matmul_x8`` (and the kernels it is the reference of) takes rows of K weights of this type."""
    multiple = X8_K_MULTIPLE.get(GGMLType(ggml_type))
    return multiple is not None and K % multiple == 0


class X8Weight(NamedTuple):
    """A weight in the form ``matmul_x8`` multiplies: per row n and group g of ``n`` weights (32; Q6_K 16), the
    integer quants and the float that scales their integer dot with x's codes; per block j of 32, what multiplies
    the block's float sum of x (subtracted)."""
    q: np.ndarray       # [K/n, N, n] int8 (a byte per weight): float32 dots of 32 of them with codes are exact
    scale: np.ndarray   # [N, K/n] float64 (Q4_K, Q5_K: d sc_s; Q5_0, Q8_0: d_b; Q6_K: d sc_g)
    minus: np.ndarray   # [N, K/32] float64 (Q4_K, Q5_K: d_m m_s; Q5_0: 16 d_b; Q6_K, Q8_0: 0)


def x8_weight(w_raw: np.ndarray, ggml_type, K: int) -> X8Weight:
    """The ``X8Weight`` of raw blocks [N, row_bytes] of a type in ``X8_K_MULTIPLE``."""
    ggml_type = check_weight(w_raw, ggml_type, K)
    if ggml_type not in X8_K_MULTIPLE:
        raise ValueError(f"matmul_x8: only Q4_K, Q5_K, Q5_0, Q6_K and Q8_0 weights, got {ggml_type.name}")
    N = w_raw.shape[0]
    if ggml_type == GGMLType.Q8_0:
        blocks = w_raw.reshape(-1, 34)                                    # [N K/32, 34]
        d = _half(blocks, 0).reshape(N, K // 32)
        return _x8(blocks[:, 2:].view(np.int8), N, 32, d, np.zeros_like(d))
    if ggml_type == GGMLType.Q5_0:
        blocks = w_raw.reshape(-1, 22)                                    # [N K/32, 22]
        d = _half(blocks, 0).reshape(N, K // 32)
        qh = blocks[:, 2:6].copy().view("<u4")                            # [N K/32, 1]: bit i = weight i's 5th
        qs = blocks[:, 6:]                                                # [N K/32, 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)                  # weights 0..15, 16..31
        q = q | (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)   # q5 in 0..31
        return _x8(q, N, 32, d, d * 16)
    nb = K // 256
    if ggml_type == GGMLType.Q6_K:
        blocks = w_raw.reshape(N * nb, 210)
        sc = blocks[:, 192:208].view(np.int8).reshape(N, nb * 16)        # an int8 scale per 16 weights
        d = np.repeat(_half(blocks, 208).reshape(N, nb), 16, axis=1)      # [N, K/16]
        return _x8(q6_k_quants(blocks), N, 16, d * sc, np.zeros((N, K // 32)))
    blocks = w_raw.reshape(N * nb, -1)                                # Q4_K: 144 bytes, Q5_K: 176
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)     # [N nb, 1]
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = k_scale_min(blocks[:, 4:16])                              # [N nb, 8] each
    ds = (d * sc.astype(np.float32)).astype(np.float64).reshape(N, nb * 8)
    dm = (dmin * m.astype(np.float32)).astype(np.float64).reshape(N, nb * 8)
    return _x8(k_quants(blocks), N, 32, ds, dm)


def _x8(q: np.ndarray, N: int, n: int, scale: np.ndarray, minus: np.ndarray) -> X8Weight:
    """An ``X8Weight`` from quants q (any shape holding N K integers, row-major) in groups of n."""
    q = q.reshape(N, -1, n).astype(np.int8).transpose(1, 0, 2)      # [K/n, N, n]: all types' quants fit
    return X8Weight(np.ascontiguousarray(q), scale, minus)


def matmul_x8(x: np.ndarray, w_raw, ggml_type=None, K: int | None = None) -> np.ndarray:
    """y [N] = the product of a Q4_K, Q5_K, Q5_0, Q6_K or Q8_0 weight (raw blocks, or its ``X8Weight``) with x
    quantized by ``quantize_x8`` (see the module docstring), in float64, summed over blocks of 32:
    d_j (d_s c_s) sum_i u_i q_i - (d_m m_s) s_j (Q4_K; Q5_K the same with 5-bit u), d_b d_j sum_i u_i q_i -
    16 d_b s_j (Q5_0: u = the 5-bit quants, the -16 of each weight applied to the block's float sum s_j),
    d_b d_j sum_i w_i q_i (Q8_0: no second term), d d_j (sc_a sum_{i<16} (u_i - 32) q_i + sc_b sum_{i>=16} ...)
    (Q6_K: an int8 scale per 16 weights, no second term)."""
    scaled, mins = x8_terms(x, w_raw, ggml_type, K)
    return (scaled - mins).sum(axis=1)


def x8_terms(x: np.ndarray, w_raw, ggml_type=None, K: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of ``matmul_x8`` per row and block of 32, float64 [N, K/32] each: the integer dot products
    with their scales (Q4_K, Q5_K: d_j (d_s c_s) sum_i u_i q_i), and what is subtracted from them (Q4_K, Q5_K:
    (d_m m_s) s_j; Q5_0: 16 d_b s_j; Q6_K and Q8_0: 0)."""
    w = w_raw if isinstance(w_raw, X8Weight) else x8_weight(w_raw, ggml_type, K)
    q8, dx, sx = quantize_x8(x)
    G, N, n = w.q.shape
    codes = q8.reshape(G, n, 1).astype(np.float32)
    dots = np.empty((G, N), np.float32)
    for g in range(0, G, 8):                                          # float32 copies of 8 groups at a time
        dots[g:g + 8] = np.matmul(w.q[g:g + 8].astype(np.float32), codes[g:g + 8])[:, :, 0]
    dots = dots.T.astype(np.float64)                                  # [N, K/n]: exact (|sum| < 2^24)
    scaled = (w.scale * dots).reshape(N, -1, 32 // n).sum(axis=2)     # [N, K/32]
    return dx.astype(np.float64) * scaled, w.minus * sx.astype(np.float64)


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte ``at`` of every block, as float64 [n]."""
    return blocks[:, at:at + 2].copy().view(np.float16).astype(np.float64)[:, 0]
# --8<-- [end:matmul_x8]


class X8Choice(NamedTuple):
    """Which of a decode step's products round x to int8 (``matmul_x8``; on the GPU matmul v20), per launch of
    the cuda decode step, so that the NumPy backend can follow it exactly. Off unless ``on``; then a launch takes
    it when every weight's type fits (``x8_fits``) and its rows hold at least ``min_k`` weights, and a plain
    product (one matrix: W_o, W_down, the output layer) only with at least ``min_rows`` rows."""
    on: bool = False
    min_k: int = 0
    min_rows: int = 0
    chain: bool = False     # W_down over x' rounded by the gate/up launch (v21), whatever its rows
    #                         (LLAMA_BETA_X8_CHAIN, "1" by default since the nineteenth session)

    @classmethod
    def from_env(cls, environ=None) -> X8Choice:
        """``LLAMA_BETA_DP4A``: "auto" (the default since the eighteenth session: K >= 2048 and plain products
        of >= 4096 rows, the launches that won on an H100), "0" (off: every product over float32 x) or "1"
        (every launch whose types fit); ``LLAMA_BETA_X8_MIN_K`` and ``LLAMA_BETA_X8_MIN_ROWS`` override the
        two thresholds of "auto"; ``LLAMA_BETA_X8_CHAIN`` ("1", the default, or "0") chains W_down to a v20
        gate/up launch (``down_chained``)."""
        env = os.environ if environ is None else environ
        mode = env.get("LLAMA_BETA_DP4A", "auto")
        if mode not in ("0", "1", "auto"):
            raise ValueError(f"LLAMA_BETA_DP4A: expected 0, 1 or auto, got {mode!r}")
        auto = mode == "auto"

        def count(name, default):
            text = env.get(name, str(default))
            if not text.isdigit():
                raise ValueError(f"{name}: expected a whole number, got {text!r}")
            return int(text)

        chain = env.get("LLAMA_BETA_X8_CHAIN", "1")
        if chain not in ("0", "1"):
            raise ValueError(f"LLAMA_BETA_X8_CHAIN: expected 0 or 1, got {chain!r}")
        return cls(mode != "0", count("LLAMA_BETA_X8_MIN_K", 2048 if auto else 0),
                   count("LLAMA_BETA_X8_MIN_ROWS", 4096 if auto else 0), chain == "1")

    def _takes(self, types, K: int) -> bool:
        return self.on and K >= self.min_k and all(x8_fits(t, K) for t in types)

    def qkv(self, types, K: int) -> bool:
        """The Q/K/V (+ RoPE) launch: each matrix may have its own type."""
        return self._takes(types, K)

    def gate_up(self, gate_type, up_type, K: int) -> bool:
        """The gate/up (SwiGLU) launch: one type for both matrices."""
        return gate_type == up_type and self._takes((gate_type,), K)

    def product(self, ggml_type, N: int, K: int) -> bool:
        """A plain product of N rows."""
        return N >= self.min_rows and self._takes((ggml_type,), K)

    def down_chained(self, gate_type, up_type, down_type, F: int, K: int) -> bool:
        """W_down (F weights a row) reads the SwiGLU outputs as the gate/up launch (rows of K) rounded them
        (matmul v21): with ``chain``, where gate/up takes the integer products, F is whole blocks of 32 and
        W_down's type takes them too (no min_rows, no min_k: its x is rounded already)."""
        return (self.chain and self.gate_up(gate_type, up_type, K) and F % 32 == 0
                and x8_fits(down_type, F))

    def down(self, gate_type, up_type, down_type, F: int, K: int, N: int) -> bool:
        """Whether W_down (N rows of F weights) is an integer product: chained (``down_chained``) or as a plain
        product."""
        return self.down_chained(gate_type, up_type, down_type, F, K) or self.product(down_type, N, F)
