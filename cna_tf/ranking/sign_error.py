"""Robust sign-error of a measure per intervention (SPEC §10).

Dziugaite et al. (NeurIPS 2020, "In Search of Robust Measures of Generalization"): for two
networks that differ in one hyperparameter, does the measure order them as their gap does?
Averaged per *environment* (a pair of hyperparameter combinations that differ in one axis, all
seed pairings), weighted by how surely the two gaps differ given the test-set size, and reported
per axis as the mean and the worst case, which a correlation over the whole grid hides.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from cna_tf.ranking.correlations import _key, _measure_matrix

__all__ = ["sign_errors", "SignErrorResult", "hoeffding_weight", "ALL_AXES"]

#: the key of the summary over every axis together
ALL_AXES = "all"
#: the summary of each (measure, axis) family of environments
SUMMARY = ("n", "mean", "p90", "max")


class SignErrorResult(dict):
    """What :func:`sign_errors` returns: ``{measure: {axis | "all": {"n", "mean", "p90",
    "max"}}}``, a plain dict of the SPEC §10 shape, with these attributes:

    Attributes:
        axes: the hyperparameters environments were formed over (those that vary, the
            replicate axis excepted), in ``hparams``' order; each is a key of every measure's
            dict, before ``"all"``.
        environments: the kept environments, one dict each: ``axis``; ``a`` and ``b``, the
            axis's two values (``a`` the smaller); ``fixed``, every other axis's value;
            ``pairs``, its network pairs (all replicate pairings); ``ess``, the effective
            sample size of its weights over the pairs with finite gaps; ``losses``, measure ->
            its environment loss (NaN where that measure's environment is not kept, e.g. its
            NaN values leave too little weight). An environment is listed when it is kept for
            at least one measure.
        min_ess: the effective-sample-size threshold applied.
        noise_filter: whether the Hoeffding weights were used (else every weight is 1).
        replicate_axis: the axis whose values are replicates, or ``None``.
        replicates: S, the largest number of networks of one combination.
        notes: human-readable remarks (e.g. no axis varies).
    """

    axes: List[str]
    environments: List[Dict[str, Any]]
    min_ess: float
    noise_filter: bool
    replicate_axis: Optional[str]
    replicates: int
    notes: List[str]

    def __repr__(self) -> str:
        return (f"SignErrorResult(axes={self.axes!r}, environments={len(self.environments)}, "
                f"min_ess={self.min_ess:g}, noise_filter={self.noise_filter}, "
                f"{dict.__repr__(self)})")


def _order(v: Any):
    """Sort key of a hyperparameter's values: numbers by value, anything else by repr."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v):
        return (0, float(v), "")
    return (1, 0.0, repr(v))


def _summary(losses: np.ndarray) -> Dict[str, float]:
    if len(losses) == 0:
        return {"n": 0, "mean": math.nan, "p90": math.nan, "max": math.nan}
    return {"n": int(len(losses)), "mean": float(np.mean(losses)),
            "p90": float(np.percentile(losses, 90)), "max": float(np.max(losses))}


def _test_sizes(n_test: Union[int, Sequence[int]], n: int) -> np.ndarray:
    if np.ndim(n_test) == 0:
        sizes = np.full(n, n_test, dtype=np.float64) if _is_number(n_test) else None
    else:
        sizes = np.asarray(n_test, dtype=np.float64).ravel()
        if len(sizes) != n:
            raise ValueError(f"n_test has {len(sizes)} values for {n} networks; give one "
                             "test-set size, or one per network in the networks' order")
    if sizes is None or not (np.isfinite(sizes).all() and (sizes > 0).all()):
        raise ValueError(f"n_test must be a positive number of test points (or one per "
                         f"network), got {n_test!r}")
    return sizes


def _is_number(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.number)) and not isinstance(v, bool)


