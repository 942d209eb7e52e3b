"""RMSNorm and RoPE, the two stages that every Qwen2 / Phi-3 layer runs before attention.

Run it:  python examples/04_rmsnorm_rope.py   (CPU only, NumPy reference, under a second)

What you will see
1. RMSNorm rescales each token's vector to root-mean-square 1 (before the weight), so
   multiplying the input by any positive number changes nothing.
2. RoPE rotates pairs of a head vector by position-dependent angles: lengths stay the same,
   and the score q.k of two rotated vectors depends only on how far apart they are.
3. The two pairings of llama.cpp: NEOX ("rotate half", Qwen2/Phi-3) and interleaved (llama).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ref import rmsnorm, rope  # noqa: E402

rng = np.random.default_rng(0)
C, hs = 896, 64                          # Qwen2.5-0.5B: model width 896, head size 64
eps = 1e-6

# 1. RMSNorm ----------------------------------------------------------------------------------
x = rng.standard_normal((3, C)).astype(np.float32) * np.float32([[0.01], [1.0], [300.0]])
w = np.ones(C, np.float32)
y = rmsnorm.rmsnorm(x, w, eps)
print("RMSNorm")
print("  input  rms per token:", np.sqrt((x.astype(np.float64) ** 2).mean(axis=1)).round(4))
print("  output rms per token:", np.sqrt((y.astype(np.float64) ** 2).mean(axis=1)).round(6))
y_scaled = rmsnorm.rmsnorm(x * np.float32(1000.0), w, eps)
print("  max |rmsnorm(1000 x) - rmsnorm(x)| =", f"{np.abs(y_scaled - y).max():.2e}",
      "(not 0: eps = 1e-6 is not negligible next to the first token's mean square 1e-4)")

# 2. RoPE: norms and relative positions ---------------------------------------------------------
q = rng.standard_normal((1, 1, hs)).astype(np.float32)
k = rng.standard_normal((1, 1, hs)).astype(np.float32)
base = 1000000.0                         # Qwen2's rope.freq_base


def score(pq, pk):
    return float((rope.rope(q, [pq], base) * rope.rope(k, [pk], base)).sum())


print("\nRoPE (head size 64, base 1e6, NEOX pairing)")
print(f"  |q| = {np.linalg.norm(q):.5f}, |rope(q, pos=1234)| = {np.linalg.norm(rope.rope(q, [1234], base)):.5f}")
for pq, pk in ((10, 3), (110, 103), (5010, 5003), (10, 9)):
    print(f"  q at {pq:5}, k at {pk:5} (distance {pq - pk}): q.k = {score(pq, pk):+.5f}")
theta = rope.rope_angles([1], hs, base)[0]
print(f"  angle per position: pair 0 turns {theta[0]:.3f} rad, pair 31 turns {theta[-1]:.2e} rad"
      " - fast pairs see nearby tokens, slow pairs far ones")

# 3. the two pairings ----------------------------------------------------------------------------
v = np.arange(8, dtype=np.float32).reshape(1, 1, 8)
print("\nWhich entries rotate together (rot_dims = 8, position 1):")
print("  input        ", v[0, 0])
print("  NEOX (i, i+4)", rope.rope(v, [1], 10000.0, neox=True)[0, 0].round(3))
print("  interleaved  ", rope.rope(v, [1], 10000.0, neox=False)[0, 0].round(3))
