"""PGDL's conditional mutual information of a measure and the gap (SPEC §8)."""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from cna_tf.ranking.correlations import _key

def grid_codes(hparams: Mapping[str, Sequence[Any]], n: int) -> Dict[str, Tuple[np.ndarray, int]]:
    """Checks that ``n`` networks form a complete grid over ``hparams``; codes their values.

    Args:
        hparams: hyperparameter name -> its value for each of the ``n`` networks.
        n: the number of networks.

    Returns:
        name -> ``(codes, k)``: each network's value as an index into the k sorted distinct
        values of that hyperparameter.

    Raises:
        ValueError: a length that is not ``n``, or networks that are not every combination of
            the hyperparameters' values exactly once (naming a missing or repeated one).
    """
    out: Dict[str, Tuple[np.ndarray, int]] = {}
    for name, values in hparams.items():
        values = list(values)
        if len(values) != n:
            raise ValueError(f"hyperparameter {name!r} has {len(values)} values for {n} "
                             "networks; give one value per network, in the networks' order")
        keys = [_key(v) for v in values]
        distinct = sorted(set(keys), key=repr)
        index = {v: i for i, v in enumerate(distinct)}
        out[name] = (np.array([index[v] for v in keys], dtype=np.int64), len(distinct))
    names = list(out)
    combos = list(zip(*(out[h][0] for h in names))) if names else []
    expected = int(np.prod([out[h][1] for h in names])) if names else 0
    seen: Dict[tuple, int] = {}
    for i, c in enumerate(combos):
        if c in seen:
            shown = {h: hparams[h][i] for h in names}
            raise ValueError(f"networks {seen[c]} and {i} have the same hyperparameters {shown}: "
                             "conditional mutual information needs a complete grid with each "
                             "combination exactly once (one network per combination, e.g. its "
                             "final snapshot; add the axis that tells them apart, such as seed)")
        seen[c] = i
    if len(seen) != expected:
        values = {h: sorted(set(_key(v) for v in hparams[h]), key=repr) for h in names}
        missing = next(c for c in itertools.product(*(range(out[h][1]) for h in names))
                       if c not in seen)
        shown = {h: values[h][j] for h, j in zip(names, missing)}
        raise ValueError(f"{n} networks do not form a complete grid over {names} ({expected} "
                         f"combinations); missing e.g. {shown}. Conditional mutual "
                         "information needs every combination of the varied hyperparameters "
                         "exactly once")
    return out


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """PGDL's entropy of the rows of ``counts`` (..., 2): −Σ p·log2(p + 1e-12)."""
    p = counts / counts.sum(axis=-1, keepdims=True)
    return -np.sum(p * np.log2(p + 1e-12), axis=-1)


def _mutual_information_bits(tables: np.ndarray) -> np.ndarray:
    """Mutual information (log2) of each 2x2 contingency table in ``tables`` (..., 2, 2):
    rows the gap's sign, columns the measure's."""
    total = tables.sum(axis=(-2, -1), keepdims=True)
    joint = tables / total
    p_gap = joint.sum(axis=-1, keepdims=True)
    p_measure = joint.sum(axis=-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log2(joint / (p_gap * p_measure))
    return np.where(joint > 0, terms, 0.0).sum(axis=(-2, -1))


def conditional_mutual_information(measure: Sequence[float], gap: Sequence[float],
                                   hparams: Mapping[str, Sequence[Any]]) -> float:
    """PGDL's score of a generalization measure (NeurIPS 2020 competition; SPEC §8).

    One value per network (its final snapshot). For every ordered pair (h1, h2) of distinct
    hyperparameters, every ordered pair of networks (i, j), i = j included, falls in the bin
    (h1_i, h1_j, h2_i, h2_j) (tuple keys: the organizers' string keys could collide) and
    counts in that bin's 2x2 table of (gap_i > gap_j, measure_i > measure_j). Per bin: the
    mutual information I of the two signs (log2) and the entropy H of the gap sign
    (−Σ p·log2(p + 1e-12)). The pair's score is mean_bins I / mean_bins H, and the result is the
    minimum over the pairs. 1 for the gap itself; unchanged by any strictly increasing
    transformation of the measure (only the signs enter); ×100 is the leaderboard's scale.

    Args:
        measure: the measure of each network.
        gap: the generalization gap of each network, in the same order.
        hparams: each varied hyperparameter -> its value for each network (at least two
            hyperparameters; hashable values).

    Returns:
        The score in [0, 1]. NaN when a measure or gap value is NaN (the measure is undefined
        for some network), or when the gap sign is constant within every bin of every pair
        (mean entropy 0: nothing to predict). A pair whose mean entropy is 0 is left out of the
        minimum (every measure scores 0/0 there).

    Raises:
        ValueError: fewer than two hyperparameters, lengths that differ, or networks that are
            not a complete grid over ``hparams`` (every combination exactly once).
    """
    m = np.asarray(measure, dtype=np.float64).ravel()
    g = np.asarray(gap, dtype=np.float64).ravel()
    if len(m) != len(g):
        raise ValueError(f"measure has {len(m)} values and gap {len(g)}; give one of each per "
                         "network, in the same order")
    if len(hparams) < 2:
        raise ValueError(f"conditional mutual information conditions on pairs of "
                         f"hyperparameters: give at least two in hparams, got {list(hparams)}")
    codes = grid_codes(hparams, len(m))
    if np.isnan(m).any() or np.isnan(g).any():
        return math.nan
    # sign tables over all ordered pairs (i, j): index 1 = "gap_i > gap_j" / "measure_i > ..."
    cell = (2 * (g[:, None] > g[None, :]) + (m[:, None] > m[None, :])).ravel()
    scores = []
    for h1, h2 in itertools.permutations(codes, 2):
        (c1, k1), (c2, k2) = codes[h1], codes[h2]
        bin_id = (((c1[:, None] * k1 + c1[None, :]) * k2 + c2[:, None]) * k2 + c2[None, :]).ravel()
        tables = np.bincount(bin_id * 4 + cell, minlength=k1 * k1 * k2 * k2 * 4)
        tables = tables.reshape(-1, 2, 2).astype(np.float64)
        tables = tables[tables.sum(axis=(1, 2)) > 0]  # a complete grid fills every bin
        mean_h = float(np.mean(_entropy_bits(tables.sum(axis=2))))
        if mean_h <= 1e-9:
            continue
        scores.append(float(np.mean(_mutual_information_bits(tables))) / mean_h)
    return min(scores) if scores else math.nan
