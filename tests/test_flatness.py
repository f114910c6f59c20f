"""SPEC §8 flatness measures (`cna_tf.flatness`), checked step by step on a net small enough to
redo every search in numpy: the noise draws and restarts are re-created from the documented
seeds, the perturbed accuracies and the gradient ascent are recomputed by hand (float64 forward
and backward pass), and each bisection step's deviation and decision is compared."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from cna_tf import flatness as F

N_SUB = 300          # the subset every search runs on
SEED = 7


@pytest.fixture(scope="module")
def data():
    d = load_digits()
    return (d.data / 16.0).astype("float32"), d.target.astype("int64")


def _net(hidden: int = 16) -> keras.Model:
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


@pytest.fixture(scope="module")
def trained(data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = _net()
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return model


# -- an independent numpy re-implementation of SPEC §8 on a 64-h-10 ReLU/softmax net ---------

def _forward(w, x):
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in w)
    pre = x @ w1 + b1
    h = np.maximum(pre, 0.0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return pre, h, p / p.sum(axis=1, keepdims=True)


def _acc(w, x, y):
    return float(np.mean(_forward(w, x)[2].argmax(axis=1) == y))


def _subset(n, seed):
    return np.sort(np.random.default_rng(seed).choice(n, size=N_SUB, replace=False))


def _sigma_dev(w, x, y, sigma, magnitude, seed):
    base = _acc(w, x, y)
    accs = []
    for k in range(10):
        rng = np.random.default_rng([seed, int(magnitude), k])
        noisy = []
        for a in w:
            z = rng.standard_normal(a.shape)
            std = np.sqrt(sigma ** 2 * a.astype(np.float64) ** 2 + 1e-6) if magnitude else sigma
            noisy.append((a + std * z).astype(np.float32))
        accs.append(_acc(noisy, x, y))
    return abs(base - np.mean(accs))


def _ce_grad(w, x, y):
    """Gradient of the mean cross-entropy of softmax outputs, by hand."""
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in w)
    pre, h, p = _forward(w, x)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    dh = (dz @ w2.T) * (pre > 0)
    return [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]


def _alpha_dev(w, x, y, alpha, seed, lr=1e-3, project=True):
    base, lowest = _acc(w, x, y), math.inf
    lo = [a - (alpha * np.abs(a) + 1e-3) for a in w]
    hi = [a + (alpha * np.abs(a) + 1e-3) for a in w]
    for r in range(3):
        rng = np.random.default_rng([seed, 2, r])
        cur = [(a + alpha * rng.uniform(-0.5, 0.5, size=a.shape) * np.abs(a)).astype(np.float32)
               for a in w]
        order = rng.permutation(len(x))
        while len(order) < 20 * 64:
            order = np.concatenate([order, rng.permutation(len(x))])
        for s in range(20):
            b = order[s * 64:(s + 1) * 64]
            g = _ce_grad(cur, x[b], y[b])
            cur = [(c + lr * gi).astype(np.float32) for c, gi in zip(cur, g)]   # ascent
            if project:  # then the box
                cur = [np.clip(c, l, h).astype(np.float32) for c, l, h in zip(cur, lo, hi)]
        lowest = min(lowest, _acc(cur, x, y))
        if base - lowest > 0.11:
            break
    return base - lowest


def _check_bisection(result, max_steps):
    """The steps follow SPEC §8's bisection: midpoints of [0, 2], the decisions, the stop."""
    lower, upper = 0.0, 2.0
    for i, (p, d) in enumerate(result.steps):
        assert p == (lower + upper) / 2
        if abs(d - 0.1) < 0.01:
            assert i == len(result.steps) - 1 and result.converged
        elif d > 0.1:
            upper = p
        else:
            lower = p
    assert result.value == result.steps[-1][0]
    assert result.converged or len(result.steps) == max_steps
    assert result.flatness == pytest.approx(1.0 / result.value ** 2)


@pytest.fixture(scope="module")
def searched(trained, data):
    x, y = data
    return F.search(trained, x, y, samples=N_SUB, seed=SEED)


@pytest.mark.parametrize("name,magnitude", [("pacbayes_flatness", False),
                                            ("pacbayes_mag_flatness", True)])
def test_sigma_search_step_by_step(trained, data, searched, name, magnitude):
    x, y = data
    idx = _subset(len(x), SEED)
    xs, ys = x[idx], y[idx]
    w = trained.get_weights()
    r = searched[name]
    assert r.samples == N_SUB and r.accuracy == pytest.approx(_acc(w, xs, ys), abs=1 / N_SUB)
    assert r.accuracy > 0.9
    _check_bisection(r, F.SIGMA_STEPS)
    for p, d in r.steps:  # every step's deviation, re-estimated from the same draws in numpy
        assert d == pytest.approx(_sigma_dev(w, xs, ys, p, magnitude, SEED), abs=2 / N_SUB)
    assert r.converged, r.steps  # this net reaches the target within the budget
    assert abs(_sigma_dev(w, xs, ys, r.value, magnitude, SEED) - 0.1) < 0.01 + 2 / N_SUB
    # the noise's standard deviation is σ (not σ²): at σ′ fresh draws also cost ~0.1 accuracy
    fresh = np.mean([_sigma_dev(w, xs, ys, r.value, magnitude, 1000 + s) for s in range(3)])
    assert 0.05 < fresh < 0.15


