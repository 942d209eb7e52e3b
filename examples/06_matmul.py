"""A matrix-vector product straight from quantized weights, checked against dequantize-then-NumPy.

Run: python examples/06_matmul.py [tensor name]
Takes one weight of the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix), multiplies
it by a random activation vector with ref.matmul, and compares with dequantizing the matrix
first and calling NumPy in float64. It also prints what one decode step costs for this
matrix: bytes of weights read, FLOPs, and the time it takes at the H200's bandwidth.
"""
from __future__ import annotations

import sys

import numpy as np

from llama_beta import registry
from ref.gguf import GGUFFile
from ref.matmul import matmul, term_magnitude
from ref.quants import dequantize

name = sys.argv[1] if len(sys.argv) > 1 else "blk.0.ffn_down.weight"
f = GGUFFile(registry.model_path("qwen2.5-coder-0.5b-instruct"))
info = f.tensors[name]
N, K = info.shape                                        # N output features, K input features
w_raw = f.raw(name)                                      # [N, row_bytes] uint8, memory-mapped
print(f"{name}: {info.ggml_type.name}, W is {N} x {K}, {w_raw.nbytes:,} bytes "
      f"({8 * w_raw.nbytes / (N * K):.2f} bits/weight)")

rng = np.random.default_rng(0)
x = rng.standard_normal(K).astype(np.float32)            # one token's activations [K]
y = matmul(x, w_raw, info.ggml_type, K)                  # [N], float32

W = dequantize(w_raw, info.ggml_type, (N, K)).astype(np.float64)   # [N, K]
exact = W @ x.astype(np.float64)                                   # [N], float64
mag = term_magnitude(x, w_raw, info.ggml_type, K)                  # [N]: sum_k |x_k W_nk|
err = np.abs(y - exact)
print(f"y[:4] = {np.array2string(y[:4], precision=4)}")
print(f"float32 vs float64: max |err| = {err.max():.2e}; relative to |y|: {np.max(err / np.abs(exact)):.2e}, "
      f"relative to sum|x w|: {np.max(err / mag):.2e} (2^-24 = {2.0 ** -24:.1e})")
print("  (a sum that cancels has a large error relative to |y|: the scale that bounds float32")
print("   rounding is sum|x w|, which is why kernel tests use it)")

flops = 2 * N * K
print(f"one decode step: {w_raw.nbytes / 1e6:.2f} MB of weights, {flops / 1e6:.1f} MFLOP "
      f"= {flops / w_raw.nbytes:.1f} FLOP/byte -> memory-bound; "
      f"at 4.3 TB/s it takes {w_raw.nbytes / 4.3e12 * 1e6:.2f} us")
