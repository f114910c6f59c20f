"""CNACallback in model.fit with a temporary sqlite MLflow store, and the CNA training term."""
import math
import warnings

import numpy as np
import pytest

import keras
import mlflow

import cna_tf
from cna_tf.measures import CNAWarning
from _stores import sqlite_store


@pytest.fixture(scope="module")
def digits():
    return cna_tf.data.load("digits", seed=0)


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = sqlite_store(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_experiment("cna_tests")
    yield mlflow.MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()


def small_mlp(ds, seed=0):
    keras.utils.set_random_seed(seed)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=0.1)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def callback(ds, **kw):
    kw.setdefault("max_samples", 400)
    return cna_tf.CNACallback((ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
                              preprocess=ds.preprocess, value_range=ds.value_range, **kw)


FULL_KEYS = {"cna_area", "margin", "cna_margin", "train_acc", "test_acc", "train_loss",
             "test_loss", "gen_gap", "loss_gap", "l2", "spectral", "l2_path", "bound_2018",
             "l2_raw", "spectral_raw", "l2_path_raw"}


def test_fit_logs_every_epoch_to_logs_and_mlflow(digits, store):
    model = small_mlp(digits)
    cb = callback(digits, full_every=1)
    seen = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(dict(logs)))
    with mlflow.start_run() as run:
        model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=3, batch_size=64,
                  callbacks=[cb, spy], verbose=0)
    assert len(seen) == 3
    for logs in seen:
        assert {"cna_train", "cna_test"} | FULL_KEYS <= set(logs)
        assert all(math.isfinite(logs[k]) for k in ("cna_train", "cna_test", "cna_area",
                                                     "cna_margin", "gen_gap", "l2_raw"))
    margins = {m.step: m.value for m in store.get_metric_history(run.info.run_id, "margin")}
    for key in ["cna_train", "cna_test"] + sorted(FULL_KEYS):
        hist = store.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == [0, 1, 2, 3], key
        for m in hist:
            # norm measures divided by the margin are undefined (NaN) while it is <= 0
            undefined = key in ("l2", "spectral", "l2_path", "bound_2018") and margins[m.step] <= 0
            assert math.isnan(m.value) if undefined else math.isfinite(m.value), (key, m.step)
    if any(v <= 0 for v in margins.values()):
        tag = store.get_run(run.info.run_id).data.tags["cna_nan.l2"]
        # the tag names the snapshot it explains (the last one with a NaN l2)
        last_nan = max(step for step, v in margins.items() if v <= 0)
        assert tag.startswith(f"at epoch {last_nan}: ") and "margin" in tag
    # the logged values are the ones written into logs
    last = {m.step: m.value for m in store.get_metric_history(run.info.run_id, "cna_test")}
    assert last[3] == pytest.approx(seen[-1]["cna_test"])
    arts = {a.path for a in store.list_artifacts(run.info.run_id, "cna")}
    assert arts == {"cna/alpha_beta_epoch3.csv", "cna/alpha_beta_epoch3.png"}
    assert set(cb.history) == {0, 1, 2, 3} and set(cb.snapshots) == {0, 1, 2, 3}
    assert mlflow.active_run() is None


def test_full_snapshots_follow_full_every_and_the_last_epoch(digits, store):
    model = small_mlp(digits)
    cb = callback(digits, full_every=2, every=1, baselines=False)
    with mlflow.start_run() as run:
        model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=3, verbose=0,
                  callbacks=[cb])
    steps = sorted(m.step for m in store.get_metric_history(run.info.run_id, "cna_area"))
    assert steps == [0, 2, 3]
    steps = sorted(m.step for m in store.get_metric_history(run.info.run_id, "cna_test"))
    assert steps == [0, 1, 2, 3]


def test_early_stopping_on_cna_test(digits, store):
    model = small_mlp(digits)
    cb = callback(digits, baselines=False, full_every=0)
    stop = keras.callbacks.EarlyStopping(monitor="cna_test", mode="max", patience=1,
                                         min_delta=10.0)  # nothing improves by 10
    hist = model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=10, verbose=0,
                     callbacks=[cb, stop])
    assert len(hist.history["loss"]) == 2  # epoch 1 sets the baseline, epoch 2 has no gain
    assert "cna_test" in hist.history
    assert 2 in cb.snapshots  # a full snapshot at the epoch training stopped


