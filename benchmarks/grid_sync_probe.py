"""What does a grid-wide barrier cost on this GPU? (The question before a persistent decode kernel.)

    python benchmarks/grid_sync_probe.py [--syncs 120] [--threads 256]

One cooperative launch whose blocks (1 and 2 per SM) pass ``syncs`` grid barriers
(``cuda.cg.this_grid().sync()``; between two barriers each block adds one to its own counter), timed with CUDA
events against the same launch with no barrier; per barrier = the difference / syncs. Then the same launch
captured in a CUDA graph and replayed, if the capture of a cooperative launch works here (printed either way).
The decode step would need about 5 barriers per layer, 120 for Qwen2.5-0.5B's 24 layers.
"""
from __future__ import annotations

import argparse

import numpy as np
from numba import cuda

from llama_beta.backends.cuda_graphs import GraphStream
from numba_kernels.runtime import time_us


@cuda.jit
def _barriers(counts, syncs):
    grid = cuda.cg.this_grid()
    for _ in range(syncs):
        if cuda.threadIdx.x == 0:
            counts[cuda.blockIdx.x] += 1
        grid.sync()


@cuda.jit
def _no_barrier(counts, syncs):
    for _ in range(syncs):
        if cuda.threadIdx.x == 0:
            counts[cuda.blockIdx.x] += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--syncs", type=int, default=120)
    ap.add_argument("--threads", type=int, default=256)
    a = ap.parse_args()
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    syncs = np.int32(a.syncs)
    for per_sm in (1, 2):
        blocks = per_sm * sms
        counts = cuda.to_device(np.zeros(blocks, np.int32))
        stream = cuda.stream()
        with_sync = time_us(lambda: _barriers[blocks, a.threads, stream](counts, syncs), reps=20, stream=stream)
        without = time_us(lambda: _no_barrier[blocks, a.threads, stream](counts, syncs), reps=20, stream=stream)
        per = (with_sync - without) / a.syncs
        print(f"{blocks} blocks x {a.threads} threads: {a.syncs} grid barriers {with_sync:.1f} us, "
              f"without {without:.1f} us: {per:.2f} us per barrier")
        graphs = GraphStream(True)
        try:
            graph = graphs.capture("sync", lambda: _barriers[blocks, a.threads, graphs.stream](counts, syncs))
            replay = time_us(lambda: graphs.launch(graph), reps=20, stream=graphs.stream)
            print(f"  captured in a graph and replayed: {replay:.1f} us")
        except Exception as e:                       # the probe's point is to find out
            print(f"  capturing the cooperative launch failed: {type(e).__name__}: {str(e)[:200]}")
        graphs.close()


if __name__ == "__main__":
    main()
