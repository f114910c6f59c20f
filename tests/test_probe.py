"""ActivationProbe on models whose activations are computed independently (by hand or by Keras)."""
import numpy as np
import pytest

import keras
from keras import layers

import cna_tf
from cna_tf.probe import UntraceableModelError


def set_random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       if w.ndim else w for w in model.get_weights()])


def bn_inference_stats(model, seed=1):
    """Non-trivial BN moving statistics, so training-mode BN would give different sums."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            g, b, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, g.shape), rng.normal(size=b.shape),
                               rng.normal(size=mean.shape), rng.uniform(0.5, 3, var.shape)])


def reduce_all(a, how="sum"):
    a = np.asarray(a, dtype=np.float64)
    axes = tuple(range(1, a.ndim))
    return a.sum(axis=axes) if how == "sum" else a.mean(axis=axes)


@pytest.fixture
def mlp():
    inp = keras.Input((6,))
    x = layers.Dense(5, activation="tanh")(inp)
    x = layers.Dense(4, activation="relu")(x)
    x = layers.Dense(4, activation="sigmoid")(x)
    out = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inp, out)
    set_random_weights(model)
    return model


def hand_forward(model, x):
    """Pre- and post-activations of the MLP fixture, by hand in float64."""
    ws = [layer.get_weights() for layer in model.layers[1:]]
    acts = [np.tanh, lambda v: np.maximum(v, 0), lambda v: 1 / (1 + np.exp(-v)),
            lambda v: np.exp(v - v.max(1, keepdims=True)) / np.exp(v - v.max(1, keepdims=True))
            .sum(1, keepdims=True)]
    pre, post, h = [], [], x.astype(np.float64)
    for (w, b), f in zip(ws, acts):
        z = h @ w + b
        h = f(z)
        pre.append(z)
        post.append(h)
    return pre, post


@pytest.mark.parametrize("mode", ["pre", "post"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("include_output", [False, True])
def test_mlp_matches_hand_computation(mlp, rng, mode, reduce, include_output):
    x = rng.normal(size=(17, 6)).astype("float32")
    pre, post = hand_forward(mlp, x)
    ref = pre if mode == "pre" else post
    want = np.stack([reduce_all(a, reduce) for a in ref], axis=1)
    if not include_output:
        want = want[:, :-1]
    probe = cna_tf.ActivationProbe(mlp, mode=mode, reduce=reduce, include_output=include_output)
    got = probe.layer_sums(x, batch_size=5)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert probe.layer_names == [layer.name for layer in mlp.layers[1:]][:want.shape[1]]


def test_outputs_from_the_same_pass(mlp, rng):
    x = rng.normal(size=(9, 6)).astype("float32")
    probe = cna_tf.ActivationProbe(mlp)
    sums, outputs = probe.layer_sums_and_outputs(x)
    np.testing.assert_allclose(outputs, mlp.predict(x, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(sums, probe.layer_sums(x), rtol=1e-6)


def test_user_model_is_not_changed(mlp, rng):
    x = rng.normal(size=(4, 6)).astype("float32")
    before = mlp.predict(x, verbose=0)
    nodes = [len(layer._inbound_nodes) for layer in mlp.layers]
    acts = [getattr(layer, "activation", None) for layer in mlp.layers]
    probe = cna_tf.ActivationProbe(mlp, include_output=True)
    probe.layer_sums(x)
    assert [len(layer._inbound_nodes) for layer in mlp.layers] == nodes
    assert [getattr(layer, "activation", None) for layer in mlp.layers] == acts
    np.testing.assert_array_equal(mlp.predict(x, verbose=0), before)


FUSED_CASES = [
    ("dense", (7,), lambda a: layers.Dense(4, activation=a)),
    ("conv1d", (9, 3), lambda a: layers.Conv1D(4, 3, activation=a)),
    ("conv2d", (8, 8, 2), lambda a: layers.Conv2D(4, 3, strides=2, padding="same", activation=a)),
    ("conv3d", (5, 5, 5, 1), lambda a: layers.Conv3D(2, 2, activation=a)),
    ("depthwise", (8, 8, 3), lambda a: layers.DepthwiseConv2D(3, depth_multiplier=2,
                                                               activation=a)),
    ("separable", (8, 8, 3), lambda a: layers.SeparableConv2D(4, 3, activation=a)),
    ("transpose", (4, 4, 3), lambda a: layers.Conv2DTranspose(2, 3, strides=2, activation=a)),
]


def twins(shape, make, act):
    """The same network with the activation fused into the layer and as its own layer."""
    inp = keras.Input(shape)
    fused_layer = make(act)
    x = fused_layer(inp)
    x = layers.Flatten()(x)
    x = layers.Dense(3, activation="tanh")(x)
    fused = keras.Model(inp, layers.Dense(2, activation="softmax")(x))
    set_random_weights(fused)
    inp2 = keras.Input(shape)
    y = make(None)(inp2)
    y = layers.Activation(act)(y)
    y = layers.Flatten()(y)
    y = layers.Dense(3)(y)
    y = layers.Activation("tanh")(y)
    y = layers.Dense(2)(y)
    unfused = keras.Model(inp2, layers.Activation("softmax")(y))
    unfused.set_weights(fused.get_weights())
    return fused, unfused


@pytest.mark.parametrize("name,shape,make", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_fused_activation_equals_unfused_twin(name, shape, make, rng):
    fused, unfused = twins(shape, make, "tanh")
    x = rng.normal(size=(6, *shape)).astype("float32")
    np.testing.assert_allclose(fused.predict(x, verbose=0), unfused.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    for mode in ("pre", "post"):
        a = cna_tf.ActivationProbe(fused, mode=mode, include_output=True).layer_sums(x)
        b = cna_tf.ActivationProbe(unfused, mode=mode, include_output=True).layer_sums(x)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # pre of the first layer is its affine output: compare with a linear twin run by Keras
    linear = keras.Model(unfused.inputs, unfused.layers[1].output)
    want = reduce_all(linear.predict(x, verbose=0))
    got = cna_tf.ActivationProbe(fused, include_output=True).layer_sums(x)[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def residual_model(seed=0):
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    h = layers.Conv2D(6, 3, strides=2, padding="same", name="b1_conv1")(x)
    h = layers.BatchNormalization(name="b1_bn1")(h)
    h = layers.Activation("relu", name="b1_relu")(h)
    h = layers.Conv2D(6, 3, padding="same", name="b1_conv2")(h)
    h = layers.BatchNormalization(name="b1_bn2")(h)
    s = layers.Conv2D(6, 1, strides=2, name="b1_short")(x)
    s = layers.BatchNormalization(name="b1_short_bn")(s)
    x = layers.Add(name="b1_add")([h, s])
    x = layers.ReLU(name="b1_out")(x)
    c = layers.Concatenate(name="cat")([x, layers.Conv2D(2, 1, name="side")(x)])
    x = layers.GlobalAveragePooling2D()(c)
    out = layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    set_random_weights(model, seed)
    bn_inference_stats(model)
    return model


def test_residual_bn_concat_against_keras_feature_extractor(rng):
    model = residual_model()
    x = rng.normal(size=(10, 8, 8, 3)).astype("float32")
    names = ["stem", "b1_conv1", "b1_conv2", "b1_short", "side"]
    probe = cna_tf.ActivationProbe(model)
    assert probe.layer_names == names
    extractor = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    want = np.stack([reduce_all(a) for a in extractor.predict(x, verbose=0)], axis=1)
    np.testing.assert_allclose(probe.layer_sums(x), want, rtol=1e-4, atol=1e-3)
    # post: the first nonlinearity reached through at most one BN; conv2 and the shortcut reach
    # an Add after their BN, so they keep their affine output
    post = cna_tf.ActivationProbe(model, mode="post")
    outs = ["stem_relu", "b1_relu", "b1_conv2", "b1_short", "side"]
    extractor = keras.Model(model.inputs, [model.get_layer(n).output for n in outs])
    want = np.stack([reduce_all(a) for a in extractor.predict(x, verbose=0)], axis=1)
    np.testing.assert_allclose(post.layer_sums(x), want, rtol=1e-4, atol=1e-3)


def test_bn_runs_in_inference_mode(rng):
    model = residual_model()
    bn = model.get_layer("stem_bn")
    stats_before = [w.copy() for w in bn.get_weights()]
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32") * 5 + 3
    sums = cna_tf.ActivationProbe(model, mode="post").layer_sums(x)
    for a, b in zip(stats_before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)
    relu = keras.Model(model.inputs, model.get_layer("stem_relu").output)
    np.testing.assert_allclose(sums[:, 0], reduce_all(relu(x, training=False)), rtol=1e-4)
    assert not np.allclose(sums[:, 0], reduce_all(relu(x, training=True)), rtol=1e-3)


def test_nested_models_expand_in_call_order(rng):
    block = keras.Sequential([keras.Input((6,)), layers.Dense(5, activation="tanh"),
                              layers.Dense(5)], name="block")
    i2 = keras.Input((5,))
    inner = keras.Model(i2, layers.Dense(4, activation="relu", name="inner_dense")(i2),
                        name="inner")
    inp = keras.Input((6,))
    x = block(inp)
    x = layers.Activation("tanh")(x)
    x = inner(x)
    out = layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    set_random_weights(model)
    # flat twin with the same weights
    fi = keras.Input((6,))
    f = layers.Dense(5, activation="tanh")(fi)
    f = layers.Dense(5, activation="tanh")(f)
    f = layers.Dense(4, activation="relu")(f)
    flat = keras.Model(fi, layers.Dense(3, activation="softmax")(f))
    flat.set_weights(model.get_weights())
    x_in = rng.normal(size=(8, 6)).astype("float32")
    probe = cna_tf.ActivationProbe(model, include_output=True)
    assert probe.layer_names == ["block/" + block.layers[0].name, "block/" + block.layers[1].name,
                                 "inner/inner_dense", "head"]
    for mode in ("pre", "post"):
        got = cna_tf.ActivationProbe(model, mode=mode, include_output=True).layer_sums(x_in)
        want = cna_tf.ActivationProbe(flat, mode=mode, include_output=True).layer_sums(x_in)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sequential_model(rng):
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2D(3, 2, activation="relu"),
                              layers.Flatten(), layers.Dense(5, activation="tanh"),
                              layers.Dense(2, activation="softmax")])
    set_random_weights(model)
    x = rng.normal(size=(5, 4, 4, 1)).astype("float32")
    sums = cna_tf.ActivationProbe(model).layer_sums(x)
    conv, dense = model.layers[0], model.layers[2]
    c = keras.Model(model.inputs, conv.output)
    k, b = conv.get_weights()
    xi = x[:, :, :, 0]
    pre = np.zeros((5, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = xi[:, i:i + 2, j:j + 2].reshape(5, 4)
            pre[:, i, j] = patch @ k.reshape(4, 3) + b
    np.testing.assert_allclose(sums[:, 0], pre.sum((1, 2, 3)), rtol=1e-4, atol=1e-4)
    h = np.maximum(pre, 0).reshape(5, -1) @ dense.get_weights()[0] + dense.get_weights()[1]
    np.testing.assert_allclose(sums[:, 1], h.sum(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(c.predict(x, verbose=0), np.maximum(pre, 0), rtol=1e-4, atol=1e-5)


def test_keras_applications_model(rng):
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=4,
                                           alpha=0.35)
    probe = cna_tf.ActivationProbe(model)
    affine = [layer for layer in model.layers
              if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))]
    assert probe.layer_names == [layer.name for layer in affine][:-1]
    x = rng.random((4, 32, 32, 3)).astype("float32")
    extractor = keras.Model(model.inputs, [layer.output for layer in affine[:-1]])
    want = np.stack([reduce_all(a) for a in extractor.predict(x, verbose=0)], axis=1)
    np.testing.assert_allclose(probe.layer_sums(x), want, rtol=1e-3, atol=1e-2)


def test_subclassed_model_is_traced_in_call_order():
    """A subclassed model is probed through the graph its call() traces (more in
    test_subclassed.py), with the layers in the order call() runs them."""
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.b, self.a, self.c = layers.Dense(2), layers.Dense(4), layers.Dense(3)

        def call(self, x):
            return self.c(self.b(self.a(x)))

    net = Net()
    net(np.zeros((1, 3), "float32"))
    probe = cna_tf.ActivationProbe(net)
    assert probe.layers == [net.a, net.b]
    x = np.random.default_rng(0).random((4, 3)).astype("float32")
    (wa, ba), (wb, bb) = net.a.get_weights(), net.b.get_weights()
    za = x @ wa + ba
    np.testing.assert_allclose(probe.layer_sums(x), np.stack([za.sum(1), (za @ wb + bb).sum(1)],
                                                            1), rtol=1e-5, atol=1e-5)


def test_custom_layer_holding_dense_layers_is_expanded():
    class Block(layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.inner = layers.Dense(4, name="inner")

        def call(self, x):
            return self.inner(x)

    inp = keras.Input((3,))
    first, block, d3, d2 = layers.Dense(4), Block(name="my_block"), layers.Dense(3), \
        layers.Dense(2)
    model = keras.Model(inp, d2(d3(block(first(inp)))))
    twin = keras.Model(inp, d2(d3(block.inner(first(inp)))))
    probe = cna_tf.ActivationProbe(model)
    assert probe.layer_names == [first.name, "my_block/inner", d3.name]
    x = np.random.default_rng(1).random((5, 3)).astype("float32")
    np.testing.assert_array_equal(probe.layer_sums(x), cna_tf.ActivationProbe(twin).layer_sums(x))


def test_unbuilt_sequential_and_too_few_layers():
    with pytest.raises(UntraceableModelError, match="keras.Input"):
        cna_tf.ActivationProbe(keras.Sequential([layers.Dense(3), layers.Dense(2)]))
    inp = keras.Input((3,))
    small = keras.Model(inp, layers.Dense(2)(layers.Dense(3)(inp)))
    with pytest.raises(ValueError, match="at least 2"):
        cna_tf.ActivationProbe(small)
    assert cna_tf.ActivationProbe(small, include_output=True).num_layers == 2
    with pytest.raises(ValueError, match="mode"):
        cna_tf.ActivationProbe(small, mode="middle")
    with pytest.raises(ValueError, match="reduce"):
        cna_tf.ActivationProbe(small, reduce="max")


def test_logits_classifier_post_value_is_its_softmax(rng):
    inp = keras.Input((4,))
    x = layers.Dense(3, activation="relu")(inp)
    model = keras.Model(inp, layers.Dense(3)(x))
    set_random_weights(model)
    x_in = rng.normal(size=(5, 4)).astype("float32")
    sums = cna_tf.ActivationProbe(model, mode="post", include_output=True).layer_sums(x_in)
    np.testing.assert_allclose(sums[:, 1], np.ones(5), rtol=1e-5)  # softmax rows sum to 1


def test_probe_is_differentiable(mlp, rng):
    import tensorflow as tf
    probe = cna_tf.ActivationProbe(mlp)
    x = tf.constant(rng.normal(size=(4, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        b = probe(x)[:, -1]
        loss = tf.reduce_sum(b)
    grads = tape.gradient(loss, [layer.kernel for layer in probe.layers])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


# -- layer_outputs: the unreduced activations (SPEC §6) ----------------------------------------

@pytest.mark.parametrize("mode", ["pre", "post"])
def test_layer_outputs_match_hand_computation_and_sum_to_layer_sums(mlp, rng, mode):
    x = rng.normal(size=(37, 6)).astype("float32")
    pre, post = hand_forward(mlp, x)
    probe = cna_tf.ActivationProbe(mlp, mode=mode, include_output=True)
    acts = probe.layer_outputs(x, batch_size=8)            # 5 batches, the last one short
    assert list(acts) == probe.layer_names
    for got, want in zip(acts.values(), pre if mode == "pre" else post):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    sums = np.stack([reduce_all(a) for a in acts.values()], axis=1)
    np.testing.assert_allclose(sums, probe.layer_sums(x), rtol=1e-5, atol=1e-5)
    mean = cna_tf.ActivationProbe(mlp, mode=mode, reduce="mean")
    np.testing.assert_allclose(np.stack([reduce_all(a, "mean") for a in
                                         mean.layer_outputs(x).values()], axis=1),
                               mean.layer_sums(x), rtol=1e-5, atol=1e-6)


def test_layer_outputs_equal_a_keras_sub_model(rng):
    """Where a layer's Keras output is the probe's value (pre: layers without a fused activation;
    post: the first nonlinearity), the sub-model keras.Model(inputs, [outputs]) gives the same."""
    model = residual_model()
    x = rng.normal(size=(21, 8, 8, 3)).astype("float32")
    for mode, names in (("pre", ["stem", "b1_conv1", "b1_conv2", "b1_short", "side"]),
                        ("post", ["stem_relu", "b1_relu", "b1_conv2", "b1_short", "side"])):
        probe = cna_tf.ActivationProbe(model, mode=mode)
        acts = probe.layer_outputs(x, batch_size=4)
        sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
        want = sub.predict(x, verbose=0)
        assert list(acts) == ["stem", "b1_conv1", "b1_conv2", "b1_short", "side"]
        for (name, got), w in zip(acts.items(), want):
            assert got.shape == w.shape, name
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.stack([reduce_all(a) for a in acts.values()], axis=1),
                                   probe.layer_sums(x), rtol=1e-4, atol=1e-3)


def test_layer_outputs_of_nested_models_and_fused_pre_activations(rng):
    block = keras.Sequential([keras.Input((6,)), layers.Dense(5, activation="tanh", name="d1"),
                              layers.Dense(5, name="d2")], name="block")
    inp = keras.Input((6,))
    x = layers.Activation("tanh")(block(inp))
    x = layers.Dense(4, activation="relu", name="d3")(x)
    model = keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(x))
    set_random_weights(model)
    x_in = rng.normal(size=(11, 6)).astype("float32")
    acts = cna_tf.ActivationProbe(model).layer_outputs(x_in)
    assert list(acts) == ["block/d1", "block/d2", "d3"]
    w1, b1, w2, b2, w3, b3, _, _ = model.get_weights()
    z1 = x_in @ w1 + b1                                      # fused tanh: pre is the affine part
    z2 = np.tanh(z1) @ w2 + b2
    z3 = np.tanh(z2) @ w3 + b3
    for got, want in zip(acts.values(), (z1, z2, z3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
