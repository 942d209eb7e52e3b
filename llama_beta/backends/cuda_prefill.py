"""The CUDA prefill as a fixed sequence of launches over preallocated buffers (a fast path).

The readable forward pass (``llama_beta/model.py``) allocates every activation as it goes:
about 390 launches and as many device allocations for a 24-layer model, and Numba's
deferred frees synchronize the device now and then. Measured on the H200 (512 tokens,
Qwen2.5-0.5B): the allocations and the unfused elementwise launches (add 0.23 ms, RMSNorm
0.20 ms, RoPE 0.23 ms per call, synchronized) cost as much as the products themselves.

This version runs the same math for a prompt (or the part of it not yet in the cache):

- every activation buffer is allocated once, for ``chunk`` tokens ([chunk, C], [chunk, F] ...);
  a longer prompt is processed ``chunk`` tokens at a time (attention sees the cache rows the
  earlier chunks wrote, exactly as it sees a continued prompt);
- the products are the tiled prefill kernels (matmul v10) with their epilogues: W_o and W_down
  add into the residual stream (``accumulate``), and gate/up run as one launch with the SwiGLU;
  each weight matrix gets a ``matmul.PrefillProduct`` that decides its views, bias and tiles once,
  because host time per launch bounds this model's prefill (Numba's argument handling plus the
  checks of the public functions: 140-180 us per launch before, about 60 us after, on the H200);
- only the last token's logits are computed: the final RMSNorm is fused into the output
  product (``matmul.decode_matvec`` with ``norm_weight``), one row of [V].

Per layer: RMSNorm, Q, K, V, RoPE of q and k with the KV append (``rope.rope_qk_append``),
attention, W_o+residual, RMSNorm, gate/up+SwiGLU, W_down+residual: 10 launches (the readable
pass has 16, plus the allocations). ``tests/test_cuda_prefill.py`` checks it against the readable pass.
"""
from __future__ import annotations

import types

import numpy as np
from numba import cuda

from llama_beta.backends.cuda_decode import output_logits
from numba_kernels import attention, embedding, matmul, rmsnorm, rope

DEFAULT_CHUNK = 512                          # tokens per pass: larger tiles fill the GPU better


