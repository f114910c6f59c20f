"""Robust sign-error per intervention (SPEC §10, issue 30 items 1 and 6): the gap itself and its
negation, a constant gap, a 2x2 grid with 2 seeds worked out by hand, NaN measures, min_ess and
noise_filter, a loop-by-loop reference on random grids, and bad input."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cna_tf.ranking import SignErrorResult, sign_errors


def _grid(seeds=(0, 1, 2), **axes):
    """Every combination of the axes' values, ``seeds`` networks each: {name: values}."""
    combos = list(itertools.product(*axes.values(), seeds))
    names = list(axes) + ["seed"]
    return {name: [c[i] for c in combos] for i, name in enumerate(names)}


def _w(d, n=100):
    """SPEC §10's weight, written out: v = max(0, 1 - 2 exp(-2 n (d/2)^2))^2,
    w = max(v - 1/2, 0)."""
    v = max(0.0, 1.0 - 2.0 * math.exp(-2.0 * n * (d / 2.0) ** 2)) ** 2
    return max(v - 0.5, 0.0)


# -- the gap itself, its negation, a constant gap -----------------------------------------------

@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(0)
    hp = _grid(depth=[2, 4], width=[0.25, 0.5, 1.0], lr=[0.01, 0.1])
    n = len(hp["seed"])
    gap = (0.1 * np.array(hp["width"]) + 0.05 * np.array(hp["depth"])
           + 0.3 * np.array(hp["lr"]) + 0.01 * rng.standard_normal(n))
    return hp, gap


def test_the_gap_itself_errs_nowhere_and_its_negation_everywhere(grid):
    hp, gap = grid
    res = sign_errors({"gap": gap, "minus": -gap, "noise": np.random.default_rng(1).random(
        len(gap))}, gap, hp)
    assert isinstance(res, SignErrorResult) and res.axes == ["depth", "width", "lr"]
    assert list(res["gap"]) == ["depth", "width", "lr", "all"]
    for axis in res.axes + ["all"]:
        assert res["gap"][axis]["n"] > 0
        assert res["gap"][axis] == {"n": res["gap"][axis]["n"], "mean": 0.0, "p90": 0.0,
                                    "max": 0.0}
        assert res["minus"][axis] == {"n": res["gap"][axis]["n"], "mean": 1.0, "p90": 1.0,
                                      "max": 1.0}
    assert 0.0 < res["noise"]["all"]["mean"] < 1.0
    # environments: depth 2 values x 6 others, width 3 pairs x 4, lr 6: 6 + 12 + 6 (some may
    # be filtered: the gaps of two combinations can be within the noise)
    assert res["gap"]["all"]["n"] == len(res.environments) <= 24
    assert sum(res["gap"][a]["n"] for a in res.axes) == res["gap"]["all"]["n"]
    assert res.min_ess == 4.5 and res.replicates == 3 and res.noise_filter


def test_a_constant_gap_filters_every_pair_out():
    hp = _grid(depth=[2, 4], width=[1, 2])
    gap = np.full(len(hp["seed"]), 0.1)
    res = sign_errors({"x": np.arange(len(gap), dtype=float)}, gap, hp)
    for axis in ("depth", "width", "all"):
        assert res["x"][axis]["n"] == 0
        assert all(math.isnan(res["x"][axis][k]) for k in ("mean", "p90", "max"))
    assert res.environments == []
    # without the filter every pair counts: the gap ties, so every sign-error is 1/2
    flat = sign_errors({"x": np.arange(len(gap), dtype=float)}, gap, hp, noise_filter=False)
    assert flat["x"]["all"] == {"n": 4, "mean": 0.5, "p90": 0.5, "max": 0.5}


# -- a 2x2 grid with 2 seeds, by hand -------------------------------------------------------------

#: (a, b, seed, gap, measure): 8 networks; n_test = 100 makes the weights bite
NETS = [(0, 0, 0, 0.10, 1.0), (0, 0, 1, 0.12, 2.0), (1, 0, 0, 0.50, 0.0), (1, 0, 1, 0.30, 3.0),
        (0, 1, 0, 0.40, 5.0), (0, 1, 1, 0.70, 5.0), (1, 1, 0, 0.60, 3.0), (1, 1, 1, 0.90, 6.0)]


def _by_hand(nets=NETS):
    hp = {"a": [r[0] for r in nets], "b": [r[1] for r in nets], "seed": [r[2] for r in nets]}
    return hp, [r[3] for r in nets], [r[4] for r in nets]


def _loss(pairs):
    """(weight, sign-error) pairs -> (loss, ESS)."""
    total = sum(w for w, _ in pairs)
    return (sum(w * e for w, e in pairs) / total,
            total ** 2 / sum(w * w for w, _ in pairs))


