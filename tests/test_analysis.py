"""cna_tf.analysis: the numbers behind Fig. 1, 5 and 6, against independent computations.

The landscape over a trained model (`cna_landscape`, `set_flat_weights`) is tested in
test_plots.py, beside the callback records it is computed from.
"""
import math

import numpy as np
import pytest
from scipy import optimize, stats

from cna_tf import analysis


def test_pick_extremes_ignores_nonfinite_alpha():
    alpha = np.array([2.0, np.nan, 0.5, 3.0, 0.5, -np.inf])
    sums = np.arange(18, dtype=float).reshape(6, 3)
    images = np.arange(6 * 4).reshape(6, 2, 2)
    p = analysis.pick_extremes(alpha, sums, images=images)
    assert (p["index_low"], p["index_high"]) == (2, 3)  # first of the tied minima
    assert p["alpha_low"] == 0.5 and p["alpha_high"] == 3.0
    np.testing.assert_array_equal(p["layer_sums_low"], sums[2])
    np.testing.assert_array_equal(p["image_high"], images[3])
    with pytest.raises(ValueError, match="shape"):
        analysis.pick_extremes(alpha, sums[:3])


def _wilson_by_root_finding(k, n, z):
    """Wilson bounds as the solutions p of |k/n - p| = z sqrt(p (1 - p) / n)."""
    ph = k / n
    f = lambda p: (ph - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731
    return optimize.brentq(f, 0.0, ph), optimize.brentq(f, ph, 1.0)


def test_wilson_interval_matches_its_definition():
    z = stats.norm.ppf(0.975)
    for k, n in ((1, 10), (7, 40), (50, 100), (99, 100)):
        lo, hi = analysis.wilson_interval(k, n)
        ref = _wilson_by_root_finding(k, n, z)
        assert (float(lo), float(hi)) == pytest.approx(ref, abs=1e-10)
    lo, hi = analysis.wilson_interval(0, 20)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(z * z / (20 + z * z))
    lo, hi = analysis.wilson_interval(3, 0)
    assert math.isnan(float(lo)) and math.isnan(float(hi))
    lo90, hi90 = analysis.wilson_interval(7, 40, confidence=0.90)
    lo95, hi95 = analysis.wilson_interval(7, 40)
    assert lo95 < lo90 < 7 / 40 < hi90 < hi95
    # elementwise over arrays, NaN where n = 0
    lo, hi = analysis.wilson_interval([1, 7, 3], [10, 40, 0])
    assert lo.shape == hi.shape == (3,) and math.isnan(lo[2]) and math.isnan(hi[2])
    assert lo[1] == pytest.approx(_wilson_by_root_finding(7, 40, z)[0], abs=1e-10)


def test_quintile_errors_against_an_independent_computation(rng):
    n = 500
    alpha = rng.normal(size=n)
    alpha[:3] = np.nan  # left out
    correct = rng.random(n) > 0.3 + 0.1 * np.nan_to_num(alpha)
    q = analysis.quintile_errors(alpha, correct)
    finite = np.isfinite(alpha)
    a, c = alpha[finite], correct[finite]
    cuts = np.sort(a)[[99, 199, 298, 397]]  # group sizes 100, 100, 99, 99, 99 (497 points)
    group = np.searchsorted(cuts, a, side="left")  # a distinct alpha: exact rank groups
    z = stats.norm.ppf(0.975)
    np.testing.assert_array_equal(q["n"], [100, 100, 99, 99, 99])
    np.testing.assert_array_equal(q["quintile"], [1, 2, 3, 4, 5])
    for k in range(5):
        wrong = ~c[group == k]
        assert q["n"][k] == wrong.size
        assert q["errors"][k] == wrong.sum()
        assert q["error"][k] == pytest.approx(wrong.mean())
        ref = _wilson_by_root_finding(wrong.sum(), wrong.size, z)
        assert (q["low"][k], q["high"][k]) == pytest.approx(ref, abs=1e-10)
        assert q["alpha_min"][k] == a[group == k].min()
        assert q["alpha_max"][k] == a[group == k].max()
    assert np.all(np.diff(q["alpha_mean"]) > 0)
    rows = analysis.quintile_error_table(alpha, {3: correct, 1: ~correct})
    assert [(r["epoch"], r["quintile"]) for r in rows][:6] == [(1, 1), (1, 2), (1, 3), (1, 4),
                                                               (1, 5), (3, 1)]
    assert rows[5]["error"] == pytest.approx(q["error"][0])
    with pytest.raises(ValueError, match="correct"):
        analysis.quintile_errors(alpha, correct[:10])


def test_trajectory_pca_recovers_a_plane(rng):
    p = 50
    basis, _ = np.linalg.qr(rng.normal(size=(p, 2)))
    origin = rng.normal(size=p)
    t = np.linspace(0, 1, 6)
    coords = np.column_stack([4 * t, np.sin(3 * t)])
    traj = {int(e): origin + coords[e] @ basis.T for e in range(6)}
    pca = analysis.trajectory_pca(traj)
    np.testing.assert_array_equal(pca["epochs"], np.arange(6))
    comp = pca["components"]
    np.testing.assert_allclose(comp @ comp.T, np.eye(2), atol=1e-12)
    back = pca["mean"] + pca["coords"] @ comp
    np.testing.assert_allclose(back, np.stack([traj[e] for e in range(6)]), atol=1e-10)
    assert pca["coords"][-1, 0] > pca["coords"][0, 0]  # training runs left to right
    assert pca["explained_variance_ratio"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        analysis.trajectory_pca({0: origin})