class CudaPrefill:
    """Prefill for ``model`` (cuda backend); buffers for ``chunk`` tokens, reused by every call."""

    def __init__(self, model, chunk: int = DEFAULT_CHUNK):
        c, p = model.config, model.rope
        self.model, self.chunk = model, chunk

        def buf(n, dtype=np.float32):
            return cuda.device_array(n, dtype)

        # flat buffers (token-major): a T-token view is a prefix, [:T * width]
        self.x, self.n = buf(chunk * c.dim), buf(chunk * c.dim)                       # [T, C]
        self.q, self.att = buf(chunk * c.n_heads * c.head_size), buf(chunk * c.n_heads * c.head_size)
        self.k, self.v = buf(chunk * c.n_kv_heads * c.head_size), buf(chunk * c.n_kv_heads * c.head_size)
        self.h = buf(chunk * c.ffn_dim)                                               # [T, F]
        self.logits = cuda.device_array((1, c.vocab_size), np.float32)                # [1, V]
        self.ids, self.start = buf(chunk, np.int32), buf(1, np.int32)                 # [T], first position
        self._ids_host = cuda.pinned_array(chunk, np.int32)
        self._start_host = cuda.pinned_array(1, np.int32)
        factors = None if p.factors is None else model.backend._factors(p.factors)
        self._rope_args = rope._args(self.q, self.start, p.base, rope._rot_dims(c.head_size, p.dims), p.neox,
                                     p.freq_scale, factors, p.attn_factor)
        self._flash = attention.prefill_version(c.head_size) == "v8"
        self._views_by_tokens = {}                  # T -> the buffers' T-token views (``_views``)
        # the products of every layer, their weight views and tiles decided once
        self._products = [dict(
            q=matmul.PrefillProduct(L.wq.raw, L.wq.ggml_type, L.wq.k, bias=L.wq.bias),
            k=matmul.PrefillProduct(L.wk.raw, L.wk.ggml_type, L.wk.k, bias=L.wk.bias),
            v=matmul.PrefillProduct(L.wv.raw, L.wv.ggml_type, L.wv.k, bias=L.wv.bias),
            o=matmul.PrefillProduct(L.wo.raw, L.wo.ggml_type, L.wo.k, bias=L.wo.bias, accumulate=True),
            gate_up=matmul.PrefillProduct(L.w_gate.raw, L.w_gate.ggml_type, L.w_gate.k,
                                          up=(L.w_up.raw, L.w_up.ggml_type, 0)),
            down=matmul.PrefillProduct(L.w_down.raw, L.w_down.ggml_type, L.w_down.k, bias=L.w_down.bias,
                                       accumulate=True),
        ) for L in model.weights.layers]

    def __call__(self, ids, start_pos: int, cache) -> np.ndarray:
        """Host logits [V] of the last of ``ids`` [T] at positions start_pos..; ``cache`` gains T rows."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        if len(ids) == 0:
            raise ValueError("prefill: no tokens")
        if start_pos + len(ids) > cache[0].shape[1]:
            raise ValueError(f"context full: {start_pos + len(ids)} tokens exceed the cache of {cache[0].shape[1]}")
        starts = range(0, len(ids), self.chunk)
        for at in starts:
            self._chunk(ids[at:at + self.chunk], start_pos + at, cache)
        self._output(len(ids) - starts[-1])          # x holds the last chunk
        return self.logits.copy_to_host()[0]

    def _chunk(self, ids, start: int, cache) -> None:
        """Run ``ids`` [T <= chunk] at positions start.. through every layer (x holds the result)."""
        T, c, W = len(ids), self.model.config, self.model.weights
        self._ids_host[:T] = ids
        self._start_host[0] = start
        self.ids[:T].copy_to_device(self._ids_host[:T])
        self.start.copy_to_device(self._start_host)
        E = W.token_embd
        embedding.embed(E.raw, E.ggml_type, c.dim, self.ids[:T], out=self._views(T).x2)
        for i, L in enumerate(W.layers):
            for _, queue in self.launches(i, L, T, start, cache):
                queue()

    def launches(self, i, L, T: int, start: int, cache):
        """Layer ``i``'s launches for T tokens at positions start.. as ``[(name, queue)]``: x += Attention(
        RMSNorm(x)); x += FFN(RMSNorm(x)). Each ``queue()`` queues one launch (``benchmarks/profile_prefill.py``
        times them one kind at a time)."""
        c, P, V = self.model.config, self._products[i], self._views(T)
        k_cache, v_cache = cache[0][i], cache[1][i]

        def norm(weight):                                                            # n = RMSNorm(x) w
            return lambda: rmsnorm.rmsnorm(V.x2, weight, c.norm_eps, out=V.n2)

        def product(name, a, out):                                                   # out (+)= a W^T + b
            return lambda: P[name](a, out, T)

        def rope_append():                      # RoPE(q) in place; cache rows start.. = RoPE(k), v
            rope.launch_qk_append(V.q3, V.k3, V.v3, k_cache, v_cache, self._rope_args)

        def attend():                                                                # att [T, nh, hs]
            if self._flash:
                attention.launch_prefill_flash(V.q3, k_cache, v_cache, start, V.att3)
            else:
                attention.attention_prefill(V.q3, k_cache, v_cache, start, out=V.att3)

        return [("rmsnorm", norm(L.attn_norm)),
                ("q", product("q", V.n, V.q)), ("k", product("k", V.n, V.k)), ("v", product("v", V.n, V.v)),
                ("rope+append", rope_append),
                ("attention", attend),
                ("w_o+residual", product("o", V.att, V.x)),                             # x += W_o att
                ("rmsnorm", norm(L.ffn_norm)),
                ("gate/up+swiglu", product("gate_up", V.n, V.h)),                       # h = silu(W_g n) W_u n
                ("w_down+residual", product("down", V.h, V.x))]                         # x += W_down h

    def _views(self, T: int):
        """The buffers' first T tokens, flat ([T * width]) and shaped, made once per token count (every
        layer launches on the same views; creating a device-array view costs host time)."""
        views = self._views_by_tokens.get(T)
        if views is None:
            c = self.model.config
            nh, nkv, hs = c.n_heads, c.n_kv_heads, c.head_size
            flat = {name: getattr(self, name)[:T * width] for name, width in
                    (("x", c.dim), ("n", c.dim), ("q", nh * hs), ("k", nkv * hs), ("v", nkv * hs),
                     ("att", nh * hs), ("h", c.ffn_dim))}
            views = self._views_by_tokens[T] = types.SimpleNamespace(
                **flat, x2=flat["x"].reshape(T, c.dim), n2=flat["n"].reshape(T, c.dim),      # [T, C]
                q3=flat["q"].reshape(T, nh, hs), att3=flat["att"].reshape(T, nh, hs),      # [T, nh, hs]
                k3=flat["k"].reshape(T, nkv, hs), v3=flat["v"].reshape(T, nkv, hs))        # [T, nkv, hs]
        return views

    def _output(self, T: int) -> None:
        """logits [1, V] = W_out RMSNorm(x[T-1]): the last token only, the norm inside the product."""
        C = self.model.config.dim
        output_logits(self.model, self.x[(T - 1) * C:T * C], self.logits)
