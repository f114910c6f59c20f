"""Tests written to kill `make mutate`'s surviving mutants of `cna_tf.baselines` (docs/testing.md).

Every number is recomputed here with numpy from the model's own weights. They run under any
Keras backend: `make mutate` runs them under ``KERAS_BACKEND=torch`` (a child forked after
TensorFlow ran deadlocks). The squared-weight copy computes the path norm in float64 under
TensorFlow only (the torch backend computes it in float32), so the path sums are compared at
``PATH_RTOL``: 1e-10 under TensorFlow, 1e-6 elsewhere.
"""
from __future__ import annotations

import math
import re
import warnings

import keras
import numpy as np
import pytest

from cna_tf import baselines as B
from cna_tf.measures import CNAWarning

PATH_RTOL = 1e-10 if keras.backend.backend() == "tensorflow" else 1e-6
CAPTURE_FIX = "cna_tf.baselines.capture_initial_weights(model) before training)"


def _set(layer, *arrays):
    layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])


def _f64(layer):
    return [w.astype(np.float64) for w in layer.get_weights()]


def _relu(x):
    return np.maximum(x, 0.0)


def _mlp(rng, n_in=3, hidden=4, n_out=2, use_bias=True):
    model = keras.Sequential([
        keras.Input((n_in,)),
        keras.layers.Dense(hidden, activation="relu", use_bias=use_bias, name="hidden"),
        keras.layers.Dense(n_out, activation="softmax", use_bias=use_bias, name="out"),
    ])
    for layer in model.layers:
        _set(layer, *[rng.normal(size=w.shape) for w in layer.get_weights()])
    return model


