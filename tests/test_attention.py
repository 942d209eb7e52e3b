"""Causal GQA attention over a KV cache: reference invariants, then kernels against the reference.

Tolerances (all float32):
- TOL = atol 2e-5, rtol 1e-4: two float32 computations of the same attention that sum in a different
  order (einsum vs a loop, tiles, splits). Outputs are convex combinations of O(1) values, so each differs
  by a few ulps times log2 of the number of keys; 2e-5 leaves room for 32k-key contexts on the GPU.
- ONES_ATOL 1e-5: with v = 1 the output is sum_s w_s, which is 1 up to float32 rounding of the sum.
- The one-launch decode (v4) uses the same TOL: it computes e^a as 2^(a log2 e) with the GPU's ex2.approx
  (relative error ~2^-22, below float32 summation noise), in a different order again.
- The flash prefill (v8) uses tol(sharpness) too: it pre-scales q by log2(e)/sqrt(hs) (a rounding of q
  instead of the score) and sums over tiles, key slices and a final merge, in another order again.
Data: q, k, v standard normal; q is multiplied by a drawn "sharpness" so some cases have near one-hot
weights (large scores stress the running maximum) and some have nearly flat ones.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, SIMULATOR, assert_close, requires_cuda
from ref import attention as ref

TOL = dict(atol=2e-5, rtol=1e-4)  # different summation order in float32 (see module docstring)


def tol(sharpness):
    """TOL with atol grown with the scores: q is scaled by ``sharpness``, so two summation orders of q.k
    differ by about u sqrt(hs) sharpness (hs 128: ~1e-5 at sharpness 8), and every softmax weight moves by
    that relative amount (seen on the H200: 2.3e-5 at hs 128, sharpness 8, against atol 2e-5)."""
    return dict(atol=TOL["atol"] * max(1.0, sharpness), rtol=TOL["rtol"])
ONES_ATOL = 1e-5  # sum of softmax weights is 1 up to float32 rounding

HEAD_SIZES = [64, 96, 128]
KV_MULS = [1, 2, 7]
# the simulator runs one Python thread per CUDA thread: keep its shapes small, let the GPU grow them
MAX_T = 9 if not ON_GPU else 300
MAX_START = 40 if not ON_GPU else 4096
MAX_CTX = 100 if not ON_GPU else 32768
KERNEL_EXAMPLES = 8 if not ON_GPU else 25


KV_TYPES = [np.float32, np.float16]   # the caches' element types (llama_beta.model.KV_TYPES)


def make_case(seed, T, nkv, kv_mul, hs, start_pos, sharpness=1.0, spare_rows=3, kv_type=np.float32):
    """Random q [T, nh, hs] and caches [S, nkv, hs] of ``kv_type`` whose first start_pos + T rows are
    meaningful (a float16 cache holds the rounded values: kernel and reference read the same numbers)."""
    rng = np.random.default_rng(seed)
    S = start_pos + T + spare_rows  # spare rows past the context: they must never be read
    q = rng.standard_normal((T, nkv * kv_mul, hs), dtype=np.float32) * np.float32(sharpness)
    k_cache = rng.standard_normal((S, nkv, hs), dtype=np.float32)
    v_cache = rng.standard_normal((S, nkv, hs), dtype=np.float32)
    k_cache[start_pos + T:] = np.nan  # poison: a kernel that reads past the context returns NaN
    v_cache[start_pos + T:] = np.nan
    return q, k_cache.astype(kv_type), v_cache.astype(kv_type)


shapes = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**32 - 1),
    T=st.integers(1, 9),
    nkv=st.integers(1, 3),
    kv_mul=st.sampled_from(KV_MULS),
    hs=st.sampled_from(HEAD_SIZES),
    start_pos=st.integers(0, 200),
    sharpness=st.sampled_from([0.1, 1.0, 8.0]),
))


# ------------------------------------------------------------------------------------------------
# reference invariants (NumPy only)
# ------------------------------------------------------------------------------------------------
@settings(deadline=None, max_examples=40)
@given(shapes)
def test_ref_equals_dense_softmax(case):
    """attention (per-query loop) equals softmax(QK^T/sqrt(hs) + causal mask) V built densely."""
    q, kc, vc = make_case(**case)
    assert_close(ref.attention(q, kc, vc, case["start_pos"]), ref.attention_dense(q, kc, vc, case["start_pos"]),
                 **TOL, name="ref vs dense")


@settings(deadline=None, max_examples=20)
@given(shapes)
def test_ref_weights_sum_to_one(case):
    """With every value vector all ones, the output is sum_s w_s = 1 for every query and head."""
    q, kc, vc = make_case(**case)
    vc[:] = 1.0
    for fn in (ref.attention, ref.attention_dense):
        out = fn(q, kc, vc, case["start_pos"])
        assert_close(out, np.ones_like(out), atol=ONES_ATOL, rtol=0, name=fn.__name__)


@settings(deadline=None, max_examples=20)
@given(shapes, st.randoms(use_true_random=False))
def test_ref_single_query_ignores_key_order(case, rnd):
    """One query attends to a set of (key, value) pairs: permuting visible cache rows changes nothing."""
    case["T"] = 1
    q, kc, vc = make_case(**case)
    n = case["start_pos"] + 1
    perm = np.array(rnd.sample(range(n), n))
    kp, vp = kc.copy(), vc.copy()
    kp[:n], vp[:n] = kc[perm], vc[perm]
    assert_close(ref.attention(q, kp, vp, n - 1), ref.attention(q, kc, vc, n - 1), **TOL, name="permuted")


@settings(deadline=None, max_examples=20)
@given(shapes, hnp.arrays(np.float32, 128, elements=st.floats(-4, 4, width=32)))
def test_ref_key_shift_invariance(case, shift):
    """Adding one vector c to every key adds q.c to every score of a query: the softmax does not change."""
    q, kc, vc = make_case(**case)
    kc_shift = kc + shift[: case["hs"]]  # [S, nkv, hs] + [hs]
    assert_close(ref.attention(q, kc_shift, vc, case["start_pos"]), ref.attention(q, kc, vc, case["start_pos"]),
                 atol=1e-4, rtol=1e-3, name="shifted keys")  # scores grow to ~|q||c|: larger float32 rounding


@settings(deadline=None, max_examples=20)
@given(shapes)
def test_ref_prefill_equals_incremental_decode(case):
    """T queries at once equal T single-token steps that append to the cache one row at a time."""
    q, kc, vc = make_case(**case)
    T, start = case["T"], case["start_pos"]
    full = ref.attention(q, kc, vc, start)
    kc2, vc2 = np.full_like(kc, np.nan), np.full_like(vc, np.nan)
    ref.kv_append(kc[:start], vc[:start], kc2, vc2, 0)
    for t in range(T):
        ref.kv_append(kc[start + t:start + t + 1], vc[start + t:start + t + 1], kc2, vc2, start + t)
        assert_close(ref.attention(q[t:t + 1], kc2, vc2, start + t), full[t:t + 1], **TOL, name=f"step {t}")


@settings(deadline=None, max_examples=20)
@given(shapes)
def test_ref_kv_append_writes_exactly_its_rows(case):
    q, kc, vc = make_case(**case)
    T, start = case["T"], case["start_pos"]
    k_new, v_new = kc[:T] + 1.0, vc[:T] - 1.0
    kc2, vc2 = np.full_like(kc, -7.0), np.full_like(vc, -7.0)
    ref.kv_append(k_new, v_new, kc2, vc2, start)
    assert np.array_equal(kc2[start:start + T], k_new) and np.array_equal(vc2[start:start + T], v_new)
    assert (np.delete(kc2, np.s_[start:start + T], axis=0) == -7.0).all()
    assert (np.delete(vc2, np.s_[start:start + T], axis=0) == -7.0).all()
    with pytest.raises(ValueError):
        ref.kv_append(k_new, v_new, kc2, vc2, kc2.shape[0] - T + 1)


@settings(deadline=None, max_examples=20)
@given(shapes)
def test_ref_float16_cache_moves_the_output_within_its_rounding_bound(case):
    """A float16 cache (kv_type="f16") rounds every cached value by at most 2^-11 of itself (values here are
    normal float16). So each score a_s = q.k_s / sqrt(hs) moves by at most delta_s = 2^-11 sum_d |q_d k_sd| /
    sqrt(hs), each softmax weight by a factor within e^(+-2 max delta), and the output, a weighted mean of
    the v_s, by at most ((e^(2 max delta) - 1) + 2^-11) max |v| (+ TOL: the float32 sums)."""
    q, kc, vc = make_case(**case)
    T, start = case["T"], case["start_pos"]
    n = start + T
    kh, vh = kc.astype(np.float16), vc.astype(np.float16)
    ref.kv_append(kc[:n], vc[:n], kh, vh, 0)                          # the append rounds as the cast does
    assert kh.dtype == np.float16 and np.array_equal(kh[:n], kc[:n].astype(np.float16))
    got, exact = ref.attention(q, kh, vh, start), ref.attention(q, kc, vc, start)
    kv_mul = case["kv_mul"]
    qk = np.abs(q.astype(np.float64)).reshape(T, -1, kv_mul, q.shape[2])            # [T, nkv, kv_mul, hs]
    delta = 2.0 ** -11 * np.einsum("tgmd,sgd->tgms", qk, np.abs(kc[:n].astype(np.float64))) / np.sqrt(q.shape[2])
    bound = (np.expm1(2 * delta.max()) + 2.0 ** -11) * np.abs(vc[:n]).max()
    assert_close(got, exact, atol=bound + TOL["atol"], rtol=TOL["rtol"], name="float16 cache vs float32 cache")
    assert not np.array_equal(got, exact)                               # the rounding is visible


# ------------------------------------------------------------------------------------------------
# kernels (CUDA simulator in CI, the GPU for real)
# ------------------------------------------------------------------------------------------------
kernel_shapes = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**32 - 1),
    T=st.integers(1, MAX_T),
    nkv=st.integers(1, 2 if SIMULATOR else 4),
    kv_mul=st.sampled_from(KV_MULS),
    hs=st.sampled_from(HEAD_SIZES),
    start_pos=st.integers(0, MAX_START),
    sharpness=st.sampled_from([0.1, 1.0, 8.0]),
))


@requires_cuda
@settings(deadline=None, max_examples=KERNEL_EXAMPLES)
@given(kernel_shapes)
def test_prefill_kernel_matches_ref(case):
    from numba_kernels import attention as ka

    q, kc, vc = make_case(**case)
    assert_close(ka.attention_prefill(q, kc, vc, case["start_pos"], version="v2"),
                 ref.attention(q, kc, vc, case["start_pos"]), **tol(case["sharpness"]), name="prefill kernel v2")


# ------------------------------------------------------------------------------------------------
# v8: flash prefill (warp = 16-query strip x key slice, S and O micro-tiles in registers)
# ------------------------------------------------------------------------------------------------
# The simulator runs a v8 block as 128 Python threads with two barriers per shuffle (~0.1 s per (block, key
# tile) since tests/cudasim_support.py's barrier): its shapes keep heads x query tiles x key tiles <= 7
FLASH_EXAMPLES = 8 if SIMULATOR else 40


@st.composite
def flash_shapes(draw):
    """T, start_pos, heads and head size for v8 (make_case's arguments)."""
    kv_mul = draw(st.sampled_from(KV_MULS))
    hs = draw(st.sampled_from(HEAD_SIZES))
    if SIMULATOR:  # 7 heads: one query tile, one key tile; 2 heads: one key tile; 1 head: up to three
        T = draw(st.integers(1, 16 if kv_mul == 7 else 20))
        start_pos = draw(st.integers(0, {7: 30, 2: 32, 1: 65}[kv_mul] - T))
    else:
        T, start_pos = draw(st.integers(1, MAX_T)), draw(st.integers(0, MAX_START))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), T=T, nkv=draw(st.integers(1, 1 if SIMULATOR else 4)),
                kv_mul=kv_mul, hs=hs, start_pos=start_pos, sharpness=draw(st.sampled_from([0.1, 1.0, 8.0])),
                kv_type=draw(st.sampled_from(KV_TYPES)))


