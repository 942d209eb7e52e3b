r"""Residual connection: element-wise addition of two activations of the same shape.

What it does
    $$ y = a + b $$
    in float32. In a pre-norm transformer the residual stream ``h`` gets every block's
    output added to it: ``h = h + attention(norm(h))``, ``h = h + ffn(norm(h))``.

Leaves out
    Broadcasting (both inputs have the same shape) and the add that is fused into the next
    RMSNorm (see ``ref.rmsnorm.add_rmsnorm``), which is what the engine uses on the hot path.

References
    He et al. 2015, "Deep Residual Learning"; llama.cpp ``ggml_add`` in ``build_*`` graphs.
"""
from __future__ import annotations

import numpy as np


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return ``a + b`` as float32 (same shape)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"residual add: shapes {a.shape} and {b.shape} differ")
    return a + b
