"""Write a GGUF v3 file: the mirror image of ``ref/gguf.py``.

Used by the tests (to craft valid files, and bad ones by patching bytes) and by
``llama-beta synth`` (small synthetic models). The layout is the one ``ref/gguf.py``
documents: header, metadata, tensor infos, padding to the alignment, then each
tensor's bytes, each padded to the alignment, back to back in the order given.

Value types are inferred from Python values unless ``metadata_types`` names them:

    =====================  ===========================================================
    value                  GGUF type
    =====================  ===========================================================
    bool                   BOOL
    int                    UINT32 if 0 <= v < 2^32 (llama.cpp stores counts and ids so),
                           else INT32, INT64 or UINT64, the first that holds it
    float                  FLOAT32
    str / bytes            STRING (str encoded with errors="surrogateescape", so strings
                           our reader decoded from raw bytes come back byte for byte)
    NumPy scalar           the type of its dtype
    1-D NumPy array        ARRAY of the type of its dtype
    list of str / bytes    ARRAY of STRING
    list of bool           ARRAY of BOOL
    list of int            ARRAY of INT32 when all fit (as token_type arrays), else the
                           smallest of UINT32, INT64, UINT64 that holds all of them
    list of float          ARRAY of FLOAT32 (ints mixed in are converted)
    list of lists          ARRAY of ARRAY (each inner list inferred on its own)
    =====================  ===========================================================

``metadata_types[key]`` may be a :class:`GGUFValueType` (for an array: ``ARRAY``, element
type inferred) or a pair ``(GGUFValueType.ARRAY, element type)``; an empty list needs one.

Leaves out: big-endian files, GGUF v2 (identical layout; patch the version to get one),
splitting a model over several files.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from ref.ggml import BLOCK_SIZES, GGMLType
from ref.gguf import DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, MAX_NAME_BYTES, VALUE_DTYPES, GGUFValueType, align_up

T = GGUFValueType
_STRUCT = {t: struct.Struct("<" + c) for t, c in zip(VALUE_DTYPES, "BbHhIifBQqd")}
_TYPE_OF_DTYPE = {dt: t for t, dt in VALUE_DTYPES.items()}
_INT_RANGES = [  # (type, lowest, highest) in the order scalars try them
    (T.UINT32, 0, 2**32 - 1), (T.INT32, -(2**31), 2**31 - 1), (T.INT64, -(2**63), 2**63 - 1), (T.UINT64, 0, 2**64 - 1),
]


def write_gguf(
    path: str | os.PathLike,
    metadata: dict,
    tensors: dict[str, tuple[GGMLType, np.ndarray, tuple[int, ...]]],
    alignment: int = DEFAULT_ALIGNMENT,
    metadata_types: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``metadata`` and ``tensors`` (name -> (ggml type, raw bytes, NumPy-order shape)) to ``path``.

    ``raw`` is the tensor's data as a uint8 array (or any array whose bytes are the data,
    e.g. float32 for F32); its size must match the shape and type. The file is written to
    ``path + ".tmp"`` and renamed into place, so no half-written file is ever left at
    ``path``; an existing ``path`` is refused unless ``overwrite``. Returns ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    if alignment < 1 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    metadata, types = dict(metadata), dict(metadata_types or {})
    if alignment != DEFAULT_ALIGNMENT or "general.alignment" in metadata:
        if metadata.setdefault("general.alignment", alignment) != alignment:
            raise ValueError(f"metadata general.alignment={metadata['general.alignment']} but alignment={alignment}")
        types["general.alignment"] = T.UINT32
    blobs = [_tensor_bytes(name, *spec) for name, spec in tensors.items()]
    header = _header(metadata, types, tensors, blobs, alignment)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(bytes(align_up(len(header), alignment) - len(header)))  # pad to the data section
            for blob in blobs:
                f.write(blob)
                f.write(bytes(align_up(len(blob), alignment) - len(blob)))  # pad to the next tensor
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _header(metadata: dict, types: dict, tensors: dict, blobs: list[memoryview], alignment: int) -> bytearray:
    out = bytearray()
    # header: magic, version 3, tensor count, metadata count
    out += GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    # metadata: key, value type, value
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata key {key!r}: expected a non-empty str")
        vtype, etype = _value_type(key, value, types.get(key))
        _put_string(out, key, "strict")
        out += struct.pack("<I", vtype)
        _put_value(out, key, vtype, etype, value)
    # tensor infos: name, n_dims, ne (fastest first), type, offset in the data section
    offset = 0
    for (name, (ggml_type, _, shape)), blob in zip(tensors.items(), blobs):
        ne = tuple(reversed(shape))
        _put_string(out, name, "strict")
        out += struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, GGMLType(ggml_type), offset)
        offset = align_up(offset + len(blob), alignment)
    return out


def _tensor_bytes(name: str, ggml_type, raw: np.ndarray, shape) -> memoryview:
    """Check one tensor (name, shape, size) and return its bytes, little-endian and contiguous."""
    ggml_type, shape = GGMLType(ggml_type), tuple(int(d) for d in shape)
    if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"tensor {name!r}: expected a name of 1 to {MAX_NAME_BYTES} UTF-8 bytes")
    if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
        raise ValueError(f"tensor {name!r}: expected 1 to {MAX_DIMS} positive dimensions, got shape {shape}")
    block_elems, block_bytes = BLOCK_SIZES[ggml_type]
    if shape[-1] % block_elems:
        raise ValueError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of {ggml_type.name}'s block of {block_elems}")
    raw = np.ascontiguousarray(raw)
    if raw.dtype.byteorder == ">":
        raw = raw.astype(raw.dtype.newbyteorder("<"))
    nbytes = math.prod(shape) // block_elems * block_bytes
    if raw.nbytes != nbytes:
        raise ValueError(f"tensor {name!r}: {ggml_type.name} {shape} takes {nbytes} bytes, got {raw.nbytes}")
    return memoryview(raw.reshape(-1).view(np.uint8))


# ---------------------------------------------------------------- value types


def _value_type(key: str, value, given) -> tuple[GGUFValueType, GGUFValueType | None]:
    """(value type, element type or None) for ``value``: from ``given`` if set, else inferred."""
    if isinstance(given, tuple):
        return T(given[0]), T(given[1])
    if given is not None and T(given) != T.ARRAY:
        return T(given), None
    vtype, etype = _infer(key, value)
    if given is not None and vtype != T.ARRAY:
        raise ValueError(f"metadata {key!r}: ARRAY given for a non-list value {value!r}")
    return vtype, etype


def _infer(key: str, value) -> tuple[GGUFValueType, GGUFValueType | None]:
    if isinstance(value, (bool, np.bool_)):
        return T.BOOL, None
    if isinstance(value, np.generic):
        return _dtype_type(key, value.dtype), None
    if isinstance(value, int):
        return _int_type(key, [value], _INT_RANGES), None
    if isinstance(value, float):
        return T.FLOAT32, None
    if isinstance(value, (str, bytes)):
        return T.STRING, None
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return T.ARRAY, _dtype_type(key, value.dtype)
    if isinstance(value, (list, tuple, np.ndarray)):
        return T.ARRAY, _element_type(key, list(value))
    raise ValueError(f"metadata {key!r}: cannot store a {type(value).__name__}; pass metadata_types")


def _dtype_type(key: str, dtype: np.dtype) -> GGUFValueType:
    vtype = _TYPE_OF_DTYPE.get(dtype.newbyteorder("<"))
    if vtype is None:
        raise ValueError(f"metadata {key!r}: GGUF has no type for NumPy dtype {dtype}")
    return vtype


def _element_type(key: str, items: list) -> GGUFValueType:
    if not items:
        raise ValueError(f"metadata {key!r}: an empty list needs its element type in metadata_types")
    if all(isinstance(v, (str, bytes)) for v in items):
        return T.STRING
    if all(isinstance(v, (bool, np.bool_)) for v in items):
        return T.BOOL
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        return _int_type(key, items, [_INT_RANGES[1], _INT_RANGES[0], *_INT_RANGES[2:]])
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in items):
        return T.FLOAT32
    if all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
        return T.ARRAY
    raise ValueError(f"metadata {key!r}: a list of mixed kinds; pass metadata_types")


def _int_type(key: str, values: list, ranges) -> GGUFValueType:
    lo, hi = min(int(v) for v in values), max(int(v) for v in values)
    for vtype, low, high in ranges:
        if low <= lo and hi <= high:
            return vtype
    raise ValueError(f"metadata {key!r}: integer {lo if lo < -(2**63) else hi} does not fit in 64 bits")


# ---------------------------------------------------------------- encoding


def _put_string(out: bytearray, text: str | bytes, errors: str) -> None:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", errors)
    out += struct.pack("<Q", len(raw)) + raw


def _put_value(out: bytearray, key: str, vtype: GGUFValueType, etype, value) -> None:
    if vtype == T.STRING:
        _put_string(out, value, "surrogateescape")
    elif vtype == T.ARRAY:
        _put_array(out, key, etype, value)
    else:
        try:
            out += _STRUCT[vtype].pack(int(value) if vtype == T.BOOL else value)
        except struct.error as e:
            raise ValueError(f"metadata {key!r}: {value!r} as {vtype.name}: {e}") from None


def _put_array(out: bytearray, key: str, etype: GGUFValueType, items) -> None:
    out += struct.pack("<IQ", etype, len(items))
    if etype == T.STRING:
        for item in items:
            _put_string(out, item, "surrogateescape")
    elif etype == T.ARRAY:
        for item in items:
            _put_array(out, key, _infer(key, item)[1], item)  # each inner array has its own element type
    else:
        array = np.asarray(items)
        if array.dtype.kind in "iu" and VALUE_DTYPES[etype].kind in "iu":
            info = np.iinfo(VALUE_DTYPES[etype])
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise ValueError(f"metadata {key!r}: values outside {etype.name}'s range")
        out += np.ascontiguousarray(array, dtype=VALUE_DTYPES[etype]).tobytes()
