"""Seed bootstrap of a ranking's scores (SPEC §9): intervals and paired fractions."""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse

from cna_tf.ranking.cmi import _entropy_bits, _mutual_information_bits, grid_codes
from cna_tf.ranking.correlations import _key, _measure_matrix

STATISTICS = ("pearson", "kendall", "granulated_kendall", "cmi")
_CHUNK_ELEMENTS = 1 << 21  # replicates are processed in chunks of about this many pair entries


class BootstrapResult(dict):
    """What :func:`bootstrap` returns: ``{measure: {statistic: (point, low, high)}}``.

    A plain dict of the SPEC §9 shape (so ``result[m]["kendall"]`` works everywhere a dict
    does), with these attributes:

    Attributes:
        mode: ``"seed"`` (one network per combination of the other hyperparameters, drawn per
            replicate) or ``"pool"`` (networks resampled with replacement).
        replicate_axis: the hyperparameter replicates were drawn over (``None`` in pool mode).
        replicates: the number of replicates.
        level: the interval's level.
        seed: the random seed.
        size: networks in each replicate (the number of combinations in seed mode, ``n`` in
            pool mode).
        axes: the hyperparameters the granulated Kendall coefficient and CMI range over.
        notes: human-readable remarks: the mode and why, why CMI is NaN, statistics that are
            undefined in some replicates (those replicates are left out of the interval).
        cmi_note: why CMI's interval is NaN (``""`` when it is defined).
        paired: ``paired[statistic][(a, b)]``: the share of replicates in which measure ``a``
            scores higher than measure ``b`` (ties count half; replicates in which either is
            NaN are left out; NaN when none is left), for every ordered pair of distinct
            measures and every statistic.
        samples: ``samples[measure][statistic]``: the replicates' values, shape
            ``(replicates,)``, NaN where undefined (every CMI sample is NaN in pool mode).
    """

    mode: str
    replicate_axis: Optional[str]
    replicates: int
    level: float
    seed: Any
    size: int
    axes: List[str]
    notes: List[str]
    cmi_note: str
    paired: Dict[str, Dict[Tuple[Any, Any], float]]
    samples: Dict[Any, Dict[str, np.ndarray]]

    def __repr__(self) -> str:
        return (f"BootstrapResult(mode={self.mode!r}, replicate_axis={self.replicate_axis!r}, "
                f"replicates={self.replicates}, level={self.level}, {dict.__repr__(self)})")


class _Plan:
    """How replicates are drawn: the mode, the groups of replicate networks, the axes."""

    def __init__(self, hparams: Mapping[str, Sequence[Any]], n: int,
                 replicate_axis: Optional[str]):
        if n < 2:
            raise ValueError(f"the bootstrap needs at least two networks, got {n}")
        keys: Dict[str, List[Any]] = {}
        self.values: Dict[str, List[Any]] = {}
        for name, values in hparams.items():
            values = list(values)
            if len(values) != n:
                raise ValueError(f"hyperparameter {name!r} has {len(values)} values for {n} "
                                 "networks; give one value per network, in the networks' order")
            keys[name] = [_key(v) for v in values]
            self.values[name] = values
        if replicate_axis is not None and replicate_axis not in keys and replicate_axis != "seed":
            raise ValueError(f"replicate_axis {replicate_axis!r} is not among the "
                             f"hyperparameters {list(keys)}: name one of them, or pass "
                             "replicate_axis=None to resample the networks as a pool")
        self.notes: List[str] = []
        varying = [a for a in keys if len(set(keys[a])) > 1]
        if replicate_axis is not None and replicate_axis in varying:
            self.mode, self.axis = "seed", replicate_axis
            self.axes = [a for a in varying if a != replicate_axis]
            index: Dict[tuple, int] = {}
            self.group_of = np.array([index.setdefault(tuple(keys[a][i] for a in self.axes),
                                                       len(index)) for i in range(n)])
            self.groups = [np.flatnonzero(self.group_of == g) for g in range(len(index))]
            self.size = len(self.groups)
            if all(len(g) == 1 for g in self.groups):
                self.notes.append(
                    f"every combination of {self.axes} has a single network (the values of "
                    f"{replicate_axis!r} never repeat one): all replicates are the networks as "
                    "given, and the intervals have zero width")
        else:
            self.mode, self.axis, self.axes, self.size = "pool", None, varying, n
            self.group_of = np.arange(n)
            self.groups = [np.array([i]) for i in range(n)]
            if replicate_axis is None:
                why = "replicate_axis=None"
            elif replicate_axis not in keys:
                why = f"{replicate_axis!r} is not among the hyperparameters {list(keys)}"
            else:
                why = f"{replicate_axis!r} does not vary"
            self.notes.append(f"no replicate axis ({why}): the {n} networks are resampled "
                              "with replacement (a pool, not a grid)")
        self.keys = keys
        self.n = n

    def draw(self, replicates: int, rng: np.random.Generator) -> np.ndarray:
        if self.mode == "pool":
            return rng.integers(0, self.n, size=(replicates, self.n))
        sizes = np.array([len(g) for g in self.groups])
        members = np.zeros((len(self.groups), int(sizes.max())), dtype=np.int64)
        for j, g in enumerate(self.groups):
            members[j, :len(g)] = g
        picks = rng.integers(0, sizes, size=(replicates, len(self.groups)))
        return members[np.arange(len(self.groups)), picks]


