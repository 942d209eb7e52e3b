"""numba_kernels.embedding against ref.embedding (bit-exact), and ref.embedding against
dequantizing the whole table (its definition).

Tolerance: none - both gather rows through the same bit-exact decoders.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ON_GPU, requires_cuda
from ref import quants
from ref.embedding import embed as ref_embed
from ref.ggml import BLOCK_SIZES, GGMLType

embedding = pytest.importorskip("numba_kernels.embedding")
from numba import cuda  # noqa: E402

TYPES = [GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.F16, GGMLType.F32, GGMLType.Q4_0]


def table(t, V, C, seed):
    return quants.random_blocks(t, V * C // BLOCK_SIZES[t][0], np.random.default_rng(seed)).reshape(V, -1)


def bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


@settings(deadline=None, max_examples=30)
@given(st.sampled_from(TYPES), st.integers(1, 6), st.lists(st.integers(0, 9), min_size=1, max_size=6))
def test_ref_embed_is_rows_of_the_whole_table(t, n_blocks, ids):
    C = n_blocks * max(BLOCK_SIZES[t][0], 32)
    tab = table(t, 10, C, seed=n_blocks)
    whole = quants.dequantize(tab, t, (10, C))                       # [V, C]
    np.testing.assert_array_equal(bits(ref_embed(tab, t, C, ids)), bits(whole[ids]))


@requires_cuda
@settings(deadline=None, max_examples=40 if ON_GPU else 20)
@given(st.sampled_from(TYPES), st.integers(1, 3), st.data())
def test_kernel_matches_ref(t, n_blocks, data):
    C = n_blocks * 256 if ON_GPU else n_blocks * (256 if BLOCK_SIZES[t][0] == 256 else 96)
    V = 11
    ids = data.draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=8 if ON_GPU else 3))
    tab = table(t, V, C, seed=len(ids))
    np.testing.assert_array_equal(bits(embedding.embed(tab, t, C, np.array(ids, np.int32))),
                                  bits(ref_embed(tab, t, C, ids)))


@requires_cuda
def test_repeated_ids_t1_and_device_ids():
    t, V, C = GGMLType.Q5_0, 5, 64
    tab = table(t, V, C, seed=3)
    got = embedding.embed(tab, t, C, np.array([4, 4, 0, 4], np.int32))
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(bits(got), bits(ref_embed(tab, t, C, [4, 4, 0, 4])))
    d_tab, d_ids = cuda.to_device(tab), cuda.to_device(np.array([2], np.int32))
    out = cuda.device_array((1, C), np.float32)
    assert embedding.embed(d_tab, t, C, d_ids, out=out) is out      # T=1, all on device
    np.testing.assert_array_equal(bits(out.copy_to_host()), bits(ref_embed(tab, t, C, [2])))


def test_errors_are_clear():
    tab = table(GGMLType.Q8_0, 4, 64, seed=0)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        ref_embed(tab, GGMLType.Q8_0, 64, [4])
    with pytest.raises(ValueError, match="row of 32 weights takes 34 bytes, the table has 68"):
        ref_embed(tab, GGMLType.Q8_0, 32, [0])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
        embedding.embed(tab, GGMLType.Q8_0, 64, np.array([-1], np.int32))
