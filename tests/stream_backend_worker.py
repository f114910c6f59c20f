"""A PyDataset stream in evaluate and CNACallback under one Keras backend, TensorFlow blocked
(used by test_streams): the stream's results must equal the arrays'; and the probe's
layer_outputs under that backend sum to its layer_sums.

Usage: KERAS_BACKEND=jax|torch python tests/stream_backend_worker.py
Prints ``ok <backend> tensorflow_imported=<bool>`` on success; raises otherwise.
"""
import math
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    sys.modules["tensorflow"] = None  # unimportable, as on a machine with only JAX or PyTorch

import numpy as np  # noqa: E402

import keras  # noqa: E402

import cna_tf  # noqa: E402


class RawBatches(keras.utils.PyDataset):
    """(raw_images, labels) batches of in-memory arrays, by index (re-iterable, no TF)."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]


def close(a, b, rel=1e-5):
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-9 + rel * abs(b)


def check(got, want, what):
    assert got.keys() == want.keys(), what
    # a gap is a difference of two float32 means of O(1) (losses, accuracies), so its rounding
    # is ~1e-7 of those terms, not of the (possibly tiny) gap: an absolute tolerance there
    bad = {k: (got[k], want[k]) for k in want
           if not (close(got[k], want[k]) or (k.endswith("_gap") and abs(got[k] - want[k]) <= 1e-6))}
    assert not bad, f"{what}: stream != arrays: {bad}"


def main():
    warnings.simplefilter("ignore")
    ds = cna_tf.data.load("digits", n_train=300, n_test=200, seed=0)
    keras.utils.set_random_seed(0)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=0.1, depth=3)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    kw = dict(preprocess=ds.preprocess, value_range=ds.value_range)
    x = ds.preprocess(ds.x_test[:50])
    for mode in ("pre", "post"):
        probe = cna_tf.ActivationProbe(model, mode=mode, include_output=True)
        acts = probe.layer_outputs(x, batch_size=16)
        assert list(acts) == probe.layer_names
        sums = np.stack([a.reshape(len(a), -1).sum(axis=1) for a in acts.values()], axis=1)
        np.testing.assert_allclose(sums, probe.layer_sums(x), rtol=1e-4, atol=1e-4)
    stream_tr, stream_te = RawBatches(*ds.train, 64), RawBatches(*ds.test, 50)
    check(cna_tf.evaluate(model, stream_tr, stream_te, **kw),
          cna_tf.evaluate(model, ds.train, ds.test, **kw), "evaluate")
    check(cna_tf.evaluate(model, stream_tr, stream_te, max_samples=100, **kw),
          cna_tf.evaluate(model, ds.train, ds.test, max_samples=100, **kw), "evaluate subset")
    weights = model.get_weights()
    histories = []
    for train, test in ((ds.train, ds.test), (stream_tr, stream_te)):
        model.set_weights(weights)
        model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
        cb = cna_tf.CNACallback(train, test, max_samples=120, full_every=1, mlflow=False, **kw)
        model.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=2, batch_size=50,
                  shuffle=False, verbose=0, callbacks=[cb])
        histories.append(cb.history)
    assert histories[0].keys() == histories[1].keys() == {0, 1, 2}
    for epoch in histories[0]:
        check(histories[1][epoch], histories[0][epoch], f"callback epoch {epoch}")
    print(f"ok {keras.backend.backend()} "
          f"tensorflow_imported={sys.modules.get('tensorflow') is not None}")


if __name__ == "__main__":
    main()
