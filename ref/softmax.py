r"""Softmax over the last axis.

What it does
    $$ \operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}, \qquad m = \max_j x_j $$

    Subtracting the row maximum ``m`` changes nothing mathematically but keeps every
    exponent ``<= 0``, so ``exp`` cannot overflow and the largest term is exactly 1.
    Entries equal to ``-inf`` (masked positions) get probability 0.

Precision
    float32 exponentials, float32 sum. A row that is entirely ``-inf`` has no softmax and
    gives NaN, as in every framework.

Leaves out
    Temperature (see ``ref.sampling``), the causal mask and scale (see attention), log-softmax.

References
    Milakov & Gimelshein 2018, "Online normalizer calculation for softmax" (the one-pass
    variant the kernel's comments mention); llama.cpp ``ggml_soft_max``.
"""
from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax of ``x`` [..., V] along the last axis; every row sums to 1."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)                       # [..., 1]
    with np.errstate(over="ignore"):                         # x - m may round to -inf: exp gives 0, as wanted
        e = np.exp(x - m)                                   # [..., V], each <= 1
    return e / e.sum(axis=-1, keepdims=True)                # [..., V]
