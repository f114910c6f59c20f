"""The paper's measures on plain arrays: beta, CNA, the (alpha, beta) curves, CNA-A, margin, CNA-M.

Nothing here knows about Keras or MLflow: inputs are numpy arrays of per-sample values.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import shapely
from scipy import stats
from shapely.geometry import Polygon

__all__ = ["beta", "cna", "curves", "cna_area", "margins", "margin", "cna_margin",
           "class_indices", "probabilities", "CNAWarning"]


class CNAWarning(RuntimeWarning):
    """A measure is undefined for the given data (it returns NaN and says why)."""


def _warn(msg: str) -> None:
    warnings.warn(msg, CNAWarning, stacklevel=3)


def beta(layer_sums) -> np.ndarray:
    """Use of depth beta(x): least-squares slope of z_d(x) over d = 1..L (paper §3.2).

    beta = sum_d (d - mean d)(z_d - mean z) / sum_d (d - mean d)^2, for every row at once.

    Args:
        layer_sums: array of shape (n, L), the probe's reduced activations.

    Returns:
        float64 array of shape (n,).

    Raises:
        ValueError: if the array is not 2-D or L < 2.
    """
    z = np.asarray(layer_sums, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"beta expects layer sums of shape (n, L), got shape {z.shape}")
    n_layers = z.shape[1]
    if n_layers < 2:
        raise ValueError(
            f"beta is a slope over depth and needs at least 2 probe layers, got L={n_layers}; "
            "use a deeper model or ActivationProbe(..., include_output=True)")
    d = np.arange(1, n_layers + 1, dtype=np.float64)
    dc = d - d.mean()
    return z @ dc / (dc @ dc)


def _pair(a, b, what: str) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{what}: alpha and beta must have the same length, got {a.size} and "
                         f"{b.size}")
    return a, b


def cna(alpha, beta, method: str = "pearson") -> float:
    """CNA: correlation of input complexity and use of depth over a batch (paper eq. 2-3).

    Args:
        alpha: (n,) complexities.
        beta: (n,) slopes.
        method: ``"pearson"`` (paper), ``"spearman"`` or ``"kendall"``.

    Returns:
        The correlation, or NaN with a `CNAWarning` naming the cause when it is undefined (fewer
        than 2 points, non-finite values, or a vector with zero variance). Never raises for data
        seen during training.
    """
    a, b = _pair(alpha, beta, "cna")
    fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
    if method not in fn:
        raise ValueError(f"method must be one of {sorted(fn)}, got {method!r}")
    if a.size < 2:
        _warn(f"CNA is NaN: it needs at least 2 samples, got {a.size}")
        return float("nan")
    for name, v in (("alpha", a), ("beta", b)):
        if not np.isfinite(v).all():
            _warn(f"CNA is NaN: {name} has {int((~np.isfinite(v)).sum())} non-finite value(s)")
            return float("nan")
        if np.ptp(v) == 0:
            cause = ("all inputs have the same complexity (e.g. constant images)" if name ==
                     "alpha" else "all inputs have the same slope (e.g. a dead network)")
            _warn(f"CNA is NaN: {name} has zero variance: {cause}")
            return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(fn[method](a, b)[0])


def _smooth(v: np.ndarray, window: int) -> np.ndarray:
    # Each window summed on its own (not as differences of a running sum): a constant input
    # stays exactly constant, so the b_span == 0 case of `curves` is reached (a cumsum
    # difference leaves ~1e-18 that the min-max normalization blows up to an area of 0.26).
    return np.convolve(v, np.full(window, 1.0 / window), mode="valid")


def curves(alpha_train, beta_train, alpha_test, beta_test, window: int = 25,
           points: int = 100) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The train and test (alpha, beta) curves of paper eq. 4, on a common alpha grid.

    Each set is sorted by alpha and both coordinates are smoothed with a running mean of
    ``window`` ("valid" mode; the window shrinks to the set size for smaller sets). alpha and
    beta are min-max normalized with one min and max shared by train and test, and both curves
    are resampled at ``points`` evenly spaced alpha values over the overlap of their ranges.

    Returns:
        ``(grid, beta_train_curve, beta_test_curve)``, each of shape (points,), or None (with a
        `CNAWarning`) when the curves are undefined.
    """
    sets = []
    for tag, a, b in (("train", alpha_train, beta_train), ("test", alpha_test, beta_test)):
        a, b = _pair(a, b, f"cna_area ({tag})")
        keep = np.isfinite(a) & np.isfinite(b)
        if not keep.all():
            _warn(f"CNA-A: dropping {int((~keep).sum())} non-finite {tag} point(s)")
            a, b = a[keep], b[keep]
        if a.size < 2:
            _warn(f"CNA-A is NaN: the {tag} set has {a.size} usable point(s), need at least 2")
            return None
        order = np.argsort(a, kind="stable")
        k = min(int(window), a.size)
        sets.append((_smooth(a[order], k), _smooth(b[order], k)))
    (a_tr, b_tr), (a_te, b_te) = sets
    a_all, b_all = np.concatenate([a_tr, a_te]), np.concatenate([b_tr, b_te])
    a_span, b_span = np.ptp(a_all), np.ptp(b_all)
    if a_span == 0:
        _warn("CNA-A is NaN: alpha has zero range over train and test")
        return None
    a_min, b_min = a_all.min(), b_all.min()
    a_tr, a_te = (a_tr - a_min) / a_span, (a_te - a_min) / a_span
    b_tr = (b_tr - b_min) / b_span if b_span > 0 else np.zeros_like(b_tr)
    b_te = (b_te - b_min) / b_span if b_span > 0 else np.zeros_like(b_te)
    lo, hi = max(a_tr[0], a_te[0]), min(a_tr[-1], a_te[-1])
    if not lo < hi:
        _warn("CNA-A is NaN: the train and test alpha ranges do not overlap")
        return None
    grid = np.linspace(lo, hi, int(points))
    return grid, np.interp(grid, a_tr, b_tr), np.interp(grid, a_te, b_te)


