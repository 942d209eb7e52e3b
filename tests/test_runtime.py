"""The shared device helpers: telling device arrays apart and moving inputs to the device."""
from __future__ import annotations

import numpy as np

from conftest import requires_cuda


@requires_cuda
def test_to_device_passes_device_arrays_through_and_copies_host_arrays():
    from numba_kernels.runtime import is_device, to_device

    host = np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2]        # non-contiguous, float64
    dev = to_device(host)
    assert is_device(dev) and not is_device(host)
    assert dev.dtype == np.float32 and np.array_equal(dev.copy_to_host(), host.astype(np.float32))
    assert to_device(dev) is dev and to_device(None) is None
    ids = to_device(np.array([3, 1]), dtype=np.int32)
    assert ids.dtype == np.int32 and list(ids.copy_to_host()) == [3, 1]