def test_sharpness_search_step_by_step(trained, data, searched):
    x, y = data
    idx = _subset(len(x), SEED)
    xs, ys = x[idx], y[idx]
    w = trained.get_weights()
    r = searched["sharpness_mag_flatness"]
    _check_bisection(r, F.ALPHA_STEPS)
    for p, d in r.steps:  # restarts, ascent and projection redone in numpy at every α
        assert d == pytest.approx(_alpha_dev(w, xs, ys, p, SEED), abs=2 / N_SUB)
    assert r.converged or len(r.steps) == F.ALPHA_STEPS
    if r.converged:
        assert abs(_alpha_dev(w, xs, ys, r.value, SEED) - 0.1) < 0.01 + 2 / N_SUB


def test_projection_onto_the_box(trained, data, monkeypatch):
    """With SPEC's learning rate the 20 ascent steps rarely reach the box's faces; with a large
    one they do, and every step still matches the numpy reference that projects (and differs
    from one that does not)."""
    x, y = data
    idx = _subset(len(x), SEED)
    xs, ys = x[idx], y[idx]
    w = trained.get_weights()
    monkeypatch.setattr(F, "ASCENT_LEARNING_RATE", 3.0)
    r = F.search(trained, x, y, samples=N_SUB, seed=SEED, measures=["sharpness_mag_flatness"])
    r = r["sharpness_mag_flatness"]
    _check_bisection(r, F.ALPHA_STEPS)
    unprojected = []
    for p, d in r.steps:
        assert d == pytest.approx(_alpha_dev(w, xs, ys, p, SEED, lr=3.0), abs=2 / N_SUB)
        unprojected.append(_alpha_dev(w, xs, ys, p, SEED, lr=3.0, project=False))
    assert any(abs(u - d) > 5 / N_SUB for u, (_, d) in zip(unprojected, r.steps))


def test_ascent_ascends(trained, data):
    """Gradient ascent raises the training cross-entropy from the random start (the organizers'
    baseline descends): with the start U(−α/2, α/2)·|w| at α = 0 the weights start at w*, and
    20 ascent steps inside a wide box raise the loss."""
    x, y = data
    idx = _subset(len(x), SEED)
    w = trained.get_weights()
    cur = [a.copy() for a in w]
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = rng.choice(idx, 64)
        cur = [c + 1e-3 * g for c, g in zip(cur, _ce_grad(cur, x[b], y[b]))]

    def ce(ws):
        p = _forward(ws, x[idx])[2]
        return -np.mean(np.log(p[np.arange(len(idx)), y[idx]]))
    assert ce(cur) > ce(w)  # the numpy reference itself ascends: the step-by-step test uses it


def test_costs_are_counted(searched):
    """Forward passes follow from the algorithm: 10 per σ step (plus the unperturbed pass,
    billed to the first search), one per restart and 20 gradient steps of 64 per restart."""
    pac, mag, sharp = (searched[m] for m in F.MEASURES)
    assert pac.forward_examples == N_SUB * (1 + 10 * len(pac.steps))
    assert mag.forward_examples == N_SUB * 10 * len(mag.steps)
    restarts = sharp.forward_examples // N_SUB
    assert sharp.forward_examples == N_SUB * restarts
    assert len(sharp.steps) <= restarts <= 3 * len(sharp.steps)
    assert sharp.gradient_examples == restarts * 20 * 64
    assert pac.gradient_examples == mag.gradient_examples == 0
    assert all(r.seconds > 0 for r in (pac, mag, sharp))


def test_weights_restored_bit_exactly_and_seeded_runs_repeat(trained, data, searched):
    x, y = data
    before = [np.array(v.numpy(), copy=True) for v in trained.variables]
    a = F.compute(trained, x, y, samples=N_SUB, seed=SEED)
    after = [v.numpy() for v in trained.variables]
    assert all(np.array_equal(b, c) and b.dtype == c.dtype for b, c in zip(before, after))
    assert set(a) == set(F.MEASURES) | {F.PARAMETERS[m] for m in F.MEASURES}
    for m, r in searched.items():  # compute = search flattened; a second seeded run repeats
        assert a[m] == r.flatness and a[F.PARAMETERS[m]] == r.value
    onehot = keras.utils.to_categorical(y, 10)
    assert F.compute(trained, x, onehot, samples=N_SUB, seed=SEED) == a


