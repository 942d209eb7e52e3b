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

Per layer: RMSNorm, Q/K/V (one launch with the tensor-core products, ``matmul.PrefillQKV``; three with v10),
RoPE of q and k with the KV append (``rope.rope_qk_append``), attention, W_o+residual, RMSNorm,
gate/up+SwiGLU, W_down+residual: 8 launches (10 with v10; the readable
pass has 16, plus the allocations). ``tests/test_cuda_prefill.py`` checks it against the readable pass.

Graphs and buckets. Even at ~60 us, 240 launches cost 15-29 ms of host time per 512-token chunk, as
much as the GPU's work. So a chunk's launches (the embedding and every layer) are captured once as a
CUDA graph and replayed (``cuda_graphs.GraphStream``, shared with the decode step), which needs launches
whose arguments do not change between calls:

- the first position lives on the device (``self.start``; RoPE and attention v8 read it there), and the
  token ids too (``self.ids``); both are copied in on the launch stream before the graph runs;
- the token count is part of the graph, so a chunk of T tokens runs as Tb = min(chunk, ceil(T / BUCKET)
  BUCKET) tokens (a few graphs cover every prompt length), unless start + Tb would pass the end of the
  cache (then Tb = T). The padded ids are 0. Their rows are computed and thrown away, and their K/V rows
  land in cache positions start+T .. start+Tb-1. That is harmless: causal attention never lets a real
  token see a later position, and whatever runs next (a decode step, a continued prefill) writes
  position p before anything attends to it. The output product reads the last REAL token (row T-1).
- a graph is keyed by (Tb, the cache's device memory and shape): it holds the cache's pointers. A key
  seen for the first time runs directly (the kernels compile); when it comes back it is captured and
  launched; after that it is only launched. At most ``MAX_GRAPHS`` graphs are kept (least recently used
  dropped). The output product and the copies stay outside the graph, on the same stream.

``LLAMA_BETA_PREFILL_GRAPH=0`` (or ``use_graph=False``) runs the launches directly; the simulator always
does, and so does a head size attention v8 lacks (v2 takes the position as a host scalar).

``LLAMA_BETA_PREFILL_X16`` (``x16``): the v11 products read their x as float16 pairs instead of float32 x that
every tile rounds again as it stages it: the same bits (the same ``cvt.rn``), half the bytes each of a product's
row tiles reads. Since the twenty-third session the producers write the pairs themselves: the two RMSNorms
(``matmul.launch_norm_pack_f16``), attention v8 and the SwiGLU launch (their ``out16``), the same bits as the
float32 values packed afterwards; a packing launch (``matmul.launch_pack_f16``) remains only after attention v2.
"auto" (the default since the nineteenth session) takes it for models at least ``X16_MIN_DIM`` wide: on an H100
the Phi-3 twin's 512-token prefill went from 93.9 to 90.3 ms (5,453 -> 5,671 tok/s; docs/benchmarks.md item 29),
then with four packing launches a layer; Qwen2.5-0.5B's (896 wide) was not measured with it and keeps float32 x.
"1" always, "0" never.

``LLAMA_BETA_PREFILL_ATTN_MMA=1`` (opt-in, twenty-third session, not yet timed): attention v9, the flash prefill
on the tensor cores (float16 q, k, v and p; ``attention.launch_prefill_flash_mma``), where v8 would run.

``LLAMA_BETA_PREFILL_F16W=1`` (``f16w``; opt-in, twenty-third session, not yet timed on a GPU): the products are
matmul v23, each a launch that decodes its weight matrix once into a float16 scratch matrix (``matmul.f16w_scratch``,
sized here for the largest product) and a float16 GEMM over it; x is then always packed, in v23's tile order.
Needs every product's K to be a multiple of 32 (``uses_f16w``); the same bits as v11 over x16.
"""
from __future__ import annotations

import collections
import os
import types

import numpy as np
from numba import cuda

from llama_beta import memory
from llama_beta.backends.cuda_decode import output_logits
from llama_beta.backends.cuda_graphs import GraphStream, graphs_supported
from numba_kernels import attention, embedding, matmul, rmsnorm, rope

DEFAULT_CHUNK = 512                          # tokens per pass: larger tiles fill the GPU better
BUCKET = 64                                  # a chunk's token count is rounded up to a multiple of this
MAX_GRAPHS = 8                               # captured chunks kept (each holds ~240 nodes)
X16 = os.environ.get("LLAMA_BETA_PREFILL_X16", "auto")   # v11 over float16-packed x: "auto", "1", "0" (above)
if X16 not in ("auto", "0", "1"):
    raise ValueError(f"LLAMA_BETA_PREFILL_X16: expected auto, 0 or 1, got {X16!r}")
X16_MIN_DIM = 2048                           # "auto": models at least this wide (measured on Phi-3-mini, 3072)


def x16_default(dim: int) -> bool:
    """Whether a model ``dim`` wide prefills over float16-packed x unless told (``LLAMA_BETA_PREFILL_X16``)."""
    return X16 == "1" or (X16 == "auto" and dim >= X16_MIN_DIM)


def uses_x16(dim: int, x16: bool | None = None) -> bool:
    """Whether the prefill of a model ``dim`` wide reads x as float16 pairs: asked for (``x16``, else
    ``x16_default``), and its products are v11 (the tensor cores)."""
    return (x16_default(dim) if x16 is None else x16) and matmul.PREFILL_MMA and matmul.mma_supported()


def uses_f16w(config, f16w: bool | None = None) -> bool:
    """Whether the prefill's products are v23 (weights decoded once to float16, then a GEMM): asked for (``f16w``,
    else ``LLAMA_BETA_PREFILL_F16W``), on the tensor cores, and every product's K a multiple of 32."""
    ks = (config.dim, config.n_heads * config.head_size, config.ffn_dim)
    return ((matmul.F16W if f16w is None else f16w) and matmul.PREFILL_MMA
            and all(matmul.f16w_supported(k) for k in ks))