@requires_cuda
@settings(deadline=None, max_examples=FLASH_EXAMPLES)
@given(flash_shapes())
@example(dict(seed=1, T=1, nkv=1, kv_mul=7, hs=64, start_pos=0, sharpness=1.0))      # one query, one key, 7 heads
@example(dict(seed=2, T=17, nkv=1, kv_mul=1, hs=128, start_pos=0, sharpness=8.0))    # 2 query tiles of 16, one partial
@example(dict(seed=3, T=5, nkv=1, kv_mul=2, hs=96, start_pos=30, sharpness=1.0))     # the queries straddle keys 31|32
@example(dict(seed=4, T=9, nkv=1, kv_mul=7, hs=64, start_pos=7, sharpness=1.0, kv_type=np.float16))  # f16 cache
def test_flash_prefill_matches_ref(case):
    """v8 equals the reference (dense softmax(QK^T / sqrt(hs)) V with the causal mask) for T = 1, T not a
    multiple of the query tile, start_pos > 0 (a continued prompt), head sizes 64/96/128 and GQA ratios 1/2/7,
    float32 and float16 caches; cache rows past the context hold NaN (a read past the last query's position
    fails)."""
    from numba_kernels import attention as ka

    q, kc, vc = make_case(**case)
    got = ka.attention_prefill(q, kc, vc, case["start_pos"], version="v8")
    # tol: float32 sums in another order (tiles, slices, base-2 exponentials) than the reference's einsum
    assert_close(got, ref.attention_dense(q, kc, vc, case["start_pos"]), **tol(case["sharpness"]), name="v8 prefill")


