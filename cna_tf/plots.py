"""The paper's figures drawn from plain arrays (matplotlib, Agg backend); each returns a Figure.

Drawing only: the numbers come from `cna_tf.analysis` (and `cna_tf.measures`). Figure numbers
are those of Gain & Siegelmann, ICML 2020:

* Fig. 1 `depth_profile` (inputs chosen by `analysis.pick_extremes`): z_d over depth for a low-
  and a high-alpha input.
* Fig. 3 `alpha_beta_curves`: train vs test (alpha, beta) curves and the CNA-A region.
* Fig. 4 `loss_and_cna` (`loss_and_cna_from_run` reads the metrics from an MLflow run with
  `tracking.epoch_histories`): training loss and CNA over epochs.
* Fig. 5 `trajectory_landscape` (numbers: `analysis.cna_landscape`): the PCA of the weight
  trajectory over training on top of a CNA contour map.
* Fig. 6 `error_by_alpha_quintile` (numbers: `analysis.quintile_errors`): test error over epochs
  per alpha quintile, with Wilson intervals.
* Fig. 7 `cna_vs_accuracy`: CNA against test accuracy with a quadratic fit and Pearson r.
* Fig. 8/9 `correlation_bars`: correlation of each measure with the gap, per group.

And, after Dziugaite et al. (NeurIPS 2020, "In Search of Robust Measures of Generalization"),
`sign_error_losses`: each measure's environment losses per intervention (SPEC §10).

Every function takes numpy arrays (or lists) and returns a ``matplotlib.figure.Figure``; close it
with `close` after saving.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cna_tf.analysis import as_vector, cna_landscape, quintile_errors  # noqa: E402
from cna_tf.measures import beta as compute_beta, curves  # noqa: E402

__all__ = [
    "alpha_beta_curves", "depth_profile", "loss_and_cna", "loss_and_cna_from_run",
    "trajectory_landscape", "error_by_alpha_quintile", "cna_vs_accuracy", "correlation_bars",
    "sign_error_losses", "METRIC_LABELS", "close",
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


# --------------------------------------------------------------------------------------------
# Fig. 3
# --------------------------------------------------------------------------------------------

def alpha_beta_curves(alpha_train, beta_train, alpha_test, beta_test, window: int = 25,
                      points: int = 100, title: Optional[str] = None) -> Figure:
    """Paper Fig. 3: train vs test (alpha, beta) curves with the CNA-A region shaded.

    Args:
        alpha_train: per-sample alpha of the training split.
        beta_train: per-sample beta of the training split.
        alpha_test: per-sample alpha of the test split.
        beta_test: per-sample beta of the test split.
        window: as in `cna_tf.cna_area`.
        points: as in `cna_tf.cna_area`.
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
    the deeper layers). `analysis.pick_extremes` chooses the two inputs from a batch.

    Args:
        layer_sums_low: (L,) z_d of the low-complexity input.
        layer_sums_high: (L,) z_d of the high-complexity input.
        alpha_low: the low-complexity input's alpha (shown in the legend when given).
        alpha_high: the high-complexity input's alpha (shown in the legend when given).
        index_low: the low-complexity input's sample index (shown in the legend when given).
        index_high: the high-complexity input's sample index (shown in the legend when
            given).
        image_low: the low-complexity input's raw image, drawn in a narrow column on the
            right.
        image_high: the high-complexity input's raw image, drawn in the same column.
        layer_names: names of the L probe layers, used as tick labels.
        title: figure title.

    Returns:
        A Figure whose ``fig.axes[0]`` is the plot (x "depth d (probe layer)", y "z_d (summed
        activation)"; two point series and two dashed slope lines), followed by one small axes
        per image given.
    """
    z_lo = as_vector(layer_sums_low, "layer_sums_low")
    z_hi = as_vector(layer_sums_high, "layer_sums_high")
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
        loss_label: the loss axis's label.
        cna_label: the CNA axis's label.
        title: figure title.

    Returns:
        A Figure with two axes sharing x ("epoch"): ``fig.axes[0]`` the loss (left),
        ``fig.axes[1]`` the CNA (right), one line each.
    """
    e_loss, y_loss = as_vector(epochs, "epochs"), as_vector(loss, "loss")
    y_cna = as_vector(cna_values, "cna_values")
    e_cna = e_loss if cna_epochs is None else as_vector(cna_epochs, "cna_epochs")
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


