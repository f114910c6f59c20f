"""SPEC §12's optimization-based measures (issue 37 item 2): the steps to cross-entropy 0.1 and
from 0.1 to 0.01 on loss trajectories the test chooses (fed through the recorder `train` uses,
with Keras' epoch logs as `stop_loss` reads them), and ``grad_noise_final`` against numpy's
gradients of a tiny softmax-regression model."""
import math
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cna_tf import optimization
from _stores import sqlite_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))


def _record(logs_per_epoch):
    rec = optimization.CrossEntropyRecorder()
    for epoch, logs in enumerate(logs_per_epoch):
        rec.on_epoch_end(epoch, logs)
    return rec.cross_entropy


def test_steps_from_a_controlled_trajectory():
    # 0.1 first reached at epoch 3, 0.01 at epoch 6; s = ceil(300 / 64) = 5 steps per epoch
    ce = _record([{"loss": v} for v in (2.0, 0.5, 0.1, 0.05, 0.02, 0.01, 0.003)])
    assert ce == {1: 2.0, 2: 0.5, 3: 0.1, 4: 0.05, 5: 0.02, 6: 0.01, 7: 0.003}
    values, reasons = optimization.steps_to_thresholds(ce, steps_per_epoch=5)
    assert values == {"steps_to_ce_0.1": 15.0, "steps_ce_0.1_to_0.01": 15.0}
    assert reasons == {}
    # an epoch that jumps past both thresholds: 0 steps between them
    values, _ = optimization.steps_to_thresholds([0.3, 0.005], steps_per_epoch=7)
    assert values == {"steps_to_ce_0.1": 14.0, "steps_ce_0.1_to_0.01": 0.0}


def test_the_recorder_reads_the_cross_entropy_as_stop_loss_does():
    """With weight decay Keras' ``loss`` holds the penalty too: the ``cross_entropy`` metric
    counts, exactly as `train.StopAtLoss` decides."""
    import train

    logs = [{"loss": 0.5, "cross_entropy": 0.4}, {"loss": 0.2, "cross_entropy": 0.08},
            {"loss": 0.1, "cross_entropy": 0.009}]
    ce = _record(logs)
    assert ce == {1: 0.4, 2: 0.08, 3: 0.009}
    values, _ = optimization.steps_to_thresholds(ce, steps_per_epoch=10)
    assert values == {"steps_to_ce_0.1": 20.0, "steps_ce_0.1_to_0.01": 10.0}
    stop = train.StopAtLoss(0.1)
    stop.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    for epoch, epoch_logs in enumerate(logs):
        stop.on_epoch_end(epoch, epoch_logs)
        if stop.stopped_epoch:
            break
    assert stop.stopped_epoch == 2   # the epoch steps_to_ce_0.1 counts to


def test_thresholds_not_reached_are_nan_with_the_reason():
    values, reasons = optimization.steps_to_thresholds([0.9, 0.4, 0.05], steps_per_epoch=3)
    assert values["steps_to_ce_0.1"] == 9.0 and math.isnan(values["steps_ce_0.1_to_0.01"])
    assert reasons == {"steps_ce_0.1_to_0.01": "cross-entropy 0.01 not reached: the lowest "
                       "training cross-entropy in 3 epochs was 0.05"}
    values, reasons = optimization.steps_to_thresholds({1: 1.2, 2: 0.7}, steps_per_epoch=3)
    assert all(math.isnan(v) for v in values.values()) and set(reasons) == set(values)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        optimization.steps_to_thresholds([0.5], steps_per_epoch=0)


