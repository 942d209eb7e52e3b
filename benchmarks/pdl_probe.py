"""Does programmatic dependent launch (PDL) take effect, launched directly and inside a CUDA graph?

    python benchmarks/pdl_probe.py [--n 50] [--us 100]

A chain of ``n`` launches of one kernel that sleeps ``us`` microseconds *before* ``ptx.wait_previous_grid``
(work that does not depend on the previous launch). Launched plainly, the sleeps run one after another:
about n x us. With PDL each launch starts as soon as the one before has called ``ptx.allow_next_grid``
(at its start), so the sleeps overlap: far less than n x us. Timed with CUDA events (``runtime.time_us``),
launched directly (bound by Numba's host launch cost) and as a captured graph replayed (graph).
"""
from __future__ import annotations

import argparse

import numpy as np
from numba import cuda

from llama_beta.backends.cuda_graphs import GraphStream
from numba_kernels import ptx
from numba_kernels.runtime import programmatic_launches, time_us


@cuda.jit
def _sleep_then_wait(ns, count):
    ptx.allow_next_grid()
    cuda.nanosleep(ns)                     # independent work: may overlap the previous launch
    ptx.wait_previous_grid()
    if cuda.threadIdx.x == 0:
        count[0] += 1                      # ordered after the previous launch's increment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--us", type=int, default=100)
    a = ap.parse_args()
    count = cuda.to_device(np.zeros(1, np.int32))
    ns = np.uint32(a.us * 1000)
    for pdl in (False, True):
        graphs = GraphStream(True)

        def chain():
            for _ in range(a.n):
                _sleep_then_wait[1, 32, graphs.stream](ns, count)

        with programmatic_launches(pdl):
            direct = time_us(chain, reps=1, stream=graphs.stream)   # (its warm-up call compiles)
            graph = graphs.capture("chain", chain)
        replay = time_us(lambda: graphs.launch(graph), reps=1, stream=graphs.stream)
        print(f"PDL {'on ' if pdl else 'off'}: {a.n} launches sleeping {a.us} us each: direct {direct:7.0f} us, "
              f"graph {replay:7.0f} us (serial would be {a.n * a.us} us)")
        graphs.close()
    total = int(count.copy_to_host()[0])
    print(f"increments: {total} of {8 * a.n} (each chain ran 4 times per setting: twice directly, twice as the graph)")


if __name__ == "__main__":
    main()
