"""cna_tf.plots: every figure on small fixed inputs; the metric histories Fig. 4 reads from MLflow
(cna_tf.tracking); the CNA landscape of Fig. 5 (cna_tf.analysis) on a trained model, and the
callback's trajectory / snapshot-alpha records the figures are drawn from."""
import numpy as np
import pytest

import keras
import mlflow
from matplotlib.figure import Figure

import cna_tf
from cna_tf import analysis, plots, tracking
from cna_tf.callback import flat_weights
from _stores import sqlite_store


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def _line_data(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 0]


# --------------------------------------------------------------------------------------------
# Fig. 1
# --------------------------------------------------------------------------------------------

def test_depth_profile_draws_points_and_beta_lines():
    low = np.array([3.0, 2.0, 1.5, 1.0])
    high = np.array([1.0, 2.0, 3.5, 5.0])
    fig = plots.depth_profile(**analysis.pick_extremes([0.2, 1.7], np.stack([low, high]),
                                                       images=np.zeros((2, 8, 8))),
                              layer_names=["d1", "d2", "d3", "d4"])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(fig.axes) == 3  # the plot and two image panels
    assert ax.get_xlabel() == "depth d (probe layer)"
    assert ax.get_ylabel() == "z_d (summed activation)"
    lines = [ln for ln in _line_data(ax) if len(ln.get_xdata()) == 4]
    assert len(lines) == 4
    np.testing.assert_allclose(lines[0].get_ydata(), low)
    np.testing.assert_allclose(lines[2].get_ydata(), high)
    for fit, z in ((lines[1], low), (lines[3], high)):  # dashed lines have slope beta
        y = np.asarray(fit.get_ydata())
        assert np.diff(y) == pytest.approx(np.full(3, cna_tf.beta(z[None])[0]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["d1", "d2", "d3", "d4"]
    with pytest.raises(ValueError, match="same depth"):
        plots.depth_profile(low, high[:3])


# --------------------------------------------------------------------------------------------
# Fig. 3 / 4
# --------------------------------------------------------------------------------------------

def test_alpha_beta_curves(rng):
    a_tr, a_te = rng.uniform(1, 3, 200), rng.uniform(1, 3, 150)
    fig = plots.alpha_beta_curves(a_tr, a_tr + rng.normal(0, .1, 200), a_te, 2 * a_te)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("normalized alpha")
    assert len(_line_data(ax)) == 2 and ax.collections


def test_loss_and_cna_twin_axes():
    loss = [2.0, 1.0, 0.6, 0.5]
    cna = [-0.1, 0.2, 0.5, 0.6, 0.62]
    fig = plots.loss_and_cna([1, 2, 3, 4], loss, cna, cna_epochs=[0, 1, 2, 3, 4])
    ax, ax2 = fig.axes
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "training loss" and ax2.get_ylabel() == "CNA"
    np.testing.assert_allclose(_line_data(ax)[0].get_ydata(), loss)
    np.testing.assert_allclose(_line_data(ax2)[0].get_xdata(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(_line_data(ax2)[0].get_ydata(), cna)
    with pytest.raises(ValueError, match="cna_epochs"):
        plots.loss_and_cna([1, 2, 3, 4], loss, cna)


def test_metric_histories_and_loss_and_cna_from_run(tmp_path):
    from mlflow.entities import Metric
    client = mlflow.MlflowClient(sqlite_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("plots")
    run_id = client.create_run(exp).info.run_id
    metrics = [Metric("cna_train", 0.1, 1000, 0), Metric("cna_train", 0.3, 1001, 1),
               Metric("cna_train", 0.5, 1002, 2),
               # autolog-style duplicates, logged later at 0-based steps
               Metric("cna_train", 0.3, 2000, 0), Metric("cna_train", 0.5, 2001, 1),
               Metric("loss", 2.0, 2000, 0), Metric("loss", 1.0, 2001, 1)]
    client.log_batch(run_id, metrics=metrics)
    h = tracking.metric_histories(run_id, ["cna_train", "loss", "never"], client=client)
    np.testing.assert_array_equal(h["cna_train"][0], [0, 1, 2])
    np.testing.assert_allclose(h["cna_train"][1], [0.1, 0.3, 0.5])
    np.testing.assert_allclose(h["loss"][1], [2.0, 1.0])
    assert h["never"][0].size == 0 and h["never"][1].size == 0
    last = tracking.metric_histories(run_id, "cna_train", client=client, duplicates="last")
    np.testing.assert_allclose(last["cna_train"][1], [0.3, 0.5, 0.5])
    everything = tracking.metric_histories(run_id, "cna_train", client=client, duplicates="all")
    np.testing.assert_array_equal(everything["cna_train"][0], [0, 0, 1, 1, 2])
    fig = plots.loss_and_cna_from_run(run_id, client=client, loss_step_offset=1)
    ax, ax2 = fig.axes
    np.testing.assert_allclose(_line_data(ax)[0].get_xdata(), [1, 2])  # autolog offset
    np.testing.assert_allclose(_line_data(ax2)[0].get_ydata(), [0.1, 0.3, 0.5])
    assert ax2.get_ylabel() == "cna_train"
    # a run at autolog's convention (CNACallback beside autolog): epoch index, init_<key>
    auto = client.create_run(exp).info.run_id
    client.log_batch(auto, metrics=[
        Metric("init_cna_train", 0.1, 1000, 0), Metric("cna_train", 0.3, 2000, 0),
        Metric("cna_train", 0.5, 2001, 1), Metric("loss", 2.0, 2000, 0),
        Metric("loss", 1.0, 2001, 1)])
    done = tracking.epoch_histories(auto, ["cna_train", "loss"], client=client)
    np.testing.assert_array_equal(done["cna_train"][0], [0, 1, 2])
    np.testing.assert_allclose(done["cna_train"][1], [0.1, 0.3, 0.5])
    np.testing.assert_array_equal(done["loss"][0], [1, 2])
    fig = plots.loss_and_cna_from_run(auto, client=client)
    ax, ax2 = fig.axes
    np.testing.assert_allclose(_line_data(ax)[0].get_xdata(), [1, 2])
    np.testing.assert_allclose(_line_data(ax2)[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(_line_data(ax2)[0].get_ydata(), [0.1, 0.3, 0.5])
    with pytest.raises(ValueError, match="no metric"):
        plots.loss_and_cna_from_run(run_id, cna_key="never", client=client)


# --------------------------------------------------------------------------------------------
# Fig. 6
# --------------------------------------------------------------------------------------------

def test_error_by_alpha_quintile_draws_one_line_per_quintile(rng):
    alpha = rng.uniform(1, 3, 300)
    by_epoch = {e: rng.random(300) > 0.5 / (e + 1) * alpha / 3 for e in (0, 1, 5)}
    fig = plots.error_by_alpha_quintile(alpha, by_epoch)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "test error"
    lines = _line_data(ax)
    assert len(lines) == 5 and len(ax.collections) == 5  # lines and Wilson bands
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 1, 5])
    q = analysis.quintile_errors(alpha, by_epoch[5])
    np.testing.assert_allclose([ln.get_ydata()[-1] for ln in lines], q["error"])


# --------------------------------------------------------------------------------------------
# Fig. 7 / 8
# --------------------------------------------------------------------------------------------

def test_cna_vs_accuracy_scatter_fit_and_pearson(rng):
    acc = np.linspace(0.1, 0.95, 30)
    c = 0.8 * acc ** 2 + rng.normal(0, 0.03, 30)
    c[4] = np.nan  # dropped
    groups = ["mnist", "cifar10", "svhn"] * 10
    fig = plots.cna_vs_accuracy(c, acc, groups=groups)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "test accuracy" and ax.get_ylabel() == "CNA"
    assert len(ax.collections) == 3
    assert sum(len(col.get_offsets()) for col in ax.collections) == 29
    fit = _line_data(ax)[0]
    keep = np.isfinite(c)
    coef = np.polyfit(acc[keep], c[keep], 2)
    np.testing.assert_allclose(fit.get_ydata(), np.polyval(coef, fit.get_xdata()))
    r = np.corrcoef(acc[keep], c[keep])[0, 1]
    assert f"Pearson r = {r:.3f} (n = 29)" in ax.get_title()


def test_correlation_bars_rows_and_nested_agree():
    nested = {"All Nets": {"l2": -0.2, "cna_margin": 0.6},
              "MLP": {"cna_margin": 0.4, "l2": 0.1, "spectral": float("nan")},
              "VGG-18": {"l2": -0.5, "cna_margin": 0.3, "spectral": -0.1}}
    rows = [{"group": g, "metric": m, "pearson": v, "kendall": 0.0}
            for g, d in nested.items() for m, v in d.items()]
    heights = []
    for table in (nested, rows):
        fig = plots.correlation_bars(table)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "measure"
        assert ax.get_ylabel() == "pearson correlation with the gap"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["CNA-M", "L2", "Spectral"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["MLP", "VGG-18",
                                                                       "All Nets"]
        assert len(ax.containers) == 3 and len(ax.patches) == 9
        heights.append([p.get_height() for p in ax.patches])
    assert heights[0] == heights[1]
    assert heights[0] == pytest.approx([0.4, 0.1, 0.0, 0.3, -0.5, -0.1, 0.6, -0.2, 0.0])
    fig = plots.correlation_bars(rows, value="kendall", metrics=["l2"], groups=["MLP"])
    assert len(fig.axes[0].patches) == 1
    with pytest.raises(ValueError, match="'metric'"):
        plots.correlation_bars([{"group": "MLP", "pearson": 0.1}])


# --------------------------------------------------------------------------------------------
# Fig. 5 and the callback's records
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A tiny MLP fitted 2 epochs on digits with the trajectory recorded."""
    ds = cna_tf.data.load("digits", seed=0)
    keras.utils.set_random_seed(0)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, depth=3, units=12,
                                seed=0)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy")
    w0 = flat_weights(model)
    cb = cna_tf.CNACallback((ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
                            preprocess=ds.preprocess, value_range=ds.value_range, every=1,
                            full_every=1, max_samples=200, full_max_samples=300,
                            baselines=False, mlflow=False, record_trajectory=True)
    model.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=2, batch_size=64, verbose=0,
              callbacks=[cb])
    return ds, model, cb, w0


def test_callback_records_trajectory_and_snapshot_alpha(trained):
    ds, model, cb, w0 = trained
    n_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert sorted(cb.trajectory) == [0, 1, 2]
    for vec in cb.trajectory.values():
        assert vec.dtype == np.float32 and vec.shape == (n_params,)
    np.testing.assert_array_equal(cb.trajectory[0], w0)
    np.testing.assert_array_equal(cb.trajectory[2], flat_weights(model))
    assert not np.array_equal(cb.trajectory[1], cb.trajectory[0])
    # snapshot_alpha is aligned with the per-sample correctness of the snapshots
    alpha = cb.snapshot_alpha
    assert alpha["test"].shape == (300,) and alpha["train"].shape == (300,)
    for e in (0, 1, 2):
        assert cb.snapshots[e]["test"].shape == (300,)
    np.testing.assert_allclose(alpha["test"], cna_tf.alpha(cb.snapshot_samples["test"].raw,
                                                           value_range=ds.value_range))
    fig = plots.error_by_alpha_quintile(alpha["test"],
                                        {e: s["test"] for e, s in cb.snapshots.items()})
    assert len(_line_data(fig.axes[0])) == 5
    # off by default
    cb_off = cna_tf.CNACallback((ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
                                preprocess=ds.preprocess, value_range=ds.value_range)
    assert cb_off.record_trajectory is False and cb_off.trajectory == {}


def test_flat_weights_round_trip(trained):
    _, model, _, _ = trained
    clone = keras.models.clone_model(model)
    vec = flat_weights(model)
    analysis.set_flat_weights(clone, vec)
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="trainable parameters"):
        analysis.set_flat_weights(clone, vec[:-1])


def _direct_cna(model, vector, alpha, inputs):
    net = keras.models.clone_model(model)
    analysis.set_flat_weights(net, vector)
    sums = cna_tf.ActivationProbe(net).layer_sums(inputs)
    return cna_tf.cna(alpha, cna_tf.beta(sums))


def test_cna_landscape_center_is_the_mean_weights(trained):
    ds, model, cb, _ = trained
    before = [w.copy() for w in model.get_weights()]
    alpha, inputs = cb.snapshot_alpha["test"], cb.snapshot_samples["test"].inputs
    pca = analysis.trajectory_pca(cb.trajectory)
    r1, r2 = 1.5 * np.abs(pca["coords"]).max(axis=0)
    ls = analysis.cna_landscape(model, cb.trajectory, alpha, inputs, grid=3,
                             extent=((-r1, r1), (-r2, r2)))
    assert ls["cna"].shape == (3, 3) and np.isfinite(ls["cna"]).all()
    np.testing.assert_allclose(ls["pc1"], [-r1, 0, r1])
    np.testing.assert_allclose(ls["pc2"], [-r2, 0, r2])
    np.testing.assert_allclose(ls["coords"], pca["coords"])
    # the center grid point is the mean weight vector: same CNA as computed directly there
    center = _direct_cna(model, ls["mean"].astype(np.float32), alpha, inputs)
    assert ls["cna"][1, 1] == pytest.approx(center, abs=1e-5)
    # a corner is the inverse transform of its PCA coordinates
    corner = ls["mean"] + np.array([r1, -r2]) @ ls["components"]
    assert ls["cna"][0, 2] == pytest.approx(
        _direct_cna(model, corner.astype(np.float32), alpha, inputs), abs=1e-5)
    # and the recorded states give the CNA of the network at that epoch
    for k, e in enumerate(ls["epochs"]):
        assert ls["trajectory_cna"][k] == pytest.approx(
            _direct_cna(model, cb.trajectory[int(e)], alpha, inputs), abs=1e-5)
    for a, b in zip(model.get_weights(), before):  # the model itself is untouched
        np.testing.assert_array_equal(a, b)

    fig = plots.trajectory_landscape(None, None, None, None, landscape=ls)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    assert fig.axes[1].get_ylabel() == "CNA"  # the colorbar
    assert ax.collections  # the contour
    traj = _line_data(ax)[0]
    np.testing.assert_allclose(traj.get_xdata(), ls["coords"][:, 0])
    texts = [t.get_text() for t in ax.texts]
    assert "Start" in texts and "End" in texts


def test_trajectory_landscape_default_extent(trained):
    _, model, cb, _ = trained
    fig = plots.trajectory_landscape(model, cb.trajectory, cb.snapshot_alpha["test"],
                               cb.snapshot_samples["test"].inputs, grid=4)
    ax = fig.axes[0]
    xlo, xhi = ax.get_xlim()
    coords = analysis.trajectory_pca(cb.trajectory)["coords"]
    assert xlo < coords[:, 0].min() and coords[:, 0].max() < xhi
    assert isinstance(fig, Figure)


def test_sign_error_losses_draws_a_panel_per_axis_and_all():
    from cna_tf import ranking

    hp = {"a": [0, 0, 1, 1, 2, 2], "b": [0, 1] * 3}
    gap = np.array([0.1, 0.3, 0.5, 0.2, 0.9, 0.6])
    res = ranking.sign_errors({"gap": gap, "minus": -gap, "nan": [np.nan] * 6}, gap, hp,
                              replicate_axis=None, n_test=10**6)
    fig = plots.sign_error_losses(res.environments, ["gap", "minus", "nan"], res.axes,
                                  title="t")
    try:
        assert len(fig.axes) == 3
        assert [ax.get_title() for ax in fig.axes] == [
            f"a ({sum(e['axis'] == 'a' for e in res.environments)})",
            f"b ({sum(e['axis'] == 'b' for e in res.environments)})",
            f"all ({len(res.environments)})"]
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels == ["nan", "minus", "gap"]                  # top to bottom
        assert {t.get_text() for t in fig.axes[2].texts} == {"none kept"}
        assert fig.axes[2].get_legend() is not None
    finally:
        plots.close(fig)
    with pytest.raises(ValueError, match="no measures"):
        plots.sign_error_losses(res.environments, [], res.axes)
