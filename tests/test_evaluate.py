"""evaluate() end to end against an independent numpy pipeline on a hand-computable MLP."""
import numpy as np
import pytest
from scipy import stats

import keras
from keras import layers

import cna_tf
from test_measures import reference_area


def relu(v):
    return np.maximum(v, 0)


@pytest.fixture
def setup(rng):
    inp = keras.Input((4, 4, 1))
    x = layers.Flatten()(inp)
    x = layers.Dense(6, activation="relu")(x)
    x = layers.Dense(5, activation="relu")(x)
    x = layers.Dense(5, activation="relu")(x)
    model = keras.Model(inp, layers.Dense(3, activation="softmax")(x))
    model.set_weights([rng.normal(scale=0.6, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    raw_tr = rng.integers(0, 17, size=(120, 4, 4, 1)).astype(np.uint8)
    raw_te = rng.integers(0, 17, size=(80, 4, 4, 1)).astype(np.uint8)
    raw_tr[:40, :2] = 0  # a spread of complexities
    y_tr, y_te = rng.integers(0, 3, 120), rng.integers(0, 3, 80)
    return model, (raw_tr, y_tr), (raw_te, y_te)


def independent(model, raw, y):
    ws = model.get_weights()
    h = (raw.reshape(len(raw), -1) / 16.0 - 0.5)
    pres = []
    for i in range(0, len(ws), 2):
        z = h @ ws[i] + ws[i + 1]
        pres.append(z)
        h = relu(z) if i < len(ws) - 2 else np.exp(z) / np.exp(z).sum(1, keepdims=True)
    z = np.stack([p.sum(1) for p in pres[:-1]], 1)
    b = np.array([np.polyfit(np.arange(1, z.shape[1] + 1), row, 1)[0] for row in z])
    a = []
    for img in raw:
        counts, _ = np.histogram(img.ravel(), bins=np.arange(101) * 16 / 100)
        p = counts[counts > 0] / img.size
        a.append(-(p * np.log(p)).sum())
    probs = h
    m = np.array([probs[i, y[i]] - np.delete(probs[i], y[i]).max() for i in range(len(y))])
    return np.array(a), b, probs, m


def test_evaluate_matches_independent_pipeline(setup):
    model, train, test = setup
    pre = lambda raw: raw.reshape(len(raw), 4, 4, 1).astype("float32") / 16.0 - 0.5  # noqa
    got, d = cna_tf.evaluate(model, train, test, preprocess=pre, value_range=(0, 16), window=10,
                             return_details=True)
    a_tr, b_tr, p_tr, m_tr = independent(model, *train)
    a_te, b_te, p_te, _ = independent(model, *test)
    np.testing.assert_allclose(d["train"]["alpha"], a_tr, atol=1e-12)
    np.testing.assert_allclose(d["test"]["beta"], b_te, rtol=1e-4, atol=1e-5)
    assert got["cna_train"] == pytest.approx(stats.pearsonr(a_tr, b_tr)[0], abs=1e-4)
    assert got["cna_test"] == pytest.approx(stats.pearsonr(a_te, b_te)[0], abs=1e-4)
    # many images share a complexity; sort by the same alpha values so ties order alike
    area = reference_area(d["train"]["alpha"], b_tr, d["test"]["alpha"], b_te, 10, 100)
    assert got["cna_area"] == pytest.approx(area, rel=1e-3, abs=1e-5)
    assert got["margin"] == pytest.approx(np.percentile(m_tr, 5), abs=1e-5)
    assert got["cna_margin"] == pytest.approx(got["margin"] * got["cna_area"], rel=1e-9)
    acc_tr = np.mean(p_tr.argmax(1) == train[1])
    acc_te = np.mean(p_te.argmax(1) == test[1])
    assert got["train_acc"] == pytest.approx(acc_tr)
    assert got["gen_gap"] == pytest.approx(acc_tr - acc_te)
    loss_tr = -np.mean(np.log(p_tr[np.arange(120), train[1]]))
    loss_te = -np.mean(np.log(p_te[np.arange(80), test[1]]))
    assert got["loss_gap"] == pytest.approx(loss_te - loss_tr, rel=1e-4)
    assert got["alpha_train_mean"] == pytest.approx(a_tr.mean())
    assert got["beta_test_std"] == pytest.approx(b_te.std(), rel=1e-4)


def test_evaluate_subsample_and_details(setup):
    model, train, test = setup
    pre = lambda raw: raw.astype("float32") / 16.0  # noqa: E731
    m, d = cna_tf.evaluate(model, train, test, preprocess=pre, value_range=(0, 16),
                           max_samples=50, return_details=True)
    assert len(d["train"]["alpha"]) == 50 and d["train"]["layer_sums"].shape == (50, 3)
    m2 = cna_tf.evaluate(model, train, test, preprocess=pre, value_range=(0, 16), max_samples=50)
    assert m2 == pytest.approx(m, nan_ok=True)  # the subset is seeded


def test_evaluate_bad_input(setup):
    model, train, test = setup
    with pytest.raises(ValueError, match="outside the declared value_range"):
        cna_tf.evaluate(model, train, test, value_range=(0, 10))
    with pytest.raises(ValueError, match="labels must lie in"):
        cna_tf.evaluate(model, (train[0], train[1] + 5), test, value_range=(0, 16),
                        preprocess=lambda r: r.astype("float32"))
    with pytest.raises(ValueError, match="120 images but 3 labels"):
        cna_tf.evaluate(model, (train[0], train[1][:3]), test, value_range=(0, 16))