def _v9_atol(case, vc):
    """v9's bound: q, k, v and p rounded to float16 (2^-11 relative each) move a weight by 2^-11 times its score
    (which grows with the sharpness and sqrt(hs)) and a value by 2^-11 (measured in the simulator: 0.5 to 2.4 units
    of 2^-11 max |v|, the bound 3 to 13)."""
    return 2.0 ** -11 * (2 + case["sharpness"] * np.sqrt(case["hs"]) / 8) * float(np.nanmax(np.abs(vc)))


@requires_cuda
@settings(deadline=None, max_examples=1 if SIMULATOR else 40)    # (the simulator's mma: ~10 s an example)
@given(flash_shapes())
@example(dict(seed=1, T=1, nkv=1, kv_mul=7, hs=64, start_pos=0, sharpness=1.0))      # one query, one key, 7 heads
@example(dict(seed=2, T=17, nkv=1, kv_mul=1, hs=128, start_pos=0, sharpness=8.0))    # one partial query tile
@example(dict(seed=3, T=5, nkv=1, kv_mul=2, hs=96, start_pos=60, sharpness=1.0))     # the queries straddle keys 63|64
@example(dict(seed=4, T=9, nkv=1, kv_mul=7, hs=64, start_pos=7, sharpness=1.0, kv_type=np.float16))  # f16 cache
def test_flash_mma_prefill_matches_ref(case):
    """v9 (tensor cores, float16 operands) equals the reference within the float16 rounding of its operands, for
    the shapes of v8's test: T = 1, partial query tiles, start_pos > 0, head sizes 64/96/128, GQA ratios 1/2/7,
    float32 and float16 caches; cache rows past the context hold NaN (a read past the last key fails)."""
    from numba import cuda

    from numba_kernels import attention as ka

    q, kc, vc = make_case(**case)
    T, nh, hs = q.shape
    args = [cuda.to_device(a) for a in (q, kc, vc)]
    pos = cuda.to_device(np.array([case["start_pos"]], np.int32))
    out = cuda.device_array(q.shape, np.float32)
    ka.launch_prefill_flash_mma(*args, pos, out)
    want = ref.attention_dense(q, kc, vc, case["start_pos"])
    assert_close(out.copy_to_host(), want, atol=_v9_atol(case, vc[:case["start_pos"] + T]), rtol=0.0,
                 name="v9 prefill")


