"""The ggml type table: ids and block sizes agree with gguf-py's, and row sizes are whole blocks."""
from __future__ import annotations

import pytest

from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes


def test_every_type_has_a_block_size():
    assert set(BLOCK_SIZES) == set(GGMLType)


def test_table_matches_gguf_py():
    constants = pytest.importorskip("gguf.constants")
    for t in constants.GGMLQuantizationType:
        if t.value in GGMLType._value2member_map_:
            assert BLOCK_SIZES[GGMLType(t.value)] == constants.GGML_QUANT_SIZES[t], t.name
            assert GGMLType(t.value).name == t.name


def test_row_bytes():
    assert row_bytes(GGMLType.Q4_K, 896 * 4) == 14 * 144
    assert row_bytes(GGMLType.F32, 7) == 28
    with pytest.raises(ValueError, match="not a whole number of 32-element blocks"):
        row_bytes(GGMLType.Q8_0, 33)
