"""Sampling: the counter-based generator, the filter chain, the distribution, and the kernel
picking the very same token as the reference.

No float tolerances here: the reference and the kernel sum fixed-point integer masses, so they
are compared for equality. The chi-square bounds are stated where used.

The multi-block versions (argmax v2, sample v2) get small blocks here (32 threads, slices of
256 ids) so that a few hundred ids already make several blocks and, for sample v2, a merge tree
of several levels; the simulator costs a few ms per simulated thread and barrier.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import HAVE_CUDA, ON_GPU, requires_cuda
from numba import cuda, uint64

from numba_kernels import sampling as kern
from ref import sampling as ref

EXAMPLES = 60 if ON_GPU else 16
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
    got = kern.sample(logits, temperature, top_k, top_p, min_p, seed, np.array([step], np.int32), version=1)
    assert got == expect                                        # v1, the one-block kernel, for any top_k


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(logit_rows)
def test_argmax_kernel(logits):
    assert kern.argmax(logits, version=1) == int(np.argmax(logits))


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


# ---------------------------------------------------------------------------------------------
# argmax v2: many blocks, the last one to arrive reduces their pairs

def argmax_rows():
    """Rows of 1..512 ids (1 to 4 blocks of 32 threads x 4 ids), often with the maximum planted
    at several ids, so equal maxima sit in different blocks."""
    values = st.one_of(st.integers(-3, 3).map(float), st.floats(-20, 20, width=32))
    return st.tuples(hnp.arrays(np.float32, st.integers(1, 512), elements=values),
                     st.lists(st.integers(0, 511), max_size=6), st.sampled_from([0.0, 25.0]))


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(argmax_rows())
def test_argmax_blocks_equals_numpy(case):
    logits, planted, top = case
    logits = logits.copy()
    logits[[i % logits.shape[0] for i in planted]] = logits.max() + top   # ties across blocks
    ws = kern.ArgmaxWorkspace(logits.shape[0], threads=32)
    d, out = cuda.to_device(logits), cuda.device_array(1, np.int32)
    kern.argmax(d, out=out, workspace=ws)
    assert int(out.copy_to_host()[0]) == int(np.argmax(logits))
    assert int(ws.counter.copy_to_host()[0]) == 0               # reset by the last block: replays start clean


@requires_cuda
def test_argmax_blocks_edge_rows():
    ws = kern.ArgmaxWorkspace(300, threads=32)                  # 3 blocks of 32 threads
    assert ws.n_blocks == 3
    row = np.zeros(300, np.float32)
    row[[290, 299, 100]] = 1.0                                  # 100 (block 0) beats the later ones
    assert kern.argmax(row, workspace=ws) == 100               # the same workspace from here on
    row[100] = 0.0
    assert kern.argmax(row, workspace=ws) == 290
    assert kern.argmax(np.full(300, -np.inf, np.float32), workspace=ws) == 0   # as v1 and numpy
    row[5] = np.nan                                            # NaN is skipped, as in v1
    assert kern.argmax(row, workspace=ws) == kern.argmax(row, version=1) == 290
    assert kern.argmax(np.array([-1.0, 3.0, 3.0], np.float32), workspace=ws) == 1   # V < one block
    assert kern.argmax(np.array([2.0, 7.0, 7.0], np.float32)) == 1                   # cached workspace


# ---------------------------------------------------------------------------------------------
# sample v2: exact top-k over many blocks, then the filters on <= 128 tokens

def sample_case():
    """(logits, T, k, top_p, min_p, seed, step): rows of 1..1100 ids, Gaussian or with few
    distinct values (heavy ties at the k-th value), settings in the fast path's range."""
    row = st.tuples(st.integers(1, 1100), st.sampled_from(["gauss", "ties", "flat"]), st.integers(0, 2**32 - 1))
    top_p = st.one_of(st.just(1.0), st.floats(0.0, 1.0, exclude_min=True))
    cfg = st.tuples(st.floats(0.1, 2.0, exclude_min=True), st.integers(1, 128), top_p,
                    st.one_of(st.just(0.0), st.floats(0.0, 0.2)))
    return st.tuples(row, cfg, st.integers(0, 2**64 - 1), st.integers(0, 2**31 - 1))


def make_row(V, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return (rng.standard_normal(V) * 3).astype(np.float32)
    if kind == "ties":                                          # 7 values: ~V/7 ids tie at each
        return rng.integers(-3, 4, V).astype(np.float32)
    row = np.zeros(V, np.float32)                               # all tied but a few, planted late
    row[rng.integers(V // 2, V, 5)] = rng.integers(1, 3, 5)
    return row


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(sample_case())
def test_fast_sample_picks_the_reference_token(case):
    (V, kind, row_seed), (temperature, top_k, top_p, min_p), seed, step = case
    logits = make_row(V, kind, row_seed)
    expect = ref.sample(logits, temperature, top_k, top_p, min_p, ref.uniform(seed, step))
    ws = kern.TopKWorkspace(V, slice_size=256, threads=32)
    got = kern.sample(logits, temperature, top_k, top_p, min_p, seed, np.array([step], np.int32),
                      workspace=ws, version=2)
    assert got == expect
    assert not ws.counters.copy_to_host().any()                 # every group's counter reset


@requires_cuda
def test_fast_sample_replays_over_a_merge_tree():
    V = 1000                                                    # 4 slices, lists of 128: 2 merge levels
    logits = make_row(V, "flat", 3)
    logits[[990, 700]] = 4.0
    ws = kern.TopKWorkspace(V, slice_size=256, threads=32)
    d, out, step = cuda.to_device(logits), cuda.device_array(1, np.int32), cuda.to_device(np.zeros(1, np.int32))
    seen = set()
    for s in range(4 if not ON_GPU else 50):                    # the same launch, a new step in memory
        step.copy_to_device(np.array([s], np.int32))
        assert kern.sample(d, 2.0, 100, 1.0, 0.0, 5, step, out=out, workspace=ws) is out
        got = int(out.copy_to_host()[0])
        assert got == ref.sample(logits, 2.0, 100, 1.0, 0.0, ref.uniform(5, s))
        seen.add(got)
        assert not ws.counters.copy_to_host().any()
    # top-k 100 keeps the 4.0s, the other ties at 2 or 1 and then the lowest ids at 0
    assert len(seen) > 1


def test_fast_sample_limits():
    assert kern._tree_size(1, 2) == (0, 0)
    assert kern._tree_size(149, 8) == (149 + 19 + 3, 19 + 3 + 1)   # V = 151936, k > 64
    with pytest.raises(ValueError, match="power of two"):
        kern.TopKWorkspace(1000, slice_size=200)
    if HAVE_CUDA:
        logits = np.zeros(600, np.float32)
        with pytest.raises(ValueError, match="too small"):
            kern.sample(logits, 1.0, 5, 1.0, 0.0, 0, np.zeros(1, np.int32), workspace=kern.TopKWorkspace(300, 256))
        with pytest.raises(ValueError, match="top_k=0"):
            kern.sample(logits, 1.0, 0, 1.0, 0.0, 0, np.zeros(1, np.int32), version=2)
