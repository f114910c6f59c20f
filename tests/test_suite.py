"""SPEC §12's measure suite (issue 37) against numbers this file computes with numpy alone.

Tiny networks with weights set here: a Dense net (3 -> 4 relu -> 3) and a conv net
(5x5x2 -> Conv 3x3 -> BatchNormalization -> ReLU -> Dense 3). Every reference (margins,
Frobenius and spectral norms, BN folding, the circulant matrix of a convolution, the
squared-parameter forward pass, the PAC-Bayes formulas) is written below in numpy; nothing
from cna_tf computes an expected value.
"""
import math

import keras
import numpy as np
import pytest

from cna_tf import flatness, suite
from cna_tf.conv_spectrum import conv_spectral_norm

EPS = 1e-3


# -- numpy references --------------------------------------------------------------------------

def sig(a):
    return float(np.linalg.svd(np.asarray(a, np.float64).reshape(-1, a.shape[-1]),
                                compute_uv=False).max())


def fro(a):
    return float(np.sqrt(np.sum(np.asarray(a, np.float64) ** 2)))


def circulant(kernel, size, dilation=(1, 1)):
    """The matrix of y[i,j,o] = Σ K[a,b,c,o] x[(i + a·d) mod n1, (j + b·d) mod n2, c]."""
    k1, k2, cin, cout = kernel.shape
    n1, n2 = size
    mat = np.zeros((n1 * n2 * cout, n1 * n2 * cin))
    for i in range(n1):
        for j in range(n2):
            for a in range(k1):
                for b in range(k2):
                    p, q = (i + a * dilation[0]) % n1, (j + b * dilation[1]) % n2
                    for c in range(cin):
                        for o in range(cout):
                            row, col = (i * n2 + j) * cout + o, (p * n2 + q) * cin + c
                            mat[row, col] += kernel[a, b, c, o]
    return mat


def same_conv(x, kernel):
    """'same' zero-padded stride-1 convolution of one (n1, n2, cin) image (Keras' cross-
    correlation)."""
    k1, k2, _, cout = kernel.shape
    n1, n2, _ = x.shape
    pad = np.zeros((n1 + k1 - 1, n2 + k2 - 1, x.shape[2]))
    pad[(k1 - 1) // 2:(k1 - 1) // 2 + n1, (k2 - 1) // 2:(k2 - 1) // 2 + n2] = x
    out = np.zeros((n1, n2, cout))
    for i in range(n1):
        for j in range(n2):
            out[i, j] = np.einsum("abc,abco->o", pad[i:i + k1, j:j + k2], kernel)
    return out


def gamma10(logits, y):
    rows = np.arange(len(y))
    other = logits.copy()
    other[rows, y] = -np.inf
    g = np.sort(logits[rows, y] - other.max(axis=1))
    return g[max(len(y) // 10, 1) - 1]


def expected(mats, inits, g, m, path, spec=None, dist_spec=None):
    """Every cheap measure in its reported form from per-layer kernels (numpy)."""
    spec = [sig(w) for w in mats] if spec is None else spec
    f2 = np.array([fro(w) ** 2 for w in mats])
    s2 = np.array(spec) ** 2
    d2 = np.array([fro(w - w0) ** 2 for w, w0 in zip(mats, inits)])
    ds2 = (np.array([sig(w - w0) for w, w0 in zip(mats, inits)]) ** 2 if dist_spec is None
           else np.array(dist_spec) ** 2)
    d = len(mats)
    lg = lambda mu: 0.5 * (math.log(mu) - math.log(m))  # noqa: E731
    sq = lambda mu: math.sqrt(mu / m)  # noqa: E731
    w = np.concatenate([a.ravel() for a in mats])
    w0 = np.concatenate([a.ravel() for a in inits])
    return {
        "num_params": sq(w.size), "inverse_margin": sq(1 / g ** 2),
        "spec_init_main": lg(np.prod(s2) / g ** 2 * np.sum(d2 / s2)),
        "spec_orig_main": lg(np.prod(s2) / g ** 2 * np.sum(f2 / s2)),
        "prod_of_spec_over_margin": lg(np.prod(s2) / g ** 2), "prod_of_spec": lg(np.prod(s2)),
        "fro_over_spec": sq(np.sum(f2 / s2)),
        "sum_of_spec_over_margin": lg(d * (np.prod(s2) / g ** 2) ** (1 / d)),
        "sum_of_spec": lg(d * np.prod(s2) ** (1 / d)),
        "prod_of_fro_over_margin": lg(np.prod(f2) / g ** 2), "prod_of_fro": lg(np.prod(f2)),
        "sum_of_fro_over_margin": lg(d * (np.prod(f2) / g ** 2) ** (1 / d)),
        "sum_of_fro": lg(d * np.prod(f2) ** (1 / d)),
        "fro_dist": sq(np.sum(d2)), "dist_spec_init": sq(np.sum(ds2)),
        "param_norm": sq(np.sum(f2)), "path_norm_over_margin": sq(path / g ** 2),
        "path_norm": sq(path), "l2_norm": sq(np.linalg.norm(w)),
        "l2_dist": sq(np.linalg.norm(w - w0)),
    }


# -- the networks ------------------------------------------------------------------------------

def dense_net(rng):
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="relu", name="h")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    ws = [rng.normal(size=(3, 4)), rng.normal(size=4) * 0.3, rng.normal(size=(4, 3)),
          rng.normal(size=3) * 0.3]
    model.set_weights([w.astype("float32") for w in ws])
    return model, [w.astype("float32").astype(np.float64) for w in ws]


def conv_net(rng):
    inp = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten(name="flat")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    k = rng.normal(size=(3, 3, 2, 3))
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, -0.2, 0.3])
    mean, var = np.array([0.2, -0.1, 0.05]), np.array([0.5, 2.0, 1.5])
    wd, bd = rng.normal(size=(75, 3)) * 0.2, rng.normal(size=3) * 0.1
    ws = [k, gamma, beta, mean, var, wd, bd]
    model.set_weights([w.astype("float32") for w in ws])
    return model, [w.astype("float32").astype(np.float64) for w in ws]


