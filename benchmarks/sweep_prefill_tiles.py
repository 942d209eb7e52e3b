"""Time every prefill tile configuration at the prefill shapes (device time, T tokens), to choose
``prefill_config`` (v10) and ``mma_config`` (v11).

    python benchmarks/sweep_prefill_tiles.py [T] [NAME] [--v10] [--v11] [--v23] [--chosen] [--f16] [--x16]
    # NAME: shapes whose name contains it; --chosen: only the heuristics' choice; --f16: each shape again with
    # float16 weights of the same size (what the tile loop costs without decoding quants); --x16: each v11 line
    # again with x as float16 pairs (PrefillProduct(x16=True): half the x bytes, the same result);
    # --config=WM,WN,MI,NJ,KS (repeatable): only these v11 tiles; --splits=1,2: only these split-K factors;
    # --v23: matmul v23 (W decoded once to float16, then the GEMM) over its tiles F16W_CONFIGS, each line the
    # two launches together, and one line per shape with the decode launch alone ("f16w decode")

One line per (shape, configuration, v11 split-K factor): microseconds per launch and TFLOP/s (2 T N K per
product), the grid (rows x tokens x splits), and a '*' on the choice of the heuristics now. v11 is timed over ``MMA_SWEEP`` (a wider family than the
heuristic's ``MMA_CONFIGS``); both kernels by default.
"""
import sys

import numpy as np
from numba import cuda

from numba_kernels import matmul as mm

# v11 candidates: (warps along tokens, along rows, m16-tiles, n8-tiles per warp, K-step / 32)
MMA_SWEEP = [mm.MmaConfig(*c) for c in (
    (4, 2, 2, 4, 1), (2, 4, 2, 4, 1), (4, 4, 2, 4, 1), (2, 4, 4, 4, 1),                  # (128 x 128: 18th)
    (4, 4, 2, 2, 1), (2, 4, 2, 2, 1), (2, 4, 2, 2, 2), (4, 2, 2, 2, 1),
    (4, 2, 1, 2, 2), (2, 4, 1, 2, 2), (2, 2, 2, 2, 1), (2, 2, 2, 2, 2), (2, 2, 1, 2, 2), (2, 2, 1, 2, 4))]


def _int_lists(name):
    """The comma-separated integers of every ``--NAME=a,b,c`` argument, as tuples."""
    return [tuple(map(int, a.split("=", 1)[1].split(","))) for a in sys.argv if a.startswith(f"--{name}=")]


def _configs(kernels):
    """(label, config, product factory) for the chosen kernels (v11: the --config=... tiles, else MMA_SWEEP)."""
    only = [mm.MmaConfig(*c) for c in _int_lists("config")]
    out = []
    if "v10" in kernels:
        out += [(mm._config_name(c), c, False) for c in mm.PREFILL_CONFIGS]
    if "v11" in kernels:
        out += [("mma " + "x".join(map(str, mm.mma_sizes(c)[:2])) + f"/k{32 * c.ks}/{mm.mma_sizes(c)[2]}t", c, True)
                for c in (only or MMA_SWEEP)]
    return out