def cna_area(alpha_train, beta_train, alpha_test, beta_test, window: int = 25,
             points: int = 100) -> float:
    """CNA-A: area enclosed between the train and test (alpha, beta) curves (paper eq. 5).

    The polygon is the train curve followed by the reversed test curve; where the curves cross,
    its repaired (valid) geometry splits into lobes whose areas add up instead of cancelling.

    Returns:
        The area in normalized units (0 for identical curves), or NaN with a `CNAWarning` when
        the curves are undefined.
    """
    c = curves(alpha_train, beta_train, alpha_test, beta_test, window=window, points=points)
    if c is None:
        return float("nan")
    grid, b_tr, b_te = c
    ring = np.concatenate([np.column_stack([grid, b_tr]), np.column_stack([grid, b_te])[::-1]])
    return float(shapely.make_valid(Polygon(ring)).area)


def probabilities(outputs, from_logits: Optional[bool] = None) -> Tuple[np.ndarray, bool]:
    """Softmax probabilities of model outputs, never applying softmax twice.

    Args:
        outputs: (n, classes) model outputs, probabilities or logits.
        from_logits: whether ``outputs`` are logits. None decides from the values: rows that
            are non-negative and sum to 1 (within 1e-3) are probabilities.

    Returns:
        ``(probs, was_logits)``: float64 (n, classes) probabilities and whether softmax was
        applied.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if from_logits is None:
        from_logits = not (np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0,
                                                                  atol=1e-3))
    if from_logits:
        z = outputs - outputs.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True), True
    return outputs, False


LABELS_HINT = ("integer class indices of shape (n,) or one-hot rows of shape (n, classes) with "
               "exactly one 1 per row (what keras.utils.to_categorical gives)")


def class_indices(labels, n: Optional[int] = None, num_classes: Optional[int] = None
                  ) -> np.ndarray:
    """The one label validator of every entry point (SPEC §6): labels -> class indices (n,).

    Accepted: integer class indices of shape (n,) (or a column (n, 1); integral floats such as
    ``3.0`` too) and one-hot rows of shape (n, classes) with exactly one 1 per row and zeros
    elsewhere, as ``keras.utils.to_categorical`` gives (any numeric or bool dtype). Any other
    2-D label (smoothed, mixed, multi-hot) is an error: CNA's margin and accuracy need one true
    class per point.

    Examples:
        >>> cna_tf.measures.class_indices(keras.utils.to_categorical([2, 0], 3))
        array([2, 0])

    Args:
        labels: the labels, array-like.
        n: the number of samples they must label (None: not checked).
        num_classes: the classifier's number of outputs; indices must lie in [0, num_classes)
            and one-hot rows must have num_classes columns (None: the range is not checked).

    Returns:
        int64 array of shape (n,).

    Raises:
        ValueError: naming the problem and the fix, for soft or multi-hot rows, non-integer or
            non-numeric labels, a bad shape, a wrong count, or indices outside the classes.
    """
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise ValueError(f"labels must be {LABELS_HINT}; they could not be read as one array: "
                         f"{e}") from None
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"labels must be {LABELS_HINT}; got non-numeric dtype {y.dtype}. "
                         "Map class names to indices first (e.g. with np.unique(names, "
                         "return_inverse=True)).")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        k = y.shape[1]
        if num_classes is not None and k != int(num_classes):
            raise ValueError(
                f"one-hot labels have {k} columns but the model has {num_classes} outputs; "
                f"pass one column per class (keras.utils.to_categorical(y, {num_classes})) or "
                "integer class indices")
        with np.errstate(invalid="ignore"):
            hot = (y == 1)
            row_ok = ((y == 0) | hot).all(axis=1) & (hot.sum(axis=1) == 1)
        if not row_ok.all():
            i = int(np.argmin(row_ok))
            shown = "[" + ", ".join(f"{float(v):.4g}" for v in y[i][:8]) + "]"
            raise ValueError(
                f"labels of shape {y.shape} must be one-hot rows with exactly one 1 per row "
                f"and zeros elsewhere (what keras.utils.to_categorical gives); row {i} is "
                f"{shown}{' ...' if k > 8 else ''}, {int((~row_ok).sum())} row(s) are not "
                "one-hot (smoothed or mixed labels?). Pass the hard labels: integer class "
                "indices of shape (n,) or exact one-hot rows (e.g. labels.argmax(axis=1) of "
                "soft labels, if the largest entry is the true class).")
        y = hot.argmax(axis=1)
    elif y.ndim != 1:
        raise ValueError(f"labels must be {LABELS_HINT}; got shape {y.shape}")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        bad = ~np.isfinite(y) | (y != np.round(y)) if y.size else np.zeros(0, bool)
        if bad.any():
            raise ValueError(
                f"labels must be {LABELS_HINT}; got {y.dtype} values such as "
                f"{y[bad][:3].tolist()} (soft or fractional labels?). Pass the integer class "
                "of each point.")
    y = y.astype(np.int64, copy=False)
    if n is not None and y.size != int(n):
        raise ValueError(f"got {y.size} labels for {n} samples; pass exactly one label per "
                         "sample, in the samples' order")
    if y.size and num_classes is not None:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= int(num_classes):
            raise ValueError(f"labels must lie in [0, {int(num_classes) - 1}] for a model with "
                             f"{num_classes} outputs; found {lo}..{hi}")
    return y


def margins(outputs, labels, on: str = "softmax", from_logits: Optional[bool] = None
            ) -> np.ndarray:
    """Per-point margin gamma = f(x)[true] - max_{j != true} f(x)[j] (paper eq. 6).

    Args:
        outputs: (n, classes) model outputs, probabilities or logits.
        labels: (n,) integer class indices or (n, classes) one-hot rows (`class_indices`).
        on: ``"softmax"`` (paper: f = softmax probabilities) or ``"logits"`` (the published
            code's variant). Logits recovered from probabilities as log p give the same margins,
            since softmax is shift-invariant.
        from_logits: whether ``outputs`` are logits. None decides from the values: rows that are
            non-negative and sum to 1 are probabilities. Softmax is never applied twice.

    Returns:
        float64 array of shape (n,).
    """
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"margins expects outputs of shape (n, classes >= 2), got {out.shape}")
    if on not in ("softmax", "logits"):
        raise ValueError(f"on must be 'softmax' or 'logits', got {on!r}")
    y = class_indices(labels, n=out.shape[0], num_classes=out.shape[1])
    probs, was_logits = probabilities(out, from_logits)
    if on == "softmax":
        f = probs
    else:
        f = out if was_logits else np.log(np.clip(out, np.finfo(np.float64).tiny, None))
    rows = np.arange(out.shape[0])
    true = f[rows, y]
    others = f.copy()
    others[rows, y] = -np.inf
    return true - others.max(axis=1)


def margin(outputs, labels, percentile: float = 5, on: str = "softmax",
           from_logits: Optional[bool] = None) -> float:
    """Network margin gamma_margin: the ``percentile``-th percentile of `margins` (paper eq. 6).

    Args:
        outputs: (n, classes) outputs on the training points evaluated.
        labels: (n,) integer class indices or (n, classes) one-hot rows (`class_indices`).
        percentile: in [0, 100]; the paper uses 1 % to 10 %, default 5.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return float(np.percentile(margins(outputs, labels, on=on, from_logits=from_logits),
                               percentile))


def cna_margin(area: float, network_margin: float) -> float:
    """CNA-M = gamma_margin * CNA-A (paper eq. 7)."""
    return float(network_margin) * float(area)
