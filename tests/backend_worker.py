"""Runs the core metrics and a CNACallback fit under one Keras backend (used by test_backends).

Usage: KERAS_BACKEND=<name> python tests/backend_worker.py OUT_DIR [--save-weights]
Writes OUT_DIR/<backend>.json. With --save-weights the initial weights are written to
OUT_DIR/init.weights.h5 (the TensorFlow run); otherwise they are loaded from there.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    # TensorFlow unimportable, as on a machine that only has JAX or PyTorch.
    sys.modules["tensorflow"] = None

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

import cna_tf  # noqa: E402


def build():
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="tanh", name="c1")(inp)
    x = layers.BatchNormalization(name="bn1")(x)
    h = layers.Conv2D(4, 3, padding="same", name="c2")(x)
    h = layers.BatchNormalization(name="bn2")(h)
    x = layers.ReLU()(layers.Add()([x, h]))
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu", name="d1")(x)
    out = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inp, out)


class Subclassed(keras.Model):
    """build()'s network as a subclassed model over the same layer objects (same weights)."""

    def __init__(self, functional):
        super().__init__(name="subclassed")
        for name in ("c1", "bn1", "c2", "bn2", "d1", "head"):
            setattr(self, name, functional.get_layer(name))
        self.flat = layers.Flatten()

    def call(self, x, training=False):
        x = self.bn1(self.c1(x), training=training)
        h = self.bn2(self.c2(x), training=training)
        return self.head(self.d1(self.flat(keras.ops.relu(x + h))))


def box_moves(radius=0.01):
    """How far each weight of a small net moves in 3 steps of the flatness α search's optimizer
    (`cna_tf.flatness._BoxAscent`, learning rate 10) inside the box |w - w0| <= radius: the
    projection in the compiled step must hold on every backend (each move is radius, no more)."""
    from cna_tf.flatness import _BoxAscent

    keras.utils.set_random_seed(1)
    inp = keras.Input((4,))
    net = keras.Model(inp, layers.Dense(3)(layers.Dense(5, activation="tanh")(inp)))
    w0 = [np.asarray(keras.ops.convert_to_numpy(v)) for v in net.trainable_variables]
    opt = _BoxAscent(learning_rate=10.0, name="box_ascent")
    net.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    opt.build(net.trainable_variables)
    opt.set_box(net.trainable_variables, [w - radius for w in w0], [w + radius for w in w0])
    x = np.linspace(-1, 1, 32, dtype="float32").reshape(8, 4)
    for _ in range(3):
        net.train_on_batch(x, np.arange(8) % 3)
    return [float(np.abs(np.asarray(keras.ops.convert_to_numpy(v)) - w).max())
            for v, w in zip(net.trainable_variables, w0)]


def main(out_dir, save):
    backend = keras.backend.backend()
    ds = cna_tf.data.load("digits", n_train=400, n_test=200, seed=0)
    weights = os.path.join(out_dir, "init.weights.h5")
    if save:
        keras.utils.set_random_seed(0)  # (this also seeds TensorFlow when it is importable)
        model = build()
        model.save_weights(weights)
    else:
        model = build()
        model.load_weights(weights)
    x_tr, x_te = ds.preprocess(ds.x_train), ds.preprocess(ds.x_test)
    probe = cna_tf.ActivationProbe(model)
    sums, outputs = probe.layer_sums_and_outputs(x_te, batch_size=64)
    a_tr = cna_tf.alpha(ds.x_train, value_range=ds.value_range)
    a_te = cna_tf.alpha(ds.x_test, value_range=ds.value_range)
    b_tr = cna_tf.beta(probe.layer_sums(x_tr))
    b_te = cna_tf.beta(sums)
    res = {"backend": backend, "layer_names": probe.layer_names, "sums": sums.tolist(),
           "outputs": np.asarray(outputs).tolist(),
           "beta": b_te.tolist(), "cna": cna_tf.cna(a_te, b_te),
           "cna_area": cna_tf.cna_area(a_tr, b_tr, a_te, b_te),
           "evaluate": cna_tf.evaluate(model, ds.train, ds.test, preprocess=ds.preprocess,
                                       value_range=ds.value_range, probe=probe)}
    sub = Subclassed(model)
    sub(x_te[:1])
    sub_probe = cna_tf.ActivationProbe(sub)
    res["sub_layer_names"] = sub_probe.layer_names
    res["sub_sums"] = sub_probe.layer_sums(x_te, batch_size=64).tolist()
    res["sub_evaluate"] = cna_tf.evaluate(sub, ds.train, ds.test, preprocess=ds.preprocess,
                                          value_range=ds.value_range)
    def fit_history(net, epochs):
        """CNACallback's history of ``epochs`` epochs of ``net`` in fit."""
        net.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        cb = cna_tf.CNACallback(ds.train, ds.test, preprocess=ds.preprocess,
                                value_range=ds.value_range, full_every=1, mlflow=False)
        net.fit(x_tr, ds.y_train, epochs=epochs, batch_size=100, shuffle=False, verbose=0,
                callbacks=[cb])
        return {str(k): v for k, v in cb.history.items()}

    res["history"] = fit_history(model, 2)
    # a subclassed model in fit (it continues from the weights the functional fit left)
    res["sub_history"] = fit_history(sub, 1)
    res["box_moves"] = box_moves()
    res["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    try:
        ds.pipeline("train", batch_size=32)
        res["pipeline_error"] = None
    except ImportError as e:
        res["pipeline_error"] = str(e)
    with open(os.path.join(out_dir, f"{backend}.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], "--save-weights" in sys.argv)