@requires_cuda
def test_flash_mma_prefill_writes_the_next_products_float16_pairs():
    """v9's float16-pair output (plain, or v23's tile order with whole blocks of 16 tokens) is its float32 output
    packed by ``matmul.launch_pack_f16``, bit for bit; a head size v9 cannot take is refused."""
    from numba import cuda

    from numba_kernels import attention as ka
    from numba_kernels import matmul as km

    q, kc, vc = make_case(12, 21, 1, 2, 64, 3)
    T, nh, hs = q.shape
    args = [cuda.to_device(a) for a in (q, kc, vc)]
    pos = cuda.to_device(np.array([3], np.int32))
    out = cuda.device_array(q.shape, np.float32)
    ka.launch_prefill_flash_mma(*args, pos, out)
    K = nh * hs
    for out16 in (km.OUT_PAIRS, km.OUT_TILES):
        tile = out16 == km.OUT_TILES
        pairs, packed = (cuda.to_device(np.zeros(km.tile_words(T, K) if tile else T * K // 2, np.uint32)) for _ in "ab")
        km.launch_pack_f16(out.reshape(out.size), packed, out.size, tile_k=K if tile else 0)
        ka.launch_prefill_flash_mma(*args, pos, pairs, out16=out16)
        np.testing.assert_array_equal(pairs.copy_to_host(), packed.copy_to_host())
    with pytest.raises(ValueError, match="head size 40"):
        ka.launch_prefill_flash_mma(cuda.device_array((1, 1, 40), np.float32), *args[1:], pos, out)


@requires_cuda
@pytest.mark.parametrize("hs, kv_mul", [(64, 2), (128, 1)])
def test_flash_prefill_first_query_sees_only_key_0(hs, kv_mul):
    """start_pos = 0: query 0 sees key 0 alone, so its output is v_0 whatever the later keys are (here huge,
    so a masking slip would dominate); and with v = 1 every output is 1 (the weights sum to one)."""
    from numba_kernels import attention as ka

    T = 3
    q, kc, vc = make_case(4, T, 1, kv_mul, hs, 0, sharpness=2.0)
    kc[1:T] *= 1e3  # scores of keys 1, 2 ~ 1e3 sqrt(hs): a key past query 0 leaking in would swamp v_0
    got = ka.attention_prefill(q, kc, vc, 0, version="v8")
    # tol: out_0 = (1 * v_0) / 1 exactly, up to one rounding of the division by l = 2^0 = 1
    assert_close(got[0], np.broadcast_to(vc[0], got[0].shape), atol=0, rtol=1e-7, name="query 0")
    ones = np.ones_like(vc)
    # tol: with v = 1 the output is sum_s w_s = 1 up to float32 rounding of the sum (ONES_ATOL)
    assert_close(ka.attention_prefill(q, kc, ones, 0, version="v8"), np.ones_like(q), atol=ONES_ATOL, rtol=0,
                 name="ones")


@requires_cuda
@pytest.mark.parametrize("hs, tiles, T, start_pos", [
    (64, (4, 1, 2), 20, 13),   # BQ 64, one key slice per strip: no merge
    (96, (1, 4, 1), 20, 5),    # BQ 16, 4 slices of 8 keys: 3 merge slots, two query tiles
    (128, (2, 1, 2), 9, 40),   # BQ 32, BK 16: 4 key tiles
])
def test_flash_prefill_other_tiles(hs, tiles, T, start_pos):
    """The other tile shapes that __main__ sweeps give the reference's answer too."""
    from numba import cuda

    from numba_kernels import attention as ka

    q, kc, vc = make_case(6, T, 1, 1, hs, start_pos, sharpness=4.0)
    out_d = cuda.device_array(q.shape, np.float32)
    pos = cuda.to_device(np.array([start_pos], np.int32))
    ka.launch_prefill_flash(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), pos, out_d, tiles=tiles)
    out = out_d.copy_to_host()
    # tol: float32 sums in another order than the reference, scores scaled by sharpness 4
    assert_close(out, ref.attention_dense(q, kc, vc, start_pos), **tol(4.0), name=f"v8 tiles {tiles}")


@requires_cuda
@pytest.mark.parametrize("hs, tiles", [(64, (4, 1, 2)), (96, (1, 4, 1))])
def test_flash_prefill_writes_the_next_products_float16_pairs(hs, tiles):
    """v8 writing its output as float16 pairs (out16: plain, or v23's tile order with whole blocks of 16 tokens)
    equals its float32 output packed by ``matmul.launch_pack_f16``, bit for bit: the pair's second value comes
    from the next lane; with and without the merge of key slices."""
    from numba import cuda

    from numba_kernels import attention as ka
    from numba_kernels import matmul as km

    T, nh, start = 21, 2, 7
    q, kc, vc = make_case(11, T, 1, nh, hs, start, sharpness=2.0)
    args = [cuda.to_device(a) for a in (q, kc, vc)]
    pos = cuda.to_device(np.array([start], np.int32))
    out = cuda.device_array(q.shape, np.float32)
    ka.launch_prefill_flash(*args, pos, out, tiles=tiles)
    K = nh * hs
    for out16 in (km.OUT_PAIRS, km.OUT_TILES):
        tile = out16 == km.OUT_TILES
        want, got = (cuda.to_device(np.zeros(km.tile_words(T, K) if tile else T * K // 2, np.uint32)) for _ in "ab")
        km.launch_pack_f16(out.reshape(T * K), want, T * K, tile_k=K if tile else 0)
        ka.launch_prefill_flash(*args, pos, got, tiles=tiles, out16=out16)
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())


@requires_cuda
def test_flash_prefill_replays_with_new_position():
    """v8 reads the start position on the device: the very same launch arguments, only pos[0] changed in
    between (as in a replayed CUDA graph), give the reference's answer at each position."""
    from numba import cuda

    from numba_kernels import attention as ka

    T = 3
    q, kc, vc = make_case(9, T, 1, 2, 64, 6, sharpness=2.0)
    args = [cuda.to_device(a) for a in (q, kc, vc)]
    pos, out = cuda.to_device(np.array([0], np.int32)), cuda.device_array(q.shape, np.float32)
    for start in (6, 2):
        pos.copy_to_device(np.array([start], np.int32))
        ka.launch_prefill_flash(*args, pos, out)
        # tol: float32 sums in another order than the reference, scores scaled by sharpness 2
        assert_close(out.copy_to_host(), ref.attention_dense(q, kc, vc, start), **tol(2.0), name=f"start {start}")


@requires_cuda
def test_flash_prefill_fills_out_without_allocating(monkeypatch):
    """With device arrays (the start position too) and out given, attention_prefill allocates nothing and returns
    out itself; a prompt processed in two chunks (the second with start_pos > 0) equals the whole prompt at once."""
    from numba import cuda

    from numba_kernels import attention as ka

    T, start = 6, 0
    q, kc, vc = make_case(8, T, 1, 2, 64, start, sharpness=1.0)
    q_d, kc_d, vc_d = cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc)
    start_d = cuda.to_device(np.array([start], np.int32))
    out = cuda.device_array(q.shape, np.float32)

    def no_alloc(*args, **kwargs):
        raise AssertionError("attention_prefill allocated device memory")

    monkeypatch.setattr(cuda, "device_array", no_alloc)
    monkeypatch.setattr(cuda, "to_device", no_alloc)
    assert ka.attention_prefill(q_d, kc_d, vc_d, start_d, out=out) is out
    monkeypatch.undo()
    whole = out.copy_to_host()
    first = ka.attention_prefill(q[:4], kc, vc, 0)       # chunk 1: positions 0..3
    second = ka.attention_prefill(q[4:], kc, vc, 4)      # chunk 2: positions 4..5 over keys 0..5
    expected = ref.attention(q, kc, vc, start)
    # tol: float32 sums in another order than the reference; the chunks run the very same per-row arithmetic
    assert_close(whole, expected, **TOL, name="whole prompt")
    assert_close(np.concatenate([first, second]), whole, atol=0, rtol=0, name="two chunks")


def test_prefill_version_choice():
    """v8 by default for the head sizes of its table (its shared memory fits), v2 otherwise; unknown versions
    and v8 for a head size it lacks are refused."""
    from numba_kernels import attention as ka

    for hs in (32, 64, 96, 128):
        assert ka.prefill_version(hs) == "v8" and ka.flash_supported(hs)
        qw, kw, tn = ka.flash_tiles(hs)
        assert 4 * ka.flash_smem_floats(hs, qw, kw, tn) <= ka.SMEM_LIMIT
        ka._flash_kernel(hs, qw, kw, tn)  # the factory's assertions, without compiling
    for hs in (40, 80, 256):
        assert ka.prefill_version(hs) == "v2" and not ka.flash_supported(hs)
    q, kc, vc = make_case(0, 2, 1, 1, 80, 0)
    with pytest.raises(ValueError, match="v8"):
        ka.attention_prefill(q, kc, vc, 0, version="v8")
    with pytest.raises(ValueError, match="v9"):
        ka.attention_prefill(q, kc, vc, 0, version="v9")


@requires_cuda
@settings(deadline=None, max_examples=2 if SIMULATOR else 10)
@given(kernel_shapes)
def test_naive_kernel_matches_ref(case):
    from numba import cuda

    from numba_kernels import attention as ka

    case["T"] = min(case["T"], 4)
    q, kc, vc = make_case(**case)
    out = cuda.device_array(q.shape, np.float32)
    seq_len = cuda.to_device(np.array([case["start_pos"] + case["T"]], np.int32))
    ka.launch_naive(cuda.to_device(q), cuda.to_device(kc), cuda.to_device(vc), seq_len, out)
    assert_close(out.copy_to_host(), ref.attention(q, kc, vc, case["start_pos"]), **tol(case["sharpness"]),
                 name="naive kernel")


decode_shapes = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**32 - 1),
    nkv=st.integers(1, 2 if SIMULATOR else 8),
    kv_mul=st.sampled_from(KV_MULS),
    hs=st.sampled_from(HEAD_SIZES),
    seq_len=st.integers(1, MAX_CTX),
    n_splits=st.sampled_from([None, 1, 2, 3, 5]),
    sharpness=st.sampled_from([0.1, 1.0, 8.0]),
    version=st.sampled_from(["v3", "v4", "v6"]),
))