def test_weights_restored_when_a_search_fails(trained, data, monkeypatch):
    x, y = data
    before = [np.array(v.numpy(), copy=True) for v in trained.variables]

    def boom(self, *args, **kwargs):  # the ascent fails with the weights at a perturbed start
        raise RuntimeError("boom")
    monkeypatch.setattr(keras.Model, "train_on_batch", boom)
    with pytest.raises(RuntimeError, match="boom"):
        F.compute(trained, x, y, samples=N_SUB, measures=["sharpness_mag_flatness"])
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, trained.variables))


def _with_cancelling_units(model: keras.Model, big: float) -> keras.Model:
    """The same function with two extra hidden units that cancel exactly: identical large
    inputs, output weights +big·r and −big·r. Perturbing either side breaks the cancellation,
    so the copy is far sharper (to additive and to magnitude-aware perturbations alike)."""
    w1, b1, w2, b2 = model.get_weights()
    r = np.random.default_rng(0).normal(size=(1, w2.shape[1])).astype(np.float32)
    col = np.full((w1.shape[0], 1), 0.5, np.float32)
    sharp = _net(w1.shape[1] + 2)
    sharp.set_weights([np.hstack([w1, col, col]), np.concatenate([b1, [1.0, 1.0]]).astype("float32"),
                       np.vstack([w2, big * r, -big * r]), b2])
    return sharp


def test_orientation_a_sharper_net_scores_higher(trained, data):
    x, y = data
    sharp = _with_cancelling_units(trained, big=20.0)
    xs = x[_subset(len(x), SEED)]
    same = np.mean(sharp.predict(xs, verbose=0).argmax(1) == trained.predict(xs, verbose=0).argmax(1))
    assert same == 1.0  # the same function on the subset
    flat = F.compute(trained, x, y, samples=N_SUB, seed=SEED)
    sharper = F.compute(sharp, x, y, samples=N_SUB, seed=SEED)
    for m in F.MEASURES:
        assert sharper[m] > 4 * flat[m], (m, flat, sharper)


def test_inference_mode_with_batchnorm_and_dropout(data):
    """BN uses its moving statistics and Dropout is off in every pass: the unperturbed accuracy
    is predict()'s, and the moving statistics are untouched."""
    x, y = data
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    before = [np.array(v.numpy(), copy=True) for v in model.variables]
    res = F.search(model, x, y, samples=N_SUB, seed=0, measures="sharpness_mag_flatness")
    idx = _subset(len(x), 0)
    want = np.mean(model.predict(x[idx], verbose=0).argmax(1) == y[idx])
    assert res["sharpness_mag_flatness"].accuracy == want
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables))


@pytest.mark.parametrize("kwargs,match", [
    ({"measures": ["sharpness"]}, "unknown flatness measure"),
    ({"samples": 0}, "samples must be a positive integer"),
    ({"y": "soft"}, "one-hot rows"),
])
def test_bad_arguments_are_clear_errors(trained, data, kwargs, match):
    x, y = data
    if kwargs.get("y") == "soft":
        kwargs = {"y": np.full((len(x), 10), 0.1)}
    args = {"y": y, **kwargs}
    with pytest.raises(ValueError, match=match):
        F.compute(trained, x, **args)


_BACKEND_SCRIPT = """
import json, sys
import numpy as np, keras
from cna_tf import flatness
w = np.load(sys.argv[1])
x, y = w["x"], w["y"]
m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                      keras.layers.Dense(10, activation="softmax")])
m.set_weights([w[f"w{i}"] for i in range(4)])
before = [np.array(v.numpy(), copy=True) for v in m.variables]
res = flatness.search(m, x, y, samples=300, seed=7)
restored = all(np.array_equal(a, v.numpy()) for a, v in zip(before, m.variables))
print(json.dumps({"restored": restored,
                  **{k: [r.value, r.steps] for k, r in res.items()}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_searches_on_other_backends(trained, data, searched, backend, tmp_path):
    """The gradient ascent is Keras' own train_on_batch, no TensorFlow code: JAX and PyTorch
    find the same σ′/α′ through the same steps as TensorFlow on the same weights."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip(backend)
    x, y = data
    path = tmp_path / "w.npz"
    np.savez(path, x=x, y=y, **{f"w{i}": w for i, w in enumerate(trained.get_weights())})
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _BACKEND_SCRIPT, str(path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got.pop("restored") is True
    for m, (value, steps) in got.items():
        want = searched[m]
        assert [p for p, _ in steps] == [p for p, _ in want.steps]
        assert value == want.value
        # float32 forward passes of another backend may flip a borderline point
        assert np.allclose([d for _, d in steps], [d for _, d in want.steps], atol=2 / N_SUB)
