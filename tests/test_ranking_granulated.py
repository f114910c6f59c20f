"""Granulated Kendall (Jiang et al. 2019) on a grid with three varying axes, by hand (issue 22,
item 2): every psi_i averages several defined taus and Psi averages three psis, chosen so that
a sum or a median in place of either mean gives another number."""
import itertools
import math
import random
from fractions import Fraction

import pytest

from cna_tf import ranking

# axes a in {0, 1}, b in {0, 1, 2}, c in {0, 1}: 12 instances (a, b, c) -> (metric m, target t)
M = {(0, 0, 0): 3, (0, 0, 1): 9, (0, 1, 0): 12, (0, 1, 1): 1, (0, 2, 0): 8, (0, 2, 1): 7,
     (1, 0, 0): 2, (1, 0, 1): 11, (1, 1, 0): 10, (1, 1, 1): 4, (1, 2, 0): 6, (1, 2, 1): 5}
T = {(0, 0, 0): 5, (0, 0, 1): 7, (0, 1, 0): 8, (0, 1, 1): 10, (0, 2, 0): 11, (0, 2, 1): 9,
     (1, 0, 0): 4, (1, 0, 1): 6, (1, 1, 0): 2, (1, 1, 1): 1, (1, 2, 0): 3, (1, 2, 1): 3}

# psi_a: the 6 groups (b, c), a changes (2 points each; tau = +1 if m and t move together):
#   (0,0) m 3->2  t 5->4   +1 | (0,1) m 9->11 t 7->6  -1 | (1,0) m 12->10 t 8->2  +1
#   (1,1) m 1->4  t 10->1  -1 | (2,0) m 8->6  t 11->3 +1 | (2,1) m 7->5   t 9->3  +1
PSI_A = Fraction(1 - 1 + 1 - 1 + 1 + 1, 6)                       # 1/3 (median 1, sum 2)
# psi_b: the 4 groups (a, c), b = 0, 1, 2 changes (3 points, 3 pairs, tau = (C - D) / 3):
#   (0,0) m 3,12,8  t 5,8,11: pairs 01 +, 02 +, 12 -  -> 1/3
#   (0,1) m 9,1,7   t 7,10,9: pairs 01 -, 02 -, 12 -  -> -1
#   (1,0) m 2,10,6  t 4,2,3:  pairs 01 -, 02 -, 12 -  -> -1
#   (1,1) m 11,4,5  t 6,1,3:  pairs 01 +, 02 +, 12 +  -> +1
PSI_B = (Fraction(1, 3) - 1 - 1 + 1) / 4                          # -1/6 (median -1/3, sum -2/3)
# psi_c: the 6 groups (a, b), c changes:
#   (0,0) m 3->9 t 5->7 +1 | (0,1) m 12->1 t 8->10 -1 | (0,2) m 8->7 t 11->9 +1
#   (1,0) m 2->11 t 4->6 +1 | (1,1) m 10->4 t 2->1 +1 | (1,2) m 6->5 t 3->3: tau undefined,
#   left out (not a 0): the mean is over 5 groups
PSI_C = Fraction(1 - 1 + 1 + 1 + 1, 5)                            # 3/5 (median 1, sum 3)
PSI = (PSI_A + PSI_B + PSI_C) / 3                                 # 23/90 (median 1/3)


def rows(extra=None):
    out = []
    for (a, b, c), m in M.items():
        r = {"a": a, "b": b, "c": c, "fixed": "x", "m": float(m), "t": float(T[(a, b, c)])}
        out.append(dict(r, **(extra or {})))
    return out


def brute_tau(x, y):
    """Kendall tau-b from pair counts (no scipy)."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = (x[i] > x[j]) - (x[i] < x[j]), (y[i] > y[j]) - (y[i] < y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            c += 1
        else:
            d += 1
    den = math.sqrt((c + d + tx) * (c + d + ty))
    return None if den == 0 else (c - d) / den


def brute_psi(axis):
    names = ("a", "b", "c")
    k = names.index(axis)
    groups = {}
    for key in M:
        groups.setdefault(key[:k] + key[k + 1:], []).append(key)
    taus = [brute_tau([M[g] for g in grp], [T[g] for g in grp]) for grp in groups.values()]
    taus = [t for t in taus if t is not None]
    return sum(taus) / len(taus)


def test_hand_values_agree_with_pair_counting():
    assert brute_psi("a") == pytest.approx(float(PSI_A))
    assert brute_psi("b") == pytest.approx(float(PSI_B))
    assert brute_psi("c") == pytest.approx(float(PSI_C))
    assert PSI == Fraction(23, 90)


def test_granulated_kendall_three_axes_by_hand():
    got = ranking.granulated_kendall(rows(), "m", "t", ["a", "b", "c", "fixed"])
    assert set(got) == {"psi.a", "psi.b", "psi.c", "granulated_kendall"}   # "fixed" never varies
    assert got["psi.a"] == pytest.approx(float(PSI_A), abs=1e-12)
    assert got["psi.b"] == pytest.approx(float(PSI_B), abs=1e-12)
    assert got["psi.c"] == pytest.approx(float(PSI_C), abs=1e-12)
    assert got["granulated_kendall"] == pytest.approx(23 / 90, abs=1e-12)


def test_the_fixture_tells_means_from_sums_and_medians():
    """The numbers above are not fooled by a sum or a median in place of either mean."""
    import statistics

    taus_a, taus_b, taus_c = [1, -1, 1, -1, 1, 1], [1 / 3, -1, -1, 1], [1, -1, 1, 1, 1]
    for taus, psi in ((taus_a, PSI_A), (taus_b, PSI_B), (taus_c, PSI_C)):
        assert sum(taus) / len(taus) == pytest.approx(float(psi))
        assert statistics.median(taus) != pytest.approx(float(psi))
        assert sum(taus) != pytest.approx(float(psi))
    psis = [float(PSI_A), float(PSI_B), float(PSI_C)]
    assert statistics.median(psis) != pytest.approx(float(PSI))
    assert sum(psis) != pytest.approx(float(PSI))
    assert (sum(taus_c) / 6) != pytest.approx(float(PSI_C))     # the undefined tau is not a 0


def test_granulated_kendall_ignores_row_and_axis_order():
    shuffled = rows()
    random.Random(0).shuffle(shuffled)
    got = ranking.granulated_kendall(shuffled, "m", "t", ["c", "fixed", "a", "b"])
    assert got["granulated_kendall"] == pytest.approx(23 / 90, abs=1e-12)
    assert got["psi.b"] == pytest.approx(-1 / 6, abs=1e-12)


def test_correlate_reports_the_same_granulated_kendall():
    out = ranking.correlate(rows({"arch": "mlp", "dataset": "d"}), ["m"], ["t"],
                            ["a", "b", "c"], group_by=["arch"])
    assert {r["scope"] for r in out} == {ranking.ALL_NETS, "arch=mlp"}
    for r in out:
        assert r["granulated_kendall"] == pytest.approx(23 / 90, abs=1e-12)
        assert r["psi.c"] == pytest.approx(0.6, abs=1e-12)
        assert r["n"] == 12
        assert r["kendall"] == pytest.approx(brute_tau([M[k] for k in M], [T[k] for k in M]))