def hoeffding_weight(gap_difference: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    """SPEC §10's Monte Carlo noise weight ``w = max(v - 1/2, 0)`` of pairs of networks.

    ``v = max(0, 1 - 2 exp(-2 n (|g_i - g_j| / 2)^2))^2`` bounds, by Hoeffding's inequality,
    the chance that two gaps of error rates, each measured on ``n`` test points, truly differ
    in the observed direction (Dziugaite et al. 2020, §4). NaN differences get weight 0.

    Args:
        gap_difference: ``g_i - g_j`` per pair.
        n_test: the test-set size per pair (the smaller of the two networks').

    Returns:
        The weights, in [0, 1/2].
    """
    d = np.abs(np.asarray(gap_difference, dtype=np.float64))
    v = np.maximum(0.0, 1.0 - 2.0 * np.exp(-2.0 * n_test * (d / 2.0) ** 2)) ** 2
    return np.where(np.isfinite(d), np.maximum(v - 0.5, 0.0), 0.0)


def sign_errors(measures: Mapping[Any, Sequence[float]], gap: Sequence[float],
                hparams: Mapping[str, Sequence[Any]], *, replicate_axis: Optional[str] = "seed",
                n_test: Union[int, Sequence[int]] = 10000, noise_filter: bool = True,
                min_ess: Optional[float] = None) -> SignErrorResult:
    """Robust sign-error of each measure per intervention (Dziugaite et al. 2020; SPEC §10).

    An *environment* is an unordered pair of hyperparameter combinations {A, B} that differ in
    exactly one axis (its axis); ``replicate_axis`` is not an axis here, so every network of A
    is paired with every network of B. Per pair (i, j):

    * sign-error ``(1 - sign(c_i - c_j) * sign(g_i - g_j)) / 2`` (1 wrong order, 0 right, 1/2
      when the measure ties; with ``noise_filter=False`` also 1/2 when the gap ties);
    * weight ``w = max(v - 1/2, 0)``, ``v = max(0, 1 - 2 exp(-2 n (|g_i - g_j| / 2)^2))^2``
      (Hoeffding; n the smaller test-set size of the two), or ``w = 1`` with
      ``noise_filter=False`` (for a gap that is not a difference of error rates, such as
      ``loss_gap``, the bound does not hold).

    The environment loss of a measure is ``sum(w * sign_error) / sum(w)`` over its pairs where
    the measure and the gap are finite (a NaN drops only that measure's pairs); its effective
    sample size is ``ESS = sum(w)^2 / sum(w^2)``. It is kept when ``sum(w) > 0`` and
    ``ESS >= min_ess``. Every measure is read as "larger means a larger gap" (never flipped).

    Args:
        measures: measure name -> its value for each network.
        gap: the generalization gap of each network, in the same order.
        hparams: each hyperparameter (the replicate axis included) -> its value for each
            network (hashable values). Axes that do not vary form no environment.
        replicate_axis: the hyperparameter whose values are replicates (the training seed).
            Any name other than the default ``"seed"`` must be a key of ``hparams``; ``None``:
            every key of ``hparams`` is an axis.
        n_test: the test-set size the gaps were measured on: one int, or one per network.
        noise_filter: weigh pairs by the Hoeffding weight (else every weight is 1).
        min_ess: the smallest effective sample size of a kept environment; default
            ``S^2 / 2``, S the largest number of networks of one combination (4.5 with 3
            seeds, 0.5 with one).

    Returns:
        A :class:`SignErrorResult`: ``{measure: {axis | "all": {"n", "mean", "p90", "max"}}}``
        over the kept environments (``p90``: ``np.percentile``, linear; ``max``: the robust
        sign-error of the family; n = 0 and NaN elsewhere), with ``environments``, ``axes``,
        ``min_ess`` and ``notes``.

    Raises:
        ValueError: no measures, lengths that differ, a ``replicate_axis`` other than
            ``"seed"`` that is not in ``hparams``, ``n_test`` not positive (or of the wrong
            length), ``min_ess`` negative or not a number, or ``noise_filter`` not a bool.

    Examples:
        >>> s = sign_errors({"cna_margin": cm, "l2": l2}, gap,
        ...                 {"depth": depths, "width": widths, "seed": seeds}, n_test=10000)
        >>> s["cna_margin"]["width"]      # {"n": 4, "mean": 0.12, "p90": 0.3, "max": 0.41}
        >>> s["cna_margin"]["all"]["max"], s.environments[0]["losses"]["l2"]
    """
    g, names, x = _measure_matrix(measures, gap)                        # x: (n, M)
    n = len(g)
    keys: Dict[str, List[Any]] = {}
    for name, values in hparams.items():
        values = list(values)
        if len(values) != n:
            raise ValueError(f"hyperparameter {name!r} has {len(values)} values for {n} "
                             "networks; give one value per network, in the networks' order")
        keys[name] = values
    if replicate_axis is not None and replicate_axis not in keys and replicate_axis != "seed":
        raise ValueError(f"replicate_axis {replicate_axis!r} is not among the hyperparameters "
                         f"{list(keys)}: name one of them, or pass replicate_axis=None to "
                         "treat every hyperparameter as an axis")
    sizes = _test_sizes(n_test, n)
    if min_ess is not None and (not _is_number(min_ess) or not float(min_ess) >= 0
                                or math.isinf(float(min_ess))):
        raise ValueError(f"min_ess must be a number >= 0 (or None for S^2 / 2), got "
                         f"{min_ess!r}")
    if not isinstance(noise_filter, (bool, np.bool_)):
        raise ValueError(f"noise_filter must be True or False, got {noise_filter!r}")

    # each axis's values, coded by their sorted order (so an environment's a < b)
    axes, values, codes = [], {}, []
    for name, vals in keys.items():
        if name == replicate_axis:
            continue
        distinct = sorted({_key(v): v for v in vals}.values(), key=_order)
        if len(distinct) < 2:
            continue
        index = {_key(v): k for k, v in enumerate(distinct)}
        axes.append(name)
        values[name] = distinct
        codes.append([index[_key(v)] for v in vals])
    code = np.array(codes, dtype=np.int64).T.reshape(n, len(axes))      # (n, A)
    combos, combo = np.unique(code, axis=0, return_inverse=True)
    combo = combo.ravel()
    replicates = int(np.bincount(combo).max()) if n else 1
    result = SignErrorResult()
    result.axes, result.noise_filter = axes, bool(noise_filter)
    result.replicate_axis, result.replicates = replicate_axis, replicates
    result.min_ess = float(min_ess) if min_ess is not None else replicates ** 2 / 2.0
    result.notes, result.environments = [], []
    if not axes or n < 2:
        result.notes.append(f"no hyperparameter besides the replicate axis {replicate_axis!r} "
                            f"varies over the {n} network(s): no environment")
        for name in names:
            result[name] = {ALL_AXES: _summary(np.empty(0))}
        return result

    # the axis in which each pair of combinations differs, -1 unless exactly one
    differs = combos[:, None, :] != combos[None, :, :]                  # (C, C, A)
    one_axis = np.where(differs.sum(axis=2) == 1, differs.argmax(axis=2), -1)
    i, j = np.triu_indices(n, 1)
    axis_of = one_axis[combo[i], combo[j]]
    keep = axis_of >= 0
    i, j, axis_of = i[keep], j[keep], axis_of[keep]
    swap = code[i, axis_of] > code[j, axis_of]                          # i holds value a
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    env_keys, env = np.unique(np.stack([axis_of, combo[i], combo[j]], axis=1), axis=0,
                              return_inverse=True)
    env = env.ravel()
    n_env, m = len(env_keys), len(names)

    dg = g[i] - g[j]
    gap_ok = np.isfinite(dg)
    w = (hoeffding_weight(dg, np.minimum(sizes[i], sizes[j])) if noise_filter
         else gap_ok.astype(np.float64))
    ok = np.isfinite(x[i]) & np.isfinite(x[j]) & gap_ok[:, None]       # (P, M)
    with np.errstate(invalid="ignore"):
        error = (1.0 - np.sign(x[i] - x[j]) * np.sign(dg)[:, None]) / 2.0
    weight = np.where(ok, w[:, None], 0.0)
    error = np.where(ok, error, 0.0)

    slots = (env[:, None] * m + np.arange(m)).ravel()

    def per_env(values_: np.ndarray) -> np.ndarray:
        return np.bincount(slots, weights=values_.ravel(), minlength=n_env * m).reshape(n_env, m)

    total, squares, wrong = per_env(weight), per_env(weight ** 2), per_env(weight * error)
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = total ** 2 / squares
        loss = wrong / total
    # a tolerance: S^2/2 equal weights (e.g. 12.5 of a 5-seed environment) must pass exactly
    kept = (total > 0) & (ess >= result.min_ess * (1 - 1e-9))
    loss = np.where(kept, loss, math.nan)                               # (E, M)

    env_axis = env_keys[:, 0]
    for k, name in enumerate(names):
        row = {a: _summary(loss[(env_axis == t) & kept[:, k], k]) for t, a in enumerate(axes)}
        row[ALL_AXES] = _summary(loss[kept[:, k], k])
        result[name] = row

    w_env = np.bincount(env, weights=w, minlength=n_env)
    w2_env = np.bincount(env, weights=w ** 2, minlength=n_env)
    pairs = np.bincount(env, minlength=n_env)
    for e in np.flatnonzero(kept.any(axis=1)):
        t, ca, cb = env_keys[e]
        a = axes[t]
        result.environments.append({
            "axis": a, "a": values[a][combos[ca, t]], "b": values[a][combos[cb, t]],
            "fixed": {o: values[o][combos[ca, s]] for s, o in enumerate(axes) if s != t},
            "pairs": int(pairs[e]),
            "ess": float(w_env[e] ** 2 / w2_env[e]) if w2_env[e] > 0 else math.nan,
            "losses": {name: float(loss[e, k]) for k, name in enumerate(names)}})
    return result
