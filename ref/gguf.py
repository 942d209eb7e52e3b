"""Read a GGUF file: header, metadata, tensor infos, and zero-copy views of the tensor data.

A GGUF file is one little-endian byte stream in four parts::

    header        magic "GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata      count x (key: string | value type u32 | value)
    tensor infos  count x (name: string | n_dims u32 | ne[n_dims] u64 | ggml type u32 | offset u64)
    data          padding to `alignment`, then each tensor's bytes at its offset

A *string* is a u64 byte length followed by that many bytes of UTF-8 (no terminating
NUL). A *value* is a scalar of one of the 13 value types, a string, or an array
(element type u32, count u64, then the elements; arrays may hold arrays). A tensor's
``ne`` lists its dimensions fastest-varying first, so its NumPy shape is ``ne``
reversed: ``token_embd.weight`` with ``ne = (896, 151936)`` is a ``(151936, 896)``
matrix of 151936 rows of 896 weights. Tensor offsets count from the start of the data
section, which begins at the end of the tensor infos rounded up to the alignment.

The reader memory-maps the file, walks it field by field in gguf-py's style
("comment / read / advance"), and validates every count, length, type, name, shape and
offset *before* anything is used, so that a truncated or hostile file raises one
:class:`GGUFError` naming the file, the field, the byte offset and what was expected,
and can neither make the reader allocate more than the file holds nor run for long.
Tensor data is never read: :meth:`GGUFFile.raw` returns a read-only view of the map.

Leaves out: big-endian files (refused with a message that says so), GGUF v1 (refused),
writing (see ``llama_beta/gguf_writer.py``), dequantization (``ref/quants.py``), and
the meaning of the metadata keys (``llama_beta/config.py``).

References: the GGUF specification (ggml/docs/gguf.md); llama.cpp's loader
``gguf_init_from_file_impl`` in ggml/src/gguf.cpp, whose every check is repeated here;
gguf-py's ``GGUFReader`` (gguf-py/gguf/gguf_reader.py), whose style this follows.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from ref.ggml import BLOCK_SIZES, GGMLType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v2 and v3 share one layout; v3 only added big-endian files
DEFAULT_ALIGNMENT = 32  # used when the file has no `general.alignment` key
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # ggml's GGML_MAX_NAME is 64 *including* the terminating NUL
INT64_MAX = 2**63 - 1

# Caps against hostile files. Every count is also bounded by the bytes left in the file
# (see *_MIN_BYTES), so a small file cannot claim a large count; the caps bound what a
# large file can make us do. Each item below costs Python work (an object, a loop turn);
# real files sit far below each cap (largest known values in the comments), and at all
# caps at once a parse takes about a second. Numeric arrays cost nothing per element
# (they are views of the map), so only llama.cpp's per-array limit applies to them.
MAX_ALIGNMENT = 1 << 20  # 1 MiB; writers use 32 (gguf-py, llama.cpp), page sizes are <= 64 KiB
MAX_TENSORS = 1 << 14  # 16,384 tensor infos (~0.15 s); the largest models have 1-3 thousand
MAX_KV = 1 << 14  # 16,384 metadata keys (~0.1 s); real files have under 100
MAX_STRINGS = 1 << 21  # 2,097,152 strings in arrays, in total (~0.6 s); real: 262k tokens + 500k merges
MAX_STRING_BYTES = 1 << 28  # 256 MiB per string; real: chat templates, tokenizer.json dumps (~35 MB)
MAX_ARRAY_ELEMENTS = 1 << 30  # per array, as llama.cpp's GGUF_MAX_ARRAY_ELEMENTS
MAX_ARRAY_DEPTH = 2  # an array may hold arrays, which may not hold arrays
MAX_SUBARRAYS = 1 << 14  # arrays inside arrays, in total (~0.1 s); no known real file has any

# The fewest bytes a metadata entry / tensor info can take: what "bounded by the bytes
# left" multiplies a count by. key (u64 length + >= 1 byte) + type u32 + >= 1 byte value:
KV_MIN_BYTES = 8 + 1 + 4 + 1
# name (u64 length + >= 1 byte) + n_dims u32 + one u64 dimension + type u32 + offset u64:
TENSOR_INFO_MIN_BYTES = 8 + 1 + 4 + 8 + 4 + 8


class GGUFError(ValueError):
    """A problem with a GGUF file, said in one line: file, field, byte offset, expected, got."""

    def __init__(self, path, field: str, offset: int, expected: str, got) -> None:
        self.path, self.field, self.offset, self.expected, self.got = str(path), field, offset, expected, got
        super().__init__(f"{path}: {field} at byte {offset}: expected {expected}, got {got}")

    def __reduce__(self):  # survive pickling (multiprocessing) whatever __init__ this or a subclass takes
        return _rebuild_error, (type(self), self.args, self.__dict__)


def _rebuild_error(cls: type, args: tuple, state: dict) -> GGUFError:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class GGUFValueType(IntEnum):
    """The 13 metadata value types (gguf.h's ``gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


T = GGUFValueType
# NumPy dtype of each fixed-size value type, little-endian as the file stores it.
VALUE_DTYPES: dict[GGUFValueType, np.dtype] = {
    T.UINT8: np.dtype("<u1"), T.INT8: np.dtype("<i1"), T.UINT16: np.dtype("<u2"), T.INT16: np.dtype("<i2"),
    T.UINT32: np.dtype("<u4"), T.INT32: np.dtype("<i4"), T.FLOAT32: np.dtype("<f4"), T.BOOL: np.dtype("?"),
    T.UINT64: np.dtype("<u8"), T.INT64: np.dtype("<i8"), T.FLOAT64: np.dtype("<f8"),
}
# struct format of each fixed-size value type (a BOOL is one byte, read as a number to check it is 0 or 1)
_SCALAR = {t: struct.Struct("<" + c) for t, c in zip(VALUE_DTYPES, "BbHhIifBQqd")}
# Fewest bytes one value of a type takes: a string is at least its u64 length, an array
# at least its element type u32 and count u64.
VALUE_MIN_BYTES = {**{t: dt.itemsize for t, dt in VALUE_DTYPES.items()}, T.STRING: 8, T.ARRAY: 4 + 8}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def align_up(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


def _q(name: str, limit: int = 80) -> str:
    """A key or tensor name quoted for a one-line message (escapes newlines, caps the length)."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how it is laid out."""

    name: str
    shape: tuple[int, ...]  # NumPy order, outermost first: reversed(ne)
    ne: tuple[int, ...]  # GGUF order: ne[0] varies fastest (the row length)
    ggml_type: GGMLType
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    n_elements: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of ``ne[0]`` weights: a whole number of blocks."""
        block_elems, block_bytes = BLOCK_SIZES[self.ggml_type]
        return self.ne[0] // block_elems * block_bytes

    @property
    def n_rows(self) -> int:
        """Rows of ``ne[0]`` weights: the product of ``shape[:-1]`` (1 for a vector)."""
        return self.n_elements // self.ne[0]


class GGUFFile:
    """A parsed, validated GGUF file, memory-mapped; tensor data stays on disk until touched.

    Attributes: ``path``, ``version``, ``alignment``, ``data_offset`` (where the data
    section starts), ``metadata`` (key -> value: int, float, bool, str; numeric arrays as
    read-only NumPy arrays viewing the map; string arrays as ``list[str]``; arrays of
    arrays as lists), ``metadata_types`` (key -> (value type, element type or None)),
    ``tensors`` (name -> :class:`TensorInfo`, in file order) and ``buffer`` (the whole
    file as a read-only uint8 array backed by the map).

    Value strings are decoded with ``errors="surrogateescape"`` (vocabularies may hold
    raw bytes: ``s.encode("utf-8", "surrogateescape")`` gives them back); keys and
    tensor names must be valid UTF-8. Missing or unreadable files raise ``OSError``;
    everything wrong *inside* a file raises :class:`GGUFError`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.metadata: dict[str, object] = {}
        self.metadata_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._mm = None
        self.buffer = None
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:  # mmap refuses empty files
                raise GGUFError(path, "magic", 0, "the 4 bytes 'GGUF'", "an empty file")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the map keeps its own handle
        self._size = len(self._mm)
        try:
            self.buffer = np.frombuffer(self._mm, dtype=np.uint8)  # read-only: the map is ACCESS_READ
            self._parse()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the file, top to bottom

    # --8<-- [start:parse]
    def _parse(self) -> None:
        self._pos, self._kv_at, self._names, self._strings, self._subarrays = 0, {}, set(), 0, 0
        # magic: the four bytes "GGUF"
        self._read_magic()
        # version: u32, 2 or 3
        self.version = self._read_version()
        # tensor count, metadata count: u64 each, bounded by the bytes left in the file
        n_tensors = self._read_count("tensor count", TENSOR_INFO_MIN_BYTES, MAX_TENSORS)
        n_kv = self._read_count("metadata count", KV_MIN_BYTES, MAX_KV, reserved=n_tensors * TENSOR_INFO_MIN_BYTES)
        # metadata: n_kv x (key, value type, value)
        for _ in range(n_kv):
            self._read_kv()
        self.alignment = self._alignment()
        # tensor infos: n_tensors x (name, n_dims, ne, type, offset)
        infos = [self._read_tensor_info(i) for i in range(n_tensors)]
        # data: starts at the end of the infos rounded up to the alignment (when there are tensors)
        self.data_offset = align_up(self._pos, self.alignment) if n_tensors else self._pos
        self._place_tensors(infos)
    # --8<-- [end:parse]

    # ------------------------------------------------------------------ the one read primitive

    # --8<-- [start:take]
    def _take(self, nbytes: int, field: str) -> int:
        """Claim ``nbytes`` at the cursor: check they are in the file, advance, return where they start."""
        start = self._pos
        if nbytes > self._size - start:
            raise self._error(field, start, f"{nbytes} bytes", f"only {self._size - start} left in the file")
        self._pos = start + nbytes
        return start

    def _read(self, fmt: struct.Struct, field: str):
        return fmt.unpack_from(self._mm, self._take(fmt.size, field))[0]
    # --8<-- [end:take]

    def _error(self, field: str, offset: int, expected: str, got) -> GGUFError:
        return GGUFError(self.path, field, offset, expected, got)

    # ------------------------------------------------------------------ header

    def _read_magic(self) -> None:
        head = self._mm[:64]
        if head[:4] != GGUF_MAGIC:
            raise self._error("magic", 0, "the 4 bytes 'GGUF'", _what_is_it(head))
        self._take(4, "magic")

    def _read_version(self) -> int:
        at = self._pos
        version = self._read(_U32, "version")
        if version and version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            raise self._error("version", at, "a little-endian file", f"{version:#010x}, a big-endian GGUF file")
        if version == 1:
            raise self._error("version", at, "2 or 3", "1 (GGUF v1 used 32-bit counts and is no longer supported)")
        if version not in SUPPORTED_VERSIONS:
            raise self._error("version", at, "2 or 3", version)
        return version

    def _read_count(self, field: str, min_bytes: int, cap: int, reserved: int = 0) -> int:
        """A u64 count of items of at least ``min_bytes`` each: it must fit in the bytes left and the cap."""
        at = self._pos
        count = self._read(_U64, field)
        left = max(self._size - self._pos - reserved, 0)
        if count > left // min_bytes:
            raise self._error(field, at, f"at most {left // min_bytes} (items of >= {min_bytes} bytes in the {left} bytes left)", count)
        if count > cap:
            raise self._error(field, at, f"at most {cap} (this reader's cap)", count)
        return count

    # ------------------------------------------------------------------ metadata

    def _read_kv(self) -> None:
        at = self._pos
        # key: a non-empty, unique, valid UTF-8 string
        key = self._read_string("key", strict=True)
        if not key:
            raise self._error("key", at, "a non-empty key", "an empty one")
        if key in self._kv_at:
            raise self._error(f"key {_q(key)}", at, "each key once", f"a second one (first at byte {self._kv_at[key]})")
        self._kv_at[key] = at
        # value type: u32, then the value (arrays: element type u32, count u64, elements)
        vtype = self._read_value_type(f"key {_q(key)} value type")
        if vtype == T.ARRAY:
            etype, value = self._read_array(f"key {_q(key)}", depth=1)
        else:
            etype, value = None, self._read_scalar(vtype, f"key {_q(key)}")
        self.metadata[key] = value
        self.metadata_types[key] = (vtype, etype)

    def _read_value_type(self, field: str) -> GGUFValueType:
        at = self._pos
        vtype = self._read(_U32, field)
        if vtype >= len(GGUFValueType):
            raise self._error(field, at, "a value type 0 to 12", vtype)
        return GGUFValueType(vtype)

    def _read_scalar(self, vtype: GGUFValueType, field: str):
        if vtype == T.STRING:
            return self._read_string(field, strict=False)
        at = self._pos
        value = self._read(_SCALAR[vtype], field)
        if vtype == T.BOOL:
            if value > 1:
                raise self._error(field, at, "a BOOL stored as 0 or 1", value)
            return bool(value)
        return value

    def _read_string(self, field: str, strict: bool, cap: int | None = None, why: str = "this reader's cap") -> str:
        """A u64 length, checked against ``cap`` and the bytes left *before* anything is read, then UTF-8."""
        at, cap = self._pos, MAX_STRING_BYTES if cap is None else cap
        n = self._read(_U64, f"{field} length")
        if n > self._size - self._pos:
            raise self._error(f"{field} length", at, f"at most {self._size - self._pos} bytes (what is left in the file)", n)
        if n > cap:
            raise self._error(f"{field} length", at, f"at most {cap} bytes ({why})", n)
        start = self._take(n, field)
        return self._decode(self._mm[start : start + n], field, start, strict)

    def _decode(self, raw: bytes, field: str, start: int, strict: bool) -> str:
        try:
            return raw.decode("utf-8", "strict" if strict else "surrogateescape")
        except UnicodeDecodeError as e:
            raise self._error(field, start + e.start, "valid UTF-8", f"byte {raw[e.start]:#04x}") from None

    def _read_array(self, field: str, depth: int):
        """An array value: element type u32, count u64 (bounded), then the elements."""
        etype = self._read_value_type(f"{field} array element type")
        if etype == T.ARRAY and depth >= MAX_ARRAY_DEPTH:
            raise self._error(f"{field} array element type", self._pos - 4, f"arrays nested at most {MAX_ARRAY_DEPTH} deep", "a deeper one")
        count = self._read_count(f"{field} array length", VALUE_MIN_BYTES[etype], MAX_ARRAY_ELEMENTS)
        if etype == T.STRING:
            return etype, self._read_strings(count, field)
        if etype == T.ARRAY:
            self._subarrays += count
            if self._subarrays > MAX_SUBARRAYS:
                raise self._error(f"{field} array length", self._pos - 8, f"at most {MAX_SUBARRAYS} nested arrays in all", self._subarrays)
            return etype, [self._read_array(f"{field}[{i}]", depth + 1)[1] for i in range(count)]
        dtype = VALUE_DTYPES[etype]
        start = self._take(count * dtype.itemsize, field)
        raw = self.buffer[start : start + count * dtype.itemsize]  # zero-copy view of the map
        if etype == T.BOOL and count and raw.max() > 1:
            bad = int(np.argmax(raw > 1))
            raise self._error(f"{field}[{bad}]", start + bad, "a BOOL stored as 0 or 1", int(raw[bad]))
        return etype, raw.view(dtype)

    # --8<-- [start:strings]
    def _read_strings(self, count: int, field: str) -> list[str]:
        """``count`` strings. The hot loop of a vocabulary (300k strings): it inlines ``_take``'s check."""
        self._strings += count
        if self._strings > MAX_STRINGS:
            raise self._error(f"{field} array length", self._pos - 8, f"at most {MAX_STRINGS} strings in all arrays", self._strings)
        mm, pos, size, unpack = self._mm, self._pos, self._size, _U64.unpack_from
        out = [""] * count
        for i in range(count):
            if size - pos < 8:
                raise self._error(f"{field}[{i}] length", pos, "8 bytes", f"only {size - pos} left in the file")
            (n,) = unpack(mm, pos)
            pos += 8
            if n > size - pos or n > MAX_STRING_BYTES:
                raise self._error(f"{field}[{i}] length", pos - 8, f"at most {min(size - pos, MAX_STRING_BYTES)} bytes", n)
            out[i] = mm[pos : pos + n].decode("utf-8", "surrogateescape")  # never fails: bad bytes escape
            pos += n
        self._pos = pos
        return out
    # --8<-- [end:strings]

    def _alignment(self) -> int:
        """``general.alignment``: a UINT32 power of two up to ``MAX_ALIGNMENT``; 32 when absent."""
        key = "general.alignment"
        if key not in self.metadata:
            return DEFAULT_ALIGNMENT
        vtype, _ = self.metadata_types[key]
        if vtype != T.UINT32:
            raise self._error(f"key {_q(key)}", self._kv_at[key], "a UINT32 value", vtype.name)
        alignment = self.metadata[key]
        if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
            raise self._error(f"key {_q(key)}", self._kv_at[key], f"a power of two from 1 to {MAX_ALIGNMENT}", alignment)
        return alignment

    # ------------------------------------------------------------------ tensor infos

    # --8<-- [start:tensor_info]
    def _read_tensor_info(self, i: int) -> tuple:
        # name: 1 to 63 bytes of valid UTF-8, unique
        at = self._pos
        name = self._read_string(f"tensor #{i} name", True, MAX_NAME_BYTES, "ggml's GGML_MAX_NAME is 64 with the NUL")
        if not name:
            raise self._error(f"tensor #{i} name", at, "a non-empty name", "an empty one")
        tensor = f"tensor {_q(name)}"  # how messages name it
        if name in self._names:
            raise self._error(f"{tensor} name", at, "each tensor name once", "a second one")
        self._names.add(name)
        # n_dims u32, ne[n_dims] u64 (fastest-varying first)
        ne, ne_at = self._read_dims(tensor)
        # ggml type u32: a type whose block divides ne[0]
        ggml_type = self._read_ggml_type(tensor, ne, ne_at)
        # offset u64, relative to the data section
        offset_at = self._pos
        return name, ne, ggml_type, self._read(_U64, f"{tensor} offset"), offset_at
    # --8<-- [end:tensor_info]

    def _read_dims(self, tensor: str) -> tuple[tuple[int, ...], int]:
        at = self._pos
        n_dims = self._read(_U32, f"{tensor} dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._error(f"{tensor} dims", at, f"1 to {MAX_DIMS} dimensions", n_dims)
        ne = []
        for j in range(n_dims):
            dim = self._read(_U64, f"{tensor} ne[{j}]")
            if not 1 <= dim <= INT64_MAX:
                raise self._error(f"{tensor} ne[{j}]", self._pos - 8, "a dimension from 1 to 2^63-1", dim)
            ne.append(dim)
        if math.prod(ne) > INT64_MAX:
            raise self._error(f"{tensor} dims", at, "an element count below 2^63", " x ".join(map(str, ne)))
        return tuple(ne), at + 4

    def _read_ggml_type(self, tensor: str, ne: tuple[int, ...], ne_at: int) -> GGMLType:
        at = self._pos
        type_id = self._read(_U32, f"{tensor} type")
        if type_id not in GGMLType._value2member_map_ or GGMLType(type_id) not in BLOCK_SIZES:
            raise self._error(f"{tensor} type", at, "a ggml type id this reader knows (ref.ggml.GGMLType)", type_id)
        ggml_type = GGMLType(type_id)
        block_elems = BLOCK_SIZES[ggml_type][0]
        if ne[0] % block_elems:
            raise self._error(f"{tensor} ne[0]", ne_at, f"a multiple of {block_elems} ({ggml_type.name}'s block)", ne[0])
        return ggml_type

    # ------------------------------------------------------------------ data section

    # --8<-- [start:place]
    def _place_tensors(self, infos: list[tuple]) -> None:
        """Check each tensor's data: aligned, right after the previous one (llama.cpp's rule), inside the file."""
        if infos and self.data_offset > self._size:
            raise self._error("data section", self._pos, f"padding to byte {self.data_offset} (alignment {self.alignment})", f"a file of {self._size} bytes")
        expected, previous = 0, "the start of the data section"
        for name, ne, ggml_type, rel, at in infos:
            field = f"tensor {_q(name)} offset"
            if rel % self.alignment:
                raise self._error(field, at, f"a multiple of the alignment {self.alignment}", rel)
            if rel != expected:
                how = "tensors would overlap" if rel < expected else "llama.cpp allows no gaps"
                raise self._error(field, at, f"{expected}: right after {previous}, aligned ({how})", rel)
            block_elems, block_bytes = BLOCK_SIZES[ggml_type]
            n_elements = math.prod(ne)
            nbytes = n_elements // block_elems * block_bytes
            start = self.data_offset + rel
            if start + nbytes > self._size:
                raise self._error(f"tensor {_q(name)} data", at, f"{nbytes} bytes from byte {start} inside the file", f"a file of {self._size} bytes")
            self.tensors[name] = TensorInfo(name, tuple(reversed(ne)), ne, ggml_type, start, nbytes, n_elements)
            expected, previous = align_up(rel + nbytes, self.alignment), f"tensor {_q(name)}"
    # --8<-- [end:place]

    # ------------------------------------------------------------------ public

    def raw(self, name: str) -> np.ndarray:
        """Tensor ``name``'s bytes as a read-only, zero-copy uint8 view shaped ``(n_rows, row_bytes)``."""
        if self.buffer is None:
            raise ValueError(f"{self.path}: the file is closed")
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {_q(name)}")
        t = self.tensors[name]
        return self.buffer[t.offset : t.offset + t.nbytes].reshape(t.n_rows, t.row_bytes)  # (rows, row_bytes)

    @property
    def data_end(self) -> int:
        """The byte just past the last tensor's data (``data_offset`` when there are none)."""
        return max((t.offset + t.nbytes for t in self.tensors.values()), default=self.data_offset)

    def close(self) -> None:
        """Release the map. Views handed out earlier (``raw``, numeric metadata) keep it alive until they go."""
        self.buffer = None
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still export the buffer: it is unmapped when the last one is freed
                pass

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, tensors={len(self.tensors)}, metadata={len(self.metadata)})"


def _what_is_it(head: bytes) -> str:
    """Name a file that is not GGUF, from its first bytes, for the magic error message."""
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"algg"):
        return f"{head[:4]!r}: a pre-GGUF ggml/GGJT file (2023); convert it again with llama.cpp"
    if head[:4] == b"FUGG":
        return "b'FUGG': a byte-swapped magic (a big-endian file?)"
    if head[:2] == b"PK":
        return "b'PK': a zip archive (PyTorch checkpoints are zip files); convert it to GGUF first"
    if len(head) > 8 and head[8:9] == b"{":
        return f"{head[:4]!r}: a safetensors file; convert it to GGUF first"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (run `git lfs pull`)"
    if head.lstrip()[:1] == b"<":
        return f"{head[:4]!r}: an HTML/XML page (a failed download?)"
    return repr(head[:4])