@requires_cuda
@settings(deadline=None, max_examples=KERNEL_EXAMPLES)
@given(decode_shapes)
def test_decode_kernel_matches_ref_and_prefill(case):
    """Flash decoding (v3: split + combine; v4 and v6: one launch) equals the reference, and the prefill
    kernel with T = 1."""
    from numba_kernels import attention as ka

    n = case.pop("seq_len")
    n_splits = case.pop("n_splits")
    version = case.pop("version")
    q, kc, vc = make_case(T=1, start_pos=n - 1, **case)
    expected = ref.attention(q, kc, vc, n - 1)
    got = ka.attention_decode(q[0], kc, vc, np.array([n], np.int32), n_splits=n_splits, version=version)  # [nh, hs]
    assert got.shape == q[0].shape
    assert_close(got, expected[0], **tol(case["sharpness"]), name="decode kernel")
    assert_close(got, ka.attention_prefill(q, kc, vc, n - 1, version="v2")[0], **tol(case["sharpness"]),
                 name="decode vs prefill T=1")  # v2: v8 at T = 1 is test_flash_prefill_matches_ref's


@requires_cuda
def test_decode_replays_with_new_seq_len_and_weights_sum_to_one():
    """One workspace and one launch shape serve every step: only the device seq_len changes (as when a
    captured CUDA graph is replayed); with v = 1 every step returns ones."""
    from numba import cuda

    from numba_kernels import attention as ka

    nkv, kv_mul, hs, s_max = 1, 7, 64, (48 if SIMULATOR else 8192)
    q, kc, vc = make_case(0, 1, nkv, kv_mul, hs, s_max - 1, spare_rows=0)
    ones = np.ones_like(vc)
    kc_d, vc_d, ones_d = cuda.to_device(kc), cuda.to_device(vc), cuda.to_device(ones)
    nh = nkv * kv_mul
    ws = ka.DecodeWorkspace(nh, hs, ka.default_n_splits(s_max, nkv, kv_mul))
    q_d, out = cuda.to_device(q), cuda.device_array((1, nh, hs), np.float32)
    seq_len = cuda.to_device(np.array([1], np.int32))
    for n in ([2, 33] if SIMULATOR else [1, 2, 33, 1000, 4097, s_max]):  # 33 > SPLIT_ALIGN: 2 chunks
        seq_len.copy_to_device(np.array([n], np.int32))
        ka.attention_decode(q_d, kc_d, vc_d, seq_len, out=out, workspace=ws)
        assert_close(out.copy_to_host(), ref.attention(q, kc, vc, n - 1), **TOL, name=f"seq_len {n}")
        ka.attention_decode(q_d, kc_d, ones_d, seq_len, out=out, workspace=ws)
        assert_close(out.copy_to_host(), np.ones((1, nh, hs)), atol=ONES_ATOL, rtol=0, name=f"ones {n}")


# ------------------------------------------------------------------------------------------------
# v4: the one-launch decode (the last block of each kv head to finish merges the chunks)
# ------------------------------------------------------------------------------------------------
one_launch_shapes = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**32 - 1),
    nkv=st.integers(1, 2 if SIMULATOR else 4),
    kv_mul=st.sampled_from(KV_MULS),
    hs=st.sampled_from(HEAD_SIZES),
    seq_len=st.integers(1, MAX_CTX),
    n_splits=st.sampled_from([1, 2, 3, 5, 8]),
    sharpness=st.sampled_from([0.1, 1.0, 8.0]),
    version=st.sampled_from(["v4", "v6"]),
    kv_type=st.sampled_from(KV_TYPES),
))


