"""Norm-based baselines (SPEC §2) against independent numpy computations on tiny networks."""
import itertools
import math
import warnings

import keras
import numpy as np
import pytest

import cna_tf
from cna_tf import baselines as B
from cna_tf.measures import CNAWarning

KEYS = {"l2", "spectral", "l2_path", "bound_2018", "l2_raw", "spectral_raw", "l2_path_raw",
        "dist_init", "sum_of_fro"}  # SPEC §2 and §8


def _set(layer, *arrays):
    layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


def _mlp(rng, n_in=3, hidden=4, n_out=2, use_bias=True, out_activation="softmax"):
    model = keras.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(hidden, activation="relu", use_bias=use_bias, name="hidden"),
        keras.layers.Dense(n_out, activation=out_activation, use_bias=use_bias, name="out"),
    ])
    for layer in model.layers:
        _set(layer, *[rng.normal(size=w.shape) for w in layer.get_weights()])
    return model


def _quiet_compute(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)
        return B.compute(*args, **kwargs)


def _relu(x):
    return np.maximum(x, 0.0)


# -- L2 and spectral products -----------------------------------------------------------------

def test_dense_products_match_numpy(rng):
    model = _mlp(rng)
    w1, _, w2, _ = [w.astype(np.float64) for w in model.get_weights()]
    gamma = 0.37
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)  # no initial weights: bound is NaN
        res = B.compute(model, gamma)
    assert set(res) == KEYS and all(type(v) is float for v in res.values())
    fro = np.linalg.norm(w1, "fro") * np.linalg.norm(w2, "fro")
    spec = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)
    assert res["l2_raw"] == pytest.approx(fro, rel=1e-10)
    assert res["spectral_raw"] == pytest.approx(spec, rel=1e-10)
    assert res["l2"] == pytest.approx(fro / gamma, rel=1e-10)
    assert res["spectral"] == pytest.approx(spec / gamma, rel=1e-10)
    assert B.l2_raw(model) == pytest.approx(fro, rel=1e-10)
    assert B.spectral_raw(model) == pytest.approx(spec, rel=1e-10)
    assert B.l2(model, gamma) == pytest.approx(fro / gamma, rel=1e-10)
    assert B.spectral(model, gamma) == pytest.approx(spec / gamma, rel=1e-10)
    assert cna_tf.baselines.compute is B.compute  # the lazy attribute of SPEC §6


def test_kernel_matrices_dense_layout(rng):
    model = _mlp(rng, n_in=5, hidden=3, n_out=2)
    mats = B.kernel_matrices(model)
    assert [m.role for m in mats] == ["kernel", "kernel"]
    assert [m.shape for m in mats] == [(3, 5), (2, 3)]   # (out, in)
    np.testing.assert_array_equal(mats[0].dense(), model.layers[0].get_weights()[0].T)


# -- path norm --------------------------------------------------------------------------------

def test_path_norm_is_the_sum_over_paths_without_bias(rng):
    model = _mlp(rng, n_in=3, hidden=4, n_out=2, use_bias=False)
    w1, w2 = [w.astype(np.float64) for w in model.get_weights()]
    total = 0.0
    for i, j, k in itertools.product(range(3), range(4), range(2)):  # every input-output path
        total += w1[i, j] ** 2 * w2[j, k] ** 2
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(total), rel=1e-10)
    assert B.l2_path(model, 0.25) == pytest.approx(math.sqrt(total) / 0.25, rel=1e-10)


def test_path_norm_with_biases(rng):
    model = _mlp(rng, n_in=3, hidden=4, n_out=2, use_bias=True, out_activation="softmax")
    w1, b1, w2, b2 = [w.astype(np.float64) for w in model.get_weights()]
    h = _relu(np.ones(3) @ w1 ** 2 + b1 ** 2)
    out = h @ w2 ** 2 + b2 ** 2                       # classifier affine values, no softmax
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(out.sum()), rel=1e-10)


