"""ref.quants against gguf-py (the oracle), bit for bit.

Tolerance: none. Dequantization is a fixed sequence of float32 operations; the
reference does them in gguf-py's order, so every output must have the same bits
(compared as uint32). NaN/inf scales are avoided (random bytes give them; they are not
comparable), so float fields are drawn finite.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ref import quants
from ref.ggml import BLOCK_SIZES, GGMLType

gguf = pytest.importorskip("gguf")

ORACLE_TYPES = [t for t in quants.DEQUANTIZERS if t != GGMLType.Q8_K]   # gguf-py lacks Q8_K


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def gguf_dequant(raw: np.ndarray, t: GGMLType, shape) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(t))).reshape(shape)


@st.composite
def tensors(draw, types=tuple(quants.DEQUANTIZERS)):
    """(ggml type, raw bytes (rows, row_bytes), shape) with random bytes and finite float fields."""
    t = draw(st.sampled_from(types))
    qk, block_bytes = BLOCK_SIZES[t]
    rows = draw(st.integers(1, 4))
    per_row = draw(st.integers(1, 3)) if qk > 1 else draw(st.integers(1, 40))
    raw = draw(arrays(np.uint8, (rows * per_row, block_bytes)))
    for at, dtype in quants.FLOAT_FIELDS[t]:
        width = 8 * np.dtype(dtype).itemsize
        values = draw(arrays(dtype, (rows * per_row,), elements=st.floats(-1e4, 1e4, width=width)))
        raw[:, at:at + values.itemsize] = values.view(np.uint8).reshape(-1, values.itemsize)
    if t == GGMLType.BF16:
        raw[:, 1] &= 0xBF                                             # keep bf16 finite
    return t, raw.reshape(rows, per_row * block_bytes), (rows, per_row * qk)


@settings(deadline=None, max_examples=300)
@given(tensors(tuple(ORACLE_TYPES)))
def test_bit_exact_against_gguf(case):
    t, raw, shape = case
    got = quants.dequantize(raw, t, shape)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(bits(got), bits(gguf_dequant(raw, t, shape)), err_msg=t.name)


@pytest.mark.parametrize("t", ORACLE_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_blocks", [1, 7, 65])
def test_every_type_many_blocks(t, n_blocks):
    raw = quants.random_blocks(t, n_blocks, np.random.default_rng(n_blocks))
    shape = (n_blocks * BLOCK_SIZES[t][0],)
    np.testing.assert_array_equal(bits(quants.dequantize(raw, t, shape)), bits(gguf_dequant(raw, t, shape)))


@settings(deadline=None, max_examples=30)
@given(tensors((GGMLType.Q8_K,)))
def test_q8_k_is_d_times_q(case):
    """gguf-py cannot dequantize Q8_K: check x = d * q directly (exact in float64, rounded once)."""
    t, raw, shape = case
    blocks = raw.reshape(-1, 292)
    d = blocks[:, 0:4].copy().view(np.float32).astype(np.float64)
    q = blocks[:, 4:260].view(np.int8).astype(np.float64)
    np.testing.assert_array_equal(bits(quants.dequantize(raw, t, shape)), bits((d * q).astype(np.float32).reshape(shape)))


@settings(deadline=None, max_examples=40)
@given(tensors(), st.data())
def test_rows_are_independent(case, data):
    """Dequantizing a subset of rows gives exactly those rows of the whole tensor."""
    t, raw, shape = case
    keep = data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=5))
    whole = quants.dequantize(raw, t, shape)
    part = quants.dequantize(raw[keep], t, (len(keep), shape[1]))
    np.testing.assert_array_equal(bits(part), bits(whole[keep]))


def test_known_q8_0_block():
    """One hand-made block: d = 0.5, q = -16..15 -> x = q / 2."""
    block = np.zeros(34, np.uint8)
    block[0:2] = np.array([0.5], np.float16).view(np.uint8)
    block[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    np.testing.assert_array_equal(quants.dequantize(block, GGMLType.Q8_0, (32,)), np.arange(-16, 16) / 2)


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2 ** 32 - 1))
def test_planar_q8_0_regroups_the_same_weights(n, blocks, seed):
    """The two planes (matmul v22's layout) give back every weight: qs[n, k] * d[n, k // 32] == the dequantized
    row, bit for bit, and the planes hold exactly the blocks' bytes."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 34 * blocks), dtype=np.uint8)
    raw.reshape(-1, 34)[:, 0:2] = rng.uniform(-1, 1, (n * blocks, 1)).astype(np.float16).view(np.uint8)
    qs, d = quants.planar_q8_0(raw)
    assert qs.dtype == np.int8 and qs.shape == (n, 32 * blocks) and d.dtype == np.float16 and d.shape == (n, blocks)
    got = qs.astype(np.float32) * np.repeat(d.astype(np.float32), 32, axis=1)
    np.testing.assert_array_equal(bits(got), bits(quants.dequantize(raw, GGMLType.Q8_0, (n, 32 * blocks))))
    assert sorted(np.concatenate([qs.view(np.uint8).ravel(), d.view(np.uint8).ravel()])) == sorted(raw.ravel())


def test_errors_are_clear():
    raw = np.zeros(144, np.uint8)
    with pytest.raises(ValueError, match="IQ2_XXS is not supported"):
        quants.dequantize(raw, GGMLType.IQ2_XXS, (256,))
    with pytest.raises(ValueError, match="needs 288 bytes, got 144"):
        quants.dequantize(raw, GGMLType.Q4_K, (2, 256))
    with pytest.raises(ValueError, match="whole number of 256-element blocks"):
        quants.dequantize(raw, GGMLType.Q4_K, (128,))
    with pytest.raises(ValueError, match="uint8"):
        quants.dequantize(raw.view(np.float32), GGMLType.Q4_K, (256,))


def _model_tensors(path):
    """(name, ggml type, numpy shape, raw uint8) for every tensor of a GGUF file."""
    try:
        from ref.gguf import GGUFFile
    except ImportError:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:
            yield t.name, GGMLType(int(t.tensor_type)), tuple(int(s) for s in t.shape[::-1]), t.data.view(np.uint8)
        return
    f = GGUFFile(path)
    for name, info in f.tensors.items():
        yield name, info.ggml_type, info.shape, f.raw(name)


@pytest.mark.slow
def test_every_tensor_of_the_real_model(qwen_model_path):
    """Every tensor of Qwen2.5-0.5B (Q4_K_M mix: Q5_0, Q8_0, Q6_K, Q4_K, F32), bit-exact. ~15 s."""
    seen = set()
    for name, t, shape, raw in _model_tensors(qwen_model_path):
        got = quants.dequantize(raw, t, shape)
        expected = gguf_dequant(np.asarray(raw).reshape(-1, raw.shape[-1]), t, shape)
        assert np.array_equal(bits(got), bits(expected)), f"{name} ({t.name}) differs from gguf"
        seen.add(t.name)
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0", "F32"} <= seen
