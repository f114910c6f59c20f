"""Tests of cna_tf.data (datasets, splits, label shuffling, preprocessing) and its tf.data pipeline.

Nothing here downloads: Keras-cache datasets are tested with tiny files written into a temporary
KERAS_HOME, and every download entry point is patched to fail if it is ever reached.
"""
import gzip
import os
import pickle
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cna_tf import data as D


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Makes every download entry point raise, and isolates the env from real caches."""
    def boom(*a, **k):
        raise AssertionError("cna_tf.data tried to download")

    import keras
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(keras.utils, "get_file", boom)
    monkeypatch.setattr(file_utils, "get_file", boom)
    monkeypatch.setattr(urllib.request, "urlretrieve", boom)
    monkeypatch.setattr(urllib.request, "urlopen", boom)
    monkeypatch.delenv("CNA_TF_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))  # no fetched full MNIST


@pytest.fixture
def keras_home(tmp_path, monkeypatch, no_download):
    home = tmp_path / "keras_home"
    (home / "datasets").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _tiny_mnist(rng, n_train=40, n_test=20):
    return dict(x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                y_train=np.tile(np.arange(10, dtype=np.uint8), n_train // 10),
                x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                y_test=np.tile(np.arange(10, dtype=np.uint8), n_test // 10))


def _check_basic(ds, n_train, n_test, shape, dtype, value_range, num_classes=10):
    assert ds.x_train.shape == (n_train, *shape) and ds.x_test.shape == (n_test, *shape)
    assert ds.x_train.dtype == dtype and ds.x_test.dtype == dtype
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    assert ds.input_shape == shape and ds.num_classes == num_classes
    assert ds.value_range == value_range
    lo, hi = value_range
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= lo and x.max() <= hi
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() < num_classes
    assert ds.shuffled_mask.dtype == bool and ds.shuffled_mask.shape == (n_train,)
    assert ds.mean.shape == (shape[-1],) and ds.std.shape == (shape[-1],)


# --- bundled offline datasets -----------------------------------------------------------------
def test_digits_shapes_dtypes_range_and_stratified_split():
    ds = D.load("digits")
    _check_basic(ds, 1258, 539, (8, 8, 1), np.uint8, (0, 16))
    assert ds.x_train.max() == 16 and not ds.augment and ds.flip
    # stratified: every class's test share is within one image of 30 %
    all_y = np.concatenate([ds.y_train, ds.y_test])
    counts = np.bincount(all_y)
    assert np.all(np.abs(np.bincount(ds.y_test) - 0.3 * counts) <= 1)
    # the same pixels as scikit-learn's, split without loss
    from sklearn.datasets import load_digits
    assert sorted(map(bytes, np.concatenate([ds.x_train, ds.x_test]).reshape(1797, -1))) == \
        sorted(map(bytes, load_digits().images.astype(np.uint8).reshape(1797, -1)))
    again, other = D.load("digits"), D.load("digits", seed=1)
    assert np.array_equal(again.x_train, ds.x_train) and np.array_equal(again.y_test, ds.y_test)
    assert not np.array_equal(other.y_train, ds.y_train)
    assert D.load("digits", test_size=100).x_test.shape[0] == 100


def test_mnist5k_split_is_balanced():
    ds = D.load("mnist5k", seed=3)
    _check_basic(ds, 4000, 1000, (28, 28, 1), np.uint8, (0, 255))
    assert ds.x_train.max() == 255
    assert np.all(np.bincount(ds.y_train) == 400) and np.all(np.bincount(ds.y_test) == 100)
    # digits are MNIST-like: mostly-black backgrounds
    assert 0.1 < ds.mean[0] < 0.16


def test_stratified_subsampling_keeps_class_balance():
    ds = D.load("mnist5k", n_train=1000, n_test=200, seed=5)
    assert np.all(np.bincount(ds.y_train, minlength=10) == 100)
    assert np.all(np.bincount(ds.y_test, minlength=10) == 20)
    full = D.load("digits")
    sub = D.load("digits", n_train=300)
    expected = np.bincount(full.y_train) * 300 / len(full.y_train)
    assert sub.y_train.shape == (300,) and np.all(np.abs(np.bincount(sub.y_train) - expected) < 1)
    # subsampling the train set does not change the split
    assert np.array_equal(sub.y_test, full.y_test)
    # the subsample draws rows of the training set
    rows = {bytes(r) for r in full.x_train.reshape(len(full.x_train), -1)}
    assert all(bytes(r) in rows for r in sub.x_train.reshape(300, -1))
    with pytest.raises(ValueError, match="exceeds"):
        D.load("digits", n_train=5000)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_label_shuffle_fraction_is_exact(p):
    ds = D.load("mnist5k", n_train=1001, n_test=100, label_shuffle=p, seed=7)
    clean = D.load("mnist5k", n_train=1001, n_test=100, seed=7)
    n = len(ds.y_train)
    assert int(ds.shuffled_mask.sum()) == round(p * n)
    assert np.array_equal(ds.y_train_clean, clean.y_train)
    assert np.array_equal(ds.x_train, clean.x_train)           # images untouched
    assert np.array_equal(ds.y_train[~ds.shuffled_mask], clean.y_train[~ds.shuffled_mask])
    assert np.array_equal(np.sort(ds.y_train), np.sort(clean.y_train))  # multiset unchanged
    assert np.array_equal(np.bincount(ds.y_train[ds.shuffled_mask], minlength=10),
                          np.bincount(clean.y_train[ds.shuffled_mask], minlength=10))
    assert np.array_equal(ds.y_test, clean.y_test)
    if p >= 0.25:  # a permutation of a large subset changes most of its labels
        changed = (ds.y_train != clean.y_train).sum()
        assert changed > 0.7 * ds.shuffled_mask.sum()


def test_gaussian_statistics():
    ds = D.load("gaussian", train_size=300, test_size=100, seed=1)
    _check_basic(ds, 300, 100, (32, 32, 3), np.float32, (0.0, 1.0))
    assert not ds.augment and ds.flip
    x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
    assert x.min() == 0.0 and x.max() == 1.0  # min-max scaled over the whole array
    # N(0,1) min-max scaled: mean = -min/(max-min) ~ 0.5, std = 1/(max-min) ~ 0.1, still normal
    m, s = x.mean(), x.std()
    assert abs(m - 0.5) < 0.05 and 0.08 < s < 0.13
    z = (x - m) / s
    assert abs(np.mean(z ** 3)) < 0.02 and abs(np.mean(z ** 4) - 3.0) < 0.05
    assert set(np.unique(ds.y_train)) <= set(range(10)) and len(np.unique(ds.y_train)) == 10
    again = D.load("gaussian", train_size=300, test_size=100, seed=1)
    assert np.array_equal(again.x_train, ds.x_train) and np.array_equal(again.y_train, ds.y_train)
    small = D.load("gaussian", train_size=50, test_size=10, shape=(8, 8), num_classes=3)
    assert small.input_shape == (8, 8, 1) and small.num_classes == 3
    assert D.load("gaussian", train_size=200, test_size=50, n_train=100).x_train.shape[0] == 100


# --- preprocessing and tf.data ----------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("digits", {}),
                                     ("gaussian", dict(train_size=200, test_size=20))])
def test_preprocess_standardizes_train_per_channel(name, kw):
    ds = D.load(name, **kw)
    x = ds.preprocess(ds.x_train)
    assert x.dtype == np.float32 and x.shape == ds.x_train.shape
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    # the documented formula
    lo, hi = ds.value_range
    ref = ((ds.x_test.astype(np.float64) - lo) / (hi - lo) - ds.mean) / ds.std
    np.testing.assert_allclose(ds.preprocess(ds.x_test), ref, atol=1e-5)
    if ds.input_shape[-1] == 1:  # (n, H, W) is accepted for one channel
        assert ds.preprocess(ds.x_train[:3, ..., 0]).shape == (3, *ds.input_shape)
    with pytest.raises(ValueError, match="shape"):
        ds.preprocess(ds.x_train[0])


def test_pipeline_batches_match_preprocess_and_shuffle():
    ds = D.load("digits", n_train=300, n_test=100)
    batches = list(ds.pipeline("test", batch_size=64))
    assert [b[0].shape[0] for b in batches] == [64, 36]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and batches[0][1].dtype.name == "int64"
    np.testing.assert_allclose(x, ds.preprocess(ds.x_test), atol=1e-5)
    assert np.array_equal(y, ds.y_test)
    shuffled = np.concatenate([b[1].numpy() for b in ds.pipeline("train", batch_size=128)])
    assert not np.array_equal(shuffled, ds.y_train)
    assert np.array_equal(np.sort(shuffled), np.sort(ds.y_train))
    dropped = list(ds.pipeline("train", batch_size=128, drop_remainder=True))
    assert len(dropped) == 2
    with pytest.raises(ValueError, match="split"):
        ds.pipeline("valid")


def test_pipeline_augmentation_keeps_shapes_and_changes_images():
    ds = D.load("gaussian", train_size=64, test_size=8, shape=(16, 16, 3))
    plain = next(iter(ds.pipeline("train", batch_size=64, shuffle=False)))[0].numpy()
    aug = next(iter(ds.pipeline("train", batch_size=64, shuffle=False, augment=True)))[0].numpy()
    assert aug.shape == plain.shape == (64, 16, 16, 3) and aug.dtype == np.float32
    changed = np.any(np.abs(aug - plain) > 1e-6, axis=(1, 2, 3))
    assert changed.mean() > 0.8
    # padding is the raw value 0, i.e. -mean/std after standardizing
    pad_value = (-ds.mean / ds.std).astype(np.float32)
    assert np.any(np.all(np.isclose(aug, pad_value, atol=1e-5), axis=-1))
    # the seed reproduces the augmentation; different epochs differ
    p = ds.pipeline("train", batch_size=64, shuffle=False, augment=True, seed=3)
    e1, e2 = (next(iter(p))[0].numpy() for _ in range(2))
    again = next(iter(ds.pipeline("train", batch_size=64, shuffle=False, augment=True,
                                  seed=3)))[0].numpy()
    assert np.array_equal(e1, again) and not np.array_equal(e1, e2)


def _half_bright_npz(path, n=64, w=32):
    x = np.zeros((n, 16, w, 3), np.uint8)
    x[:, :, : w // 2] = 255
    y = np.arange(n) % 4
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    return path


@pytest.mark.parametrize("flip", [False, True])
def test_pipeline_flip_only_when_allowed(tmp_path, flip):
    path = _half_bright_npz(tmp_path / "half.npz")
    ds = D.load(f"npz:{path}", flip=flip, augment=True)
    assert ds.flip is flip and ds.augment
    x = next(iter(ds.pipeline("train", batch_size=64)))[0].numpy()
    # crop offsets are at most 4: columns 4..11 always come from the bright half, 20..27 from
    # the dark one unless the image was flipped
    left, right = x[:, :, 4:12].mean(axis=(1, 2, 3)), x[:, :, 20:28].mean(axis=(1, 2, 3))
    if flip:
        assert 0 < np.sum(left < right) < 64
    else:
        assert np.all(left > right)


# --- npz:PATH ---------------------------------------------------------------------------------
def test_npz_path_uint8_and_float(tmp_path, rng):
    p = tmp_path / "u8.npz"
    np.savez(p, x_train=rng.integers(0, 256, (30, 5, 6, 2), dtype=np.uint8),
             y_train=np.arange(30) % 3, x_test=rng.integers(0, 256, (9, 5, 6, 2), dtype=np.uint8),
             y_test=np.arange(9) % 3)
    ds = D.load(f"npz:{p}")
    _check_basic(ds, 30, 9, (5, 6, 2), np.uint8, (0, 255), num_classes=3)
    assert ds.name == f"npz:{p}" and not ds.augment
    assert D.load(f"npz:{p}", num_classes=5, n_train=15).num_classes == 5

    f = tmp_path / "f.npz"
    xf = rng.random((20, 4, 4)).astype(np.float64)
    np.savez(f, x_train=xf, y_train=np.arange(20) % 2, x_test=xf[:4], y_test=np.arange(4) % 2)
    with pytest.raises(ValueError, match="value_range"):
        D.load(f"npz:{f}")
    dsf = D.load(f"npz:{f}", value_range=(0.0, 1.0))
    _check_basic(dsf, 20, 4, (4, 4, 1), np.float32, (0.0, 1.0), num_classes=2)
    with pytest.raises(ValueError, match="outside the declared"):
        D.load(f"npz:{f}", value_range=(0.0, 0.5))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.0"):
        D.load(f"npz:{f}", value_range=(0.0, 1.0), num_classes=1)

    # integer pixels with a declared range are stored as uint8; the range may live in the file
    i = tmp_path / "i.npz"
    xi = rng.integers(0, 17, (20, 8, 8)).astype(np.int64)
    np.savez(i, x_train=xi, y_train=np.arange(20) % 10, x_test=xi[:10], y_test=np.arange(10),
             value_range=np.array([0, 16]))
    dsi = D.load(f"npz:{i}")
    assert dsi.x_train.dtype == np.uint8 and dsi.value_range == (0, 16)

    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=xi, y_train=np.arange(20))
    with pytest.raises(ValueError, match="missing"):
        D.load(f"npz:{bad}", value_range=(0, 16))
    with pytest.raises(D.DatasetUnavailableError, match="not found"):
        D.load(f"npz:{tmp_path / 'nope.npz'}")


# --- Keras cache layouts (never downloading) --------------------------------------------------
def test_mnist_from_keras_cache(keras_home, rng):
    arrays = _tiny_mnist(rng)
    np.savez(keras_home / "datasets" / "mnist.npz", **arrays)
    ds = D.load("mnist")
    _check_basic(ds, 40, 20, (28, 28, 1), np.uint8, (0, 255))
    assert np.array_equal(ds.x_train[..., 0], arrays["x_train"])
    assert np.array_equal(ds.y_test, arrays["y_test"])
    sub = D.load("mnist", n_train=20, label_shuffle=0.5)
    assert np.all(np.bincount(sub.y_train_clean) == 2) and sub.shuffled_mask.sum() == 10


def test_missing_keras_file_raises_clear_error(keras_home):
    for name, needle in [("mnist", "mnist.npz"), ("fashion_mnist", "train-images-idx3-ubyte.gz"),
                         ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]:
        with pytest.raises(D.DatasetUnavailableError) as err:
            D.load(name)
        msg = str(err.value)
        assert str(keras_home / "datasets") in msg and needle in msg and "npz:" in msg
    assert isinstance(err.value, RuntimeError)


def test_fashion_mnist_from_keras_cache(keras_home, rng):
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir()

    def idx(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        with gzip.open(folder / path, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    a = _tiny_mnist(rng)
    idx("train-images-idx3-ubyte.gz", a["x_train"])
    idx("train-labels-idx1-ubyte.gz", a["y_train"])
    idx("t10k-images-idx3-ubyte.gz", a["x_test"])
    idx("t10k-labels-idx1-ubyte.gz", a["y_test"])
    ds = D.load("fashion-mnist")
    _check_basic(ds, 40, 20, (28, 28, 1), np.uint8, (0, 255))
    assert ds.name == "fashion_mnist" and np.array_equal(ds.x_test[..., 0], a["x_test"])


def _cifar_pickle(path, data, **labels):
    d = {b"batch_label": b"test", b"data": data, b"filenames": [b"x.png"] * len(data)}
    d.update({k.encode(): list(map(int, v)) for k, v in labels.items()})
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def test_cifar10_from_keras_cache_pickles(keras_home, rng):
    folder = keras_home / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    raw = rng.integers(0, 256, (60, 3072), dtype=np.uint8)
    labels = np.arange(60) % 10
    for i in range(5):
        _cifar_pickle(folder / f"data_batch_{i + 1}", raw[10 * i:10 * i + 10],
                      labels=labels[10 * i:10 * i + 10])
    _cifar_pickle(folder / "test_batch", raw[50:], labels=labels[50:])
    ds = D.load("cifar10")
    _check_basic(ds, 50, 10, (32, 32, 3), np.uint8, (0, 255))
    assert ds.augment and ds.flip
    # channels-last: pixel (r, c) of channel k is raw[k * 1024 + r * 32 + c]
    assert ds.x_train[0, 1, 2, 1] == raw[0, 1024 + 32 + 2]
    assert np.array_equal(ds.y_train, labels[:50])


def test_cifar100_from_downloaded_archive(keras_home, rng):
    src = keras_home / "src" / "cifar-100-python"
    src.mkdir(parents=True)
    raw = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
    fine, coarse = np.arange(30) % 100, np.arange(30) % 20
    _cifar_pickle(src / "train", raw[:20], fine_labels=fine[:20], coarse_labels=coarse[:20])
    _cifar_pickle(src / "test", raw[20:], fine_labels=fine[20:], coarse_labels=coarse[20:])
    with tarfile.open(keras_home / "datasets" / "cifar-100-python.tar.gz", "w:gz") as t:
        t.add(src, arcname="cifar-100-python")
    ds = D.load("cifar100")
    _check_basic(ds, 20, 10, (32, 32, 3), np.uint8, (0, 255), num_classes=100)
    coarse_ds = D.load("cifar100", label_mode="coarse")
    assert coarse_ds.num_classes == 20 and np.array_equal(coarse_ds.y_test, coarse[20:])


def test_svhn_from_local_npz_and_missing(tmp_path, monkeypatch, no_download, rng):
    with pytest.raises(D.DatasetUnavailableError, match="svhn.npz"):
        D.load("svhn")
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "svhn.npz", x_train=x, y_train=np.arange(20) % 10, x_test=x[:10],
             y_test=np.arange(10))
    monkeypatch.setenv("CNA_TF_DATA", str(tmp_path))
    ds = D.load("svhn")
    _check_basic(ds, 20, 10, (32, 32, 3), np.uint8, (0, 255))
    assert ds.augment and not ds.flip
    monkeypatch.delenv("CNA_TF_DATA")
    assert D.load("svhn", data_dir=str(tmp_path)).x_train.shape == (20, 32, 32, 3)


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(name="nope"), "valid names: digits, mnist5k, gaussian"),
    (dict(name="digits", label_shuffle=1.5), "label_shuffle"),
    (dict(name="digits", label_shuffle=-0.1), "label_shuffle"),
    (dict(name="digits", seed=-1), "seed"),
    (dict(name="digits", seed=1.5), "seed"),
    (dict(name="digits", n_train=0), "n_train"),
    (dict(name="digits", n_test=2.5), "n_test"),
    (dict(name="digits", test_size=1.5), "test_size"),
    (dict(name="digits", test_size=1797), "test_size"),
    (dict(name="digits", bogus=1), "unknown option"),
    (dict(name="digits", flip="no"), "flip"),
    (dict(name="gaussian", shape=(4, 4, 3, 2), train_size=4, test_size=2), "shape"),
    (dict(name="cifar100", label_mode="medium"), "label_mode"),
    (dict(name="npz:"), "npz:PATH"),
])
def test_bad_options_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.load(**kwargs)


def test_dataset_validates_labels_and_values():
    x = np.zeros((4, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        D.Dataset("t", x, np.array([0, 1, 2, 3]), x, np.array([0, 1, 2, 0]), 3, (0, 255))
    with pytest.raises(ValueError, match="outside"):
        D.Dataset("t", x + 20, np.zeros(4), x, np.zeros(4), 3, (0, 16))
    ds = D.Dataset("t", x, np.zeros(4), x, np.zeros(4), 3, (0, 255))
    assert ds.std.tolist() == [1.0] and ds.y_train.dtype == np.int64


def test_data_package_imports_without_tensorflow():
    """cna_tf.data needs numpy only: it loads with TensorFlow and Keras unimportable.

    The parent package ``cna_tf`` (which imports the Keras probe) is replaced by a bare package
    object, so only ``cna_tf.data`` and what it imports are executed.
    """
    root = Path(D.__file__).resolve().parent.parent
    code = (
        "import sys, types\n"
        "sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "pkg = types.ModuleType('cna_tf'); pkg.__path__ = [" + repr(str(root)) + "]\n"
        "sys.modules['cna_tf'] = pkg\n"
        "import cna_tf.data as m\n"
        "ds = m.load('digits', n_train=100, label_shuffle=0.1)\n"
        "assert ds.preprocess(ds.x_test).dtype.name == 'float32'\n"
        "assert 'cna_tf.data.tf_pipeline' not in sys.modules\n"
        "print('ok', ds.shuffled_mask.sum())\n")
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok 10"
