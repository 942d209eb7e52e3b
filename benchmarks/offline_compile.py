"""Compile, without a GPU, every kernel that one prefill and a few decode steps of a model launch, for sm_90,
and print what ptxas says of each: registers, spills, stack and shared memory.

    python benchmarks/offline_compile.py [--preset phi3-mini|qwen2.5-0.5b|...] [--layers N] [--kv-type f32|f16]
                                         [--prompt T] [--vocab PATH]

The simulator runs the kernels' Python and so misses what only the real compiler sees: a type Numba cannot
unify, an intrinsic the simulator fakes, a kernel that spills or needs more shared memory than a block may
have. This script runs the cuda backend's real code paths (the prefill, the captured-step decoder without
its graph) against stand-ins for the device: arrays that have a shape and a type but no memory, streams and
events that do nothing, and a kernel launch that compiles its kernel for the argument types it was given
(``compile_ptx`` then ``ptxas -v``) instead of running it. Nothing is computed, so the tokens are all 0.

It needs libnvvm and ptxas (the CUDA toolkit), not a driver. A kernel that fails to compile is printed with
the compiler's message, and the exit status is 1. For sessions without device time: run it after changing a
kernel, and compare its table with the one before.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import offline_sass  # noqa: E402

cuda = offline_sass._offline_numba()
import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import types as nt  # noqa: E402
from numba.cuda import dispatcher as numba_dispatcher  # noqa: E402


class FakeDeviceArray:
    """A device array with a shape and a type and no memory: enough for the launchers' arithmetic."""

    def __init__(self, shape, dtype=np.float32):
        shape = shape if isinstance(shape, (tuple, list)) else (shape,)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ndim = len(self.shape)
        self.nbytes = self.size * self.dtype.itemsize
        self.device_ctypes_pointer = type("Pointer", (), {"value": id(self)})()

    @property
    def __cuda_array_interface__(self):
        return dict(shape=self.shape, typestr=self.dtype.str, data=(4096, False), version=3, strides=None)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return FakeDeviceArray(np.empty(self.shape, np.uint8)[index].shape, self.dtype)   # the shape NumPy gives

    def reshape(self, *shape):
        shape = list(shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
        if -1 in shape:
            shape[shape.index(-1)] = self.size // -int(np.prod(shape))
        return FakeDeviceArray(shape, self.dtype)

    def view(self, dtype):
        dtype = np.dtype(dtype)
        return FakeDeviceArray(self.shape[:-1] + (self.shape[-1] * self.dtype.itemsize // dtype.itemsize,), dtype)

    def copy_to_host(self, ary=None, stream=0):
        return np.zeros(self.shape, self.dtype) if ary is None else ary

    def copy_to_device(self, ary, stream=0):
        pass


class _Nothing:
    """A stream or an event that does nothing (and has always finished)."""

    handle = 0

    def __getattr__(self, name):
        return lambda *args, **kwargs: True


def _install_fakes() -> None:
    os.environ["LLAMA_BETA_GRAPH"] = os.environ["LLAMA_BETA_PREFILL_GRAPH"] = "0"   # no graphs: nothing to capture
    cuda.to_device = lambda a, stream=0, **k: FakeDeviceArray(np.asarray(a).shape, np.asarray(a).dtype)
    cuda.device_array = lambda shape, dtype=np.float32, stream=0, **k: FakeDeviceArray(shape, dtype)
    cuda.pinned_array = lambda shape, dtype=np.float32, **k: np.zeros(shape, dtype)
    cuda.stream = cuda.external_stream = cuda.event = lambda *a, **k: _Nothing()
    cuda.event_elapsed_time = lambda *a: 1.0
    cuda.synchronize = lambda: None
    cuda.is_available = lambda: True            # the stand-in sm_90 device: the tensor-core prefill (v11, v23) too
    cuda.defer_cleanup = contextlib.nullcontext
    numba_dispatcher.CUDADispatcher.configure = lambda self, grid, block, stream=0, sharedmem=0: _Compile(self, block, sharedmem)
    from llama_beta import backends

    backends.require_cuda = lambda: None


def _argument_type(a):
    if isinstance(a, FakeDeviceArray):
        return nt.Array(numba.from_dtype(a.dtype), a.ndim, "C")
    return numba.typeof(a)


class _Compile:
    """What ``kernel[grid, block, stream, shared]`` returns here: calling it compiles the kernel for those
    arguments (once per kernel, argument types and block shape) and prints ptxas's account of it."""

    seen: dict = {}
    out = Path(tempfile.mkdtemp(prefix="offline-compile-"))

    def __init__(self, dispatcher, block, shared):
        self.dispatcher, self.pre_launch_callbacks = dispatcher, []
        self.threads = int(np.prod(block if isinstance(block, tuple) else (block,)))
        self.shared = int(shared)

    def __call__(self, *args):
        sig = tuple(_argument_type(a) for a in args)
        key = (self.dispatcher.py_func, sig, self.threads, self.shared)
        if key in self.seen:
            return
        name = self.dispatcher.py_func.__name__
        options = {k: v for k, v in self.dispatcher.targetoptions.items()   # those compile_ptx takes
                   if k in ("debug", "lineinfo", "fastmath", "opt", "launch_bounds", "forceinline")}
        try:
            ptx, _ = cuda.compile_ptx(self.dispatcher.py_func, sig, cc=(9, 0), **options)
        except Exception as exc:  # a typing or lowering error: the thing this script is for
            self._report(key, name, f"numba {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
        path = self.out / f"{len(self.seen):03d}-{name}.ptx"
        path.write_text(ptx)
        r = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(path), "-o", str(path.with_suffix(".cubin"))],
                           capture_output=True, text=True)
        if r.returncode:
            self._report(key, name, f"ptxas: {r.stderr.strip()[-300:]}")
            return
        self._report(key, name, None, *(_number(r.stderr, pattern) for pattern in
                                        (r"Used (\d+) registers", r"(\d+) bytes smem", r"(\d+) bytes spill stores",
                                         r"(\d+) bytes stack frame")))

    def _report(self, key, name, error, registers=0, smem=0, spills=0, stack=0):
        self.seen[key] = (name, error is None)
        if error:
            print(f"{name:24s} FAILED {error}", flush=True)
            return
        smem += self.shared
        per_sm, limit = blocks_per_sm(self.threads, registers, smem)
        print(f"{name:24s} {self.threads:7d} {registers:5d} {smem:10d} {spills:7d} {stack:6d} {per_sm:4d} ({limit})",
              flush=True)


def _number(text: str, pattern: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


# sm_90 (H100 / H200): per SM 65536 registers (allocated per warp in units of 256), 228 KiB of shared memory
# (1 KiB of it reserved per block), 2048 threads and 32 blocks
def blocks_per_sm(threads: int, registers: int, smem: int) -> tuple[int, str]:
    """(resident blocks per SM, what limits them) for a launch of ``threads`` per block."""
    warps = (threads + 31) // 32
    regs_per_warp = (max(registers, 1) * 32 + 255) // 256 * 256
    limits = {"threads": 2048 // (32 * warps), "blocks": 32, "registers": 65536 // (regs_per_warp * warps),
              "shared memory": 233472 // (smem + 1024)}                  # (a tie names the first)
    limit = min(limits, key=limits.get)
    return limits[limit], limit


def main(argv=None) -> int:
    from llama_beta.model import KV_TYPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="phi3-mini", help="a llama_beta.synth preset (default phi3-mini)")
    p.add_argument("--layers", type=int, default=2, help="blocks of the synthetic model (default 2)")
    p.add_argument("--kv-type", choices=list(KV_TYPES), default="f32")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens of the prefill (default 64)")
    p.add_argument("--steps", type=int, default=3, help="decode steps (default 3)")
    p.add_argument("--vocab", default=None, help="a GGUF vocabulary to copy (default: the synthetic tiny one)")
    args = p.parse_args(argv)
    _install_fakes()
    from llama_beta.model import Model
    from llama_beta.synth import synth_model

    vocab = None
    if args.vocab:
        from llama_beta.synth import vocab_from
        vocab = vocab_from(args.vocab)
    path = synth_model(_Compile.out / f"{args.preset}.gguf", args.preset, vocab=vocab, n_layers=args.layers)
    model = Model(path, backend="cuda", context=args.prompt + args.steps + 1, vram_limit="1TiB",
                  kv_type=args.kv_type)
    print(f"== {args.preset}, {args.layers} layers, {args.kv_type} KV cache: prefill of {args.prompt} tokens")
    print(f"{'kernel':24s} threads  regs smem_bytes spilled stack blocks/SM (limit)")
    cache = model.new_cache()
    model.prefill(np.arange(args.prompt, dtype=np.int32) % model.config.vocab_size, 0, cache)
    print(f"== {args.steps} decode steps (the captured step's launches, run directly)")
    from llama_beta.generate import SamplingParams

    next_token = model.token_fn(cache, SamplingParams(temperature=0.0), seed=0)
    token = 0
    for step in range(args.steps):
        token = next_token(token, args.prompt + step, step, [])
    next_token.finish()
    failed = [name for name, ok in _Compile.seen.values() if not ok]
    print(f"{len(_Compile.seen)} kernels compiled for sm_90, {len(failed)} failed{': ' if failed else ''}"
          f"{', '.join(failed)}; PTX and cubins in {_Compile.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
