r"""Choosing the next token from the logits: greedy, or seeded random sampling.

What it does
    ``temperature == 0``: greedy, the argmax (the lowest id among exact ties).

    Otherwise the filters of llama.cpp's default sampler chain, in its order
    (``common/sampling.cpp``: ... top_k, top_p, min_p, temperature, dist), then one draw:

    1. **top-k**: keep the ``k`` largest logits (``k = 0`` or ``k >= V``: keep all). Order is by
       logit, larger first, and the lower token id first among equal logits.
    2. **top-p** (nucleus): over the survivors, with :math:`p_i = e^{l_i - m}/Z`, keep the
       shortest prefix of that order whose probability reaches ``top_p``
       (``top_p >= 1``: keep all; ``top_p <= 0``: keep the first token).
    3. **min-p**: keep tokens with :math:`p_i \ge \text{min\_p}\cdot p_{max}`, tested like
       llama.cpp in logit space: :math:`l_i \ge m + \log(\text{min\_p})`.
    4. **temperature** ``T``: :math:`q_i \propto e^{(l_i - m)/T}` over the survivors.
    5. **dist**: inverse CDF. With the survivors in **token-id order** and their cumulative
       mass :math:`c_i`, return the first token with :math:`c_i > u \cdot c_{V-1}`.

    ``m`` is the largest logit; it always survives every filter.

Why integers
    The GPU adds the same numbers as this reference but in another order, and float sums
    depend on the order. So the masses that are summed (steps 2 and 5) are fixed point:
    ``M_i = floor(e_i * 2^32)`` with ``e_i <= 1`` a float32 exponential, held in uint64.
    Integer sums are exact in any order and stay below ``V * 2^32 < 2^53``, so converting
    them to float64 for the comparisons with ``top_p * Z`` and ``u * total`` is exact too. A
    token whose ``e_i`` is below ``2^-32`` gets mass 0 and is never drawn (a probability
    below ``V * 2^-32`` in all). CPU and GPU then pick the same token unless a float32
    ``exp`` differs by an ulp right at a boundary.

The random numbers
    ``uniform(seed, step)`` is counter based (no state to carry or to capture in a CUDA
    graph): splitmix64's output function (Steele, Lea & Flood 2014; Vigna's constants) applied
    twice, ``key = mix(seed + G)``, ``z = mix(key + (step + 1) * G)`` with
    ``G = 0x9E3779B97F4A7C15`` and arithmetic mod 2^64, then ``u = (z >> 11) / 2^53``, a
    float64 in [0, 1) with 53 random bits. The kernel computes the same bits.

Leaves out
    Penalties other than the repetition penalty, DRY, XTC, typical-p, mirostat, grammars,
    logit bias. ``apply_repetition_penalty`` is for the caller to run before ``sample``.

References
    llama.cpp ``src/llama-sampling.cpp`` (``llama_sampler_top_k_impl``, ``_top_p_apply``,
    ``_min_p_apply``, ``_temp_apply``, ``_dist_apply``, ``_penalties_apply``); Holtzman et
    al. 2019 (nucleus sampling, arXiv:1904.09751); Nguyen et al. 2024 (min-p, arXiv:2407.01082).
"""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, splitmix64's increment
MASS_SCALE = np.float32(2.0**32)  # fixed-point unit for probability masses


def mix64(z: int) -> int:
    """splitmix64's output function: a bijective 64-bit hash (Stafford's "Mix13" constants)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def uniform(seed: int, step: int) -> float:
    """A float64 in [0, 1) that depends only on ``(seed, step)``."""
    key = mix64((seed + GOLDEN) & MASK64)
    z = mix64((key + (step + 1) * GOLDEN) & MASK64)
    return (z >> 11) * 2.0**-53


def apply_repetition_penalty(logits: np.ndarray, prev_ids, penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty: for each *distinct* previous id, ``l / penalty`` when
    ``l > 0`` else ``l * penalty``. Returns a new float32 array [V]."""
    out = np.array(logits, dtype=np.float32, copy=True)          # [V]
    ids = np.unique(np.asarray(prev_ids, dtype=np.int64))
    if penalty == 1.0 or ids.size == 0:
        return out
    p = np.float32(penalty)
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / p, vals * p)
    return out


def fixed_mass(logits: np.ndarray, m: np.float32, temperature: float = 1.0) -> np.ndarray:
    """``floor(exp(l/T - m/T) * 2^32)`` as uint64, all float32 arithmetic before the floor."""
    t = np.float32(temperature)
    with np.errstate(under="ignore"):
        e = np.exp(logits / t - m / t)                                  # [V] float32 in [0, 1]
    return (e * MASS_SCALE).astype(np.uint64)                           # exact scaling, truncation


def sorted_order(logits: np.ndarray) -> np.ndarray:
    """Token ids by logit, larger first, lower id first among equal logits."""
    ids = np.arange(logits.shape[0])
    return np.lexsort((ids, -logits))


def keep_top_k(order: np.ndarray, keep: np.ndarray, top_k: int) -> None:
    if 0 < top_k < order.shape[0]:
        keep[order[top_k:]] = False


def keep_top_p(logits, order, keep, m, top_p: float) -> None:
    if top_p >= 1.0:
        return
    mass = np.where(keep, fixed_mass(logits, m), np.uint64(0))         # [V] uint64
    cum = np.cumsum(mass[order])                                       # [V] exact prefix sums
    target = float(top_p) * float(cum[-1])
    cut = int(np.argmax(cum.astype(np.float64) >= target))             # first prefix reaching p
    keep[order[cut + 1:]] = False


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0, u: float = 0.5) -> int:
    """Pick a token id from ``logits`` [V]; ``u`` in [0, 1) is the random number (see ``uniform``)."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)         # [V]
    if temperature <= 0.0:
        return int(np.argmax(logits))                                  # first maximum = lowest id
    m = logits.max()
    keep = np.ones(logits.shape[0], dtype=bool)
    order = sorted_order(logits)
    keep_top_k(order, keep, 1 if top_p <= 0.0 else top_k)
    keep_top_p(logits, order, keep, m, top_p if top_p > 0.0 else 1.0)
    if min_p > 0.0:
        keep &= logits >= m + np.float32(np.log(np.float32(min_p)))
    mass = np.where(keep, fixed_mass(logits, m, temperature), np.uint64(0))  # [V] uint64
    cum = np.cumsum(mass)                                              # [V] in token-id order
    return int(np.argmax(cum.astype(np.float64) > float(u) * float(cum[-1])))
