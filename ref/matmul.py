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

Left out: quantizing the activations (llama.cpp's ``mul_mat_vec_q`` rounds ``x`` to
8-bit blocks and uses integer dot products; we keep ``x`` in float32), batching several
matrices, and any memory saving (the dequantized matrix is materialized).

References: llama.cpp ``ggml_compute_forward_mul_mat`` (CPU) and
``ggml-cuda/mmv*.cu`` (GPU); Higham, *Accuracy and Stability of Numerical Algorithms*,
ch. 4 (error of summation).
"""
from __future__ import annotations

import numpy as np

from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes
from ref.quants import dequantize


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
