r"""SwiGLU: the gated activation of the feed-forward block.

What it does
    $$ \operatorname{silu}(g) = \frac{g}{1 + e^{-g}}, \qquad y = \operatorname{silu}(g) \odot u $$

    where ``g = x W_gate`` and ``u = x W_up`` are two projections of the same input; the
    feed-forward output is then ``y W_down``.

    Phi-3 stores ``W_gate`` and ``W_up`` as one fused ``ffn_up`` matrix of 2F rows, so one
    matrix product gives ``gate_up`` [T, 2F]. The gate is the **first** F columns and the up
    projection the **last** F: transformers' ``Phi3MLP`` does ``gate, up = chunk(2, dim=-1)``
    and ggml's ``ggml_swiglu`` (not swapped) applies SiLU to the first half.

Precision
    float32, with ``silu(g) = g / (1 + expf(-g))`` as ggml-cpu's ``ggml_silu_f32``. For very
    negative ``g`` (< -88) ``expf(-g)`` overflows to ``inf`` and ``silu`` returns ``-0.0``,
    which is the correct limit.

Leaves out
    GeGLU and other gated activations; biases.

References
    Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202); transformers
    ``Qwen2MLP`` / ``Phi3MLP``; llama.cpp ``build_ffn`` with ``LLM_FFN_SILU`` / ``LLM_FFN_SWIGLU``.
"""
from __future__ import annotations

import numpy as np


def silu(g: np.ndarray) -> np.ndarray:
    """``g * sigmoid(g)`` in float32, written as ``g / (1 + exp(-g))``."""
    g = np.asarray(g, dtype=np.float32)
    with np.errstate(over="ignore"):                       # exp(-g) -> inf for g < -88: silu -> -0
        return g / (np.float32(1.0) + np.exp(-g))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``silu(gate) * up`` for gate, up of shape [T, F]."""
    up = np.asarray(up, dtype=np.float32)
    return silu(gate) * up                                  # [T, F]


def swiglu_fused(gate_up: np.ndarray) -> np.ndarray:
    """SwiGLU of a fused projection [T, 2F]: gate = first F columns, up = last F."""
    gate_up = np.asarray(gate_up, dtype=np.float32)
    two_f = gate_up.shape[-1]
    if two_f % 2:
        raise ValueError(f"swiglu_fused: last dimension {two_f} is not even")
    f = two_f // 2
    return swiglu(gate_up[..., :f], gate_up[..., f:])       # [T, F]
