"""The paper's figures drawn from plain arrays (matplotlib, Agg backend); each returns a Figure.

Figure numbers are those of Gain & Siegelmann, ICML 2020:

* Fig. 1 `depth_profile` (with `pick_extremes`): z_d over depth for a low- and a high-alpha input.
* Fig. 3 `alpha_beta_curves`: train vs test (alpha, beta) curves and the CNA-A region.
* Fig. 4 `loss_and_cna`: training loss and CNA over epochs (`metric_histories` reads them from an
  MLflow run).
* Fig. 5 `trajectory_pca` (computed by `cna_landscape`): PCA of the weight trajectory over
  training on top of a CNA contour map.
* Fig. 6 `error_by_alpha_quintile` (numbers: `quintile_errors`, `quintile_error_table`): test
  error over epochs per alpha quintile, with Wilson intervals.
* Fig. 7 `cna_vs_accuracy`: CNA against test accuracy with a quadratic fit and Pearson r.
* Fig. 8/9 `correlation_bars`: correlation of each measure with the gap, per group.

Every function takes numpy arrays (or lists) and returns a ``matplotlib.figure.Figure``; close it
with `close` after saving. Nothing here trains a model; `cna_landscape` runs forward passes only.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cna_tf.measures import CNAWarning, beta as compute_beta, cna, curves  # noqa: E402

__all__ = [
    "alpha_beta_curves", "depth_profile", "pick_extremes", "loss_and_cna", "metric_histories",
    "loss_and_cna_from_run", "set_flat_weights", "pca_trajectory", "cna_landscape",
    "trajectory_pca", "wilson_interval", "quintile_errors", "quintile_error_table",
    "error_by_alpha_quintile", "cna_vs_accuracy", "correlation_bars", "METRIC_LABELS", "close",
]

#: Display names of the measures in `correlation_bars` (others are shown as they are).
METRIC_LABELS: Dict[str, str] = {
    "cna_train": "CNA (train)", "cna_test": "CNA (test)", "cna_area": "CNA-A",
    "cna_margin": "CNA-M", "margin": "margin", "l2": "L2", "l2_path": "L2-path",
    "spectral": "Spectral", "bound_2018": "2018 bound",
}
_METRIC_ORDER = ("cna_train", "cna_test", "cna_area", "cna_margin", "margin", "l2", "l2_path",
                 "spectral", "bound_2018")
ALL_NETS = "All Nets"


def close(fig: Figure) -> None:
    """Frees a figure returned by this module (pyplot keeps a reference otherwise)."""
    plt.close(fig)


def _vec(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        v = v.reshape(-1)
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    return v


# --------------------------------------------------------------------------------------------
# Fig. 3
# --------------------------------------------------------------------------------------------

def alpha_beta_curves(alpha_train, beta_train, alpha_test, beta_test, window: int = 25,
                      points: int = 100, title: Optional[str] = None) -> Figure:
    """Paper Fig. 3: train vs test (alpha, beta) curves with the CNA-A region shaded.

    Args:
        alpha_train, beta_train, alpha_test, beta_test: per-sample values of each split.
        window, points: as in `cna_tf.cna_area`.
        title: figure title (default shows CNA-A).

    Returns:
        A matplotlib Figure with one axes ("normalized alpha", "normalized beta").
    """
    from cna_tf.measures import cna_area
    fig, ax = plt.subplots(figsize=(5, 4))
    c = curves(alpha_train, beta_train, alpha_test, beta_test, window=window, points=points)
    if c is None:
        ax.text(0.5, 0.5, "curves undefined (see warnings)", ha="center", va="center")
    else:
        grid, b_tr, b_te = c
        ax.plot(grid, b_tr, label="train", color="tab:blue")
        ax.plot(grid, b_te, label="test", color="tab:orange")
        ax.fill_between(grid, b_tr, b_te, color="tab:gray", alpha=0.3, label="CNA-A")
        ax.legend()
    area = cna_area(alpha_train, beta_train, alpha_test, beta_test, window=window,
                    points=points) if c is not None else float("nan")
    ax.set_xlabel("normalized alpha (input complexity)")
    ax.set_ylabel("normalized beta (use of depth)")
    ax.set_title(title or f"(alpha, beta) curves, CNA-A = {area:.4f}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 1
# --------------------------------------------------------------------------------------------

def pick_extremes(alpha, layer_sums, images=None) -> Dict[str, Any]:
    """The lowest- and highest-alpha samples, as keyword arguments of `depth_profile`.

    Samples with a non-finite alpha are ignored; ties go to the first such sample.

    Example:
        >>> probe = cna_tf.ActivationProbe(model)
        >>> a = cna_tf.alpha(ds.x_test, value_range=ds.value_range)
        >>> sums = probe.layer_sums(ds.preprocess(ds.x_test))
        >>> fig = depth_profile(**pick_extremes(a, sums, images=ds.x_test))

    Args:
        alpha: (n,) input complexities.
        layer_sums: (n, L) probe outputs z_d of the same samples.
        images: optional (n, ...) raw images, to show the two inputs in the figure.

    Returns:
        dict with ``layer_sums_low``, ``layer_sums_high`` ((L,) arrays), ``alpha_low``,
        ``alpha_high``, ``index_low``, ``index_high`` and, with ``images``, ``image_low`` and
        ``image_high``.
    """
    a = _vec(alpha, "alpha")
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


def _show_image(inset, image, label: str) -> None:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        lo, hi = img.min(), img.max()
        inset.imshow((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img))
    else:
        inset.imshow(img, cmap="gray_r")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title(label, fontsize=7)


def depth_profile(layer_sums_low, layer_sums_high, alpha_low: Optional[float] = None,
                  alpha_high: Optional[float] = None, index_low: Optional[int] = None,
                  index_high: Optional[int] = None, image_low=None, image_high=None,
                  layer_names: Optional[Sequence[str]] = None,
                  title: Optional[str] = None) -> Figure:
    """Paper Fig. 1: activation z_d against depth d = 1..L for a low- and a high-alpha input.

    Each input's points (d, z_d) are drawn with its least-squares line
    z̄ + beta (d - d̄), whose slope is that input's beta (`cna_tf.beta`). In a network with a
    positive CNA the high-complexity input has the steeper slope (relatively more activation in
    the deeper layers). `pick_extremes` chooses the two inputs from a batch.

    Args:
        layer_sums_low: (L,) z_d of the low-complexity input.
        layer_sums_high: (L,) z_d of the high-complexity input.
        alpha_low, alpha_high: their alpha values (shown in the legend when given).
        index_low, index_high: their sample indices (shown in the legend when given).
        image_low, image_high: their raw images, drawn in a narrow column on the right.
        layer_names: names of the L probe layers, used as tick labels.
        title: figure title.

    Returns:
        A Figure whose ``fig.axes[0]`` is the plot (x "depth d (probe layer)", y "z_d (summed
        activation)"; two point series and two dashed slope lines), followed by one small axes
        per image given.
    """
    z_lo = _vec(layer_sums_low, "layer_sums_low")
    z_hi = _vec(layer_sums_high, "layer_sums_high")
    if z_lo.size != z_hi.size:
        raise ValueError(f"both profiles need the same depth, got {z_lo.size} and {z_hi.size}")
    n_layers = z_lo.size
    b_lo, b_hi = compute_beta(np.stack([z_lo, z_hi]))  # raises for L < 2
    d = np.arange(1, n_layers + 1, dtype=np.float64)
    images = [(im, tag) for im, tag in ((image_low, "low alpha"), (image_high, "high alpha"))
              if im is not None]
    if images:
        fig = plt.figure(figsize=(6.8, 4))
        gs = fig.add_gridspec(len(images), 2, width_ratios=[5, 1])
        ax = fig.add_subplot(gs[:, 0])
        for r, (im, tag) in enumerate(images):
            _show_image(fig.add_subplot(gs[r, 1]), im, tag)
    else:
        fig, ax = plt.subplots(figsize=(5.5, 4))
    for z, b, a, i, color, tag in ((z_lo, b_lo, alpha_low, index_low, "tab:blue", "low"),
                                   (z_hi, b_hi, alpha_high, index_high, "tab:red", "high")):
        parts = [f"{tag} alpha"]
        if i is not None:
            parts.append(f"#{i}")
        if a is not None:
            parts.append(f"(alpha = {a:.3f})")
        ax.plot(d, z, "o-", color=color, label=" ".join(parts))
        ax.plot(d, z.mean() + b * (d - d.mean()), "--", color=color, alpha=0.8,
                label=f"slope beta = {b:.4g}")
    ax.axhline(0.0, color="0.7", lw=0.6, zorder=0)
    ax.set_xticks(d)
    if layer_names is not None:
        if len(layer_names) != n_layers:
            raise ValueError(f"layer_names has {len(layer_names)} entries for {n_layers} layers")
        ax.set_xticklabels(list(layer_names), rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("depth d (probe layer)")
    ax.set_ylabel("z_d (summed activation)")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Activation vs depth (Fig. 1)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 4
# --------------------------------------------------------------------------------------------

def loss_and_cna(epochs, loss, cna_values, cna_epochs=None, loss_label: str = "training loss",
                 cna_label: str = "CNA", title: Optional[str] = None) -> Figure:
    """Paper Fig. 4: training loss and CNA over training time, on twin y axes.

    The paper's finding (SPEC §5): CNA rises as the loss falls, with inflections at similar
    times. Loss and CNA may be sampled at different epochs (e.g. Keras' per-epoch loss at
    1..E and `CNACallback`'s CNA at 0..E): pass ``cna_epochs`` then. Non-finite values are drawn
    as gaps.

    Args:
        epochs: (T,) epochs of ``loss``.
        loss: (T,) training loss.
        cna_values: (S,) CNA values.
        cna_epochs: (S,) their epochs (default: ``epochs``).
        loss_label, cna_label: y-axis labels.
        title: figure title.

    Returns:
        A Figure with two axes sharing x ("epoch"): ``fig.axes[0]`` the loss (left),
        ``fig.axes[1]`` the CNA (right), one line each.
    """
    e_loss, y_loss = _vec(epochs, "epochs"), _vec(loss, "loss")
    y_cna = _vec(cna_values, "cna_values")
    e_cna = e_loss if cna_epochs is None else _vec(cna_epochs, "cna_epochs")
    if e_loss.size != y_loss.size:
        raise ValueError(f"epochs ({e_loss.size}) and loss ({y_loss.size}) differ in length")
    if e_cna.size != y_cna.size:
        raise ValueError(f"CNA epochs ({e_cna.size}) and cna_values ({y_cna.size}) differ in "
                         "length; pass cna_epochs")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax2 = ax.twinx()
    l1 = ax.plot(e_loss, y_loss, "-", color="tab:red", label=loss_label)
    l2 = ax2.plot(e_cna, y_cna, "-o", ms=3, color="tab:blue", label=cna_label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(loss_label, color="tab:red")
    ax2.set_ylabel(cna_label, color="tab:blue")
    ax.tick_params(axis="y", colors="tab:red")
    ax2.tick_params(axis="y", colors="tab:blue")
    ax.legend(l1 + l2, [ln.get_label() for ln in l1 + l2], loc="center right", fontsize=8)
    ax.set_title(title or "Training loss and CNA (Fig. 4)")
    fig.tight_layout()
    return fig


def metric_histories(run_id: str, keys: Union[str, Iterable[str]], client=None,
                     duplicates: str = "first") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Metric histories of an MLflow run: ``{key: (steps, values)}``, sorted by step.

    `CNACallback` logs at ``step`` = epochs completed (0 = initialization). MLflow's Keras
    autologging logs the ``logs`` dict (Keras' ``loss``, and the callback's keys it contains) at
    0-based epoch indices, i.e. step ``e`` holds the value after epoch ``e + 1``. A key logged
    by both therefore has two values at most steps: the default ``duplicates="first"`` keeps the
    one logged first, which for a key written by both is the callback's (it logs step ``e``
    one epoch before autolog does).

    Args:
        run_id: the MLflow run.
        keys: one metric name or several.
        client: an ``mlflow.MlflowClient`` (default: one for the current tracking URI).
        duplicates: for several values at one step keep the ``"first"`` or ``"last"`` logged
            (by timestamp, then store order), or ``"all"`` of them.

    Returns:
        dict mapping each key to ``(steps int64 (k,), values float64 (k,))``; a key the run
        never logged maps to two empty arrays.
    """
    if duplicates not in ("first", "last", "all"):
        raise ValueError(f"duplicates must be 'first', 'last' or 'all', got {duplicates!r}")
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    keys = [keys] if isinstance(keys, str) else list(keys)
    out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for key in keys:
        hist = list(client.get_metric_history(run_id, key))
        order = sorted(range(len(hist)), key=lambda i: (hist[i].step, hist[i].timestamp, i))
        rows = [(int(hist[i].step), float(hist[i].value)) for i in order]
        if duplicates != "all":
            kept: Dict[int, float] = {}
            for step, value in rows:
                if duplicates == "last" or step not in kept:
                    kept[step] = value
            rows = sorted(kept.items())
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([r[1] for r in rows], dtype=np.float64)
        out[key] = (steps, values)
    return out


def loss_and_cna_from_run(run_id: str, loss_key: str = "loss", cna_key: str = "cna_train",
                          loss_step_offset: int = 1, client=None, **kwargs) -> Figure:
    """Fig. 4 from an MLflow run: `loss_and_cna` on two of its metric histories.

    Args:
        run_id: the MLflow run.
        loss_key: training-loss metric (``"loss"`` from Keras autologging).
        cna_key: CNA metric logged by `CNACallback` (``"cna_train"`` or ``"cna_test"``).
        loss_step_offset: added to the loss steps to make them epochs completed; 1 for MLflow's
            Keras autologging (0-based epoch index), 0 for a loss logged at epochs completed.
        client: an ``mlflow.MlflowClient``.
        **kwargs: passed to `loss_and_cna`.

    Raises:
        ValueError: if the run has no values for one of the keys.
    """
    h = metric_histories(run_id, [loss_key, cna_key], client=client)
    for key in (loss_key, cna_key):
        if h[key][0].size == 0:
            raise ValueError(f"run {run_id} has no metric {key!r}")
    (s_loss, v_loss), (s_cna, v_cna) = h[loss_key], h[cna_key]
    kwargs.setdefault("cna_label", cna_key)
    return loss_and_cna(s_loss + int(loss_step_offset), v_loss, v_cna, cna_epochs=s_cna,
                        **kwargs)


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


def pca_trajectory(trajectory: Mapping[int, np.ndarray], components: int = 2
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
    weights per measured epoch) is reduced with `pca_trajectory`. Every grid point (c1, c2) is
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
        dict with the `pca_trajectory` entries (``epochs``, ``mean``, ``components``,
        ``coords``, ``explained_variance_ratio``) and ``pc1`` (grid,), ``pc2`` (grid,), ``cna``
        (grid, grid) with ``cna[i, j]`` at (``pc1[j]``, ``pc2[i]``) (``contourf(pc1, pc2, cna)``
        order), ``trajectory_cna`` (T,) CNA at the recorded states.
    """
    import keras

    from cna_tf.probe import ActivationProbe

    if int(grid) < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    a = _vec(alpha, "alpha")
    pca = pca_trajectory(trajectory)
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

    def layer_sums() -> np.ndarray:
        # predict_on_batch skips predict()'s per-call data pipeline (~40x faster on the MLP).
        if isinstance(x, np.ndarray) and len(x) > bs:
            return np.concatenate([np.asarray(probe.sums_model.predict_on_batch(x[i:i + bs]))
                                   for i in range(0, len(x), bs)])
        return np.asarray(probe.sums_model.predict_on_batch(x))

    def cna_at(vector: np.ndarray) -> float:
        set_flat_weights(clone, vector.astype(np.float32))
        sums = layer_sums()
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


def trajectory_pca(model, trajectory: Mapping[int, np.ndarray], alpha, inputs, grid: int = 15,
                   landscape: Optional[Mapping[str, Any]] = None, levels: int = 15,
                   annotate_epochs: bool = True, title: Optional[str] = None,
                   **kwargs) -> Figure:
    """Paper Fig. 5: the training trajectory in PCA space over a CNA contour map.

    Draws ``contourf`` of the CNA landscape (`cna_landscape`), the trajectory projected onto
    PC1/PC2 as a red line with a marker per recorded epoch, and "Start"/"End" labels.

    Example:
        >>> cb = cna_tf.CNACallback(..., record_trajectory=True)
        >>> model.fit(x, y, epochs=20, callbacks=[cb])
        >>> fig = trajectory_pca(model, cb.trajectory, cb.test.alpha, cb.test.inputs)

    Args:
        model, trajectory, alpha, inputs, grid: as in `cna_landscape`.
        landscape: a precomputed `cna_landscape` result (then the other data arguments are not
            used and nothing is computed).
        levels: number of contour levels.
        annotate_epochs: write the epoch next to each marker.
        title: figure title.
        **kwargs: passed to `cna_landscape` (``extent``, ``pad``, ``method``, ...).

    Returns:
        A Figure: ``fig.axes[0]`` the map (x "PC1 (..% of variance)", y "PC2 (..%)") and
        ``fig.axes[1]`` its colorbar ("CNA").
    """
    if landscape is None:
        landscape = cna_landscape(model, trajectory, alpha, inputs, grid=grid, **kwargs)
    ls = landscape
    fig, ax = plt.subplots(figsize=(6, 4.8))
    z = np.ma.masked_invalid(ls["cna"])
    if z.count():
        cs = ax.contourf(ls["pc1"], ls["pc2"], z, levels=levels, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="CNA")
    else:
        ax.text(0.5, 0.5, "CNA undefined on the whole grid", transform=ax.transAxes,
                ha="center", va="center")
    xy = ls["coords"]
    ax.plot(xy[:, 0], xy[:, 1], "-o", color="red", ms=3, lw=1.5, label="trajectory")
    ax.annotate("Start", xy[0], xytext=(4, 4), textcoords="offset points", color="red",
                fontweight="bold")
    ax.annotate("End", xy[-1], xytext=(4, 4), textcoords="offset points", color="red",
                fontweight="bold")
    if annotate_epochs and len(xy) > 2:
        for e, (px, py) in zip(ls["epochs"][1:-1], xy[1:-1]):
            ax.annotate(str(int(e)), (px, py), xytext=(3, -8), textcoords="offset points",
                        color="white", fontsize=7)
    evr = ls["explained_variance_ratio"]
    ax.set_xlabel(f"PC1 ({evr[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({evr[1]:.0%} of variance)")
    t0, t1 = ls["trajectory_cna"][0], ls["trajectory_cna"][-1]
    ax.set_title(title or f"Weight trajectory over the CNA landscape (Fig. 5)\n"
                          f"CNA at start {t0:+.3f}, at end {t1:+.3f}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 6
# --------------------------------------------------------------------------------------------

def wilson_interval(k, n, confidence: float = 0.95) -> Tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k / n (elementwise; NaN where n = 0).

    Returns:
        ``(low, high)`` arrays (scalars become 0-d arrays).
    """
    from scipy.stats import norm
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = float(norm.ppf(0.5 + confidence / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = np.clip(center - half, 0, 1), np.clip(center + half, 0, 1)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


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
    a = _vec(alpha, "alpha")
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


def error_by_alpha_quintile(alpha, correct_by_epoch: Mapping[int, Any], confidence: float = 0.95,
                            bins: int = 5, band: bool = True, logy: bool = False,
                            title: Optional[str] = None) -> Figure:
    """Paper Fig. 6: mean test error over epochs for each alpha quintile.

    The paper reports a monotone ordering (higher alpha, more error; up to 16x), strongest
    early in training. Each line is one quintile (lowest alpha dark blue ... highest orange), with its
    Wilson interval shaded when ``band``.

    Example:
        >>> cb = cna_tf.CNACallback(..., full_every=1)
        >>> model.fit(..., callbacks=[cb])
        >>> fig = error_by_alpha_quintile(cb.snapshot_alpha["test"],
        ...                               {e: s["test"] for e, s in cb.snapshots.items()})

    Args:
        alpha: (n,) alpha of the evaluated samples.
        correct_by_epoch: ``{epoch: (n,) correctness}`` aligned with ``alpha``.
        confidence, bins: as in `quintile_errors`.
        band: shade the intervals.
        logy: logarithmic error axis.
        title: figure title.

    Returns:
        A Figure with one axes (x "epoch", y "test error") and one line per quintile.
    """
    if not correct_by_epoch:
        raise ValueError("correct_by_epoch is empty")
    epochs = np.array(sorted(correct_by_epoch), dtype=np.float64)
    per_epoch = [quintile_errors(alpha, correct_by_epoch[int(e)], confidence, bins)
                 for e in epochs]
    err = np.stack([q["error"] for q in per_epoch])  # (T, bins)
    low = np.stack([q["low"] for q in per_epoch])
    high = np.stack([q["high"] for q in per_epoch])
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("plasma")
    for k in range(err.shape[1]):
        color = cmap(0.85 * k / max(1, err.shape[1] - 1))
        lo_pct, hi_pct = 100 * k // bins, 100 * (k + 1) // bins
        tag = " (lowest alpha)" if k == 0 else (" (highest alpha)" if k == bins - 1 else "")
        ax.plot(epochs, err[:, k], "-o", ms=3, color=color,
                label=f"Q{k + 1}: alpha {lo_pct}-{hi_pct}%{tag}")
        if band:
            ax.fill_between(epochs, low[:, k], high[:, k], color=color, alpha=0.15, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test error")
    ax.legend(fontsize=7, title=f"alpha quintile ({confidence:.0%} Wilson)",
              title_fontsize=7)
    ax.set_title(title or "Test error by input-complexity quintile (Fig. 6)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 7
# --------------------------------------------------------------------------------------------

def cna_vs_accuracy(cna_values, test_acc, groups: Optional[Sequence[Any]] = None,
                    deg: int = 2, title: Optional[str] = None) -> Figure:
    """Paper Fig. 7: CNA against test accuracy over network instances, with a polynomial fit.

    Pairs with a non-finite value are left out. The fit is ``numpy.polyfit(test_acc, cna,
    deg)`` (quadratic by default), drawn when there are more distinct accuracies than ``deg``;
    the title gives Pearson's r (scipy) and the number of instances.

    Args:
        cna_values: (n,) CNA of each instance (e.g. ``cna_test``).
        test_acc: (n,) test accuracy of each instance.
        groups: optional (n,) labels (dataset, architecture, ...) colouring the points.
        deg: degree of the fitted polynomial.
        title: title prefix (Pearson r and n are always appended).

    Returns:
        A Figure with one axes: x "test accuracy", y "CNA"; a scatter collection per group and
        the fit line.
    """
    from scipy import stats
    y = _vec(cna_values, "cna_values")
    x = _vec(test_acc, "test_acc")
    if x.size != y.size:
        raise ValueError(f"cna_values has {y.size} values but test_acc has {x.size}")
    g = None if groups is None else np.asarray(groups, dtype=object).reshape(-1)
    if g is not None and g.size != x.size:
        raise ValueError(f"groups has {g.size} labels for {x.size} instances")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    g = None if g is None else g[keep]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if g is None:
        ax.scatter(x, y, s=18, color="tab:blue", alpha=0.8, label="instances")
    else:
        for label in dict.fromkeys(g.tolist()):
            m = np.array([v == label for v in g])
            ax.scatter(x[m], y[m], s=18, alpha=0.8, label=str(label))
    if np.unique(x).size > deg:
        coef = np.polyfit(x, y, deg)
        xs = np.linspace(x.min(), x.max(), 200)
        ax.plot(xs, np.polyval(coef, xs), "k-", lw=1.5, label=f"degree-{deg} fit")
    if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = float(stats.pearsonr(x, y)[0])
    else:
        r = float("nan")
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("CNA")
    if ax.get_legend_handles_labels()[0]:  # no instances at all: no legend (and no warning)
        ax.legend(fontsize=7)
    head = title or "CNA vs test accuracy (Fig. 7)"
    ax.set_title(f"{head}\nPearson r = {r:.3f} (n = {x.size})", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 8 / 9
# --------------------------------------------------------------------------------------------

TableLike = Union[Mapping[str, Mapping[str, float]], Sequence[Mapping[str, Any]]]


def _nested(table: TableLike, value: str) -> Dict[str, Dict[str, float]]:
    if isinstance(table, Mapping):
        return {str(g): {str(m): float(v) for m, v in row.items()} for g, row in table.items()}
    out: Dict[str, Dict[str, float]] = {}
    for i, row in enumerate(table):
        try:
            g, m, v = row["group"], row["metric"], row[value]
        except KeyError as e:
            raise ValueError(f"row {i} lacks key {e}; rows need 'group', 'metric' and "
                             f"{value!r}") from None
        out.setdefault(str(g), {})[str(m)] = float(v) if v is not None else float("nan")
    return out


def correlation_bars(table: TableLike, value: str = "pearson",
                     metrics: Optional[Sequence[str]] = None,
                     groups: Optional[Sequence[str]] = None, ylabel: Optional[str] = None,
                     title: Optional[str] = None) -> Figure:
    """Paper Fig. 8/9: grouped bars of each measure's correlation with the generalization gap.

    Input format (either):

    * rows, as a ``compare`` table is written: a list of dicts
      ``{"group": "MLP", "metric": "cna_margin", "pearson": 0.41, ...}``; ``value`` names the
      column to draw (``"pearson"``, ``"kendall"``, ...);
    * nested: ``{group: {metric: value}}``.

    The x axis has one cluster per metric (in the order cna_train, cna_test, cna_area,
    cna_margin, margin, l2, l2_path, spectral, bound_2018, then others as first seen; shown
    with `METRIC_LABELS`), and within it one bar per group (architectures or datasets as
    first seen, ``"All Nets"`` last). NaN values draw no bar and are marked "n/a".

    Args:
        table: the correlations (see above).
        value: column of the rows to draw.
        metrics, groups: subsets / orders to draw (default: all present).
        ylabel: y-axis label (default "<value> correlation with the gap").
        title: figure title.

    Returns:
        A Figure with one axes (x "measure", y the correlation); one bar container per group.
    """
    nested = _nested(table, value)
    if not nested:
        raise ValueError("the table is empty")
    if groups is None:
        groups = [g for g in nested if g != ALL_NETS] + ([ALL_NETS] if ALL_NETS in nested
                                                          else [])
    seen = list(dict.fromkeys(m for g in groups for m in nested.get(g, {})))
    if metrics is None:
        metrics = [m for m in _METRIC_ORDER if m in seen] + [m for m in seen
                                                             if m not in _METRIC_ORDER]
    if not metrics or not groups:
        raise ValueError("nothing to draw: no metrics or no groups")
    n_g = len(groups)
    width = 0.8 / n_g
    x = np.arange(len(metrics), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) + 0.3 * n_g), 4))
    cmap = plt.get_cmap("tab10")
    for k, g in enumerate(groups):
        vals = np.array([nested.get(g, {}).get(m, float("nan")) for m in metrics])
        pos = x - 0.4 + width * (k + 0.5)
        color = "0.25" if g == ALL_NETS else cmap(k % 10)
        ax.bar(pos, np.nan_to_num(vals, nan=0.0), width, label=g, color=color)
        for p in pos[~np.isfinite(vals)]:
            ax.text(p, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.axhline(0.0, color="k", lw=0.6)
    finite = np.array([v for g in groups for v in nested.get(g, {}).values()
                       if math.isfinite(v)])
    if finite.size and np.all(np.abs(finite) <= 1):
        ax.set_ylim(-1.05, 1.05)  # correlations: keep the full scale for comparisons
    ax.set_xticks(x)
    ax.set_xticklabels([METRIC_LABELS.get(m, m) for m in metrics], rotation=20, ha="right")
    ax.set_xlabel("measure")
    ax.set_ylabel(ylabel or f"{value} correlation with the gap")
    ax.legend(fontsize=8, ncol=min(n_g, 5))
    ax.set_title(title or "Correlation with the generalization gap (Fig. 8/9)")
    fig.tight_layout()
    return fig
