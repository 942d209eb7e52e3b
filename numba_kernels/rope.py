r"""RoPE (rotary position embedding) as CUDA kernels (reference: ``ref/rope.py``).

Pair ``i`` of a head at position ``p`` is rotated by ``theta_i = s * (p * r^i) / f_i`` with
``r = powf(base, -2/rot_dims)``; NEOX pairs are ``(i, i + rot_dims/2)``, interleaved pairs
``(2i, 2i+1)``; the rotated pair is multiplied by ``attn_factor``; dims from ``rot_dims`` on
pass through.

Kernel versions
    v1  one thread per (token, head, pair slot). A head has hs/2 slots: slot i < rot_dims/2
        rotates pair i, the others copy two pass-through values. Every thread computes its own
        angle: the running float32 product ``p * r * r ...`` (i multiplications, the exact
        order of ggml-cpu) and its own cosf/sinf, so the trig work is repeated per head.
    v2  one block per token. The block first computes the rot_dims/2 (cos, sin) pairs of that
        token once into shared memory, then its threads sweep all heads x slots. Trig work
        drops by a factor of n_heads. Used by ``rope``.

Positions are read from a device int32 array [T] by the kernel, so a captured CUDA graph
replays with new positions; base, freq_scale and attn_factor are constants of the model.
``r`` is computed once on the host with NumPy (as ``ref.rope.theta_scale`` does), so the kernel's
angles equal the reference's bit for bit; only cosf/sinf may differ by an ulp.

Bytes: 8 per element (read, write); about 6 FLOPs per pair plus, in v2, one sin and one cos
per pair per token. In place (``out`` is ``x``) is allowed: each element is read and written
by the same thread.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from numba_kernels.runtime import is_device as _is_device

MAX_HALF = 256                       # rot_dims up to 512 (shared-memory table of v2)


# --8<-- [start:kernels]
@cuda.jit(device=True, inline=True)
def _cos_sin(pos, i, ts, freq_scale, ff, has_ff, attn_factor):
    theta = float32(pos)
    for _ in range(i):                                  # running product: ggml-cpu's rounding
        theta = theta * ts
    if has_ff:
        theta = theta / ff[i]
    theta = freq_scale * theta
    # float32(): a no-op on the GPU; the simulator's math.cos returns a Python (double) float
    return float32(math.cos(theta)) * attn_factor, float32(math.sin(theta)) * attn_factor


@cuda.jit(device=True, inline=True)
def _rotate_slot(x, out, t, h, k, half, hs, neox, c, s):
    """Slot k of head h of token t: rotate pair k (k < half) or copy two pass-through values."""
    if k < half:
        a = k if neox else 2 * k
        b = k + half if neox else 2 * k + 1
        xa, xb = x[t, h, a], x[t, h, b]
        out[t, h, a] = xa * c - xb * s
        out[t, h, b] = xa * s + xb * c
    else:
        j = 2 * k                                       # k >= half: dims 2k, 2k+1 >= rot_dims
        out[t, h, j] = x[t, h, j]
        out[t, h, j + 1] = x[t, h, j + 1]


@cuda.jit
def rope_kernel1(x, out, positions, ts, freq_scale, ff, has_ff, attn_factor, half, neox):
    T, nh, hs = x.shape
    slots = hs // 2
    g = cuda.grid(1)                                    # flat (t, h, k) over [T, nh, hs/2]
    if g >= T * nh * slots:
        return
    t = g // (nh * slots)
    h = (g // slots) % nh
    k = g % slots
    c, s = float32(0.0), float32(0.0)
    if k < half:
        c, s = _cos_sin(positions[t], k, ts, freq_scale, ff, has_ff, attn_factor)
    _rotate_slot(x, out, t, h, k, half, hs, neox, c, s)


@cuda.jit
def rope_kernel2(x, out, positions, ts, freq_scale, ff, has_ff, attn_factor, half, neox):
    T, nh, hs = x.shape
    t = cuda.blockIdx.x                                 # one block per token
    cos_tab = cuda.shared.array(MAX_HALF, float32)
    sin_tab = cuda.shared.array(MAX_HALF, float32)
    pos = positions[t]
    for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
        cos_tab[i], sin_tab[i] = _cos_sin(pos, i, ts, freq_scale, ff, has_ff, attn_factor)
    cuda.syncthreads()
    slots = hs // 2
    for g in range(cuda.threadIdx.x, nh * slots, cuda.blockDim.x):   # all (head, slot) of token t
        h = g // slots
        k = g - h * slots
        c, s = float32(0.0), float32(0.0)
        if k < half:
            c, s = cos_tab[k], sin_tab[k]
        _rotate_slot(x, out, t, h, k, half, hs, neox, c, s)

# --8<-- [end:kernels]

# ----------------------------------------------------------------------------------------------
# launch helpers

def _args(x, positions, base, rot_dims, neox, freq_scale, freq_factors, attn_factor):
    # powf(base, -2/d) in float32: the same NumPy expression as ref.rope.theta_scale
    theta_scale = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(rot_dims)))
    has_ff = freq_factors is not None
    ff = freq_factors if has_ff else x.reshape(-1)      # a float32 [n] stand-in, never read
    return (positions, theta_scale, np.float32(freq_scale), ff, has_ff,
            np.float32(attn_factor), rot_dims // 2, bool(neox))


def launch_v1(x, out, args, stream=0):
    T, nh, hs = x.shape
    n = T * nh * (hs // 2)                              # one thread per (token, head, slot)
    block = 128
    rope_kernel1[(n + block - 1) // block, block, stream](x, out, *args)


def launch_v2(x, out, args, stream=0):
    T, nh, hs = x.shape
    work = nh * (hs // 2)                               # (head, slot) pairs of one token
    block = 32
    while block < work and block < 256:
        block *= 2
    rope_kernel2[T, block, stream](x, out, *args)       # one block per token




def rope(x, positions, base, rot_dims=None, neox=True, freq_scale=1.0, freq_factors=None,
         attn_factor=1.0, out=None, stream=0):
    """Rotate x [T, n_heads, hs] at positions [T] (int32; NumPy or device); ``out`` may be ``x``."""
    host = not _is_device(x)
    T, nh, hs = x.shape
    d = hs if rot_dims is None else int(rot_dims)
    if d % 2 or d > hs or d // 2 > MAX_HALF:
        raise ValueError(f"rope: rot_dims={d} must be even, <= head size {hs} and <= {2 * MAX_HALF}")
    dx = cuda.to_device(np.ascontiguousarray(x, np.float32), stream=stream) if host else x
    dpos = positions if _is_device(positions) else cuda.to_device(
        np.ascontiguousarray(positions, np.int32), stream=stream)
    dff = freq_factors
    if freq_factors is not None and not _is_device(freq_factors):
        dff = cuda.to_device(np.ascontiguousarray(freq_factors, np.float32), stream=stream)
    dout = cuda.device_array(x.shape, np.float32, stream=stream) if out is None else out
    launch_v2(dx, dout, _args(dx, dpos, base, d, neox, freq_scale, dff, attn_factor), stream)
    return dout.copy_to_host(stream=stream) if host else dout


if __name__ == "__main__":
    from ref import rope as ref

    from numba_kernels.runtime import time_us as timed

    rng = np.random.default_rng(0)
    for T, nh, hs, neox in ((1, 14, 64, True), (512, 14, 64, True), (512, 32, 96, True), (512, 32, 128, False)):
        x = rng.standard_normal((T, nh, hs)).astype(np.float32)
        pos = rng.integers(0, 32768, T).astype(np.int32)
        dx, dout, dpos = cuda.to_device(x), cuda.device_array(x.shape, np.float32), cuda.to_device(pos)
        args = _args(dx, dpos, 1e6, hs, neox, 1.0, None, 1.0)
        expect = ref.rope(x, pos, 1e6, neox=neox)
        for name, launch in (("v1", launch_v1), ("v2", launch_v2)):
            launch(dx, dout, args)
            err = np.abs(dout.copy_to_host() - expect).max()
            us = timed(lambda: launch(dx, dout, args))
            print(f"rope {name} T={T:4} nh={nh} hs={hs} neox={neox}: max|err| {err:.1e}  {us:8.2f} us  "
                  f"{8 * x.size / us / 1e3:7.1f} GB/s")
