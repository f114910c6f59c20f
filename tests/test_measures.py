"""beta, CNA, CNA-A, margins against independent numpy/scipy computations."""
import warnings

import numpy as np
import pytest
from scipy import stats

import cna_tf
from cna_tf.measures import CNAWarning


def test_beta_matches_polyfit(rng):
    z = rng.normal(size=(50, 7)) * 10
    d = np.arange(1, 8)
    want = [np.polyfit(d, row, 1)[0] for row in z]
    np.testing.assert_allclose(cna_tf.beta(z), want, rtol=1e-10)


def test_beta_exact_line():
    z = np.array([[1.0, 3.0, 5.0], [4.0, 2.0, 0.0]])
    np.testing.assert_allclose(cna_tf.beta(z), [2.0, -2.0])


def test_beta_errors():
    with pytest.raises(ValueError, match="at least 2 probe layers"):
        cna_tf.beta(np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"shape \(n, L\)"):
        cna_tf.beta(np.ones(4))


@pytest.mark.parametrize("method,ref", [("pearson", stats.pearsonr), ("spearman", stats.spearmanr),
                                        ("kendall", stats.kendalltau)])
def test_cna_matches_scipy(rng, method, ref):
    a = rng.normal(size=100)
    b = 0.5 * a + rng.normal(size=100)
    assert cna_tf.cna(a, b, method=method) == pytest.approx(ref(a, b)[0], abs=1e-12)


def test_cna_zero_variance_is_nan_with_cause():
    with pytest.warns(CNAWarning, match="alpha has zero variance"):
        assert np.isnan(cna_tf.cna(np.ones(5), np.arange(5.0)))
    with pytest.warns(CNAWarning, match="beta has zero variance"):
        assert np.isnan(cna_tf.cna(np.arange(5.0), np.zeros(5)))
    with pytest.warns(CNAWarning, match="non-finite"):
        assert np.isnan(cna_tf.cna(np.arange(5.0), [0, 1, np.nan, 2, 3]))


def test_cna_errors():
    with pytest.raises(ValueError, match="same length"):
        cna_tf.cna(np.arange(5.0), np.arange(4.0))
    with pytest.raises(ValueError, match="method"):
        cna_tf.cna(np.arange(5.0), np.arange(5.0), method="cosine")


def reference_area(a_tr, b_tr, a_te, b_te, window, points, fine=200001):
    """Independent CNA-A: np.convolve smoothing, then integral of |difference| on a fine grid."""
    def curve(a, b):
        o = np.argsort(a, kind="stable")
        k = np.ones(window) / window
        return np.convolve(a[o], k, "valid"), np.convolve(b[o], k, "valid")
    (x1, y1), (x2, y2) = curve(a_tr, b_tr), curve(a_te, b_te)
    ax, bx = np.concatenate([x1, x2]), np.concatenate([y1, y2])
    na = lambda v: (v - ax.min()) / (ax.max() - ax.min())  # noqa: E731
    nb = lambda v: (v - bx.min()) / (bx.max() - bx.min())  # noqa: E731
    x1, x2, y1, y2 = na(x1), na(x2), nb(y1), nb(y2)
    grid = np.linspace(max(x1[0], x2[0]), min(x1[-1], x2[-1]), points)
    g1, g2 = np.interp(grid, x1, y1), np.interp(grid, x2, y2)
    xs = np.linspace(grid[0], grid[-1], fine)
    diff = np.abs(np.interp(xs, grid, g1) - np.interp(xs, grid, g2))
    return float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(xs)))


def test_cna_area_matches_reference_with_crossing_curves(rng):
    a_tr, a_te = rng.random(400), rng.random(300)
    b_tr = np.sin(6 * a_tr) + 0.1 * rng.normal(size=400)
    b_te = np.cos(6 * a_te) + 0.1 * rng.normal(size=300)  # crosses the train curve several times
    got = cna_tf.cna_area(a_tr, b_tr, a_te, b_te, window=25, points=100)
    want = reference_area(a_tr, b_tr, a_te, b_te, 25, 100)
    assert got == pytest.approx(want, rel=1e-4)
    # lobes add up: a signed shoelace area of the self-intersecting ring would be much smaller
    assert got > 0.1


def test_cna_area_identical_is_zero_and_grows_apart(rng):
    a = rng.random(500)
    b = a ** 2 + 0.05 * rng.normal(size=500)
    assert cna_tf.cna_area(a, b, a, b) == pytest.approx(0.0, abs=1e-12)
    areas = [cna_tf.cna_area(a, b, a, b + shift) for shift in (0.1, 0.3, 0.6)]
    assert areas[0] < areas[1] < areas[2]


def test_cna_area_undefined_cases():
    with pytest.warns(CNAWarning, match="do not overlap"):
        assert np.isnan(cna_tf.cna_area(np.arange(50.0), np.arange(50.0),
                                        np.arange(100.0, 150.0), np.arange(50.0)))
    with pytest.warns(CNAWarning, match="zero range"):
        assert np.isnan(cna_tf.cna_area(np.ones(30), np.arange(30.0), np.ones(30),
                                        np.arange(30.0)))
    with pytest.raises(ValueError, match="same length"):
        cna_tf.cna_area(np.arange(5.0), np.arange(4.0), np.arange(5.0), np.arange(5.0))


