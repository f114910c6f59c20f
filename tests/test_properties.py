"""Property-based tests (hypothesis) of the invariants the paper's definitions imply (issue 22,
item 6): alpha ignores where a pixel is, beta is linear in the sums, CNA ignores monotone
increasing affine maps, CNA-A is 0 for identical curves, margins of probabilities lie in
[-1, 1]."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cna_tf
from cna_tf import measures

# derandomized (the same examples every run, as a CI test should be) and no example database
# written into the working tree
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)

images_u8 = hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 6),
                                           st.integers(1, 6)))
# float images on a declared range, values drawn inside it (edges included)
images_f = st.tuples(st.integers(1, 3), st.integers(2, 20)).flatmap(
    lambda s: hnp.arrays(np.float64, s, elements=st.floats(-2.0, 3.0, allow_nan=False)))
bins = st.integers(1, 300)
seeds = st.integers(0, 2 ** 32 - 1)


def _permute_pixels(x, seed):
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1).copy()
    for row in flat:
        rng.shuffle(row)
    return flat.reshape(x.shape)


@FAST
@given(images_u8, bins, seeds)
def test_alpha_unchanged_by_permuting_each_images_pixels(x, b, seed):
    a = cna_tf.alpha(x, bins=b)
    np.testing.assert_array_equal(cna_tf.alpha(_permute_pixels(x, seed), bins=b), a)
    # any layout: the same pixels flattened or transposed
    np.testing.assert_array_equal(cna_tf.alpha(x.reshape(len(x), -1), bins=b), a)
    np.testing.assert_array_equal(cna_tf.alpha(np.swapaxes(x, 1, 2), bins=b), a)
    assert np.all(a >= -1e-12) and np.all(a <= np.log(min(b, x[0].size)) + 1e-12)


def test_alpha_of_a_constant_image_is_exactly_zero():
    x = np.zeros((1, 2, 3), np.uint8)
    assert cna_tf.alpha(x, bins=1)[0] == 0.0
    assert cna_tf.alpha(x, bins=100)[0] == 0.0


@FAST
@given(images_f, bins, seeds)
def test_alpha_of_float_images_unchanged_by_permuting_pixels(x, b, seed):
    a = cna_tf.alpha(x, bins=b, value_range=(-2.0, 3.0))
    np.testing.assert_array_equal(cna_tf.alpha(_permute_pixels(x, seed), bins=b,
                                               value_range=(-2.0, 3.0)), a)


@FAST
@given(images_u8, seeds)
def test_alpha_of_an_image_batch_is_per_image(x, seed):
    """Each image's alpha does not depend on the other images of the batch or their order."""
    order = np.random.default_rng(seed).permutation(len(x))
    np.testing.assert_array_equal(cna_tf.alpha(x[order]), cna_tf.alpha(x)[order])
    np.testing.assert_array_equal(cna_tf.alpha(x[:1]), cna_tf.alpha(x)[:1])


sums = st.tuples(st.integers(1, 6), st.integers(2, 9)).flatmap(
    lambda s: hnp.arrays(np.float64, s, elements=st.floats(-1e3, 1e3, allow_nan=False)))


@FAST
@given(sums, st.floats(-100, 100, allow_nan=False), st.floats(-1e3, 1e3, allow_nan=False))
def test_beta_scales_with_the_sums_and_ignores_a_shift(s, c, shift):
    b = cna_tf.beta(s)
    scale = np.abs(s).max() + 1.0
    np.testing.assert_allclose(cna_tf.beta(c * s), c * b, rtol=1e-9,
                               atol=1e-9 * scale * (abs(c) + 1))
    np.testing.assert_allclose(cna_tf.beta(s + shift), b, rtol=1e-9,
                               atol=1e-9 * (scale + abs(shift)))
    np.testing.assert_allclose(cna_tf.beta(s[:, ::-1]), -b, rtol=1e-9, atol=1e-9 * scale)


