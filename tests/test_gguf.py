"""Tests for the GGUF reader (ref/gguf.py) and writer (llama_beta/gguf_writer.py).

Each validation rule gets a file that breaks exactly that rule, crafted with a tiny
byte builder (below) so the bad field is visible in the test, and the test checks that
the reader raises GGUFError naming the field and its byte offset in one line.
gguf-py (the `gguf` package) is the oracle for round trips in both directions; the real
model checks the values a reader must find there and that tensor data is not read.
No tolerances: everything here is compared exactly (bytes, ints, float32 values).
"""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

import ref.gguf as gguf_mod
from llama_beta.gguf_writer import write_gguf
from ref.ggml import GGMLType
from ref.gguf import GGUFError, GGUFFile, GGUFValueType, align_up

T = GGUFValueType

# ---------------------------------------------------------------- a tiny GGUF byte builder


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(text: str | bytes) -> bytes:
    """A GGUF string: u64 byte length, then the bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return u64(len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def arr(etype: int, count: int, payload: bytes) -> bytes:
    """The payload of an ARRAY value."""
    return u32(etype) + u64(count) + payload


def tinfo(name: str | bytes, ne: tuple, type_id: int = GGMLType.F32, offset: int = 0, n_dims: int | None = None) -> bytes:
    return gstr(name) + u32(len(ne) if n_dims is None else n_dims) + b"".join(u64(d) for d in ne) + u32(type_id) + u64(offset)


def build(kvs=(), infos=(), data=b"", version=3, n_tensors=None, n_kv=None, alignment=32, magic=b"GGUF") -> bytes:
    """Header, metadata, tensor infos, padding to `alignment` (when there are tensors), data."""
    out = magic + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
    out += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    if infos:
        out += bytes(align_up(len(out), alignment) - len(out))
    return out + data


HEADER = 24  # magic 4 + version 4 + tensor count 8 + metadata count 8
ONE_F32 = dict(infos=[tinfo("w", (4,))], data=np.arange(4, dtype=np.float32).tobytes())


def write(tmp_path, data: bytes, name: str = "t.gguf"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bad(tmp_path, data: bytes, field: str, offset: int | None, says: str) -> GGUFError:
    """Assert that parsing `data` fails on `field` at `offset`, with `says` in a one-line message."""
    path = write(tmp_path, data)
    with pytest.raises(GGUFError) as info:
        GGUFFile(path)
    err, msg = info.value, str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {err.field} at byte {err.offset}: expected "), msg
    assert field in err.field, msg
    assert offset is None or err.offset == offset, msg
    assert says in msg, msg
    return err


# ---------------------------------------------------------------- valid files


def test_minimal_files_parse(tmp_path):
    f = GGUFFile(write(tmp_path, build()))
    assert (f.version, f.alignment, f.data_offset, f.metadata, f.tensors) == (3, 32, HEADER, {}, {})
    f = GGUFFile(write(tmp_path, build(**ONE_F32), "one.gguf"))
    t = f.tensors["w"]
    assert (t.shape, t.ne, t.ggml_type, t.nbytes, t.n_elements, t.offset) == ((4,), (4,), GGMLType.F32, 16, 4, 64)
    assert f.data_offset == 64 and f.data_end == 80
    np.testing.assert_array_equal(f.raw("w").view(np.float32), [[0, 1, 2, 3]])


def test_version_2_reads_like_version_3(tmp_path):
    data = bytearray(build(**ONE_F32))
    data[4:8] = u32(2)
    f = GGUFFile(write(tmp_path, bytes(data)))
    assert f.version == 2 and list(f.tensors) == ["w"]


def test_scalar_types(tmp_path):
    kvs = [kv(f"k{t.name}", t, struct.pack("<" + c, v)) for t, c, v in [
        (T.UINT8, "B", 255), (T.INT8, "b", -128), (T.UINT16, "H", 65535), (T.INT16, "h", -32768),
        (T.UINT32, "I", 2**32 - 1), (T.INT32, "i", -(2**31)), (T.FLOAT32, "f", 0.1), (T.BOOL, "B", 1),
        (T.UINT64, "Q", 2**64 - 1), (T.INT64, "q", -(2**63)), (T.FLOAT64, "d", 0.1)]]
    kvs.append(kv("kSTRING", T.STRING, gstr("héllo")))
    f = GGUFFile(write(tmp_path, build(kvs)))
    assert f.metadata == {"kUINT8": 255, "kINT8": -128, "kUINT16": 65535, "kINT16": -32768, "kUINT32": 2**32 - 1,
                          "kINT32": -(2**31), "kFLOAT32": float(np.float32(0.1)), "kBOOL": True,
                          "kUINT64": 2**64 - 1, "kINT64": -(2**63), "kFLOAT64": 0.1, "kSTRING": "héllo"}
    assert all(f.metadata_types[k] == (T[k[1:]], None) for k in f.metadata)


def test_arrays_are_read_only_views_of_the_map(tmp_path):
    kvs = [kv("ints", T.ARRAY, arr(T.INT32, 3, np.array([1, -2, 3], "<i4").tobytes())),
           kv("bools", T.ARRAY, arr(T.BOOL, 2, b"\x01\x00")),
           kv("strs", T.ARRAY, arr(T.STRING, 3, gstr("a") + gstr(b"\xff\xfe") + gstr(""))),
           kv("nested", T.ARRAY, arr(T.ARRAY, 2, arr(T.UINT8, 1, b"\x07") + arr(T.STRING, 1, gstr("x")))),
           kv("empty", T.ARRAY, arr(T.FLOAT64, 0, b""))]
    f = GGUFFile(write(tmp_path, build(kvs)))
    ints, bools = f.metadata["ints"], f.metadata["bools"]
    assert ints.dtype == np.int32 and ints.tolist() == [1, -2, 3] and not ints.flags.writeable
    assert np.shares_memory(ints, f.buffer)
    assert bools.dtype == np.bool_ and bools.tolist() == [True, False]
    assert f.metadata["strs"] == ["a", "\udcff\udcfe", ""]  # raw bytes survive as surrogate escapes
    assert f.metadata["strs"][1].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert f.metadata["nested"][0].tolist() == [7] and f.metadata["nested"][1] == ["x"]
    assert f.metadata["empty"].shape == (0,) and f.metadata["empty"].dtype == np.float64
    assert f.metadata_types["nested"] == (T.ARRAY, T.ARRAY) and f.metadata_types["strs"] == (T.ARRAY, T.STRING)


def test_shape_is_ne_reversed_and_raw_is_rows_of_blocks(tmp_path):
    # A Q8_0 tensor with ne = (64, 3, 2): 6 rows of 64 weights = 2 blocks of 34 bytes each.
    infos = [tinfo("q", (64, 3, 2), GGMLType.Q8_0)]
    data = np.arange(6 * 68, dtype=np.uint8).tobytes()
    f = GGUFFile(write(tmp_path, build(infos=infos, data=data)))
    t = f.tensors["q"]
    assert t.shape == (2, 3, 64) and t.ne == (64, 3, 2) and t.nbytes == 6 * 68 and (t.n_rows, t.row_bytes) == (6, 68)
    raw = f.raw("q")
    assert raw.shape == (6, 68) and raw.dtype == np.uint8 and not raw.flags.writeable
    assert raw.tobytes() == data and np.shares_memory(raw, f.buffer)


def test_api_errors_and_close(tmp_path):
    with GGUFFile(write(tmp_path, build(**ONE_F32))) as f:
        with pytest.raises(KeyError, match="no tensor named 'nope'"):
            f.raw("nope")
        view = f.raw("w")
    with pytest.raises(ValueError, match="closed"):
        f.raw("w")
    assert view.view(np.float32).tolist() == [[0, 1, 2, 3]]  # a view keeps the map alive
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "missing.gguf")


def test_error_pickles(tmp_path):
    import pickle

    with pytest.raises(GGUFError) as info:
        GGUFFile(write(tmp_path, build(version=1)))
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and (again.field, again.offset) == ("version", 4)
    # subclasses with their own __init__ (as ref.tokenizer.TokenizerError) pickle too
    again = pickle.loads(pickle.dumps(SubError("p: k: expected e, got g")))
    assert type(again) is SubError and str(again) == "p: k: expected e, got g" and again.field == "k"


class SubError(GGUFError):
    def __init__(self, message):
        ValueError.__init__(self, message)
        self.path, self.field, self.offset, self.expected, self.got = "p", "k", None, "e", "g"


# ---------------------------------------------------------------- header


@pytest.mark.parametrize("head, says", [
    (b"", "an empty file"),
    (b"GGU", "b'GGU'"),
    (b"tjgg" + bytes(60), "pre-GGUF"),
    (b"PK\x03\x04" + bytes(60), "zip"),
    (u64(100) + b'{"__metadata__"', "safetensors"),
    (b"<!DOCTYPE html><html>", "HTML"),
    (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS"),
    (b"GGML" + bytes(20), "b'GGML'"),
])
def test_magic(tmp_path, head, says):
    bad(tmp_path, head, "magic", 0, says)


@pytest.mark.parametrize("version, says", [
    (0, "expected 2 or 3, got 0"),
    (1, "GGUF v1"),
    (4, "expected 2 or 3, got 4"),
    (0x03000000, "big-endian"),
])
def test_version(tmp_path, version, says):
    bad(tmp_path, build(version=version), "version", 4, says)


def test_truncated_header(tmp_path):
    bad(tmp_path, b"GGUF", "version", 4, "only 0 left")
    bad(tmp_path, b"GGUF" + u32(3) + u64(0) + b"\0\0", "metadata count", 16, "only 2 left")


def test_counts_bounded_by_the_bytes_left(tmp_path):
    bad(tmp_path, build(n_tensors=2**60), "tensor count", 8, "at most 0")
    bad(tmp_path, build(n_kv=2**64 - 1), "metadata count", 16, "at most 0")
    # A tensor info takes at least 33 bytes; 66 bytes follow the tensor count: room for 2, not 3.
    bad(tmp_path, build(n_tensors=3, data=bytes(58)), "tensor count", 8, "at most 2 (items of >= 33 bytes in the 66 bytes left)")
    # The tensors' 66 bytes are reserved before the metadata count is checked: no room for a key.
    bad(tmp_path, build(n_tensors=2, n_kv=1, data=bytes(58)), "metadata count", 16, "at most 0")
    # With both counts in bounds, parsing goes on (and finds an empty tensor name in the zeros).
    bad(tmp_path, build(n_tensors=2, data=bytes(58)), "tensor #0 name", HEADER, "non-empty")


def test_count_caps(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_mod, "MAX_TENSORS", 1)
    monkeypatch.setattr(gguf_mod, "MAX_KV", 1)
    bad(tmp_path, build(n_tensors=2, data=bytes(1000)), "tensor count", 8, "cap")
    bad(tmp_path, build(n_kv=2, data=bytes(1000)), "metadata count", 16, "cap")


# ---------------------------------------------------------------- metadata


def test_keys(tmp_path):
    one = kv("a", T.UINT8, b"\x01")
    bad(tmp_path, build([kv("", T.UINT8, b"\x01")], data=b"\0"), "key", HEADER, "non-empty")  # 13 + 1 bytes: room for a key
    bad(tmp_path, build([one, one]), "key 'a'", HEADER + len(one), f"first at byte {HEADER}")
    bad(tmp_path, build([kv(b"a\xffb", T.UINT8, b"\x01")]), "key", HEADER + 8 + 1, "valid UTF-8, got byte 0xff")
    bad(tmp_path, build([u64(2**40) + b"a"], data=bytes(20)), "key length", HEADER, "at most 21 bytes")


def test_value_types(tmp_path):
    bad(tmp_path, build([kv("a", 13, b"\x01")]), "key 'a' value type", HEADER + 9, "a value type 0 to 12, got 13")
    bad(tmp_path, build([kv("a", T.ARRAY, arr(2**31, 1, b"\x01"))]), "key 'a' array element type", HEADER + 13, "got 2147483648")
    bad(tmp_path, build([kv("a", T.UINT64, b"\x01")]), "key 'a'", HEADER + 13, "8 bytes")  # truncated scalar


def test_bools_are_0_or_1(tmp_path):
    bad(tmp_path, build([kv("b", T.BOOL, b"\x02")]), "key 'b'", HEADER + 13, "0 or 1, got 2")
    bad(tmp_path, build([kv("b", T.ARRAY, arr(T.BOOL, 3, b"\x01\x00\xff"))]), "key 'b'[2]", HEADER + 13 + 12 + 2, "got 255")


def test_string_lengths(tmp_path):
    bad(tmp_path, build([kv("s", T.STRING, u64(2**63) + b"abc")]), "key 's' length", HEADER + 13, "at most")
    bad(tmp_path, build([kv("s", T.STRING, u64(4) + b"abc")]), "key 's' length", HEADER + 13, "at most 3 bytes")
    strings = arr(T.STRING, 2, gstr("ok") + u64(5) + b"abc")
    bad(tmp_path, build([kv("s", T.ARRAY, strings)]), "key 's'[1] length", HEADER + 13 + 12 + 10, "at most 3 bytes")


def test_string_length_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_mod, "MAX_STRING_BYTES", 4)
    bad(tmp_path, build([kv("s", T.STRING, gstr("abcde"))]), "key 's' length", HEADER + 13, "cap")
    bad(tmp_path, build([kv("s", T.ARRAY, arr(T.STRING, 1, gstr("abcde")))]), "key 's'[0] length", None, "at most 4")


def test_array_counts_bounded_by_the_bytes_left(tmp_path):
    at = HEADER + 13 + 4  # the count, after the element type
    bad(tmp_path, build([kv("a", T.ARRAY, arr(T.UINT32, 2**62, bytes(16)))]), "key 'a' array length", at, "at most 4")
    bad(tmp_path, build([kv("a", T.ARRAY, arr(T.STRING, 3, bytes(16)))]), "key 'a' array length", at, "at most 2")
    bad(tmp_path, build([kv("a", T.ARRAY, arr(T.ARRAY, 2, bytes(12)))]), "key 'a' array length", at, "at most 1")


def test_array_nesting_and_caps(tmp_path, monkeypatch):
    deep = arr(T.ARRAY, 1, arr(T.ARRAY, 1, arr(T.UINT8, 1, b"\x01")))
    bad(tmp_path, build([kv("a", T.ARRAY, deep)]), "key 'a'[0] array element type", HEADER + 13 + 12, "nested at most 2")
    monkeypatch.setattr(gguf_mod, "MAX_STRINGS", 3)
    two = kv("a", T.ARRAY, arr(T.STRING, 2, gstr("x") * 2))
    bad(tmp_path, build([two, kv("b", T.ARRAY, arr(T.STRING, 2, gstr("y") * 2))]), "key 'b' array length", None, "at most 3 strings")
    monkeypatch.setattr(gguf_mod, "MAX_SUBARRAYS", 1)
    bad(tmp_path, build([kv("a", T.ARRAY, arr(T.ARRAY, 2, arr(T.UINT8, 0, b"") * 2))]), "key 'a' array length", None, "nested arrays")


@pytest.mark.parametrize("vtype, payload, says", [
    (T.INT32, u32(64), "a UINT32 value, got INT32"),
    (T.STRING, gstr("64"), "got STRING"),
    (T.ARRAY, arr(T.UINT32, 1, u32(64)), "got ARRAY"),
    (T.UINT32, u32(0), "power of two"),
    (T.UINT32, u32(48), "got 48"),
    (T.UINT32, u32(2**21), "from 1 to 1048576, got 2097152"),
])
def test_alignment_key(tmp_path, vtype, payload, says):
    bad(tmp_path, build([kv("general.alignment", vtype, payload)]), "key 'general.alignment'", HEADER, says)


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignment_key_valid(tmp_path, alignment):
    kvs = [kv("general.alignment", T.UINT32, u32(alignment))]
    f = GGUFFile(write(tmp_path, build(kvs, alignment=alignment, **ONE_F32)))
    assert f.alignment == alignment and f.data_offset % alignment == 0
    assert f.raw("w").view(np.float32).tolist() == [[0, 1, 2, 3]]


# ---------------------------------------------------------------- tensor infos


def test_tensor_names(tmp_path):
    f32 = np.zeros(4, np.float32).tobytes()
    bad(tmp_path, build(infos=[tinfo("", (4,))], data=f32), "tensor #0 name", HEADER, "non-empty")
    bad(tmp_path, build(infos=[tinfo("x" * 64, (4,))], data=f32), "tensor #0 name length", HEADER, "at most 63 bytes")
    assert "x" * 63 in GGUFFile(write(tmp_path, build(infos=[tinfo("x" * 63, (4,))], data=f32), "ok.gguf")).tensors
    bad(tmp_path, build(infos=[tinfo(b"w\xc3", (4,))], data=f32), "tensor #0 name", HEADER + 9, "valid UTF-8")
    two = [tinfo("w", (4,)), tinfo("w", (4,), offset=32)]
    bad(tmp_path, build(infos=two, data=f32 * 4), "tensor 'w' name", HEADER + len(two[0]), "each tensor name once")


def test_tensor_dims(tmp_path):
    at = HEADER + 9  # after the name "w"
    bad(tmp_path, build(infos=[tinfo("w", (4,), n_dims=0)], data=bytes(64)), "tensor 'w' dims", at, "1 to 4 dimensions, got 0")
    bad(tmp_path, build(infos=[tinfo("w", (4,) * 7)], data=bytes(64)), "tensor 'w' dims", at, "got 7")
    bad(tmp_path, build(infos=[tinfo("w", (4, 0))], data=bytes(64)), "tensor 'w' ne[1]", at + 12, "from 1 to 2^63-1, got 0")
    bad(tmp_path, build(infos=[tinfo("w", (2**63,))], data=bytes(64)), "tensor 'w' ne[0]", at + 4, "got 9223372036854775808")
    bad(tmp_path, build(infos=[tinfo("w", (2**32, 2**32))], data=bytes(64)), "tensor 'w' dims", at, "below 2^63")


def test_tensor_types(tmp_path):
    at = HEADER + 9 + 4 + 8  # after name, n_dims, ne[0]
    bad(tmp_path, build(infos=[tinfo("w", (4,), type_id=4)], data=bytes(64)), "tensor 'w' type", at, "got 4")
    bad(tmp_path, build(infos=[tinfo("w", (4,), type_id=2**32 - 1)], data=bytes(64)), "tensor 'w' type", at, "ref.ggml.GGMLType")
    # a row of 100 Q4_K weights is not a whole number of 256-weight blocks
    bad(tmp_path, build(infos=[tinfo("w", (100,), GGMLType.Q4_K)], data=bytes(256)), "tensor 'w' ne[0]", at - 8, "a multiple of 256")


def test_tensor_offsets(tmp_path):
    f32 = np.zeros(4, np.float32).tobytes()
    at = HEADER + 9 + 4 + 8 + 4  # the offset field of the first tensor
    bad(tmp_path, build(infos=[tinfo("w", (4,), offset=16)], data=f32 * 8), "tensor 'w' offset", at, "multiple of the alignment 32")
    bad(tmp_path, build(infos=[tinfo("w", (4,), offset=32)], data=f32 * 8), "tensor 'w' offset", at, "no gaps")
    two = [tinfo("w", (16,)), tinfo("v", (4,), offset=32)]  # w takes 64 bytes: v at 32 overlaps it
    bad(tmp_path, build(infos=two, data=bytes(128)), "tensor 'v' offset", None, "right after tensor 'w', aligned (tensors would overlap)")
    two = [tinfo("w", (4,), offset=32), tinfo("v", (4,), offset=0)]  # out of file order
    bad(tmp_path, build(infos=two, data=bytes(128)), "tensor 'w' offset", at, "expected 0")


def test_tensor_data_inside_the_file(tmp_path):
    at = HEADER + 9 + 4 + 8 + 4
    bad(tmp_path, build(infos=[tinfo("w", (4,))], data=bytes(15)), "tensor 'w' data", at, "16 bytes from byte 64")
    bad(tmp_path, build(infos=[tinfo("w", (2**40,))], data=bytes(16)), "tensor 'w' data", at, "inside the file")
    data = build(infos=[tinfo("w", (4,))])[: HEADER + 33 + 3]  # cut inside the padding before the data
    bad(tmp_path, data, "data section", HEADER + 33, "padding to byte 64")


def test_zero_tensors_need_no_padding(tmp_path):
    data = build([kv("a", T.UINT8, b"\x01")])
    f = GGUFFile(write(tmp_path, data))
    assert f.data_offset == len(data) == f.data_end


# ---------------------------------------------------------------- our writer


def test_writer_round_trip_and_type_inference(tmp_path):
    metadata = {
        "general.architecture": "test", "u": 5, "neg": -3, "big": 2**40, "huge": 2**63, "f": 1.5, "b": True,
        "bytes": b"\xff", "tokens": ["a", "b\udcff", ""], "token_type": [1, 2, -1], "ids": [1, 2**31],
        "scores": [0.5, -1], "flags": [True, False], "nested": [[1, 2], ["x"]],
        "f64": np.arange(3, dtype=np.float64), "u8": np.uint8(7), "explicit": 7,
    }
    types = {"explicit": T.INT64}
    tensors = {"w": (GGMLType.F32, np.arange(12, dtype=np.float32), (3, 4)),
               "q": (GGMLType.Q4_K, np.arange(2 * 144, dtype=np.uint8), (2, 256))}
    path = write_gguf(tmp_path / "w.gguf", metadata, tensors, alignment=64, metadata_types=types)
    f = GGUFFile(path)
    expect_types = {"u": T.UINT32, "neg": T.INT32, "big": T.INT64, "huge": T.UINT64, "f": T.FLOAT32, "b": T.BOOL,
                    "bytes": T.STRING, "u8": T.UINT8, "explicit": T.INT64, "general.alignment": T.UINT32}
    for key, vtype in expect_types.items():
        assert f.metadata_types[key] == (vtype, None), key
    for key, etype in {"tokens": T.STRING, "token_type": T.INT32, "ids": T.UINT32, "scores": T.FLOAT32,
                       "flags": T.BOOL, "nested": T.ARRAY, "f64": T.FLOAT64}.items():
        assert f.metadata_types[key] == (T.ARRAY, etype), key
    assert f.metadata["bytes"] == "\udcff" and f.metadata["tokens"] == ["a", "b\udcff", ""]
    assert f.metadata["scores"].tolist() == [0.5, -1.0] and f.metadata["huge"] == 2**63
    assert f.metadata["nested"][0].tolist() == [1, 2] and f.metadata["nested"][1] == ["x"]
    assert f.alignment == 64 and f.metadata["general.alignment"] == 64
    assert f.tensors["w"].shape == (3, 4) and f.raw("w").view(np.float32).tolist() == np.arange(12).reshape(3, 4).tolist()
    assert f.tensors["q"].offset % 64 == 0 and f.raw("q").tobytes() == np.arange(288, dtype=np.uint8).tobytes()


def test_writer_never_leaves_a_half_file(tmp_path):
    path = tmp_path / "x.gguf"
    with pytest.raises(ValueError, match="takes 16 bytes, got 12"):
        write_gguf(path, {}, {"w": (GGMLType.F32, np.zeros(3, np.float32), (4,))})
    assert list(tmp_path.iterdir()) == []
    write_gguf(path, {"a": 1}, {})
    with pytest.raises(FileExistsError):
        write_gguf(path, {"a": 2}, {})
    assert GGUFFile(path).metadata == {"a": 1}
    write_gguf(path, {"a": 2}, {}, overwrite=True)
    assert GGUFFile(path).metadata == {"a": 2} and sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


def test_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(ValueError, match="element type"):
        write_gguf(tmp_path / "a.gguf", {"e": []}, {})
    assert GGUFFile(write_gguf(tmp_path / "b.gguf", {"e": []}, {}, metadata_types={"e": (T.ARRAY, T.STRING)})).metadata["e"] == []
    with pytest.raises(ValueError, match="name"):
        write_gguf(tmp_path / "c.gguf", {}, {"x" * 64: (GGMLType.F32, np.zeros(1, np.float32), (1,))})
    with pytest.raises(ValueError, match="multiple of Q8_0's block of 32"):
        write_gguf(tmp_path / "d.gguf", {}, {"q": (GGMLType.Q8_0, np.zeros(34, np.uint8), (1, 16))})
    with pytest.raises(ValueError, match="power of two"):
        write_gguf(tmp_path / "e.gguf", {}, {}, alignment=48)
    with pytest.raises(ValueError, match="UINT8"):
        write_gguf(tmp_path / "f.gguf", {"x": 300}, {}, metadata_types={"x": T.UINT8})


# ---------------------------------------------------------------- gguf-py as the oracle


def test_gguf_py_writes_we_read(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "py.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    scalars = [("u8", w.add_uint8, 200), ("i8", w.add_int8, -5), ("u16", w.add_uint16, 60000), ("i16", w.add_int16, -300),
               ("u32", w.add_uint32, 4000000000), ("i32", w.add_int32, -7), ("f32", w.add_float32, 0.25),
               ("u64", w.add_uint64, 2**50), ("i64", w.add_int64, -(2**50)), ("f64", w.add_float64, 1e300),
               ("b", w.add_bool, True), ("s", w.add_string, "GGUF ✓")]
    for key, add, value in scalars:
        add(key, value)
    w.add_array("tokens", ["<s>", "a", "ĠThe"])
    w.add_array("types", [1, 2, 3])
    w.add_array("scores", [0.5, -0.25])
    rng = np.random.default_rng(0)
    f32, f16 = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((7,)).astype(np.float16)
    q8 = rng.integers(0, 256, (2, 68), dtype=np.uint8)
    w.add_tensor("a.f32", f32)
    w.add_tensor("b.f16", f16)
    w.add_tensor("c.q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # gguf-py takes the byte shape
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    f = GGUFFile(path)
    for key, _, value in scalars:
        assert f.metadata[key] == (float(np.float32(value)) if key == "f32" else value), key
    assert f.metadata["tokens"] == ["<s>", "a", "ĠThe"] and f.metadata["types"].tolist() == [1, 2, 3]
    assert f.metadata["scores"].tolist() == [0.5, -0.25] and f.alignment == 64
    assert f.tensors["a.f32"].shape == (3, 5) and f.raw("a.f32").view(np.float32).tolist() == f32.tolist()
    assert f.tensors["b.f16"].ggml_type == GGMLType.F16 and f.raw("b.f16").tobytes() == f16.tobytes()
    assert f.tensors["c.q8"].shape == (2, 64) and f.raw("c.q8").tobytes() == q8.tobytes()
    reader = gguf.GGUFReader(path)
    assert f.data_offset == reader.data_offset
    assert [t.offset for t in f.tensors.values()] == [t.data_offset for t in reader.tensors]


def test_we_write_gguf_py_reads(tmp_path):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(1)
    w, q4k = rng.standard_normal((4, 3)).astype(np.float32), rng.integers(0, 256, (3, 144), dtype=np.uint8)
    metadata = {"general.architecture": "test", "n": 24, "eps": 1e-6, "tokens": ["a", "bc", "\u00e9"],
                "token_type": [1, 1, 3], "flag": False, "ids": np.array([5, 6], np.uint64)}
    path = write_gguf(tmp_path / "ours.gguf", metadata, {"w": (GGMLType.F32, w, (4, 3)), "k": (GGMLType.Q4_K, q4k, (3, 256))})
    reader = gguf.GGUFReader(path)
    fields = {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(metadata)
    assert fields["n"].types == [gguf.GGUFValueType.UINT32] and fields["n"].contents() == 24
    assert fields["eps"].contents() == pytest.approx(1e-6, rel=1e-7)  # stored as float32: 1e-6 to 7 digits
    assert fields["tokens"].contents() == ["a", "bc", "é"] and fields["token_type"].contents() == [1, 1, 3]
    assert fields["flag"].contents() is False and fields["ids"].contents() == [5, 6]
    assert fields["ids"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT64]
    by_name = {t.name: t for t in reader.tensors}
    assert by_name["w"].tensor_type == gguf.GGMLQuantizationType.F32 and list(by_name["w"].shape) == [3, 4]
    assert np.array_equal(by_name["w"].data, w)
    assert by_name["k"].tensor_type == gguf.GGMLQuantizationType.Q4_K and by_name["k"].data.tobytes() == q4k.tobytes()


# ---------------------------------------------------------------- the real model


def test_real_model(qwen_model_path):
    f = GGUFFile(qwen_model_path)
    md = f.metadata
    assert (f.version, f.alignment, len(f.tensors), len(md)) == (3, 32, 291, 26)
    assert md["general.architecture"] == "qwen2" and md["tokenizer.ggml.model"] == "gpt2"
    assert (md["qwen2.block_count"], md["qwen2.embedding_length"], md["qwen2.feed_forward_length"]) == (24, 896, 4864)
    assert (md["qwen2.attention.head_count"], md["qwen2.attention.head_count_kv"], md["qwen2.context_length"]) == (14, 2, 32768)
    assert md["qwen2.rope.freq_base"] == 1e6 and md["qwen2.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-6))
    assert len(md["tokenizer.ggml.tokens"]) == 151936 and len(md["tokenizer.ggml.merges"]) == 151387
    assert md["tokenizer.ggml.tokens"][:3] == ["!", '"', "#"] and md["tokenizer.ggml.merges"][0] == "Ġ Ġ"
    assert md["tokenizer.ggml.token_type"].dtype == np.int32 and md["tokenizer.ggml.token_type"].shape == (151936,)
    assert md["tokenizer.ggml.eos_token_id"] == 151645 and md["tokenizer.ggml.add_bos_token"] is False
    assert md["tokenizer.chat_template"].startswith("{%- if tools %}")
    emb = f.tensors["token_embd.weight"]
    assert (emb.shape, emb.ne, emb.ggml_type) == ((151936, 896), (896, 151936), GGMLType.Q5_0)
    assert f.raw("token_embd.weight").shape == (151936, 896 // 32 * 22)
    assert f.tensors["blk.0.ffn_down.weight"].shape == (896, 4864) and f.tensors["blk.0.ffn_down.weight"].ggml_type == GGMLType.Q6_K
    assert f.data_end == qwen_model_path.stat().st_size


def test_real_model_is_not_read_into_memory(qwen_model_path):
    tracemalloc.start()
    try:
        f = GGUFFile(qwen_model_path)
        views = [f.raw(name) for name in f.tensors]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = qwen_model_path.stat().st_size
    assert sum(v.nbytes for v in views) > 0.95 * size  # the views cover the data section
    # The vocabulary (303k Python strings) is all we allocate; the 491 MB of tensors stay in the map.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"
    assert all(np.shares_memory(v, f.buffer) and not v.flags.writeable and not v.flags.owndata for v in views)


@pytest.mark.slow
def test_real_model_matches_gguf_py(qwen_model_path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(qwen_model_path)  # ~7 s: gguf-py builds a NumPy array per field
    f = GGUFFile(qwen_model_path)
    assert f.data_offset == reader.data_offset and len(reader.tensors) == len(f.tensors)
    for theirs in reader.tensors:
        ours = f.tensors[theirs.name]
        assert (ours.offset, ours.nbytes, ours.ggml_type) == (theirs.data_offset, theirs.n_bytes, int(theirs.tensor_type))
        assert ours.ne == tuple(int(d) for d in theirs.shape)
        mine = f.raw(theirs.name)
        assert np.array_equal(mine[:2].reshape(-1), theirs.data.reshape(-1).view(np.uint8)[: mine[:2].size])
    assert f.metadata["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    assert f.metadata["tokenizer.ggml.merges"] == reader.fields["tokenizer.ggml.merges"].contents()
