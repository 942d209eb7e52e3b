"""The preallocated CUDA prefill equals the readable forward pass: the last token's logits and the
KV-cache rows it writes, in one chunk and in several, from position 0 and continuing a cache."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ON_GPU, assert_close, requires_cuda
from llama_beta.model import Model
from llama_beta.synth import synth_model, tiny_vocab
from ref.ggml import GGMLType

# Simulator budget: every simulated CUDA thread is a Python thread, so off the GPU the model is one
# small block (Q8_0 matrices, a multiple of 32 wide) and the prompts a few tokens.
SIZE = {} if ON_GPU else dict(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=32,
                                vocab=tiny_vocab(ascii_only=True))
PROMPT = np.array([5, 77, 60, 3, 41, 19, 7, 88, 12] if ON_GPU else [5, 60, 41], np.int32)
ARCHS = ["qwen2", "phi3"] if ON_GPU else ["qwen2"]


def _model(tmp_path, arch):
    path = synth_model(tmp_path / "m.gguf", "micro", arch=arch, matrix_type=GGMLType.Q8_0, **SIZE)
    return Model(path, backend="cuda", context=32)


@requires_cuda
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [2, 512])                 # several chunks (the last one short), one chunk
def test_prefill_matches_forward(tmp_path, arch, chunk):
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, arch)
    c = model.config
    readable, fast = model.new_cache(16), model.new_cache(16)
    want = model.backend.to_host(model.step(PROMPT, 0, readable))[-1]
    got = CudaPrefill(model, chunk=chunk)(PROMPT, 0, fast)
    # Same math, other kernels (fused epilogues, the output norm inside the product): float32 rounding.
    assert_close(got, want, atol=2e-3, rtol=2e-3, name=f"prefill (chunk {chunk}) logits")
    n = len(PROMPT)
    for which in (0, 1):                                       # the key and value rows of every layer
        assert_close(fast[which].copy_to_host()[:, :n], readable[which].copy_to_host()[:, :n],
                     atol=1e-4, rtol=1e-4, name="cache rows")   # rounding of the Q/K/V products only
    assert got.shape == (c.vocab_size,)


@requires_cuda
def test_prefill_continues_a_cache(tmp_path):
    """Prefill after earlier tokens (start_pos > 0) attends to the rows already in the cache."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2")
    head, tail = PROMPT[:2], PROMPT[2:]
    cache = model.new_cache(16)
    prefill = CudaPrefill(model, chunk=4)
    prefill(head, 0, cache)
    got = prefill(tail, len(head), cache)
    want = model.forward(PROMPT)[-1]
    assert_close(got, want, atol=2e-3, rtol=2e-3, name="continued prefill")   # float32 rounding, as above


@requires_cuda
def test_prefill_refuses_a_full_cache(tmp_path):
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2")
    with pytest.raises(ValueError, match="context full"):
        CudaPrefill(model, chunk=4)(PROMPT, 15, model.new_cache(16))
    with pytest.raises(ValueError, match="no tokens"):
        CudaPrefill(model, chunk=4)([], 0, model.new_cache(16))
