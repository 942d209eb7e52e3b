"""The GPU memory plan: how many bytes a model needs on the device, checked before any upload.

.. math::

    \\text{bytes} = \\underbrace{\\textstyle\\sum_\\text{tensors} \\text{nbytes}}_{\\text{weights as stored}}
    + \\underbrace{2 \\cdot L \\cdot S \\cdot n_{kv} \\cdot hs \\cdot 4}_{\\text{KV cache (float32)}}
    + \\text{activations} + \\text{workspace}

Activations are the float32 buffers of one forward pass over a prompt chunk of ``T`` tokens
(the widest are the FFN hidden state ``[T, F]`` and the logits ``[T, V]``); the workspace is
the split-decode attention scratch and the pinned-upload staging buffer's device side.

The budget comes from ``--vram-limit`` (or ``LLAMA_BETA_VRAM_LIMIT``), else the device's free
memory. A model that does not fit is refused with a one-line message stating what it needs
and what is available - before a single byte is uploaded.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from llama_beta.config import ModelError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}


class MemoryBudgetError(ModelError):
    """The model does not fit the GPU memory budget."""


def parse_size(text) -> int:
    """``"8GiB"``, ``"512M"``, ``"1.5gb"`` or a plain byte count -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size '{text}': expected a number with an optional unit such as 512MiB or 8GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    kv_cache: int
    activations: int
    workspace: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.workspace

    def describe(self) -> str:
        return (f"weights {fmt(self.weights)}, KV cache {fmt(self.kv_cache)} for {self.context} tokens, "
                f"activations {fmt(self.activations)}, workspace {fmt(self.workspace)}")


def plan(gguf, cfg, adapter, context: int, prompt_chunk: int = 512, kv_itemsize: int = 4) -> MemoryPlan:
    """Bytes the cuda backend will allocate for this model and context (a KV cache of ``kv_itemsize``-byte
    values: 4 for float32, 2 for float16)."""
    from llama_beta import architectures

    names = set(architectures.expected_tensors(cfg, adapter))
    weights = sum(gguf.tensors[n].nbytes for n in names)
    out = gguf.tensors["token_embd.weight" if cfg.tied_embeddings else "output.weight"]
    if _planar_copy(out):
        weights += out.nbytes                      # matmul v22's second copy of the output matrix (opt-in)
    kv = 2 * cfg.n_layers * context * cfg.n_kv_heads * cfg.head_size * kv_itemsize
    T = min(prompt_chunk, context)
    q_width = cfg.n_heads * cfg.head_size
    per_token = cfg.dim * 3 + q_width * 2 + cfg.n_kv_heads * cfg.head_size * 2 + cfg.ffn_dim * 3 + cfg.vocab_size
    activations = 4 * T * per_token
    n_splits = 1024  # the most split-decode attention ever uses
    workspace = 4 * cfg.n_heads * n_splits * (cfg.head_size + 2) + 4 * f16w_scratch_words(cfg)
    return MemoryPlan(weights, kv, activations, workspace, context)


def f16w_scratch_words(cfg) -> int:
    """uint32 words of the prefill's float16 weight scratch (matmul v23, opt-in; 0 when off): the largest product's
    matrix as float16 pairs, rows padded to whole tiles. ``CudaPrefill`` allocates exactly this."""
    from llama_beta.backends.cuda_prefill import uses_f16w
    from numba_kernels import matmul

    if not uses_f16w(cfg):
        return 0
    q_width = cfg.n_heads * cfg.head_size
    return max(matmul.f16w_words(n, k, parts) for n, k, parts in (
        (q_width + 2 * cfg.n_kv_heads * cfg.head_size, cfg.dim, 3), (cfg.dim, q_width, 1),
        (2 * cfg.ffn_dim, cfg.dim, 1), (cfg.dim, cfg.ffn_dim, 1)))


def _planar_copy(info) -> bool:
    """Whether the cuda backend will keep a two-plane copy of this output matrix (``matmul.planar_q8_0_wanted``)."""
    from numba_kernels import matmul

    return len(info.shape) == 2 and matmul.planar_q8_0_wanted(info.ggml_type, *info.shape)   # shape [N, K]


def budget(limit=None) -> tuple[int, str]:
    """(bytes available, where the number came from): the limit, the environment, or free device memory."""
    if limit is not None:
        return parse_size(limit), "--vram-limit"
    if os.environ.get("LLAMA_BETA_VRAM_LIMIT"):
        return parse_size(os.environ["LLAMA_BETA_VRAM_LIMIT"]), "LLAMA_BETA_VRAM_LIMIT"
    from numba import cuda

    free, _total = cuda.current_context().get_memory_info()
    if free == float("inf"):  # Numba's CUDA simulator reports unlimited memory
        return 1 << 62, "the simulator (unlimited)"
    return int(free), "free device memory"


def check(path, memory_plan: MemoryPlan, available: int, source: str) -> None:
    """Refuse a model that does not fit, naming what it needs and what is available."""
    if memory_plan.total > available:
        raise MemoryBudgetError(f"{path}: needs {fmt(memory_plan.total)} on the GPU ({memory_plan.describe()}) "
                                f"but {fmt(available)} is available ({source})")
