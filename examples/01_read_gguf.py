"""Open a GGUF file and look inside: header, metadata, tensor infos, and the raw bytes of a tensor.

    python examples/01_read_gguf.py [path/to/model.gguf]

Without a path it opens the registry's default model (fetch it once with
`llama-beta models fetch qwen2.5-coder-0.5b-instruct`). Only ref.gguf is used: the
file is memory-mapped, so this runs in a fraction of a second and reads almost nothing
of the ~500 MB of weights.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from ref.gguf import GGUFFile


def default_model():
    from llama_beta import registry

    return registry.model_path(registry.DEFAULT_MODEL)


def show_value(value) -> str:
    """A metadata value in one short line: long strings and arrays are abbreviated."""
    if isinstance(value, str):
        text = value.replace("\n", "\\n")
        return repr(text[:60] + "...") if len(text) > 60 else repr(text)
    if isinstance(value, (list, np.ndarray)):
        head = [str(v) for v in list(value[:4])]
        return f"[{', '.join(head)}{', ...' if len(value) > 4 else ''}] ({len(value)} items)"
    return repr(value)


def main(path) -> None:
    start = time.perf_counter()
    f = GGUFFile(path)
    elapsed = time.perf_counter() - start
    size = f.buffer.nbytes
    print(f"{f.path.name}: {size / 2**20:.1f} MiB, parsed and validated in {elapsed * 1e3:.0f} ms")

    # The header: the first 24 bytes.
    print("\nfirst 24 bytes:", f.buffer[:24].tobytes().hex(" "))
    print(f"  magic 'GGUF', version {f.version}, {len(f.tensors)} tensors, {len(f.metadata)} metadata keys")
    print(f"  alignment {f.alignment}; the data section starts at byte {f.data_offset} "
          f"({f.data_offset / size:.1%} of the file is header)")

    # Metadata: key -> value, with the type the file stored it as.
    print("\nmetadata:")
    for key, value in f.metadata.items():
        vtype, etype = f.metadata_types[key]
        kind = f"{vtype.name}[{etype.name}]" if etype is not None else vtype.name
        print(f"  {key:42s} {kind:15s} {show_value(value)}")

    # Tensor infos: NumPy shape (outermost first), ggml type, where the bytes are.
    print("\nfirst tensors:")
    for info in list(f.tensors.values())[:8]:
        bits = info.nbytes * 8 / info.n_elements
        print(f"  {info.name:28s} {str(info.shape):14s} {info.ggml_type.name:5s} {bits:5.2f} bits/weight "
              f"at byte {info.offset:>10,}  ({info.nbytes:,} bytes)")

    # Raw bytes: a zero-copy view of the map, one row of blocks per matrix row.
    if not f.tensors:
        print("\n(no tensors: a vocabulary-only file)")
        return
    name = next(iter(f.tensors))
    raw = f.raw(name)
    print(f"\nraw('{name}'): uint8 {raw.shape} = (rows, bytes per row); first row starts",
          raw[0, :16].tobytes().hex(" "))
    print(f"  a view of the map (shares memory: {np.shares_memory(raw, f.buffer)}, writeable: {raw.flags.writeable})")
    f.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else default_model())
