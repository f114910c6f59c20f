"""Every number `CNACallback` logs and `cna_tf.evaluate` returns, against an independent numpy
computation on the same points (issue 22, item 1).

The references below never call cna_tf's metric code: activations come from the weights of a
tiny Dense model multiplied out by hand, alpha from an integer histogram, beta from
``np.polyfit``, CNA from ``np.corrcoef``, CNA-A from shapely following SPEC §1 step by step, the
norms from ``np.linalg``. The train and test sets differ in size and content, so a swap of the
two (or of their subsets) changes every split-specific number; `test_a_swapped_split_fails_the_
reference_check` shows that the comparison catches it.

The kill-and-resume tests (slow) run ``pipelines/train.py`` as tests/test_faults.py does.
"""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

import keras
from _stores import sqlite_store

ROOT = Path(__file__).resolve().parent.parent

BINS, LO, HI = 37, 0, 255          # a non-default bin count: the parameter must reach alpha
WINDOW, POINTS, PERCENTILE = 9, 41, 20
ACTS = ("relu", "tanh", "relu")    # hidden activations; the classifier is softmax


# -- independent references ---------------------------------------------------------------------

def ref_alpha(raw, lo=LO, hi=HI, bins=BINS):
    """SPEC §1: integer pixels binned exactly, bin = floor((v - lo) * B / (hi - lo)), last bin
    closed; entropy in nats of the frequencies (one image at a time, pure Python counting),
    summed in sorted order so that it depends on the multiset of counts only."""
    out = []
    for img in np.asarray(raw).reshape(len(raw), -1):
        counts = {}
        for v in img.tolist():
            b = min((int(v) - lo) * bins // (hi - lo), bins - 1)
            counts[b] = counts.get(b, 0) + 1
        p = np.sort(np.array(list(counts.values()), dtype=np.float64)) / img.size
        out.append(float(-(p * np.log(p)).sum()))
    return np.array(out)


def _act(name, a):
    return {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}[name](a)


def ref_forward(weights, x):
    """(layer sums (n, L) of the hidden layers' affine outputs, logits, probabilities)."""
    w = [np.asarray(v, dtype=np.float64) for v in weights]
    h = np.asarray(x, dtype=np.float64)
    sums = []
    for i, act in enumerate(ACTS):
        a = h @ w[2 * i] + w[2 * i + 1]
        sums.append(a.sum(axis=1))
        h = _act(act, a)
    logits = h @ w[-2] + w[-1]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.stack(sums, axis=1), logits, e / e.sum(axis=1, keepdims=True)


def ref_beta(sums):
    d = np.arange(1, sums.shape[1] + 1)
    return np.array([np.polyfit(d, row, 1)[0] for row in sums])


def ref_margins(probs, y):
    out = []
    for p, t in zip(probs, y):
        others = np.delete(p, t)
        out.append(p[t] - others.max())
    return np.array(out)


def ref_curves(a_tr, b_tr, a_te, b_te, window=WINDOW, points=POINTS, keys=None):
    """SPEC §1 (alpha, beta)-curves: sort by alpha, running mean, shared min-max, resample.

    Equal alphas keep their input order (a stable sort of alpha rounded to 1e-10, so that
    images with the same histogram counts tie exactly); ``keys`` replaces the sort keys."""
    sm = []
    keys = keys or (np.round(a_tr, 10), np.round(a_te, 10))
    for a, b, key in ((a_tr, b_tr, keys[0]), (a_te, b_te, keys[1])):
        order = sorted(range(len(a)), key=lambda i: key[i])     # stable, like a list sort
        k = min(window, len(a))
        kern = np.ones(k) / k
        sm.append((np.convolve(np.asarray(a)[order], kern, "valid"),
                   np.convolve(np.asarray(b)[order], kern, "valid")))
    (sa_tr, sb_tr), (sa_te, sb_te) = sm
    amin, amax = min(sa_tr.min(), sa_te.min()), max(sa_tr.max(), sa_te.max())
    bmin, bmax = min(sb_tr.min(), sb_te.min()), max(sb_tr.max(), sb_te.max())
    na_tr, na_te = (sa_tr - amin) / (amax - amin), (sa_te - amin) / (amax - amin)
    nb_tr, nb_te = (sb_tr - bmin) / (bmax - bmin), (sb_te - bmin) / (bmax - bmin)
    grid = np.linspace(max(na_tr[0], na_te[0]), min(na_tr[-1], na_te[-1]), points)
    return grid, np.interp(grid, na_tr, nb_tr), np.interp(grid, na_te, nb_te)


def ref_area(a_tr, b_tr, a_te, b_te, window=WINDOW, points=POINTS, keys=None):
    grid, c_tr, c_te = ref_curves(a_tr, b_tr, a_te, b_te, window, points, keys)
    ring = [(g, v) for g, v in zip(grid, c_tr)] + [(g, v) for g, v in zip(grid[::-1], c_te[::-1])]
    return shapely.make_valid(Polygon(ring)).area


def ref_baselines(weights, w0, gamma, m, acts=ACTS):
    """SPEC §2 by hand for a Dense-only net: matrices are the kernels transposed to (out, in)."""
    kern = [np.asarray(v, dtype=np.float64) for v in weights[0::2]]
    kern0 = [np.asarray(v, dtype=np.float64) for v in w0[0::2]]
    fro = [np.sqrt((k ** 2).sum()) for k in kern]
    sig = [np.linalg.svd(k.T, compute_uv=False)[0] for k in kern]
    # path norm: the net with squared kernels and biases on an all-ones input, same activations
    sq = [np.asarray(v, dtype=np.float64) ** 2 for v in weights]
    h = np.ones((1, kern[0].shape[0]))
    for i, act in enumerate(acts):
        h = _act(act, h @ sq[2 * i] + sq[2 * i + 1])
    path_raw = math.sqrt((h @ sq[-2] + sq[-1]).sum())
    d, width = len(kern), max(k.shape[1] for k in kern)
    out = {"l2_raw": float(np.prod(fro)), "spectral_raw": float(np.prod(sig)),
           "l2_path_raw": path_raw}
    dist = [np.sqrt(((k - k0) ** 2).sum()) for k, k0 in zip(kern, kern0)]
    extra = {"dist_init": float(sum(x ** 2 for x in dist)),
             "sum_of_fro": d * float(np.prod([f ** 2 for f in fro])) ** (1.0 / d)}
    if gamma > 0:
        out.update(l2=out["l2_raw"] / gamma, spectral=out["spectral_raw"] / gamma,
                   l2_path=path_raw / gamma)
        out["bound_2018"] = math.sqrt(
            d ** 2 * width * math.log(d * width) * float(np.prod([s ** 2 for s in sig]))
            * sum(x ** 2 / s ** 2 for x, s in zip(dist, sig)) / (gamma ** 2 * m))
    else:  # SPEC §2 divides by the margin: undefined for gamma <= 0
        out.update(l2=math.nan, spectral=math.nan, l2_path=math.nan, bound_2018=math.nan)
    return out, extra


def ref_split(weights, raw, y):
    sums, logits, probs = ref_forward(weights, preprocess(raw))
    rows = np.arange(len(y))
    return {"alpha": ref_alpha(raw), "beta": ref_beta(sums), "probs": probs,
            "correct": probs.argmax(axis=1) == y, "margins": ref_margins(probs, y),
            "nll": -np.log(probs[rows, y])}


def ref_full(weights, w0, tr, te, m, light=None):
    """Every SPEC §6 metric of one full snapshot. ``tr``/``te``: (raw, labels) of the full
    subsets; ``light``: (raw, labels) pairs of the per-epoch subsets (the callback takes
    cna_* and beta_*_mean from those)."""
    s_tr, s_te = ref_split(weights, *tr), ref_split(weights, *te)
    out = {}
    for tag, s in (("train", s_tr), ("test", s_te)):
        for what in ("alpha", "beta"):
            v = s[what]
            out.update({f"{what}_{tag}_mean": v.mean(), f"{what}_{tag}_std": v.std(),
                        f"{what}_{tag}_min": v.min(), f"{what}_{tag}_max": v.max()})
        out[f"cna_{tag}"] = np.corrcoef(s["alpha"], s["beta"])[0, 1]
        out[f"{tag}_acc"] = s["correct"].mean()
        out[f"{tag}_loss"] = s["nll"].mean()
    out["cna_area"] = ref_area(s_tr["alpha"], s_tr["beta"], s_te["alpha"], s_te["beta"])
    out["margin"] = np.percentile(s_tr["margins"], PERCENTILE)
    out["cna_margin"] = out["margin"] * out["cna_area"]
    out["gen_gap"] = out["train_acc"] - out["test_acc"]
    out["loss_gap"] = out["test_loss"] - out["train_loss"]
    base, extra = ref_baselines(weights, w0, out["margin"], m)
    out.update(base)
    if light is not None:
        out.update(ref_light(weights, *light))
    return out, extra, (s_tr, s_te)


def ref_light(weights, tr, te):
    out = {}
    for tag, (raw, _) in (("train", tr), ("test", te)):
        a, b = ref_alpha(raw), ref_beta(ref_forward(weights, preprocess(raw))[0])
        out[f"cna_{tag}"] = np.corrcoef(a, b)[0, 1]
        out[f"beta_{tag}_mean"] = b.mean()
    return out


def ref_subset(n, size, seed):
    """The callback's / evaluate's seeded subset (documented: sorted, without replacement)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def assert_matches(got, want, extra=None, what=""):
    """Every key of ``got`` is checked: against ``want`` or, for the SPEC §8 measures when the
    library returns them, against ``extra``."""
    unchecked = set(got) - set(want) - set(extra or {})
    assert not unchecked, f"{what}: numbers without a reference: {sorted(unchecked)}"
    for k, v in got.items():
        ref = want[k] if k in want else extra[k]
        if isinstance(ref, float) and math.isnan(ref):
            assert math.isnan(v), f"{what} {k}: {v} but the reference is NaN"
        else:
            assert v == pytest.approx(ref, rel=2e-4, abs=2e-6), f"{what} {k}: {v} != {ref}"


# -- data and model ---------------------------------------------------------------------------

def preprocess(raw):
    return np.asarray(raw, dtype=np.float32).reshape(len(raw), -1) / 255.0


def make_data(n, seed):
    """4x4 uint8 images of varying complexity (1 to 16 distinct grey levels), no two with the
    same alpha; the label is the brightness tertile, so a small net learns it and the margin
    becomes positive."""
    rng = np.random.default_rng(seed)
    raw = np.empty((n, 4, 4), np.uint8)
    seen = set()
    i = 0
    while i < n:
        levels = rng.integers(0, 256, size=rng.integers(1, 17))
        img = rng.choice(levels, size=(4, 4)).astype(np.uint8)
        # distinct alpha values only (different histograms can share one, e.g. 4x4 and 8+4x2
        # pixels both give ln 4): with ties, the order of the sort by alpha would depend on the
        # last bit of each implementation's sum
        key = round(float(ref_alpha(img[None])[0]), 9)
        if key in seen:
            continue
        seen.add(key)
        raw[i] = img
        i += 1
    mean = raw.reshape(n, -1).mean(axis=1)
    y = np.digitize(mean, [112, 144]).astype(np.int64)
    return raw, y


@pytest.fixture(scope="module")
def data():
    return make_data(90, 1), make_data(61, 2)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16,))
    x = inp
    for units, act in zip((7, 5, 6), ACTS):
        x = keras.layers.Dense(units, activation=act)(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy")
    return model


class Recorder(keras.callbacks.Callback):
    """Listed after CNACallback: the weights it measured and the ``logs`` Keras passed on."""

    def __init__(self):
        super().__init__()
        self.weights, self.logs = {}, {}

    def on_train_begin(self, logs=None):
        self.weights[0] = [np.array(w) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = [np.array(w) for w in self.model.get_weights()]
        self.logs[epoch + 1] = dict(logs or {})


EPOCHS, EVERY, FULL_EVERY = 24, 5, 12   # measured: 0 (full) 5 10 12 (full) 15 20 24 (full)
MEASURED = {0: True, 5: False, 10: False, 12: True, 15: False, 20: False, 24: True}


def fit_with_callback(data, swap=False, **kw):
    import cna_tf

    (raw_tr, y_tr), (raw_te, y_te) = data
    model = tiny_model()
    cb = cna_tf.CNACallback((raw_tr, y_tr), (raw_te, y_te), preprocess=preprocess,
                            value_range=(LO, HI), every=EVERY, full_every=FULL_EVERY,
                            bins=BINS, window=WINDOW, points=POINTS, percentile=PERCENTILE,
                            log_artifacts=True, **kw)
    if swap:  # what the reference check must catch
        cb._sub_train, cb._sub_test = cb._sub_test, cb._sub_train
        cb._full_train, cb._full_test = cb._full_test, cb._full_train
    rec = Recorder()
    model.fit(preprocess(raw_tr), y_tr, epochs=EPOCHS, batch_size=16, verbose=0,
              callbacks=[cb, rec])
    return model, cb, rec


def check_callback(cb, rec, data, max_samples, full_max_samples, seed=0):
    """Compares ``cb.history`` and the per-epoch ``logs`` with the references; returns the
    final snapshot's reference split values."""
    (raw_tr, y_tr), (raw_te, y_te) = data
    i_tr, i_te = ref_subset(len(raw_tr), max_samples, seed), ref_subset(len(raw_te), max_samples,
                                                                         seed + 1)
    f_tr = ref_subset(len(raw_tr), full_max_samples, seed + 2)
    f_te = ref_subset(len(raw_te), full_max_samples, seed + 3)
    light = ((raw_tr[i_tr], y_tr[i_tr]), (raw_te[i_te], y_te[i_te]))
    assert sorted(cb.history) == sorted(MEASURED)
    last = None
    for epoch, full in MEASURED.items():
        w = rec.weights[epoch]
        if full:
            want, extra, last = ref_full(w, rec.weights[0], (raw_tr[f_tr], y_tr[f_tr]),
                                         (raw_te[f_te], y_te[f_te]), len(raw_tr), light)
        else:
            want, extra = ref_light(w, *light), {}
        assert_matches(cb.history[epoch], want, extra, f"history[{epoch}]")
        assert set(cb.history[epoch]) >= set(want)   # nothing the reference has is missing
        if epoch:
            logged = {k: v for k, v in rec.logs[epoch].items() if k in cb.history[epoch]}
            assert logged == cb.history[epoch], f"logs at epoch {epoch}"
    return last


def test_callback_numbers_match_an_independent_computation(data):
    model, cb, rec = fit_with_callback(data, max_samples=None, full_max_samples=None)
    last = check_callback(cb, rec, data, None, None)
    assert cb.history[24]["margin"] > 0 and cb.history[0]["margin"] < 0   # both branches
    assert math.isnan(cb.history[0]["bound_2018"])
    assert cb.history[24]["bound_2018"] > 0
    # the per-sample snapshot arrays
    s_tr, s_te = last
    np.testing.assert_array_equal(cb.snapshots[24]["train"], s_tr["correct"])
    np.testing.assert_array_equal(cb.snapshots[24]["test"], s_te["correct"])
    np.testing.assert_allclose(cb.snapshot_alpha["test"], s_te["alpha"], rtol=1e-12)


def test_callback_subsets_match_an_independent_computation(data):
    """Per-epoch CNA on a seeded subset of 40, full snapshots on another subset of 50."""
    model, cb, rec = fit_with_callback(data, max_samples=40, full_max_samples=50, seed=0)
    check_callback(cb, rec, data, 40, 50)


def test_a_swapped_split_fails_the_reference_check(data):
    """The check is not blind to train/test: swapping the callback's subsets makes it fail."""
    model, cb, rec = fit_with_callback(data, swap=True, max_samples=None, full_max_samples=None)
    with pytest.raises(AssertionError, match="cna_train|beta_train_mean"):
        check_callback(cb, rec, data, None, None)


def test_callback_mlflow_metrics_and_curves_artifact_match_the_reference(data, tmp_path,
                                                                         monkeypatch):
    import mlflow

    uri = sqlite_store(tmp_path / "m.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    with mlflow.start_run() as run:
        model, cb, rec = fit_with_callback(data, max_samples=None, full_max_samples=None)
    last = check_callback(cb, rec, data, None, None)
    run_id = run.info.run_id
    logged_keys = set(client.get_run(run_id).data.metrics)
    assert logged_keys >= set(cb.history[24])
    for key in sorted(logged_keys):
        hist = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        want = {e: cb.history[e][key] for e in cb.history if key in cb.history[e]}
        assert sorted(hist) == sorted(want), key
        for e, v in want.items():  # history was checked against the reference above
            if math.isnan(v):
                assert math.isnan(hist[e]), (key, e)
            else:
                assert hist[e] == pytest.approx(v, rel=1e-12), (key, e)
    # the (alpha, beta) points and curves of the final snapshot
    path = client.download_artifacts(run_id, "cna/alpha_beta_epoch24.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    s_tr, s_te = last
    for kind, tag, a, b in ((("point", "train") + (s_tr["alpha"], s_tr["beta"])),
                            (("point", "test") + (s_te["alpha"], s_te["beta"]))):
        sel = [r for r in rows if r["kind"] == kind and r["split"] == tag]
        np.testing.assert_allclose([float(r["alpha"]) for r in sel], a, rtol=1e-12)
        np.testing.assert_allclose([float(r["beta"]) for r in sel], b, rtol=2e-4, atol=1e-5)
    grid, c_tr, c_te = ref_curves(s_tr["alpha"], s_tr["beta"], s_te["alpha"], s_te["beta"])
    for tag, c in (("train", c_tr), ("test", c_te)):
        sel = [r for r in rows if r["kind"] == "curve" and r["split"] == tag]
        np.testing.assert_allclose([float(r["alpha"]) for r in sel], grid, rtol=1e-9)
        np.testing.assert_allclose([float(r["beta"]) for r in sel], c, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("max_samples", [None, 35])
def test_evaluate_numbers_match_an_independent_computation(data, max_samples):
    import cna_tf

    (raw_tr, y_tr), (raw_te, y_te) = data
    model = tiny_model()
    w0 = [np.array(w) for w in model.get_weights()]
    captured = cna_tf.baselines.capture_initial_weights(model)
    model.fit(preprocess(raw_tr), y_tr, epochs=EPOCHS, batch_size=16, verbose=0)
    w = model.get_weights()
    got = cna_tf.evaluate(model, (raw_tr, y_tr), (raw_te, y_te), preprocess=preprocess,
                          value_range=(LO, HI), bins=BINS, window=WINDOW, points=POINTS,
                          percentile=PERCENTILE, initial_weights=captured,
                          max_samples=max_samples, seed=3)
    i_tr = ref_subset(len(raw_tr), max_samples, 3)
    i_te = ref_subset(len(raw_te), max_samples, 4)
    want, extra, _ = ref_full(w, w0, (raw_tr[i_tr], y_tr[i_tr]), (raw_te[i_te], y_te[i_te]),
                              len(raw_tr))
    assert want["margin"] > 0
    assert_matches(got, want, extra, "evaluate")
    assert set(got) >= set(want)
    # train_size: m of the bound
    got_m = cna_tf.evaluate(model, (raw_tr, y_tr), (raw_te, y_te), preprocess=preprocess,
                            value_range=(LO, HI), bins=BINS, window=WINDOW, points=POINTS,
                            percentile=PERCENTILE, initial_weights=captured, train_size=1000)
    want_all, _, _ = ref_full(w, w0, (raw_tr, y_tr), (raw_te, y_te), 1000)
    assert got_m["bound_2018"] == pytest.approx(want_all["bound_2018"], rel=2e-4)


def test_evaluate_accepts_get_weights_list_as_initial_weights(data):
    """SPEC §6: initial_weights may be the list model.get_weights() returns (failed with 'The
    truth value of an array ... is ambiguous' until baselines matched it by position)."""
    import cna_tf

    (raw_tr, y_tr), (raw_te, y_te) = data
    model = tiny_model()
    w0 = [np.array(w) for w in model.get_weights()]
    model.fit(preprocess(raw_tr), y_tr, epochs=EPOCHS, batch_size=16, verbose=0)
    got = cna_tf.evaluate(model, (raw_tr, y_tr), (raw_te, y_te), preprocess=preprocess,
                          value_range=(LO, HI), bins=BINS, window=WINDOW, points=POINTS,
                          percentile=PERCENTILE, initial_weights=w0)
    want, _, _ = ref_full(model.get_weights(), w0, (raw_tr, y_tr), (raw_te, y_te), len(raw_tr))
    assert got["bound_2018"] == pytest.approx(want["bound_2018"], rel=2e-4)


def test_reference_alpha_agrees_with_numpy_histogram():
    """The reference's exact integer binning and numpy.histogram on the scaled values agree on
    these images (SPEC §1: "edge cases as numpy.histogram")."""
    raw, _ = make_data(50, 5)
    hist = []
    for img in raw.reshape(50, -1):
        c, _ = np.histogram(img / 255.0, bins=BINS, range=(0.0, 1.0))
        p = c[c > 0] / img.size
        hist.append(-(p * np.log(p)).sum())
    np.testing.assert_allclose(ref_alpha(raw), hist, rtol=1e-12)


def _images_from_counts(counts):
    """An 8x8 image (values 0..16) whose value v occurs counts[v] times."""
    return np.repeat(np.arange(17, dtype=np.uint8), counts).reshape(8, 8)


# two digits training images (cna_tf.data.load("digits", n_train=300, seed=0), rows 13 and 158)
# with the same counts of the 17 grey levels in a different order: the same alpha, ln-wise
TIED_COUNTS = ([32, 1, 1, 2, 5, 1, 2, 2, 3, 2, 2, 1, 2, 3, 0, 2, 3],
               [32, 1, 3, 2, 2, 3, 1, 1, 2, 0, 2, 1, 2, 2, 3, 2, 5])


def test_alpha_ties_are_bit_identical():
    import cna_tf

    raw = np.stack([_images_from_counts(c) for c in TIED_COUNTS])
    assert ref_alpha(raw, 0, 16, 100)[0] == ref_alpha(raw, 0, 16, 100)[1]
    a = cna_tf.alpha(raw, value_range=(0, 16))
    assert a[0] == a[1]


# -- kill and resume (pipelines/train.py in subprocesses) ---------------------------------------

TINY = ["--width", "0.1", "--depth", "2", "--n_train", "300", "--n_test", "150", "--lr", "0.1",
        "--max_samples", "120", "--batch_size", "64", "--epochs", "6", "--snapshot_every", "2",
        "--seed", "0", "--save_model", "true"]


def _train(tmp_path, client, exp, name, kill_at=None, run_id=None):
    env = dict(os.environ, MLFLOW_TRACKING_URI=client.tracking_uri, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("CNA_TF_KILL_AT_EPOCH", None)
    # the cna_tf of this checkout, whatever the venv's editable install points at
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    run_id = run_id or client.create_run(exp, run_name=name).info.run_id
    env["MLFLOW_RUN_ID"] = run_id
    if kill_at is not None:
        env["CNA_TF_KILL_AT_EPOCH"] = str(kill_at)
    script = ROOT / ("tests/fault_train.py" if kill_at is not None else "pipelines/train.py")
    cmd = [sys.executable, str(script), *TINY,
           "--backup_dir", str(tmp_path / f"backup_{run_id}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return run_id, proc


def _histories(client, run_id):
    run = client.get_run(run_id)
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)}
            for k in run.data.metrics}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """An uninterrupted run and one SIGKILLed at the end of epoch 4 (after its backup, before
    its measurement: a snapshot epoch) and resumed with the same run id and backup dir."""
    import mlflow

    tmp = tmp_path_factory.mktemp("resume")
    client = mlflow.MlflowClient(sqlite_store(tmp / "m.db"))
    exp = client.create_experiment("reference")
    plain, proc = _train(tmp, client, exp, "plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed, proc = _train(tmp, client, exp, "killed", kill_at=4)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    _, proc = _train(tmp, client, exp, "killed", run_id=killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert client.get_run(killed).data.tags["cna_tf.resumed_from_epoch"] == "4"
    return client, tmp, plain, killed


@pytest.mark.slow
def test_resumed_run_restored_epochs_equal_the_uninterrupted_run(resumed_runs):
    """Epochs 0-3 (logged before the kill), 4 (measured on the restored weights) and 5-6
    (trained after the resume) equal the uninterrupted run's, every logged number."""
    client, _, plain, killed = resumed_runs
    a, b = _histories(client, plain), _histories(client, killed)
    # every measured number; the wall times (train_seconds, the suite's *_seconds) differ
    cna_keys = {k for k in a if k not in ("loss", "accuracy") and not k.endswith("_seconds")}
    assert {"cna_train", "cna_test", "cna_area", "bound_2018", "gen_gap"} <= cna_keys
    assert cna_keys <= set(b)
    for key in sorted(cna_keys):
        assert sorted(b[key]) == sorted(a[key]), key        # same epochs, each once
        for step in a[key]:   # restored epochs, and the ones trained after the resume
            x, y = a[key][step], b[key][step]
            assert (math.isnan(x) and math.isnan(y)) or y == pytest.approx(x, rel=1e-9,
                                                                           abs=1e-12), (key, step)
    # bound_2018 at the restored snapshot used the run's original W0 (a fresh capture from the
    # restored weights would give 0, or NaN where the margin is not positive)
    assert a["margin"][4] > 0
    assert b["bound_2018"][4] == pytest.approx(a["bound_2018"][4], rel=1e-6)
    assert b["bound_2018"][4] > 0


@pytest.mark.slow
def test_resumed_run_final_snapshot_matches_an_independent_computation(resumed_runs):
    """The resumed run's epoch-6 numbers, recomputed by hand from its saved final model, the
    data and the initial weights of a model built with the cell's seed (W0 of the run)."""
    import cna_tf

    client, tmp, _, killed = resumed_runs
    h = _histories(client, killed)
    path = client.download_artifacts(killed, "model/model.keras", str(tmp))
    model = keras.models.load_model(path)
    ds = cna_tf.data.load("digits", n_train=300, n_test=150, seed=0)
    keras.utils.set_random_seed(0)
    fresh = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=0.1, depth=2,
                                seed=0)
    layers = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.activation.__name__ for l in layers] == ["relu", "relu", "softmax"]
    w = [np.asarray(v) for l in layers for v in l.get_weights()]
    w0 = [np.asarray(v) for l in fresh.layers if isinstance(l, keras.layers.Dense)
          for v in l.get_weights()]
    assert not all(np.array_equal(x, y) for x, y in zip(w, w0))
    lo, hi = ds.value_range

    def split(raw, y):
        x = np.asarray(ds.preprocess(raw), dtype=np.float64).reshape(len(raw), -1)
        sums = []
        for i in range(2):
            a = x @ w[2 * i] + w[2 * i + 1]
            sums.append(a.sum(axis=1))
            x = np.maximum(a, 0)
        logits = x @ w[4] + w[5]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return {"alpha": ref_alpha(raw, int(lo), int(hi), 100),
                "beta": ref_beta(np.stack(sums, 1)), "p": p, "y": y}

    tr = split(ds.x_train, ds.y_train)
    te = split(ds.x_test, ds.y_test)
    rows_tr, rows_te = np.arange(len(tr["y"])), np.arange(len(te["y"]))
    gamma = np.percentile(ref_margins(tr["p"], tr["y"]), 5)
    want = {
        "train_acc": (tr["p"].argmax(1) == tr["y"]).mean(),
        "test_acc": (te["p"].argmax(1) == te["y"]).mean(),
        "train_loss": -np.log(tr["p"][rows_tr, tr["y"]]).mean(),
        "test_loss": -np.log(te["p"][rows_te, te["y"]]).mean(),
        "margin": gamma,
        "alpha_train_mean": tr["alpha"].mean(), "beta_test_max": te["beta"].max(),
    }
    want["gen_gap"] = want["train_acc"] - want["test_acc"]
    want["loss_gap"] = want["test_loss"] - want["train_loss"]
    base, _ = ref_baselines(w, w0, gamma, 300, acts=("relu", "relu"))
    want.update(base)
    # the per-epoch series on the seeded subsets of 120 (seed 0 and 1)
    i_tr, i_te = ref_subset(300, 120, 0), ref_subset(150, 120, 1)
    want["cna_train"] = np.corrcoef(tr["alpha"][i_tr], tr["beta"][i_tr])[0, 1]
    want["cna_test"] = np.corrcoef(te["alpha"][i_te], te["beta"][i_te])[0, 1]
    want["beta_train_mean"] = tr["beta"][i_tr].mean()
    # digits images tie in alpha; the order among exact ties follows the run's own alpha floats
    # (from its logged curves CSV), see test_alpha_ties_are_bit_identical
    path = client.download_artifacts(killed, "cna/alpha_beta_epoch6.csv", str(tmp))
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    logged = {tag: np.array([float(r["alpha"]) for r in rows
                             if r["kind"] == "point" and r["split"] == tag])
              for tag in ("train", "test")}
    np.testing.assert_allclose(logged["train"], tr["alpha"], rtol=1e-12)
    np.testing.assert_allclose(logged["test"], te["alpha"], rtol=1e-12)
    want["cna_area"] = ref_area(tr["alpha"], tr["beta"], te["alpha"], te["beta"], 25, 100,
                                keys=(logged["train"], logged["test"]))
    want["cna_margin"] = gamma * want["cna_area"]
    assert gamma > 0
    for key, v in want.items():
        assert h[key][6] == pytest.approx(v, rel=2e-4, abs=2e-6), key
