"""Statistics behind the paper's figures: numbers in, numbers out (no drawing; see `plots`).

* Fig. 1: `pick_extremes`, the lowest- and highest-alpha samples of a batch.
* Fig. 5: `trajectory_pca`, the PCA of a weight trajectory, and `cna_landscape`, CNA over the
  plane of its first two components (forward passes on a clone of the model; `set_flat_weights`
  maps a flat vector back onto a model).
* Fig. 6: `wilson_interval` (scipy's Wilson score interval), `quintile_errors` and
  `quintile_error_table`, the test error per alpha quintile with its intervals.

`cna_tf.plots` draws these; pipelines write them to reports.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from cna_tf.measures import CNAWarning, beta as compute_beta, cna

__all__ = ["as_vector", "pick_extremes", "set_flat_weights", "trajectory_pca", "cna_landscape",
           "wilson_interval", "quintile_errors", "quintile_error_table"]


def as_vector(x, name: str) -> np.ndarray:
    """``x`` as a non-empty flat float64 array; ``name`` names it in the error."""
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        v = v.reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    return v


# --------------------------------------------------------------------------------------------
# Fig. 1
# --------------------------------------------------------------------------------------------

def pick_extremes(alpha, layer_sums, images=None) -> Dict[str, Any]:
    """The lowest- and highest-alpha samples, as keyword arguments of `plots.depth_profile`.

    Samples with a non-finite alpha are ignored; ties go to the first such sample.

    Examples:
        >>> probe = cna_tf.ActivationProbe(model)
        >>> a = cna_tf.alpha(ds.x_test, value_range=ds.value_range)
        >>> sums = probe.layer_sums(ds.preprocess(ds.x_test))
        >>> fig = cna_tf.plots.depth_profile(**pick_extremes(a, sums, images=ds.x_test))

    Args:
        alpha: (n,) input complexities.
        layer_sums: (n, L) probe outputs z_d of the same samples.
        images: optional (n, ...) raw images, to show the two inputs in the figure.

    Returns:
        dict with ``layer_sums_low``, ``layer_sums_high`` ((L,) arrays), ``alpha_low``,
        ``alpha_high``, ``index_low``, ``index_high`` and, with ``images``, ``image_low`` and
        ``image_high``.
    """
    a = as_vector(alpha, "alpha")
    z = np.asarray(layer_sums, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != a.size:
        raise ValueError(f"layer_sums must have shape (n={a.size}, L), got {z.shape}")
    finite = np.isfinite(a)
    if not finite.any():
        raise ValueError("alpha has no finite value")
    idx = np.flatnonzero(finite)
    lo = int(idx[np.argmin(a[idx])])
    hi = int(idx[np.argmax(a[idx])])
    out: Dict[str, Any] = {"layer_sums_low": z[lo], "layer_sums_high": z[hi],
                           "alpha_low": float(a[lo]), "alpha_high": float(a[hi]),
                           "index_low": lo, "index_high": hi}
    if images is not None:
        out["image_low"], out["image_high"] = np.asarray(images[lo]), np.asarray(images[hi])
    return out


# --------------------------------------------------------------------------------------------
# Fig. 5
# --------------------------------------------------------------------------------------------

def set_flat_weights(model, vector) -> None:
    """Assigns a flat vector (as from `cna_tf.callback.flat_weights`) to the trainable weights.

    Raises:
        ValueError: if the vector's length differs from the number of trainable parameters.
    """
    vec = np.asarray(vector).reshape(-1)
    variables = model.trainable_weights
    total = sum(int(np.prod(v.shape)) for v in variables)
    if vec.size != total:
        raise ValueError(f"the vector has {vec.size} values but model '{model.name}' has "
                         f"{total} trainable parameters")
    start = 0
    for v in variables:
        size = int(np.prod(v.shape))
        v.assign(vec[start:start + size].reshape(tuple(v.shape)).astype(v.dtype))
        start += size


def trajectory_pca(trajectory: Mapping[int, np.ndarray], components: int = 2
                   ) -> Dict[str, np.ndarray]:
    """PCA of a weight trajectory ``{epoch: flat vector}`` by SVD of the centered stack.

    Each component's sign is chosen so that the last epoch's coordinate is >= the first's
    (training runs left to right on PC1).

    Returns:
        dict: ``epochs`` (T,), ``mean`` (P,) float64, ``components`` (k, P) orthonormal rows,
        ``coords`` (T, k) = (W - mean) @ components.T, ``explained_variance_ratio`` (k,).

    Raises:
        ValueError: for fewer than 2 states or vectors of different lengths.
    """
    epochs = np.array(sorted(trajectory), dtype=np.int64)
    if epochs.size < 2:
        raise ValueError(f"a trajectory needs at least 2 recorded states, got {epochs.size}")
    vectors = [np.asarray(trajectory[int(e)], dtype=np.float64).reshape(-1) for e in epochs]
    if len({v.size for v in vectors}) != 1:
        raise ValueError("the trajectory's weight vectors differ in length")
    x = np.stack(vectors)
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = int(components)
    if k > vt.shape[0]:
        pad = np.zeros((k - vt.shape[0], vt.shape[1]))  # cannot happen for T >= k
        vt, s = np.vstack([vt, pad]), np.concatenate([s, np.zeros(k - s.size)])
    comp = vt[:k].copy()
    coords = xc @ comp.T
    flip = coords[-1] < coords[0]
    comp[flip] *= -1.0
    coords[:, flip] *= -1.0
    var = s ** 2
    total = var.sum()
    evr = var[:k] / total if total > 0 else np.zeros(k)
    return {"epochs": epochs, "mean": mean, "components": comp, "coords": coords,
            "explained_variance_ratio": evr}


def cna_landscape(model, trajectory: Mapping[int, np.ndarray], alpha, inputs, grid: int = 15,
                  extent: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None,
                  pad: float = 0.25, method: str = "pearson", mode: str = "pre",
                  reduce: str = "sum", include_output: bool = False,
                  batch_size: Optional[int] = None) -> Dict[str, Any]:
    """CNA over the plane of the trajectory's first two principal components (paper Fig. 5).

    The trajectory (``CNACallback(record_trajectory=True).trajectory``: flattened trainable
    weights per measured epoch) is reduced with `trajectory_pca`. Every grid point (c1, c2) is
    mapped back to weight space by the inverse transform ``mean + c1 * PC1 + c2 * PC2``, set
    on a clone of ``model`` (``keras.models.clone_model``; non-trainable weights such as
    BatchNormalization statistics are copied from ``model`` and stay fixed), and CNA is computed
    there: ``cna(alpha, beta(ActivationProbe(clone).layer_sums(inputs)))``. ``model`` itself is
    not changed.

    Deviation from the paper: its PCA is over "all neuronal activation values" recorded at
    every minibatch, mapped back to "the network state ... for some representative minibatch".
    An activation vector does not define a network, so CNA cannot be evaluated at a point of an
    activation PCA; here the state is the weight vector, recorded at each measured epoch. CNA
    is also computed at each recorded state itself (``trajectory_cna``), since the projection
    onto two components drops the rest of the weights.

    Args:
        model: the trained Keras model (its architecture and non-trainable weights are used).
        trajectory: ``{epoch: flat weight vector}``.
        alpha: (n,) alpha of the inputs.
        inputs: (n, ...) model inputs (preprocessed) of the same samples.
        grid: points per axis (an odd number puts the mean weights at the center of a
            symmetric extent).
        extent: ``((pc1_min, pc1_max), (pc2_min, pc2_max))``; default the trajectory's bounding
            box padded by ``pad`` times its size on each side.
        pad: padding fraction of the default extent.
        method: correlation of CNA.
        mode, reduce, include_output: passed to `cna_tf.ActivationProbe`.
        batch_size: forward-pass batch size (default: all inputs in one batch, up to 4096).

    Returns:
        dict with the `trajectory_pca` entries (``epochs``, ``mean``, ``components``,
        ``coords``, ``explained_variance_ratio``) and ``pc1`` (grid,), ``pc2`` (grid,), ``cna``
        (grid, grid) with ``cna[i, j]`` at (``pc1[j]``, ``pc2[i]``) (``contourf(pc1, pc2, cna)``
        order), ``trajectory_cna`` (T,) CNA at the recorded states.
    """
    import keras

    from cna_tf.probe import ActivationProbe

    if int(grid) < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    a = as_vector(alpha, "alpha")
    pca = trajectory_pca(trajectory)
    coords = pca["coords"]
    if extent is None:
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        span = hi - lo
        span = np.where(span > 0, span, np.maximum(np.abs(hi), 1.0))
        extent = tuple((float(lo[k] - pad * span[k]), float(hi[k] + pad * span[k]))
                       for k in range(2))
    (x0, x1), (y0, y1) = extent
    pc1 = np.linspace(x0, x1, int(grid))
    pc2 = np.linspace(y0, y1, int(grid))

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    expected = sum(int(np.prod(v.shape)) for v in clone.trainable_weights)
    if pca["mean"].size != expected:
        raise ValueError(f"the trajectory's vectors have {pca['mean'].size} values but model "
                         f"'{model.name}' has {expected} trainable parameters")
    probe = ActivationProbe(clone, mode=mode, reduce=reduce, include_output=include_output)
    n = len(a)
    bs = int(batch_size) if batch_size is not None else max(1, min(n, 4096))

    x = np.asarray(inputs) if not isinstance(inputs, (dict, list, tuple)) else inputs

    def cna_at(vector: np.ndarray) -> float:
        set_flat_weights(clone, vector.astype(np.float32))
        sums = probe.layer_sums(x, batch_size=bs)
        if sums.shape[0] != n:
            raise ValueError(f"{sums.shape[0]} inputs but {n} alpha values")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CNAWarning)  # NaN regions show as blank
            return cna(a, compute_beta(sums), method=method)

    mean, comp = pca["mean"], pca["components"]
    values = np.empty((pc2.size, pc1.size))
    for i, c2 in enumerate(pc2):
        for j, c1 in enumerate(pc1):
            values[i, j] = cna_at(mean + np.array([c1, c2]) @ comp)
    traj_cna = np.array([cna_at(np.asarray(trajectory[int(e)], dtype=np.float64).reshape(-1))
                         for e in pca["epochs"]])
    out = dict(pca)
    out.update({"pc1": pc1, "pc2": pc2, "cna": values, "trajectory_cna": traj_cna})
    return out


# --------------------------------------------------------------------------------------------
# Fig. 6
# --------------------------------------------------------------------------------------------

def wilson_interval(k, n, confidence: float = 0.95) -> Tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k / n (elementwise; NaN where n = 0).

    Each interval is scipy's ``binomtest(k, n).proportion_ci(confidence, method="wilson")``.

    Examples:
        >>> lo, hi = wilson_interval([3, 0], [20, 0])
        >>> round(float(lo[0]), 4), bool(np.isnan(hi[1]))
        (0.0524, True)

    Args:
        k: successes (array-like of integers).
        n: trials (array-like of integers, broadcast against ``k``).
        confidence: confidence level in (0, 1).

    Returns:
        ``(low, high)`` float64 arrays of the broadcast shape (scalars become 0-d arrays).
    """
    from scipy.stats import binomtest

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    k, n = np.broadcast_arrays(np.asarray(k), np.asarray(n))
    low = np.full(k.shape, np.nan)
    high = np.full(k.shape, np.nan)
    for i in np.ndindex(k.shape):
        if n[i] > 0:
            ci = binomtest(int(k[i]), int(n[i])).proportion_ci(confidence_level=confidence,
                                                               method="wilson")
            low[i], high[i] = ci.low, ci.high
    return low, high


