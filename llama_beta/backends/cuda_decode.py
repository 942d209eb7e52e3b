"""The CUDA decode step as a fixed sequence of launches over preallocated buffers (a fast path).

The readable forward pass (``llama_beta/model.py``) allocates its activations as it goes and
passes per-token values (the position) as host integers. That is fine for prefill, where a
launch does a lot of work, but a decode step is ~400 small launches whose cost is almost all
host time. This version of the decode step is the same math with everything decided up front:

- every activation buffer is allocated once ([1, C], [1, F], [1, V] ...);
- the token id, its position and the cache length live in device memory (``token``, ``pos``,
  ``seq_len``: int32 [1]); a tiny kernel advances them at the end of the step, and the next
  token is chosen on the device (``argmax`` or seeded ``sample``) straight into ``token``;
- every launch takes the same ``stream``.

So a step's launches are identical from token to token - the precondition for capturing the
step once as a CUDA graph and replaying it (the next optimization, to be measured on the GPU).
The result is checked against the readable forward pass in ``tests/test_cuda_decode.py``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from numba_kernels import attention, embedding, matmul, residual, rmsnorm, rope, sampling, swiglu


@cuda.jit
def advance_kernel(pos, seq_len):
    """After a step at position p: the next token goes to p + 1 and the cache holds p + 2 rows."""
    if cuda.grid(1) == 0:
        pos[0] += 1
        seq_len[0] += 1


class CudaDecoder:
    """One decode step of ``model`` (cuda backend) over its KV ``cache``, buffers preallocated."""

    def __init__(self, model, cache, stream=0):
        c, B = model.config, model.backend
        self.model, self.cache, self.stream = model, cache, stream
        q_w, kv_w = c.n_heads * c.head_size, c.n_kv_heads * c.head_size

        def buf(*shape, dtype=np.float32):
            return cuda.device_array(shape, dtype)

        self.x, self.n, self.tmp = buf(1, c.dim), buf(1, c.dim), buf(1, c.dim)
        self.q, self.k, self.v = buf(1, c.n_heads, c.head_size), buf(1, c.n_kv_heads, c.head_size), \
            buf(1, c.n_kv_heads, c.head_size)
        self.att = buf(1, c.n_heads, c.head_size)
        self.gate, self.up = buf(1, c.ffn_dim), buf(1, c.ffn_dim)
        self.logits = buf(1, c.vocab_size)
        self.token, self.pos, self.seq_len = (buf(1, dtype=np.int32) for _ in range(3))
        self.sample_step = buf(1, dtype=np.int32)
        S = cache[0].shape[1]
        n_splits = attention.default_n_splits(S, c.n_kv_heads, c.kv_mul)
        self.workspace = attention.DecodeWorkspace(c.n_heads, c.head_size, n_splits)
        self.factors = None if model.rope.factors is None else B._factors(model.rope.factors)
        self._qw, self._kvw = q_w, kv_w

    def set_state(self, token: int, position: int, sample_step: int = 0) -> None:
        """Place ``token`` at ``position`` (the cache already holds rows 0..position-1)."""
        s = self.stream
        self.token.copy_to_device(np.array([token], np.int32), stream=s)
        self.pos.copy_to_device(np.array([position], np.int32), stream=s)
        self.seq_len.copy_to_device(np.array([position + 1], np.int32), stream=s)
        self.sample_step.copy_to_device(np.array([sample_step], np.int32), stream=s)

    def _rope(self, t):
        p = self.model.rope
        rope.rope(t, self.pos, p.base, rot_dims=p.dims, neox=p.neox, freq_scale=p.freq_scale,
                  freq_factors=self.factors, attn_factor=p.attn_factor, out=t, stream=self.stream)

    def _mv(self, x, W, out):
        matmul.matvec(x, W.raw, W.ggml_type, W.k, bias=W.bias, out=out.reshape(1, W.n), stream=self.stream)

    def launch(self) -> None:
        """Queue one decode step: logits for ``token`` at ``pos``, then advance ``pos``/``seq_len``."""
        c, W, s = self.model.config, self.model.weights, self.stream
        k_cache, v_cache = self.cache
        embedding.embed(W.token_embd.raw, W.token_embd.ggml_type, c.dim, self.token, out=self.x, stream=s)
        for i, L in enumerate(W.layers):
            rmsnorm.rmsnorm(self.x, L.attn_norm, c.norm_eps, out=self.n, stream=s)       # [1, C]
            self._mv(self.n, L.wq, self.q)                                               # [1, nh, hs]
            self._mv(self.n, L.wk, self.k)                                               # [1, nkv, hs]
            self._mv(self.n, L.wv, self.v)
            self._rope(self.q)
            self._rope(self.k)
            attention.kv_append(self.k, self.v, k_cache[i], v_cache[i], self.pos, stream=s)
            attention.attention_decode(self.q, k_cache[i], v_cache[i], self.seq_len, out=self.att, stream=s,
                                       workspace=self.workspace)
            self._mv(self.att.reshape(1, self._qw), L.wo, self.tmp)                       # [1, C]
            residual.add(self.x, self.tmp, out=self.x, stream=s)
            rmsnorm.rmsnorm(self.x, L.ffn_norm, c.norm_eps, out=self.n, stream=s)
            self._mv(self.n, L.w_gate, self.gate)                                        # [1, F]
            self._mv(self.n, L.w_up, self.up)
            swiglu.swiglu(self.gate, self.up, out=self.gate, stream=s)
            self._mv(self.gate, L.w_down, self.tmp)                                      # [1, C]
            residual.add(self.x, self.tmp, out=self.x, stream=s)
        rmsnorm.rmsnorm(self.x, W.output_norm, c.norm_eps, out=self.n, stream=s)
        self._mv(self.n, W.output, self.logits)                                          # [1, V]
        advance_kernel[1, 32, s](self.pos, self.seq_len)

    def choose_greedy(self) -> None:
        """Queue argmax(logits) into ``token`` (the next step's input)."""
        sampling.argmax(self.logits.reshape(self.logits.shape[1]), out=self.token, stream=self.stream)

    def step_logits(self, token: int, position: int) -> np.ndarray:
        """Logits [V] for ``token`` at ``position`` (host copy); the cache gains that row."""
        self.set_state(token, position)
        self.launch()
        return self.logits.copy_to_host(stream=self.stream)[0]