def labelled(logits, wrong=1):
    y = logits.argmax(axis=1)
    y[:wrong] = (y[:wrong] + 1) % logits.shape[1]  # misclassified points: negative margins
    return y


# -- the cheap measures ------------------------------------------------------------------------

def test_every_cheap_measure_of_a_dense_net_is_the_numpy_value():
    rng = np.random.default_rng(0)
    model, (w1, b1, w2, b2) = dense_net(rng)
    x = rng.normal(size=(20, 3))
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    y = labelled(logits)
    i1, i2 = rng.normal(size=(3, 4)), rng.normal(size=(4, 3))
    res = suite.compute(model, x.astype("float32"), y, names=suite.CHEAP,
                        initial_weights={"h/kernel": i1, "out/kernel": i2})
    g = gamma10(logits, y)
    assert g > 0 and g == pytest.approx(res.parameters["gamma_10"], rel=1e-5)
    path = float(np.sum(np.maximum(np.ones(3) @ w1 ** 2 + b1 ** 2, 0) @ w2 ** 2 + b2 ** 2))
    want = expected([w1, w2], [i1, i2], g, 20, path)
    for name in suite.CHEAP:
        base = name[:-4] if name.endswith("_fft") else name  # Dense: the FFT norm is σ_max
        assert res[name] == pytest.approx(want[base], rel=1e-5, abs=1e-9), name
    assert res.reasons == {} and list(res) == list(suite.CHEAP)
    assert res.parameters["m"] == 20 and res.parameters["num_params"] == 24


def test_the_conv_net_is_measured_with_bn_folded_and_the_true_conv_norm():
    rng = np.random.default_rng(1)
    model, (k, gamma, beta, mean, var, wd, bd) = conv_net(rng)
    x = rng.normal(size=(30, 5, 5, 2))
    s = gamma / np.sqrt(var + EPS)
    kf = k * s                                     # folded kernel, per output channel
    c = beta - s * mean                            # folded bias
    feats = np.stack([np.maximum(same_conv(xi, kf) + c, 0).ravel() for xi in x])
    logits = feats @ wd + bd
    y = labelled(logits, wrong=2)
    k0, wd0 = rng.normal(size=k.shape), rng.normal(size=wd.shape)
    k0f = k0 / np.sqrt(1 + EPS)                    # initial BN: γ = 1, running var = 1
    res = suite.compute(model, x.astype("float32"), y, names=suite.CHEAP,
                        initial_weights={"conv/kernel": k0, "out/kernel": wd0})
    g = gamma10(logits, y)
    # float32 logits: γ agrees to ~1e-6 absolute; the rest is checked given the suite's γ
    assert res.parameters["gamma_10"] == pytest.approx(g, abs=2e-5)
    g = res.parameters["gamma_10"]
    ones = np.ones((5, 5, 2))
    path = float(np.sum(np.maximum(same_conv(ones, kf ** 2) + c ** 2, 0).ravel() @ wd ** 2
                        + bd ** 2))
    reshaped = expected([kf, wd], [k0f, wd0], g, 30, path)
    fft = expected([kf, wd], [k0f, wd0], g, 30, path,
                   spec=[np.linalg.svd(circulant(kf, (5, 5)), compute_uv=False).max(), sig(wd)],
                   dist_spec=[np.linalg.svd(circulant(kf - k0f, (5, 5)),
                                            compute_uv=False).max(), sig(wd - wd0)])
    for name in suite.CHEAP:
        want = fft[name[:-4]] if name.endswith("_fft") else reshaped[name]
        assert res[name] == pytest.approx(want, rel=1e-5, abs=1e-9), name
    assert res["prod_of_spec_fft"] != pytest.approx(res["prod_of_spec"], rel=1e-3)