def test_margins_probabilities_and_logits(rng):
    logits = rng.normal(size=(40, 5)) * 3
    y = rng.integers(0, 5, size=40)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = np.array([p[i, y[i]] - np.max(np.delete(p[i], y[i])) for i in range(40)])
    np.testing.assert_allclose(cna_tf.margins(p, y), want, atol=1e-12)
    np.testing.assert_allclose(cna_tf.margins(logits, y), want, atol=1e-12)  # softmax applied once
    want_logits = np.array([logits[i, y[i]] - np.max(np.delete(logits[i], y[i]))
                            for i in range(40)])
    np.testing.assert_allclose(cna_tf.margins(logits, y, on="logits"), want_logits, atol=1e-12)
    # probabilities with on="logits": log p differs from the logits by a per-row constant
    np.testing.assert_allclose(cna_tf.margins(p, y, on="logits"), want_logits, atol=1e-9)
    np.testing.assert_allclose(cna_tf.margins(p, np.eye(5)[y]), want, atol=1e-12)  # one-hot
    assert cna_tf.margin(p, y) == pytest.approx(np.percentile(want, 5))
    assert cna_tf.margin(p, y, percentile=10) == pytest.approx(np.percentile(want, 10))


def test_margin_errors(rng):
    p = np.full((3, 4), 0.25)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        cna_tf.margins(p, [0, 1, 4])
    with pytest.raises(ValueError, match="got 2 labels for 3 samples"):
        cna_tf.margins(p, [0, 1])
    with pytest.raises(ValueError, match="percentile"):
        cna_tf.margin(p, [0, 1, 2], percentile=150)


def test_cna_margin():
    assert cna_tf.cna_margin(0.5, 0.2) == pytest.approx(0.1)


def test_no_warning_on_regular_data(rng):
    a = rng.random(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cna_tf.cna(a, a + rng.normal(size=100))
        cna_tf.cna_area(a, a, rng.random(100), rng.random(100))


# -- the one label validator (SPEC §6) ---------------------------------------------------------

def test_class_indices_accepts_indices_and_exact_one_hot(rng):
    from cna_tf.measures import class_indices
    y = rng.integers(0, 4, size=30)
    onehot = np.zeros((30, 4), dtype=np.float32)           # what to_categorical gives
    onehot[np.arange(30), y] = 1
    for form in (y, y.astype(np.float64), y[:, None], onehot, onehot.astype(bool),
                 onehot.astype(np.uint8), list(y)):
        got = class_indices(form, n=30, num_classes=4)
        assert got.dtype == np.int64 and got.shape == (30,)
        np.testing.assert_array_equal(got, y)
    assert class_indices(np.zeros(0, dtype=int), n=0, num_classes=3).shape == (0,)


@pytest.mark.parametrize("labels, match", [
    (np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]),     # label smoothing
     r"labels of shape \(2, 3\) must be one-hot rows with exactly one 1 per row.*row 0 is "
     r"\[0\.9, 0\.05, 0\.05\].*smoothed or mixed labels\?.*integer class indices"),
    (np.array([[1.0, 0, 0], [0, 0.3, 0.7]]),               # mixup
     r"row 1 is \[0, 0\.3, 0\.7\], 1 row\(s\) are not one-hot"),
    (np.array([[1, 1, 0], [0, 1, 0]]),                      # multi-hot
     r"row 0 is \[1, 1, 0\]"),
    (np.array([[0, 0, 0], [0, 1, 0]]),                      # an empty row
     r"row 0 is \[0, 0, 0\]"),
    (np.array([0.0, 1.5]), r"got float64 values such as \[1\.5\] \(soft or fractional"),
    (np.array([0.0, np.nan]), r"values such as \[nan\]"),
    (np.array(["cat", "dog"]), r"non-numeric dtype <U3.*np\.unique"),
    (np.zeros((2, 3, 1)), r"got shape \(2, 3, 1\)"),
    (np.array([0, -1]), r"labels must lie in \[0, 2\] for a model with 3 outputs; found -1\.\.0"),
])
def test_class_indices_rejects_other_labels_naming_the_fix(labels, match):
    from cna_tf.measures import class_indices
    with pytest.raises(ValueError, match=match):
        class_indices(labels, n=2, num_classes=3)


def test_one_validator_behind_margins_with_soft_labels_and_wrong_width(rng):
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="smoothed or mixed"):
        cna_tf.margins(p, np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]))
    with pytest.raises(ValueError, match=r"one-hot labels have 4 columns but the model has 3 "
                                         r"outputs.*to_categorical\(y, 3\)"):
        cna_tf.margins(p, np.eye(4)[[0, 1]])
    with pytest.raises(ValueError, match="smoothed or mixed"):
        cna_tf.margin(p, np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]))
