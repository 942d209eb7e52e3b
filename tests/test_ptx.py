"""The PTX intrinsics of numba_kernels/ptx.py: one warp's mma.sync m16n8k16 from fragments laid out as
the PTX ISA says equals the float64 product of the float16-rounded matrices (in the simulator: the Python
statement of the layout; on the GPU: the real instruction), pack_f16x2 rounds to nearest even, the 16-byte
load returns its four words in order, programmatic dependent launches keep their order, and the simulator's L2
prefetch refuses a range outside its array."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_cuda


@requires_cuda
@pytest.mark.parametrize("seed", [0, 1])
def test_one_mma_equals_numpy(seed):
    from numba_kernels.ptx import mma_once

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((16, 16)).astype(np.float32) * 4
    B = rng.standard_normal((16, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    A[3, 5] = 1.0 + 2.0 ** -12                       # rounds to 1.0 in float16 (the tie goes to even)
    want = A.astype(np.float16).astype(np.float64) @ B.astype(np.float16).astype(np.float64) + C
    got = mma_once(A, B, C)
    # exact float16 products summed in float32: a few float32 ulps of the terms' magnitude (|A||B| ~ 16 * 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * (np.abs(A) @ np.abs(B) + np.abs(C)).max())


def test_simulator_pack_rounds_to_nearest_even():
    from numba_kernels.ptx import _halves, _simulator_pack_f16x2

    word = _simulator_pack_f16x2(np.float32(1.0 + 2.0 ** -11), np.float32(-2.5))   # a tie: to even (1.0)
    lo, hi = _halves(word)
    assert lo == 1.0 and hi == -2.5
    assert int(word) >> 16 == int(np.float16(-2.5).view(np.uint16))


def test_simulator_sub_f16x2_is_exact_on_codes():
    """sub_f16x2 of the code pairs (1024 + u) - (1024 + z) is u - z exactly (v12's weights as float16)."""
    from numba_kernels.ptx import _halves, _simulator_pack_f16x2, _simulator_sub_f16x2

    for u, z in ((0, 16), (31, 16), (255, 128), (7, 7)):
        codes = _simulator_pack_f16x2(np.float32(1024 + u), np.float32(1024 + 255 - u))
        zero = _simulator_pack_f16x2(np.float32(1024 + z), np.float32(1024 + z))
        lo, hi = _halves(_simulator_sub_f16x2(codes, zero))
        assert (lo, hi) == (u - z, 255 - u - z)


def test_simulator_prefetch_refuses_bytes_outside_the_array():
    """The simulator's prefetch_l2 moves nothing but checks its range (on the GPU a bulk prefetch outside the
    allocation is an illegal address), so the simulator tests of every prefetch check their bounds."""
    from numba_kernels.ptx import _simulator_prefetch_l2

    a = np.zeros(40, np.uint16)                        # 80 bytes
    _simulator_prefetch_l2(a, 0, 80)
    _simulator_prefetch_l2(a, 64, 16)
    _simulator_prefetch_l2(a, 80, 0)                   # an empty range at the end
    for start, nbytes in ((72, 16), (-16, 16), (0, 81)):
        with pytest.raises(AssertionError, match="outside"):
            _simulator_prefetch_l2(a, start, nbytes)


@requires_cuda
def test_load_u32x4_reads_four_words_in_order():
    """One 16-byte load per four words (matmul v15's quant loads): every word lands in its place, the last
    partial group of words is not read."""
    from numba_kernels.ptx import copy_by_fours

    a = np.random.default_rng(3).integers(0, 2 ** 32, 4 * 37 + 3, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(copy_by_fours(a), a[:4 * 37])


@requires_cuda
def test_shared_and_global_16_byte_lines_keep_their_words():
    """matmul v23's line moves: every word of a 16-byte line lands in its place through shared memory, read back
    by another thread than the one that wrote it, and stored to global memory in one piece."""
    from numba_kernels.ptx import lines_through_shared

    a = np.random.default_rng(4).integers(0, 2 ** 32, 128, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(lines_through_shared(a), a.reshape(32, 4)[::-1].reshape(-1))


@requires_cuda
def test_cp_async_lines_land_whole_after_the_wait():
    """matmul v23's asynchronous copies: each 16-byte line lands whole where it was sent, visible to another thread
    after the group's wait and a barrier."""
    from numba_kernels.ptx import lines_by_cp_async

    a = np.random.default_rng(6).integers(0, 2 ** 32, 128, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(lines_by_cp_async(a), a.reshape(32, 4)[::-1].reshape(-1))


@requires_cuda
def test_shr_u32_is_a_32_bit_logical_shift():
    """The weight decoders' 32-bit shift: every shift amount, words with the top bit set (no sign comes in)."""
    from numba_kernels.ptx import shr_u32_all

    rng = np.random.default_rng(5)
    a = np.concatenate([rng.integers(0, 2 ** 32, 64, dtype=np.uint64), [2 ** 32 - 1, 2 ** 31]]).astype(np.uint32)
    n = np.arange(len(a)) % 32
    np.testing.assert_array_equal(shr_u32_all(a, n), a >> n.astype(np.uint32))


@requires_cuda
def test_programmatic_launches_keep_the_order():
    """A chain of launches that each read a counter after ``wait_previous_grid`` and add 1 to it: under
    programmatic dependent launch (on an sm_90 GPU; elsewhere plain launches) every launch sees the previous
    one's increment, and the context puts Numba's LaunchConfig back on leaving."""
    from numba_kernels import runtime
    from numba_kernels.ptx import dependent_chain

    supported = runtime.programmatic_launch_supported()
    with runtime.programmatic_launches(supported):
        counts = dependent_chain(64)
    # counts[0] = launches done; counts[i + 1] = the count launch i saw after its wait (i)
    np.testing.assert_array_equal(counts, np.r_[64, np.arange(64)].astype(np.int32))
    if supported:
        from numba.cuda import dispatcher
        assert not dispatcher.LaunchConfig(grid=1, block=1).programmatic_stream_serialization


@requires_cuda
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_bulk_copy_gathers_the_pieces_into_shared_memory(data):
    """bulk_copy (matmul v18's row staging): 16-byte aligned pieces of a global array, copied one after the
    other into shared memory by one thread and counted on one barrier, are all there once bulk_ready says so."""
    from numba_kernels.ptx import bulk_gather

    words = np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, 2 ** 32, 4 * 300, dtype=np.uint64)
    words = words.astype(np.uint32)                     # 4800 bytes = 300 pieces of 16
    pieces = []
    for _ in range(data.draw(st.integers(1, 6))):
        start = data.draw(st.integers(0, 299))
        pieces.append((16 * start, 16 * data.draw(st.integers(1, min(300 - start, 120)))))
    want = np.concatenate([words[s // 4:(s + n) // 4] for s, n in pieces])
    np.testing.assert_array_equal(bulk_gather(words, pieces), want)


def test_simulator_bulk_copy_refuses_misaligned_or_outside_ranges():
    """The GPU faults on a bulk copy that is not 16-byte aligned or leaves the array; the simulator says so."""
    from numba_kernels.ptx import _simulator_bulk_copy

    src, dst = np.arange(40, dtype=np.uint32), np.zeros(20, np.uint32)   # 160 and 80 bytes
    _simulator_bulk_copy(dst, 16, src, 96, 64, None, 0)
    np.testing.assert_array_equal(dst[4:20], src[24:40])
    for d, s, n in ((8, 0, 16), (0, 4, 16), (0, 0, 24), (0, 144, 32), (16, 0, 80), (0, 0, 0)):
        with pytest.raises(AssertionError, match="bulk_copy"):
            _simulator_bulk_copy(dst, d, src, s, n, None, 0)


def test_simulator_dp4a_is_four_signed_byte_products():
    """dp4a (matmul v19/v20): c + sum of a's and b's signed bytes multiplied pairwise, wrapping like int32."""
    from numba_kernels.ptx import _simulator_dp4a

    rng = np.random.default_rng(4)
    for _ in range(50):
        a, b = rng.integers(-128, 128, 4), rng.integers(-128, 128, 4)
        c = int(rng.integers(-2 ** 31, 2 ** 31 - 2 ** 17))
        word = lambda v: int(np.array(v, np.int8).view(np.uint32)[0])
        assert _simulator_dp4a(word(a), word(b), c) == c + int((a * b).sum())
    assert _simulator_dp4a(0x7F7F7F7F, 0x7F7F7F7F, 2 ** 31 - 1) == -2 ** 31 + 4 * 127 * 127 - 1


@requires_cuda
def test_dp4a_signed_and_unsigned_first_operand_match_numpy():
    """dp4a.s32.s32 and dp4a.u32.s32 (matmul v20: nibbles masked in place are bytes up to 0xF0, unsigned) on
    the device (the real instructions on a GPU) against NumPy byte products, including the int32 wrap."""
    from numba_kernels.ptx import dp4a_both

    rng = np.random.default_rng(5)
    a = rng.integers(0, 2 ** 32, 40, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2 ** 32, 40, dtype=np.uint64).astype(np.uint32)
    c = rng.integers(-2 ** 31, 2 ** 31, 40, dtype=np.int64).astype(np.int32)
    a[0], b[0], c[0] = 0xF0F0F0F0, 0x7F7F7F7F, 2 ** 31 - 1          # unsigned 240 * 127 * 4 wraps past 2^31
    bs = b.view(np.int8).reshape(-1, 4).astype(np.int64)
    for row, av in ((0, a.view(np.int8)), (1, a.view(np.uint8))):
        total = c.astype(np.int64) + (av.reshape(-1, 4).astype(np.int64) * bs).sum(axis=1)
        want = ((total + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)
        np.testing.assert_array_equal(dp4a_both(a, b, c)[row], want)
