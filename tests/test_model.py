"""Whole models: the forward pass on both backends, generation, and the transformers oracle.

- A tiny random Qwen2 (``llama_beta.synth``) runs through the NumPy backend and the CUDA
  backend (in the simulator in CI) and gives the same logits.
- Prefill then decode with the KV cache equals one forward over the whole sequence.
- On the real default model, greedy generation of the haiku prompt matches transformers
  (oracle extra) token for token, and the first step's logits are close to its logits.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ON_GPU, assert_close, hf_greedy, requires_cuda
from llama_beta.model import Model
from llama_beta.synth import synth_model, tiny_vocab
from ref.ggml import GGMLType

HAIKU = "Write a haiku about a llama."


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-qwen2.gguf"
    return synth_model(path, "micro", matrix_type=GGMLType.Q8_0, n_layers=2, dim=64, ffn_dim=96)


@pytest.fixture(scope="module")
def nano_qwen(tmp_path_factory):
    """The smallest Qwen2 the simulator can afford: every simulated CUDA thread is a Python thread,
    and one decode step of the 2-layer micro model runs ~37k of them."""
    path = tmp_path_factory.mktemp("models") / "nano-qwen2.gguf"
    return synth_model(path, "micro", vocab=tiny_vocab(ascii_only=True), matrix_type=GGMLType.Q8_0, n_layers=1,
                       dim=32, n_heads=2, n_kv_heads=1, ffn_dim=32)


@pytest.fixture(scope="module")
def numpy_tiny(tiny_qwen):
    return Model(tiny_qwen, backend="numpy", context=64)


def test_kv_cache_decode_equals_full_forward(numpy_tiny):
    ids = np.array([5, 77, 260, 3, 19, 141], np.int32)
    full = numpy_tiny.forward(ids)                                   # [T, V]
    cache = numpy_tiny.new_cache(16)
    numpy_tiny.step(ids[:3], 0, cache)
    steps = [numpy_tiny.step(ids[t:t + 1], t, cache)[-1] for t in range(3, 6)]
    # Same math in another grouping (one row at a time vs all rows): float32 rounding only.
    assert_close(np.stack(steps), full[3:], atol=1e-4, rtol=1e-4, name="decode vs full forward")


def test_logits_are_finite_and_vary(numpy_tiny):
    logits = numpy_tiny.forward([1, 2, 3])
    assert logits.shape == (3, numpy_tiny.config.vocab_size) and np.isfinite(logits).all()
    assert not np.allclose(logits[0], logits[2])


def test_float16_cache_keeps_the_logits_close(tiny_qwen, numpy_tiny):
    """The same steps over a float16 KV cache: a cache of half the bytes, logits within 1e-2 of the float32
    cache's (each cached value moves by at most 2^-11 of itself; two layers carry it to the logits)."""
    half = Model(tiny_qwen, backend="numpy", context=64, kv_type="f16")
    ids = np.array([5, 77, 260, 3, 19, 141], np.int32)
    caches = numpy_tiny.new_cache(8), half.new_cache(8)
    assert caches[1][0].dtype == np.float16 and caches[1][0].nbytes * 2 == caches[0][0].nbytes
    full, rounded = (m.step(ids, 0, c, all_logits=True) for m, c in zip((numpy_tiny, half), caches))
    assert_close(rounded, full, atol=1e-2, rtol=0, name="f16 vs f32 cache logits")
    assert not np.array_equal(rounded[1:], full[1:])                     # the later tokens read rounded rows