def test_validation_data_tfdata_and_model_inputs_triple(digits, store):
    import tensorflow as tf
    model = small_mlp(digits)
    x_tr, x_te = digits.preprocess(digits.x_train), digits.preprocess(digits.x_test)
    cb = cna_tf.CNACallback((digits.x_train, digits.y_train, x_tr),
                            (digits.x_test, digits.y_test, x_te), value_range=digits.value_range,
                            baselines=False, max_samples=300)
    data = tf.data.Dataset.from_tensor_slices((x_tr, digits.y_train)).batch(64)
    hist = model.fit(data, validation_data=(x_te, digits.y_test), epochs=2, verbose=0,
                     callbacks=[cb])
    assert {"val_loss", "cna_test", "cna_margin"} <= set(hist.history)


def test_autolog_coexists(digits, store):
    mlflow.tensorflow.autolog(log_models=False, silent=True)
    try:
        model = small_mlp(digits)
        cb = callback(digits, baselines=False, full_every=1)
        model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=2, verbose=0,
                  callbacks=[cb])
        run = store.search_runs([mlflow.get_experiment_by_name("cna_tests").experiment_id])[0]
        assert "cna_test" in run.data.metrics and "cna_margin" in run.data.metrics
        assert len(store.search_runs([run.info.experiment_id])) == 1  # no extra run
    finally:
        mlflow.tensorflow.autolog(disable=True)


def test_mlflow_true_starts_and_ends_a_run_and_false_never_logs(digits, store):
    model = small_mlp(digits)
    cb = callback(digits, baselines=False, mlflow=True, log_artifacts=False)
    model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
              callbacks=[cb])
    assert mlflow.active_run() is None
    exp = mlflow.get_experiment_by_name("cna_tests").experiment_id
    runs = store.search_runs([exp])
    assert len(runs) == 1 and "cna_test" in runs[0].data.metrics
    model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
              callbacks=[callback(digits, baselines=False)])  # no active run: logs only
    with mlflow.start_run() as run:
        model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=1, verbose=0,
                  callbacks=[callback(digits, baselines=False, mlflow=False)])
    assert len(store.search_runs([exp])) == 2
    assert store.get_run(run.info.run_id).data.metrics == {}


def test_constant_images_give_nan_with_a_reason_and_training_goes_on(store):
    rng = np.random.default_rng(0)
    raw = np.full((60, 4, 4, 1), 9, dtype=np.uint8)  # every image has the same complexity
    y = rng.integers(0, 2, 60)
    inputs = rng.normal(size=(60, 4, 4, 1)).astype("float32")
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    cb = cna_tf.CNACallback((raw, y, inputs), (raw, y, inputs), baselines=False)
    with mlflow.start_run() as run, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = model.fit(inputs, y, epochs=2, verbose=0, callbacks=[cb])
    assert len(hist.history["loss"]) == 2
    assert all(math.isnan(v) for v in hist.history["cna_test"])
    assert any(issubclass(w.category, CNAWarning) for w in caught)
    values = store.get_metric_history(run.info.run_id, "cna_test")
    assert len(values) == 3 and all(math.isnan(m.value) for m in values)
    tags = store.get_run(run.info.run_id).data.tags
    assert "zero variance" in tags["cna_nan.cna_test"]


def test_bad_arguments(digits):
    with pytest.raises(ValueError, match="raw_images, labels"):
        cna_tf.CNACallback(digits.x_train, (digits.x_test, digits.y_test))
    with pytest.raises(ValueError, match="every"):
        callback(digits, every=0)
    with pytest.raises(ValueError, match="outside the declared value_range"):
        cna_tf.CNACallback((digits.x_train, digits.y_train), (digits.x_test, digits.y_test),
                           value_range=(0, 10))
    with pytest.raises(ValueError, match="images but"):
        cna_tf.CNACallback((digits.x_train, digits.y_train[:5]), (digits.x_test, digits.y_test),
                           value_range=digits.value_range)