@requires_cuda
@settings(deadline=None, max_examples=KERNEL_EXAMPLES)
@given(one_launch_shapes)
@example(dict(seed=1, nkv=1, kv_mul=7, hs=64, seq_len=1, n_splits=5, sharpness=1.0, version="v4"))    # one key
@example(dict(seed=2, nkv=1, kv_mul=2, hs=96, seq_len=70, n_splits=3, sharpness=8.0, version="v4"))   # chunks 32, 32, 6
@example(dict(seed=3, nkv=1, kv_mul=1, hs=128, seq_len=40, n_splits=5, sharpness=1.0, version="v4"))  # 2 chunks, 3 empty blocks
@example(dict(seed=4, nkv=1, kv_mul=7, hs=96, seq_len=3, n_splits=5, sharpness=0.1, version="v4"))    # seq_len < n_splits
@example(dict(seed=5, nkv=2, kv_mul=2, hs=64, seq_len=65, n_splits=3, sharpness=1.0, version="v4"))   # two counters
@example(dict(seed=6, nkv=1, kv_mul=12, hs=64, seq_len=40, n_splits=2, sharpness=1.0, version="v4"))  # heads 8 + 4: 2 blocks
@example(dict(seed=7, nkv=1, kv_mul=7, hs=64, seq_len=70, n_splits=1, sharpness=8.0, version="v6"))  # 3 tiles, 1 chunk
@example(dict(seed=8, nkv=1, kv_mul=12, hs=96, seq_len=40, n_splits=2, sharpness=1.0, version="v6"))  # 8 + 4 heads
@example(dict(seed=9, nkv=2, kv_mul=1, hs=128, seq_len=3, n_splits=5, sharpness=1.0, version="v6"))   # 7 spare warps
@example(dict(seed=10, nkv=1, kv_mul=1, hs=96, seq_len=40, n_splits=2, sharpness=1.0, version="v4",
              kv_type=np.float16))                                                     # Phi-3's heads, f16 cache
@example(dict(seed=11, nkv=1, kv_mul=7, hs=64, seq_len=40, n_splits=2, sharpness=1.0, version="v6",
              kv_type=np.float16))                                                     # Qwen2.5's heads, f16 cache
def test_one_launch_decode_equals_dense_softmax(case):
    """v4 and v6 equal softmax(q K^T / sqrt(hs)) V built densely, for any split count (dividing seq_len or
    not, more splits than keys) and float32 or float16 caches, and leave every chunk counter at zero."""
    from numba_kernels import attention as ka

    n, n_splits, version = case.pop("seq_len"), case.pop("n_splits"), case.pop("version")
    q, kc, vc = make_case(T=1, start_pos=n - 1, **case)  # rows past n are NaN: reading one fails the test
    nh, hs = q.shape[1], q.shape[2]
    ws = ka.DecodeWorkspace(nh, hs, n_splits)
    got = ka.attention_decode(q, kc, vc, np.array([n], np.int32), workspace=ws, version=version)
    assert_close(got, ref.attention_dense(q, kc, vc, n - 1), **tol(case["sharpness"]),
                 name=f"one-launch decode {version}")
    assert not ws.count.copy_to_host().any(), "a chunk counter was left set"


@requires_cuda
@pytest.mark.parametrize("version", ["v4", "v6"])
@pytest.mark.parametrize("nkv, kv_mul, hs", [(1, 7, 64), (2, 2, 64)])
def test_one_launch_decode_replays(nkv, kv_mul, hs, version):
    """One launch shape, one workspace, run again and again with only the device seq_len changed (a
    replayed CUDA graph): every run is right, so the combining blocks reset the counters - also
    across runs that need no combine (one chunk) and runs with different numbers of chunks."""
    from numba import cuda

    from numba_kernels import attention as ka

    s_max = 72 if SIMULATOR else 8192
    lens = [70, 1, 33, 72] if SIMULATOR else [4097, 1, 33, 1000, 2, 8192, 5000]  # chunks: 3, 1, 2, 3
    q, kc, vc = make_case(5, 1, nkv, kv_mul, hs, s_max - 1, sharpness=2.0, spare_rows=0)
    nh = nkv * kv_mul
    ws = ka.DecodeWorkspace(nh, hs, 4 if SIMULATOR else ka.decode_splits(version, s_max, nkv, kv_mul))
    q_d, kc_d, vc_d = cuda.to_device(q[0]), cuda.to_device(kc), cuda.to_device(vc)
    out, seq_len = cuda.device_array((nh, hs), np.float32), cuda.to_device(np.array([1], np.int32))
    for n in lens:
        seq_len.copy_to_device(np.array([n], np.int32))
        ka.DECODE_VERSIONS[version](q_d, kc_d, vc_d, seq_len, ws, out)
        assert_close(out.copy_to_host(), ref.attention_dense(q, kc, vc, n - 1)[0], **TOL, name=f"seq_len {n}")
    assert not ws.count.copy_to_host().any()


@requires_cuda
def test_two_launch_layer_equals_reference_layer():
    """A decode layer as the captured step runs it - rope_qk_append, then v4 - equals the reference layer
    (ref.rope on q and k, ref.kv_append, ref.attention), token after token with only the device pos and
    seq_len advancing and one workspace (the context goes from one chunk to two on the way)."""
    from numba import cuda

    from numba_kernels import attention as ka
    from numba_kernels import rope as kr
    from ref import rope as ref_rope

    rng = np.random.default_rng(11)
    nkv, kv_mul, hs, S, start = 1, 7, 64, 40, 31
    nh = nkv * kv_mul
    kc, vc = (rng.standard_normal((S, nkv, hs), dtype=np.float32) for _ in range(2))
    kc_d, vc_d = cuda.to_device(kc), cuda.to_device(vc)
    ws = ka.DecodeWorkspace(nh, hs, 2)
    pos, seq_len = cuda.to_device(np.array([start], np.int32)), cuda.to_device(np.array([start + 1], np.int32))
    for p in range(start, start + 2):  # seq_len 32 (one chunk), then 33 (two)
        pos.copy_to_device(np.array([p], np.int32))
        seq_len.copy_to_device(np.array([p + 1], np.int32))
        q = rng.standard_normal((1, nh, hs), dtype=np.float32)
        k, v = (rng.standard_normal((1, nkv, hs), dtype=np.float32) for _ in range(2))
        q_d = cuda.to_device(q)
        kr.rope_qk_append(q_d, k, v, kc_d, vc_d, pos, 1e6, rot_dims=hs, neox=True, freq_scale=1.0,
                          freq_factors=None, attn_factor=1.0)                       # launch 1
        got = ka.attention_decode(q_d, kc_d, vc_d, seq_len, workspace=ws).copy_to_host()  # launch 2
        ref.kv_append(ref_rope.rope(k, [p], 1e6), v, kc, vc, p)
        assert_close(got, ref.attention(ref_rope.rope(q, [p], 1e6), kc, vc, p), **TOL, name=f"position {p}")
    assert not ws.count.copy_to_host().any()


