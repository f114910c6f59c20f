"""SPEC §8's norm measures in `cna_tf.baselines`: ``dist_init`` and ``sum_of_fro``, against an
independent numpy computation on a tiny Dense net (kernels only, biases excluded)."""
from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

from cna_tf import baselines as B
from cna_tf.measures import CNAWarning


def _dense_net(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                             keras.layers.Dense(3, activation="relu"),
                             keras.layers.Dense(2, activation="softmax")])


def _by_hand(weights, w0):
    """SPEC §8 from get_weights() lists: kernels are the even entries (biases the odd ones)."""
    kern = [np.asarray(w, dtype=np.float64) for w in weights[0::2]]
    kern0 = [np.asarray(w, dtype=np.float64) for w in w0[0::2]]
    d = len(kern)
    dist = sum(float(((k - k0) ** 2).sum()) for k, k0 in zip(kern, kern0))
    fro_sq = [float((k ** 2).sum()) for k in kern]
    return dist, d * float(np.prod(fro_sq)) ** (1.0 / d)


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CNAWarning)
        return fn(*args, **kw)


def test_dist_init_and_sum_of_fro_match_numpy():
    model = _dense_net(0)
    w0, w0_dict = model.get_weights(), B.capture_initial_weights(model)
    rng = np.random.default_rng(3)
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(w.dtype) for w in w0])
    want_dist, want_fro = _by_hand(model.get_weights(), w0)
    got = B.compute(model, 0.3, initial_weights=w0_dict, train_size=10)
    assert got["dist_init"] == pytest.approx(want_dist, rel=1e-12)
    assert got["sum_of_fro"] == pytest.approx(want_fro, rel=1e-12)
    assert B.dist_init(model, w0) == pytest.approx(want_dist, rel=1e-12)  # get_weights() list
    assert B.sum_of_fro(model) == pytest.approx(want_fro, rel=1e-12)
    assert set(B.BASELINE_KEYS) == set(got)


def test_dist_init_is_zero_at_init_and_nan_without_initial_weights():
    model = _dense_net(1)
    w0 = B.capture_initial_weights(model)
    assert _quiet(B.compute, model, 0.5, w0, 10)["dist_init"] == 0.0
    with pytest.warns(CNAWarning, match="dist_init is NaN: no initial_weights"):
        got = B.compute(model, 0.5)
    assert math.isnan(got["dist_init"]) and math.isfinite(got["sum_of_fro"])
    with pytest.warns(CNAWarning, match="dist_init is NaN"):
        assert math.isnan(B.dist_init(model, None))


def test_margin_does_not_enter_dist_init_or_sum_of_fro():
    model = _dense_net(2)
    w0 = B.capture_initial_weights(model)
    a = _quiet(B.compute, model, 0.5, w0, 10)
    b = _quiet(B.compute, model, -1.0, w0, 10)  # normalized measures NaN, these two are not
    assert math.isnan(b["l2"])
    assert (a["dist_init"], a["sum_of_fro"]) == (b["dist_init"], b["sum_of_fro"])


def test_sum_of_fro_in_log_space_does_not_overflow():
    """Twenty 64x64 kernels scaled by 1e16: the product of squared norms (~1e700) exceeds
    float64, its d-th root times d does not."""
    layers = [keras.Input((64,))] + [keras.layers.Dense(64, use_bias=False) for _ in range(20)]
    model = keras.Sequential(layers)
    model.set_weights([np.full((64, 64), 1e16 / 64, dtype=np.float32)] * 20)
    # each ‖W‖_F = 1e16 (64·64 entries of 1e16/64): d·(Π ‖W‖²)^(1/d) = 20·1e32
    assert B.sum_of_fro(model) == pytest.approx(20 * 1e32, rel=1e-5)
