"""How well a measure ranks networks by their generalization gap (SPEC §3, §8).

Works on a table of *network instances* (one run at one snapshot epoch): a list of dicts that
hold hyperparameters (the axes) and measured values. Knows nothing of MLflow; the `compare`
pipeline reads the instances from runs.

Example:
    >>> rows = correlate(instances, metrics=["cna_margin", "l2"], targets=["gen_gap"],
    ...                  axes=["arch", "width", "seed", "epoch"], group_by=["arch"])
    >>> rows[0]["scope"], rows[0]["pearson"], rows[0]["granulated_kendall"]
    >>> conditional_mutual_information(measure, gap, {"depth": depths, "lr": lrs, "seed": seeds})
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ["pearson", "kendall", "granulated_kendall", "correlate", "ALL_NETS",
           "conditional_mutual_information", "grid_codes"]

ALL_NETS = "All Nets"


def _finite_pairs(x: Sequence[float], y: Sequence[float]):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r over the finite pairs; NaN when fewer than 2 or either side is constant."""
    x, y = _finite_pairs(x, y)
    if not _defined(x, y):
        return math.nan
    return float(stats.pearsonr(x, y)[0])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b over the finite pairs; NaN when undefined."""
    x, y = _finite_pairs(x, y)
    if not _defined(x, y):
        return math.nan
    return float(stats.kendalltau(x, y)[0])


def _key(v: Any) -> Any:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def granulated_kendall(instances: Sequence[Mapping[str, Any]], metric: str, target: str,
                       axes: Sequence[str]) -> Dict[str, float]:
    """Granulated Kendall coefficient (Jiang et al. 2019, "Fantastic generalization measures").

    For each axis i that varies, the instances are grouped by the values of every other axis;
    psi_i is the mean Kendall tau of ``metric`` vs ``target`` within the groups in which only
    axis i changes (groups where tau is undefined are left out). The coefficient is the mean of
    psi_i over those axes.

    Returns:
        ``{"granulated_kendall": Psi, "psi.<axis>": psi_i, ...}`` (NaN where undefined).
    """
    out: Dict[str, float] = {}
    varying = [a for a in axes if len({_key(r.get(a)) for r in instances}) > 1]
    for axis in varying:
        others = [a for a in varying if a != axis]
        groups: Dict[tuple, List[Mapping[str, Any]]] = {}
        for r in instances:
            groups.setdefault(tuple(_key(r.get(a)) for a in others), []).append(r)
        taus = [kendall([r.get(metric, math.nan) for r in g], [r.get(target, math.nan) for r in g])
                for g in groups.values() if len(g) >= 2]
        taus = [t for t in taus if not math.isnan(t)]
        out[f"psi.{axis}"] = float(np.mean(taus)) if taus else math.nan
    psis = [v for v in out.values() if not math.isnan(v)]
    out["granulated_kendall"] = float(np.mean(psis)) if psis else math.nan
    return out


def correlate(instances: Sequence[Mapping[str, Any]], metrics: Iterable[str],
              targets: Iterable[str], axes: Sequence[str],
              group_by: Sequence[str] = ("arch", "dataset"),
              extra_targets: Optional[Mapping[str, Iterable[str]]] = None
              ) -> List[Dict[str, Any]]:
    """Pearson, Kendall and granulated Kendall of every metric with every target, per scope.

    Scopes: "All Nets" and each value of each ``group_by`` column (e.g. ``arch=mlp``).

    Args:
        instances: network instances (hyperparameters and measured values).
        metrics: measured values to rank by (e.g. ``cna_margin``, ``l2``).
        targets: what they should predict (e.g. ``gen_gap``, ``loss_gap``).
        axes: hyperparameter columns for the granulated Kendall coefficient.
        group_by: columns whose values define the per-group scopes.
        extra_targets: per-metric additional targets (e.g. ``{"cna_test": ["test_acc"]}``).

    Returns:
        One row per (scope, metric, target): ``scope, metric, target, n, pearson, kendall,
        granulated_kendall`` and the ``psi.<axis>`` terms.
    """
    scopes = [(ALL_NETS, list(instances))]
    for col in group_by:
        values = sorted({str(r.get(col)) for r in instances})
        scopes += [(f"{col}={v}", [r for r in instances if str(r.get(col)) == v])
                   for v in values]
    rows: List[Dict[str, Any]] = []
    metrics, targets = list(metrics), list(targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        for scope, subset in scopes:
            for metric in metrics:
                for target in targets + list((extra_targets or {}).get(metric, [])):
                    x = [r.get(metric, math.nan) for r in subset]
                    y = [r.get(target, math.nan) for r in subset]
                    row = {"scope": scope, "metric": metric, "target": target,
                           "n": int(len(_finite_pairs(x, y)[0])),
                           "pearson": pearson(x, y), "kendall": kendall(x, y)}
                    row.update(granulated_kendall(subset, metric, target, axes))
                    rows.append(row)
    return rows


# -- PGDL's conditional mutual information (SPEC §8) ------------------------------------------

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
    """Mutual information (log2) of each 2x2 contingency table in ``tables`` (bins, 2, 2)."""
    total = tables.sum(axis=(1, 2), keepdims=True)
    joint = tables / total
    p_gap = joint.sum(axis=2, keepdims=True)
    p_measure = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log2(joint / (p_gap * p_measure))
    return np.where(joint > 0, terms, 0.0).sum(axis=(1, 2))


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