# Environment by environment, each pair as (|gap difference|, sign-error), networks numbered
# 1..8 as in NETS:
#  E1 a, b=0: (1,3) .40 gap up measure down: 1; (1,4) .20 both up: 0; (2,3) .38: 1; (2,4) .18: 0
#  E2 a, b=1: (5,7) .20 gap up measure down: 1; (5,8) .50: 0; (6,7) .10: 0; (6,8) .20: 0
#  E3 b, a=0: (1,5) .30: 0; (1,6) .60: 0; (2,5) .28: 0; (2,6) .58: 0
#  E4 b, a=1: (3,7) .10: 0; (3,8) .40: 0; (4,7) .30 measure ties (3 and 3): 1/2; (4,8) .60: 0
E1 = [(0.40, 1), (0.20, 0), (0.38, 1), (0.18, 0)]
E2 = [(0.20, 1), (0.50, 0), (0.10, 0), (0.20, 0)]
E3 = [(0.30, 0), (0.60, 0), (0.28, 0), (0.58, 0)]
E4 = [(0.10, 0), (0.40, 0), (0.30, 0.5), (0.60, 0)]


def test_hand_built_weights():
    # a gap difference under ~0.196 at n = 100 tells nothing (v <= 1/2): weight 0
    assert _w(0.18) == 0.0 and _w(0.10) == 0.0 and _w(0.0) == 0.0
    assert _w(0.20) == pytest.approx(0.0319214, abs=1e-7)     # (1 - 2e^-2)^2 - 1/2
    assert _w(0.40) == pytest.approx(0.4986586, abs=1e-7)     # (1 - 2e^-8)^2 - 1/2
    assert _w(0.30) == pytest.approx(0.4560577, abs=1e-7)     # (1 - 2e^-4.5)^2 - 1/2


def test_hand_built_grid_losses_ess_and_summaries():
    hp, gap, c = _by_hand()
    res = sign_errors({"c": c}, gap, hp, n_test=100)
    assert res.axes == ["a", "b"] and res.min_ess == 2.0       # S = 2 seeds: S^2 / 2
    (l1, s1), (l2, s2), (l3, s3), (l4, s4) = (
        _loss([(_w(d), e) for d, e in env]) for env in (E1, E2, E3, E4))
    assert l1 == pytest.approx(0.96893, abs=1e-5) and s1 == pytest.approx(2.1259, abs=1e-4)
    assert s2 == pytest.approx(1.2614, abs=1e-4)               # < 2: E2 is not kept
    assert l3 == 0.0 and s3 > 2 and l4 == pytest.approx(0.15675, abs=1e-5) and s4 > 2
    assert res["c"]["a"] == {"n": 1, "mean": pytest.approx(l1), "p90": pytest.approx(l1),
                             "max": pytest.approx(l1)}
    assert res["c"]["b"] == {"n": 2, "mean": pytest.approx((l3 + l4) / 2),
                             "p90": pytest.approx(l3 + 0.9 * (l4 - l3)),   # numpy, linear
                             "max": pytest.approx(l4)}
    assert res["c"]["all"]["n"] == 3
    assert res["c"]["all"]["mean"] == pytest.approx((l1 + l3 + l4) / 3)
    assert res["c"]["all"]["p90"] == pytest.approx(np.percentile([l1, l3, l4], 90))
    assert res["c"]["all"]["max"] == pytest.approx(l1)
    envs = {(e["axis"], tuple(e["fixed"].values())): e for e in res.environments}
    assert set(envs) == {("a", (0,)), ("b", (0,)), ("b", (1,))}
    e1 = envs[("a", (0,))]
    assert (e1["a"], e1["b"], e1["fixed"], e1["pairs"]) == (0, 1, {"b": 0}, 4)
    assert e1["ess"] == pytest.approx(s1) and e1["losses"]["c"] == pytest.approx(l1)


def test_min_ess_keeps_or_drops_what_it_should():
    hp, gap, c = _by_hand()
    l2, s2 = _loss([(_w(d), e) for d, e in E2])
    low = sign_errors({"c": c}, gap, hp, n_test=100, min_ess=1.0)
    assert low["c"]["a"]["n"] == 2 and low["c"]["all"]["n"] == 4
    assert low["c"]["a"]["max"] == pytest.approx(_loss([(_w(d), e) for d, e in E1])[0])
    assert min(e["losses"]["c"] for e in low.environments if e["axis"] == "a") == \
        pytest.approx(l2)
    high = sign_errors({"c": c}, gap, hp, n_test=100, min_ess=3.5)   # only E3 and E4 (~4, ~3)
    assert high["c"]["a"]["n"] == 0 and math.isnan(high["c"]["a"]["mean"])
    assert high["c"]["b"]["n"] == 1 and high["c"]["b"]["max"] == 0.0


