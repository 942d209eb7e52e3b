"""Fuzzing the GGUF reader: a damaged or hostile file must parse or raise GGUFError, never
another exception; it must do so quickly and without allocating more than the file holds.

The seed is a small valid file written by our writer with every kind of value (scalars,
strings, string/numeric/bool arrays, an array of arrays, a custom alignment) and tensors
of several ggml types. Hypothesis mutates it (bit flips, u64/u32 fields overwritten with
huge or boundary values, inserted and deleted bytes, truncation); two exhaustive tests
overwrite every header position with every boundary value and cut the file at every length.

The wall-clock limits below are hang guards, not speed measurements (speed belongs to the
benchmarks): a correct parse of these files takes about a millisecond, a parse that loops
over a count a hostile file made up would take minutes.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ref.gguf as gguf_mod
from llama_beta.gguf_writer import write_gguf
from ref.ggml import GGMLType
from ref.gguf import GGUFError, GGUFFile, GGUFValueType

HANG_GUARD_S = 1.0  # per parse; see the module docstring
U64_VALUES = [0, 1, 2, 3, 4, 7, 8, 13, 31, 32, 33, 63, 64, 255, 256, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
              2**53, 2**60, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
U32_VALUES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 41, 42, 255, 2**16, 2**31, 2**32 - 1]
WORKDIR = Path(tempfile.mkdtemp(prefix="gguf-fuzz-"))
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def seed() -> tuple[bytes, int, int]:
    """The valid seed file's bytes, where its tensor infos end, and where its last tensor's data ends."""
    rng = np.random.default_rng(0)
    metadata = {
        "general.architecture": "fuzz", "n": 3, "neg": -2, "big": 2**40, "eps": 1e-5, "flag": True, "name": "s\u00e9ed",
        "tokens": ["<s>", "a", "\udcff", ""], "token_type": [1, 2, 3, 1], "scores": [0.0, -1.5], "bools": [True, False],
        "nested": [[1, 2], ["x", "y"]], "f64": np.arange(3, dtype=np.float64),
    }
    tensors = {
        "a.weight": (GGMLType.F32, rng.standard_normal((2, 3)).astype(np.float32), (2, 3)),
        "b.weight": (GGMLType.Q8_0, rng.integers(0, 256, 2 * 34, dtype=np.uint8), (2, 32)),
        "c.weight": (GGMLType.Q4_K, rng.integers(0, 256, 144, dtype=np.uint8), (1, 256)),
    }
    path = write_gguf(WORKDIR / "seed.gguf", metadata, tensors, alignment=64, overwrite=True)
    f = GGUFFile(path)
    header_end = f.data_offset - 1  # the infos end at most alignment - 1 bytes before; close enough as a bound
    return path.read_bytes(), header_end, f.data_end


def check(data: bytes, name: str = "case.gguf") -> GGUFFile | None:
    """Parse `data`: GGUFError or a file whose every tensor lies inside it, aligned and disjoint."""
    path = WORKDIR / name
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        f = GGUFFile(path)
    except GGUFError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
        f = None
    elapsed = time.perf_counter() - start
    assert elapsed < HANG_GUARD_S, f"parse took {elapsed:.2f} s"
    if f is not None:
        check_parsed(f, len(data))
    return f


def check_parsed(f: GGUFFile, size: int) -> None:
    end = f.data_offset
    for t in f.tensors.values():
        assert 1 <= len(t.ne) <= 4 and t.shape == tuple(reversed(t.ne)) and min(t.ne) >= 1
        assert t.offset % f.alignment == 0 and t.offset >= end and t.offset + t.nbytes <= size
        end = t.offset + t.nbytes
        raw = f.raw(t.name)
        assert raw.nbytes == t.nbytes and raw.shape == (t.n_rows, t.row_bytes)
        int(raw[-1, -1])  # touch the last byte: inside the map
    for key, value in f.metadata.items():
        assert key and isinstance(value, (int, float, bool, str, list, np.ndarray)), key
    f.close()


def mutate(data: bytes, mutation: tuple) -> bytes:
    kind, pos, arg = mutation
    pos = min(pos, len(data))
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ arg]) + data[pos + 1 :] if pos < len(data) else data
    if kind == "u64":
        return data[:pos] + struct.pack("<Q", arg) + data[pos + 8 :]
    if kind == "u32":
        return data[:pos] + struct.pack("<I", arg) + data[pos + 4 :]
    if kind == "insert":
        return data[:pos] + arg + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + arg :]
    return data[:pos]  # truncate


def mutations():
    data, header_end, _ = seed()
    pos = st.one_of(st.integers(0, header_end), st.integers(0, len(data)))  # mostly the header, where the fields are
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("u64"), pos, st.sampled_from(U64_VALUES + [len(data) - 1, len(data), len(data) + 1])),
        st.tuples(st.just("u32"), pos, st.sampled_from(U32_VALUES)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
    )


def test_seed_is_valid():
    data, _, data_end = seed()
    assert check(data) is not None
    f = GGUFFile(WORKDIR / "case.gguf")
    assert len(f.tensors) == 3 and f.alignment == 64 and f.metadata["tokens"] == ["<s>", "a", "\udcff", ""]
    assert f.data_end == data_end


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutations(), min_size=1, max_size=4))
def test_mutated_files_parse_or_raise_gguf_error(muts):
    data = seed()[0]
    for m in muts:
        data = mutate(data, m)
    check(data)


def test_every_truncation():
    data, _, data_end = seed()
    for n in range(len(data) + 1):
        f = check(data[:n])
        # Cut before the last tensor's data ends: an error. After (in the trailing padding): fine.
        assert (f is None) == (n < data_end), n


def test_every_header_field_overwritten_with_boundary_values():
    data, header_end, _ = seed()
    for pos in range(header_end):
        for value in (0, 1, 2**32 - 1, 2**60, 2**64 - 1, len(data)):
            check(data[:pos] + struct.pack("<Q", value) + data[pos + 8 :])


def hostile(body: bytes, n_tensors: int = 0, n_kv: int = 1) -> bytes:
    """A 1 KB file: header, `body`, zeros."""
    data = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body
    return data + bytes(1024 - len(data))


def key(name: str, vtype: int) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", vtype)


T = GGUFValueType
HUGE = 2**60
HOSTILE = {
    "tensor count": hostile(b"", n_tensors=HUGE, n_kv=0),
    "metadata count": hostile(b"", n_kv=HUGE),
    "key length": hostile(struct.pack("<Q", HUGE)),
    "string length": hostile(key("s", T.STRING) + struct.pack("<Q", HUGE)),
    "uint8 array": hostile(key("a", T.ARRAY) + struct.pack("<IQ", T.UINT8, HUGE)),
    "string array": hostile(key("a", T.ARRAY) + struct.pack("<IQ", T.STRING, HUGE)),
    "array of arrays": hostile(key("a", T.ARRAY) + struct.pack("<IQ", T.ARRAY, HUGE)),
    "inner array": hostile(key("a", T.ARRAY) + struct.pack("<IQIQ", T.ARRAY, 1, T.UINT64, HUGE)),
    "tensor dims": hostile(struct.pack("<Q", 1) + b"w" + struct.pack("<IQQIQ", 2, 2**30, 2**30, 0, 0), 1, 0),
    "tensor elements": hostile(struct.pack("<Q", 1) + b"w" + struct.pack("<IQIQ", 1, HUGE, 0, 0), 1, 0),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_counts_allocate_nothing(what):
    data = HOSTILE[what]
    assert len(data) == 1024
    tracemalloc.start()
    try:
        assert check(data, "hostile.gguf") is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"{what}: peak {peak} bytes for a 1 KB file"  # a few KB of Python objects, in fact


def test_string_cap_bounds_the_work(tmp_path, monkeypatch):
    # A file of nothing but empty strings is the most strings per byte a file can hold (8 bytes each).
    # At the cap it parses; one more string is refused before the loop starts.
    monkeypatch.setattr(gguf_mod, "MAX_STRINGS", 100_000)
    for n, ok in [(100_000, True), (100_001, False)]:
        data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key("tokens", T.ARRAY) + struct.pack("<IQ", T.STRING, n) + bytes(8 * n)
        f = check(data, "strings.gguf")
        assert (f is not None) == ok
