"""The preallocated CUDA prefill equals the readable forward pass: the last token's logits and the
KV-cache rows it writes, in one chunk and in several, from position 0 and continuing a cache; chunks padded
to a bucket of token counts give the unpadded answer; on the GPU, a replayed CUDA graph gives the direct
launches' answer."""
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
ARCHS = ["qwen2", "phi3"]


# Head size 32 (the model above has 16): attention v8, the kernel a captured prefill needs (it reads the start
# position on the device); on the GPU 64, Qwen2.5's.
FLASH_SIZE = dict(n_layers=1, dim=64 if ON_GPU else 32, n_heads=1, n_kv_heads=1, ffn_dim=32,
                  **({} if ON_GPU else dict(vocab=tiny_vocab(ascii_only=True))))


def _model(tmp_path, arch, size=None, kv_type="f32"):
    path = synth_model(tmp_path / "m.gguf", "micro", arch=arch, matrix_type=GGMLType.Q8_0, **(size or SIZE))
    return Model(path, backend="cuda", context=32, kv_type=kv_type)


def _logits_tol(prefill):
    """Tolerance against the readable pass: float32 rounding (fused epilogues, the output norm inside the
    product), or, with the tensor-core products (v11), the float16 rounding of x and W: 2^-10 of the terms."""
    return 1e-2 if prefill._products[0]["q"].mma else 2e-3


UNWRITTEN = -7.0                               # a cache value no prefill writes (rows it must leave alone)


def _record_token_counts(prefill):
    """Make ``prefill`` note the token count each chunk runs as (padded or not) in the list returned."""
    ran, layers = [], prefill._layers
    prefill._layers = lambda T, start, cache: (ran.append(T), layers(T, start, cache))
    return ran


@requires_cuda
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [2, 512])                 # several chunks (the last one short), one chunk
def test_prefill_matches_forward(tmp_path, arch, chunk):
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, arch)
    c = model.config
    readable, fast = model.new_cache(16), model.new_cache(16)
    want = model.backend.to_host(model.step(PROMPT, 0, readable))[-1]
    prefill = CudaPrefill(model, chunk=chunk)
    got = prefill(PROMPT, 0, fast)
    # _logits_tol; the cache rows come from the Q/K/V products alone: float32 rounding, or float16 operands
    # (2^-10 of the terms, ~1e-3 here)
    tol_logits, tol_rows = _logits_tol(prefill), (2e-3 if prefill._products[0]["q"].mma else 1e-4)
    assert_close(got, want, atol=tol_logits, rtol=tol_logits, name=f"prefill (chunk {chunk}) logits")
    n = len(PROMPT)
    for which in (0, 1):                                       # the key and value rows of every layer
        assert_close(fast[which].copy_to_host()[:, :n], readable[which].copy_to_host()[:, :n],
                     atol=tol_rows, rtol=tol_rows, name="cache rows")   # rounding of the Q/K/V products only
    assert got.shape == (c.vocab_size,)