def test_noise_filter_false_weighs_every_pair_one():
    hp, gap, c = _by_hand()
    res = sign_errors({"c": c}, gap, hp, n_test=100, noise_filter=False)
    # E1 1,0,1,0; E2 1,0,0,0; E3 all 0; E4 0,0,1/2,0; every ESS 4 >= 2
    assert res["c"]["a"] == {"n": 2, "mean": pytest.approx(0.375), "p90": pytest.approx(0.475),
                             "max": pytest.approx(0.5)}
    assert res["c"]["b"]["max"] == pytest.approx(0.125) and res["c"]["b"]["mean"] == \
        pytest.approx(0.0625)
    assert all(e["ess"] == 4.0 and e["pairs"] == 4 for e in res.environments)
    # a larger test set makes more pairs certain: with the filter, n_test changes the weights
    big = sign_errors({"c": c}, gap, hp, n_test=100_000)
    assert big["c"]["a"]["n"] == 2


def test_n_test_per_network_uses_the_smaller_of_a_pair():
    hp, gap, c = _by_hand()
    one = sign_errors({"c": c}, gap, hp, n_test=100)
    per = sign_errors({"c": c}, gap, hp, n_test=[100] * 4 + [10**6] * 4)
    # only E2 pairs two networks of the last four: its weights become ~1/2 each (ESS ~4, kept,
    # loss (1 + 0 + 0 + 0) / 4); every other environment has a network with 100 test points
    assert per["c"]["b"] == one["c"]["b"]
    assert per["c"]["a"]["n"] == 2 and one["c"]["a"]["n"] == 1
    e2 = next(e for e in per.environments if e["axis"] == "a" and e["fixed"] == {"b": 1})
    assert e2["losses"]["c"] == pytest.approx(0.25) and e2["ess"] == pytest.approx(4.0)
    same = sign_errors({"c": c}, gap, hp, n_test=[100] * 8)
    assert same["c"] == one["c"]


def test_nan_measures_drop_only_their_own_pairs():
    hp, gap, c = _by_hand()
    holes = list(c)
    holes[0] = math.nan                                       # network 1
    res = sign_errors({"c": c, "holes": holes}, gap, hp, n_test=100, noise_filter=False)
    alone = sign_errors({"c": c}, gap, hp, n_test=100, noise_filter=False)
    assert res["c"] == alone["c"]
    envs = {(e["axis"], tuple(e["fixed"].values())): e["losses"] for e in res.environments}
    # E1 without network 1: (2,3) 1, (2,4) 0 -> 1/2 with ESS 2 (kept); E3: (2,5), (2,6) -> 0
    assert envs[("a", (0,))]["holes"] == 0.5 and envs[("a", (0,))]["c"] == 0.5
    assert envs[("b", (0,))]["holes"] == 0.0
    assert envs[("a", (1,))]["holes"] == envs[("a", (1,))]["c"]      # untouched environments
    # a NaN gap drops its pairs for every measure
    g = list(gap)
    g[0] = math.nan
    both = sign_errors({"c": c, "holes": holes}, g, hp, n_test=100, noise_filter=False)
    assert both["c"] == both["holes"] == res["holes"]
    # with the filter, network 1's loss of weight leaves E1 under min_ess for "holes" only
    filt = sign_errors({"c": c, "holes": holes}, gap, hp, n_test=100)
    env1 = next(e for e in filt.environments if e["axis"] == "a")
    assert math.isnan(env1["losses"]["holes"]) and env1["losses"]["c"] > 0.9
    assert filt["holes"]["a"]["n"] == 0 and filt["c"]["a"]["n"] == 1


# -- against a loop over environments on random grids ----------------------------------------

def _reference(measures, gap, hp, n_test, noise_filter, min_ess, replicate="seed"):
    axes = [a for a in hp if a != replicate and len(set(hp[a])) > 1]
    n = len(gap)
    combos = {}
    for i in range(n):
        combos.setdefault(tuple(hp[a][i] for a in axes), []).append(i)
    s = max(len(v) for v in combos.values())
    min_ess = s * s / 2 if min_ess is None else min_ess
    out = {m: {a: [] for a in axes} for m in measures}
    for ca, cb in itertools.combinations(sorted(combos), 2):
        differ = [k for k in range(len(axes)) if ca[k] != cb[k]]
        if len(differ) != 1:
            continue
        for m, x in measures.items():
            pairs = []
            for i in combos[ca]:
                for j in combos[cb]:
                    if not all(np.isfinite([x[i], x[j], gap[i], gap[j]])):
                        continue
                    d = gap[i] - gap[j]
                    w = _w(abs(d), n_test) if noise_filter else 1.0
                    pairs.append((w, (1 - np.sign(x[i] - x[j]) * np.sign(d)) / 2))
            total = sum(w for w, _ in pairs)
            if total > 0 and total ** 2 / sum(w * w for w, _ in pairs) >= min_ess:
                out[m][axes[differ[0]]].append(sum(w * e for w, e in pairs) / total)
    return out