def loss_and_cna_from_run(run_id: str, loss_key: str = "loss", cna_key: str = "cna_train",
                          loss_step_offset: Optional[int] = None, client=None,
                          **kwargs) -> Figure:
    """Fig. 4 from an MLflow run: `loss_and_cna` on two of its metric histories.

    Args:
        run_id: the MLflow run.
        loss_key: training-loss metric (``"loss"`` from Keras autologging or `mlflow run -e
            train`).
        cna_key: CNA metric logged by `CNACallback` (``"cna_train"`` or ``"cna_test"``).
        loss_step_offset: None reads both histories by epochs completed, at the step
            convention the run was logged at (`tracking.epoch_histories`: autolog's epoch index
            or epochs completed); an integer takes the steps as logged and adds it to the loss
            steps (1 for a loss logged by autolog beside a CNA logged at epochs completed).
        client: an ``mlflow.MlflowClient``.
        **kwargs: passed to `loss_and_cna`.

    Raises:
        ValueError: if the run has no values for one of the keys.
    """
    from cna_tf.tracking import epoch_histories, metric_histories

    read = metric_histories if loss_step_offset is not None else epoch_histories
    h = read(run_id, [loss_key, cna_key], client=client)
    for key in (loss_key, cna_key):
        if h[key][0].size == 0:
            raise ValueError(f"run {run_id} has no metric {key!r}")
    (s_loss, v_loss), (s_cna, v_cna) = h[loss_key], h[cna_key]
    kwargs.setdefault("cna_label", cna_key)
    return loss_and_cna(s_loss + int(loss_step_offset or 0), v_loss, v_cna, cna_epochs=s_cna,
                        **kwargs)


# --------------------------------------------------------------------------------------------
# Fig. 5
# --------------------------------------------------------------------------------------------

def trajectory_landscape(model, trajectory: Mapping[int, np.ndarray], alpha, inputs,
                         grid: int = 15, landscape: Optional[Mapping[str, Any]] = None,
                         levels: int = 15, annotate_epochs: bool = True,
                         title: Optional[str] = None, **kwargs) -> Figure:
    """Paper Fig. 5: the training trajectory in PCA space over a CNA contour map.

    Draws ``contourf`` of the CNA landscape (`analysis.cna_landscape`), the trajectory projected
    onto PC1/PC2 as a red line with a marker per recorded epoch, and "Start"/"End" labels.

    Examples:
        >>> cb = cna_tf.CNACallback(..., record_trajectory=True)
        >>> model.fit(x, y, epochs=20, callbacks=[cb])
        >>> fig = trajectory_landscape(model, cb.trajectory, cb.snapshot_alpha["test"], inputs)

    Args:
        model: as in `analysis.cna_landscape`.
        trajectory: as in `analysis.cna_landscape`.
        alpha: as in `analysis.cna_landscape`.
        inputs: as in `analysis.cna_landscape`.
        grid: as in `analysis.cna_landscape`.
        landscape: a precomputed `analysis.cna_landscape` result (then the other data
            arguments are not used and nothing is computed).
        levels: number of contour levels.
        annotate_epochs: write the epoch next to each marker.
        title: figure title.
        **kwargs: passed to `analysis.cna_landscape` (``extent``, ``pad``, ``method``, ...).

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

def error_by_alpha_quintile(alpha, correct_by_epoch: Mapping[int, Any], confidence: float = 0.95,
                            bins: int = 5, band: bool = True, logy: bool = False,
                            title: Optional[str] = None) -> Figure:
    """Paper Fig. 6: mean test error over epochs for each alpha quintile.

    The paper reports a monotone ordering (higher alpha, more error; up to 16x), strongest
    early in training. Each line is one quintile (lowest alpha dark blue ... highest orange), with its
    Wilson interval shaded when ``band``.

    Examples:
        >>> cb = cna_tf.CNACallback(..., full_every=1)
        >>> model.fit(..., callbacks=[cb])
        >>> fig = error_by_alpha_quintile(cb.snapshot_alpha["test"],
        ...                               {e: s["test"] for e, s in cb.snapshots.items()})

    Args:
        alpha: (n,) alpha of the evaluated samples.
        correct_by_epoch: ``{epoch: (n,) correctness}`` aligned with ``alpha``.
        confidence: as in `analysis.quintile_errors`.
        bins: as in `analysis.quintile_errors`.
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
    y = as_vector(cna_values, "cna_values")
    x = as_vector(test_acc, "test_acc")
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
        metrics: the measures to draw, in order (default: all present).
        groups: the groups to draw, in order (default: all present).
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


