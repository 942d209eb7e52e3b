"""Where a cuda prefill's time goes: per stage (device-synchronized), then cProfile of the host side.

    python benchmarks/profile_prefill.py MODEL.gguf [T] [--no-cprofile]

The stage table synchronizes the device after every backend call, so each row is that stage's kernels
plus its host-side launch cost (the prefill itself overlaps the two); the last line is the plain,
unsynchronized prefill for comparison.
"""
import cProfile
import collections
import pstats
import sys
import time

import numpy as np
from numba import cuda

import llama_beta

STAGES = ("embed", "rmsnorm", "matmul", "rope", "attend", "swiglu", "add")


def timed_stages(backend):
    """Wrap the backend's stage methods to add each call's synchronized wall time to a table."""
    table = collections.defaultdict(lambda: [0, 0.0])

    def wrap(name, method):
        def timed(*args, **kwargs):
            cuda.synchronize()
            t = time.perf_counter()
            out = method(*args, **kwargs)
            cuda.synchronize()
            key = name
            if name == "matmul":                      # matrix shape: the rows x inputs of the weight
                key = f"matmul {args[1].n}x{args[1].k} t{args[1].ggml_type}"
            table[key][0] += 1
            table[key][1] += time.perf_counter() - t
            return out
        return timed

    originals = {name: getattr(backend, name) for name in STAGES}
    for name, method in originals.items():
        setattr(backend, name, wrap(name, method))
    return table, lambda: [setattr(backend, n, m) for n, m in originals.items()]


def main():
    from numba import config
    if config.ENABLE_CUDASIM:                            # a dry run of this script in the simulator
        sys.path.insert(0, "tests")
        from cudasim_support import install
        install()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path, T = args[0], int(args[1]) if len(args) > 1 else 512
    model = llama_beta.load(path, backend="cuda", progress=False)
    ids = np.random.default_rng(0).integers(0, min(1000, model.config.vocab_size), T).astype(np.int32)
    cache = model.new_cache(T + 1)
    for _ in range(2):                                   # JIT compile, warm caches
        model.backend.to_host(model.step(ids, 0, cache))
    table, restore = timed_stages(model.backend)
    model.backend.to_host(model.step(ids, 0, cache))
    restore()
    total = sum(v[1] for v in table.values())
    print(f"{'stage':32s} {'calls':>6s} {'ms':>8s} {'us/call':>8s}")
    for key, (n, s) in sorted(table.items(), key=lambda kv: -kv[1][1]):
        print(f"{key:32s} {n:6d} {s * 1e3:8.2f} {s * 1e6 / n:8.1f}")
    print(f"{'sum (synchronized)':32s} {'':6s} {total * 1e3:8.2f}")
    cuda.synchronize()
    t = time.perf_counter()
    model.backend.to_host(model.step(ids, 0, cache))
    print(f"prefill {T}: {(time.perf_counter() - t) * 1e3:.1f} ms wall, unsynchronized")
    if "--no-cprofile" in sys.argv:
        return
    profiler = cProfile.Profile()
    profiler.enable()
    model.backend.to_host(model.step(ids, 0, cache))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
