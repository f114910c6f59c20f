"""The :class:`Dataset` type: raw train/test images, integer labels and their preprocessing.

``preprocess`` is numpy only; ``pipeline`` builds a ``tf.data.Dataset`` through
:mod:`cna_tf.data.tf_pipeline`, imported only when it is called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from cna_tf.data.validation import (ValueRange, as_images, as_labels, check_in_range,
                                    check_seed, check_value_range, positive_int)

__all__ = ["Dataset", "PreprocessedDataset", "channel_stats"]

_STATS_CHUNK = 1 << 22  # pixel rows per chunk when computing channel statistics


@dataclass(repr=False, eq=False)
class Dataset:
    """Raw train/test images and labels with their preprocessing.

    Images are raw and un-normalized, shaped ``(n, H, W, C)`` (channels-last): uint8 for integer
    sources (digits: values 0..16; 8-bit images: 0..255), float32 otherwise. Labels are int64 in
    ``0..num_classes-1``. Normally built by :func:`load`; constructing one directly validates the
    arrays and computes ``mean`` / ``std`` when they are not given.

    Examples:
        >>> ds = cna_tf.data.load("digits")
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
        self.num_classes = positive_int(self.num_classes, "num_classes")
        self.value_range = check_value_range(self.value_range)
        self.x_train = as_images(self.x_train, f"{self.name}: x_train")
        self.x_test = as_images(self.x_test, f"{self.name}: x_test")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images have shape {self.x_train.shape[1:]} but "
                             f"test images {self.x_test.shape[1:]}")
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"{self.name}: train images are {self.x_train.dtype} but test images "
                             f"{self.x_test.dtype}")
        for x, what in ((self.x_train, "x_train"), (self.x_test, "x_test")):
            check_in_range(x, self.value_range, f"{self.name}: {what}")
        self.y_train = as_labels(self.y_train, self.num_classes, f"{self.name}: y_train")
        self.y_test = as_labels(self.y_test, self.num_classes, f"{self.name}: y_test")
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
            self.y_train_clean = as_labels(self.y_train_clean, self.num_classes,
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

        Examples:
            >>> ds = cna_tf.data.load("digits")
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

        Examples:
            >>> ds = cna_tf.data.load("digits")
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
        batch_size = positive_int(batch_size, "batch_size")
        seed = check_seed(seed)
        if augment is None:
            augment = self.augment if split == "train" else False
        if shuffle is None:
            shuffle = split == "train"
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        try:
            from cna_tf.data import tf_pipeline  # TensorFlow is imported only here
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

    Examples:
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


@dataclass(repr=False, eq=False)
class PreprocessedDataset(Dataset):
    """A :class:`Dataset` whose stored images already are the model inputs (e.g. a PGDL 2020
    task's float tensors, normalized by the organizers): ``preprocess`` and ``pipeline`` hand
    them over unchanged, bit for bit, and ``value_range`` is the range alpha scales them by
    (their observed min and max unless declared).

    Example:
        >>> ds = cna_tf.data.load("pgdl:/data/task1_v4")    # doctest: +SKIP
        >>> np.array_equal(ds.preprocess(ds.x_train), ds.x_train)   # doctest: +SKIP
        True
    """

    def __post_init__(self) -> None:
        c = np.asarray(self.x_train).shape[-1]
        self.mean, self.std = np.zeros(c), np.ones(c)  # unused: nothing is standardized
        super().__post_init__()

    def preprocess(self, raw: Any) -> np.ndarray:
        """The images as float32 model inputs, unchanged (a copy)."""
        x = np.asarray(raw)
        shape = self.input_shape
        if x.ndim == 3 and shape[-1] == 1 and x.shape[1:] == shape[:2]:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{self.name}: preprocess expects inputs of shape (n, *{shape}), "
                             f"got {x.shape}")
        return np.array(x, dtype=np.float32)

    def pipeline(self, split: str = "train", batch_size: int = 512, augment: Optional[bool] = None,
                 shuffle: Optional[bool] = None, seed: int = 0,
                 drop_remainder: bool = False):
        """As `Dataset.pipeline`, with the inputs unchanged; ``augment`` must stay off (the
        inputs are not raw images to crop and flip)."""
        if augment:
            raise ValueError(f"{self.name}: its inputs are already preprocessed; augmentation "
                             "is not available (augment=False)")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        from cna_tf.data import tf_pipeline

        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        # value range (0, 1), mean 0, std 1: (x - 0) / 1 is x exactly in float32
        return tf_pipeline.make_dataset(
            x, y, value_range=(0.0, 1.0), mean=self.mean, std=self.std,
            batch_size=positive_int(batch_size, "batch_size"),
            shuffle=split == "train" if shuffle is None else bool(shuffle), augment=False,
            seed=check_seed(seed), drop_remainder=bool(drop_remainder))