def test_path_norm_with_batchnorm_squares_gamma_beta_keeps_moving_stats(rng):
    bn = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"), bn,
                              keras.layers.ReLU(), keras.layers.Dense(2, activation="softmax")])
    d1, d2 = model.layers[0], model.layers[3]
    _set(d1, rng.normal(size=(3, 4)), rng.normal(size=4))
    _set(d2, rng.normal(size=(4, 2)), rng.normal(size=2))
    g, b, mm, mv = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4) * 0.1, \
        rng.uniform(0.5, 2.0, size=4)
    _set(bn, g, b, mm, mv)
    w1, b1, w2, b2 = [w.astype(np.float64) for w in d1.get_weights() + d2.get_weights()]
    g, b, mm, mv = [w.astype(np.float64) for w in bn.get_weights()]
    z = np.ones(3) @ w1 ** 2 + b1 ** 2
    z = g ** 2 * (z - mm) / np.sqrt(mv + 1e-3) + b ** 2   # inference mode, stats as they are
    out = _relu(z) @ w2 ** 2 + b2 ** 2
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(out.sum()), rel=1e-9)


def test_model_is_not_changed(rng):
    model = _mlp(rng)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    before_w = [w.copy() for w in model.get_weights()]
    before_y = model.predict(x, verbose=0)
    n_layers = len(model.layers)
    w0 = B.capture_initial_weights(model)
    B.compute(model, 0.5, initial_weights=w0, train_size=10)
    for a, b in zip(before_w, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.layers[-1].activation is keras.activations.softmax
    assert len(model.layers) == n_layers
    np.testing.assert_array_equal(model.predict(x, verbose=0), before_y)
    np.testing.assert_array_equal(w0["out/kernel"], before_w[2])   # copies, not views


# -- convolutional layers ---------------------------------------------------------------------

def test_conv2d_reshape_and_path_norm(rng):
    model = keras.Sequential([keras.Input((5, 5, 2)),
                              keras.layers.Conv2D(4, 3, use_bias=False, activation="relu"),
                              keras.layers.Flatten(),
                              keras.layers.Dense(3, use_bias=False)])
    conv, dense = model.layers[0], model.layers[2]
    k = rng.normal(size=(3, 3, 2, 4))
    w = rng.normal(size=(36, 3))
    _set(conv, k)
    _set(dense, w)
    k, w = conv.get_weights()[0].astype(np.float64), dense.get_weights()[0].astype(np.float64)
    manual = np.transpose(k, (3, 0, 1, 2)).reshape(4, -1)       # (out_channels, k*k*in)
    mats = B.kernel_matrices(model)
    assert mats[0].shape == (4, 18)
    np.testing.assert_allclose(mats[0].dense(), manual)
    assert mats[0].sigma_max() == pytest.approx(np.linalg.norm(manual, 2), rel=1e-10)
    assert mats[0].frobenius() == pytest.approx(np.linalg.norm(manual), rel=1e-12)
    spec = np.linalg.norm(manual, 2) * np.linalg.norm(w, 2)
    assert B.spectral_raw(model) == pytest.approx(spec, rel=1e-10)
    # ones input, valid 3x3 conv: every position of channel o is sum(k[..., o]^2)
    per_channel = (k ** 2).sum(axis=(0, 1, 2))
    flat = np.tile(per_channel, 9)                              # Flatten order (h, w, c)
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(flat @ (w ** 2).sum(axis=1)),
                                                 rel=1e-10)


def _embedded_conv_kernel(kernel, kind, groups=1):
    """The kernel of the ordinary Conv2D computing the same function."""
    if kind == "depthwise":
        kh, kw, c_in, mult = kernel.shape
        full = np.zeros((kh, kw, c_in, c_in * mult))
        for c, j in itertools.product(range(c_in), range(mult)):
            full[:, :, c, c * mult + j] = kernel[:, :, c, j]
        return full
    kh, kw, c_g, c_out = kernel.shape
    o_g = c_out // groups
    full = np.zeros((kh, kw, c_g * groups, c_out))
    for g in range(groups):
        full[:, :, g * c_g:(g + 1) * c_g, g * o_g:(g + 1) * o_g] = \
            kernel[:, :, :, g * o_g:(g + 1) * o_g]
    return full