def _messages(fn, *args, **kwargs):
    """(result, [CNAWarning messages]) of ``fn``; any RuntimeWarning (numpy) is an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("always", CNAWarning)       # a RuntimeWarning subclass
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, CNAWarning)]


# -- the squared-weight copy ------------------------------------------------------------------

def _bn_model(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.BatchNormalization(name="bn", epsilon=1e-3),
                              keras.layers.ReLU(), keras.layers.Dense(2, name="d2")])
    d1, bn, _, d2 = model.layers
    _set(d1, rng.normal(size=(3, 4)), rng.normal(size=4))
    _set(bn, rng.normal(size=4), rng.normal(size=4), rng.normal(size=4) * 0.1,
         rng.uniform(0.5, 2.0, size=4))
    _set(d2, rng.normal(size=(4, 2)), rng.normal(size=2))
    return model


def test_squared_copy_is_float64_with_trainables_squared_and_moving_stats_kept(rng):
    """The copy has float64 variables: trainable ones squared, BatchNorm's moving statistics
    copied as they are; the model keeps its weights."""
    model = _bn_model(rng)
    before = [w.copy() for w in model.get_weights()]
    copy = B._squared_copy(model)
    assert copy is not model and len(copy.weights) == len(model.weights) == 8
    for src, dst in zip(model.weights, copy.weights):
        got = np.asarray(keras.ops.convert_to_numpy(dst))
        assert got.dtype == np.float64, dst.path
        value = np.asarray(keras.ops.convert_to_numpy(src)).astype(np.float64)
        expect = np.square(value) if src.trainable else value
        np.testing.assert_array_equal(got, expect, err_msg=src.path)
    assert [w.trainable for w in model.weights].count(False) == 2      # moving mean, variance
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_path_norm_with_biases_and_batchnorm_by_hand(rng):
    """sqrt of the summed affine outputs of the squared network on an all-ones input, in
    inference mode (moving statistics), ReLU kept, and the path measures built from it."""
    model = _bn_model(rng)
    (w1, b1), (g, b, mm, mv), (w2, b2) = (_f64(model.layers[i]) for i in (0, 1, 3))
    z = np.ones(3) @ w1 ** 2 + b1 ** 2
    z = g ** 2 * (z - mm) / np.sqrt(mv + 1e-3) + b ** 2
    out = _relu(z) @ w2 ** 2 + b2 ** 2
    raw = math.sqrt(out.sum())
    assert B.l2_path_raw(model) == pytest.approx(raw, rel=PATH_RTOL)
    assert B.l2_path(model, 0.3) == pytest.approx(raw / 0.3, rel=PATH_RTOL)
    res, _ = _messages(B.compute, model, 0.3)
    assert res["l2_path_raw"] == pytest.approx(raw, rel=PATH_RTOL)
    assert res["l2_path"] == pytest.approx(raw / 0.3, rel=PATH_RTOL)


def test_path_norm_ignores_dropout_and_uses_one_input_row(rng):
    """Inference mode: a Dropout layer passes the values through unchanged."""
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(5, activation="relu", name="a"),
                              keras.layers.Dropout(0.9, seed=1),
                              keras.layers.Dense(2, name="b")])
    for layer in (model.layers[0], model.layers[2]):
        _set(layer, *[rng.normal(size=w.shape) for w in layer.get_weights()])
    (w1, b1), (w2, b2) = _f64(model.layers[0]), _f64(model.layers[2])
    out = _relu(np.ones(3) @ w1 ** 2 + b1 ** 2) @ w2 ** 2 + b2 ** 2
    assert B.l2_path_raw(model) == pytest.approx(math.sqrt(out.sum()), rel=PATH_RTOL)


def test_path_norm_small_and_zero_sums():
    """A sum in (0, 1) and a sum of exactly 0 (an all-zero kernel) are no special cases."""
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, name="a")])
    _set(model.layers[0], [[0.5]])
    assert B.l2_path_raw(model) == pytest.approx(0.5, rel=PATH_RTOL)   # sqrt(0.25)
    _set(model.layers[0], [[0.0]])
    value, msgs = _messages(B.l2_path_raw, model)
    assert value == 0.0 and msgs == []


def test_path_norm_negative_sum_is_nan_with_its_value():
    """A BatchNormalization moving mean can push the sum below zero: NaN, and the warning gives
    the sum (here (2 - 6) / sqrt(0.999 + 0.001) = -4)."""
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, use_bias=False, name="a"),
                              keras.layers.BatchNormalization(name="bn", epsilon=1e-3),
                              keras.layers.Dense(1, use_bias=False, name="b")])
    _set(model.layers[0], [[1.0], [1.0]])
    _set(model.layers[1], [1.0], [0.0], [6.0], [0.999])
    _set(model.layers[2], [[1.0]])
    value, msgs = _messages(B.l2_path_raw, model)
    assert math.isnan(value)
    assert msgs == ["l2_path: the squared-weight network's output sum is -4 < 0 (a "
                    "BatchNormalization moving mean shifts it below zero); its square root is "
                    "NaN"]


def test_path_norm_nan_weights_warn():
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, use_bias=False, name="a")])
    _set(model.layers[0], [[np.nan], [1.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = B.l2_path_raw(model)
    assert math.isnan(value)
    msgs = [str(w.message) for w in caught if issubclass(w.category, CNAWarning)]
    assert msgs == ["l2_path: the squared-weight network's output sum is NaN (non-finite "
                    "weights?)"]


def test_path_norm_of_an_undefined_input_dimension_names_it():
    inp = keras.Input((None, 2), name="seq")
    out = keras.layers.Dense(1, name="head")(keras.layers.GlobalAveragePooling1D()(inp))
    model = keras.Model(inp, out, name="varlen")
    value, msgs = _messages(B.l2_path_raw, model)
    assert math.isnan(value) and len(msgs) == 1
    assert re.fullmatch(
        r"l2_path: the squared-weight copy of model 'varlen' could not be run \(ValueError: "
        r"input '[^']+' has an undefined dimension \(None, None, 2\); an all-ones input needs "
        r"a fixed input shape\); l2_path is NaN", msgs[0]), msgs[0]


@keras.saving.register_keras_serializable(package="test_mutants_baselines")
class _WiderClone(keras.layers.Dense):
    """A Dense layer whose config (hence its clone) has one unit more than the layer."""

    def get_config(self):
        config = super().get_config()
        config["units"] = config["units"] + 1
        return config


def test_a_clone_with_other_variables_is_nan_with_the_reason():
    model = keras.Sequential([keras.Input((3,)), _WiderClone(2, use_bias=False, name="w")],
                             name="wider")
    value, msgs = _messages(B.l2_path_raw, model)
    assert math.isnan(value)
    assert msgs == ["l2_path: the squared-weight copy of model 'wider' could not be run "
                    "(ValueError: the clone of the model has different variables than the "
                    "model); l2_path is NaN"]


# -- matrices of 1-D convolutions and sigma_max -----------------------------------------------

def _conv1d_model(layer):
    model = keras.Sequential([keras.Input((5, 3)), layer])
    return model, layer.get_weights()[0].astype(np.float64)


def _check_matrix(model, manual):
    mat = B.kernel_matrices(model)[0]
    assert mat.shape == manual.shape
    np.testing.assert_array_equal(mat.dense(), manual)
    assert mat.sigma_max() == pytest.approx(np.linalg.norm(manual, 2), rel=1e-10)
    assert mat.frobenius() == pytest.approx(np.linalg.norm(manual), rel=1e-12)


def test_conv1d_matrix():
    model, k = _conv1d_model(keras.layers.Conv1D(4, 2, use_bias=False))   # (k, in, out)
    _check_matrix(model, np.transpose(k, (2, 0, 1)).reshape(4, -1))


def test_grouped_conv1d_matrix():
    model, k = _conv1d_model(keras.layers.Conv1D(6, 2, groups=3, use_bias=False))
    full = np.zeros((2, 3, 6))                                           # (k, in, out)
    for g in range(3):
        full[:, g, 2 * g:2 * g + 2] = k[:, 0, 2 * g:2 * g + 2]
    _check_matrix(model, np.transpose(full, (2, 0, 1)).reshape(6, -1))


def test_depthwise_conv1d_matrix():
    model, k = _conv1d_model(keras.layers.DepthwiseConv1D(2, depth_multiplier=2,
                                                          use_bias=False))   # (k, in, mult)
    full = np.zeros((2, 3, 6))
    for c in range(3):
        for j in range(2):
            full[:, c, 2 * c + j] = k[:, c, j]
    _check_matrix(model, np.transpose(full, (2, 0, 1)).reshape(6, -1))


def test_conv1d_transpose_matrix():
    model, k = _conv1d_model(keras.layers.Conv1DTranspose(4, 2, use_bias=False))
    assert k.shape == (2, 4, 3)                                          # (k, out, in)
    _check_matrix(model, np.transpose(k, (1, 0, 2)).reshape(4, -1))


def test_sigma_max_edge_cases():
    assert B._sigma_max(np.zeros((1, 0, 3))) == 0.0
    assert B._sigma_max(np.array([[[-3.0]]])) == 3.0
    assert B._sigma_max(np.zeros((2, 2, 3))) == 0.0
    unit = np.array([[[1.0, 0.5, 0.0], [0.2, -0.3, 0.4]]])              # max |entry| = 1
    assert B._sigma_max(unit) == pytest.approx(np.linalg.norm(unit[0], 2), rel=1e-12)
    assert math.isnan(B._sigma_max(np.array([[[np.nan, np.inf]]])))
    assert B._sigma_max(np.array([[[1.0, np.inf]]])) == math.inf
    assert B._sigma_max(np.array([[[1.0, -np.inf]]])) == math.inf


def test_sigma_max_of_large_blocks_matches_numpy(monkeypatch):
    """n >= _PARTIAL_EIGH_MIN (512, lowered to 6 here to keep the test fast): one block takes
    the partial eigensolver, several blocks the full one; the largest singular value is that of
    the block with the largest one."""
    monkeypatch.setattr(B, "_PARTIAL_EIGH_MIN", 6)
    rng = np.random.default_rng(3)
    one = rng.normal(size=(1, 6, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert B._sigma_max(one) == pytest.approx(np.linalg.norm(one[0], 2), rel=1e-10)
        two = np.stack([rng.normal(size=(6, 6)), 3.0 * rng.normal(size=(6, 6))])
        expect = max(np.linalg.norm(two[0], 2), np.linalg.norm(two[1], 2))
        assert expect == pytest.approx(np.linalg.norm(two[1], 2))
        assert B._sigma_max(two) == pytest.approx(expect, rel=1e-10)


# -- products, sums and the bound -------------------------------------------------------------

def test_sum_of_fro_of_one_matrix_is_its_squared_norm(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="only")])
    _set(model.layers[0], rng.normal(size=(3, 2)), rng.normal(size=2))
    w = _f64(model.layers[0])[0]
    assert B.sum_of_fro(model) == pytest.approx(np.linalg.norm(w) ** 2, rel=1e-12)


def test_log_helpers_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logs = B._log([0.0, -1.0, math.e])
        assert logs[0] == -math.inf and math.isnan(logs[1]) and logs[2] == pytest.approx(1.0)
        assert B._exp(1000.0) == math.inf
        assert B._exp(-1e4) == 0.0


def _bound_by_hand(mats_w, init_w, gamma, m):
    d = len(mats_w)
    h = max(w.shape[1] for w in mats_w)                 # Dense kernels (in, out): out units
    sig = [np.linalg.norm(w, 2) for w in mats_w]
    ratio = sum(np.linalg.norm(w - w0) ** 2 / s ** 2 for w, w0, s in zip(mats_w, init_w, sig))
    return math.sqrt(d ** 2 * h * math.log(d * h) * np.prod(sig) ** 2 * ratio / (gamma ** 2 * m))


def test_bound_and_dist_init_at_and_after_initialization_warn_nothing(rng):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no CNAWarning, no numpy warning
        assert B.bound_2018(model, 0.5, w0, 10) == 0.0
        assert B.dist_init(model, w0) == 0.0
    init = [model.layers[0].get_weights()[0], model.layers[1].get_weights()[0]]
    model.layers[0].set_weights([w * 1.5 for w in model.layers[0].get_weights()])
    now = [model.layers[0].get_weights()[0], model.layers[1].get_weights()[0]]
    now64, init64 = [w.astype(np.float64) for w in now], [w.astype(np.float64) for w in init]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for m in (1, 7):
            assert B.bound_2018(model, 0.5, w0, m) == pytest.approx(
                _bound_by_hand(now64, init64, 0.5, m), rel=1e-10)
        assert B.dist_init(model, w0) == pytest.approx(
            sum(np.linalg.norm(a - b) ** 2 for a, b in zip(now64, init64)), rel=1e-10)


def test_a_zero_kernel_gives_a_nan_bound_with_the_reason_and_no_numpy_warning(rng):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    model.layers[0].set_weights([np.zeros_like(w) for w in model.layers[0].get_weights()])
    value, msgs = _messages(B.bound_2018, model, 0.5, w0, 10)
    assert math.isnan(value)
    assert msgs == ["bound_2018 is NaN: a layer has a zero or non-finite kernel"]


@pytest.mark.parametrize("m", [0, -3, 2.5])
def test_bad_train_size_is_an_error(rng, m):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    with pytest.raises(ValueError) as err:
        B.bound_2018(model, 0.5, w0, m)
    assert str(err.value) == f"train_size must be a positive integer, got {m!r}"


def test_missing_inputs_of_the_bound_and_dist_init_name_the_fix(rng):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    _, msgs = _messages(B.bound_2018, model, 0.5, None, 10)
    assert msgs == ["bound_2018 is NaN: no initial_weights were given (capture them with "
                    + CAPTURE_FIX]
    _, msgs = _messages(B.bound_2018, model, 0.5, w0, None)
    assert msgs == ["bound_2018 is NaN: no train_size (training-set size m) was given"]
    value, msgs = _messages(B.dist_init, model, None)
    assert math.isnan(value)
    assert msgs == ["dist_init is NaN: no initial_weights were given (capture them with "
                    + CAPTURE_FIX]
    res, msgs = _messages(B.compute, model, 0.5, None, 10)
    assert math.isnan(res["dist_init"]) and math.isnan(res["bound_2018"])
    assert msgs == ["dist_init is NaN: no initial_weights were given (capture them with "
                    + CAPTURE_FIX,
                    "bound_2018 is NaN: no initial_weights were given (capture them with "
                    + CAPTURE_FIX]


def test_margin_warnings_name_the_measures(rng):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    reason = ("margin is -0.5 <= 0: the network misclassifies the margin-percentile training "
              "point, so the normalized baselines (raw product / margin) are undefined; the raw "
              "products are kept")
    for fn, name in ((B.l2, "l2"), (B.spectral, "spectral"), (B.l2_path, "l2_path")):
        value, msgs = _messages(fn, model, -0.5)
        assert math.isnan(value) and msgs == [f"{name} is NaN: {reason}"]
    value, msgs = _messages(B.bound_2018, model, -0.5, w0, 10)
    assert math.isnan(value) and msgs == [f"bound_2018 is NaN: {reason}"]
    _, msgs = _messages(B.compute, model, -0.5, w0, 10)
    assert msgs == [f"l2, spectral, l2_path and bound_2018 are NaN: {reason}"]
    _, msgs = _messages(B.l2, model, math.inf)
    assert msgs == ["l2 is NaN: margin is inf: the normalized baselines (raw product / margin) "
                    "are undefined"]
    _, msgs = _messages(B.l2, model, "wide")
    assert msgs == ["l2 is NaN: margin 'wide' is not a number"]


# -- initial weights in every accepted form ---------------------------------------------------

def test_initial_weights_lists_are_float64_kernels(rng):
    model = _mlp(rng)
    kernels = [model.layers[0].get_weights()[0], model.layers[1].get_weights()[0]]
    for given in (model.get_weights(), kernels):
        out = B.initial_kernels(model, given)
        assert list(out) == ["hidden/kernel", "out/kernel"]
        for got, expect in zip(out.values(), kernels):
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, expect.astype(np.float64))


def test_initial_weights_with_lora_match_the_stored_kernel(rng):
    model = _mlp(rng)
    model.layers[0].enable_lora(1)
    weights = model.get_weights()
    assert len(weights) == 6                                          # + lora_kernel_a, _b
    out = B.initial_kernels(model, weights)
    np.testing.assert_array_equal(out["hidden/kernel"], weights[0].astype(np.float64))
    np.testing.assert_array_equal(out["out/kernel"], weights[4].astype(np.float64))


def test_initial_weights_list_errors_name_the_fix(rng, monkeypatch):
    model = _mlp(rng)
    fix = ("pass model.get_weights() (or cna_tf.baselines.capture_initial_weights(model)) taken "
           "from this model before training")
    with pytest.raises(ValueError) as err:
        B.initial_kernels(model, "weights")
    assert str(err.value) == (
        "initial_weights must be the dict cna_tf.baselines.capture_initial_weights(model) "
        "returns or the list model.get_weights() returns before training; got str")
    with pytest.raises(ValueError) as err:
        B.initial_kernels(model, [np.zeros((3, 4)), np.zeros(5), np.zeros((4, 2)), np.zeros(2)])
    assert str(err.value) == (
        "initial_weights[1] has shape (5,) but the model's weight 1 ('sequential/hidden/bias') "
        f"has shape (4,): the list does not come from this model's get_weights(); {fix}"
        .replace("sequential/", model.weights[1].path.split("hidden/")[0]))
    with pytest.raises(ValueError) as err:
        B.initial_kernels(model, [np.zeros((3, 4)), np.zeros((2, 4))])   # 2 kernels, bad shape
    assert str(err.value) == ("initial_weights is a list of 2 arrays, but this model has 4 "
                              f"weights (model.get_weights()) and 2 kernel matrices; {fix}")
    monkeypatch.setattr(B, "kernel_variable", lambda layer, role: object())
    with pytest.raises(ValueError) as err:
        B.initial_kernels(model, model.get_weights())
    assert str(err.value) == (
        "the kernel of 'hidden/kernel' is not one of model.weights, so a list cannot be matched "
        "to it by position; pass cna_tf.baselines.capture_initial_weights(model) instead")


def _deep_mlp(rng, depth=7):
    model = keras.Sequential([keras.Input((2,))] + [
        keras.layers.Dense(2, use_bias=False, name=f"l{i}") for i in range(depth)])
    for layer in model.layers:
        _set(layer, rng.normal(size=(2, 2)))
    return model


def test_initial_weights_dict_with_other_keys_is_matched_by_position(rng):
    model = _deep_mlp(rng, depth=3)
    w0 = {f"renamed{i}": w for i, w in enumerate(B.capture_initial_weights(model).values())}
    init = [layer.get_weights()[0].astype(np.float64) for layer in model.layers]
    for layer in model.layers:
        layer.set_weights([w + 0.25 for w in layer.get_weights()])
    now = [layer.get_weights()[0].astype(np.float64) for layer in model.layers]
    assert B.dist_init(model, w0) == pytest.approx(
        sum(np.linalg.norm(a - b) ** 2 for a, b in zip(now, init)), rel=1e-10)


def test_initial_weights_dict_that_does_not_match_lists_the_missing_keys(rng):
    model = _deep_mlp(rng, depth=7)
    w0 = {"other": np.zeros((2, 2))}
    with pytest.raises(ValueError) as err:
        B.dist_init(model, w0)
    assert str(err.value) == (
        "initial_weights do not match the model: 1 kernels for 7 matrices, keys "
        "['l0/kernel', 'l1/kernel', 'l2/kernel', 'l3/kernel', 'l4/kernel'] missing. Capture "
        "them with capture_initial_weights(model) on this model before training.")


# -- the copy of nested models and of layers without a dtype argument ------------------------------

def test_path_norm_of_a_nested_model_leaves_it_unchanged(rng):
    """The squared copy clones nested models too (recursive): their weights are squared in the
    copy, never in the model."""
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu",
                                                                      name="i")], name="inner")
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    for layer in (inner.layers[0], model.layers[-1]):
        _set(layer, *[rng.normal(size=w.shape) for w in layer.get_weights()])
    before = [w.copy() for w in model.get_weights()]
    (w1, b1), (w2, b2) = _f64(inner.layers[0]), _f64(model.layers[-1])
    raw = math.sqrt((_relu(np.ones(3) @ w1 ** 2 + b1 ** 2) @ w2 ** 2 + b2 ** 2).sum())
    copy = B._squared_copy(model)
    assert all(np.asarray(keras.ops.convert_to_numpy(v)).dtype == np.float64
               for v in copy.weights)
    for _ in range(2):
        assert B.l2_path_raw(model) == pytest.approx(raw, rel=PATH_RTOL)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


class _NoDtype(keras.layers.Layer):
    """A custom layer whose config has no dtype and whose __init__ takes none: the float64
    clone fails and the copy is a plain clone (float32)."""

    def __init__(self, units, name=None):
        super().__init__(name=name)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel)

    def get_config(self):
        return {"units": self.units, "name": self.name}


def test_path_norm_falls_back_to_a_plain_clone(rng):
    model = keras.Sequential([keras.Input((3,)), _NoDtype(4, name="custom"),
                              keras.layers.Dense(2, use_bias=False, name="head")])
    _set(model.layers[0], rng.normal(size=(3, 4)))
    _set(model.layers[1], rng.normal(size=(4, 2)))
    (k,), (w,) = _f64(model.layers[0]), _f64(model.layers[1])
    raw = math.sqrt((np.ones(3) @ k ** 2 @ w ** 2).sum())
    value, msgs = _messages(B.l2_path_raw, model)
    assert msgs == [] and value == pytest.approx(raw, rel=1e-6)          # float32 copy


# -- no numpy warnings from undefined logs -----------------------------------------------------------

def test_a_kernel_zero_at_and_after_initialization_warns_only_the_reason(rng):
    model = _mlp(rng)
    model.layers[0].set_weights([np.zeros_like(w) for w in model.layers[0].get_weights()])
    w0 = B.capture_initial_weights(model)
    value, msgs = _messages(B.bound_2018, model, 0.5, w0, 10)
    assert math.isnan(value)
    assert msgs == ["bound_2018 is NaN: a layer has a zero or non-finite kernel"]


def test_a_nan_kernel_gives_a_nan_distance_without_numpy_warnings(rng):
    model = _mlp(rng)
    w0 = B.capture_initial_weights(model)
    model.layers[0].set_weights([np.full_like(w, np.nan) for w in model.layers[0].get_weights()])
    value, msgs = _messages(B.dist_init, model, w0)
    assert math.isnan(value) and msgs == []


def test_kinds_roles_and_groups_of_every_layer_type():
    """Each affine layer type maps to its matrix kind; only a grouped convolution has groups;
    a SeparableConv1D is two matrices; a Conv3DTranspose kernel (k, k, k, out, in) is laid out
    as (out, k·k·k·in)."""
    model = keras.Sequential([keras.Input((6, 3)),
                              keras.layers.SeparableConv1D(4, 2, depth_multiplier=2),
                              keras.layers.Conv1D(6, 2, groups=2),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    mats = B.kernel_matrices(model)
    assert [(m.role, m.kind, m.groups) for m in mats] == [
        ("depthwise_kernel", "depthwise", 1), ("pointwise_kernel", "conv", 1),
        ("kernel", "conv", 2), ("kernel", "dense", 1)]
    dw = model.layers[0].depthwise_kernel.numpy().astype(np.float64)      # (k, in, mult)
    assert mats[0].shape == (6, 6) and mats[1].shape == (4, 6)
    np.testing.assert_array_equal(np.abs(mats[0].dense()).sum(), np.abs(dw).sum())
    layer = keras.layers.Conv3DTranspose(2, 2, use_bias=False)
    model3 = keras.Sequential([keras.Input((2, 2, 2, 3)), layer])
    k = layer.get_weights()[0].astype(np.float64)
    assert k.shape == (2, 2, 2, 2, 3)
    (mat,) = B.kernel_matrices(model3)
    assert mat.kind == "transpose" and mat.shape == (2, 24)
    np.testing.assert_array_equal(mat.dense(), np.moveaxis(k, 3, 0).reshape(2, -1))
    assert mat.sigma_max() == pytest.approx(np.linalg.norm(mat.dense(), 2), rel=1e-10)
