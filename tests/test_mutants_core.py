"""Tests written to kill the mutants of `make mutate` that survived the suite (docs/testing.md).

Each test names the behaviour a surviving mutant changed; the mutants these kill are listed in
docs/testing.md. Pure numpy: fast enough to run against every mutant.
"""
import math
import warnings

import numpy as np
import pytest

from cna_tf import ranking


@pytest.fixture
def strict_warnings():
    """Any warning is an error: undefined cases must return NaN quietly (no scipy
    ConstantInputWarning, no numpy 'Mean of empty slice' or divide-by-zero)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- pearson / kendall: when the correlation is undefined ----------------------------------------

@pytest.mark.parametrize("fn", [ranking.pearson, ranking.kendall])
def test_undefined_correlations_are_nan_without_a_warning(fn, strict_warnings):
    assert math.isnan(fn([], []))                              # nothing: no np.ptp of nothing
    assert math.isnan(fn([math.nan, 1.0], [1.0, math.nan]))    # no finite pair left
    assert math.isnan(fn([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))    # x constant, y varies
    assert math.isnan(fn([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))    # y constant, x varies
    assert fn([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(
        0.5 if fn is ranking.pearson else 1 / 3)


@pytest.mark.parametrize("fn", [ranking.pearson, ranking.kendall])
def test_none_values_count_as_missing(fn):
    # None becomes NaN (float64), and the pair is left out
    assert fn([1.0, None, 2.0, 3.0], [1.0, 5.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert fn([1.0, 5.0, 2.0, 3.0], [1.0, None, 2.0, 3.0]) == pytest.approx(1.0)


# -- granulated Kendall ---------------------------------------------------------------------------

def test_granulated_kendall_groups_nan_axis_values_together():
    # lr is NaN (never logged) for every instance, each a distinct float object: one value,
    # so lr does not vary and the seeds form one group
    rows = [{"lr": float("nan"), "seed": s, "m": float(s), "t": float(s)} for s in range(4)]
    got = ranking.granulated_kendall(rows, "m", "t", ["lr", "seed"])
    assert set(got) == {"psi.seed", "granulated_kendall"}
    assert got["psi.seed"] == pytest.approx(1.0)


def test_granulated_kendall_with_no_defined_group_is_nan_quietly(strict_warnings):
    rows = [{"w": w, "m": 1.0, "t": float(w)} for w in range(3)]    # metric constant
    got = ranking.granulated_kendall(rows, "m", "t", ["w"])
    assert math.isnan(got["psi.w"]) and math.isnan(got["granulated_kendall"])


def test_correlate_row_keys():
    rows = [{"arch": "mlp", "w": w, "m": float(w), "t": float(w)} for w in range(3)]
    out = ranking.correlate(rows, ["m"], ["t"], ["w"], group_by=())
    assert len(out) == 1
    assert set(out[0]) == {"scope", "metric", "target", "n", "pearson", "kendall",
                           "granulated_kendall", "psi.w"}
    assert (out[0]["scope"], out[0]["metric"], out[0]["target"]) == (ranking.ALL_NETS, "m", "t")


# -- conditional mutual information and its grid check -------------------------------------------

def _grid3():
    """A complete 2x2x2 grid: c first, a, b."""
    hp = {"c": [], "a": [], "b": []}
    for c in (0, 1):
        for a in (0, 1):
            for b in (0, 1):
                hp["c"].append(c)
                hp["a"].append(a)
                hp["b"].append(b)
    return hp


def test_cmi_skips_a_pair_without_gap_entropy_and_goes_on(strict_warnings):
    hp = _grid3()
    gap = [10.0 * c + a for c, a in zip(hp["c"], hp["a"])]   # b does not matter
    # the first pair (c, a) fixes the gap sign in every bin (mean entropy 0): it is left out and
    # the loop goes on to (c, b), (a, b), ... where a or c varies inside the bins (score 1)
    assert ranking.conditional_mutual_information(gap, gap, hp) == pytest.approx(1.0)


def test_cmi_of_two_hyperparameters_is_nan_without_error(strict_warnings):
    # with two axes each bin holds one ordered pair: no gap entropy anywhere -> NaN, not min([])
    hp = {"a": [0, 0, 1, 1, 2, 2], "b": [0, 1, 0, 1, 0, 1]}
    assert math.isnan(ranking.conditional_mutual_information([1, 2, 3, 4, 5, 6],
                                                             [1, 3, 2, 4, 6, 5], hp))


def test_cmi_none_measure_is_nan():
    hp = _grid3()
    measure = [None] + [float(i) for i in range(7)]
    assert math.isnan(ranking.conditional_mutual_information(measure, list(range(8)), hp))
    assert math.isnan(ranking.conditional_mutual_information(list(range(8)), measure, hp))


def test_cmi_mixed_type_hyperparameter_values(strict_warnings):
    hp = _grid3()
    hp["a"] = ["relu" if a else 0 for a in hp["a"]]          # values of two types
    assert ranking.conditional_mutual_information(list(range(8)), list(range(8)), hp) == \
        pytest.approx(1.0)
    codes = ranking.grid_codes(hp, 8)
    assert codes["a"][1] == 2 and codes["a"][0].dtype == np.int64


def test_grid_codes_of_nothing():
    assert ranking.grid_codes({}, 0) == {}


def test_cmi_error_messages():
    hp = _grid3()
    with pytest.raises(ValueError, match=r"^measure has 3 values and gap 8; give one of each per "
                                         r"network, in the same order$"):
        ranking.conditional_mutual_information([1, 2, 3], list(range(8)), hp)
    dup = {"a": [0, 0, 1, 1], "b": [0, 0, 1, 0]}
    with pytest.raises(ValueError, match=(
            r"^networks 0 and 1 have the same hyperparameters \{'a': 0, 'b': 0\}: conditional "
            r"mutual information needs a complete grid with each combination exactly once \(one "
            r"network per combination, e.g. its final snapshot; add the axis that tells them "
            r"apart, such as seed\)$")):
        ranking.grid_codes(dup, 4)
    gap = {"a": [0, 0, 1], "b": ["x", "y", "x"]}
    with pytest.raises(ValueError, match=(
            r"^3 networks do not form a complete grid over \['a', 'b'\] \(4 combinations\); "
            r"missing e.g. \{'a': 1, 'b': 'y'\}. Conditional mutual information needs every "
            r"combination of the varied hyperparameters exactly once$")):
        ranking.grid_codes(gap, 3)


# -- alpha on float images: numpy.histogram's edge rules, several chunks ---------------------------

def _hist_alpha(img, bins, lo, hi):
    c, _ = np.histogram((np.asarray(img, np.float64).ravel() - lo) / (hi - lo), bins=bins,
                        range=(0.0, 1.0))
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("bins", [3, 7, 10, 100])
def test_float_alpha_bins_values_on_and_next_to_every_edge_as_numpy_histogram(bins):
    from cna_tf import alpha

    edges = np.linspace(0.0, 1.0, bins + 1)
    imgs = []
    for e in edges:   # the edge, the float below it and the float above it (inside [0, 1])
        imgs.append([e, max(np.nextafter(e, -1.0), 0.0), min(np.nextafter(e, 2.0), 1.0)])
        imgs.append([e, e, max(np.nextafter(e, -1.0), 0.0)])
    x = np.array(imgs)                                  # exact values on the range (0, 1)
    want = [_hist_alpha(img, bins, 0.0, 1.0) for img in x]
    got = alpha(x, bins=bins, value_range=(0.0, 1.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    y = x * 4.0 - 2.0                                   # and on another range
    np.testing.assert_allclose(alpha(y, bins=bins, value_range=(-2.0, 2.0)),
                               [_hist_alpha(img, bins, -2.0, 2.0) for img in y], rtol=0, atol=1e-12)


def test_float_alpha_over_several_chunks_equals_numpy_histogram():
    from cna_tf import alpha

    rng = np.random.default_rng(0)
    x = rng.random((700, 1000)) * 10.0                  # 7e5 pixels: three chunks of 2**18
    x[:, :5] = np.array([0.0, 10.0, 2.5, 5.0, 7.5])     # edges in every image
    got = alpha(x, bins=40, value_range=(0.0, 10.0))
    for i in (0, 261, 262, 263, 524, 525, 699):         # rows around the chunk boundaries
        assert got[i] == pytest.approx(_hist_alpha(x[i], 40, 0.0, 10.0), abs=1e-12)


# -- compression_alpha of non-uint8 images --------------------------------------------------------

def test_compression_alpha_of_float_images_scales_by_the_range_first():
    import zlib

    from cna_tf import compression_alpha

    rng = np.random.default_rng(1)
    x = rng.uniform(-3.0, 5.0, (4, 6, 6))
    x[0] = -3.0                                         # a constant image compresses well
    as_u8 = np.rint((x - (-3.0)) * (255.0 / 8.0)).astype(np.uint8)
    want = [len(zlib.compress(img.tobytes(), 9)) / img.size for img in as_u8]
    got = compression_alpha(x, value_range=(-3.0, 5.0))
    assert got.dtype == np.float64 and got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    np.testing.assert_allclose(compression_alpha(as_u8), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="value range of float64 images"):
        compression_alpha(x)
    # 0.01565 above the low end is 0.499 of a grey level at 255/8 per unit: rounds to 0, so this
    # two-valued image is one constant byte (a scale of 256/8 would make it two bytes)
    two = np.where(rng.random((1, 64)) < 0.5, -3.0, -3.0 + 0.01565)
    const = np.full((1, 64), -3.0)
    assert compression_alpha(two, value_range=(-3.0, 5.0))[0] == \
        compression_alpha(const, value_range=(-3.0, 5.0))[0]


# -- measures: margin's percentile and options ----------------------------------------------------

def test_margin_percentile_bounds_and_options():
    from cna_tf import measures

    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [1.0, 1.5, 0.0], [0.2, 0.1, 0.0]])
    y = np.array([0, 2, 0, 1])
    m = measures.margins(logits, y)
    assert measures.margin(logits, y, percentile=100) == pytest.approx(m.max())
    assert measures.margin(logits, y, percentile=0) == pytest.approx(m.min())
    with pytest.raises(ValueError, match="percentile"):
        measures.margin(logits, y, percentile=100.5)
    on_logits = measures.margins(logits, y, on="logits")
    assert measures.margin(logits, y, percentile=50, on="logits") == pytest.approx(
        np.percentile(on_logits, 50))
    # probabilities-looking rows read as logits only when told so
    rows = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    yy = np.array([0, 1])
    assert measures.margin(rows, yy, percentile=0, from_logits=True) == pytest.approx(
        measures.margins(rows, yy, from_logits=True).min())
    assert measures.margin(rows, yy, percentile=0, from_logits=True) != pytest.approx(
        measures.margin(rows, yy, percentile=0))

