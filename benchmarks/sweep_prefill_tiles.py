"""Time every v10 tile configuration at the prefill shapes (device time, T tokens), to choose ``prefill_config``.

    python benchmarks/sweep_prefill_tiles.py [T] [NAME]      # NAME: only the shapes whose name contains it

One line per (shape, configuration): microseconds per launch and TFLOP/s (2 T N K per product), the grid, and
a '*' on the configuration ``prefill_config`` picks now.
"""
import sys

import numpy as np
from numba import cuda

from numba_kernels import matmul as mm


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else mm.PREFILL_T
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    rng = np.random.default_rng(0)
    for name, kind, N, K, types in mm.PREFILL_SHAPES:
        if only not in name:
            continue
        x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
        ws = [cuda.to_device(mm.random_weight(rng, t, N, K)) for t in types]
        out = cuda.device_array((T, N), np.float32)
        swiglu = kind == "swiglu"
        chosen = mm.prefill_config(T, N, swiglu=swiglu)
        flop = 2 * T * N * K * len(ws)
        for cfg in mm.PREFILL_CONFIGS:
            if swiglu:
                launch = lambda st, c=cfg: mm.launch_matmul_prefill_swiglu(x, ws[0], types[0], ws[1], types[1], 0, K,
                                                                           out, config=c, stream=st)
            else:
                launch = lambda st, c=cfg: mm.launch_matmul_prefill(x, ws[0], types[0], K, out, config=c, stream=st)
            s = mm._time(launch, reps=5)
            grid = "x".join(map(str, mm.prefill_grid(cfg, T, N, swiglu)))
            mark = "*" if cfg == chosen else " "
            print(f"{name:20s} {N:6d}x{K:<5d} {'/'.join(t.name for t in types):9s} {mm._config_name(cfg):16s} "
                  f"{grid:>8s} {s * 1e6:8.1f} us {flop / s / 1e12:5.1f} TFLOP/s {mark}", flush=True)


if __name__ == "__main__":
    main()
