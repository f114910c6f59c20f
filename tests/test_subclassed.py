"""Subclassed keras.Model (layers as attributes, call() in Python) everywhere a model goes.

Each subclassed model is checked against its functional twin (the same layer objects, wired the
same way) and, for the MLP, against a numpy forward pass; the probe traces call() once on
symbolic inputs (cna_tf.probe.layer_graph).
"""
import math

import numpy as np
import pytest

import keras
from keras import layers, ops

import cna_tf
from cna_tf import baselines as B
from cna_tf.probe import UntraceableModelError, layer_graph

RNG = np.random.default_rng(0)


def random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):  # non-trivial inference statistics
            g, b, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, g.shape), rng.normal(size=b.shape),
                               rng.normal(size=mean.shape), rng.uniform(0.5, 3, var.shape)])
        elif layer.weights and not layer._flatten_layers(include_self=False):
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                               for w in layer.get_weights()])


class MLP(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.d1 = layers.Dense(5, activation="tanh", name="d1")
        self.d2 = layers.Dense(4, name="d2")
        self.d3 = layers.Dense(4, activation="sigmoid", name="d3")
        self.head = layers.Dense(3, activation="softmax", name="head")

    def call(self, x):
        h = ops.relu(self.d2(self.d1(x)))
        return self.head(self.d3(h))


def mlp_twin(net):
    inp = keras.Input((6,))
    h = layers.ReLU()(net.d2(net.d1(inp)))
    return keras.Model(inp, net.head(net.d3(h)))


class Block(layers.Layer):
    """A residual block as a custom layer: conv-BN-relu-conv-BN, plus the input."""

    def __init__(self, filters, **kw):
        super().__init__(**kw)
        self.c1 = layers.Conv2D(filters, 3, padding="same", activation="tanh", name="c1")
        self.bn1 = layers.BatchNormalization(name="bn1")
        self.c2 = layers.Conv2D(filters, 3, padding="same", name="c2")
        self.bn2 = layers.BatchNormalization(name="bn2")

    def call(self, x, training=None):
        h = self.bn1(self.c1(x), training=training)
        h = self.bn2(self.c2(h), training=training)
        return ops.relu(x + h)


class ConvNet(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.stem = layers.Conv2D(3, 3, padding="same", name="stem")
        self.block = Block(3, name="block")
        self.pool = layers.GlobalAveragePooling2D()
        self.fc = layers.Dense(6, activation="relu", name="fc")
        self.head = layers.Dense(4, activation="softmax", name="head")

    def call(self, x, training=False):
        h = self.block(self.stem(x), training=training)
        return self.head(self.fc(self.pool(h)))


def conv_twin(net):
    b = net.block
    inp = keras.Input((8, 8, 1))
    x = net.stem(inp)
    h = b.bn2(b.c2(b.bn1(b.c1(x))))
    x = layers.ReLU()(layers.Add()([x, h]))
    return keras.Model(inp, net.head(net.fc(net.pool(x))))


@pytest.fixture
def mlp():
    net = MLP(name="sub_mlp")
    net(np.zeros((2, 6), "float32"))
    random_weights(net)
    return net


@pytest.fixture
def conv():
    net = ConvNet(name="sub_conv")
    net(np.zeros((1, 8, 8, 1), "float32"))
    random_weights(net, seed=1)
    return net


def digits_like(n, shape, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, size=(n,) + shape).astype("uint8"), rng.integers(0, classes, n)


def test_mlp_probe_equals_numpy_and_its_functional_twin(mlp):
    x = RNG.random((16, 6)).astype("float32")
    twin = mlp_twin(mlp)
    ws = [layer.get_weights() for layer in (mlp.d1, mlp.d2, mlp.d3, mlp.head)]
    acts = [np.tanh, lambda v: np.maximum(v, 0), lambda v: 1 / (1 + np.exp(-v))]
    pre, post, h = [], [], x.astype(np.float64)
    for (w, b), f in zip(ws[:3], acts):
        z = h @ w + b
        h = f(z)
        pre.append(z.sum(1))
        post.append(h.sum(1))
    for mode, want in (("pre", pre), ("post", post)):
        probe = cna_tf.ActivationProbe(mlp, mode=mode)
        assert probe.layer_names == ["d1", "d2", "d3"]
        sums = probe.layer_sums(x)
        np.testing.assert_allclose(sums, np.stack(want, 1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sums, cna_tf.ActivationProbe(twin, mode=mode).layer_sums(x))
    full = cna_tf.ActivationProbe(mlp, include_output=True)
    np.testing.assert_array_equal(cna_tf.beta(full.layer_sums(x)),
                                  cna_tf.beta(cna_tf.ActivationProbe(
                                      twin, include_output=True).layer_sums(x)))
    # the trace leaves the user's layers as they were (no node added)
    assert all(len(layer._inbound_nodes) == 1 for layer in (mlp.d1, mlp.d2, mlp.d3, mlp.head))


def test_conv_net_with_residual_block_and_bn_equals_its_twin(conv):
    twin = conv_twin(conv)
    x = RNG.random((8, 8, 8, 1)).astype("float32")
    for mode in ("pre", "post"):
        for include_output in (False, True):
            p = cna_tf.ActivationProbe(conv, mode=mode, include_output=include_output)
            q = cna_tf.ActivationProbe(twin, mode=mode, include_output=include_output)
            assert p.layer_names == ["stem", "block/c1", "block/c2", "fc", "head"][:p.num_layers]
            assert [layer.name for layer in p.layers] == q.layer_names
            np.testing.assert_allclose(p.layer_sums(x), q.layer_sums(x), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(conv.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-6)
    # pre mode reads c1 before its tanh and before bn1: a numpy conv of the stem output
    stem = np.asarray(conv.stem(x))
    k, b = conv.block.c1.get_weights()
    pad = np.pad(stem, ((0, 0), (1, 1), (1, 1), (0, 0)))
    z = sum(np.einsum("nhwc,cf->nhwf", pad[:, i:i + 8, j:j + 8], k[i, j])
            for i in range(3) for j in range(3)) + b
    np.testing.assert_allclose(cna_tf.ActivationProbe(conv).layer_sums(x)[:, 1],
                               z.sum((1, 2, 3)), rtol=1e-4, atol=1e-3)


def test_baselines_and_evaluate_equal_the_twin(conv):
    twin = conv_twin(conv)
    w0 = conv.get_weights()                                   # the Keras habit: a list
    kernels0 = list(B.capture_initial_weights(conv).values())  # matched by position
    random_weights(conv, seed=5)          # "trained" weights; w0 are the initial ones
    got = B.compute(conv, 0.25, initial_weights=w0, train_size=40)
    want = B.compute(twin, 0.25, initial_weights=kernels0, train_size=40)
    assert set(got) == set(want) and all(math.isfinite(v) for v in got.values())
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    # l2_path by hand is covered for functional models; here it must equal the twin's
    assert got["l2_path_raw"] == pytest.approx(B.l2_path_raw(twin), rel=1e-12)
    train = digits_like(40, (8, 8, 1), 4, seed=2)
    test = digits_like(24, (8, 8, 1), 4, seed=3)
    kw = dict(preprocess=lambda r: r.astype("float32") / 16, value_range=(0, 16), window=5,
              points=20)
    a = cna_tf.evaluate(conv, train, test, **kw)
    b = cna_tf.evaluate(twin, train, test, **kw)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_kernel_order_and_names_follow_call_not_attributes():
    class Reversed(keras.Model):
        def __init__(self):
            super().__init__(name="reversed")
            self.last = layers.Dense(2, name="last")     # defined first, called last
            self.middle = layers.Dense(3, name="middle")
            self.first = layers.Dense(4, name="first")

        def call(self, x):
            return self.last(self.middle(self.first(x)))

    net = Reversed()
    net(np.zeros((1, 5), "float32"))
    assert [layer.name for layer in net.layers] == ["last", "middle", "first"]
    assert cna_tf.ActivationProbe(net, include_output=True).layer_names == \
        ["first", "middle", "last"]
    assert [m.shape for m in B.kernel_matrices(net)] == [(4, 5), (3, 4), (2, 3)]


def test_functional_model_with_a_custom_block_and_a_nested_subclassed_model(conv):
    """Custom blocks inside functional models, and functional models inside subclassed ones,
    are expanded too (names ``block/c1``; ``inner/...`` for a nested functional model)."""
    inp = keras.Input((8, 8, 1))
    outer = keras.Model(inp, conv.head(conv.fc(conv.pool(conv.block(conv.stem(inp))))),
                        name="outer")
    x = RNG.random((4, 8, 8, 1)).astype("float32")
    p, q = cna_tf.ActivationProbe(outer), cna_tf.ActivationProbe(conv)
    assert p.layer_names == q.layer_names
    np.testing.assert_allclose(p.layer_sums(x), q.layer_sums(x), rtol=1e-6, atol=1e-5)

    class Wrapper(keras.Model):
        def __init__(self, inner):
            super().__init__(name="wrapper")
            self.inner = inner
            self.out = layers.Dense(2, name="out")

        def call(self, x):
            return self.out(self.inner(x))

    wrapped = Wrapper(outer)
    wrapped(x[:1])
    probe = cna_tf.ActivationProbe(wrapped)
    assert probe.layer_names == ["outer/" + n for n in q.layer_names] + ["outer/head"]
    np.testing.assert_allclose(probe.layer_sums(x)[:, :4], q.layer_sums(x), rtol=1e-6,
                               atol=1e-5)


def test_cna_callback_in_fit_on_a_subclassed_model():
    keras.utils.set_random_seed(0)
    net = ConvNet(name="fit_conv")                       # never called: fit builds it
    net.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    train, test = digits_like(48, (8, 8, 1), 4, seed=4), digits_like(32, (8, 8, 1), 4, seed=5)
    prep = lambda r: r.astype("float32") / 16  # noqa: E731
    cb = cna_tf.CNACallback(train, test, preprocess=prep, value_range=(0, 16), full_every=1,
                            window=5, points=20, mlflow=False, log_artifacts=False)
    net.fit(prep(train[0]), train[1], epochs=2, batch_size=16, callbacks=[cb], verbose=0)
    assert set(cb.history) == {0, 1, 2}
    assert cb.probe.layer_names == ["stem", "block/c1", "block/c2", "fc"]
    last = cb.history[2]
    want = cna_tf.evaluate(conv_twin(net), train, test, preprocess=prep, value_range=(0, 16),
                           window=5, points=20)
    for key in ("cna_train", "cna_test", "cna_area", "margin", "l2_raw", "l2_path_raw",
                "spectral_raw", "train_acc", "test_acc"):
        assert last[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6, nan_ok=True), key


def test_keras_applications_mobilenet_with_cna_callback():
    """Regression guard: a keras.applications network trains with CNACallback unchanged."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=3,
                                           alpha=0.35)
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 256, (16, 32, 32, 3)).astype("uint8")   # 8 train, 8 test: one
    y = rng.integers(0, 3, 16)                                     # batch shape, one trace
    prep = lambda r: r.astype("float32") / 255  # noqa: E731
    cb = cna_tf.CNACallback((raw[:8], y[:8]), (raw[8:], y[8:]), preprocess=prep,
                            full_every=1, window=2, points=10, mlflow=False,
                            log_artifacts=False)
    model.fit(prep(raw[:8]), y[:8], epochs=1, batch_size=8, callbacks=[cb], verbose=0)
    assert set(cb.history) == {0, 1}
    assert cb.probe.num_layers == 52          # 35 convs, 17 depthwise convs; head left out
    assert math.isfinite(cb.history[1]["cna_train"]) and math.isfinite(cb.history[1]["l2_raw"])


# -- what cannot be traced: one error naming the model, what failed and the fix ---------------

class Branchy(keras.Model):
    def __init__(self):
        super().__init__(name="branchy")
        self.a, self.b, self.c = layers.Dense(4), layers.Dense(4), layers.Dense(2)

    def call(self, x):
        h = self.a(x)
        if ops.mean(h) > 0:           # Python control flow on a tensor value
            h = self.b(h)
        return self.c(h)


class InsideCond(keras.Model):
    def __init__(self):
        super().__init__(name="inside_cond")
        self.a, self.b, self.c = layers.Dense(4), layers.Dense(4), layers.Dense(2)

    def call(self, x):
        h = self.a(x)
        h = ops.cond(ops.mean(h) > 0, lambda: self.b(h), lambda: h)  # b hidden in an op
        return self.c(h)


def test_untraceable_call_is_one_clear_error():
    x = np.ones((2, 3), "float32")
    net = Branchy()
    net(x)          # eager Python control flow works, the symbolic trace cannot follow it
    with pytest.raises(UntraceableModelError) as err:
        cna_tf.ActivationProbe(net)
    msg = str(err.value)
    assert "Branchy 'branchy'" in msg and "symbolic" in msg and "keras.ops.where" in msg
    assert "functional API" in msg and msg.count("ActivationProbe cannot trace") == 1
    for entry in (lambda: B.compute(net, 0.5),
                  lambda: cna_tf.evaluate(net, (np.ones((4, 3)), [0, 1, 0, 1]),
                                          (np.ones((4, 3)), [0, 1, 0, 1]), value_range=(0, 1))):
        with pytest.raises(UntraceableModelError, match="branchy"):
            entry()
    cond = InsideCond()
    cond(x)
    with pytest.raises(UntraceableModelError, match="inside_cond") as err:
        layer_graph(cond)
    assert "not called as graph nodes" in str(err.value) and "keras.ops.cond" in str(err.value)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        class TFOp(MLP):
            def call(self, x):
                return self.head(self.d3(tf.nn.relu(self.d2(self.d1(x)))))

        tfop = TFOp(name="tf_op")
        tfop(np.zeros((1, 6), "float32"))   # Keras builds it on TensorFlow placeholders
        with pytest.raises(UntraceableModelError, match="'tf_op'") as err:
            cna_tf.ActivationProbe(tfop)
        assert "KerasTensor" in str(err.value) and "tf.*" in str(err.value)
    unbuilt = MLP(name="unbuilt")
    with pytest.raises(UntraceableModelError, match=r"not been built.*model.build"):
        cna_tf.ActivationProbe(unbuilt)


def test_untraceable_model_stops_fit_at_the_first_epoch():
    net = Branchy()
    net.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.ones((8, 3), "float32"), np.arange(8) % 2
    cb = cna_tf.CNACallback((x, y), (x, y), value_range=(0, 1), mlflow=False)
    with pytest.raises(UntraceableModelError, match="branchy"):
        net.fit(x, y, epochs=1, callbacks=[cb], verbose=0)


# -- saved subclassed models ----------------------------------------------------------------

@keras.saving.register_keras_serializable(package="cna_tf_tests")
class SavableMLP(MLP):
    def get_config(self):
        return {"name": self.name}


def test_saved_subclassed_model_reloads_when_registered_and_says_why_not(tmp_path, mlp):
    from cna_tf import scoring

    net = SavableMLP(name="savable")
    net(np.zeros((1, 6), "float32"))
    random_weights(net, seed=3)
    path = str(tmp_path / "savable.keras")
    net.save(path)
    back = scoring.load_model(path)
    x = RNG.random((5, 6)).astype("float32")
    np.testing.assert_allclose(cna_tf.ActivationProbe(back).layer_sums(x),
                               cna_tf.ActivationProbe(net).layer_sums(x), rtol=1e-6)
    bad = str(tmp_path / "mlp.keras")
    mlp.save(bad)                         # MLP is neither registered nor has a get_config
    with pytest.raises(ValueError) as err:
        scoring.load_model(bad)
    msg = str(err.value)
    assert bad in msg and "MLP" in msg and "register_keras_serializable" in msg
    assert "get_config" in msg


def test_flatness_and_the_suite_equal_the_twin(conv):
    """SPEC §8's searches and §12's suite see the same weights, the same BN folding and the same
    layer input sizes through a subclassed model as through its functional twin."""
    from cna_tf import flatness, suite

    twin = conv_twin(conv)
    w0 = {"sub": suite.capture_initial_weights(conv), "twin": suite.capture_initial_weights(twin)}
    assert [a.shape for a in w0["sub"].values()] == [b.shape for b in w0["twin"].values()]
    random_weights(conv, seed=6)                 # trained away from the captured ones
    x = digits_like(32, (8, 8, 1), 4, seed=4)[0].astype("float32") / 16
    y = conv.predict(x, verbose=0).argmax(1)     # its own labels: γ₁₀ > 0, margins defined
    y[:2] = (y[:2] + 1) % 4                      # a few errors, so the searches have a target
    got = flatness.compute(conv, x, y, samples=32, seed=0)
    want = flatness.compute(twin, x, y, samples=32, seed=0)
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == pytest.approx(want[key], rel=1e-6, nan_ok=True), key
    a = suite.compute(conv, x, y, initial_weights=w0["sub"], names=suite.CHEAP, train_size=32)
    b = suite.compute(twin, x, y, initial_weights=w0["twin"], names=suite.CHEAP, train_size=32)
    assert a.keys() == b.keys() and a.reasons == b.reasons
    assert sorted(k for k, v in a.items() if not math.isfinite(v)) == sorted(a.reasons)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True), key