@pytest.mark.parametrize("noise_filter,min_ess", [(True, None), (False, None), (True, 0.0),
                                                  (False, 7.0)])
def test_equals_a_loop_over_environments(noise_filter, min_ess):
    rng = np.random.default_rng(11)
    hp = _grid(seeds=(0, 1, 2), depth=[1, 2, 3], width=["s", "l"], lr=[0.1, 0.01])
    n = len(hp["seed"])
    gap = 0.05 * np.array(hp["depth"]) + 0.02 * rng.standard_normal(n)
    gap[5] = np.nan
    measures = {"close": gap + 0.02 * rng.standard_normal(n), "noise": rng.random(n),
                "ties": np.round(4 * rng.random(n))}
    measures["close"][[3, 20]] = [np.nan, np.inf]
    res = sign_errors(measures, gap, hp, n_test=1000, noise_filter=noise_filter,
                      min_ess=min_ess)
    ref = _reference(measures, gap, hp, 1000, noise_filter, min_ess)
    for m in measures:
        for axis in ("depth", "width", "lr"):
            got, want = res[m][axis], sorted(ref[m][axis])
            assert got["n"] == len(want), (m, axis)
            if want:
                assert got["mean"] == pytest.approx(np.mean(want))
                assert got["p90"] == pytest.approx(np.percentile(want, 90))
                assert got["max"] == pytest.approx(max(want))
        every = [v for a in ref[m].values() for v in a]
        assert res[m]["all"]["n"] == len(every)


def test_without_a_replicate_axis_the_seed_is_an_intervention():
    hp = _grid(seeds=(0, 1), depth=[1, 2])
    gap = np.array([0.1, 0.5, 0.3, 0.9])                     # (1,0) (1,1) (2,0) (2,1)
    res = sign_errors({"g": gap}, gap, hp, replicate_axis=None, n_test=10**6)
    assert res.axes == ["depth", "seed"] and res.replicates == 1 and res.min_ess == 0.5
    assert res["g"]["seed"]["n"] == 2 and res["g"]["depth"]["n"] == 2
    assert res["g"]["all"]["max"] == 0.0
    # with one seed per combination every environment is one pair: its loss is 0, 1/2 or 1
    single = sign_errors({"x": [3.0, 1.0, 2.0, 2.0]}, gap, {"a": [0, 1, 2, 3]}, n_test=10**6)
    losses = sorted(e["losses"]["x"] for e in single.environments)
    assert single.axes == ["a"] and set(losses) <= {0.0, 0.5, 1.0} and len(losses) == 6


def test_nothing_varies_but_the_seed():
    res = sign_errors({"x": [1.0, 2.0, 3.0]}, [0.1, 0.2, 0.3], {"seed": [0, 1, 2]})
    assert res.axes == [] and list(res["x"]) == ["all"] and res["x"]["all"]["n"] == 0
    assert math.isnan(res["x"]["all"]["max"]) and res.environments == []
    assert "no hyperparameter" in res.notes[0]


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(measures={}), "measures is empty"),
    (dict(measures={"x": [1.0, 2.0]}), "measure 'x' has 2 values and gap 4"),
    (dict(hparams={"a": [0, 1, 0]}), "hyperparameter 'a' has 3 values for 4"),
    (dict(replicate_axis="run"), "replicate_axis 'run' is not among"),
    (dict(n_test=0), "n_test must be a positive"),
    (dict(n_test=[100, 100]), "n_test has 2 values for 4"),
    (dict(n_test="many"), "n_test must be a positive"),
    (dict(min_ess=-1), "min_ess must be a number >= 0"),
    (dict(min_ess="half"), "min_ess must be a number >= 0"),
    (dict(noise_filter="yes"), "noise_filter must be True or False"),
])
def test_bad_input_says_what_to_fix(kwargs, match):
    args = dict(measures={"x": [1.0, 2.0, 3.0, 4.0]}, gap=[0.1, 0.2, 0.3, 0.4],
                hparams={"a": [0, 1, 0, 1], "seed": [0, 0, 1, 1]})
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sign_errors(args.pop("measures"), args.pop("gap"), args.pop("hparams"), **args)