def quintile_errors(alpha, correct, confidence: float = 0.95, bins: int = 5
                    ) -> Dict[str, np.ndarray]:
    """Error rate per alpha quintile with Wilson score intervals (the numbers behind Fig. 6).

    Samples with a finite alpha are sorted by alpha (stable) and split into ``bins`` groups of
    equal size (sizes differ by at most one; tied alphas at a boundary are split by their
    order), lowest alpha first: group ``bins`` is the top 20 % complexity (the paper's blue
    curve).

    Args:
        alpha: (n,) input complexities.
        correct: (n,) per-sample correctness (bool or 0/1), e.g. ``CNACallback.snapshots[e]
            ["test"]``, aligned with ``CNACallback.snapshot_alpha["test"]``.
        confidence: confidence level of the intervals.
        bins: number of groups (5 = quintiles).

    Returns:
        dict of (bins,) arrays: ``quintile`` (1..bins), ``n``, ``errors`` (count), ``error``
        (rate), ``low``, ``high`` (interval of the rate), ``alpha_min``, ``alpha_max`` (range
        of alpha within the group), ``alpha_mean``; and ``confidence``.
    """
    a = as_vector(alpha, "alpha")
    c = np.asarray(correct).reshape(-1)
    if c.size != a.size:
        raise ValueError(f"alpha has {a.size} values but correct has {c.size}")
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    keep = np.isfinite(a)
    a, wrong = a[keep], ~c[keep].astype(bool)
    if a.size < bins:
        raise ValueError(f"{a.size} samples with a finite alpha cannot fill {bins} groups")
    groups = np.array_split(np.argsort(a, kind="stable"), int(bins))
    n = np.array([g.size for g in groups], dtype=np.int64)
    errors = np.array([int(wrong[g].sum()) for g in groups], dtype=np.int64)
    low, high = wilson_interval(errors, n, confidence)
    return {
        "quintile": np.arange(1, int(bins) + 1), "n": n, "errors": errors,
        "error": errors / n, "low": low, "high": high,
        "alpha_min": np.array([a[g].min() for g in groups]),
        "alpha_max": np.array([a[g].max() for g in groups]),
        "alpha_mean": np.array([a[g].mean() for g in groups]),
        "confidence": np.float64(confidence),
    }


def quintile_error_table(alpha, correct_by_epoch: Mapping[int, Any], confidence: float = 0.95,
                         bins: int = 5) -> List[Dict[str, float]]:
    """`quintile_errors` at every epoch, as rows for a report (CSV / Markdown).

    Returns:
        list of dicts ``{"epoch", "quintile", "n", "errors", "error", "low", "high",
        "alpha_min", "alpha_max"}``, by epoch then quintile.
    """
    rows: List[Dict[str, float]] = []
    for epoch in sorted(correct_by_epoch):
        q = quintile_errors(alpha, correct_by_epoch[epoch], confidence=confidence, bins=bins)
        for k in range(len(q["quintile"])):
            rows.append({"epoch": int(epoch), "quintile": int(q["quintile"][k]),
                         "n": int(q["n"][k]), "errors": int(q["errors"][k]),
                         "error": float(q["error"][k]), "low": float(q["low"][k]),
                         "high": float(q["high"][k]), "alpha_min": float(q["alpha_min"][k]),
                         "alpha_max": float(q["alpha_max"][k])})
    return rows