@requires_cuda
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_prefill_continues_a_cache(tmp_path, kv_type):
    """Prefill after earlier tokens (start_pos > 0) attends to the rows already in the cache (of either type;
    the readable pass rounds its float16 cache rows the same way)."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2", kv_type=kv_type)
    head, tail = PROMPT[:2], PROMPT[2:]
    cache = model.new_cache(16)
    prefill = CudaPrefill(model, chunk=4)
    prefill(head, 0, cache)
    got = prefill(tail, len(head), cache)
    want = model.forward(PROMPT)[-1]
    tol = _logits_tol(prefill)
    assert_close(got, want, atol=tol, rtol=tol, name="continued prefill")


@requires_cuda
def test_prefill_refuses_a_full_cache(tmp_path):
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2")
    with pytest.raises(ValueError, match="context full"):
        CudaPrefill(model, chunk=4)(PROMPT, 15, model.new_cache(16))
    with pytest.raises(ValueError, match="no tokens"):
        CudaPrefill(model, chunk=4)([], 0, model.new_cache(16))


@requires_cuda
def test_padded_chunk_equals_the_exact_one(tmp_path):
    """A prompt whose length is not a multiple of the bucket runs padded (ids 0 in rows T..Tb-1): the last real
    token's logits and the cache rows of the real positions are those of the unpadded run."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2", FLASH_SIZE)
    n = len(PROMPT)
    padded, exact = CudaPrefill(model, chunk=16, bucket=4), CudaPrefill(model, chunk=16, bucket=1)
    assert padded._flash, "this test is about attention v8 (the graph path)"
    ran = _record_token_counts(padded)
    cache_p, cache_e = model.new_cache(16), model.new_cache(16)
    for a in (*cache_p, *cache_e):
        a.copy_to_device(np.full(a.shape, UNWRITTEN, np.float32))
    got, want = padded(PROMPT, 0, cache_p), exact(PROMPT, 0, cache_e)
    assert ran == [-(-n // 4) * 4] and n % 4 != 0                  # the chunk really ran padded
    # another token count may pick another product tile (summation order): float32 rounding
    assert_close(got, want, atol=1e-4, rtol=1e-4, name="last token's logits")
    for which in (0, 1):
        k_p, k_e = cache_p[which].copy_to_host(), cache_e[which].copy_to_host()
        assert_close(k_p[:, :n], k_e[:, :n], atol=1e-5, rtol=1e-5, name="real rows")   # the same rounding
        assert (k_p[:, n] != UNWRITTEN).all() and (k_e[:, n] == UNWRITTEN).all()      # padding wrote row n


@requires_cuda
def test_chunk_near_the_end_of_the_cache_is_not_padded(tmp_path):
    """Where start + the padded count would pass the end of the cache, the chunk runs as its exact T (the
    simulator would raise on a write past the cache), and the answer is the readable pass's."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2")
    n = len(PROMPT)
    cache = model.new_cache(n)                                     # no room for padding after the prompt
    prefill = CudaPrefill(model, chunk=16, bucket=4)
    ran = _record_token_counts(prefill)
    got = prefill(PROMPT, 0, cache)
    assert ran == [n] and n % 4 != 0
    assert prefill.bucket_tokens(n, 0, model.new_cache(n + 4)) > n   # with room after it, the prompt is padded
    want = model.forward(PROMPT)[-1]
    tol = _logits_tol(prefill)
    assert_close(got, want, atol=tol, rtol=tol, name="prefill at the end of the cache")


@requires_cuda
@pytest.mark.parametrize("x16", [False, True])
def test_tensor_core_attention_prefill_matches_the_readable_pass(tmp_path, monkeypatch, x16):
    """LLAMA_BETA_PREFILL_ATTN_MMA (attention v9: float16 q, k, v and p on the tensor cores) in the prefill: the
    last token's logits match the readable pass within the float16 rounding, with float32 x and with the
    products' x16 written by v9 itself."""
    from llama_beta.backends.cuda_prefill import CudaPrefill
    from numba_kernels import attention

    monkeypatch.setattr(attention, "PREFILL_ATTN_MMA", True)
    model = _model(tmp_path, "qwen2", FLASH_SIZE)
    prefill = CudaPrefill(model, chunk=16, use_graph=False, x16=x16)
    assert prefill._attn_mma and prefill.x16 == x16
    cache = model.new_cache(16)
    got = prefill(PROMPT, 0, cache)
    want = model.forward(PROMPT)[-1]
    # tol: the float16 products' rounding (_logits_tol) plus attention's float16 operands, 2^-11 of the values
    tol = _logits_tol(prefill) + 2e-3
    assert_close(got, want, atol=tol, rtol=tol, name="prefill with attention v9")
    prefill.close()


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU (the simulator runs the launches directly)")
def test_graph_replay_equals_direct_launches(tmp_path):
    """Three prefills of one bucket (different prompts and start positions) into one cache: the first runs
    directly, the second captures a graph, the third replays it; each equals the graph-free prefill."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, "qwen2", FLASH_SIZE)
    graphed = CudaPrefill(model, chunk=32, bucket=16)
    direct = CudaPrefill(model, chunk=32, bucket=16, use_graph=False)
    assert graphed.graphs.use_graph and not direct.graphs.use_graph
    replays = []
    launch = graphed.graphs.launch
    graphed.graphs.launch = lambda graph: (replays.append(graph), launch(graph))
    rng = np.random.default_rng(0)
    cache_g, cache_d = model.new_cache(32), model.new_cache(32)
    for call, (T, start) in enumerate([(9, 0), (11, 9), (5, 3)]):      # every T runs as 16 tokens
        ids = rng.integers(0, model.config.vocab_size, T).astype(np.int32)
        got, want = graphed(ids, start, cache_g), direct(ids, start, cache_d)
        # the same kernels on the same inputs, recorded or launched: equal up to float32 rounding at most
        assert_close(got, want, atol=1e-6, rtol=1e-6, name=f"call {call} logits")
        for which in (0, 1):
            assert_close(cache_g[which].copy_to_host()[:, :start + T], cache_d[which].copy_to_host()[:, :start + T],
                         atol=1e-6, rtol=1e-6, name=f"call {call} cache rows")   # as above
        assert len(replays) == max(0, call) and len(graphed.graphs.graphs) == min(1, call)
    graphed.close()


def _assert_same_prefill(model, a, b):
    """Prefills a and b of PROMPT give the same logits and cache rows, bit for bit; then both are closed."""
    caches = model.new_cache(32), model.new_cache(32)
    np.testing.assert_array_equal(a(PROMPT, 0, caches[0]), b(PROMPT, 0, caches[1]))
    for which in (0, 1):
        written = slice(0, len(PROMPT))                                # (rows past them were never written)
        np.testing.assert_array_equal(caches[0][which].copy_to_host()[:, written],
                                      caches[1][which].copy_to_host()[:, written])
    a.close()
    b.close()


@requires_cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_float16_packed_x_changes_no_bit(tmp_path, arch):
    """x16 (the v11 products read x as float16 pairs that a launch packs after each producer) gives the same
    logits and cache rows as the products rounding float32 x themselves, bit for bit: the same cvt.rn."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, arch)
    packed = CudaPrefill(model, chunk=8, use_graph=False, x16=True)
    plain = CudaPrefill(model, chunk=8, use_graph=False, x16=False)
    assert packed.x16 and not plain.x16 and packed._products[0]["o"].x16
    names = [name for name, _ in packed.launches(0, model.weights.layers[0], 4, 0, model.new_cache(8))]
    # the norms, attention v8 and the SwiGLU write float16 pairs themselves: a packing launch only after
    # attention v2 (head sizes v8 lacks, as this model's 16 in the simulator)
    assert names.count("pack float16") == (0 if packed._flash else 1) and names.count("rmsnorm") == 2
    _assert_same_prefill(model, packed, plain)


@requires_cuda
@pytest.mark.parametrize("arch, size", [("qwen2", None), ("phi3", None), ("qwen2", FLASH_SIZE)])
def test_float16_weights_decoded_once_change_no_bit(tmp_path, arch, size):
    """f16w (matmul v23: each product decodes its weights once to float16, then a GEMM over x in its tile order,
    which the norms, attention v8 (FLASH_SIZE's head size) or a packing launch, and the SwiGLU write) gives the
    same logits and cache rows as v11 over x16, bit for bit."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    model = _model(tmp_path, arch, size)
    fast = CudaPrefill(model, chunk=8, use_graph=False, f16w=True)
    v11 = CudaPrefill(model, chunk=8, use_graph=False, x16=True, f16w=False)
    assert fast.f16w and fast.x16 and fast._products[0]["down"].f16w and fast._products[0]["qkv"].f16w
    assert not v11.f16w and not v11._products[0]["o"].f16w
    assert fast._flash or size is not FLASH_SIZE                 # (attention v8 writes the pairs itself)
    _assert_same_prefill(model, fast, v11)


def test_f16w_needs_whole_32_weight_groups(monkeypatch):
    """uses_f16w: asked for (argument, else LLAMA_BETA_PREFILL_F16W), on the tensor cores, and every product's K a
    multiple of 32; the memory plan's scratch is 0 when off and the largest product's float16 matrix when on."""
    from types import SimpleNamespace

    from llama_beta import memory
    from llama_beta.backends import cuda_prefill
    from numba_kernels import matmul

    monkeypatch.setattr(matmul, "PREFILL_MMA", True)
    monkeypatch.setattr(matmul, "mma_supported", lambda: True)
    c = SimpleNamespace(dim=896, n_heads=14, n_kv_heads=2, head_size=64, ffn_dim=4864)
    monkeypatch.setattr(matmul, "F16W", False)
    assert not cuda_prefill.uses_f16w(c) and cuda_prefill.uses_f16w(c, True)
    assert memory.f16w_scratch_words(c) == 0
    monkeypatch.setattr(matmul, "F16W", True)
    assert cuda_prefill.uses_f16w(c) and not cuda_prefill.uses_f16w(c, False)
    assert memory.f16w_scratch_words(c) == (2 * 4864 + 128) * 896 // 2          # gate/up: the widest
    assert not cuda_prefill.uses_f16w(SimpleNamespace(**{**vars(c), "ffn_dim": 4864 + 16}))
    monkeypatch.setattr(matmul, "PREFILL_MMA", False)
    assert not cuda_prefill.uses_f16w(c, True)


def test_x16_auto_takes_models_at_least_2048_wide(monkeypatch):
    """LLAMA_BETA_PREFILL_X16: "auto" packs x for models at least X16_MIN_DIM wide (measured on Phi-3-mini, 3072),
    "1" for all, "0" for none; an explicit x16 wins; without the tensor-core products (v10) never."""
    from llama_beta.backends import cuda_prefill
    from numba_kernels import matmul

    monkeypatch.setattr(matmul, "PREFILL_MMA", True)
    monkeypatch.setattr(matmul, "mma_supported", lambda: True)
    for mode, want in [("auto", (True, True, False)), ("1", (True, True, True)), ("0", (False, False, False))]:
        monkeypatch.setattr(cuda_prefill, "X16", mode)
        assert (cuda_prefill.uses_x16(3072), cuda_prefill.uses_x16(2048), cuda_prefill.uses_x16(896)) == want
    assert cuda_prefill.uses_x16(896, True) and not cuda_prefill.uses_x16(3072, False)
    monkeypatch.setattr(matmul, "PREFILL_MMA", False)
    assert not cuda_prefill.uses_x16(3072, True)
