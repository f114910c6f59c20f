"""Streams of (raw_images, labels) batches in evaluate and CNACallback give the arrays' results
(SPEC §6), under TensorFlow here and under JAX / PyTorch without TensorFlow in a subprocess."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import cna_tf
from cna_tf.measures import CNAWarning
from stream_backend_worker import RawBatches  # the same PyDataset the backend worker streams

ROOT = Path(__file__).resolve().parent.parent


class Reiterable:
    """Any object whose __iter__ starts a fresh pass (like a PyTorch DataLoader)."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


def tf_stream(x, y, batch_size):
    import tensorflow as tf
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


STREAMS = {"pydataset": RawBatches, "tf.data": tf_stream, "reiterable": Reiterable}


@pytest.fixture(scope="module")
def digits():
    return cna_tf.data.load("digits", n_train=500, n_test=300, seed=0)


@pytest.fixture(scope="module")
def model(digits):
    keras.utils.set_random_seed(0)
    m = cna_tf.models.build("mlp", digits.input_shape, digits.num_classes, width=0.1, depth=3)
    m.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    m.fit(digits.preprocess(digits.x_train), digits.y_train, epochs=2, verbose=0)
    return m


def assert_metrics_equal(got, want, rel=1e-6):
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rel, abs=1e-9, nan_ok=True), k


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)
        return fn(*args, **kw)


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_evaluate_stream_equals_arrays(digits, model, kind):
    make = STREAMS[kind]
    kw = dict(preprocess=digits.preprocess, value_range=digits.value_range)
    want, wd = quiet(cna_tf.evaluate, model, digits.train, digits.test, return_details=True, **kw)
    got, gd = quiet(cna_tf.evaluate, model, make(*digits.train, 64), make(*digits.test, 100),
                    return_details=True, **kw)
    assert_metrics_equal(got, want)
    for split in ("train", "test"):
        np.testing.assert_array_equal(gd[split]["alpha"], wd[split]["alpha"])
        np.testing.assert_allclose(gd[split]["layer_sums"], wd[split]["layer_sums"], rtol=1e-6,
                                   atol=1e-5)
        np.testing.assert_array_equal(gd[split]["labels"], wd[split]["labels"])
        np.testing.assert_allclose(gd[split]["probs"], wd[split]["probs"], rtol=1e-6, atol=1e-7)
    # a seeded subset of a stream is the arrays' subset (counted, then gathered in a 2nd pass)
    want = quiet(cna_tf.evaluate, model, digits.train, digits.test, max_samples=120, seed=3, **kw)
    got = quiet(cna_tf.evaluate, model, make(*digits.train, 64), make(*digits.test, 100),
                max_samples=120, seed=3, **kw)
    assert_metrics_equal(got, want)


def test_evaluate_stream_of_one_hot_labels_and_mixed_forms(digits, model):
    kw = dict(preprocess=digits.preprocess, value_range=digits.value_range)
    onehot = keras.utils.to_categorical(digits.y_test, 10)
    want = quiet(cna_tf.evaluate, model, digits.train, digits.test, **kw)
    got = quiet(cna_tf.evaluate, model, digits.train, RawBatches(digits.x_test, onehot, 50), **kw)
    assert_metrics_equal(got, want)
    got = quiet(cna_tf.evaluate, model, (digits.x_train, keras.utils.to_categorical(
        digits.y_train, 10)), (digits.x_test, onehot), **kw)
    assert_metrics_equal(got, want, rel=1e-12)


def callback_history(digits, train, test, epochs=2, **kw):
    keras.utils.set_random_seed(0)
    m = cna_tf.models.build("mlp", digits.input_shape, digits.num_classes, width=0.1, depth=3)
    m.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    cb = cna_tf.CNACallback(train, test, preprocess=digits.preprocess,
                            value_range=digits.value_range, mlflow=False, **kw)
    quiet(m.fit, digits.preprocess(digits.x_train), digits.y_train, epochs=epochs, verbose=0,
          shuffle=False, batch_size=50, callbacks=[cb])
    return cb