@FAST
@given(st.integers(2, 12), st.floats(-50, 50, allow_nan=False), st.floats(-50, 50, allow_nan=False))
def test_beta_of_a_straight_line_is_its_slope(n_layers, slope, intercept):
    d = np.arange(1, n_layers + 1)
    np.testing.assert_allclose(cna_tf.beta((intercept + slope * d)[None]), [slope], rtol=1e-9,
                               atol=1e-9 * (abs(intercept) + abs(slope) + 1))


def _vector(n):
    return hnp.arrays(np.float64, n, elements=st.integers(-1000, 1000).map(float))


pairs = st.integers(3, 40).flatmap(lambda n: st.tuples(_vector(n), _vector(n)))
positive = st.floats(0.01, 100.0)
offset = st.floats(-100.0, 100.0)


@FAST
@given(pairs, positive, offset, positive, offset)
def test_cna_unchanged_by_increasing_affine_maps(ab, p, q, r, s):
    a, b = ab
    assume(np.ptp(a) > 0 and np.ptp(b) > 0)
    for method in ("pearson", "spearman", "kendall"):
        c = cna_tf.cna(a, b, method=method)
        assert -1 - 1e-12 <= c <= 1 + 1e-12
        assert cna_tf.cna(p * a + q, b, method=method) == pytest.approx(c, abs=1e-9)
        assert cna_tf.cna(a, r * b + s, method=method) == pytest.approx(c, abs=1e-9)
        assert cna_tf.cna(p * a + q, r * b + s, method=method) == pytest.approx(c, abs=1e-9)
        # a decreasing map flips the sign; the two vectors play symmetric roles
        assert cna_tf.cna(-p * a + q, b, method=method) == pytest.approx(-c, abs=1e-9)
        assert cna_tf.cna(b, a, method=method) == pytest.approx(c, abs=1e-9)


def _cloud(n):
    """n points with distinct alphas (so no sort order is ambiguous) and any betas."""
    return st.tuples(hnp.arrays(np.float64, n, elements=st.integers(-10 ** 6, 10 ** 6).map(float),
                                unique=True),
                     hnp.arrays(np.float64, n, elements=st.floats(-50, 50, allow_nan=False)))


clouds = st.integers(2, 60).flatmap(_cloud)


@FAST
@given(clouds, st.integers(1, 30), st.integers(2, 120), seeds)
def test_cna_area_is_zero_for_identical_curves(cloud, window, points, seed):
    a, b = cloud
    window = min(window, len(a) - 1)   # at least 2 smoothed points: a curve, not a single point
    assert measures.cna_area(a, b, a, b, window=window, points=points) == pytest.approx(
        0.0, abs=1e-12)
    order = np.random.default_rng(seed).permutation(len(a))   # the same points, shuffled
    assert measures.cna_area(a, b, a[order], b[order], window=window,
                             points=points) == pytest.approx(0.0, abs=1e-9)


@FAST
@given(clouds, clouds, st.integers(1, 30), positive, offset, positive, offset)
def test_cna_area_symmetric_and_unchanged_by_increasing_affine_maps(tr, te, window, p, q, r, s):
    (a1, b1), (a2, b2) = tr, te
    # a beta range of at least 1: a (near-)constant beta hits the round-off bug of
    # test_cna_area_of_a_constant_beta_is_zero
    assume(np.ptp(np.concatenate([b1, b2])) >= 1.0)
    area = measures.cna_area(a1, b1, a2, b2, window=window, points=50)
    if np.isnan(area):   # undefined (no overlap of the alpha ranges): the same either way
        assert np.isnan(measures.cna_area(a2, b2, a1, b1, window=window, points=50))
        return
    assert 0 <= area <= 1 + 1e-9                       # inside the normalized unit square
    assert measures.cna_area(a2, b2, a1, b1, window=window, points=50) == pytest.approx(
        area, rel=1e-9, abs=1e-12)
    mapped = measures.cna_area(p * a1 + q, r * b1 + s, p * a2 + q, r * b2 + s, window=window,
                               points=50)
    assert mapped == pytest.approx(area, rel=1e-6, abs=1e-9)


