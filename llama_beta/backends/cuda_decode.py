"""The CUDA decode step as a fixed sequence of launches, captured once as a CUDA graph (a fast path).

The readable forward pass (``llama_beta/model.py``) allocates its activations as it goes and
passes per-token values (the position) as host integers. That is fine for prefill, where a
launch does a lot of work, but a decode step is hundreds of small launches whose cost from
Python (25-60 us each) is far more than their GPU time (a few us each). This version of the
decode step is the same math with everything decided up front:

- every activation buffer is allocated once ([1, C], [1, F], [1, V] ...);
- the per-token values live in one device int32 array ``state = [token, pos, seq_len, step]``;
  the next token is chosen on the device (``argmax`` or the seeded ``sample``) straight into
  ``state[0]``, and a one-thread kernel advances the rest and records the token;
- every launch takes the same stream, and no launch depends on a host value that changes.

So the launches of a step are identical from token to token, and the step is captured once as
a CUDA graph (``cuda.core``'s GraphBuilder used as the launch stream) and replayed per token:
about 1 us of host time per kernel instead of 25-60 us. And since a step's input token is already
on the device, the host can queue the next steps before it reads this one's token (``next_token``'s
``ahead``): its round trip then overlaps the GPU's work.

Two layer bodies, chosen with ``fused``:
- readable: one launch per stage, as in the forward pass (16 launches per layer);
- fused (default): RMSNorm inside the following products, Q/K/V in one launch, RoPE with the
  KV-cache append (``rope.rope_qk_append``), one-launch split attention, W_o and W_down adding
  into the residual stream, gate/up with SwiGLU; RoPE and the KV append happen inside the Q/K/V
  launch (``matmul.decode_qkv_rope``): 5 launches per layer (``LLAMA_BETA_QKV_ROPE=0``: RoPE and the
  append as ``rope.rope_qk_append``, 6 launches; see ``QKV_ROPE``); with ``LLAMA_BETA_ATTENTION=v7`` (grouped-query
  heads) they happen inside the attention launch instead, measured slower (757 against 789 tok/s).
The fused body's kernels are launched with programmatic dependent launch (sm_90+, ``LLAMA_BETA_PDL=0`` turns
it off): each may start while the one before finishes, touching its weight rows before it waits for the
previous kernel's output (``numba_kernels/ptx.py``); measured 1003 -> 1026 tok/s on the H200.
The results are checked against the readable forward pass in ``tests/test_cuda_decode.py``.
"""
from __future__ import annotations

import collections
import os

import numpy as np
from numba import cuda

from llama_beta.backends.cuda_graphs import GraphStream, graphs_supported
from numba_kernels import attention, embedding, matmul, residual, rmsnorm, rope, sampling, swiglu
from numba_kernels import ptx
from numba_kernels.runtime import JIT_CACHE, programmatic_launch_supported, programmatic_launches

TOKEN, POS, SEQ_LEN, STEP = range(4)      # the fields of ``state``
RUN_AHEAD = 2                             # decode steps queued beyond the one whose token is being read
# Q/K/V, RoPE and the KV append in one launch (matmul v9): 1012 against 960 tok/s on the H200; the default
# since its tests passed on the GPU (fifth session). "0" keeps them as two launches (for comparisons).
QKV_ROPE = os.environ.get("LLAMA_BETA_QKV_ROPE", "1") != "0"
# Programmatic dependent launch of the fused step's kernels (sm_90+, see numba_kernels/ptx.py): each may start
# while the one before finishes (1003 -> 1026 tok/s on the H200, seventh session). "0" launches them plainly.
PDL = os.environ.get("LLAMA_BETA_PDL", "1") != "0"


@cuda.jit(cache=JIT_CACHE)
def advance_kernel(state, history):
    """After a step: record the chosen token, move to the next position, count the step."""
    ptx.allow_next_grid()
    ptx.wait_previous_grid()                  # (PDL: the token is the previous kernel's output)
    if cuda.grid(1) == 0:
        step = state[STEP]
        if step < history.shape[0]:
            history[step] = state[TOKEN]
        state[POS] += 1
        state[SEQ_LEN] += 1
        state[STEP] = step + 1