def _splits(mma, K):
    """v11 split-K factors to time: 1, 2, 4 for long rows (K >= 2048) (or --splits=...), else 1; v10: None."""
    given = _int_lists("splits")
    return ((given[-1] if given else (1, 2, 4)) if K >= 2048 else (1,)) if mma else (None,)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    kernels = [k for k in ("v10", "v11", "v23") if f"--{k}" in sys.argv] or ["v10", "v11"]
    T = int(args[0]) if args else mm.PREFILL_T
    only = args[1] if len(args) > 1 else ""
    rng = np.random.default_rng(0)
    shapes = [s for s in mm.PREFILL_SHAPES if only in s[0]]
    if "--f16" in sys.argv:
        shapes += [(name + " f16", kind, N, K, (mm.GGMLType.F16,) * len(types)) for name, kind, N, K, types in shapes]
    x16s = (False, True) if "--x16" in sys.argv else (False,)
    for name, kind, N, K, types in shapes:
        x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
        xp = cuda.device_array(T * K // 2, np.uint32)                    # x as float16 pairs (--x16)
        mm.launch_pack_f16(x.reshape(T * K), xp, T * K)
        ws = [cuda.to_device(mm.random_weight(rng, t, N, K)) for t in types]
        out = cuda.device_array((T, N), np.float32)
        swiglu = kind == "swiglu"
        chosen = (mm.prefill_config(T, N, swiglu=swiglu), mm.mma_config(T, N, K, swiglu=swiglu))
        flop = 2 * T * N * K * len(ws)
        for label, cfg, mma in _configs(kernels):
            for split in _splits(mma, K):
                picked = cfg == chosen[mma] and (not mma or split == mm.mma_split(cfg, T, N, K, swiglu))
                if "--chosen" in sys.argv and not picked:
                    continue
                for x16 in (x16s if mma else (False,)):
                    product = mm.PrefillProduct(ws[0], types[0], K, up=(ws[1], types[1], 0) if swiglu else None,
                                                config=cfg, mma=mma, split=split, x16=x16)
                    xa = xp if x16 else x.reshape(T * K)
                    s = mm._time(lambda st, p=product, xa=xa: p(xa, out.reshape(T * N), T, st), reps=5)
                    grid = "x".join(map(str, (mm.mma_grid if mma else mm.prefill_grid)(cfg, T, N, swiglu)
                                        + (split or 1,)))
                    print(f"{name:20s} {N:6d}x{K:<5d} {'/'.join(t.name for t in types):9s} "
                          f"{label + (' x16' if x16 else ''):22s} {grid:>10s} {s * 1e6:8.1f} us "
                          f"{flop / s / 1e12:5.1f} TFLOP/s {'*' if picked else ' '}", flush=True)
        if "v23" in kernels:
            _sweep_v23(name, N, K, T, types, ws, x, out, swiglu, flop)


def _sweep_v23(name, N, K, T, types, ws, x, out, swiglu, flop):
    """v23's lines for one shape: every F16W_CONFIGS tile and split (decode + GEMM), then the decode alone."""
    xf = cuda.device_array(T * K // 2, np.uint32)                        # x as float16 pairs in fragment order
    mm.launch_pack_f16(x.reshape(T * K), xf, T * K, frag=True)
    chosen = mm.f16w_config(T, N, swiglu)
    head = f"{name:20s} {N:6d}x{K:<5d} {'/'.join(t.name for t in types):9s}"
    for cfg in mm.F16W_CONFIGS:
        for split in _splits(True, K):
            product = mm.PrefillProduct(ws[0], types[0], K, up=(ws[1], types[1], 0) if swiglu else None, config=cfg,
                                        mma=True, split=split, x16=True, f16w=True)
            s = mm._time(lambda st, p=product: p(xf, out.reshape(T * N), T, st), reps=5)
            picked = cfg == chosen and split == mm.mma_split(cfg, T, N, K, swiglu)
            label = "f16w " + "x".join(map(str, mm.mma_sizes(cfg)[:2])) + f"/{mm.mma_sizes(cfg)[2]}t"
            grid = "x".join(map(str, mm.mma_grid(cfg, T, N, swiglu) + (split,)))
            print(f"{head} {label:22s} {grid:>10s} {s * 1e6:8.1f} us {flop / s / 1e12:5.1f} TFLOP/s "
                  f"{'*' if picked else ' '}", flush=True)
    kern, grid, threads, split_args, (rows, bn, scratch) = product._launch_for(T)
    s = mm._time(lambda st: mm.launch_f16w(product._weights[:4], product._types, product._weights[4], N, K, scratch,
                                           0, rows, bn, swiglu, st), reps=5)
    print(f"{head} {'f16w decode':22s} {rows:>10d} {s * 1e6:8.1f} us "
          f"{rows * K * 2 / s / 1e9:6.0f} GB/s written", flush=True)


if __name__ == "__main__":
    main()
