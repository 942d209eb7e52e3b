"""The model: weights mapped from GGUF, and the forward pass written once over a backend.

``forward`` reads top to bottom like llama2.c's ``forward()``: embed the tokens, then for
every block ``x += Attention(RMSNorm(x))`` and ``x += FFN(RMSNorm(x))``, then a final norm and
the output projection to logits. Each stage is a backend call, so the same lines run the
NumPy reference (``backend="numpy"``) and the CUDA kernels (``backend="cuda"``).

.. math::

    h = x + W_o\\,\\mathrm{Attn}(\\mathrm{RoPE}(W_q n),\\ \\mathrm{RoPE}(W_k n),\\ W_v n),\\quad n = \\mathrm{RMSNorm}(x)

    x' = h + W_{down}\\,(\\mathrm{silu}(W_{gate} m) \\odot W_{up} m),\\quad m = \\mathrm{RMSNorm}(h)

Fused tensors (Phi-3's ``attn_qkv`` and ``ffn_up`` holding gate and up) are split by rows
when the weights are mapped, so the forward pass only ever sees separate projections.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from llama_beta.config import ModelConfig, ModelError, load_config
from ref.gguf import GGUFFile


@dataclass
class RopeParams:
    base: float
    dims: int
    neox: bool
    freq_scale: float
    factors: object | None
    attn_factor: float


@dataclass
class LayerWeights:
    attn_norm: object
    wq: object
    wk: object
    wv: object
    wo: object
    ffn_norm: object
    w_gate: object
    w_up: object
    w_down: object


@dataclass
class Weights:
    token_embd: object
    output_norm: object
    output: object
    layers: list = field(default_factory=list)


def map_weights(g: GGUFFile, cfg: ModelConfig, adapter, backend, progress: bool = False) -> Weights:
    """Hand every tensor the forward pass needs to the backend, splitting fused projections by rows."""
    from tqdm import tqdm

    def f32(name) -> np.ndarray:
        values = g.raw(name).view(np.float32).reshape(-1)
        if not np.isfinite(values).all():  # cheap (norms and biases are a few KB) and fatal for every token
            raise ModelError(f"{g.path}: tensor '{name}': expected finite values, found NaN or infinity")
        return values

    def matrix(name, bias_name=None, rows=None):
        """A [N, K] matrix handle; ``rows=(start, stop)`` takes a zero-copy slice of a fused tensor."""
        info = g.tensors[name]
        raw, (n_rows, n_cols) = g.raw(name), info.shape
        if rows is not None:
            raw, n_rows = raw[rows[0]:rows[1]], rows[1] - rows[0]
        bias = None if bias_name is None else f32(bias_name)
        return backend.matrix(raw, info.ggml_type, (n_rows, n_cols), bias)

    def vector(name):
        return backend.vector(f32(name))

    q_rows, kv_rows, F = cfg.n_heads * cfg.head_size, cfg.n_kv_heads * cfg.head_size, cfg.ffn_dim
    layers = []
    for i in tqdm(range(cfg.n_layers), desc="loading layers", disable=not progress, unit="layer"):
        t = adapter.layer_tensors(cfg, i)
        if "wqkv" in t:
            wq = matrix(t["wqkv"], rows=(0, q_rows))
            wk = matrix(t["wqkv"], rows=(q_rows, q_rows + kv_rows))
            wv = matrix(t["wqkv"], rows=(q_rows + kv_rows, q_rows + 2 * kv_rows))
        else:
            wq, wk, wv = (matrix(t[w], t.get(b)) for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))
        if "w_gate_up" in t:
            w_gate, w_up = matrix(t["w_gate_up"], rows=(0, F)), matrix(t["w_gate_up"], rows=(F, 2 * F))
        else:
            w_gate, w_up = matrix(t["w_gate"]), matrix(t["w_up"])
        layers.append(LayerWeights(vector(t["attn_norm"]), wq, wk, wv, matrix(t["wo"]), vector(t["ffn_norm"]),
                                   w_gate, w_up, matrix(t["w_down"])))
    embd = g.tensors["token_embd.weight"]
    token_embd = backend.embedding(g.raw(embd.name), embd.ggml_type, embd.shape)
    output = matrix("token_embd.weight" if cfg.tied_embeddings else "output.weight")
    weights = Weights(token_embd, vector("output_norm.weight"), output, layers)
    backend.prepare(weights)
    return weights


# The KV cache's element types (llama.cpp's --cache-type-k/-v f32 / f16): float16 halves the bytes that decode
# attention reads; each cached value is rounded to 11 significant bits when it is written.
KV_TYPES = {"f32": np.float32, "f16": np.float16}


def rope_params(g: GGUFFile, cfg: ModelConfig, context: int) -> RopeParams:
    """RoPE settings; LongRoPE picks the long factors when the context exceeds the original one."""
    factors = None
    names = cfg.extra.get("rope_factors", [])
    if names:
        long = cfg.rope_orig_context and context > cfg.rope_orig_context
        name = "rope_factors_long.weight" if long and "rope_factors_long.weight" in names else names[-1]
        factors = g.raw(name).view(np.float32).reshape(-1).copy()
    return RopeParams(cfg.rope_base, cfg.rope_dims, cfg.rope_neox, cfg.rope_freq_scale, factors, cfg.attn_factor)


class Model:
    """A loaded model: ``config``, ``tokenizer``, ``forward(ids)`` and ``generate(...)``; its KV caches
    (``new_cache``) hold ``kv_type`` values ("f32" or "f16", ``KV_TYPES``)."""

    def __init__(self, path, backend: str = "auto", context: int | None = None, progress: bool = False,
                 vram_limit=None, kv_type: str = "f32"):
        from llama_beta.backends import get_backend
        from ref import tokenizer as ref_tokenizer

        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type: expected one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        self.path, self.kv_type = path, kv_type
        self._prefill = None             # the cuda prefill's buffers, allocated at the first prefill
        self.gguf = GGUFFile(path)
        self.config, self.adapter = load_config(self.gguf)
        self.tokenizer = ref_tokenizer.load(self.gguf)
        if context is not None and context < 1:
            raise ValueError(f"context: expected at least 1 token, got {context}")
        self.context = min(context or 4096, self.config.context_length)
        if backend == "auto":
            from llama_beta.backends import cuda_usable

            backend = "cuda" if cuda_usable() else "numpy"
        if backend == "cuda":
            from llama_beta.backends import require_cuda

            require_cuda()                  # a clear error on a machine without a GPU, before anything else
            self._check_memory(vram_limit)  # before the backend exists: nothing allocated yet
        options = {"total_bytes": self.memory_plan.weights, "progress": progress} if backend == "cuda" else {}
        self.backend = get_backend(backend, **options)
        self.rope = rope_params(self.gguf, self.config, self.context)
        try:
            # one progress bar: the upload's bytes on the GPU, the layers being dequantized on the CPU
            layer_bar = progress and self.backend.name == "numpy"
            self.weights = map_weights(self.gguf, self.config, self.adapter, self.backend, layer_bar)
        except BaseException:
            self.close()  # an error or Ctrl-C mid-upload leaves no device memory behind
            raise

    def _check_memory(self, vram_limit) -> None:
        """Refuse, before any upload, a model that does not fit the GPU budget."""
        from llama_beta import memory

        self.memory_plan = memory.plan(self.gguf, self.config, self.adapter, self.context,
                                       kv_itemsize=self.kv_itemsize)
        available, source = memory.budget(vram_limit)
        memory.check(self.path, self.memory_plan, available, source)

    @property
    def kv_itemsize(self) -> int:
        """Bytes per cached value: 4 (f32) or 2 (f16)."""
        return np.dtype(KV_TYPES[self.kv_type]).itemsize

    # ------------------------------------------------------------ forward pass
    def new_cache(self, length: int | None = None):
        c = self.config
        return self.backend.kv_cache(c.n_layers, length or self.context, c.n_kv_heads, c.head_size,
                                     KV_TYPES[self.kv_type])

    def forward(self, ids) -> np.ndarray:
        """Logits [T, V] (float32) for a fresh sequence of token ids."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        cache = self.new_cache(max(len(ids), 1))
        return self.backend.to_host(self.step(ids, 0, cache, all_logits=True))

    def step(self, ids, start_pos: int, cache, all_logits: bool = False):
        """Run tokens ``ids`` [T] at positions start_pos.. through the model, extending ``cache``.

        Returns logits [T, V] if ``all_logits`` else [1, V] for the last token (on the backend).
        """
        B, c, W = self.backend, self.config, self.weights
        T = len(ids)
        if start_pos + T > _cache_len(cache):
            raise ValueError(f"context full: {start_pos + T} tokens exceed the cache of {_cache_len(cache)}")
        positions = B.positions(start_pos, T)
        x = B.embed(W.token_embd, ids)                                   # [T, C]
        for i, L in enumerate(W.layers):
            n = B.rmsnorm(x, L.attn_norm, c.norm_eps)                     # [T, C]
            q = B.matmul(n, L.wq).reshape(T, c.n_heads, c.head_size)      # [T, nh, hs]
            k = B.matmul(n, L.wk).reshape(T, c.n_kv_heads, c.head_size)   # [T, nkv, hs]
            v = B.matmul(n, L.wv).reshape(T, c.n_kv_heads, c.head_size)   # [T, nkv, hs]
            q, k = B.rope(q, positions, self.rope), B.rope(k, positions, self.rope)
            a = B.attend(q, k, v, cache, i, start_pos)                    # [T, nh, hs]
            x = B.add(x, B.matmul(a.reshape(T, c.n_heads * c.head_size), L.wo))
            m = B.rmsnorm(x, L.ffn_norm, c.norm_eps)                      # [T, C]
            ffn = B.swiglu(B.matmul(m, L.w_gate), B.matmul(m, L.w_up))    # [T, F]
            x = B.add(x, B.matmul(ffn, L.w_down))                         # [T, C]
        if not all_logits:
            x = x[T - 1:]                                                 # [1, C]
        return B.matmul(B.rmsnorm(x, W.output_norm, c.norm_eps), W.output)  # [T or 1, V]

    @property
    def prefill_variant(self) -> str:
        """"fused" (cuda, unless LLAMA_BETA_PREFILL=readable) or "readable" (:meth:`step`)."""
        fused = self.backend.name == "cuda" and os.environ.get("LLAMA_BETA_PREFILL", "fused") != "readable"
        return "fused" if fused else "readable"

    def prefill(self, ids, start_pos: int, cache) -> np.ndarray:
        """Host logits [V] of the last of ``ids`` [T] at positions start_pos..; ``cache`` gains T rows.

        On the cuda backend this is the preallocated prefill (``backends/cuda_prefill.py``: the same
        math as :meth:`step` with fused products and no allocations); ``LLAMA_BETA_PREFILL=readable``
        selects :meth:`step` instead (for comparisons).
        """
        if self.prefill_variant == "fused":
            if self._prefill is None:
                from llama_beta.backends.cuda_prefill import CudaPrefill

                self._prefill = CudaPrefill(self)
            return self._prefill(ids, start_pos, cache)
        return self.backend.to_host(self.step(np.asarray(ids, np.int32).reshape(-1), start_pos, cache))[-1]

    def decode_fn(self, cache):
        """A function (token, position) -> host logits [V] that extends ``cache`` by one row.

        On the cuda backend this is the preallocated decode step (``backends/cuda_decode.py``):
        the same kernels as :meth:`step` with every buffer allocated once.
        """
        if self.backend.name == "cuda":
            from llama_beta.backends.cuda_decode import CudaDecoder

            return CudaDecoder(self, cache).step_logits
        return lambda token, pos: self.backend.to_host(self.step(np.array([token], np.int32), pos, cache))[-1]

    def token_fn(self, cache, params, seed: int):
        """A function (token, position, step, history, ahead=0) -> the next token id, extending ``cache``
        by one row; its ``finish()`` waits for any work it queued ahead.

        The draw is ``params``' sampling chain with ``uniform(seed, step)``. On the cuda backend
        (without a repetition penalty, which needs the history) the token is chosen on the device
        inside the captured decode step, and ``ahead`` (how many more steps the caller will ask for,
        barring a stop) lets it queue steps before reading this one's token; otherwise the token is
        picked from host logits and ``ahead`` is ignored.
        """
        from llama_beta.generate import pick_token

        if self.backend.name == "cuda" and params.repeat_penalty == 1.0:
            from llama_beta.backends.cuda_decode import CudaDecoder

            decoder = CudaDecoder(self, cache)
            sampler = None if params.temperature <= 0 else (
                params.temperature, params.top_k, params.top_p, params.min_p, seed)

            def next_token(token, pos, step, history, ahead=0):
                return decoder.next_token(token, pos, step, sampler, ahead)
            next_token.finish = decoder.drain
            return next_token
        decode = self.decode_fn(cache)

        def next_token(token, pos, step, history, ahead=0):
            return pick_token(decode(token, pos), history, params, seed, step)
        next_token.finish = lambda: None
        return next_token

    # -------------------------------------------------------------- generation
    def generate(self, prompt, **kwargs):
        """Generate text; see :func:`llama_beta.generate.generate` for the options."""
        from llama_beta.generate import generate

        return generate(self, prompt, **kwargs)

    def close(self) -> None:
        """Free the weights (device memory included) and unmap the file."""
        self.weights = self._prefill = None
        self.backend.close()
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cache_len(cache) -> int:
    return cache[0].shape[1]


def load(model="qwen2.5-coder-0.5b-instruct", backend: str = "auto", context: int | None = None,
         progress: bool | None = None, vram_limit=None, kv_type: str = "f32") -> Model:
    """Load a model by path or registered name (fetched on first use) on a backend (auto, numpy, cuda);
    ``kv_type``: the KV cache's element type, "f32" or "f16" (``KV_TYPES``)."""
    from llama_beta import registry

    if progress is None:
        progress = sys.stderr.isatty() and os.environ.get("LLAMA_BETA_QUIET") != "1"
    path = registry.resolve(model, fetch=True, progress=progress)
    return Model(path, backend=backend, context=context, progress=progress, vram_limit=vram_limit, kv_type=kv_type)
