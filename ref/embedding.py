r"""Token embedding: look up one row of the (quantized) embedding table per token id.

$$ x_t = E[\text{id}_t, :] \in \mathbb{R}^{C}, \qquad E \in \mathbb{R}^{V \times C} $$

The table stays in its GGUF encoding (``token_embd.weight``, e.g. Q5_0 in the Qwen2.5
Q4_K_M mix). Only the T requested rows are dequantized - never the whole V x C table,
which for Qwen2.5-0.5B would be 151936 x 896 floats = 545 MB.

Left out: position embeddings (Qwen2 and Phi-3 use RoPE inside attention instead) and
embedding scaling (Gemma multiplies by sqrt(C); our models do not).
Reference: llama.cpp ``ggml_get_rows`` in ``llm_build_inp_embd``; transformers ``nn.Embedding``.
"""
from __future__ import annotations

import numpy as np

from ref.ggml import GGMLType, row_bytes
from ref.quants import dequantize


# --8<-- [start:embed]
def embed(table_raw: np.ndarray, ggml_type, C: int, ids) -> np.ndarray:
    """table_raw: (V, row_bytes) uint8, one encoded row per token; ids: [T] ints -> [T, C] float32."""
    ggml_type = GGMLType(ggml_type)
    ids = np.asarray(ids).reshape(-1)
    V, nbytes = table_raw.shape
    if nbytes != row_bytes(ggml_type, C):
        raise ValueError(f"embed: a {ggml_type.name} row of {C} weights takes {row_bytes(ggml_type, C)} "
                         f"bytes, the table has {nbytes}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"embed: token ids must be in [0, {V}), got min {ids.min()} max {ids.max()}")
    rows = table_raw[ids]                                   # (T, row_bytes): only the rows asked for
    return dequantize(rows, ggml_type, (ids.size, C))       # (T, C)
# --8<-- [end:embed]
