"""numba_kernels.dequant against ref.quants, bit for bit, in the simulator or on the GPU.

Tolerance: none. The kernels do the reference's float32 operations in the same order and
keep every product rounded on its own (``mul_rn``, no fused multiply-add), so outputs
must have identical bits.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ON_GPU, requires_cuda
from ref import quants
from ref.ggml import BLOCK_SIZES, GGMLType

dequant = pytest.importorskip("numba_kernels.dequant")
from numba import cuda  # noqa: E402

KERNEL_TYPES = list(dequant.KERNELS)
MAX_BLOCKS = 400 if ON_GPU else 9      # the simulator runs one Python thread per CUDA thread


def bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def case(t, rows, per_row, seed):
    qk, block_bytes = BLOCK_SIZES[t]
    raw = quants.random_blocks(t, rows * per_row, np.random.default_rng(seed)).reshape(rows, -1)
    return raw, (rows, per_row * qk)


def test_required_kernels_exist():
    assert {GGMLType.Q4_K, GGMLType.Q5_0, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32} <= set(KERNEL_TYPES)


@requires_cuda
@pytest.mark.parametrize("t", KERNEL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,per_row", [(1, 1), (3, 1), (1, 5)])
def test_kernel_matches_ref(t, rows, per_row):
    """One block, odd block counts, several rows."""
    if BLOCK_SIZES[t][0] == 1:
        per_row *= 37                                                 # plain types: 37-element rows
    raw, shape = case(t, rows, per_row, seed=rows * 10 + per_row)
    np.testing.assert_array_equal(bits(dequant.dequantize(raw, t, shape)), bits(quants.dequantize(raw, t, shape)))


@requires_cuda
@settings(deadline=None, max_examples=60 if ON_GPU else 25)
@given(st.sampled_from(KERNEL_TYPES), st.integers(1, 3), st.integers(1, MAX_BLOCKS), st.integers(0, 2**32 - 1))
def test_kernel_matches_ref_random(t, rows, n_blocks, seed):
    per_row = max(1, n_blocks // rows) * (40 if BLOCK_SIZES[t][0] == 1 else 1)
    raw, shape = case(t, rows, per_row, seed)
    np.testing.assert_array_equal(bits(dequant.dequantize(raw, t, shape)), bits(quants.dequantize(raw, t, shape)))


@requires_cuda
def test_device_in_device_out_and_out_argument():
    t = GGMLType.Q4_K
    raw, shape = case(t, 2, 1, seed=5)
    d_raw = cuda.to_device(raw)
    d_out = cuda.device_array(shape, np.float32)
    ret = dequant.dequantize(d_raw, t, shape, out=d_out)
    assert ret is d_out
    np.testing.assert_array_equal(bits(d_out.copy_to_host()), bits(quants.dequantize(raw, t, shape)))
    assert not isinstance(dequant.dequantize(d_raw, t, shape), np.ndarray)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no kernel for ggml type Q8_K"):
        dequant.dequantize(np.zeros(292, np.uint8), GGMLType.Q8_K, (256,))
    with pytest.raises(ValueError, match="needs 144 uint8 bytes, got 143"):
        dequant.dequantize(np.zeros(143, np.uint8), GGMLType.Q4_K, (256,))
    with pytest.raises(ValueError, match="whole 32-element blocks"):
        dequant.dequantize(np.zeros(22, np.uint8), GGMLType.Q5_0, (16,))