def test_bn_folding_on_conv_bn_relu_reproduces_the_bn_output():
    from cna_tf import folding

    rng = np.random.default_rng(2)
    model, (k, gamma, beta, mean, var, _, _) = conv_net(rng)
    (conv, dense) = folding.layer_contexts(model)
    assert conv.bn is model.get_layer("bn") and conv.bn_name == "bn" and dense.bn is None
    assert conv.input_shape == (5, 5, 2) and dense.input_shape == (75,)
    x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    bn_out = keras.Model(model.inputs, model.get_layer("bn").output).predict(x, verbose=0)
    s = gamma / np.sqrt(var + EPS)
    kf = folding.fold_kernel("conv", k, folding.scale(model.get_layer("bn")))
    np.testing.assert_allclose(kf, k * s, rtol=1e-6)
    for xi, want in zip(x, bn_out):
        np.testing.assert_allclose(same_conv(xi, kf) + beta - s * mean, want, rtol=1e-4,
                                   atol=1e-5)


def test_large_layers_spectral_norm_is_the_svd_value():
    """Matrices whose smaller side is >= 64 take the Lanczos path: still numpy's σ_max."""
    rng = np.random.default_rng(10)
    inp = keras.Input((90,))
    out = keras.layers.Dense(70, name="out")(keras.layers.Dense(120, name="h")(inp))
    model = keras.Model(inp, out)
    w1, w2 = rng.normal(size=(90, 120)), rng.normal(size=(120, 70))
    model.set_weights([w1.astype("float32"), np.zeros(120, "float32"), w2.astype("float32"),
                       np.zeros(70, "float32")])
    w1, w2 = (w.astype("float32").astype(np.float64) for w in (w1, w2))
    res = suite.compute(model, np.zeros((4, 90), "float32"), np.arange(4),
                        names=["prod_of_spec", "fro_over_spec"])
    s2 = np.array([sig(w1), sig(w2)]) ** 2
    assert res["prod_of_spec"] == pytest.approx(0.5 * (np.log(np.prod(s2)) - np.log(4)),
                                                rel=1e-9)
    assert res["fro_over_spec"] == pytest.approx(
        math.sqrt((fro(w1) ** 2 / s2[0] + fro(w2) ** 2 / s2[1]) / 4), rel=1e-9)


def test_a_bn_after_the_nonlinearity_is_not_folded():
    from cna_tf import folding

    inp = keras.Input((4,))
    h = keras.layers.Dense(3, activation="relu", name="a")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(2, name="b")(h)
    contexts = folding.layer_contexts(keras.Model(inp, out))
    assert [c.bn for c in contexts] == [None, None]


@pytest.mark.parametrize("kshape, size, dilation", [
    ((3, 3, 2, 3), (5, 5), (1, 1)),     # kernel smaller than the input
    ((3, 3, 2, 2), (2, 2), (1, 1)),     # larger: taps wrap around
    ((2, 3, 3, 2), (4, 6), (1, 1)),     # non-square input, even kernel
    ((3, 3, 1, 2), (7, 7), (2, 2)),     # dilated
])
def test_the_fft_norm_is_the_largest_singular_value_of_the_circulant_matrix(kshape, size,
                                                                            dilation):
    kernel = np.random.default_rng(3).normal(size=kshape)
    want = np.linalg.svd(circulant(kernel, size, dilation), compute_uv=False).max()
    assert conv_spectral_norm(kernel, size, dilation) == pytest.approx(want, rel=1e-10)