class CudaPrefill:
    """Prefill for ``model`` (cuda backend); buffers for ``chunk`` tokens, reused by every call.

    bucket: token counts are rounded up to a multiple of it (see the module docstring); use_graph: None
    (graphs where supported, unless LLAMA_BETA_PREFILL_GRAPH=0), True or False; x16: None (``x16_default``),
    True or False: the v11 products read x as float16 pairs (only where the products are v11); f16w: None
    (``LLAMA_BETA_PREFILL_F16W``), True or False: the products are v23 (``uses_f16w``; x16 then always)."""

    def __init__(self, model, chunk: int = DEFAULT_CHUNK, bucket: int = BUCKET, use_graph: bool | None = None,
                 x16: bool | None = None, f16w: bool | None = None):
        c, p = model.config, model.rope
        self.model, self.chunk, self.bucket = model, chunk, bucket
        self._flash = attention.prefill_version(c.head_size) == "v8"
        # attention v9 (tensor cores, float16 operands; opt-in LLAMA_BETA_PREFILL_ATTN_MMA=1) where it serves the head
        self._attn_mma = attention.PREFILL_ATTN_MMA and self._flash and attention.flash_mma_supported(c.head_size)
        if use_graph is None:
            use_graph = graphs_supported() and os.environ.get("LLAMA_BETA_PREFILL_GRAPH", "1") != "0"
        # v2 attention takes the first position as a scalar, which a graph would freeze: no graph without v8
        self.graphs = GraphStream(use_graph and self._flash, MAX_GRAPHS)
        self._seen = collections.deque(maxlen=4 * MAX_GRAPHS)   # keys run once directly, not yet captured

        def buf(n, dtype=np.float32):
            return cuda.device_array(n, dtype)

        # flat buffers (token-major): a T-token view is a prefix, [:T * width]
        self.x, self.n = buf(chunk * c.dim), buf(chunk * c.dim)                       # [T, C]
        self.q, self.att = buf(chunk * c.n_heads * c.head_size), buf(chunk * c.n_heads * c.head_size)
        self.k, self.v = buf(chunk * c.n_kv_heads * c.head_size), buf(chunk * c.n_kv_heads * c.head_size)
        self.h = buf(chunk * c.ffn_dim)                                               # [T, F]
        self.f16w = uses_f16w(c, f16w)
        self.x16 = self.f16w or uses_x16(c.dim, x16)
        if self.f16w:                               # the scratch for the largest decoded weight matrix, made once
            matmul.f16w_scratch(memory.f16w_scratch_words(c))
        if self.x16:                                # the products' x as float16 pairs: [T, C/2], [T, nh hs/2], [T, F/2]
            rows16 = -(-chunk // 16) * 16               # (v23's tile order holds whole blocks of 16 tokens)
            self.n16 = buf(rows16 * c.dim // 2, np.uint32)
            self.att16 = buf(rows16 * c.n_heads * c.head_size // 2, np.uint32)
            self.h16 = buf(rows16 * c.ffn_dim // 2, np.uint32)
        self.logits = cuda.device_array((1, c.vocab_size), np.float32)                # [1, V]
        self.ids, self.start = buf(chunk, np.int32), buf(1, np.int32)                 # [T], first position
        self._ids_host = cuda.pinned_array(chunk, np.int32)
        self._start_host = cuda.pinned_array(1, np.int32)
        self._copied = cuda.event()            # recorded after the copies that read the two pinned arrays
        factors = None if p.factors is None else model.backend._factors(p.factors)
        self._rope_args = rope.kernel_args(self.q, self.start, p.base, c.head_size, p.dims, p.neox, p.freq_scale,
                                           factors, p.attn_factor)
        self._views_by_tokens = {}                  # T -> the buffers' T-token views (``_views``)
        # the products of every layer, their weight views and tiles decided once
        fast = dict(x16=self.x16, f16w=self.f16w)
        # the SwiGLU launch and attention write W_down's and W_o's x16 themselves (no float32 h or att, no packing
        # launch) where they can: widths in whole groups of 32 (v23's tile order needs them; all real models have)
        widths = (c.ffn_dim, c.n_heads * c.head_size)
        self._h_out = (matmul.OUT_TILES if self.f16w else matmul.OUT_PAIRS) \
            if self.x16 and all(w % 32 == 0 for w in widths) else matmul.OUT_F32
        self._products = [dict(
            q=matmul.PrefillProduct(L.wq.raw, L.wq.ggml_type, L.wq.k, bias=L.wq.bias, **fast),
            k=matmul.PrefillProduct(L.wk.raw, L.wk.ggml_type, L.wk.k, bias=L.wk.bias, **fast),
            v=matmul.PrefillProduct(L.wv.raw, L.wv.ggml_type, L.wv.k, bias=L.wv.bias, **fast),
            o=matmul.PrefillProduct(L.wo.raw, L.wo.ggml_type, L.wo.k, bias=L.wo.bias, accumulate=True, **fast),
            gate_up=matmul.PrefillProduct(L.w_gate.raw, L.w_gate.ggml_type, L.w_gate.k,
                                          up=(L.w_up.raw, L.w_up.ggml_type, 0), out16=self._h_out, **fast),
            down=matmul.PrefillProduct(L.w_down.raw, L.w_down.ggml_type, L.w_down.k, bias=L.w_down.bias,
                                       accumulate=True, **fast),
        ) for L in model.weights.layers]
        for P, L in zip(self._products, model.weights.layers):
            if P["q"].mma:                      # v11: Q, K and V in one launch (PrefillQKV)
                P["qkv"] = matmul.PrefillQKV([(L.wq.raw, L.wq.ggml_type, L.wq.bias), (L.wk.raw, L.wk.ggml_type, L.wk.bias),
                                              (L.wv.raw, L.wv.ggml_type, L.wv.bias)], L.wq.k, **fast)

    @property
    def stream(self):
        """Where every launch and copy goes: the graph stream's (a capture points it at the graph builder)."""
        return self.graphs.stream

    def __call__(self, ids, start_pos: int, cache) -> np.ndarray:
        """Host logits [V] of the last of ``ids`` [T] at positions start_pos..; ``cache`` gains T rows."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        if len(ids) == 0:
            raise ValueError("prefill: no tokens")
        if start_pos + len(ids) > cache[0].shape[1]:
            raise ValueError(f"context full: {start_pos + len(ids)} tokens exceed the cache of {cache[0].shape[1]}")
        cuda.synchronize()              # work queued on other streams (a decoder's steps) that uses this cache
        starts = range(0, len(ids), self.chunk)
        for at in starts:
            self._chunk(ids[at:at + self.chunk], start_pos + at, cache)
        self._output(len(ids) - starts[-1])          # x holds the last chunk
        logits = self.logits.copy_to_host(stream=self.stream)
        self.graphs.synchronize()
        return logits[0]

    def bucket_tokens(self, T: int, start: int, cache) -> int:
        """The token count a chunk of T tokens at positions start.. runs as: T rounded up to the bucket, at
        most ``chunk``, or T itself where the padded rows would pass the end of the cache."""
        Tb = min(self.chunk, -(-T // self.bucket) * self.bucket)
        return Tb if start + Tb <= cache[0].shape[1] else T

    def _chunk(self, ids, start: int, cache) -> None:
        """Run ``ids`` [T <= chunk] at positions start.. through every layer as Tb = ``bucket_tokens`` tokens
        (x holds the result; rows T.. are padding)."""
        T = len(ids)
        Tb = self.bucket_tokens(T, start, cache)
        self._copied.synchronize()              # the previous chunk's copies have read the pinned arrays
        self._ids_host[:T] = ids
        self._ids_host[T:Tb] = 0                # padding: token 0 (any valid id)
        self._start_host[0] = start
        self._views(Tb).ids.copy_to_device(self._ids_host[:Tb], stream=self.stream)
        self.start.copy_to_device(self._start_host, stream=self.stream)
        self._copied.record(self.stream)
        self._replay(Tb, cache, lambda: self._layers(Tb, start, cache))

    def _layers(self, T: int, start: int, cache) -> None:
        """Queue x = embedding(ids) and every layer for T tokens (what a graph holds)."""
        c, W = self.model.config, self.model.weights
        E = W.token_embd
        embedding.embed(E.raw, E.ggml_type, c.dim, self._views(T).ids, out=self._views(T).x2, stream=self.stream)
        for i, L in enumerate(W.layers):
            for _, queue in self.launches(i, L, T, start, cache):
                queue()

    def _replay(self, T: int, cache, queue) -> None:
        """Run ``queue()`` directly the first time its key is seen (the kernels compile), capture it as a
        graph and launch that the second time, launch the graph after that. Key: (T, the cache's memory)."""
        if not self.graphs.use_graph:
            queue()
            return
        key = (T, *((a.device_ctypes_pointer.value, a.shape) for a in cache[:2]))   # the graph holds these
        graph = self.graphs.get(key)
        if graph is None and key in self._seen:
            graph = self.graphs.capture(key, queue)
        if graph is None:
            self._seen.append(key)
            queue()
            return
        self.graphs.launch(graph)

    def launches(self, i, L, T: int, start: int, cache):
        """Layer ``i``'s launches for T tokens as ``[(name, queue)]``: x += Attention(RMSNorm(x)); x += FFN(
        RMSNorm(x)). The first position is read from ``self.start`` (``start``, the same value, is used only
        by attention v2). Each ``queue()`` queues one launch on ``self.stream`` (``benchmarks/profile_prefill.py``
        times them one kind at a time)."""
        c, P, V = self.model.config, self._products[i], self._views(T)
        k_cache, v_cache = cache[0][i], cache[1][i]

        def norm(weight):                                                            # n = RMSNorm(x) w
            if self.x16:                            # straight into float16 pairs (the products' x): one launch
                return lambda: matmul.launch_norm_pack_f16(V.x2, weight, c.norm_eps, V.n16, self.stream,
                                                           tile_k=c.dim if self.f16w else 0)
            return lambda: rmsnorm.rmsnorm(V.x2, weight, c.norm_eps, out=V.n2, stream=self.stream)

        def product(name, a, out):                                                   # out (+)= a W^T + b
            return lambda: P[name](a, out, T, self.stream)

        def rope_append():                      # RoPE(q) in place; cache rows start.. = RoPE(k), v
            rope.launch_qk_append(V.q3, V.k3, V.v3, k_cache, v_cache, self._rope_args, stream=self.stream)

        att_out16 = self._h_out if self._flash else matmul.OUT_F32                  # W_o's x16 straight from v8

        flash = attention.launch_prefill_flash_mma if self._attn_mma else attention.launch_prefill_flash

        def attend():                                                                # att [T, nh, hs]
            if att_out16:
                flash(V.q3, k_cache, v_cache, self.start, V.att16, stream=self.stream, out16=att_out16)
            elif self._flash:
                flash(V.q3, k_cache, v_cache, self.start, V.att3, stream=self.stream)
            else:
                attention.attention_prefill(V.q3, k_cache, v_cache, start, out=V.att3, stream=self.stream)

        def pack(a, a16):                                                            # a16 = a as float16 pairs
            return [("pack float16", lambda: matmul.launch_pack_f16(a, a16, a.size, self.stream,
                                                                    tile_k=a.size // T if self.f16w else 0))] \
                if self.x16 else []

        n, att, h = (V.n16, V.att16, V.h16) if self.x16 else (V.n, V.att, V.h)      # the products' x
        if "qkv" in P:                                                               # one launch (v11)
            qkv = [("q/k/v", lambda: P["qkv"](n, (V.q, V.k, V.v), T, self.stream))]
        else:
            qkv = [("q", product("q", n, V.q)), ("k", product("k", n, V.k)), ("v", product("v", n, V.v))]
        return [("rmsnorm", norm(L.attn_norm)),                                      # (x16: packed inside)
                *qkv,
                ("rope+append", rope_append),
                ("attention", attend), *([] if att_out16 else pack(V.att, att)),
                ("w_o+residual", product("o", att, V.x)),                               # x += W_o att
                ("rmsnorm", norm(L.ffn_norm)),
                ("gate/up+swiglu", product("gate_up", n, h if self._h_out else V.h)),  # h = silu(W_g n) W_u n
                *([] if self._h_out else pack(V.h, h)),
                ("w_down+residual", product("down", h, V.x))]                           # x += W_down h

    def _views(self, T: int):
        """The buffers' first T tokens, flat ([T * width]) and shaped, made once per token count (every
        layer launches on the same views; creating a device-array view costs host time)."""
        views = self._views_by_tokens.get(T)
        if views is None:
            c = self.model.config
            nh, nkv, hs = c.n_heads, c.n_kv_heads, c.head_size
            flat = {name: getattr(self, name)[:T * width] for name, width in
                    (("ids", 1), ("x", c.dim), ("n", c.dim), ("q", nh * hs), ("k", nkv * hs), ("v", nkv * hs),
                     ("att", nh * hs), ("h", c.ffn_dim))}
            if self.x16:                            # float16 pairs: half the words (v23: whole blocks of 16 tokens)
                rows16 = -(-T // 16) * 16 if self.f16w else T
                flat.update({name: getattr(self, name)[:rows16 * width // 2] for name, width in
                             (("n16", c.dim), ("att16", nh * hs), ("h16", c.ffn_dim))})
            views = self._views_by_tokens[T] = types.SimpleNamespace(
                **flat, x2=flat["x"].reshape(T, c.dim), n2=flat["n"].reshape(T, c.dim),      # [T, C]
                q3=flat["q"].reshape(T, nh, hs), att3=flat["att"].reshape(T, nh, hs),      # [T, nh, hs]
                k3=flat["k"].reshape(T, nkv, hs), v3=flat["v"].reshape(T, nkv, hs))        # [T, nkv, hs]
        return views

    def _output(self, T: int) -> None:
        """logits [1, V] = W_out RMSNorm(x[T-1]): the last real token only (rows T.. of a bucket are padding),
        the norm inside the product."""
        C = self.model.config.dim
        output_logits(self.model, self.x[(T - 1) * C:T * C], self.logits, self.stream)

    def close(self) -> None:
        """Drop the captured graphs."""
        self.graphs.synchronize()
        self.graphs.close()
