r"""RMSNorm: scale each row to unit root-mean-square, then multiply by a learned weight.

What it does
    For one row :math:`x \in \mathbb{R}^C` (one token's activations)

    $$ y_j = \frac{x_j}{\sqrt{\tfrac{1}{C}\sum_{k=1}^{C} x_k^2 + \epsilon}} \; w_j $$

    Unlike LayerNorm there is no mean subtraction and no bias. ``add_rmsnorm`` fuses
    the residual add that precedes every norm in a pre-norm transformer:
    ``residual <- residual + x`` and then ``normed = rmsnorm(residual)``.

Precision (the way llama.cpp's CPU backend does it, ggml-cpu ``ggml_compute_forward_rms_norm_f32``)
    * each square ``x*x`` is a float32 product,
    * the squares are accumulated in float64 (ggml's ``ggml_float`` is ``double``),
    * ``mean = sum / C`` is rounded to float32 and ``scale = 1.0f / sqrtf(mean + eps)``,
    * ``y = (x * scale) * w``: two float32 products (ggml does the weight as a separate MUL op).
    The CUDA kernel accumulates in float32 (as ggml-cuda does), so the two agree to a
    few float32 ulps, not bit for bit.

Range
    ``x*x`` must stay finite in float32: ``|x| < 1.8e19``. The GPU kernel also sums in float32,
    so ``C * max(x^2)`` must stay below ``3.4e38``. Values below about ``1e-19`` square to
    zero (or a subnormal) and are then dominated by ``eps`` anyway.

Leaves out
    LayerNorm (mean subtraction, bias), non-float32 inputs, the "(1 + w)" weight convention of Gemma.

References
    Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (arXiv:1910.07467);
    transformers ``Qwen2RMSNorm``; llama.cpp ``ggml_rms_norm`` + ``ggml_mul`` in ``build_norm``.
"""
from __future__ import annotations

import numpy as np


def rms_scale(x: np.ndarray, eps: float) -> np.ndarray:
    """Per-row ``1 / sqrt(mean(x^2) + eps)`` as float32, shape [T, 1]."""
    x = np.asarray(x, dtype=np.float32)                      # [T, C]
    squares = x * x                                          # [T, C] float32 products
    total = squares.sum(axis=-1, dtype=np.float64)           # [T]    float64 accumulation
    mean = (total / x.shape[-1]).astype(np.float32)          # [T]    rounded to float32
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps))  # [T] float32
    return scale[:, None]                                    # [T, 1]


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMS-normalize every row of ``x`` [T, C] and multiply by ``weight`` [C]."""
    x = np.asarray(x, dtype=np.float32)
    squeeze = x.ndim == 1
    x2 = x.reshape(-1, x.shape[-1])                          # [T, C]
    w = np.asarray(weight, dtype=np.float32)                 # [C]
    y = (x2 * rms_scale(x2, eps)) * w                        # [T, C]
    return y[0] if squeeze else y.reshape(x.shape)


def add_rmsnorm(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, eps: float):
    """Residual add then RMSNorm: returns ``(rmsnorm(residual + x), residual + x)``.

    The reference returns a new residual; the GPU kernel updates it in place.
    """
    new_residual = np.asarray(residual, dtype=np.float32) + np.asarray(x, dtype=np.float32)  # [T, C]
    return rmsnorm(new_residual, weight, eps), new_residual
