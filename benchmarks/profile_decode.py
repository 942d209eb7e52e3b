"""Where a decode step's time goes on the GPU: each launch of the fused step timed inside a CUDA graph.

    python benchmarks/profile_decode.py MODEL.gguf [--context 512] [--reps 200] [--json OUT.json]

For each kind of launch of the fused layer body (norm+QKV, RoPE+append, attention, ...) a graph
holding that launch once per layer (each with its own layer's weights, as in the real step) is
captured and replayed ``reps`` times; time per launch = wall time / (reps x layers). That is the
launch's cost as the step pays it: the kernel plus the gap between graph nodes. Also timed the
same way: the output product, embedding + argmax + state, an empty kernel (the per-node floor),
the whole step replayed back to back, and the step as ``next_token`` runs it (with the host round
trip: write the state, replay, read the token).

Caveat (ninth session): a graph of one launch kind reads only that kind's weights, replay after
replay. Where those weights over all layers fit the H200's L2 cache (50 MB: Qwen2.5-0.5B's Q/K/V,
about 17 MB, and W_o, about 12 MB), the launch is timed from L2, not DRAM, and the sum of the parts
under-counts the step (Qwen twin: 785 us summed, 915 us replayed). Phi-3-mini's kinds are all far
larger than L2 (sum 2680, step 2678).

With ``--ncu`` it instead launches one layer's launches, the output product and the argmax once
each between ``cuda.profile_start()`` and ``profile_stop()``, for Nsight Compute:

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python benchmarks/profile_decode.py MODEL.gguf --ncu

With ``--ladder skeleton|loads`` the products' dot is replaced (``benchmarks/ladder.py``): what a launch costs
without its loop's work, and with its loads but no arithmetic.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from numba import cuda

import llama_beta
from llama_beta.backends.cuda_decode import CudaDecoder
from numba_kernels import attention, matmul


@cuda.jit
def _empty(x):
    if cuda.grid(1) == 0:
        x[0] += 1.0


def time_graph(dec: CudaDecoder, key, queue, reps: int) -> float:
    """Seconds per replay of the graph of ``queue()`` (captured on first use)."""
    dec._replay(key, queue)
    graph = dec.graphs.get(key)
    for _ in range(3):
        dec.graphs.launch(graph)
    dec.graphs.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        dec.graphs.launch(graph)
    dec.graphs.synchronize()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--json")
    ap.add_argument("--ncu", action="store_true", help="one of each launch, inside cuda.profile_start/stop")
    ap.add_argument("--gqa-splits", type=int, help="attention v6's most chunks per kv head (a sweep)")
    ap.add_argument("--gqa-min-tiles", type=int, help="attention v6's fewest tiles per chunk (a sweep)")
    ap.add_argument("--v4-blocks", type=int, help="attention v4's FUSED_TARGET_BLOCKS: fewer chunks per head (a sweep)")
    ap.add_argument("--v4-tiles", help="attention v4's (R, KG, U) as R,KG,U in place of fused_tiles' choice (a sweep)")
    ap.add_argument("--only", help="time only the launches whose name contains this")
    ap.add_argument("--blocks-per-sm", type=int, help="the fused matvec launch heuristic's BLOCKS_PER_SM (a sweep)")
    ap.add_argument("--qkv-warps", type=int, help="warps per block of the Q/K/V + RoPE launch (a sweep)")
    ap.add_argument("--split", help="matmul v7's SPLIT_WARPS,SPLIT_WARPS_PER_SM,SPLIT_MAX (W_o, W_down; a sweep)")
    ap.add_argument("--qkv-pairs", type=int, help="RoPE pair slots per warp of the Q/K/V + RoPE launch (1, 2)")
    ap.add_argument("--kv-prefetch", action="store_true",
                    help="the Q/K/V launch asks L2 for the layer's K/V cache (matmul.KV_PREFETCH; only the whole "
                         "step shows the effect: a per-kind graph of attention launches has no Q/K/V launch before them)")
    ap.add_argument("--ladder", choices=("skeleton", "loads", "full"),
                    help="the products' dot replaced (benchmarks/ladder.py; needs LLAMA_BETA_JIT_CACHE=0)")
    ap.add_argument("--fused-configs", help="the fused matvec's (warps x rows) choices, most rows first: 16x2,8x1,...")
    a = ap.parse_args()
    if a.qkv_warps:
        matmul.QKV_ROPE_WARPS = a.qkv_warps
    if a.split:
        matmul.SPLIT_WARPS, matmul.SPLIT_WARPS_PER_SM, matmul.SPLIT_MAX = (int(v) for v in a.split.split(","))
    if a.qkv_pairs:
        matmul.QKV_ROPE_PAIRS = a.qkv_pairs
    if a.fused_configs:
        matmul.FUSED_CONFIGS = tuple(tuple(map(int, c.split("x"))) for c in a.fused_configs.split(","))
    if a.blocks_per_sm:
        matmul.BLOCKS_PER_SM = a.blocks_per_sm
    if a.gqa_splits:
        attention.GQA_SPLITS = a.gqa_splits
    if a.gqa_min_tiles:
        attention.GQA_MIN_TILES = a.gqa_min_tiles
    if a.v4_blocks:
        attention.FUSED_TARGET_BLOCKS = a.v4_blocks
    if a.v4_tiles:
        tiles = tuple(int(v) for v in a.v4_tiles.split(","))
        attention.fused_tiles = lambda hs, kv_mul: tiles    # read by launch_decode_fused and fused_warps
    if a.kv_prefetch:
        matmul.KV_PREFETCH = True
    if a.ladder:
        import ladder                                  # benchmarks/ladder.py, beside this script

        ladder.install(a.ladder)
    model = llama_beta.load(a.model, backend="cuda", progress=False)
    W = model.weights
    cache = model.new_cache(a.context + 64)
    dec = CudaDecoder(model, cache, fused=True, use_graph=True)
    dec.set_state(1, a.context)
    layers = list(enumerate(W.layers))
    rows = []

    def record(name, seconds, count):
        rows.append({"launch": name, "per_launch_us": seconds / count * 1e6, "count": count,
                     "per_step_us": seconds * 1e6})
        print(f"{name:24s} {seconds / count * 1e6:8.2f} us x {count:3d} = {seconds * 1e6:8.1f} us", flush=True)

    if a.ncu:
        dec.launch()                                   # compile every kernel first
        dec.choose_greedy()
        cuda.synchronize()
        cuda.profile_start()
        for _, queue in dec.fused_launches(*layers[1]):
            queue()
        dec.output_fused()
        dec.choose_greedy()
        cuda.synchronize()
        cuda.profile_stop()
        return
    names = [name for name, _ in dec.fused_launches(*layers[0])]
    for j, name in enumerate(names):
        if a.only and a.only not in name:
            continue
        launches = [dec.fused_launches(i, L)[j][1] for i, L in layers]
        record(name, time_graph(dec, name, lambda: [q() for q in launches], a.reps), len(layers))
    if a.only:
        return
    record("output norm+product", time_graph(dec, "output", dec.output_fused, a.reps), 1)
    record("embed+argmax+advance", time_graph(dec, "tail", lambda: (dec.embed(), dec.choose_greedy()), a.reps), 3)
    scratch = cuda.device_array(1, np.float32)
    n_nodes = len(layers) * len(names) + 4
    record("empty kernel", time_graph(dec, "empty", lambda: [_empty[1, 32, dec.stream](scratch)
                                                            for _ in range(n_nodes)], a.reps), n_nodes)
    total = sum(r["per_step_us"] for r in rows if r["launch"] != "empty kernel")
    print(f"{'sum of the parts':24s} {total:8.1f} us per step")
    dec.set_state(1, a.context)
    step = time_graph(dec, ("next", None), lambda: (dec.launch(), dec.choose_greedy()), a.reps)
    print(f"{'whole step, replayed':24s} {step * 1e6:8.1f} us = {1 / step:7.1f} tok/s (context grows by reps)")
    token, t = 1, time.perf_counter()
    for i in range(a.reps):
        token = dec.next_token(token, a.context + i, i)
    host = (time.perf_counter() - t) / a.reps
    print(f"{'next_token (host trip)':24s} {host * 1e6:8.1f} us = {1 / host:7.1f} tok/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": os.path.basename(a.model), "context": a.context, "rows": rows, "sum_us": total,
                       "step_replayed_us": step * 1e6, "next_token_us": host * 1e6,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=2)


if __name__ == "__main__":
    main()