def _numpy_gradients(W, b, x, y, batch_size):
    """The mean softmax cross-entropy's gradient on each batch, by hand."""
    out = []
    for s in range(0, len(x), batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        z = xb @ W + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d = p.copy()
        d[np.arange(len(yb)), yb] -= 1.0
        d /= len(yb)
        out.append(np.concatenate([(xb.T @ d).ravel(), d.sum(axis=0)]))
    return np.array(out)


@pytest.mark.parametrize("from_logits", [True, False])
def test_grad_noise_matches_numpy_on_a_linear_model(from_logits):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(4, activation=None if from_logits
                                                 else "softmax")])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(22, 3)).astype("float32")
    y = rng.integers(0, 4, size=22)
    W, b = (np.asarray(v.numpy(), dtype=np.float64) for v in model.weights)
    # 22 points in batches of 8: 8, 8 and a last batch of 6
    g = _numpy_gradients(W, b, x.astype(np.float64), y, 8)
    assert len(g) == 3
    want = np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1))
    # uncompiled: the cross-entropy of its outputs; compiled: its own loss
    got = optimization.grad_noise(model, x, y, batch_size=8)
    assert got == pytest.approx(want, rel=1e-4)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits))
    assert optimization.grad_noise(model, x, y, batch_size=8) == pytest.approx(want, rel=1e-4)
    # the weights are left as they were; one batch has no noise
    assert np.array_equal(model.weights[0].numpy(), W.astype(np.float32))
    assert optimization.grad_noise(model, x, y, batch_size=100) == pytest.approx(0.0, abs=1e-12)


def test_grad_noise_bad_input_is_named():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match="as many labels as inputs"):
        optimization.grad_noise(model, x, np.zeros(3, int), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        optimization.grad_noise(model, x, np.zeros(4, int), batch_size=0)


@pytest.mark.parametrize("level, flatness, searched", [
    ("all", False, None), ("all", True, None), ("cheap", False, ()),
    ("cheap", True, ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness"))])
def test_train_asks_the_suite_for_each_search_once(tmp_path, monkeypatch, level, flatness,
                                                   searched):
    """`train`'s suite levels (issue 37 item 3): ``all`` asks for every measure, ``cheap`` for
    the cheap ones plus §8's three searches when ``flatness`` is on (the suite runs them, so no
    search runs twice); a NaN measure's reason becomes its ``cna_nan`` tag; names the
    CNACallback logged are not logged again."""
    import mlflow

    import train
    from cna_tf import suite

    asked = {}

    def compute(model, x, y, **kw):
        asked.update(kw)
        names = kw["names"] if kw["names"] is not None else list(suite.MEASURES)
        out = suite.SuiteResult({n: 1.0 for n in names})
        out["inverse_margin"] = math.nan
        out.reasons["inverse_margin"] = "γ₁₀ = -0.1 <= 0"
        out.parameters.update(gamma_10=-0.1, pacbayes_sigma=0.5, num_params=7)
        out.seconds.update(cheap=0.25, pacbayes_flatness=2.0)
        return out

    monkeypatch.setattr(suite, "compute", compute)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    with mlflow.start_run() as run:
        got = train.log_suite(None, np.zeros((5, 2)), np.zeros(5, int), {"k": 1},
                              {"suite": level, "flatness": flatness, "seed": 3}, step=4,
                              skip=["sum_of_fro"])
    if searched is None:
        assert asked["names"] is None
    else:
        assert list(asked["names"]) == list(suite.CHEAP) + list(searched)
    assert asked["seed"] == 3 and asked["initial_weights"] == {"k": 1}
    assert asked["train_size"] == 5
    assert "sum_of_fro" not in got and got["pacbayes_sigma"] == 0.5
    assert got["num_params"] == 1.0          # the measure, not the parameter ω
    assert got["flatness_seconds"] == 2.0 and got["suite_cheap_seconds"] == 0.25
    assert got["suite_seconds"] >= 0
    logged = mlflow.MlflowClient().get_run(run.info.run_id)
    assert logged.data.tags["cna_nan.inverse_margin"] == "at epoch 4: γ₁₀ = -0.1 <= 0"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "gamma_10")
    assert [(h.step, h.value) for h in history] == [(4, -0.1)]
