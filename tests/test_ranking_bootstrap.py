"""Seed bootstrap of a ranking's scores (SPEC §9, issue 26 items 1 and 6): the replicates are
complete grids, the vectorized statistics equal scipy's and the module's own functions on every
replicate, every point the mean of its replicates (SPEC §9 amended, issue 36), coverage under independence, paired fractions, pool mode,
determinism and bad input."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from cna_tf.ranking import seed_bootstrap
from cna_tf.ranking import (STATISTICS, BootstrapResult, bootstrap, conditional_mutual_information,
                            granulated_kendall, grid_codes, kendall, pearson, replicate_indices)


def _grid(**axes):
    """Every combination of the axes' values once: {name: per-network values}."""
    combos = list(itertools.product(*axes.values()))
    return {name: [c[i] for c in combos] for i, name in enumerate(axes)}


def _instances(hp, idx, x, y):
    """Network instances (for granulated_kendall) of the networks ``idx``."""
    return [dict({a: hp[a][i] for a in hp}, m=x[i], g=y[i]) for i in idx]


def _same(a, b, tol=1e-12):
    """Equal within ``tol``, NaN equal to NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= tol)))


@pytest.fixture(scope="module")
def seeded():
    """A 3x2x2 grid x 3 seeds (36 networks); an unbalanced seed axis would also do (below)."""
    rng = np.random.default_rng(7)
    hp = _grid(depth=[1, 2, 3], width=[8, 16], lr=[0.1, 0.01], seed=[0, 1, 2])
    n = len(hp["seed"])
    gap = np.array(hp["depth"]) * 0.5 + rng.normal(size=n)
    measures = {"gap": gap.copy(),
                "close": gap + rng.normal(scale=0.1, size=n),
                "noise": rng.normal(size=n),
                "noise2": rng.normal(size=n),
                "ties": np.round(gap + rng.normal(scale=0.5, size=n)),   # many ties
                "holes": gap + rng.normal(scale=0.3, size=n)}
    measures["holes"][[4, 17]] = [np.nan, np.inf]
    res = bootstrap(measures, gap, hp, replicates=300, seed=3)
    return hp, gap, measures, res


# -- replicates ---------------------------------------------------------------------------------

def test_every_replicate_is_a_complete_grid_with_one_network_per_combination():
    # unbalanced: some combinations have 3 seeds, some 1 or 2, and seed labels differ per cell
    hp = _grid(a=[0, 1, 2], b=["x", "y"], c=[0.5, 1.5])
    rng = np.random.default_rng(0)
    rows = []
    for k in range(len(hp["a"])):
        for s in rng.choice(10, size=1 + k % 3, replace=False):
            rows.append({"a": hp["a"][k], "b": hp["b"][k], "c": hp["c"][k], "seed": int(s)})
    full = {h: [r[h] for r in rows] for h in ("a", "b", "c", "seed")}
    idx = replicate_indices(full, len(rows), replicates=500, seed=1)
    assert idx.shape == (500, 12)
    for row in idx:
        grid_codes({h: [full[h][i] for i in row] for h in ("a", "b", "c")}, 12)  # no ValueError
    # column j always holds networks of one combination, and each of its networks is drawn
    for j in range(12):
        combos = {(full["a"][i], full["b"][i], full["c"][i]) for i in idx[:, j]}
        assert len(combos) == 1
        combo = combos.pop()
        members = [i for i, r in enumerate(rows) if (r["a"], r["b"], r["c"]) == combo]
        counts = np.bincount(idx[:, j], minlength=len(rows))[members]
        assert counts.sum() == 500 and counts.min() > 500 / len(members) * 0.7


def test_replicate_indices_are_those_of_bootstrap(seeded):
    hp, gap, measures, res = seeded
    idx = replicate_indices(hp, len(gap), replicates=300, seed=3)
    x = measures["noise"]
    for r in (0, 99, 299):
        assert res.samples["noise"]["kendall"][r] == pytest.approx(
            kendall(x[idx[r]], gap[idx[r]]), abs=1e-12)


def test_pool_replicates_draw_n_of_n_with_replacement():
    idx = replicate_indices({"a": [0, 1, 2, 3]}, 4, replicates=400, seed=0)
    assert idx.shape == (400, 4) and idx.min() == 0 and idx.max() == 3
    assert any(len(set(r)) < 4 for r in idx)          # repeats happen


# -- the vectorized statistics equal the module's functions and scipy ---------------------------

def test_every_point_is_the_mean_of_its_replicates_not_the_value_on_all_networks(seeded):
    hp, gap, measures, res = seeded
    axes = ["depth", "width", "lr"]
    for name, x in measures.items():
        p = {s: res[name][s][0] for s in STATISTICS}
        # every statistic is defined on one network per combination in a replicate: its point
        # is the mean over the replicates (SPEC §9), never its value on the 36 networks
        for stat in STATISTICS:
            s = res.samples[name][stat]
            assert _same(p[stat], np.nanmean(s) if np.isfinite(s).any() else math.nan, 1e-12)
            low, high = res[name][stat][1:]
            assert math.isnan(p[stat]) or low - 1e-12 <= p[stat] <= high + 1e-12
        if name == "noise":   # the value on all networks is not what the point reports
            pooled = granulated_kendall(_instances(hp, range(len(gap)), x, gap), "m", "g", axes)
            assert not _same(p["granulated_kendall"], pooled["granulated_kendall"], 1e-6)
            assert not _same(p["pearson"], pearson(x, gap), 1e-6)
            assert not _same(p["kendall"], kendall(x, gap), 1e-6)


def test_replicates_equal_scipy_and_the_module_functions(seeded):
    hp, gap, measures, res = seeded
    idx = replicate_indices(hp, len(gap), replicates=300, seed=3)
    axes = ["depth", "width", "lr"]
    for name, x in measures.items():
        for r in range(0, 300, 23):
            i = idx[r]
            xs, ys = x[i], gap[i]
            ok = np.isfinite(xs) & np.isfinite(ys)
            s = {k: res.samples[name][k][r] for k in STATISTICS}
            assert _same(s["kendall"], stats.kendalltau(xs[ok], ys[ok])[0])
            assert _same(s["pearson"], stats.pearsonr(xs[ok], ys[ok])[0])
            psi = granulated_kendall(_instances(hp, i, x, gap), "m", "g", axes)
            assert _same(s["granulated_kendall"], psi["granulated_kendall"])
            cmi = conditional_mutual_information(xs, ys, {a: [hp[a][k] for k in i] for a in axes})
            assert _same(s["cmi"], cmi)
    # CMI is NaN in the replicates that draw network 4 (NaN); inf (network 17) is an order
    drew_nan = (idx == 4).any(axis=1)
    assert drew_nan.any() and not drew_nan.all()
    assert (np.isnan(res.samples["holes"]["cmi"]) == drew_nan).all()
    assert "cmi of 'holes' is undefined" in " ".join(res.notes)
    assert f"in {drew_nan.sum()} of 300 replicates" in " ".join(res.notes)


def test_kendall_with_ties_and_repeats_equals_scipy_in_pool_mode():
    rng = np.random.default_rng(5)
    n = 30
    gap = rng.integers(0, 4, size=n).astype(float)          # heavy ties on both sides
    x = rng.integers(0, 3, size=n).astype(float)
    hp = {"a": list(range(n))}
    res = bootstrap({"x": x}, gap, hp, replicates=200, seed=11)
    idx = replicate_indices(hp, n, replicates=200, seed=11)
    for r in range(200):                                     # a resample repeats networks
        assert _same(res.samples["x"]["kendall"][r], stats.kendalltau(x[idx[r]], gap[idx[r]])[0])
        assert _same(res.samples["x"]["pearson"][r], stats.pearsonr(x[idx[r]], gap[idx[r]])[0])


def test_pool_mode_granulated_kendall_equals_the_function_on_each_resample():
    rng = np.random.default_rng(9)
    hp = _grid(a=[0, 1, 2], b=[0, 1], c=[0, 1, 2, 3])
    n = len(hp["a"])
    gap, x = rng.normal(size=n), np.round(rng.normal(size=n), 1)
    res = bootstrap({"x": x}, gap, hp, replicates=60, seed=2)
    idx = replicate_indices(hp, n, replicates=60, seed=2)
    for r in range(60):
        psi = granulated_kendall(_instances(hp, idx[r], x, gap), "m", "g", ["a", "b", "c"])
        assert _same(res.samples["x"]["granulated_kendall"][r], psi["granulated_kendall"])


def test_chunked_and_unchunked_replicates_agree(seeded, monkeypatch):
    hp, gap, measures, res = seeded
    monkeypatch.setattr(seed_bootstrap, "_CHUNK_ELEMENTS", 7000)    # chunks of a few replicates
    small = bootstrap(measures, gap, hp, replicates=300, seed=3)
    for name in measures:
        for s in STATISTICS:
            assert _same(small.samples[name][s], res.samples[name][s])


# -- what the intervals say -----------------------------------------------------------------------

def test_the_gap_itself_gets_kendall_one_and_the_top_cmi(seeded):
    hp, gap, measures, res = seeded
    assert isinstance(res, BootstrapResult) and res.mode == "seed" and res.replicate_axis == "seed"
    assert res.size == 12 and res.axes == ["depth", "width", "lr"] and res.cmi_note == ""
    for s in ("pearson", "kendall", "granulated_kendall"):
        assert res["gap"][s] == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
    cmi = {k: res[k]["cmi"] for k in ("gap", "noise", "noise2")}
    assert cmi["gap"] == pytest.approx((1.0, 1.0, 1.0), abs=1e-9)
    assert cmi["gap"][1] > max(cmi["noise"][2], cmi["noise2"][2])
    assert res.paired["cmi"][("gap", "noise")] == 1.0
    for name in measures:
        p, lo, hi = res[name]["kendall"]
        assert lo <= hi and list(res[name]) == list(STATISTICS)


def test_paired_fraction_ranks_gap_plus_small_noise_above_noise(seeded):
    hp, gap, measures, res = seeded
    for s in ("cmi", "kendall"):
        assert res.paired[s][("close", "noise")] > 0.95
        assert res.paired[s][("close", "noise")] + res.paired[s][("noise", "close")] \
            == pytest.approx(1.0)
    a, b = res.samples["close"]["kendall"], res.samples["noise"]["kendall"]
    assert res.paired["kendall"][("close", "noise")] == pytest.approx(
        np.mean((a > b) + 0.5 * (a == b)))
    assert math.isnan(bootstrap({"x": [1.0, 1, 2, 2], "y": [1.0, 2, 3, 4]}, [1.0, 1, 1, 1],
                                {"seed": [0, 1, 0, 1]}, replicates=5).paired["kendall"][("x", "y")])
    assert set(res.paired) == set(STATISTICS)
    assert ("gap", "gap") not in res.paired["kendall"]


def test_ties_count_half_in_the_paired_fraction():
    hp = _grid(a=[0, 1, 2], b=[0, 1], seed=[0, 1])
    gap = np.arange(12.0)
    res = bootstrap({"x": gap, "y": 2 * gap}, gap, hp, replicates=20)
    assert res.paired["kendall"][("x", "y")] == 0.5 == res.paired["kendall"][("y", "x")]


def test_interval_covers_zero_under_independence_in_about_95_percent_of_trials():
    """200 simulated 4x4 grids x 2 seeds, measure and gap independent noise: the 95 %
    intervals of Pearson, Kendall and Psi cover the true 0 in 90-99 % of the trials."""
    hp = _grid(a=range(4), b=range(4), seed=range(2))
    n = len(hp["a"])
    rng = np.random.default_rng(123)
    covered = dict.fromkeys(("pearson", "kendall", "granulated_kendall"), 0)
    for trial in range(200):
        res = bootstrap({"m": rng.normal(size=n)}, rng.normal(size=n), hp, replicates=200,
                        seed=trial)
        for s in covered:
            covered[s] += res["m"][s][1] <= 0.0 <= res["m"][s][2]
    assert all(180 <= c <= 198 for c in covered.values()), covered


def test_same_seed_same_result_other_seed_other_intervals(seeded):
    hp, gap, measures, res = seeded
    again = bootstrap(measures, gap, hp, replicates=300, seed=3)
    other = bootstrap(measures, gap, hp, replicates=300, seed=4)
    for name in measures:
        for s in STATISTICS:
            assert _same(again[name][s], res[name][s], 0)
            assert _same(again.samples[name][s], res.samples[name][s], 0)
    assert again.paired == res.paired and again.notes == res.notes
    assert any(other["noise"][s][1:] != res["noise"][s][1:] for s in STATISTICS)
    # the points are means over the draws: other draws, other points
    assert all(other["noise"][s][0] != res["noise"][s][0] for s in STATISTICS)


def test_level_sets_the_percentiles(seeded):
    hp, gap, measures, res = seeded
    narrow = bootstrap({"noise": measures["noise"]}, gap, hp, replicates=300, seed=3, level=0.5)
    s = res.samples["noise"]["kendall"]
    assert narrow["noise"]["kendall"][1:] == pytest.approx(np.nanpercentile(s, [25, 75]))
    assert res["noise"]["kendall"][1:] == pytest.approx(np.nanpercentile(s, [2.5, 97.5]))


# -- pool mode and CMI's reasons ------------------------------------------------------------------

def test_pool_mode_without_a_seed_axis_has_no_cmi_interval_and_says_why():
    rng = np.random.default_rng(1)
    hp = _grid(a=[0, 1, 2], b=[0, 1], c=[0, 1, 2])            # one network per combination
    n = len(hp["a"])
    gap = rng.normal(size=n)
    m = gap + rng.normal(scale=0.5, size=n)
    res = bootstrap({"m": m}, gap, hp, replicates=200)
    assert res.mode == "pool" and res.replicate_axis is None and res.size == n
    assert "resampled with replacement" in res.notes[0] and "'seed' is not among" in res.notes[0]
    assert "pool mode" in res.cmi_note and res.cmi_note in res.notes
    point, low, high = res["m"]["cmi"]
    assert math.isnan(point) and math.isnan(low) and math.isnan(high)   # NaN in every resample
    assert np.isnan(res.samples["m"]["cmi"]).all()
    assert "point and interval are NaN in pool mode" in res.cmi_note
    for s in ("pearson", "kendall", "granulated_kendall"):
        assert all(np.isfinite(res["m"][s]))
        # the point is the mean over the resamples (SPEC §9), also in a pool
        assert res["m"][s][0] == pytest.approx(np.nanmean(res.samples["m"][s]), abs=1e-12)
    psi = granulated_kendall(_instances(hp, range(n), m, gap), "m", "g", ["a", "b", "c"])
    assert res["m"]["granulated_kendall"][0] != psi["granulated_kendall"]
    assert res.paired["cmi"] == {}                            # a single measure: no pairs


def test_pool_mode_when_the_seed_does_not_vary_or_replicate_axis_is_none():
    hp = _grid(a=[0, 1, 2], b=[0, 1])
    gap = np.arange(6.0)
    const = bootstrap({"x": gap}, gap, dict(hp, seed=[0] * 6), replicates=10)
    assert const.mode == "pool" and "'seed' does not vary" in const.notes[0]
    none = bootstrap({"x": gap}, gap, dict(hp, seed=[0, 1] * 3), replicates=10,
                     replicate_axis=None)
    assert none.mode == "pool" and "replicate_axis=None" in none.notes[0]
    assert none.axes == ["a", "b", "seed"]


def test_cmi_needs_three_axes_besides_the_replicate_axis():
    hp = _grid(a=[0, 1, 2], b=[0, 1], seed=[0, 1])
    gap = np.arange(12.0)
    res = bootstrap({"x": gap}, gap, hp, replicates=10)
    assert res.mode == "seed" and "needs at least three" in res.cmi_note
    assert all(math.isnan(v) for v in res["x"]["cmi"])
    assert res["x"]["kendall"] == pytest.approx((1.0, 1.0, 1.0))


def test_incomplete_grid_leaves_cmi_nan_with_the_missing_combination():
    hp = _grid(a=[0, 1], b=[0, 1], c=[0, 1], seed=[0, 1])
    keep = [i for i in range(16) if not (hp["a"][i] == 1 and hp["b"][i] == 1 and hp["c"][i] == 1)]
    sub = {h: [v[i] for i in keep] for h, v in hp.items()}
    gap = np.arange(len(keep), dtype=float)
    res = bootstrap({"x": gap}, gap, sub, replicates=10)
    assert "CMI is NaN" in res.cmi_note and "missing e.g." in res.cmi_note
    assert math.isnan(res["x"]["cmi"][0]) and res["x"]["kendall"][0] == 1.0


def test_single_network_per_combination_gives_zero_width_and_a_note():
    hp = _grid(a=[0, 1, 2], b=[0, 1])
    hp["seed"] = list(range(6))                               # seeds never repeat a combination
    gap = np.arange(6.0)
    x = np.array([0.0, 2, 1, 3, 5, 4])
    res = bootstrap({"x": x}, gap, hp, replicates=20)
    assert res.mode == "seed" and "single network" in res.notes[0]
    p, lo, hi = res["x"]["kendall"]
    assert lo == hi == p


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(measures={"x": [1.0, 2, 3]}), "measure 'x' has 3 values and gap 4"),
    (dict(hparams={"a": [0, 1, 0], "seed": [0, 0, 1, 1]}), "hyperparameter 'a' has 3 values"),
    (dict(replicate_axis="sed"), "replicate_axis=None"),
    (dict(level=0.0), "strictly between 0 and 1"),
    (dict(level=1.0), "strictly between 0 and 1"),
    (dict(level=95), "strictly between 0 and 1"),
    (dict(level=float("nan")), "strictly between 0 and 1"),
    (dict(replicates=0), "at least 1"),
    (dict(replicates=2.5), "at least 1"),
    (dict(replicates=True), "at least 1"),
    (dict(measures={}), "measures is empty"),
    (dict(gap=[1.0], measures={"x": [1.0]}, hparams={"seed": [0]}), "at least two networks"),
])
def test_bad_input_is_a_value_error_naming_the_fix(kwargs, match):
    args = dict(measures={"x": [1.0, 2, 3, 4]}, gap=[1.0, 2, 3, 5],
                hparams={"a": [0, 1, 0, 1], "seed": [0, 0, 1, 1]})
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bootstrap(args.pop("measures"), args.pop("gap"), args.pop("hparams"), **args)