def output_logits(model, x, logits, stream=0) -> None:
    """logits [1, V] = W_out RMSNorm(x) (+ bias) for one token x [C] or [1, C]: the final norm inside the
    output product, one launch (the decode step's last launch, and the prefill's for its last token)."""
    c, W = model.config, model.weights
    out = W.output
    if getattr(out, "planar", None) is not None:      # v22 (LLAMA_BETA_PLANAR_Q8=1, made by CudaBackend.prepare)
        matmul.launch_planar_q8(x.reshape(out.k), out.planar, logits.reshape(out.n), bias=out.bias,
                                norm_weight=W.output_norm, eps=c.norm_eps, stream=stream)
        return
    matmul.decode_matvec(x, out.raw, out.ggml_type, out.k, logits, bias=out.bias, norm_weight=W.output_norm,
                         eps=c.norm_eps, stream=stream)


class CudaDecoder:
    """One decode step of ``model`` (cuda backend) over its KV ``cache``, buffers preallocated."""

    def __init__(self, model, cache, fused: bool | None = None, use_graph: bool | None = None,
                 history: int = 4096):
        c = model.config
        # LLAMA_BETA_DECODE=readable and LLAMA_BETA_GRAPH=0 select the slower variants (for benchmarks)
        if fused is None:
            fused = os.environ.get("LLAMA_BETA_DECODE", "fused") != "readable"
        if use_graph is None:
            use_graph = graphs_supported() and os.environ.get("LLAMA_BETA_GRAPH", "1") != "0"
        self.model, self.cache, self.fused, self.use_graph = model, cache, fused, use_graph
        # PDL for the fused body only: every kernel it launches waits for its predecessor (ptx.py's rule)
        self.pdl = fused and PDL and programmatic_launch_supported()
        self.graphs = GraphStream(use_graph)          # the launch stream and the captured steps by key

        def buf(*shape, dtype=np.float32):
            return cuda.device_array(shape, dtype)

        self.x, self.n, self.tmp = buf(1, c.dim), buf(1, c.dim), buf(1, c.dim)
        self.q, self.k, self.v = buf(1, c.n_heads, c.head_size), buf(1, c.n_kv_heads, c.head_size), \
            buf(1, c.n_kv_heads, c.head_size)
        self.att = buf(1, c.n_heads, c.head_size)
        self.gate, self.up = buf(1, c.ffn_dim), buf(1, c.ffn_dim)
        self.gate_q = buf(matmul.xq_words(c.ffn_dim), dtype=np.uint32)   # v21: the SwiGLU outputs rounded
        self.logits = buf(1, c.vocab_size)
        self.state = cuda.to_device(np.zeros(4, np.int32))
        self.history = cuda.to_device(np.zeros(history, np.int32))
        self._state_host = cuda.pinned_array(4, np.int32)
        self._ring = cuda.pinned_array(RUN_AHEAD + 2, np.int32)   # the tokens of queued steps, slot step % len
        self._inflight = collections.deque()   # (position, step, graph key, event) of queued steps, oldest first
        self._last = -1                        # the token next_token returned last
        self.token, self.pos = self.state[TOKEN:TOKEN + 1], self.state[POS:POS + 1]
        self.seq_len, self.step = self.state[SEQ_LEN:SEQ_LEN + 1], self.state[STEP:STEP + 1]
        S = cache[0].shape[1]
        version = attention.decode_version(S, c.n_kv_heads, c.kv_mul, c.head_size)
        self.rope_in_attention = version == "v7"   # the fused body's RoPE + append inside attention
        n_splits = attention.decode_splits(version, S, c.n_kv_heads, c.kv_mul)
        self.workspace = attention.DecodeWorkspace(c.n_heads, c.head_size, n_splits)
        self._argmax_ws = sampling.ArgmaxWorkspace(c.vocab_size)   # the multi-block kernels' scratch
        self._topk_ws = sampling.TopKWorkspace(c.vocab_size)
        self.factors = None if model.rope.factors is None else model.backend._factors(model.rope.factors)
        self._qw = c.n_heads * c.head_size
        cuda.synchronize()            # the prefill that filled the cache ran on another stream

    # -------------------------------------------------------------- state
    def set_state(self, token: int, position: int, step: int = 0) -> None:
        """Place ``token`` at ``position`` (the cache already holds rows 0..position-1)."""
        self._state_host[:] = (token, position, position + 1, step)
        self.state.copy_to_device(self._state_host, stream=self.stream)

    # -------------------------------------------------------------- the step
    def _rope(self, t):
        p = self.model.rope
        rope.rope(t, self.pos, p.base, rot_dims=p.dims, neox=p.neox, freq_scale=p.freq_scale,
                  freq_factors=self.factors, attn_factor=p.attn_factor, out=t, stream=self.stream)

    def _mv(self, x, W, out):
        matmul.matvec(x, W.raw, W.ggml_type, W.k, bias=W.bias, out=out.reshape(1, W.n), stream=self.stream)

    def _layer_readable(self, i, L):
        """One launch per stage, the forward pass's order."""
        c, s = self.model.config, self.stream
        k_cache, v_cache = self.cache[0][i], self.cache[1][i]
        rmsnorm.rmsnorm(self.x, L.attn_norm, c.norm_eps, out=self.n, stream=s)       # [1, C]
        self._mv(self.n, L.wq, self.q)                                               # [1, nh, hs]
        self._mv(self.n, L.wk, self.k)                                               # [1, nkv, hs]
        self._mv(self.n, L.wv, self.v)
        self._rope(self.q)
        self._rope(self.k)
        attention.kv_append(self.k, self.v, k_cache, v_cache, self.pos, stream=s)
        attention.attention_decode(self.q, k_cache, v_cache, self.seq_len, out=self.att, stream=s,
                                   workspace=self.workspace)
        self._mv(self.att.reshape(1, self._qw), L.wo, self.tmp)                       # [1, C]
        residual.add(self.x, self.tmp, out=self.x, stream=s)
        rmsnorm.rmsnorm(self.x, L.ffn_norm, c.norm_eps, out=self.n, stream=s)
        self._mv(self.n, L.w_gate, self.gate)                                        # [1, F]
        self._mv(self.n, L.w_up, self.up)
        swiglu.swiglu(self.gate, self.up, out=self.gate, stream=s)
        self._mv(self.gate, L.w_down, self.tmp)                                      # [1, C]
        residual.add(self.x, self.tmp, out=self.x, stream=s)

    def _layer_fused(self, i, L):
        """Five launches: norm+QKV+RoPE+append, attention, W_o+residual, norm+gate/up+SwiGLU, W_down+residual
        (six with LLAMA_BETA_QKV_ROPE=0; attention v7 moves RoPE into attention: see ``fused_launches``)."""
        for _, queue in self.fused_launches(i, L):
            queue()

    def fused_launches(self, i, L):
        """The fused body of layer ``i`` as ``[(name, queue)]``: each ``queue()`` queues one launch
        (``benchmarks/profile_decode.py`` times them one kind at a time)."""
        c, p = self.model.config, self.model.rope
        k_cache, v_cache = self.cache[0][i], self.cache[1][i]
        rope_kw = dict(rot_dims=p.dims, neox=p.neox, freq_scale=p.freq_scale, freq_factors=self.factors,
                       attn_factor=p.attn_factor)
        g, u, d, wo = L.w_gate, L.w_up, L.w_down, L.wo
        mats = [(W.raw, W.ggml_type, W.k, W.bias) for W in (L.wq, L.wk, L.wv)]
        chained = matmul.X8.down_chained(g.ggml_type, u.ggml_type, d.ggml_type, d.k, g.k)
        h_q = self.gate_q if chained else None       # v21: W_down reads h as the gate/up launch rounded it

        def qkv():                                    # n = rmsnorm(x); q, k, v = W_q n, W_k n, W_v n
            matmul.decode_matvec_multi(self.x, mats, [self.q.reshape(1, -1), self.k.reshape(1, -1),
                                                      self.v.reshape(1, -1)],
                                       norm_weight=L.attn_norm, eps=c.norm_eps, stream=self.stream)

        def rope_append():                            # RoPE(q), RoPE(k); cache row pos = k, v
            rope.rope_qk_append(self.q, self.k, self.v, k_cache, v_cache, self.pos, p.base, stream=self.stream,
                                **rope_kw)

        def attend():                                 # att = softmax(q K^T / sqrt(hs)) V over the cache
            attention.attention_decode(self.q, k_cache, v_cache, self.seq_len, out=self.att, stream=self.stream,
                                       workspace=self.workspace)

        def qkv_rope():                               # the two above in one launch (matmul v9)
            matmul.decode_qkv_rope(self.x, mats, self.q, k_cache, v_cache, self.pos, p.base, norm_weight=L.attn_norm,
                                   eps=c.norm_eps, stream=self.stream, **rope_kw)

        def rope_attend():                            # v7: RoPE, append and attention in one launch
            attention.attention_decode_rope(self.q, self.k, self.v, k_cache, v_cache, self.pos, self.seq_len,
                                            p.base, workspace=self.workspace, out=self.att, stream=self.stream,
                                            **rope_kw)

        def w_o():                                    # x += W_o att
            matmul.decode_matvec(self.att.reshape(1, self._qw), wo.raw, wo.ggml_type, wo.k, self.x,
                                 bias=wo.bias, accumulate=True, stream=self.stream)

        def gate_up():                                # h = silu(W_g n) * W_u n, n = rmsnorm(x)
            matmul.decode_matvec_swiglu(self.x, g.raw, u.raw, g.ggml_type, u.ggml_type, g.k, self.gate,
                                        norm_weight=L.ffn_norm, eps=c.norm_eps, stream=self.stream, xq_out=h_q)

        def w_down():                                 # x += W_down h
            matmul.decode_matvec(self.gate, d.raw, d.ggml_type, d.k, self.x, bias=d.bias, accumulate=True,
                                 stream=self.stream, xq=h_q)

        if self.rope_in_attention:
            head = [("norm+qkv", qkv), ("rope+attention", rope_attend)]
        elif QKV_ROPE:
            head = [("norm+qkv+rope+append", qkv_rope), ("attention", attend)]
        else:
            head = [("norm+qkv", qkv), ("rope+append", rope_append), ("attention", attend)]
        return [*head, ("w_o+residual", w_o), ("norm+gate/up+swiglu", gate_up), ("w_down+residual", w_down)]

    def launch(self) -> None:
        """Queue one decode step: logits [1, V] for ``state.token`` at ``state.pos``."""
        W = self.model.weights
        self.embed()
        layer = self._layer_fused if self.fused else self._layer_readable
        for i, L in enumerate(W.layers):
            layer(i, L)
        if self.fused:
            self.output_fused()
        else:
            rmsnorm.rmsnorm(self.x, W.output_norm, self.model.config.norm_eps, out=self.n, stream=self.stream)
            self._mv(self.n, W.output, self.logits)                                  # [1, V]

    def embed(self) -> None:
        """x = the embedding row of ``state.token`` (one row dequantized)."""
        c, E = self.model.config, self.model.weights.token_embd
        embedding.embed(E.raw, E.ggml_type, c.dim, self.token, out=self.x, stream=self.stream)

    def output_fused(self) -> None:
        """logits = W_out rmsnorm(x), one launch."""
        output_logits(self.model, self.x, self.logits, self.stream)

    def _choose(self, sampler) -> None:
        """Queue the choice of the next token into ``state.token``, then advance the state."""
        flat = self.logits.reshape(self.logits.shape[1])
        if sampler is None:
            sampling.argmax(flat, out=self.token, stream=self.stream, workspace=self._argmax_ws)
        else:
            temperature, top_k, top_p, min_p, seed = sampler
            sampling.sample(flat, temperature, top_k, top_p, min_p, seed, self.step, out=self.token,
                            stream=self.stream, workspace=self._topk_ws)
        advance_kernel[1, 32, self.stream](self.state, self.history)

    # -------------------------------------------------------------- graphs
    @property
    def stream(self):
        """Where every launch goes: the graph stream's (a capture points it at the graph builder)."""
        return self.graphs.stream

    def _replay(self, key, queue) -> None:
        """Run ``queue()`` (which queues launches on ``self.stream``) through a graph captured once per key."""
        if not self.use_graph:
            with programmatic_launches(self.pdl):
                queue()
            return
        graph = self.graphs.get(key)
        if graph is None:
            with programmatic_launches(self.pdl):
                queue()                               # once directly: JIT-compiles every kernel first
                self.graphs.synchronize()
                self.graphs.capture(key, queue)
            self.graphs.synchronize()
            return                                    # the direct run already did this step's work
        self.graphs.launch(graph)

    # -------------------------------------------------------------- public steps
    def step_logits(self, token: int, position: int) -> np.ndarray:
        """Logits [V] for ``token`` at ``position`` (host copy); the cache gains that row."""
        self.set_state(token, position)
        self._replay("logits", self.launch)
        return self.logits.copy_to_host(stream=self.stream)[0]

    def next_token(self, token: int, position: int, step: int, sampler=None, ahead: int = 0) -> int:
        """The token after ``token`` at ``position``, chosen on the device (greedy when ``sampler`` is None,
        else ``(temperature, top_k, top_p, min_p, seed)`` with the draw ``uniform(seed, step)``).

        ``ahead``: how many more steps the caller will ask for in sequence (each with the token this
        call returns, at position + 1, step + 1, ...) unless it stops early. Up to ``RUN_AHEAD`` of them
        are queued before this step's token is read, so the host's round trip (write the state,
        launch, copy the token back, wait) overlaps the GPU's work instead of sitting between steps.
        The next step's input is already on the device (``state``), so a queued step needs nothing
        from the host. A call that does not continue the queued sequence waits for it (``drain``)
        and starts afresh; steps queued past where the caller stops only write cache rows beyond
        the last position it used."""
        key = ("next", sampler)
        front = self._inflight[0] if self._inflight else None
        if front is None or front[:3] != (position, step, key) or token != self._last:
            self.drain()
            self.set_state(token, position, step)
            self._queue_step(position, step, key, sampler)
        while len(self._inflight) < 1 + min(ahead, RUN_AHEAD):
            p, s, _, _ = self._inflight[-1]
            self._queue_step(p + 1, s + 1, key, sampler)
        _, _, _, ready = self._inflight.popleft()
        ready.synchronize()
        self._last = int(self._ring[step % len(self._ring)])
        return self._last

    def _queue_step(self, position: int, step: int, key, sampler) -> None:
        """Queue the step at (position, step) and the copy of its token to the host ring; record an event."""
        self._replay(key, lambda: (self.launch(), self._choose(sampler)))
        slot = step % len(self._ring)
        self.token.copy_to_host(self._ring[slot:slot + 1], stream=self.stream)
        ready = cuda.event()
        ready.record(self.stream)
        self._inflight.append((position, step, key, ready))

    def drain(self) -> None:
        """Wait for every queued step (their tokens are dropped)."""
        if self._inflight:
            self.graphs.synchronize()
            self._inflight.clear()

    def choose_greedy(self) -> None:
        """Queue argmax(logits) into ``state.token`` and advance (the next step's input)."""
        self._choose(None)

    def close(self) -> None:
        self.drain()
        self.graphs.close()