def _check_replicates(replicates: int) -> int:
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) \
            or replicates < 1:
        raise ValueError(f"replicates must be a whole number of at least 1, got {replicates!r}")
    return int(replicates)


def replicate_indices(hparams: Mapping[str, Sequence[Any]], n: int, *,
                      replicate_axis: Optional[str] = "seed", replicates: int = 1000,
                      seed: Any = 0) -> np.ndarray:
    """The networks in each replicate of :func:`bootstrap` (the same draws for the same seed).

    Args:
        hparams: each varied hyperparameter -> its value for each of the ``n`` networks.
        n: the number of networks.
        replicate_axis: as in :func:`bootstrap`.
        replicates: the number of replicates.
        seed: the seed of ``np.random.default_rng``.

    Returns:
        Network indices, ``(replicates, size)``. Seed mode: column j is the network drawn
        for the j-th combination of the other hyperparameters (combinations in the order of
        their first network), so every row is one network per combination. Pool mode:
        ``size = n`` indices drawn with replacement.

    Raises:
        ValueError: as :func:`bootstrap` (lengths, replicate axis, replicates).
    """
    replicates = _check_replicates(replicates)
    return _Plan(hparams, n, replicate_axis).draw(replicates, np.random.default_rng(seed))


def _sign(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sign(a − b) as float64; 0 where either is NaN."""
    return (a > b).astype(np.float64) - (a < b)


def _tau_b(num: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Kendall tau-b from the pair sums (scipy's formula); NaN where either side is constant."""
    ok = (dx > 0) & (dy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = num / np.sqrt(dx) / np.sqrt(dy)
    return np.where(ok, np.clip(tau, -1.0, 1.0), math.nan)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    ok = np.isfinite(a)
    count = ok.sum(axis=axis)
    total = np.where(ok, a, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), math.nan)


def _mean(s: np.ndarray) -> float:
    """The mean of the finite replicates (NaN when none is): measured from the first of them,
    so replicates that all agree give exactly their value, never one rounding off it."""
    ok = s[np.isfinite(s)]
    return float(ok[0] + np.mean(ok - ok[0])) if len(ok) else math.nan


class _Scorer:
    """Pearson, Kendall tau-b, granulated Kendall and CMI of many measures on many replicates.

    A replicate is a weight vector over the n networks (how many times each was drawn); a
    statistic on the drawn multiset equals its weighted form, so Kendall's pair sums are
    matrix products of the pair weights w_i·w_j with the fixed pair signs.
    """

    def __init__(self, plan: _Plan, x: np.ndarray, gap: np.ndarray):
        self.plan, n, m = plan, plan.n, x.shape[1]
        self.x_raw, self.g_raw = x, gap
        finite = np.isfinite(x) & np.isfinite(gap)[:, None]           # (n, M): the finite pairs
        self.finite = finite
        self.jx = np.where(finite, x, math.nan)
        self.jy = np.where(finite, gap[:, None], math.nan)
        i, j = np.triu_indices(n, 1)
        keep = plan.group_of[i] != plan.group_of[j]   # never drawn together in seed mode
        self.i, self.j = i[keep], j[keep]
        sx = _sign(self.jx[self.i], self.jx[self.j])                   # (P, M)
        sy = _sign(self.jy[self.i], self.jy[self.j])
        self.pair_sums = np.concatenate([sx * sy, np.abs(sx), np.abs(sy)], axis=1)  # (P, 3M)
        self.m = m
        # granulated Kendall: per axis, the pairs that agree on every other axis, by group
        self.psi = []
        for axis in plan.axes:
            others = [a for a in plan.axes if a != axis]
            ids: Dict[tuple, int] = {}
            key = np.array([ids.setdefault(tuple(plan.keys[a][k] for a in others), len(ids))
                            for k in range(n)])
            cols = np.flatnonzero(key[self.i] == key[self.j])
            group = key[self.i[cols]]
            s = len(ids)
            rows = np.repeat(np.arange(len(cols)), 3 * m)
            out_cols = (np.arange(3 * m)[None, :] * s + group[:, None]).ravel()
            z = sparse.csr_array((self.pair_sums[cols].ravel(), (rows, out_cols)),
                                  shape=(len(cols), 3 * m * s))
            values = sorted(set(plan.keys[axis]), key=repr)
            code = np.array([values.index(v) for v in plan.keys[axis]])
            onehot = np.eye(len(values))[code]                         # (n, k): for "varies"
            self.psi.append((cols, z, s, onehot))

    def scores(self, idx: np.ndarray, cmi_bins) -> Dict[str, np.ndarray]:
        """Every statistic for the replicates ``idx`` (c, size): name -> (c, M)."""
        c, n, m = len(idx), self.plan.n, self.m
        w = np.bincount((np.arange(c)[:, None] * n + idx).ravel(),
                        minlength=c * n).reshape(c, n).astype(np.float64)
        pw = w[:, self.i] * w[:, self.j]                               # (c, P)
        sums = pw @ self.pair_sums
        out = {"kendall": _tau_b(sums[:, :m], sums[:, m:2 * m], sums[:, 2 * m:]),
               "pearson": self._pearson(w)}
        psis = []
        for cols, z, s, onehot in self.psi:
            sums = np.asarray(pw[:, cols] @ z).reshape(c, 3, m, s)
            psi = _nanmean(_tau_b(sums[:, 0], sums[:, 1], sums[:, 2]), axis=2)   # (c, M)
            varies = ((w @ onehot) > 0).sum(axis=1) > 1                # the axis varies
            psis.append(np.where(varies[:, None], psi, math.nan))
        out["granulated_kendall"] = (_nanmean(np.stack(psis), axis=0) if psis
                                     else np.full((c, m), math.nan))
        out["cmi"] = (self._cmi(idx, cmi_bins) if cmi_bins is not None
                      else np.full((c, m), math.nan))
        return out

    def _pearson(self, w: np.ndarray) -> np.ndarray:
        wm = w[:, :, None] * self.finite[None]                         # (c, n, M)
        x0, y0 = np.where(self.finite, self.jx, 0.0), np.where(self.finite, self.jy, 0.0)
        total = wm.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = x0[None] - (np.einsum("cnm,nm->cm", wm, x0) / total)[:, None]
            dy = y0[None] - (np.einsum("cnm,nm->cm", wm, y0) / total)[:, None]
            sxx, syy = (wm * dx * dx).sum(axis=1), (wm * dy * dy).sum(axis=1)
            r = (wm * dx * dy).sum(axis=1) / (np.sqrt(sxx) * np.sqrt(syy))
        drawn = wm > 0

        def spread(v):
            return (np.where(drawn, v[None], -np.inf).max(axis=1)
                    > np.where(drawn, v[None], np.inf).min(axis=1))

        return np.where(spread(x0) & spread(y0), np.clip(r, -1.0, 1.0), math.nan)

    def _cmi(self, idx: np.ndarray, cmi_bins) -> np.ndarray:
        """conditional_mutual_information of each replicate (seed mode: one net per cell).

        The function's arithmetic (`_entropy_bits`, `_mutual_information_bits`) on every
        replicate at once: per ordered pair of axes, one bincount gives the (gap sign, measure
        sign) table of every bin of every replicate, laid out (replicate, bin, gap, measure)."""
        c = len(idx)
        x, g = self.x_raw[idx], self.g_raw[idx]                        # (c, size, M), (c, size)
        gap_sign = (g[:, :, None] > g[:, None, :]).reshape(c, -1)
        measure_signs = [(x[:, :, k, None] > x[:, None, :, k]).reshape(c, -1)
                         for k in range(self.m)]
        scores = np.full((len(cmi_bins), c, self.m), math.nan)
        for p, (bin_id, n_bins, filled) in enumerate(cmi_bins):
            cb = c * n_bins
            base = (np.arange(c)[:, None] * n_bins + bin_id[None, :]) + 2 * cb * gap_sign
            mean_h = None
            for k in range(self.m):
                counts = np.bincount((base + cb * measure_signs[k]).ravel(), minlength=4 * cb)
                tables = counts.reshape(2, 2, c, n_bins)[:, :, :, filled].transpose(2, 3, 0, 1)
                tables = tables.astype(np.float64)                     # (c, bins, 2, 2)
                if mean_h is None:                                     # the gap's entropy
                    mean_h = np.mean(_entropy_bits(tables.sum(axis=-1)), axis=1)
                mi = np.mean(_mutual_information_bits(tables), axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    scores[p, :, k] = np.where(mean_h > 1e-9, mi / mean_h, math.nan)
        best = np.where(np.isnan(scores), np.inf, scores).min(axis=0)  # (c, M)
        best = np.where(np.isinf(best), math.nan, best)
        undefined = np.isnan(x).any(axis=1) | np.isnan(g).any(axis=1)[:, None]
        return np.where(undefined, math.nan, best)


_CMI_AXES = ("CMI conditions on pairs of hyperparameters and needs at least three (with two, "
             "each bin of the pair holds a single pair of networks of a grid with one network "
             "per combination, so the gap sign is constant in every bin and nothing is left to "
             "predict)")


def _cmi_bins(plan: _Plan):
    """Seed mode: the fixed bins of every ordered pair of axes over the replicate's cells, or
    the reason CMI is undefined."""
    if len(plan.axes) < 3:
        return None, (f"CMI is NaN: besides the replicate axis {plan.axis!r} the networks vary "
                      f"{len(plan.axes)} hyperparameter(s) {plan.axes}; {_CMI_AXES}")
    first = [int(g[0]) for g in plan.groups]
    cells = {a: [plan.values[a][i] for i in first] for a in plan.axes}
    try:
        codes = grid_codes(cells, len(first))
    except ValueError as e:
        return None, f"CMI is NaN: {e}"
    bins = []
    for h1, h2 in itertools.permutations(codes, 2):
        (c1, k1), (c2, k2) = codes[h1], codes[h2]
        bin_id = (((c1[:, None] * k1 + c1[None, :]) * k2 + c2[:, None]) * k2
                  + c2[None, :]).ravel()
        n_bins = k1 * k1 * k2 * k2
        bins.append((bin_id, n_bins, np.bincount(bin_id, minlength=n_bins) > 0))
    return bins, ""


def _paired(samples: Mapping[Any, Mapping[str, np.ndarray]]) -> Dict[str, Dict[tuple, float]]:
    out: Dict[str, Dict[tuple, float]] = {}
    for stat in STATISTICS:
        table = out.setdefault(stat, {})
        for a, b in itertools.permutations(samples, 2):
            sa, sb = samples[a][stat], samples[b][stat]
            ok = np.isfinite(sa) & np.isfinite(sb)
            table[(a, b)] = (float(np.mean((sa[ok] > sb[ok]) + 0.5 * (sa[ok] == sb[ok])))
                             if ok.any() else math.nan)
    return out


def bootstrap(measures: Mapping[Any, Sequence[float]], gap: Sequence[float],
              hparams: Mapping[str, Sequence[Any]], *, replicate_axis: Optional[str] = "seed",
              replicates: int = 1000, level: float = 0.95, seed: Any = 0) -> BootstrapResult:
    """Intervals for how well each measure ranks networks by their gap (seed bootstrap, SPEC §9).

    Seed mode (``replicate_axis`` is a hyperparameter that varies): the networks are grouped
    by every other varied hyperparameter, and a replicate draws, independently for every
    group, one of its networks uniformly at random; every replicate is then a complete grid
    over the other axes. Pool mode (``replicate_axis`` is ``None``, is the default ``"seed"``
    but absent from ``hparams``, or does not vary): a replicate draws ``n`` of the ``n``
    networks with replacement. Every statistic of every measure is computed on the same
    replicates (common random numbers), which makes the paired fractions meaningful.

    Statistics (over the finite (measure, gap) pairs; NaN where undefined), each computed on
    every replicate: ``pearson``, ``kendall`` (tau-b), ``granulated_kendall`` (Ψ, over the
    varied hyperparameters other than the replicate axis, ``result.axes``) and ``cmi``
    (:func:`conditional_mutual_information` over ``result.axes``: NaN, ``result.cmi_note`` says
    why, with fewer than three such axes (with two, every bin holds one pair of networks), an
    incomplete grid, or in pool mode, where a resample repeats networks).

    Every point is the mean of its statistic over the replicates, in both modes (SPEC §9,
    amended): the point and its interval summarize the same draws, one network per combination
    in seed mode. The value on all networks as given (:func:`pearson`, :func:`kendall`,
    :func:`granulated_kendall`, :func:`conditional_mutual_information`) estimates another
    quantity and is not returned here.
    The interval is the percentile interval (``np.nanpercentile``, linear) of the replicates
    at ``level``; replicates where a statistic is undefined are left out of its point and
    interval (``result.notes`` counts them).

    Args:
        measures: measure name -> its value for each network.
        gap: the generalization gap of each network, in the same order.
        hparams: each varied hyperparameter (the replicate axis included) -> its value for
            each network (hashable values).
        replicate_axis: the hyperparameter whose values are exchangeable replicates (the
            training seed). Any name other than the default ``"seed"`` must be a key of
            ``hparams``; ``None`` resamples the networks as a pool.
        replicates: the number of bootstrap replicates (at least 1).
        level: the interval's coverage, in (0, 1).
        seed: the seed of ``np.random.default_rng``; the same seed gives the same result.

    Returns:
        A :class:`BootstrapResult`: ``{measure: {"pearson" | "kendall" |
        "granulated_kendall" | "cmi": (point, low, high)}}`` plus ``mode``, ``notes``,
        ``cmi_note``, ``paired[statistic][(a, b)]`` (share of replicates where ``a`` scores
        higher than ``b``, ties half) and ``samples[measure][statistic]`` (the replicates).

    Raises:
        ValueError: no measures, fewer than two networks, lengths that differ, a
            ``replicate_axis`` other than ``"seed"`` that is not in ``hparams``, ``level``
            outside (0, 1) or ``replicates`` < 1.

    Examples:
        >>> r = bootstrap({"cna_margin": cm, "l2": l2}, gap,
        ...               {"depth": depths, "width": widths, "lr": lrs, "seed": seeds})
        >>> point, low, high = r["cna_margin"]["kendall"]
        >>> r["cna_margin"]["cmi"], r.cmi_note, r.notes
        >>> r.paired["cmi"][("cna_margin", "l2")]   # 0.97: CNA-M above L2 in 97 % of replicates
    """
    replicates = _check_replicates(replicates)
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
            or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number strictly between 0 and 1 (e.g. 0.95), "
                         f"got {level!r}")
    level = float(level)
    g, names, x = _measure_matrix(measures, gap)
    n = len(g)
    plan = _Plan(hparams, n, replicate_axis)
    idx = plan.draw(replicates, np.random.default_rng(seed))
    notes = list(plan.notes)

    if plan.mode == "seed":
        cmi_bins, cmi_note = _cmi_bins(plan)
    else:
        cmi_bins, cmi_note = None, ("a resample with replacement repeats networks, and CMI "
                                    "needs a complete grid with each combination once: its "
                                    "point and interval are NaN in pool mode (the CMI of the "
                                    "networks as given is conditional_mutual_information's)")
    if cmi_note:
        notes.append(cmi_note)

    scorer = _Scorer(plan, x, g)
    per_pair = max(len(scorer.i), plan.size * plan.size, n * len(names), 1)
    chunk = max(1, _CHUNK_ELEMENTS // per_pair)
    parts = [scorer.scores(idx[s:s + chunk], cmi_bins) for s in range(0, replicates, chunk)]
    samples = {name: {stat: np.concatenate([p[stat][:, k] for p in parts])
                      for stat in STATISTICS} for k, name in enumerate(names)}

    # every point is its replicates' mean (SPEC §9): inside the range of what it summarizes
    lo_q, hi_q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    result = BootstrapResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # all-NaN slices -> NaN
        for name in names:
            row = {}
            for stat in STATISTICS:
                s = samples[name][stat]
                low, high = np.nanpercentile(s, [lo_q, hi_q])
                row[stat] = (_mean(s), float(low), float(high))
                bad = int(np.isnan(s).sum())
                if bad and not (stat == "cmi" and cmi_note):
                    why = ("a NaN value of the measure or the gap, or the gap sign constant "
                           "within every bin" if stat == "cmi" else "a constant side")
                    notes.append(f"{stat} of {name!r} is undefined ({why}) in {bad} of "
                                 f"{replicates} replicates; they are left out of its point and "
                                 "interval")
            result[name] = row
    result.mode, result.replicate_axis, result.replicates = plan.mode, plan.axis, replicates
    result.level, result.seed, result.size, result.axes = level, seed, plan.size, list(plan.axes)
    result.notes, result.cmi_note = notes, cmi_note
    result.samples, result.paired = samples, _paired(samples)
    return result