def test_cna_term_gradient_reaches_every_probe_layer(digits):
    import tensorflow as tf
    model = small_mlp(digits)
    probe = cna_tf.ActivationProbe(model)
    x = tf.constant(digits.preprocess(digits.x_train[:64]))
    a = tf.constant(cna_tf.alpha(digits.x_train[:64], value_range=digits.value_range))
    with tf.GradientTape() as tape:
        value = cna_tf.regularizer.batch_cna(a, probe(x))
    grads = tape.gradient(value, [layer.kernel for layer in probe.layers])
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    want = cna_tf.cna(a.numpy(), cna_tf.beta(probe.layer_sums(x.numpy())))
    assert float(value) == pytest.approx(want, abs=1e-4)


def test_cna_term_raises_batch_cna(digits):
    a = cna_tf.alpha(digits.x_train, value_range=digits.value_range)
    x = digits.preprocess(digits.x_train)
    result = {}
    for weight in (0.0, 1.0):
        model = small_mlp(digits, seed=1)
        reg = cna_tf.CNARegularizer(model, weight=weight)
        reg.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy",
                    metrics=["accuracy"])
        reg.fit(reg.inputs(x, a), digits.y_train, epochs=3, batch_size=64, verbose=0)
        result[weight] = cna_tf.cna(a, cna_tf.beta(cna_tf.ActivationProbe(model).layer_sums(x)))
        assert reg.predict(x, verbose=0).shape == (len(x), digits.num_classes)
    assert result[1.0] > result[0.0] + 0.1


def test_one_hot_labels_as_keras_io_examples_use_them(digits):
    """to_categorical labels + categorical_crossentropy: the same history as class indices."""
    onehot = (keras.utils.to_categorical(digits.y_train, 10),
              keras.utils.to_categorical(digits.y_test, 10))
    histories = []
    for y_tr, y_te, loss in ((digits.y_train, digits.y_test, "sparse_categorical_crossentropy"),
                             (*onehot, "categorical_crossentropy")):
        model = small_mlp(digits)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.8), loss)
        cb = cna_tf.CNACallback((digits.x_train, y_tr), (digits.x_test, y_te),
                                preprocess=digits.preprocess, value_range=digits.value_range,
                                max_samples=300, full_every=1, mlflow=False)
        stop = keras.callbacks.EarlyStopping(monitor="cna_test", mode="max", patience=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CNAWarning)
            model.fit(digits.preprocess(digits.x_train), y_tr, epochs=2, batch_size=64,
                      shuffle=False, verbose=0, callbacks=[cb, stop])
        histories.append(cb.history)
    assert histories[0].keys() == histories[1].keys() == {0, 1, 2}
    for epoch, metrics in histories[0].items():
        assert histories[1][epoch] == pytest.approx(metrics, rel=1e-5, abs=1e-6, nan_ok=True)


def _fit_quiet(model, digits, cb, epochs, extra=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)
        model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=epochs,
                  batch_size=64, shuffle=False, verbose=0, callbacks=[*extra, cb])


def test_a_reused_callback_starts_fresh_like_a_new_one(digits):
    model = small_mlp(digits)
    cb = callback(digits, full_every=2, record_trajectory=True, mlflow=False)
    _fit_quiet(model, digits, cb, epochs=3)
    assert set(cb.history) == {0, 1, 2, 3}
    trained = model.get_weights()
    twin = small_mlp(digits, seed=5)
    results = []
    for net, c in ((model, cb), (twin, callback(digits, full_every=2, record_trajectory=True,
                                                mlflow=False))):
        net.set_weights(trained)  # same weights, fresh optimizers: the same second fit
        net.compile(keras.optimizers.SGD(0.05, momentum=0.8), "sparse_categorical_crossentropy")
        _fit_quiet(net, digits, c, epochs=2)
        results.append(c)
    reused, fresh = results
    assert reused.history.keys() == fresh.history.keys() == {0, 1, 2}
    for epoch in fresh.history:
        assert reused.history[epoch] == pytest.approx(fresh.history[epoch], nan_ok=True)
    assert reused.snapshots.keys() == fresh.snapshots.keys() == {0, 2}
    assert reused.trajectory.keys() == fresh.trajectory.keys() == {0, 1, 2}
    np.testing.assert_array_equal(reused.trajectory[0], fresh.trajectory[0])
    # W0 of the second fit is the weights it started from, not the first fit's
    w0 = cna_tf.baselines.initial_kernels(model, trained)
    for key, kernel in w0.items():
        np.testing.assert_array_equal(reused.initial_weights[key], kernel)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("interrupted")


