"""Where a cuda prefill's time goes, from the host's side: cProfile of one 512-token prefill.

    python benchmarks/profile_prefill.py MODEL.gguf [T]
"""
import cProfile
import pstats
import sys
import time

import numpy as np
from numba import cuda

import llama_beta

path, T = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 512
model = llama_beta.load(path, backend="cuda", progress=False)
ids = np.random.default_rng(0).integers(0, 1000, T).astype(np.int32)
for _ in range(2):                                   # JIT compile, warm caches
    cache = model.new_cache(T + 1)
    model.backend.to_host(model.step(ids, 0, cache))
cuda.synchronize()
t = time.perf_counter()
model.backend.to_host(model.step(ids, 0, cache))
print(f"prefill {T}: {(time.perf_counter() - t) * 1e3:.1f} ms wall")
profiler = cProfile.Profile()
profiler.enable()
model.backend.to_host(model.step(ids, 0, cache))
profiler.disable()
pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