@pytest.mark.parametrize("kind", ["depthwise", "grouped"])
def test_depthwise_and_grouped_conv_equal_the_equivalent_conv(rng, kind):
    if kind == "depthwise":
        first = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False,
                                             activation="relu")
    else:
        first = keras.layers.Conv2D(6, 3, groups=3, use_bias=False, activation="relu")
    model = keras.Sequential([keras.Input((4, 4, 3)), first, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    _set(first, rng.normal(size=first.get_weights()[0].shape))
    head = model.layers[-1]
    _set(head, *[rng.normal(size=w.shape) for w in head.get_weights()])
    full = _embedded_conv_kernel(first.get_weights()[0].astype(np.float64),
                                 kind, groups=3)
    twin = keras.Sequential([keras.Input((4, 4, 3)),
                             keras.layers.Conv2D(6, 3, use_bias=False, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(2)])
    _set(twin.layers[0], full)
    twin.layers[-1].set_weights(head.get_weights())
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)            # the embedding is right
    mat = B.kernel_matrices(model)[0]
    manual = np.transpose(full, (3, 0, 1, 2)).reshape(6, -1)
    assert mat.shape == (6, 27)
    np.testing.assert_allclose(mat.dense(), manual)
    assert mat.sigma_max() == pytest.approx(np.linalg.norm(manual, 2), rel=1e-10)
    a, b = _quiet_compute(model, 0.5), _quiet_compute(twin, 0.5)
    for key in ("l2_raw", "spectral_raw", "l2_path_raw", "l2", "spectral", "l2_path"):
        assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_separable_conv_is_two_matrices(rng):
    sep = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, activation="relu")
    model = keras.Sequential([keras.Input((4, 4, 3)), sep, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    dw, pw, _ = [w.astype(np.float64) for w in sep.get_weights()]
    dense_w = model.layers[-1].get_weights()[0].astype(np.float64)
    mats = B.kernel_matrices(model)
    assert [m.role for m in mats] == ["depthwise_kernel", "pointwise_kernel", "kernel"]
    assert [m.shape for m in mats] == [(6, 27), (5, 6), (2, 20)]
    np.testing.assert_allclose(mats[1].dense(), pw.reshape(6, 5).T)
    expect = np.linalg.norm(dw) * np.linalg.norm(pw) * np.linalg.norm(dense_w)
    assert B.l2_raw(model) == pytest.approx(expect, rel=1e-10)
    assert set(B.capture_initial_weights(model)) == {m.key for m in mats}


def test_conv_transpose_layout(rng):
    layer = keras.layers.Conv2DTranspose(4, 2, use_bias=False)
    model = keras.Sequential([keras.Input((3, 3, 5)), layer, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    k = layer.get_weights()[0].astype(np.float64)
    assert k.shape == (2, 2, 4, 5)                               # (k, k, out, in)
    mat = B.kernel_matrices(model)[0]
    manual = np.transpose(k, (2, 0, 1, 3)).reshape(4, -1)
    assert mat.shape == (4, 20)
    np.testing.assert_allclose(mat.dense(), manual)
    assert mat.sigma_max() == pytest.approx(np.linalg.norm(manual, 2), rel=1e-10)


# -- log space --------------------------------------------------------------------------------

def _deep(depth, width, value):
    model = keras.Sequential([keras.Input((width,))] + [
        keras.layers.Dense(width, activation="relu", use_bias=False,
                           kernel_initializer=keras.initializers.Constant(value))
        for _ in range(depth)])
    return model


def test_log_space_beyond_float32_is_finite_and_exact():
    depth, width, c = 120, 4, 3.0
    model = _deep(depth, width, c)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # no overflow warnings of any kind
        warnings.simplefilter("ignore", CNAWarning)      # (no initial weights: bound NaN)
        res = B.compute(model, 0.5)
    log_fro = depth * math.log(width * c)                # ‖c·1_{4x4}‖_F = 4c = σ_max
    assert res["l2_raw"] > float(np.finfo(np.float32).max)
    assert math.log(res["l2_raw"]) == pytest.approx(log_fro, rel=1e-12)
    assert math.log(res["spectral_raw"]) == pytest.approx(log_fro, rel=1e-12)
    assert math.log(res["l2"]) == pytest.approx(log_fro - math.log(0.5), rel=1e-12)
    # ones input, all entries equal: each layer multiplies them by width * c^2 (float64 copy)
    log_path = 0.5 * (math.log(width) + depth * math.log(width * c ** 2))
    assert res["l2_path_raw"] > float(np.finfo(np.float32).max)
    assert math.log(res["l2_path_raw"]) == pytest.approx(log_path, rel=1e-12)


def test_log_space_true_float64_overflow_is_inf_without_warnings():
    model = _deep(120, 4, 1e3)                            # (4e3)^120 ~ 1e432
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", CNAWarning)
        res = B.compute(model, 0.5)
    for key in ("l2_raw", "spectral_raw", "l2", "spectral", "l2_path_raw"):
        assert res[key] == math.inf, key


# -- the 2018 bound ---------------------------------------------------------------------------

def test_bound_2018_matches_numpy_formula(rng):
    model = _mlp(rng, n_in=5, hidden=4, n_out=3)
    w0 = B.capture_initial_weights(model)
    assert list(w0) == ["hidden/kernel", "out/kernel"]
    init = [w0["hidden/kernel"], w0["out/kernel"]]
    assert B.bound_2018(model, 0.3, w0, 100) == 0.0          # W = W0 at initialization
    for layer in model.layers:                                 # "train"
        _set(layer, *[w + rng.normal(size=w.shape) for w in layer.get_weights()])
    ws = [layer.get_weights()[0].astype(np.float64) for layer in model.layers]
    gamma, m = 0.3, 100
    d, h = 2, 4                                                # h: most output units
    sig = [np.linalg.norm(w, 2) for w in ws]
    ratio = sum(np.linalg.norm(w - w_0) ** 2 / s ** 2 for w, w_0, s in zip(ws, init, sig))
    expect = math.sqrt(d ** 2 * h * math.log(d * h) * np.prod(sig) ** 2 * ratio
                       / (gamma ** 2 * m))
    assert B.bound_2018(model, gamma, w0, m) == pytest.approx(expect, rel=1e-10)
    assert B.compute(model, gamma, w0, m)["bound_2018"] == pytest.approx(expect, rel=1e-10)


def test_missing_initial_weights_or_train_size_gives_nan_and_warning(rng):
    model = _mlp(rng)
    with pytest.warns(CNAWarning, match="initial_weights"):
        res = B.compute(model, 0.5, train_size=100)
    assert math.isnan(res["bound_2018"])
    assert math.isnan(res["dist_init"])  # SPEC §8: NaN without initial weights
    assert all(math.isfinite(res[k]) for k in KEYS - {"bound_2018", "dist_init"})
    with pytest.warns(CNAWarning, match="train_size"):
        res = B.compute(model, 0.5, initial_weights=B.capture_initial_weights(model))
    assert math.isnan(res["bound_2018"])


def test_mismatched_initial_weights_raise(rng):
    model = _mlp(rng, n_in=3)
    other = _mlp(rng, n_in=5)
    with pytest.raises(ValueError, match="shape"):
        B.compute(model, 0.5, B.capture_initial_weights(other), 10)
    with pytest.raises(ValueError, match="match"):
        B.compute(model, 0.5, {"x": np.zeros((3, 4))}, 10)


@pytest.mark.parametrize("gamma", [0.0, -0.2, float("nan"), float("inf")])
def test_nonpositive_margin_gives_nan_with_raw_products_kept(rng, gamma):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    with pytest.warns(CNAWarning, match="margin"):
        res = B.compute(model, gamma, w0, 100)
    for key in ("l2", "spectral", "l2_path", "bound_2018"):
        assert math.isnan(res[key]), key
    for key in ("l2_raw", "spectral_raw", "l2_path_raw"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    with pytest.warns(CNAWarning, match="margin"):
        assert math.isnan(B.l2(model, gamma))


# -- model structure --------------------------------------------------------------------------

def test_nested_sequential_equals_flat_model(rng):
    inner = keras.Sequential([keras.layers.Conv2D(3, 3, activation="relu", name="c1"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Conv2D(4, 3, activation="relu", name="c2")],
                             name="block")
    inp = keras.Input((6, 6, 2))
    x = inner(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    nested = keras.Model(inp, out)
    inner.layers[1].set_weights([rng.uniform(0.5, 1.5, 3).astype(np.float32),
                                 rng.normal(size=3).astype(np.float32),
                                 rng.normal(size=3).astype(np.float32) * 0.1,
                                 rng.uniform(0.5, 2, 3).astype(np.float32)])
    flat = keras.Sequential([keras.Input((6, 6, 2)),
                             keras.layers.Conv2D(3, 3, activation="relu"),
                             keras.layers.BatchNormalization(),
                             keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(),
                             keras.layers.Dense(3, activation="softmax")])
    flat.set_weights(nested.get_weights())
    x = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(nested.predict(x, verbose=0), flat.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    w0_nested = B.capture_initial_weights(nested)
    w0_flat = B.capture_initial_weights(flat)
    assert list(w0_nested) == ["block/c1/kernel", "block/c2/kernel", "head/kernel"]
    trained = [w * 1.5 for w in nested.get_weights()]
    for net in (nested, flat):
        net.set_weights(trained)
    a = B.compute(nested, 0.4, w0_nested, 50)
    b = B.compute(flat, 0.4, w0_flat, 50)
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert a["bound_2018"] > 0


def test_shared_layer_counts_once_per_call(rng):
    shared = keras.layers.Dense(3, activation="relu", use_bias=False, name="shared")
    inp = keras.Input((3,))
    out = keras.layers.Dense(2, use_bias=False, name="head")(shared(shared(inp)))
    model = keras.Model(inp, out)
    w = shared.get_weights()[0].astype(np.float64)
    v = model.layers[-1].get_weights()[0].astype(np.float64)
    assert list(B.capture_initial_weights(model)) == ["shared/kernel", "shared@1/kernel",
                                                      "head/kernel"]
    expect = np.linalg.norm(w) ** 2 * np.linalg.norm(v)
    assert B.l2_raw(model) == pytest.approx(expect, rel=1e-10)
    path = _relu(_relu(np.ones(3) @ w ** 2) @ w ** 2) @ v ** 2
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(path.sum()), rel=1e-10)


def test_subclassed_model_gives_its_functional_twins_baselines():
    """A subclassed model's baselines, l2_path's squared-weight copy included, are those of the
    functional model built from the same layers (more in test_subclassed.py)."""
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d, self.e = keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)

        def call(self, x):
            return self.e(self.d(x))

    net = Net()
    net(np.ones((1, 3), dtype=np.float32))
    inp = keras.Input((3,))
    twin = keras.Model(inp, net.e(net.d(inp)))
    got, want = B.compute(net, 0.5), B.compute(twin, 0.5)
    for key in ("l2", "spectral", "l2_path", "l2_raw", "spectral_raw", "l2_path_raw"):
        assert math.isfinite(got[key]) and got[key] == pytest.approx(want[key], rel=1e-12), key
    w, b = (np.asarray(v, np.float64) for v in net.d.get_weights())
    v, c = (np.asarray(u, np.float64) for u in net.e.get_weights())
    path = (_relu(np.ones(3) @ w ** 2 + b ** 2) @ v ** 2 + c ** 2).sum()
    assert got["l2_path_raw"] == pytest.approx(math.sqrt(path), rel=1e-10)


# -- initial weights as model.get_weights() (SPEC §6) ------------------------------------------

def _conv_bn_model(rng):
    """Conv + BN + separable conv + Dense: get_weights() interleaves kernels with biases, BN
    gamma/beta/moving statistics, so a list matched by position must skip those."""
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, name="c1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(),
        keras.layers.SeparableConv2D(4, 2, name="sep"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    model.set_weights([rng.normal(size=w.shape) if w.ndim else w for w in model.get_weights()])
    return model


def _perturb(model, rng):
    model.set_weights([w + rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])


def test_initial_weights_as_get_weights_list_equal_the_dict(rng):
    model = _conv_bn_model(rng)
    w0_list, w0_dict = model.get_weights(), B.capture_initial_weights(model)
    _perturb(model, rng)                                       # "train"
    # the kernels, in forward order, picked out of get_weights() by hand
    by_hand = [w0_list[0], w0_list[6], w0_list[7], w0_list[9]]
    assert [w.shape for w in by_hand] == [w.shape for w in w0_dict.values()]
    got = B.initial_kernels(model, w0_list)
    assert list(got) == list(w0_dict)
    for a, b in zip(got.values(), by_hand):
        np.testing.assert_array_equal(a, b)
    want = _quiet_compute(model, 0.4, w0_dict, 50)
    assert math.isfinite(want["bound_2018"]) and want["bound_2018"] > 0
    assert _quiet_compute(model, 0.4, w0_list, 50) == want
    assert _quiet_compute(model, 0.4, tuple(w0_list), 50) == want
    assert _quiet_compute(model, 0.4, list(w0_dict.values()), 50) == want  # kernels only
    assert B.bound_2018(model, 0.4, w0_list, 50) == want["bound_2018"]


def test_initial_weights_list_mismatch_is_a_clear_error(rng):
    model = _conv_bn_model(rng)
    w0 = model.get_weights()
    with pytest.raises(ValueError, match=r"a list of 3 arrays, but this model has 11 weights "
                                         r"\(model.get_weights\(\)\) and 4 kernel matrices"):
        B.compute(model, 0.4, w0[:3], 50)
    w0[6] = np.zeros((3, 3, 3, 1))
    with pytest.raises(ValueError, match=r"initial_weights\[6\] has shape \(3, 3, 3, 1\) but the "
                                         r"model's weight 6 .* has shape \(2, 2, 3, 1\)"):
        B.compute(model, 0.4, w0, 50)
    with pytest.raises(ValueError, match="must be the dict .* or the list model.get_weights"):
        B.compute(model, 0.4, np.zeros(3), 50)


def test_initial_weights_list_through_evaluate_and_the_callback(rng):
    model = _conv_bn_model(rng)
    model.compile("sgd", "sparse_categorical_crossentropy")
    w0_list, w0_dict = model.get_weights(), B.capture_initial_weights(model)
    _perturb(model, rng)
    raw = rng.integers(0, 256, size=(40, 6, 6, 2)).astype(np.uint8)
    pre = lambda r: r.astype("float32") / 255.0  # noqa: E731
    y = model.predict(pre(raw), verbose=0).argmax(axis=1)  # every point right: margin > 0
    data = (raw, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)
        got = cna_tf.evaluate(model, data, data, preprocess=pre, initial_weights=w0_list)
        want = cna_tf.evaluate(model, data, data, preprocess=pre, initial_weights=w0_dict)
    assert got["bound_2018"] == want["bound_2018"] and math.isfinite(got["bound_2018"])
    trained, histories = model.get_weights(), []
    for w0 in (w0_list, w0_dict):
        model.set_weights(trained)
        cb = cna_tf.CNACallback(data, data, preprocess=pre, mlflow=False, initial_weights=w0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CNAWarning)
            model.fit(pre(raw), y, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
        histories.append(cb.history)
    assert histories[0][0]["bound_2018"] == histories[1][0]["bound_2018"]
    assert histories[0][1]["bound_2018"] == pytest.approx(histories[1][1]["bound_2018"],
                                                           nan_ok=True)
    assert math.isfinite(histories[0][0]["bound_2018"])
    cb = cna_tf.CNACallback(data, data, preprocess=pre, mlflow=False,
                            initial_weights=w0_list[:2])
    with pytest.raises(ValueError, match="CNACallback: initial_weights is a list of 2 arrays"):
        model.fit(pre(raw), y, epochs=1, verbose=0, callbacks=[cb])
