"""CNACallback beside MLflow's Keras autologging: every metric has one value per step, at
autolog's step convention (Keras' 0-based epoch index), the values before training once as
``init_<key>``, and TensorBoard, CSVLogger and ModelCheckpoint keep working beside it."""
import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

import cna_tf
from _stores import sqlite_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return cna_tf.data.load("digits", n_train=300, n_test=200, seed=0)


def small_mlp(ds):
    keras.utils.set_random_seed(0)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=0.1)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def callback(ds, **kw):
    return cna_tf.CNACallback(ds.train, ds.test, preprocess=ds.preprocess,
                              value_range=ds.value_range, max_samples=200, **kw)


def histories(client, run_id):
    """{key: [(step, value), ...] in logging order} of every metric of the run."""
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                                     key=lambda m: m.timestamp)]
            for key in client.get_run(run_id).data.metrics}


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("flavor, stops", [("keras", False), ("tensorflow", True)])
def test_autolog_one_value_per_epoch_at_autologs_steps(digits, store, tmp_path, flavor, stops):
    autolog = getattr(mlflow, flavor).autolog
    autolog(log_models=False, log_datasets=False, silent=True)
    try:
        model = small_mlp(digits)
        cb = callback(digits)
        seen = {}
        spy = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: seen.__setitem__(epoch, dict(logs)))
        # min_delta=10: epoch 1 sets the best, epoch 2 gains less, so training stops after it;
        # patience=3 never stops 3 epochs
        stop = keras.callbacks.EarlyStopping(monitor="cna_test", mode="max",
                                             **({"patience": 0, "min_delta": 10.0} if stops
                                                else {"patience": 3}))
        others = []
        if stops:
            others = [keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                      keras.callbacks.CSVLogger(str(tmp_path / "epochs.csv")),
                      keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"),
                                                      monitor="cna_test", mode="max",
                                                      save_best_only=True)]
        with mlflow.start_run() as run:
            model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=3,
                      batch_size=64, verbose=0, callbacks=[cb, stop, *others, spy])
    finally:
        autolog(disable=True)
    epochs = 2 if stops else 3
    assert sorted(seen) == list(range(epochs)) and sorted(cb.history) == list(range(epochs + 1))
    got = histories(store, run.info.run_id)
    for key, hist in got.items():
        steps = [s for s, _ in hist]
        assert len(steps) == len(set(steps)), (key, hist)  # one value per step
    assert [s for s, _ in got["loss"]] == list(range(epochs))  # autolog's own convention
    for key, value in cb.history[0].items():  # before training: once, under its own name
        assert key + "_init" not in got
        assert len(got["init_" + key]) == 1 and got["init_" + key][0][0] == 0
        assert same(got["init_" + key][0][1], value), key
    keys = set().union(*(cb.history[d] for d in range(1, epochs + 1)))
    for key in keys:
        want = {d - 1: m[key] for d, m in cb.history.items() if d and key in m}
        assert dict(got[key]).keys() == want.keys(), key  # step = Keras' epoch index
        for step, value in got[key]:
            assert same(value, want[step]), (key, step)
            if key in seen[step]:  # the value Keras' logs held for that epoch
                assert same(value, seen[step][key]), (key, step)
    light = {"cna_train", "cna_test", "beta_train_mean", "beta_test_mean"}
    assert light <= set(seen[0]) and "cna_margin" not in seen[0]
    assert [s for s, _ in got["cna_margin"]] == [epochs - 1]
    if not stops:
        return
    assert "cna_margin" not in seen[1]  # the final snapshot after the stop is the callback's
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["cna_test"]) for r in rows] == [seen[e]["cna_test"] for e in (0, 1)]
    assert (tmp_path / "best.keras").exists()
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "tb" / "train"), size_guidance={"tensors": 0}).Reload()
    events = tb.Tensors("epoch_cna_test")
    assert [e.step for e in events] == [0, 1]  # TensorBoard's step: the same epoch index
    np.testing.assert_allclose([float(tf.make_ndarray(e.tensor_proto)) for e in events],
                               [seen[0]["cna_test"], seen[1]["cna_test"]], rtol=1e-6)
    arts = store.list_artifacts(run.info.run_id, "tensorboard_logs")
    assert arts  # mlflow.tensorflow.autolog logged the TensorBoard directory given


def test_exclusive_autolog_in_a_user_run_leaves_the_logging_to_the_callback(digits, store):
    mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True, exclusive=True)
    try:
        model = small_mlp(digits)
        with mlflow.start_run() as run:  # exclusive: autolog logs nothing into this run
            model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
                      callbacks=[callback(digits, baselines=False)])
    finally:
        mlflow.keras.autolog(disable=True)
    got = histories(store, run.info.run_id)
    assert "loss" not in got and not any(k.startswith("init_") for k in got)
    assert [s for s, _ in got["cna_test"]] == [0, 1]  # step = epochs done, as without autolog


def _shown(text):
    """The ``key: value`` pairs of a Keras progress line."""
    return {k: float(v) for k, v in re.findall(r"(\w+): (-?[\d.]+(?:e[-+]\d+)?|nan)", text)}


@pytest.mark.slow
def test_mlflow_run_train_logs_one_value_per_epoch(tmp_path):
    """`mlflow run . -e train` (its own run, its own logging, no autolog: see docs/keras.md)
    stopped early by stop_loss: one value per step, equal to what Keras printed from logs."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
               TF_CPP_MIN_LOG_LEVEL="3",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_RUN_ID", None)
    # losses 2.44, 2.04, 1.74: stop_loss 2.2 stops after epoch 2 of 3
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "train",
           "--env-manager", "local", "--experiment-name", "steps",
           "-P", "dataset=gaussian", "-P", "epochs=3", "-P", "width=0.05", "-P", "depth=2",
           "-P", 'data_options={"shape": [8, 8, 1], "train_size": 200, "test_size": 100}',
           "-P", "batch_size=50", "-P", "lr=0.5", "-P", "stop_loss=2.2"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("steps").experiment_id])[0]
    assert run.data.tags["cna_tf.stopped_at_epoch"] == "2"
    got = histories(client, run.info.run_id)
    for key, hist in got.items():
        steps = [s for s, _ in hist]
        assert len(steps) == len(set(steps)), (key, hist)
    # Keras' progress line of each epoch: the logs the callback wrote, at step = epochs done
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\d+/\d+ - ", ln)]
    assert len(lines) == 2
    for done, line in enumerate(lines, start=1):
        shown = _shown(line)
        assert {"loss", "cna_train", "cna_test"} <= set(shown)
        for key in ("loss", "cna_train", "cna_test", "beta_train_mean", "beta_test_mean"):
            assert math.isclose(dict(got[key])[done], shown[key], rel_tol=1e-4, abs_tol=6e-5), \
                (key, done)
    assert [s for s, _ in got["cna_test"]] == [0, 1, 2]
    assert [s for s, _ in got["loss"]] == [1, 2]
    assert [s for s, _ in got["cna_margin"]] == [0, 2]  # init and the final snapshot
    assert not any(k.startswith("init_") for k in got)