# --------------------------------------------------------------------------------------------
# Robust sign-error (Dziugaite et al. 2020, SPEC §10)

def sign_error_losses(environments: Sequence[Mapping[str, Any]], measures: Sequence[str],
                      axes: Sequence[str], title: Optional[str] = None) -> Figure:
    """Each measure's environment losses per intervention, as in Dziugaite et al.'s figures.

    One panel per axis and one for all axes together; in each, a row per measure with a dot
    per kept environment (its loss, jittered vertically), and the mean (diamond), the 90th
    percentile (triangle) and the maximum (cross, the robust sign-error) marked. 0 = the
    measure always orders the environment's networks as their gap, 1 = always the wrong way.

    Args:
        environments: ``cna_tf.ranking.sign_errors(...).environments``: dicts with ``axis``
            and ``losses`` (measure -> loss, NaN where not kept).
        measures: the measures to draw, top to bottom.
        axes: the axes' panels, left to right (an ``"all"`` panel follows).
        title: figure title.

    Returns:
        A Figure with ``len(axes) + 1`` axes sharing the measure rows.
    """
    if not measures:
        raise ValueError("nothing to draw: no measures")
    panels = list(axes) + ["all"]
    rows = len(measures)
    fig, grid = plt.subplots(1, len(panels), sharey=True, squeeze=False,
                             figsize=(2.4 * len(panels) + 1.6, 0.32 * rows + 1.4))
    rng = np.random.default_rng(0)
    for ax, panel in zip(grid[0], panels):
        envs = [e for e in environments if panel == "all" or e["axis"] == panel]
        for k, m in enumerate(measures):
            y = rows - 1 - k
            losses = np.array([e["losses"].get(m, math.nan) for e in envs], dtype=np.float64)
            losses = losses[np.isfinite(losses)]
            if not losses.size:
                ax.text(0.5, y, "none kept", ha="center", va="center", fontsize=6,
                        color="0.5")
                continue
            ax.scatter(losses, y + rng.uniform(-0.22, 0.22, losses.size), s=7, color="0.6",
                       alpha=0.7, linewidths=0)
            first = not ax.get_legend_handles_labels()[0]
            ax.scatter([losses.mean()], [y], marker="D", s=22, color="tab:blue",
                       label="mean" if first else None, zorder=3)
            ax.scatter([np.percentile(losses, 90)], [y], marker="^", s=26, color="tab:orange",
                       label="p90" if first else None, zorder=3)
            ax.scatter([losses.max()], [y], marker="x", s=30, color="tab:red",
                       label="max" if first else None, zorder=4)
        ax.set_xlim(-0.05, 1.05)
        ax.axvline(0.5, color="0.8", lw=0.6, zorder=0)
        ax.set_title(f"{panel} ({len(envs)})", fontsize=9)
        ax.set_xlabel("sign-error", fontsize=8)
        ax.tick_params(labelsize=7)
    grid[0][0].set_yticks(range(rows))
    grid[0][0].set_yticklabels([METRIC_LABELS.get(m, m) for m in reversed(measures)])
    grid[0][0].set_ylim(-0.6, rows - 0.4)
    handles, labels = grid[0][-1].get_legend_handles_labels()
    if handles:
        grid[0][-1].legend(handles, labels, fontsize=7, loc="lower right")
    fig.suptitle(title or "Environment losses per intervention (Dziugaite et al. 2020)",
                 fontsize=10)
    fig.tight_layout()
    return fig
