"""Where a cuda prefill's time goes.

    python benchmarks/profile_prefill.py MODEL.gguf [T] [--readable] [--no-cprofile] [--ncu]

Default: the preallocated prefill (``llama_beta/backends/cuda_prefill.py``). Each kind of launch is
queued for every layer while the GPU is held busy by a spin kernel, so the host's queueing time and
the GPU's time (CUDA events around the batch) are measured apart; then the whole prefill, wall clock
(from its second call a CUDA graph, captured then replayed; ``LLAMA_BETA_PREFILL_GRAPH=0``: launched directly).
``--readable``: the forward pass (``model.step``), one row per backend stage, the device synchronized
after every call (kernels plus host launch cost), and the unsynchronized prefill for comparison.
Both end with a cProfile of the host side (skip it with ``--no-cprofile``).
``--ncu``: only one layer's launches of the preallocated prefill, between ``cuda.profile_start()`` and
``profile_stop()``, for Nsight Compute (``ncu --profile-from-start off ...``; ``gpu_run.sh ncu``).
"""
import cProfile
import collections
import pstats
import sys
import time

import numpy as np
from numba import config, cuda

import llama_beta
from numba_kernels.runtime import _hold

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


def fused_table(model, ids, cache, reps=5):
    """Per launch kind: host us and GPU us per launch, over every layer, ``reps`` times."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    prefill = CudaPrefill(model, chunk=len(ids))
    prefill(ids, 0, cache)                              # compile, fill the buffers
    T, layers = len(ids), model.weights.layers
    kinds = {}
    hold_ms = cuda.to_device(np.array([0 if config.ENABLE_CUDASIM else 300], np.int32))
    for i, L in enumerate(layers):
        for name, queue in prefill.launches(i, L, T, 0, cache):
            kinds.setdefault(name, []).append(queue)
    print(f"{'launch':18s} {'count':>6s} {'host us':>9s} {'GPU us':>9s} {'GPU ms/prefill':>15s}")
    total_gpu = total_host = 0.0
    for name, queues in kinds.items():
        cuda.synchronize()
        _hold[1, 1, prefill.stream](hold_ms)            # the GPU sleeps while the host queues the batch
        e0, e1 = cuda.event(), cuda.event()
        e0.record(prefill.stream)                       # the prefill queues everything on its own stream
        t = time.perf_counter()
        for _ in range(reps):
            for q in queues:
                q()
        host = (time.perf_counter() - t) / (reps * len(queues))
        e1.record(prefill.stream)
        e1.synchronize()
        gpu = e0.elapsed_time(e1) / 1e3 / (reps * len(queues))
        total_gpu += gpu * len(queues)
        total_host += host * len(queues)
        print(f"{name:18s} {len(queues):6d} {host * 1e6:9.1f} {gpu * 1e6:9.1f} {gpu * len(queues) * 1e3:15.2f}")
    print(f"{'sum':18s} {'':6s} {'':9s} {'':9s} {total_gpu * 1e3:15.2f} GPU ms, {total_host * 1e3:.2f} host ms")
    cuda.synchronize()
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        prefill(ids, 0, cache)
        walls.append(time.perf_counter() - t)
    w = sorted(walls)[2]
    graphs = "graph replayed" if prefill.graphs.use_graph else "launched directly"   # the 2nd call captures
    print(f"prefill {T}: {w * 1e3:.1f} ms wall (median of 5, {graphs}) = {T / w:.0f} tok/s")
    return prefill


def ncu_layer(model, ids, cache):
    """One layer's launches (layer 1) of the preallocated prefill inside cuda.profile_start/stop, compiled first."""
    from llama_beta.backends.cuda_prefill import CudaPrefill

    prefill = CudaPrefill(model, chunk=len(ids))
    prefill(ids, 0, cache)                              # compile every kernel outside the profiled range
    cuda.synchronize()
    profiling = not config.ENABLE_CUDASIM                # (the simulator has no profiler API: a dry run)
    if profiling:
        cuda.profile_start()
    for _, queue in prefill.launches(1, model.weights.layers[1], len(ids), 0, cache):
        queue()
    cuda.synchronize()
    if profiling:
        cuda.profile_stop()


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
    if "--ncu" in sys.argv:
        ncu_layer(model, ids, cache)
        return
    if "--readable" not in sys.argv:
        prefill = fused_table(model, ids, cache)
        if "--no-cprofile" not in sys.argv:
            profiler = cProfile.Profile()
            profiler.enable()
            prefill(ids, 0, cache)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        return
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