@requires_cuda
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_tiny_model_same_logits_on_both_backends(tiny_qwen, nano_qwen, kv_type):
    """Both backends, a KV cache of either type: the CUDA backend's caches hold what the NumPy backend's hold
    (float16: the same round-to-nearest-even of the same float32 values, up to the float32 differences)."""
    path = tiny_qwen if ON_GPU else nano_qwen
    gpu = Model(path, backend="cuda", context=64, kv_type=kv_type)
    cpu = Model(path, backend="numpy", context=64, kv_type=kv_type)
    ids = [5, 77, 60, 3] if ON_GPU else [5, 60]
    # Kernels accumulate dot products in another order than BLAS: float32 rounding, amplified
    # a little through the blocks and the norms.
    assert_close(gpu.forward(ids), cpu.forward(ids), atol=2e-3, rtol=2e-3, name="cuda vs numpy logits (prefill)")
    cache_gpu, cache_cpu = gpu.new_cache(8), cpu.new_cache(8)
    gpu.step(np.array(ids, np.int32), 0, cache_gpu)
    cpu.step(np.array(ids, np.int32), 0, cache_cpu)
    one = np.array([7], np.int32)
    assert_close(gpu.backend.to_host(gpu.step(one, len(ids), cache_gpu)), cpu.step(one, len(ids), cache_cpu),
                 atol=2e-3, rtol=2e-3, name="cuda vs numpy logits (decode with the KV cache)")
    if ON_GPU:  # whole greedy generations are affordable on a real GPU only
        a = gpu.generate("the", chat=False, max_tokens=8, temperature=0)
        b = cpu.generate("the", chat=False, max_tokens=8, temperature=0)
        assert a.ids == b.ids


def test_seeded_generation_repeats(numpy_tiny):
    runs = [numpy_tiny.generate("the", chat=False, max_tokens=6, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                seed=11).ids for _ in range(10)]
    assert all(r == runs[0] for r in runs) and len(runs[0]) > 0


def test_generation_stops_at_stop_string(numpy_tiny):
    r = numpy_tiny.generate("the", chat=False, max_tokens=12, temperature=0)
    assert len(r.text) >= 3, r
    stop = r.text[1:3]
    cut = numpy_tiny.generate("the", chat=False, max_tokens=12, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == r.text[:r.text.find(stop)]


def test_meaningless_settings_are_refused(tiny_qwen, numpy_tiny):
    for context in (0, -5):
        with pytest.raises(ValueError, match=f"context: expected at least 1 token, got {context}"):
            Model(tiny_qwen, backend="numpy", context=context)
    with pytest.raises(ValueError, match="max_tokens must be >= 0, got -1"):
        numpy_tiny.generate("the", chat=False, max_tokens=-1)
    assert numpy_tiny.generate("the", chat=False, max_tokens=0).ids == []
    with pytest.raises(ValueError, match="kv_type: expected one of f32, f16, got 'bf16'"):
        Model(tiny_qwen, backend="numpy", context=8, kv_type="bf16")


# ------------------------------------------------------------------ real model

@pytest.fixture(scope="module")
def qwen_numpy(qwen_model_path):
    return Model(qwen_model_path, backend="numpy", context=256)


@pytest.fixture(scope="module")
def hf_qwen(qwen_model_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(qwen_model_path.parent),
                                                              gguf_file=qwen_model_path.name,
                                                              torch_dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.oracle
def test_haiku_greedy_matches_transformers(qwen_numpy, hf_qwen):
    ours = qwen_numpy.generate(HAIKU, max_tokens=30, temperature=0)
    ids = ours.prompt_ids
    theirs, out = hf_greedy(hf_qwen, ids, 30, qwen_numpy.tokenizer.eot_ids)
    first = out.logits[0][0].numpy()                      # raw logits after the last prompt token
    assert ours.ids == theirs, (qwen_numpy.tokenizer.decode(ours.ids), qwen_numpy.tokenizer.decode(theirs))
    assert len(ours.ids) >= 10 and ours.finish_reason in ("eog", "length")
    mine = qwen_numpy.forward(ids)[-1]
    # Both dequantize the same bytes exactly; only float32 summation order differs (BLAS vs
    # torch) over 24 layers: logits of magnitude ~10-30 agree to a few thousandths.
    assert_close(mine, first, atol=2e-2, rtol=1e-3, name="first-step logits vs transformers")
    assert int(np.argmax(mine)) == int(np.argmax(first))