@pytest.mark.parametrize("kind, sizes", [
    ("pydataset", dict(max_samples=150)),                         # full snapshots stream
    ("tf.data", dict(max_samples=150, full_max_samples=200)),    # both subsets gathered
    ("reiterable", dict(max_samples=None, full_every=1)),        # everything streamed
])
def test_callback_stream_equals_arrays(digits, kind, sizes):
    make = STREAMS[kind]
    want = callback_history(digits, digits.train, digits.test, **sizes)
    got = callback_history(digits, make(*digits.train, 64), make(*digits.test, 128), **sizes)
    assert got.history.keys() == want.history.keys() == {0, 1, 2}
    for epoch in want.history:
        assert_metrics_equal(got.history[epoch], want.history[epoch], rel=1e-5)
    for split in ("train", "test"):
        np.testing.assert_array_equal(got.snapshot_alpha[split], want.snapshot_alpha[split])
        for epoch in want.snapshots:
            np.testing.assert_array_equal(got.snapshots[epoch][split],
                                          want.snapshots[epoch][split])
        np.testing.assert_array_equal(got.epoch_samples[split].alpha,
                                      want.epoch_samples[split].alpha)
    streamed = isinstance(got.snapshot_samples["test"], cna_tf.callback.StreamSamples)
    assert streamed == (sizes.get("full_max_samples") is None)


def test_callback_stream_subsets_are_kept_not_the_stream(digits):
    cb = cna_tf.CNACallback(RawBatches(*digits.train, 64), RawBatches(*digits.test, 64),
                            preprocess=digits.preprocess, value_range=digits.value_range,
                            max_samples=100, full_max_samples=120)
    for split, n in (("train", 500), ("test", 300)):
        sub, full = cb.epoch_samples[split], cb.snapshot_samples[split]
        assert len(sub.raw) == 100 and len(full.raw) == 120
        idx = cna_tf.evaluation.subsample(n, 100, 0 if split == "train" else 1)
        x, y = digits.train if split == "train" else digits.test
        np.testing.assert_array_equal(sub.raw, x[idx])
        np.testing.assert_array_equal(sub.labels, y[idx])


class Reshuffled(RawBatches):
    """A stream that yields another order on every pass (what CNACallback cannot align)."""

    passes = 0

    def __getitem__(self, i):
        if i == 0:
            Reshuffled.passes += 1
        order = np.random.default_rng(Reshuffled.passes).permutation(len(self.x))
        s = order[i * self.batch_size:(i + 1) * self.batch_size]
        return self.x[s], self.y[s]


def generator(x, y):
    for i in range(0, len(x), 10):
        yield x[i:i + 10], y[i:i + 10]


def test_bad_streams_get_one_clear_error(digits, model):
    x, y = digits.train
    kw = dict(preprocess=digits.preprocess, value_range=digits.value_range)
    with pytest.raises(ValueError, match=r"CNACallback train_data: the stream changed between "
                                         r"passes .*same order on every pass.*reshuffle"):
        cna_tf.CNACallback(Reshuffled(x, y, 50), digits.test, max_samples=100, **kw)
    with pytest.raises(ValueError, match="train: a generator can be read only once.*re-iterable"):
        cna_tf.evaluate(model, generator(x, y), digits.test, **kw)
    with pytest.raises(ValueError, match=r"yields single samples .*batch it first, e\.g\. "
                                         r"dataset\.batch\(256\)"):
        cna_tf.evaluate(model, _Unbatched(x, y, 1), digits.test, **kw)
    with pytest.raises(ValueError, match=r"batch 0 of the stream is a dict.*as_supervised=True"):
        cna_tf.evaluate(model, _Dicts(x, y, 10), digits.test, **kw)
    with pytest.raises(ValueError, match=r"must be a pair \(raw_images, labels\), got a tuple of "
                                         r"3 elements at batch 0"):
        cna_tf.CNACallback(_Triples(x, y, 10), digits.test, **kw)
    smooth = keras.utils.to_categorical(y, 10) * 0.9 + 0.01
    with pytest.raises(ValueError, match=r"CNACallback train_data \(batch starting at sample 0\)"
                                         r": labels .*smoothed or mixed"):
        cna_tf.CNACallback(RawBatches(x, smooth, 64), digits.test, **kw)
    with pytest.raises(ValueError, match=r"outside the declared value_range"):
        cna_tf.CNACallback(RawBatches(x, y, 64), digits.test, preprocess=digits.preprocess,
                           value_range=(0, 10))


class _Unbatched(Reiterable):
    def __iter__(self):
        for i in range(len(self.x)):
            yield self.x[i], self.y[i]


class _Dicts(Reiterable):
    def __iter__(self):
        yield {"image": self.x[:10], "label": self.y[:10]}


class _Triples(Reiterable):
    def __iter__(self):
        yield self.x[:10], self.y[:10], np.ones(10)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_pydataset_streams_without_tensorflow(tmp_path, backend):
    """Under JAX and PyTorch, with TensorFlow unimportable, a PyDataset stream gives the arrays'
    results in evaluate and CNACallback, and layer_outputs sum to layer_sums
    (tests/stream_backend_worker.py)."""
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "stream_backend_worker.py")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"ok {backend} tensorflow_imported=False", proc.stdout[-2000:]
