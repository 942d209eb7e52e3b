"""The CUDA backend: the ``numba_kernels`` stages on the GPU.

Weights are uploaded as their raw GGUF bytes (a uint8 device array [N, row_bytes] per
matrix) through one pinned staging buffer, and the matrix kernels dequantize in registers.
Activations are float32 device arrays. This backend runs the readable forward pass one
kernel launch per stage; the captured, fused decode step is a separate fast path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import config, cuda

# The small stages (a norm over one row, the position update) are one-block launches on purpose;
# Numba's low-occupancy warning would interleave with the streamed text.
config.CUDA_LOW_OCCUPANCY_WARNINGS = False

from numba_kernels import attention, embedding, matmul, residual, rmsnorm, rope, swiglu
from numba_kernels.upload import Uploader


@dataclass
class Matrix:
    raw: object              # device uint8 [N, row_bytes]
    ggml_type: int
    n: int                   # N output rows
    k: int                   # K inputs
    bias: object | None      # device float32 [N]
    planar: object | None = None   # matmul.PlanarQ8: v22's two-plane copy (the output product, opt-in)


@dataclass
class Embedding:
    raw: object              # device uint8 [V, row_bytes]
    ggml_type: int
    dim: int                 # C


class CudaBackend:
    name = "cuda"

    def __init__(self, chunk_bytes: int = 64 << 20, total_bytes: int = 0, progress: bool = False):
        self.uploader = Uploader(total_bytes, chunk_bytes=chunk_bytes, progress=progress)
        self.stream = 0
        self._workspaces = {}

    def _upload(self, array):
        return self.uploader.upload(np.ascontiguousarray(array))

    def matrix(self, raw, ggml_type, shape, bias=None) -> Matrix:
        b = None if bias is None else self._upload(np.asarray(bias, np.float32))
        return Matrix(self._upload(raw), ggml_type, shape[0], shape[1], b)

    def prepare(self, weights) -> None:
        """After loading: the kernels choose their launches (``numba_kernels.matmul.X8``) as they run; only
        with ``LLAMA_BETA_PLANAR_Q8=1`` a vocabulary-sized Q8_0 output matrix gets v22's two-plane copy here
        (``matmul.PlanarQ8``: as many bytes again on the device), before any decode step is captured."""
        out = weights.output
        if matmul.planar_q8_0_wanted(out.ggml_type, out.n, out.k):
            out.planar = matmul.PlanarQ8(out.raw, out.k)
            cuda.synchronize()

    def vector(self, array):
        return self._upload(np.asarray(array, np.float32))

    def embedding(self, raw, ggml_type, shape) -> Embedding:
        return Embedding(self._upload(raw), ggml_type, shape[1])

    def kv_cache(self, n_layers: int, max_len: int, nkv: int, hs: int, dtype=np.float32):
        shape = (n_layers, max_len, nkv, hs)
        return cuda.device_array(shape, dtype), cuda.device_array(shape, dtype)

    # ------------------------------------------------------------------ stages
    def embed(self, table: Embedding, ids):
        ids_dev = cuda.to_device(np.asarray(ids, np.int32))
        return embedding.embed(table.raw, table.ggml_type, table.dim, ids_dev)

    def rmsnorm(self, x, w, eps):
        return rmsnorm.rmsnorm(x, w, eps)

    def matmul(self, x, m: Matrix):
        if x.shape[0] == 1:
            return matmul.matvec(x, m.raw, m.ggml_type, m.k, bias=m.bias)
        return matmul.matmul(x, m.raw, m.ggml_type, m.k, bias=m.bias)

    def rope(self, x, positions, p):
        factors = None if p.factors is None else self._factors(p.factors)
        return rope.rope(x, positions, p.base, rot_dims=p.dims, neox=p.neox, freq_scale=p.freq_scale,
                         freq_factors=factors, attn_factor=p.attn_factor)

    def _factors(self, factors):
        key = id(factors)
        if key not in self._workspaces:
            self._workspaces[key] = cuda.to_device(np.asarray(factors, np.float32))
        return self._workspaces[key]

    def attend(self, q, k, v, cache, layer: int, start_pos: int):
        k_cache, v_cache = cache[0][layer], cache[1][layer]
        attention.kv_append(k, v, k_cache, v_cache, cuda.to_device(np.array([start_pos], np.int32)))
        T = q.shape[0]
        if T == 1:
            seq_len = cuda.to_device(np.array([start_pos + 1], np.int32))
            return attention.attention_decode(q, k_cache, v_cache, seq_len).reshape(1, *q.shape[1:])
        return attention.attention_prefill(q, k_cache, v_cache, start_pos)

    def swiglu(self, gate, up):
        return swiglu.swiglu(gate, up)

    def add(self, a, b):
        return residual.add(a, b)

    def to_host(self, x) -> np.ndarray:
        return x.copy_to_host() if hasattr(x, "copy_to_host") else np.asarray(x)

    def positions(self, start: int, count: int):
        return cuda.to_device(np.arange(start, start + count, dtype=np.int32))

    def close(self) -> None:
        """Release the staging buffer and return freed device memory to the driver now."""
        import gc

        self.uploader.close()
        self._workspaces.clear()
        gc.collect()
        pending = getattr(cuda.current_context(), "deallocations", None)  # the simulator defers nothing
        if pending is not None:
            pending.clear()