def test_a_1d_fft_norm_and_bad_shapes():
    kernel = np.random.default_rng(4).normal(size=(3, 2, 2))
    n = 6
    mat = np.zeros((n * 2, n * 2))
    for i in range(n):
        for a in range(3):
            mat[i * 2:(i + 1) * 2, ((i + a) % n) * 2:((i + a) % n + 1) * 2] += kernel[a].T
    assert conv_spectral_norm(kernel, (n,)) == pytest.approx(
        np.linalg.svd(mat, compute_uv=False).max(), rel=1e-10)
    with pytest.raises(ValueError, match="must give 1 positive spatial sizes"):
        conv_spectral_norm(kernel, (6, 6))


# -- NaN with the reason -----------------------------------------------------------------------

def test_a_non_positive_margin_and_missing_initial_weights_give_nan_with_the_reason():
    rng = np.random.default_rng(5)
    model, (w1, b1, w2, b2) = dense_net(rng)
    x = rng.normal(size=(10, 3))
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    y = labelled(logits, wrong=3)  # m = 10: γ₁₀ is the smallest margin, < 0
    res = suite.compute(model, x.astype("float32"), y, names=suite.CHEAP)
    needs = {n for n in suite.CHEAP
             if {"margin", "initial_weights"} & set(suite.MEASURES[n].inputs)}
    assert {n for n in suite.CHEAP if math.isnan(res[n])} == needs == set(res.reasons)
    assert "γ₁₀ = " in res.reasons["inverse_margin"] and "<= 0" in res.reasons["inverse_margin"]
    assert res.reasons["fro_dist"].startswith("no initial weights")
    assert all(math.isfinite(res[n]) for n in suite.CHEAP if n not in needs)


def test_names_and_fft_choose_what_is_computed():
    rng = np.random.default_rng(6)
    model, _ = dense_net(rng)
    x = rng.normal(size=(10, 3)).astype("float32")
    y = np.zeros(10, int)
    assert list(suite.compute(model, x, y, names=["prod_of_fro", "l2_norm"])) == \
        ["prod_of_fro", "l2_norm"]
    assert not [n for n in suite.compute(model, x, y, names=suite.CHEAP[:6] + ("num_params",),
                                         fft=True) if n not in suite.MEASURES]
    with pytest.raises(ValueError, match=r"unknown suite measure\(s\) \['spectral'\]"):
        suite.compute(model, x, y, names=["spectral"])
    with pytest.raises(ValueError, match="fft=False"):
        suite.compute(model, x, y, names=["prod_of_spec_fft"], fft=False)


def test_measures_lists_every_row_of_spec_12():
    assert len(suite.MEASURES) == 28 + 8 and set(suite.CHEAP) | set(suite.SEARCH) == \
        set(suite.MEASURES)
    assert {n[:-4] for n in suite.MEASURES if n.endswith("_fft")} == {
        "spec_init_main", "spec_orig_main", "prod_of_spec_over_margin", "prod_of_spec",
        "fro_over_spec", "sum_of_spec_over_margin", "sum_of_spec", "dist_spec_init"}
    assert suite.MEASURES["spec_init_main"].equation == "29"
    assert suite.MEASURES["prod_of_fro"].reported == "log"
    assert suite.MEASURES["pacbayes_orig"].cost == "search"


# -- the searches ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched():
    rng = np.random.default_rng(7)
    model, (w1, b1, w2, b2) = dense_net(rng)
    x = rng.normal(size=(30, 3))
    y = labelled(np.maximum(x @ w1 + b1, 0) @ w2 + b2, wrong=0)
    i1, i2 = rng.normal(size=(3, 4)), rng.normal(size=(4, 3))
    calls = []
    real = flatness.search

    def spy(*args, **kwargs):
        calls.append(list(kwargs["measures"]))
        return real(*args, **kwargs)

    flatness.search = spy
    try:
        res = suite.compute(model, x.astype("float32"), y, names=suite.SEARCH, samples=30,
                            initial_weights={"h/kernel": i1, "out/kernel": i2})
    finally:
        flatness.search = real
    return res, calls, np.concatenate([w1.ravel(), w2.ravel()]), \
        np.concatenate([i1.ravel(), i2.ravel()])


