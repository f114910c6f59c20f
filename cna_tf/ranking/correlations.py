"""Correlations of a measure with the gap over network instances (SPEC §3).

Pearson, Kendall tau-b and Jiang et al.'s granulated Kendall coefficient, per scope (All Nets,
each architecture, each dataset) for the `compare` pipeline.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

ALL_NETS = "All Nets"


def _measure_matrix(measures: Mapping[Any, Sequence[float]], gap: Sequence[float]):
    """``(gap, names, x)``: the gap as a float64 vector of n networks, the measure names in
    order, and their values as an (n, measures) float64 matrix; a clear error for no measures
    or a measure whose length differs from the gap's."""
    if not measures:
        raise ValueError("measures is empty: give at least one measure name -> per-network "
                         "values")
    g = np.asarray(gap, dtype=np.float64).ravel()
    n = len(g)
    names = list(measures)
    columns = []
    for name in names:
        col = np.asarray(measures[name], dtype=np.float64).ravel()
        if len(col) != n:
            raise ValueError(f"measure {name!r} has {len(col)} values and gap {n}; give one "
                             "value per network, in the same order")
        columns.append(col)
    return g, names, np.stack(columns, axis=1)


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
