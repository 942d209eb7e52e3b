"""Sampling: the counter-based generator, the filter chain, the distribution, and the kernel
picking the very same token as the reference.

No float tolerances here: the reference and the kernel sum fixed-point integer masses, so they
are compared for equality. The chi-square bounds are stated where used.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, requires_cuda
from numba import cuda, uint64

from numba_kernels import sampling as kern
from ref import sampling as ref

EXAMPLES = 60 if ON_GPU else 8
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered")   # simulator uint64 wrap


def chi_square(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_uniform_range_and_spread():
    u = np.array([ref.uniform(7, s) for s in range(20000)])
    assert (u >= 0).all() and (u < 1).all()
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert chi_square(counts, np.full(20, 1 / 20)) < 45.3      # df=19, p = 0.001
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.03       # consecutive steps uncorrelated
    assert ref.uniform(7, 3) == ref.uniform(7, 3) != ref.uniform(8, 3)


def test_repetition_penalty():
    logits = np.array([2.0, -2.0, 1.0, 0.0], np.float32)
    out = ref.apply_repetition_penalty(logits, [0, 1, 1, 3], 2.0)   # id 1 twice: penalized once
    assert np.array_equal(out, [1.0, -4.0, 1.0, 0.0])
    assert np.array_equal(logits, [2.0, -2.0, 1.0, 0.0])             # input untouched


logit_rows = hnp.arrays(np.float32, st.integers(1, 300),
                        elements=st.one_of(st.integers(-4, 4).map(float),     # exact ties
                                           st.floats(-20, 20, width=32)))
settings_st = st.tuples(st.floats(0.05, 2.0), st.sampled_from([0, 1, 2, 5, 40]),
                        st.sampled_from([1.0, 0.95, 0.5, 0.1, 0.0]), st.sampled_from([0.0, 0.05, 0.5]))


@settings(deadline=None, max_examples=100)
@given(logit_rows, st.floats(0, 1, exclude_max=True))
def test_greedy_and_top_k_1_are_argmax(logits, u):
    best = int(np.flatnonzero(logits == logits.max())[0])      # lowest id among ties
    assert ref.sample(logits, 0.0, u=u) == best
    assert ref.sample(logits, 0.7, top_k=1, u=u) == best
    assert ref.sample(logits, 1.3, top_p=0.0, u=u) == best


@settings(deadline=None, max_examples=100)
@given(logit_rows, settings_st, st.floats(0, 1, exclude_max=True))
def test_pick_survives_every_filter(logits, cfg, u):
    temperature, top_k, top_p, min_p = cfg
    tok = ref.sample(logits, temperature, top_k, top_p, min_p, u)
    order = ref.sorted_order(logits)
    rank = int(np.flatnonzero(order == tok)[0])
    if top_k:
        assert rank < top_k
    m = logits.max()
    if min_p > 0:
        assert logits[tok] >= m + np.float32(np.log(np.float32(min_p)))
    if 0 < top_p < 1:                                          # the mass before it is < top_p
        p = np.exp(logits.astype(np.float64) - m)
        if top_k:
            p[order[top_k:]] = 0
        before = p[order[:rank]].sum() / p.sum()
        assert before < top_p + 1e-6                            # float64 vs fixed point: 1e-6


def test_samples_follow_the_distribution():
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5, -3.0, 1.5, 0.2], np.float32)
    for temperature in (1.0, 0.6):
        probs = np.exp(logits / temperature - logits.max() / temperature)
        probs /= probs.sum()
        counts = np.bincount([ref.sample(logits, temperature, u=ref.uniform(3, s)) for s in range(8000)],
                             minlength=8)
        assert chi_square(counts, probs) < 24.3                 # df=7, p = 0.001


def test_top_p_keeps_nucleus_only():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    seen = {ref.sample(logits, 1.0, top_p=0.8, u=ref.uniform(1, s)) for s in range(400)}
    assert seen == {0, 1}                                       # 0.5 + 0.3 reaches 0.8
    seen = {ref.sample(logits, 1.0, min_p=0.25, u=ref.uniform(1, s)) for s in range(400)}
    assert seen == {0, 1, 2}                                    # 0.05 < 0.25 * 0.5


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(logit_rows, settings_st, st.integers(0, 2**63), st.integers(0, 10**6))
def test_kernel_picks_the_reference_token(logits, cfg, seed, step):
    temperature, top_k, top_p, min_p = cfg
    expect = ref.sample(logits, temperature, top_k, top_p, min_p, ref.uniform(seed, step))
    got = kern.sample(logits, temperature, top_k, top_p, min_p, seed, np.array([step], np.int32))
    assert got == expect


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(logit_rows)
def test_argmax_kernel(logits):
    assert kern.argmax(logits) == int(np.argmax(logits))


@cuda.jit
def draw_uniform(seed, steps, out):
    i = cuda.grid(1)
    if i < steps.shape[0]:
        out[i] = kern._uniform(seed, uint64(steps[i]))


@requires_cuda
def test_device_uniform_matches_ref():
    steps = np.array([0, 1, 2, 1000, 2**31 - 1], np.int64)
    out = cuda.device_array(steps.shape[0], np.float64)
    for seed in (0, 1, 2**64 - 1):
        draw_uniform[1, 32](np.uint64(seed), cuda.to_device(steps), out)
        assert list(out.copy_to_host()) == [ref.uniform(seed, int(s)) for s in steps]


@requires_cuda
def test_kernel_replays_with_device_step():
    logits = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    d, out, step = cuda.to_device(logits), cuda.device_array(1, np.int32), cuda.to_device(np.zeros(1, np.int32))
    for s in range(6 if not ON_GPU else 50):
        step.copy_to_device(np.array([s], np.int32))
        assert kern.sample(d, 1.0, 0, 0.9, 0.0, 99, step, out=out) is out
        assert int(out.copy_to_host()[0]) == ref.sample(logits, 1.0, 0, 0.9, 0.0, ref.uniform(99, s))
