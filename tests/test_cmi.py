"""PGDL's conditional mutual information (SPEC §8): a case computed by hand, the score's
properties (1 for the gap itself, invariance to increasing transformations, a complete grid
or a ValueError)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cna_tf.ranking import conditional_mutual_information as cmi


def _grid(**axes):
    """Every combination of the axes' values once: {name: per-network values}."""
    names = list(axes)
    combos = list(itertools.product(*axes.values()))
    return {n: [c[i] for c in combos] for i, n in enumerate(names)}


def _h(p):
    return -sum(q * math.log2(q) for q in p if q > 0)


def test_hand_computed_negated_gap_on_a_2x2x2_grid():
    """Three binary hyperparameters a, b, c; gap = 4a + 2b + c (all distinct); measure = −gap.

    Take the pair (h1, h2) = (a, b) (every pair is alike by symmetry: the gap orders networks
    by the remaining hyperparameter once the conditioned two are equal). Its 16 bins are
    (a_i, a_j, b_i, b_j); each holds the 4 pairs (c_i, c_j).
    * 12 bins with a_i != a_j or b_i != b_j: the gap sign is the same for all 4 pairs, so
      H = 0 (PGDL's −1·log2(1 + 1e-12) ≈ 1e-12) and I = 0.
    * 4 bins with a_i = a_j and b_i = b_j: the 2x2 table of (gap_i > gap_j, measure_i > measure_j)
      over (c_i, c_j) = (0,0), (0,1), (1,0), (1,1) is (−,−), (−,+), (+,−), (−,−):

            measure+  measure−
      gap+     0        1/4
      gap−    1/4       1/2

      marginals gap (1/4, 3/4), measure (1/4, 3/4);
      I = 2 · 1/4 · log2((1/4) / (3/16)) + 1/2 · log2((1/2) / (9/16)) = 0.5 log2(4/3) + 0.5 log2(8/9)
      H = H(1/4, 3/4).
    Score = (4 I / 16) / (4 H / 16) = I / H ≈ 0.151 (MI ignores the direction; the ties of
    i = j, counted as (−, −), break the symmetry between the gap and its negation).
    """
    hp = _grid(a=[0, 1], b=[0, 1], c=[0, 1])
    gap = 4 * np.array(hp["a"]) + 2 * np.array(hp["b"]) + np.array(hp["c"])
    mi = 0.5 * math.log2(4 / 3) + 0.5 * math.log2(8 / 9)
    h = _h([0.25, 0.75])
    assert mi == pytest.approx(0.122556, abs=1e-6) and h == pytest.approx(0.811278, abs=1e-6)
    assert cmi(-gap, gap, hp) == pytest.approx(mi / h, rel=1e-9)


def test_hand_computed_measure_blind_to_one_axis():
    """gap = 4a + 2b + c; the measure sees a and b but not c (measure = 4a + 2b). Conditioning
    on (a, b) leaves only c to order the networks: within the 4 bins with equal (a, b) the
    measure ties (sign −) for all 4 pairs, so I = 0 there; in the other 12 bins H = 0. The pair
    (a, b) scores 0, and the minimum over pairs is 0."""
    hp = _grid(a=[0, 1], b=[0, 1], c=[0, 1])
    a, b, c = (np.array(hp[k]) for k in "abc")
    assert cmi(4 * a + 2 * b, 4 * a + 2 * b + c, hp) == pytest.approx(0.0, abs=1e-9)
    # a measure that also sees c (with the gap's order) scores 1
    assert cmi(4 * a + 2 * b + 0.5 * c, 4 * a + 2 * b + c, hp) == pytest.approx(1.0, abs=1e-9)


@pytest.fixture
def grid3():
    """A 3 x 2 x 2 grid (12 networks) with a continuous, tie-free gap."""
    hp = _grid(depth=[2, 3, 4], lr=[0.01, 0.1], seed=[0, 1])
    rng = np.random.default_rng(0)
    gap = 0.05 * np.array(hp["depth"]) + rng.normal(scale=0.02, size=12)
    return hp, gap, rng


def test_the_gap_itself_scores_one(grid3):
    hp, gap, _ = grid3
    assert cmi(gap, gap, hp) == pytest.approx(1.0, abs=1e-9)


def test_invariant_to_increasing_transformations(grid3):
    hp, gap, rng = grid3
    measure = gap + rng.normal(scale=0.03, size=len(gap))
    base = cmi(measure, gap, hp)
    assert 0.0 < base < 1.0
    for f in (np.exp, lambda v: 3.0 * v + 5.0, lambda v: np.argsort(np.argsort(v)),
              lambda v: v ** 3):
        assert cmi(f(measure), gap, hp) == base


def test_in_unit_interval_and_order_of_networks_irrelevant(grid3):
    hp, gap, rng = grid3
    for _ in range(5):
        measure = rng.normal(size=len(gap))
        v = cmi(measure, gap, hp)
        assert 0.0 <= v <= 1.0
        perm = rng.permutation(len(gap))
        assert cmi(measure[perm], gap[perm], {k: [x[i] for i in perm] for k, x in hp.items()}) \
            == pytest.approx(v, abs=1e-12)


def test_incomplete_or_repeated_grid_is_a_value_error(grid3):
    hp, gap, _ = grid3
    drop = {k: v[:-1] for k, v in hp.items()}
    with pytest.raises(ValueError, match=r"do not form a complete grid.*missing e.g. "
                                         r"\{'depth': 4, 'lr': 0.1, 'seed': 1\}"):
        cmi(gap[:-1], gap[:-1], drop)
    twice = {k: v + v[:1] for k, v in hp.items()}
    g = np.append(gap, 0.3)
    with pytest.raises(ValueError, match="networks 0 and 12 have the same hyperparameters"):
        cmi(g, g, twice)
    with pytest.raises(ValueError, match="at least two"):
        cmi(gap, gap, {"depth": hp["depth"]})
    with pytest.raises(ValueError, match="'lr' has 11 values for 12 networks"):
        cmi(gap, gap, {"depth": hp["depth"], "lr": hp["lr"][:-1]})


def test_nan_measure_gives_nan(grid3):
    hp, gap, _ = grid3
    m = gap.copy()
    m[3] = np.nan
    assert math.isnan(cmi(m, gap, hp))