def test_each_search_runs_once_and_serves_its_measures(searched):
    res, calls, _, _ = searched
    assert calls == [["pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_flatness",
                      "sharpness_mag_flatness"]]
    assert set(res.seconds) == {"cheap", *calls[0]}
    assert list(res) == list(suite.SEARCH) and res.reasons == {}


def test_the_pacbayes_and_sharpness_values_follow_spec_12(searched):
    res, _, w, w0 = searched
    m, omega = 30, w.size
    s, sm = res.parameters["pacbayes_sigma"], res.parameters["pacbayes_mag_sigma"]
    a, am = res.parameters["sharpness_alpha"], res.parameters["sharpness_mag_alpha"]
    tail = lambda sigma: math.log(m / sigma) + 10  # noqa: E731

    def mag(ref):
        num = EPS ** 2 + (sm ** 2 + 1) * np.sum(ref ** 2) / omega
        return 0.25 * np.sum(np.log(num / (EPS ** 2 + sm ** 2 * (w - w0) ** 2))) + tail(sm)

    want = {
        "pacbayes_init": np.sum((w - w0) ** 2) / (4 * s ** 2) + tail(s),
        "pacbayes_orig": np.sum(w ** 2) / (4 * s ** 2) + tail(s),
        "pacbayes_flatness": 1 / s ** 2, "pacbayes_mag_init": mag(w - w0),
        "pacbayes_mag_orig": mag(w), "pacbayes_mag_flatness": 1 / sm ** 2,
        "sharpness_flatness": 1 / a ** 2, "sharpness_mag_flatness": 1 / am ** 2,
    }
    for name, mu in want.items():
        assert res[name] == pytest.approx(math.sqrt(mu / m), rel=1e-6), name


def test_the_plain_sharpness_box_is_alpha_without_magnitude(monkeypatch):
    """During sharpness_flatness every weight stays within α of w*, and (unlike the magnitude
    box α|w*| + ε) the small weights move by more than α|w*| + ε."""
    rng = np.random.default_rng(8)
    model, _ = dense_net(rng)
    model.set_weights([w * 0.01 if i == 0 else w for i, w in enumerate(model.get_weights())])
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.integers(0, 3, 64)
    seen = []
    real_dev, real_acc = flatness._Searcher.alpha_deviation, flatness._Searcher.accuracy_now

    def deviation(self, alpha, magnitude=True):
        self._alpha = (alpha, magnitude)
        return real_dev(self, alpha, magnitude)

    def accuracy(self):
        if getattr(self, "_alpha", None):
            moved = [np.abs(v.numpy() - w) for v, w in zip(self.trainable, self.w_star)]
            seen.append((self._alpha, moved, [np.abs(w) for w in self.w_star]))
        return real_acc(self)

    def one_step(dev, max_steps):  # one α of the bisection is enough to see the box
        return 0.5, [(0.5, dev(0.5))], True

    monkeypatch.setattr(flatness._Searcher, "alpha_deviation", deviation)
    monkeypatch.setattr(flatness._Searcher, "accuracy_now", accuracy)
    monkeypatch.setattr(flatness, "_bisect", one_step)
    flatness.search(model, x, y, samples=64, seed=0, measures=["sharpness_flatness"])
    assert seen
    beyond_magnitude = False
    for (alpha, magnitude), moved, size in seen:
        assert magnitude is False
        assert all(np.all(mv <= alpha * (1 + 1e-6) + 1e-7) for mv in moved)
        beyond_magnitude |= any(np.any(mv > alpha * sz + EPS) for mv, sz in zip(moved, size))
    assert beyond_magnitude


# -- PGDL callables ----------------------------------------------------------------------------

def test_every_measure_is_a_pgdl_callable():
    import tensorflow as tf

    from cna_tf import scoring

    rng = np.random.default_rng(9)
    model, (w1, b1, w2, b2) = dense_net(rng)
    x = rng.normal(size=(20, 3)).astype("float32")
    y = labelled(np.maximum(x @ w1 + b1, 0) @ w2 + b2)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    m = scoring.resolve("cna_tf.suite:prod_of_fro")
    assert m.function(model, data) == suite.compute(model, x, y, names=["prod_of_fro"])[
        "prod_of_fro"]
    assert all(callable(getattr(suite, n)) and getattr(suite, n).__name__ == n
               for n in suite.MEASURES)
    with pytest.raises(ValueError, match="fro_dist is undefined for this network: no initial "
                                         "weights"):
        suite.fro_dist(model, data)