@requires_cuda
@pytest.mark.parametrize("kv_mul, hs, neox, rot_dims, factors, attn_factor", [
    (7, 64, True, 64, False, 1.0),      # Qwen2.5-0.5B's heads
    (4, 96, False, 64, True, 1.25),     # interleaved pairs, partial rotation, LongRoPE-style factors
])
def test_rope_inside_attention_equals_reference_layer(kv_mul, hs, neox, rot_dims, factors, attn_factor):
    """v7 (RoPE of q and k and the KV append inside the v6 launch) equals the reference layer - ref.rope on
    q and k, ref.kv_append, ref.attention - token after token with only the device pos and seq_len
    advancing, one workspace, cache rows not yet written holding NaN (the new row must replace them)."""
    from numba import cuda

    from numba_kernels import attention as ka
    from ref import rope as ref_rope

    rng = np.random.default_rng(12)
    nkv, S, start = 1, 40, 31
    nh = nkv * kv_mul
    ff = rng.uniform(1.0, 4.0, rot_dims // 2).astype(np.float32) if factors else None
    kc, vc = (rng.standard_normal((S, nkv, hs), dtype=np.float32) for _ in range(2))
    kc[start:] = np.nan
    vc[start:] = np.nan
    kc_d, vc_d = cuda.to_device(kc), cuda.to_device(vc)
    ws = ka.DecodeWorkspace(nh, hs, 2)
    pos, seq_len = cuda.to_device(np.array([start], np.int32)), cuda.to_device(np.array([start + 1], np.int32))
    rope = dict(rot_dims=rot_dims, neox=neox, freq_scale=0.5, freq_factors=ff, attn_factor=attn_factor)
    for p in range(start, start + 2):  # seq_len 32 (one chunk), then 33 (two: the new row starts chunk 2)
        pos.copy_to_device(np.array([p], np.int32))
        seq_len.copy_to_device(np.array([p + 1], np.int32))
        q = rng.standard_normal((1, nh, hs), dtype=np.float32)
        k, v = (rng.standard_normal((1, nkv, hs), dtype=np.float32) for _ in range(2))
        got = ka.attention_decode_rope(q, k, v, kc_d, vc_d, pos, seq_len, 1e4, workspace=ws, **rope)
        ref.kv_append(ref_rope.rope(k, [p], 1e4, **rope), v, kc, vc, p)
        assert_close(got, ref.attention(ref_rope.rope(q, [p], 1e4, **rope), kc, vc, p), **TOL, name=f"position {p}")
        # the cache row written in the launch: the rotation's arithmetic (FMA contraction) within an ulp or two
        assert_close(kc_d.copy_to_host()[p], kc[p], atol=1e-6, rtol=1e-6, name=f"cache row {p}")
        np.testing.assert_array_equal(vc_d.copy_to_host()[p], vc[p])
    assert not ws.count.copy_to_host().any()


def test_one_launch_decode_heuristics():
    """Splits depend on S_max only (a power of two, no more than a full cache has runs of SPLIT_ALIGN
    positions), the block serves every query head of its kv head, and the shared memory fits."""
    from numba_kernels import attention as ka

    assert ka.default_n_splits(4096, 2, 7) == 64 and ka.default_n_splits(4096, 32, 1) == 8  # Qwen2.5, Phi-3
    for s_max in (1, 31, 33, 100, 4096, 32768, 131072):
        for nkv, kv_mul in [(2, 7), (32, 1), (8, 4), (1, 16)]:
            n = ka.default_n_splits(s_max, nkv, kv_mul)
            assert n & (n - 1) == 0 and 1 <= n <= min(ka.FUSED_MAX_SPLITS, -(-s_max // ka.SPLIT_ALIGN))
    for hs in (32, 40, 64, 80, 96, 128, 256):
        for kv_mul in (1, 2, 4, 7, 8, 16):
            rows, kg, u = ka.fused_tiles(hs, kv_mul)
            assert rows == min(kv_mul, 8) or hs > 128  # all heads of a kv head share one read (up to 8)
            assert rows * -(-hs // kg) <= 32 and u * rows <= 32 and 32 % kg == 0
            for nw in (1, 8):  # builds the kernel's constants (the shared-memory assertion) without compiling
                ka._fused_kernel(hs, rows, kg, nw, u)


@requires_cuda
@settings(deadline=None, max_examples=3 if SIMULATOR else 10)
@given(kernel_shapes, st.sampled_from(KV_TYPES))
def test_kv_append_kernel_writes_exactly_its_rows(case, kv_type):
    """Rows start .. start + T - 1 hold k and v (a float16 cache: rounded to nearest even, bit for bit as
    NumPy's cast); every other row is untouched."""
    from numba import cuda

    from numba_kernels import attention as ka

    T, start = case["T"], case["start_pos"]
    S, nkv, hs = start + T + 5, case["nkv"], case["hs"]
    rng = np.random.default_rng(case["seed"])
    k, v = rng.standard_normal((2, T, nkv, hs), dtype=np.float32)
    kc_d = cuda.to_device(np.full((S, nkv, hs), -7.0, kv_type))
    vc_d = cuda.to_device(np.full((S, nkv, hs), -7.0, kv_type))
    ka.kv_append(k, v, kc_d, vc_d, cuda.to_device(np.array([start], np.int32)))
    kc, vc = kc_d.copy_to_host(), vc_d.copy_to_host()
    assert kc.dtype == kv_type
    assert np.array_equal(kc[start:start + T], k.astype(kv_type)) and np.array_equal(vc[start:start + T], v.astype(kv_type))
    assert (np.delete(kc, np.s_[start:start + T], axis=0) == -7.0).all()
    assert (np.delete(vc, np.s_[start:start + T], axis=0) == -7.0).all()


@requires_cuda
def test_numpy_convenience_matches_ref():
    """ka.attention takes and returns NumPy with ref.attention's contract (prefill for T > 1, decode for T = 1)."""
    from numba_kernels import attention as ka

    for T, start in [(1, 20), (4, 10)]:
        q, kc, vc = make_case(7, T, 2, 2, 64, start)
        got = ka.attention(q, kc, vc, start)
        assert isinstance(got, np.ndarray)
        assert_close(got, ref.attention(q, kc, vc, start), **TOL, name=f"convenience T={T}")


# ------------------------------------------------------------------------------------------------
# v5: short caches, one block per query head over the whole context (no workspace, no merge)
# ------------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("kv_mul, hs, seq_len, spare", [
    (7, 64, 1, 3),     # one key
    (2, 96, 37, 0),    # seq_len = S_max, not a multiple of anything
    (1, 128, 40, 5),   # lanes over 128 dims: 4 warps, one slice
])
def test_short_decode_equals_dense_softmax(kv_mul, hs, seq_len, spare):
    """v5 equals softmax(q K^T / sqrt(hs)) V built densely (rows past seq_len are NaN: never read)."""
    from numba_kernels import attention as ka

    q, kc, vc = make_case(seq_len, 1, 1, kv_mul, hs, seq_len - 1, sharpness=4.0, spare_rows=spare)
    got = ka.attention_decode(q, kc, vc, np.array([seq_len], np.int32), version="v5")
    assert_close(got, ref.attention_dense(q, kc, vc, seq_len - 1), **TOL, name="v5 decode")


@requires_cuda
def test_short_decode_replays_with_new_seq_len():
    """One v5 launch shape, only the device seq_len changes (a replayed graph); more keys than threads
    in phase 1 (two keys per thread) and several phase-3 steps."""
    from numba import cuda

    from numba_kernels import attention as ka

    nkv, kv_mul, hs, s_max = 1, 2, 64, (150 if SIMULATOR else 2048)
    q, kc, vc = make_case(9, 1, nkv, kv_mul, hs, s_max - 1, sharpness=2.0, spare_rows=0)
    nh = nkv * kv_mul
    q_d, kc_d, vc_d = cuda.to_device(q[0]), cuda.to_device(kc), cuda.to_device(vc)
    out, seq_len = cuda.device_array((nh, hs), np.float32), cuda.to_device(np.array([1], np.int32))
    for n in ([150, 3] if SIMULATOR else [2048, 1, 33, 640, 1000, 2]):
        seq_len.copy_to_device(np.array([n], np.int32))
        ka.launch_decode_short(q_d, kc_d, vc_d, seq_len, None, out, n_warps=4)  # 128 threads < 150 keys
        assert_close(out.copy_to_host(), ref.attention_dense(q, kc, vc, n - 1)[0], **TOL, name=f"seq_len {n}")


def test_decode_version_depends_on_shapes_only(monkeypatch):
    """The automatic choice reads shapes, never seq_len: v6 for grouped-query heads (kv_mul >= 4, head size a
    multiple of 32 up to 128), else v4, or with USE_SHORT v5 up to SHORT_MAX_S; LLAMA_BETA_ATTENTION overrides
    (v7: v6 with the decode step's RoPE inside)."""
    from numba_kernels import attention as ka

    monkeypatch.delenv("LLAMA_BETA_ATTENTION", raising=False)
    assert ka.decode_version(640, 2, 7, 64) == "v6" and ka.decode_version(32768, 2, 7, 64) == "v6"  # Qwen2.5-0.5B
    assert ka.decode_version(640, 32, 1, 96) == "v4" and ka.decode_version(640, 8, 2, 64) == "v4"   # Phi-3, kv_mul 2
    assert ka.decode_version(640, 1, 8, 80) == "v4" and ka.decode_version(640, 1, 8, 256) == "v4"  # head sizes v6 lacks
    assert ka.decode_splits("v7", 641, 2, 7) == 21 and ka.decode_splits("v6", 1, 2, 7) == 1
    assert ka.decode_splits("v6", 32768, 2, 7) == ka.GQA_SPLITS <= ka.GQA_MAX_SPLITS
    assert ka.decode_splits("v4", 4096, 2, 7) == ka.default_n_splits(4096, 2, 7)
    for hs in (32, 64, 96, 128):
        ka._gqa_kernel(hs, 8)  # the shared-memory assertion, without compiling
    monkeypatch.setenv("LLAMA_BETA_ATTENTION", "v4")
    assert ka.decode_version(640, 2, 7, 64) == "v4"
    monkeypatch.setenv("LLAMA_BETA_ATTENTION", "v7")
    assert ka.decode_version(640, 2, 7, 64) == "v7" and ka.decode_splits("v7", 641, 2, 7) == 21
    monkeypatch.setenv("LLAMA_BETA_ATTENTION", "v9")
    with pytest.raises(ValueError, match="LLAMA_BETA_ATTENTION='v9'"):
        ka.decode_version(640, 2, 7, 64)
    monkeypatch.delenv("LLAMA_BETA_ATTENTION")
    ka.USE_SHORT = True
    try:
        assert ka.decode_version(640, 2, 7, 64) == "v5" and ka.decode_version(ka.SHORT_MAX_S, 32, 1, 96) == "v5"
        assert ka.decode_version(ka.SHORT_MAX_S + 1, 2, 7, 64) == "v6" and ka.decode_version(32768, 32, 1, 96) == "v4"
    finally:
        ka.USE_SHORT = False
    for s_max in (1, 48, 640, 2048):
        for hs in (64, 96, 128, 256):
            nw = ka.short_warps(s_max, hs)
            assert 32 * nw >= hs and nw <= max(ka.SHORT_WARPS, hs // 32)
            ka._short_kernel(hs, nw)  # the shared-memory assertion, without compiling
