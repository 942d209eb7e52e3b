r"""RoPE: rotary position embedding of query and key heads.

What it does
    Split the first ``rot_dims`` entries of every head vector into ``rot_dims/2`` pairs and
    rotate pair ``i`` of the token at position ``p`` by the angle

    $$ \theta_i(p) = \frac{s \; p \; b^{-2i/d}}{f_i}, \qquad i = 0 \dots d/2-1 $$

    (``b`` = ``base``, ``d`` = ``rot_dims``, ``s`` = ``freq_scale``, ``f_i`` = ``freq_factors[i]``):

    $$ \begin{pmatrix} y_a \\ y_b \end{pmatrix} = m
       \begin{pmatrix} \cos\theta_i & -\sin\theta_i \\ \sin\theta_i & \cos\theta_i \end{pmatrix}
       \begin{pmatrix} x_a \\ x_b \end{pmatrix} $$

    with ``m`` = ``attn_factor`` (1 except for LongRoPE). Because a rotation by
    :math:`\theta(p)` followed by a dot product with a rotation by :math:`\theta(q)` only
    sees :math:`\theta(p) - \theta(q)`, attention scores depend on the relative position.

    Which entries form a pair (``ggml_rope_ext`` mode):
    * NEOX / "rotate half" (``neox=True``, Qwen2, Phi-3, transformers' ``rotate_half``):
      pair ``i`` is ``(i, i + d/2)``;
    * NORMAL / interleaved (``neox=False``, llama in GGUF): pair ``i`` is ``(2i, 2i+1)``.
    Entries ``rot_dims .. hs-1`` pass through unchanged.

Precision (the way ggml-cpu's ``ggml_rope_cache_init`` / ``rope_yarn`` do it)
    * ``theta_scale = powf(base, -2.0f / d)`` in float32;
    * the angles are a running float32 product: ``theta_0 = (float) p``,
      ``theta_{i+1} = theta_i * theta_scale``; not ``p * theta_scale**i``, which rounds
      differently (ggml-cuda uses ``powf`` per pair and so differs from ggml-cpu by a few ulp);
    * ``theta = freq_scale * (theta_i / f_i)``, then ``cosf(theta) * m`` and ``sinf(theta) * m``;
    * ``y_a = x_a cos - x_b sin``, ``y_b = x_a sin + x_b cos`` in float32.
    The CUDA kernel does the same running product with the same float32 ``theta_scale``
    (computed once on the host), so angles agree bit for bit and only ``cosf``/``sinf`` differ
    by an ulp or two. Positions must be below 2^24 to be exact in float32.

Leaves out
    YaRN (``ext_factor`` != 0, its ramp and magnitude correction), multi-section RoPE (Qwen2-VL),
    the backward pass; the LongRoPE choice between long/short factors is the caller's.

References
    Su et al. 2021, "RoFormer" (arXiv:2104.09864); transformers ``apply_rotary_pos_emb`` and
    ``rotate_half``; llama.cpp ``ggml_rope_ext`` (ggml-cpu ops.cpp ``rope_yarn``,
    ``ggml_rope_cache_init``, ``rotate_pairs``).
"""
from __future__ import annotations

import numpy as np


def theta_scale(base: float, rot_dims: int) -> np.float32:
    """``powf(base, -2.0f / rot_dims)``: the float32 ratio between consecutive pair angles."""
    exponent = np.float32(-2.0) / np.float32(rot_dims)
    return np.float32(np.power(np.float32(base), exponent))


def rope_angles(positions, rot_dims: int, base: float, freq_scale: float = 1.0,
                freq_factors=None) -> np.ndarray:
    """Angles theta [T, rot_dims/2] in float32, as a running product per token (ggml-cpu order)."""
    pos = np.asarray(positions).astype(np.float32)                # [T]
    half = rot_dims // 2
    steps = np.full((pos.shape[0], half), theta_scale(base, rot_dims), dtype=np.float32)
    steps[:, 0] = pos                                             # [T, d/2]: p, s, s, s ...
    theta = np.multiply.accumulate(steps, axis=1)                 # [T, d/2]: p, p*s, (p*s)*s ...
    if freq_factors is not None:
        theta = theta / np.asarray(freq_factors, dtype=np.float32)  # [T, d/2] / [d/2]
    return np.float32(freq_scale) * theta                         # [T, d/2]


def rope(x, positions, base: float, rot_dims=None, neox: bool = True, freq_scale: float = 1.0,
         freq_factors=None, attn_factor: float = 1.0) -> np.ndarray:
    """Rotate heads ``x`` [T, n_heads, hs] at integer ``positions`` [T]; returns a new array."""
    x = np.asarray(x, dtype=np.float32)
    T, n_heads, hs = x.shape
    d = hs if rot_dims is None else int(rot_dims)
    if d % 2 or d > hs:
        raise ValueError(f"rope: rot_dims={d} must be even and at most the head size {hs}")
    theta = rope_angles(positions, d, base, freq_scale, freq_factors)   # [T, d/2]
    cos = (np.cos(theta) * np.float32(attn_factor))[:, None, :]          # [T, 1, d/2]
    sin = (np.sin(theta) * np.float32(attn_factor))[:, None, :]          # [T, 1, d/2]
    if neox:
        xa, xb = x[..., : d // 2], x[..., d // 2 : d]                   # [T, nh, d/2] each
    else:
        xa, xb = x[..., 0:d:2], x[..., 1:d:2]                           # [T, nh, d/2] each
    y = x.copy()                                                        # dims >= d pass through
    ya, yb = xa * cos - xb * sin, xa * sin + xb * cos                   # [T, nh, d/2]
    if neox:
        y[..., : d // 2], y[..., d // 2 : d] = ya, yb
    else:
        y[..., 0:d:2], y[..., 1:d:2] = ya, yb
    return y