def test_backup_and_restore_in_the_same_process_continues_the_reused_callback(digits, tmp_path):
    """Keras' BackupAndRestore recipe (fit, interrupted; fit again with the same callbacks): the
    resumed fit continues the record and W0 of the interrupted one, equal to an uninterrupted
    run."""
    uninterrupted = callback(digits, full_every=2, mlflow=False)
    _fit_quiet(small_mlp(digits), digits, uninterrupted, epochs=5)

    model = small_mlp(digits)
    cb = callback(digits, full_every=2, mlflow=False)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit_quiet(model, digits, cb, epochs=5, extra=(backup, Interrupt(3)))
    assert set(cb.history) == {0, 1, 2, 3}
    first_w0 = dict(cb.initial_weights)
    _fit_quiet(model, digits, cb, epochs=5, extra=(backup,))
    assert set(cb.history) == set(uninterrupted.history) == {0, 1, 2, 3, 4, 5}
    for epoch, metrics in uninterrupted.history.items():
        assert cb.history[epoch] == pytest.approx(metrics, rel=1e-5, abs=1e-6, nan_ok=True), epoch
    assert set(cb.snapshots) == {0, 2, 4, 5}
    for key, kernel in first_w0.items():
        np.testing.assert_array_equal(cb.initial_weights[key], kernel)


def test_full_snapshots_in_chunks_equal_one_pass_and_keep_no_copy(digits):
    """A set larger than one chunk is measured chunk by chunk (alpha, preprocess, forward pass,
    per-sample values): the same numbers as one pass, preprocess never sees more than a chunk,
    the full set is the arrays given (no copy), and only per-sample scalars are kept."""
    seen = []

    def counting(raw):
        seen.append(len(raw))
        return digits.preprocess(raw)

    model = small_mlp(digits)
    kw = dict(max_samples=None, full_max_samples=None, batch_size=32, full_every=1,
              mlflow=False)
    one = cna_tf.CNACallback((digits.x_train, digits.y_train), (digits.x_test, digits.y_test),
                             preprocess=digits.preprocess, value_range=digits.value_range, **kw)
    chunked = cna_tf.CNACallback((digits.x_train, digits.y_train),
                                 (digits.x_test, digits.y_test), preprocess=counting,
                                 value_range=digits.value_range, **kw)
    rows = 96  # 3 forward batches of 32 digits (64 float32 values each) per chunk
    for split in ("train", "test"):
        samples = chunked.snapshot_samples[split]
        assert samples is chunked.epoch_samples[split]   # both "all": one object
        samples.chunk_bytes, samples.alpha_rows = rows * 64 * 4, 50
        assert samples.chunk_rows(32) == rows
    assert np.shares_memory(chunked.snapshot_samples["train"].raw, digits.x_train)
    model.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=2, batch_size=64,
              verbose=0, callbacks=[one, chunked])
    assert max(seen) == rows and len(seen) > 2 * len(digits.x_train) // rows
    assert sorted(chunked.history) == sorted(one.history) == [0, 1, 2]
    for epoch, metrics in one.history.items():
        assert chunked.history[epoch] == pytest.approx(metrics, rel=1e-12, abs=1e-15,
                                                       nan_ok=True), epoch
        for split in ("train", "test"):
            np.testing.assert_array_equal(chunked.snapshots[epoch][split],
                                          one.snapshots[epoch][split])
    for split in ("train", "test"):
        np.testing.assert_array_equal(chunked.snapshot_alpha[split], one.snapshot_alpha[split])
    assert chunked.curves_csv() == one.curves_csv()
