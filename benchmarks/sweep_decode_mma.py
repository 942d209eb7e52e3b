"""Decode products (one token) at a model's shapes: the float32 kernels (v4-v8) against the tensor-core
kernel v12 in each block configuration, timed as the decode step pays for them.

    python benchmarks/sweep_decode_mma.py [qwen] [--reps 200] [--only w_o,gate] [--configs 1x7,2x4]

Per shape, LAYERS copies of a random weight (so that, as in the step, every launch reads its own weights
from DRAM, not from L2) are launched once each inside a CUDA graph, with programmatic dependent launch as
in the decode step; time per launch = replay time / LAYERS (it includes the gap between graph nodes).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from numba import cuda

from llama_beta.backends.cuda_graphs import GraphStream
from numba_kernels import matmul
from numba_kernels.runtime import programmatic_launch_supported, programmatic_launches
from ref.ggml import GGMLType

LAYERS = 24
Q5, Q8 = GGMLType.Q5_0, GGMLType.Q8_0
# (name, N, K, type, kind): kind "norm" (RMSNorm inside), "acc" (residual add), "swiglu" (N = F)
SHAPES = {
    "qwen": [("w_o 896x896 +res", 896, 896, Q5, "acc"), ("q 896x896 norm", 896, 896, Q5, "norm"),
             ("gate/up 2x4864x896 swiglu", 4864, 896, Q5, "swiglu"),
             ("output 151936x896 Q8_0 norm", 151936, 896, Q8, "norm")],
}
CONFIGS = [(1, 1), (1, 2), (1, 4), (1, 7), (1, 14), (2, 1), (2, 2), (2, 4), (2, 7), (4, 1), (4, 2), (4, 7), (8, 1)]


def time_graph(graphs, queue, reps):
    with programmatic_launches(programmatic_launch_supported()):
        queue()
        graphs.synchronize()
        graph = graphs.capture(object(), queue)
    for _ in range(3):
        graphs.launch(graph)
    graphs.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        graphs.launch(graph)
    graphs.synchronize()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="qwen", choices=sorted(SHAPES))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--only", help="shapes whose name contains one of these (comma-separated)")
    ap.add_argument("--configs", help="v12 configurations tm x s, comma-separated (default: all)")
    a = ap.parse_args()
    configs = [tuple(map(int, c.split("x"))) for c in a.configs.split(",")] if a.configs else CONFIGS
    rng = np.random.default_rng(0)
    graphs = GraphStream(True)
    for name, N, K, gt, kind in SHAPES[a.model]:
        if a.only and not any(o in name for o in a.only.split(",")):
            continue
        copies = LAYERS if N * K < 50_000_000 else 2          # the output product: 2 copies (136 MB each)
        rows = 2 * N if kind == "swiglu" else N
        ws = [cuda.to_device(matmul.random_weight(rng, gt, rows, K)) for _ in range(copies)]
        x = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        nw = cuda.to_device(rng.uniform(0.5, 1.5, K).astype(np.float32)) if kind in ("norm", "swiglu") else None
        out = cuda.to_device(np.zeros(N, np.float32))
        print(f"== {name} ({copies} copies)", flush=True)

        def product(w, cfg):
            s = graphs.stream
            if kind == "swiglu":
                if cfg is None:
                    matmul.launch_decode_swiglu(x, w, gt, w, gt, N, K, out, norm_weight=nw, stream=s)
                else:
                    matmul.launch_decode_mma_swiglu(x, w, gt, w, gt, N, K, out, norm_weight=nw, config=cfg, stream=s)
            elif cfg is None:
                matmul.launch_decode_matvec(x, w, gt, K, out, norm_weight=nw, accumulate=kind == "acc", stream=s)
            else:
                matmul.launch_decode_mma(x, w, gt, K, out, norm_weight=nw, accumulate=kind == "acc", config=cfg,
                                         stream=s)

        variants = [("v4-v8 (float32)", None)] + [
            (f"v12 tm={tm} s={sp}", (tm, sp)) for tm, sp in configs
            if (K // 32) % sp == 0 and (kind != "swiglu" or tm == 2)]
        for label, cfg in variants:
            sec = time_graph(graphs, lambda: [product(w, cfg) for w in ws], a.reps)
            print(f"  {label:18s} {sec / copies * 1e6:8.2f} us per launch", flush=True)
    graphs.close()


if __name__ == "__main__":
    main()
