"""The output product on its own: Qwen2.5-0.5B's 151936 x 896 Q8_0 logits matrix (issue 4's 70 % target).

    python benchmarks/output_product.py [--configs 8,1,1 8,2,1 ...] [--reps 20] [--json FILE]

Times, per launch (CUDA events, launch cost excluded: ``runtime.kernel_time_us``), with the final RMSNorm inside
as the decode step runs it:
- ``v4``: ``decode_matvec`` on the raw GGUF blocks (what ``output_logits`` launches by default);
- ``v22 (w, R, passes)``: ``launch_planar_q8`` on the two-plane layout (``matmul.PlanarQ8``), for each config;
- ``read``: a kernel that only streams the same number of bytes with 16-byte loads (the ceiling of any layout).
Each v22 result is compared with v4's (float32 sums of K terms in other orders: about K u of the largest
logit). Bandwidth counts the weight bytes once; % is of the 4.3 TB/s copy bandwidth measured on the H200.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from numba import cuda, uint32

from numba_kernels import matmul, ptx
from numba_kernels.runtime import kernel_time_us
from ref.ggml import GGMLType

N, K = 151936, 896
COPY_BW = 4.3e12


@cuda.jit
def _read_all(w32, n4, out):
    """Every thread xors the 16-byte words i, i + grid, ... of w32 (n4 of them) and writes one word."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    t = uint32(0)
    while i < n4:
        a, b, c, d = ptx.load_u32x4(w32, 4 * i)
        t ^= a ^ b ^ c ^ d
        i += step
    out[cuda.grid(1)] = t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="*", default=["8,1,1", "4,1,1", "8,1,2", "8,1,4", "4,1,4", "4,1,8", "2,1,8",
                                                     "8,2,2"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", type=int, default=N, help="rows of the matrix (fewer: a quick check)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n_rows = args.rows
    raw = matmul.random_weight(rng, GGMLType.Q8_0, n_rows, K)
    nbytes = raw.nbytes
    w = cuda.to_device(raw)
    x = cuda.to_device(rng.standard_normal(K).astype(np.float32))
    nw = cuda.to_device(rng.uniform(0.5, 1.5, K).astype(np.float32))
    out_v4 = cuda.device_array(n_rows, np.float32)
    out = cuda.device_array(n_rows, np.float32)
    rows = []

    def record(name, us, err=None):
        gbs = nbytes / (us * 1e-6) / 1e9
        rows.append({"kernel": name, "us": round(us, 2), "GB/s": round(gbs),
                     "pct_copy": round(100 * gbs * 1e9 / COPY_BW, 1), "max_rel_err": err})
        extra = "" if err is None else f"   max |v22 - v4| / max |y| = {err:.1e}"
        print(f"{name:22s} {us:8.2f} us  {gbs:6.0f} GB/s  {100 * gbs * 1e9 / COPY_BW:5.1f} %{extra}", flush=True)

    us = kernel_time_us(lambda s, i: matmul.decode_matvec(x, w, GGMLType.Q8_0, K, out_v4, norm_weight=nw,
                                                          eps=1e-6, stream=s), args.reps)
    record("v4 (raw blocks)", us)
    want = out_v4.copy_to_host().astype(np.float64)
    scale = np.abs(want).max()

    planar = matmul.PlanarQ8(w, K)
    for text in args.configs:
        cfg = tuple(int(v) for v in text.split(","))
        us = kernel_time_us(lambda s, i: matmul.launch_planar_q8(x, planar, out, norm_weight=nw, eps=1e-6,
                                                                 config=cfg, stream=s), args.reps)
        err = float(np.abs(out.copy_to_host() - want).max() / scale)
        record(f"v22 {cfg}", us, err)

    n4 = nbytes // 16
    w32 = w.reshape(nbytes).view(np.uint32)
    for blocks in (132 * 8, 132 * 16):
        sink = cuda.device_array(blocks * 256, np.uint32)
        us = kernel_time_us(lambda s, i: _read_all[blocks, 256, s](w32, n4, sink), args.reps)
        record(f"read ({blocks} blocks)", us)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": [n_rows, K], "type": "Q8_0", "bytes": nbytes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
