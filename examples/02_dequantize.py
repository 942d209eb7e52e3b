"""Dequantize one tensor of the real model and look at it.

Run: python examples/02_dequantize.py [tensor name]
Reads the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix) with ref.gguf, decodes one
tensor with ref.quants and prints its encoding, statistics and first values - and the
first block's bytes, so you can follow the formula by hand.
"""
from __future__ import annotations

import sys

import numpy as np

from llama_beta import registry
from ref.ggml import BLOCK_SIZES
from ref.gguf import GGUFFile
from ref.quants import dequantize

name = sys.argv[1] if len(sys.argv) > 1 else "blk.0.ffn_down.weight"
f = GGUFFile(registry.model_path("qwen2.5-coder-0.5b-instruct"))
info = f.tensors[name]
raw = f.raw(name)                                              # (rows, row_bytes) uint8, memory-mapped
qk, block_bytes = BLOCK_SIZES[info.ggml_type]
print(f"{name}: {info.ggml_type.name}, shape {info.shape}, {info.nbytes:,} bytes "
      f"= {8 * info.nbytes / info.n_elements:.3f} bits/weight ({qk} weights in {block_bytes} bytes a block)")

x = dequantize(raw, info.ggml_type, info.shape)               # float32, shape info.shape
print(f"float32: {x.nbytes:,} bytes ({x.nbytes / info.nbytes:.1f}x larger)")
print(f"mean {x.mean():+.5f}  std {x.std():.5f}  min {x.min():+.4f}  max {x.max():+.4f}")
print(f"distinct values in the first block: {len(np.unique(x.reshape(-1)[:qk]))} (of {qk} weights)")
print("first block's bytes:", " ".join(f"{b:02x}" for b in raw.reshape(-1)[:min(block_bytes, 24)]), "...")
print("first 8 weights:", np.array2string(x.reshape(-1)[:8], precision=5))
