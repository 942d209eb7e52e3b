"""Residual add: the kernel is exact (one float32 add per element, same as NumPy)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, requires_cuda
from ref import residual as ref

EXAMPLES = 40 if ON_GPU else 10
BIG = float(np.float32(1e30))
finite = st.floats(-BIG, BIG, width=32)


@st.composite
def pairs(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=600 if ON_GPU else 70))
    a = draw(hnp.arrays(np.float32, shape, elements=finite))
    b = draw(hnp.arrays(np.float32, shape, elements=finite))
    return a, b


def test_ref_adds_and_checks_shapes():
    assert np.array_equal(ref.add(np.ones(3, np.float32), np.arange(3, dtype=np.float32)), [1, 2, 3])
    with pytest.raises(ValueError, match="shapes"):
        ref.add(np.ones(3), np.ones(4))


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(pairs())
def test_kernel_equals_ref_exactly(ab):
    from numba_kernels import residual as kern

    a, b = ab
    assert np.array_equal(kern.add(a, b), ref.add(a, b))   # IEEE float32 add: bit-identical


@requires_cuda
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_versions_and_in_place(version):
    from numba import cuda

    from numba_kernels import residual as kern

    a = np.arange(1000, dtype=np.float32)
    b = np.full(1000, 0.5, np.float32)
    da, db = cuda.to_device(a), cuda.to_device(b)
    getattr(kern, f"launch_{version}")(da, db, da)          # a += b
    assert np.array_equal(da.copy_to_host(), a + b)
