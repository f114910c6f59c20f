"""Tests written to kill `make mutate`'s surviving mutants of `cna_tf.complexity` and
`cna_tf.measures` (docs/testing.md). Pure numpy: each number is recomputed here independently.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import entropy

import cna_tf
from cna_tf import measures
from cna_tf.measures import CNAWarning


def _messages(fn, *args, **kwargs):
    """(result, [CNAWarning messages]) of ``fn``; any other warning is an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        warnings.simplefilter("always", CNAWarning)
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught]


# -- alpha of integer images with a range that does not start at 0 ----------------------------

def _alpha_by_hand(images, lo, hi, bins=100):
    """Integer binning: value v falls in bin floor((v - lo) * bins / (hi - lo)), the top value
    in the last bin; entropy in nats."""
    out = []
    for img in images.reshape(len(images), -1).astype(np.int64):
        b = np.minimum((img - lo) * bins // (hi - lo), bins - 1)
        out.append(entropy(np.bincount(b, minlength=bins)))
    return np.array(out)


@pytest.mark.parametrize("shape", [(3, 28, 28), (5, 4, 4)])    # uint16 keys / int64 keys
@pytest.mark.parametrize("lo,hi", [(1, 150), (3, 60)])
def test_uint8_alpha_with_a_range_above_zero(shape, lo, hi):
    rng = np.random.default_rng(11)
    x = rng.integers(lo, hi + 1, size=shape).astype(np.uint8)
    got = cna_tf.alpha(x, value_range=(lo, hi))
    np.testing.assert_allclose(got, _alpha_by_hand(x, lo, hi), rtol=1e-12, atol=1e-12)


def test_int16_alpha_with_negative_values():
    rng = np.random.default_rng(12)
    x = rng.integers(-50, 51, size=(4, 28, 28)).astype(np.int16)
    got = cna_tf.alpha(x, value_range=(-50, 50), bins=7)
    np.testing.assert_allclose(got, _alpha_by_hand(x, -50, 50, bins=7), rtol=1e-12, atol=1e-12)


# -- beta, CNA: messages and small samples -----------------------------------------------------

def test_beta_of_one_layer_names_the_fix():
    with pytest.raises(ValueError) as err:
        measures.beta(np.ones((3, 1)))
    assert str(err.value) == ("beta is a slope over depth and needs at least 2 probe layers, got "
                              "L=1; use a deeper model or ActivationProbe(..., "
                              "include_output=True)")


def test_cna_of_two_points_and_its_messages():
    assert measures.cna([1.0, 2.0], [3.0, 5.0]) == pytest.approx(1.0)
    assert measures.cna([1.0, 2.0], [5.0, 3.0]) == pytest.approx(-1.0)
    value, msgs = _messages(measures.cna, [1.0], [2.0])
    assert math.isnan(value) and msgs == ["CNA is NaN: it needs at least 2 samples, got 1"]
    value, msgs = _messages(measures.cna, [1.0, np.nan, np.inf, -np.inf, 2.0],
                            [1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(value) and msgs == ["CNA is NaN: alpha has 3 non-finite value(s)"]
    value, msgs = _messages(measures.cna, [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(value) and msgs == [
        "CNA is NaN: alpha has zero variance: all inputs have the same complexity (e.g. "
        "constant images)"]
    value, msgs = _messages(measures.cna, [1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
    assert math.isnan(value) and msgs == [
        "CNA is NaN: beta has zero variance: all inputs have the same slope (e.g. a dead "
        "network)"]
    with pytest.raises(ValueError) as err:
        measures.cna([1.0, 2.0], [1.0, 2.0, 3.0])
    assert str(err.value) == "cna: alpha and beta must have the same length, got 2 and 3"


# -- curves and CNA-A ---------------------------------------------------------------------------

def test_smooth_is_a_running_mean():
    np.testing.assert_allclose(measures._smooth(np.array([1.0, 2.0, 4.0, 8.0]), 2),
                               [1.5, 3.0, 6.0], rtol=1e-15)


def _curves_by_hand(a_tr, b_tr, a_te, b_te, window=25, points=100):
    sets = []
    for a, b in ((a_tr, b_tr), (a_te, b_te)):
        o = np.argsort(a, kind="stable")
        k = min(window, len(a))
        run = np.ones(k) / k
        sets.append((np.convolve(a[o], run, "valid"), np.convolve(b[o], run, "valid")))
    a_all = np.concatenate([sets[0][0], sets[1][0]])
    b_all = np.concatenate([sets[0][1], sets[1][1]])
    na = [(s[0] - a_all.min()) / (a_all.max() - a_all.min()) for s in sets]
    nb = [(s[1] - b_all.min()) / (b_all.max() - b_all.min()) for s in sets]
    grid = np.linspace(max(na[0][0], na[1][0]), min(na[0][-1], na[1][-1]), points)
    return grid, np.interp(grid, na[0], nb[0]), np.interp(grid, na[1], nb[1])


def test_curves_defaults_are_a_window_of_25_and_100_points():
    rng = np.random.default_rng(5)
    a_tr, a_te = rng.uniform(0, 1, 60), rng.uniform(0, 1, 45)
    b_tr, b_te = 2 * a_tr + rng.normal(0, 0.3, 60), a_te + rng.normal(0, 0.3, 45)
    got = measures.curves(a_tr, b_tr, a_te, b_te)
    want = _curves_by_hand(a_tr, b_tr, a_te, b_te)
    assert len(got[0]) == 100
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_curves_drop_points_with_one_non_finite_coordinate_and_name_the_set():
    rng = np.random.default_rng(6)
    a_tr, a_te = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    b_tr, b_te = rng.normal(size=30), rng.normal(size=30)
    bad_b = b_tr.copy()
    bad_b[4] = np.nan                                   # alpha finite, beta not
    got, msgs = _messages(measures.curves, a_tr, bad_b, a_te, b_te, window=5)
    assert msgs == ["CNA-A: dropping 1 non-finite train point(s)"]
    keep = np.arange(30) != 4
    want = _curves_by_hand(a_tr[keep], b_tr[keep], a_te, b_te, window=5)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    bad_a = a_te.copy()
    bad_a[:29] = np.inf
    got, msgs = _messages(measures.curves, a_tr, b_tr, bad_a, b_te)
    assert got is None and msgs == ["CNA-A: dropping 29 non-finite test point(s)",
                                    "CNA-A is NaN: the test set has 1 usable point(s), need at "
                                    "least 2"]
    with pytest.raises(ValueError) as err:
        measures.curves(a_tr, b_tr[:3], a_te, b_te)
    assert str(err.value) == ("cna_area (train): alpha and beta must have the same length, got "
                              "30 and 3")


# -- margins -------------------------------------------------------------------------------------

def test_margins_shape_and_on_errors():
    for bad, shape in (([0.2, 0.8], (2,)), ([[1.0], [1.0]], (2, 1))):
        with pytest.raises(ValueError) as err:
            measures.margins(bad, [0, 0])
        assert str(err.value) == f"margins expects outputs of shape (n, classes >= 2), got {shape}"
    with pytest.raises(ValueError) as err:
        measures.margins([[0.2, 0.8]], [1], on="probs")
    assert str(err.value) == "on must be 'softmax' or 'logits', got 'probs'"


def test_logit_margins_of_a_zero_probability_use_the_smallest_normal():
    """log p with p clipped to the smallest normal float64: finite, no divide warning."""
    got, msgs = _messages(measures.margins, [[1.0, 0.0], [0.25, 0.75]], [1, 1], on="logits")
    tiny = np.finfo(np.float64).tiny
    np.testing.assert_allclose(got, [math.log(tiny) - 0.0, math.log(0.75) - math.log(0.25)],
                               rtol=1e-15)
    assert msgs == []


def test_label_errors_name_the_fix():
    hint = ("labels must be integer class indices of shape (n,) or one-hot rows of shape "
            "(n, classes) with exactly one 1 per row (what keras.utils.to_categorical gives)")
    with pytest.raises(ValueError) as err:
        measures.class_indices(["cat", "dog"], n=2)
    assert str(err.value) == (f"{hint}; got non-numeric dtype <U3. Map class names to indices "
                              "first (e.g. with np.unique(names, return_inverse=True)).")
    with pytest.raises(ValueError) as err:
        measures.class_indices([[1, 2], [1]], n=2)
    assert str(err.value).startswith(f"{hint}; they could not be read as one array: ")
    assert len(str(err.value)) > len(hint) + 40          # numpy's reason follows


HINT = ("labels must be integer class indices of shape (n,) or one-hot rows of shape "
        "(n, classes) with exactly one 1 per row (what keras.utils.to_categorical gives)")


def _soft_message(shape, i, shown, more, n_bad):
    return (f"labels of shape {shape} must be one-hot rows with exactly one 1 per row and zeros "
            f"elsewhere (what keras.utils.to_categorical gives); row {i} is {shown}{more}, "
            f"{n_bad} row(s) are not one-hot (smoothed or mixed labels?). Pass the hard labels: "
            "integer class indices of shape (n,) or exact one-hot rows (e.g. "
            "labels.argmax(axis=1) of soft labels, if the largest entry is the true class).")


@pytest.mark.parametrize("k", [8, 9, 10])
def test_soft_label_rows_are_shown_up_to_8_values(k):
    y = np.eye(k)[[0, 1, 2, 3, 4]]                      # 5 rows, 2 of them not one-hot
    y[1] = 0.5
    y[3, :2] = [0.25, 0.75]
    y[3, 2:] = 0.0
    with pytest.raises(ValueError) as err:
        measures.class_indices(y, n=5, num_classes=k)
    shown = "[" + ", ".join(["0.5"] * min(k, 8)) + "]"
    assert str(err.value) == _soft_message((5, k), 1, shown, " ..." if k > 8 else "", 2)


def test_other_label_errors_are_exact():
    with pytest.raises(ValueError) as err:
        measures.class_indices(np.eye(3)[[0, 1]], n=2, num_classes=4)
    assert str(err.value) == ("one-hot labels have 3 columns but the model has 4 outputs; pass "
                              "one column per class (keras.utils.to_categorical(y, 4)) or "
                              "integer class indices")
    with pytest.raises(ValueError) as err:
        measures.class_indices([0.5, 1.0, 1.25, np.nan, 2.75, 0.1], n=6)
    assert str(err.value) == (f"{HINT}; got float64 values such as [0.5, 1.25, nan] (soft or "
                              "fractional labels?). Pass the integer class of each point.")
    with pytest.raises(ValueError) as err:
        measures.class_indices([0, 1, 1], n=4)
    assert str(err.value) == ("got 3 labels for 4 samples; pass exactly one label per sample, "
                              "in the samples' order")


def test_bool_float_and_empty_labels_become_int64_indices():
    got = measures.class_indices(np.array([True, False, True]), n=3)
    assert got.dtype == np.int64 and got.tolist() == [1, 0, 1]
    got = measures.class_indices(np.array([2.0, 0.0]), n=2)
    assert got.dtype == np.int64 and got.tolist() == [2, 0]
    got = measures.class_indices(np.zeros(0), n=0)
    assert got.dtype == np.int64 and got.shape == (0,)


# -- alpha's input checks: exact messages, which images are out of range -------------------------

def _alpha_error(images, value_range=None):
    with pytest.raises(ValueError) as err:
        cna_tf.alpha(images, value_range=value_range)
    return str(err.value)


def test_alpha_input_messages_are_exact():
    fix = ("pass value_range=(low, high), the raw pixel values' range, e.g. (0, 255) for uint8 "
           "images, (0, 16) for scikit-learn digits or (0.0, 1.0) for images scaled to [0, 1]")
    assert _alpha_error(np.zeros((2, 3), np.float32)) == (
        "alpha needs the value range of float32 images: pass value_range=(low, high), e.g. "
        "(0, 16) for scikit-learn digits or (0.0, 1.0) for images scaled to [0, 1]. Only uint8 "
        "images default to (0, 255).")
    assert _alpha_error(np.zeros((2, 3), np.float32), "ab") == (
        f"value_range must be a pair of numbers (low, high), got 'ab'; {fix}")
    msg = _alpha_error([np.zeros((2, 2)), np.zeros((3, 3))])
    assert msg.startswith("alpha expects one numeric array of images with shape (n, ...), all "
                          "of one shape; the images could not be stacked into one (")
    assert msg.endswith("). Resize or crop them to one shape, or call alpha on each group of "
                        "equally shaped images.")
    assert _alpha_error(np.zeros(3, np.uint8)) == (
        "alpha expects a batch of images with shape (n, ...), got shape (3,); wrap a single "
        "image as images[None].")
    assert _alpha_error(np.zeros((2, 0), np.uint8)) == (
        "alpha got images without pixels (shape (2, 0)); each image needs at least one value")
    for bad in (np.nan, np.inf):
        x = np.full((3, 4), 5.0)
        x[1, 2] = bad
        assert _alpha_error(x, (0, 10)) == ("image 1 has NaN or inf pixel values; alpha needs "
                                            "finite pixels")


def test_out_of_range_pixels_name_the_images():
    """Only images with a pixel strictly outside [low, high] count: pixels on low or high are
    inside."""
    x = np.array([[0.0, 5.0, 10.0], [4.0, 11.0, 5.0], [5.0, 5.0, 5.0], [-1.0, 3.0, 3.0]])
    assert _alpha_error(x, (0, 10)) == (
        "pixel values lie outside the declared value_range (0, 10): found min -1, max 11 in 2 "
        "image(s), first index 1. Pass the range of the raw (un-normalized) images, or compute "
        "alpha before preprocessing.")
    assert _alpha_error(x[[0, 2, 1]], (0, 10)).endswith(
        "found min 0, max 11 in 1 image(s), first index 2. Pass the range of the raw "
        "(un-normalized) images, or compute alpha before preprocessing.")
    signed = np.array([[3, 100], [-5, 2]], np.int8)     # int8 can hold values below 0
    assert _alpha_error(signed, (0, 200)).startswith(
        "pixel values lie outside the declared value_range (0, 200): found min -5, max 100 in 1 "
        "image(s), first index 1.")


def test_bool_images_keep_a_given_range():
    x = np.array([[True, False, True, True]])
    assert cna_tf.complexity.check_images(x) == (0.0, 1.0)
    assert cna_tf.complexity.check_images(x, (0, 2)) == (0.0, 2.0)


def test_alpha_of_images_above_4_mib_pixels_uses_scipy_per_image():
    """Above 2^22 pixels per image the entropy is scipy's, per image (two images of different
    entropy, one below 1 nat)."""
    side = 2049                                        # 2049^2 = 4,198,401 > 2^22 pixels
    x = np.zeros((2, side * side), np.uint8)
    x[0, : side * side // 10] = 255                    # 10 % white: entropy ~0.33 nats
    x[1] = np.arange(side * side) % 200                # 200 values, near uniform
    got = cna_tf.alpha(x)
    want = [entropy(np.bincount(np.minimum(img.astype(np.int64) * 100 // 255, 99),
                                minlength=100)) for img in x]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] < 1.0 < got[1]


# -- curves and CNA-A: ties, float32 input, degenerate ranges, defaults --------------------------

def test_curves_sort_ties_stably_and_compute_in_float64():
    """40 points on 5 alpha values: the running mean of beta depends on the order of equal
    alphas, which is their input order (a stable sort); float32 inputs are computed in
    float64."""
    rng = np.random.default_rng(8)
    a_tr = rng.integers(0, 5, 40).astype(np.float32)
    a_te = rng.integers(0, 5, 40).astype(np.float32)
    b_tr, b_te = rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    got = measures.curves(a_tr, b_tr, a_te, b_te, window=3)
    want = _curves_by_hand(*(v.astype(np.float64) for v in (a_tr, b_tr, a_te, b_te)), window=3)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13)
    a64, b64 = a_tr.astype(np.float64) + rng.normal(0, 0.1, 40), b_tr.astype(np.float64)
    assert measures.cna(a64.astype(np.float32), b_tr) == pytest.approx(
        np.corrcoef(a64.astype(np.float32).astype(np.float64), b64)[0, 1], rel=1e-13)


def test_curves_degenerate_ranges():
    value, msgs = _messages(measures.curves, [1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [2.0, 3.0])
    assert value is None and msgs == ["CNA-A is NaN: alpha has zero range over train and test"]
    value, msgs = _messages(measures.curves, [0.0, 1.0], [0.0, 1.0], [1.0, 2.0], [0.0, 1.0],
                            window=1)
    assert value is None and msgs == ["CNA-A is NaN: the train and test alpha ranges do not "
                                      "overlap"]
    (grid, b_tr, b_te), msgs = _messages(measures.curves, [0.0, 1.0, 2.0], [5.0] * 3,
                                         [0.5, 1.5], [5.0] * 2, window=1, points=4)
    assert msgs == [] and b_tr.tolist() == [0.0] * 4 and b_te.tolist() == [0.0] * 4
    np.testing.assert_allclose(grid, np.linspace(0.25, 0.75, 4), rtol=1e-15)


def _area(c):
    from shapely import make_valid
    from shapely.geometry import Polygon
    grid, b_tr, b_te = c
    ring = np.concatenate([np.column_stack([grid, b_tr]), np.column_stack([grid, b_te])[::-1]])
    return make_valid(Polygon(ring)).area


def test_cna_area_defaults_and_points():
    rng = np.random.default_rng(9)
    a_tr, a_te = rng.uniform(0, 1, 60), rng.uniform(0, 1, 50)
    b_tr, b_te = 2 * a_tr + rng.normal(0, 0.3, 60), a_te + rng.normal(0, 0.3, 50)
    want = _area(_curves_by_hand(a_tr, b_tr, a_te, b_te, window=25, points=100))
    assert measures.cna_area(a_tr, b_tr, a_te, b_te) == pytest.approx(want, rel=1e-12)
    want7 = _area(_curves_by_hand(a_tr, b_tr, a_te, b_te, window=4, points=7))
    assert measures.cna_area(a_tr, b_tr, a_te, b_te, window=4, points=7) == pytest.approx(
        want7, rel=1e-12)


# -- probabilities ---------------------------------------------------------------------------------

def test_probabilities_decide_and_compute_in_float64():
    p, was = measures.probabilities(np.array([[0, 1], [1, 0]]))
    assert was is False and p.dtype == np.float64 and p.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    p, was = measures.probabilities([[0.4, 0.6004]])          # sums to 1 within 1e-3
    assert was is False and p.tolist() == [[0.4, 0.6004]]
    for logits in ([[2.0, 3.0]], [[0.5, 1.0]]):               # non-negative, sums 5 and 1.5
        p, was = measures.probabilities(logits)
        z = np.exp(np.array(logits[0]) - max(logits[0]))
        assert was is True
        np.testing.assert_allclose(p[0], z / z.sum(), rtol=1e-15)
    logits = np.array([[1000.0, 999.0], [0.0, -1.0]], np.float32)   # far apart rows
    p, was = measures.probabilities(logits)
    s = 1.0 / (1.0 + math.exp(-1.0))
    assert was is True and p.dtype == np.float64
    np.testing.assert_allclose(p, [[s, 1 - s], [s, 1 - s]], rtol=1e-15)


# -- which path alpha takes (same numbers, different cost): checked with spies -------------------

class _Pool:
    """Stands in for ThreadPoolExecutor: records the worker count, runs the work in order."""

    made = []

    def __init__(self, workers):
        _Pool.made.append(workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return [fn(i) for i in items]


@pytest.mark.parametrize("cpus,n_rows,step,workers", [
    (4, 10, 3, 4), (2, 10, 2, 2), (16, 100, 10, 8), (16, 200, 10, 8), (4, 4, 2, 2),
    (None, 10, 2, None), (1, 10, 2, None), (4, 3, 5, None)])
def test_run_chunks_covers_each_row_once_with_min_of_cpus_8_and_chunks_threads(
        monkeypatch, cpus, n_rows, step, workers):
    from cna_tf import complexity
    monkeypatch.setattr(complexity.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(complexity, "ThreadPoolExecutor", _Pool)
    _Pool.made = []
    calls = []
    complexity._run_chunks(lambda s, e: calls.append((s, e)), n_rows, step)
    assert calls == [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]
    assert _Pool.made == ([] if workers is None else [workers])


def _spy(monkeypatch, module, name, seen=None):
    """Records the calls of ``module.name`` (by name) in ``seen``, which it returns."""
    seen = [] if seen is None else seen
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(name)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.parametrize("dtype,lo,hi,path", [
    (np.uint8, 0, 255, "_integer_bin_counts"), (np.int32, 0, 65536, "_integer_bin_counts"),
    (np.int32, 0, 65537, "_float_bin_counts"), (np.int32, -100, 65500, "_float_bin_counts"),
    (np.int32, -100, 65436, "_integer_bin_counts"), (np.float32, 0, 255, "_float_bin_counts")])
def test_integer_images_with_a_span_up_to_2_16_are_binned_exactly(monkeypatch, dtype, lo, hi,
                                                                   path):
    from cna_tf import complexity
    seen = _spy(monkeypatch, complexity, "_integer_bin_counts")
    _spy(monkeypatch, complexity, "_float_bin_counts", seen)
    x = np.array([[lo, hi, lo, lo], [hi, hi, lo, hi]], dtype=dtype)
    got = cna_tf.alpha(x, value_range=None if dtype == np.uint8 else (lo, hi))
    assert seen == [path] and got.tolist() == pytest.approx([entropy([3, 1]), entropy([1, 3])])


@pytest.mark.parametrize("pixels,uses_scipy", [(1 << 22, False), ((1 << 22) + 1, True)])
def test_entropy_table_up_to_2_22_pixels_then_scipy(monkeypatch, pixels, uses_scipy):
    from cna_tf import complexity
    seen = _spy(monkeypatch, complexity, "entropy")
    x = np.zeros((1, pixels), np.uint8)
    x[0, ::4] = 255
    n_white = len(range(0, pixels, 4))
    got = cna_tf.alpha(x)
    assert (seen == ["entropy"]) is uses_scipy
    assert got[0] == pytest.approx(entropy([pixels - n_white, n_white]), rel=1e-12)
