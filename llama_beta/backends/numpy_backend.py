"""The NumPy backend: the ``ref`` stages on the CPU.

Weight matrices are dequantized to float32 once, at load (``ref.quants``), so that each
matrix product is one BLAS call; the token table stays quantized and is dequantized one
row per token (``ref.embedding``). For the default model this holds about 2 GB of float32
weights and decodes at several tokens per second on two cores.

Where the cuda backend's decode step uses integer dot products (matmul v20: ``LLAMA_BETA_DP4A``, by default
"auto", which takes them for rows of at least 2048 weights: Phi-3-mini's, not Qwen2.5-0.5B's) the one-token products
that the cuda decode step runs on int8 x round x to int8 blocks of 32 here too (``ref.matmul.matmul_x8``), so
that both backends compute the same function and their greedy tokens can be compared. Which products those are
is one choice per launch of the cuda step (``ref.matmul.X8Choice``: the Q/K/V launch, the gate/up launch, and
each plain product), made by :meth:`NumpyBackend.prepare` once the model's matrices are loaded; each matrix
chosen also keeps its integer quants (``ref.matmul.X8Weight``: a byte per weight, a quarter of its float32 copy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ref import attention as ref_attention
from ref import embedding as ref_embedding
from ref import quants, rmsnorm, rope, swiglu
from ref.matmul import X8Choice, X8Weight, matmul_x8, x8_weight

X8 = X8Choice.from_env()   # which one-token products round x to int8 (as the cuda backend's v20 launches)


@dataclass
class Matrix:
    w: np.ndarray            # [N, K] float32
    bias: np.ndarray | None  # [N] float32
    raw: np.ndarray          # [N, row_bytes] uint8, a view of the file
    ggml_type: int
    x8: X8Weight | None = None   # where X8 chooses it, for the one-token products


@dataclass
class Embedding:
    raw: np.ndarray          # [V, row_bytes] uint8, a view of the file
    ggml_type: int
    dim: int                 # C


class NumpyBackend:
    name = "numpy"

    def __init__(self, x8: X8Choice | None = None):
        self.x8 = X8 if x8 is None else x8

    def matrix(self, raw, ggml_type, shape, bias=None) -> Matrix:
        w = quants.dequantize(raw, ggml_type, shape)
        return Matrix(np.ascontiguousarray(w, dtype=np.float32), None if bias is None else self.vector(bias),
                      raw.reshape(shape[0], -1), ggml_type)

    def prepare(self, weights) -> None:
        """After loading: the matrices whose one-token products the cuda decode step runs on int8 x (per launch,
        as ``self.x8`` chooses) get their ``X8Weight``, and those products round x here too."""
        choice = self.x8
        for L in weights.layers:
            qkv = (L.wq, L.wk, L.wv)
            if choice.qkv([m.ggml_type for m in qkv], L.wq.w.shape[1]):
                self.round_x(*qkv)
            if choice.gate_up(L.w_gate.ggml_type, L.w_up.ggml_type, L.w_gate.w.shape[1]):
                self.round_x(L.w_gate, L.w_up)
            if choice.product(L.wo.ggml_type, *L.wo.w.shape):
                self.round_x(L.wo)
            F, K = L.w_down.w.shape[1], L.w_gate.w.shape[1]
            if choice.down(L.w_gate.ggml_type, L.w_up.ggml_type, L.w_down.ggml_type, F, K, L.w_down.w.shape[0]):
                self.round_x(L.w_down)
        if choice.product(weights.output.ggml_type, *weights.output.w.shape):
            self.round_x(weights.output)

    @staticmethod
    def round_x(*matrices: Matrix) -> None:
        """The one-token products of these matrices round x to int8 (``matmul_x8``) from now on."""
        for m in matrices:
            m.x8 = x8_weight(m.raw, m.ggml_type, m.w.shape[1])

    def vector(self, array) -> np.ndarray:
        return np.array(array, dtype=np.float32)

    def embedding(self, raw, ggml_type, shape) -> Embedding:
        return Embedding(raw, ggml_type, shape[1])

    def kv_cache(self, n_layers: int, max_len: int, nkv: int, hs: int, dtype=np.float32):
        shape = (n_layers, max_len, nkv, hs)
        return np.zeros(shape, dtype), np.zeros(shape, dtype)

    # ------------------------------------------------------------------ stages
    def embed(self, table: Embedding, ids) -> np.ndarray:
        return ref_embedding.embed(table.raw, table.ggml_type, table.dim, np.asarray(ids))

    def rmsnorm(self, x, w, eps) -> np.ndarray:
        return rmsnorm.rmsnorm(x, w, eps)

    def matmul(self, x, m: Matrix) -> np.ndarray:
        if m.x8 is not None and x.shape[0] == 1:       # a decode step's product over int8 x
            y = matmul_x8(x[0], m.x8).astype(np.float32)[None]
        else:
            y = x @ m.w.T                               # [T, K] @ [K, N] -> [T, N]
        return y if m.bias is None else y + m.bias

    def rope(self, x, positions, p) -> np.ndarray:
        return rope.rope(x, positions, p.base, rot_dims=p.dims, neox=p.neox, freq_scale=p.freq_scale,
                         freq_factors=p.factors, attn_factor=p.attn_factor)

    def attend(self, q, k, v, cache, layer: int, start_pos: int) -> np.ndarray:
        k_cache, v_cache = cache[0][layer], cache[1][layer]
        ref_attention.kv_append(k, v, k_cache, v_cache, start_pos)
        return ref_attention.attention(q, k_cache, v_cache, start_pos)

    def swiglu(self, gate, up) -> np.ndarray:
        return swiglu.swiglu(gate, up)

    def add(self, a, b) -> np.ndarray:
        return a + b

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def positions(self, start: int, count: int) -> np.ndarray:
        return np.arange(start, start + count, dtype=np.int32)

    def close(self) -> None:
        pass