def test_cna_area_of_a_constant_beta_is_zero():
    rng = np.random.default_rng(0)
    a_tr, a_te = rng.normal(size=200), rng.normal(size=150)
    assert measures.cna_area(a_tr, np.zeros(200), a_te, np.zeros(150)) == 0.0   # passes today
    for c in (0.01, 3.7, -1.3):
        assert measures.cna_area(a_tr, np.full(200, c), a_te, np.full(150, c)) == pytest.approx(
            0.0, abs=1e-9), c


probs = st.tuples(st.integers(1, 20), st.integers(2, 8)).flatmap(
    lambda s: st.tuples(hnp.arrays(np.float64, s, elements=st.floats(-30, 30, allow_nan=False)),
                        hnp.arrays(np.int64, s[0], elements=st.integers(0, s[1] - 1))))


@FAST
@given(probs, st.floats(0, 100))
def test_margins_of_probabilities_lie_in_minus_one_one(logits_labels, pct):
    logits, y = logits_labels
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    m = measures.margins(p, y)
    assert m.shape == (len(y),)
    assert np.all(m >= -1.0) and np.all(m <= 1.0)
    # the same margins from the logits (softmax applied once, never twice)
    np.testing.assert_allclose(measures.margins(logits, y, from_logits=True), m, atol=1e-12)
    # positive exactly where the true class wins outright
    top = p.max(axis=1)
    others = np.where(np.arange(p.shape[1]) == y[:, None], -np.inf, p).max(axis=1)
    np.testing.assert_allclose(m, p[np.arange(len(y)), y] - others, atol=1e-15)
    clear = np.abs(m) > 1e-12
    np.testing.assert_array_equal((m > 0)[clear], (p[np.arange(len(y)), y] == top)[clear])
    g = measures.margin(p, y, percentile=pct)
    assert m.min() - 1e-15 <= g <= m.max() + 1e-15


# -- the seed bootstrap (SPEC §9 amended, issue 36): every point inside its own interval ---------

boot_grids = st.fixed_dictionaries({
    "shape": st.tuples(st.integers(2, 4), st.integers(1, 3), st.integers(1, 2)),
    "seeds": st.integers(1, 3),            # 1: zero-width intervals (one network per combination)
    "signal": st.floats(-2.0, 2.0),        # how strongly the measure follows the gap
    "holes": st.booleans(),                # a NaN measure on one network
    "pool": st.booleans(),                 # resampled with replacement instead of by seed
    "seed": seeds})


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(boot_grids)
def test_every_bootstrap_point_is_its_replicates_mean_and_inside_its_interval(g):
    from cna_tf.ranking import bootstrap

    a, b, c = g["shape"]
    combos = [(i, j, k, s) for i in range(a) for j in range(b) for k in range(c)
              for s in range(g["seeds"])]
    hp = {name: [row[d] for row in combos] for d, name in enumerate(("a", "b", "c", "seed"))}
    rng = np.random.default_rng(g["seed"])
    gap = np.array(hp["a"]) * 0.3 + rng.normal(size=len(combos))
    x = g["signal"] * gap + rng.normal(size=len(combos))
    if g["holes"]:
        x[rng.integers(len(x))] = np.nan
    res = bootstrap({"x": x}, gap, hp, replicates=200, seed=g["seed"] % 1000,
                    replicate_axis=None if g["pool"] else "seed")
    for stat, (point, low, high) in res["x"].items():
        s = res.samples["x"][stat]
        if not np.isfinite(s).any():
            assert np.isnan(point) and np.isnan(low) and np.isnan(high)
            continue
        assert point == pytest.approx(np.nanmean(s), abs=1e-12)
        assert low - 1e-12 <= point <= high + 1e-12, (stat, point, low, high)
