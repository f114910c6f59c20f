"""Readers of dataset file formats: npz, gzipped IDX (MNIST-style), CIFAR python batches, SVHN's
MATLAB files and the downsampled ImageNet's npz batches.

No reader executes code from a file: npz files are read with ``allow_pickle=False`` and pickles
with :class:`RestrictedUnpickler`, which resolves only the globals it is given.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import IO, Callable, Collection, Optional, Sequence, Tuple

import numpy as np

from cna_tf.data.locations import keras_dataset_dirs
from cna_tf.data.validation import ValueRange, as_images, check_value_range, positive_int

__all__ = ["NPZ_KEYS", "CIFAR_GLOBALS", "RestrictedUnpickler", "npz_arrays", "read_npz",
           "read_idx_gz", "find_cifar", "cifar_batch", "read_svhn_mat", "IMAGENET32_FILES",
           "find_imagenet32", "read_imagenet32"]

Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

#: The arrays of an npz dataset, in this order.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

#: The globals a CIFAR python batch may name (containers of numpy arrays and bytes).
CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and the listed globals only (no code execution from a file).

    Examples:
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        _pickle.UnpicklingError: refusing to unpickle builtins.print from a CIFAR batch

    Args:
        file: a binary file object.
        allowed: ``(module, name)`` pairs that may be resolved (default `CIFAR_GLOBALS`).
        source: what the file is, for the error message.
        **kwargs: passed to ``pickle.Unpickler`` (``encoding``, ...).
    """

    def __init__(self, file: IO[bytes], allowed: Collection[Tuple[str, str]] = CIFAR_GLOBALS,
                 source: str = "a CIFAR batch", **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = frozenset(allowed)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from {self.source}")


def npz_arrays(z, path) -> Arrays:
    """``(x_train, y_train, x_test, y_test)`` of an open npz, or a ValueError naming what lacks."""
    missing = [k for k in NPZ_KEYS if k not in z.files]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; an npz dataset needs x_train, "
                         f"y_train, x_test, y_test (found {sorted(z.files)})")
    return tuple(z[k] for k in NPZ_KEYS)


def read_npz(path: Path, name: str, value_range: Optional[ValueRange],
             num_classes: Optional[int]) -> Tuple[Arrays, int, ValueRange]:
    """An npz dataset: its arrays, number of classes and value range.

    Args:
        path: the file (``x_train, y_train, x_test, y_test``, optionally ``value_range``).
        name: the dataset's name, for errors.
        value_range: the raw values' range; default the file's ``value_range`` array, else
            (0, 255) for uint8 images (any other dtype must declare it).
        num_classes: default the largest label + 1.
    """
    with np.load(path, allow_pickle=False) as z:
        x_train, y_train, x_test, y_test = npz_arrays(z, path)
        if value_range is None and "value_range" in z.files:
            value_range = tuple(np.asarray(z["value_range"]).reshape(-1).tolist())
    x_train = as_images(x_train, f"{name}: x_train")
    x_test = as_images(x_test, f"{name}: x_test")
    if value_range is None:
        if x_train.dtype == np.uint8 and x_test.dtype == np.uint8:
            value_range = (0, 255)
        else:
            raise ValueError(
                f"{name}: images are {x_train.dtype}; only uint8 images default to value_range "
                "(0, 255). Declare the range of the raw values: load(..., value_range=(low, high))"
                ", e.g. (0.0, 1.0), or store a 'value_range' array in the npz.")
    value_range = check_value_range(value_range)
    if num_classes is None:
        ys = [np.asarray(y) for y in (y_train, y_test)]
        if not all(np.issubdtype(y.dtype, np.integer) for y in ys) or not all(y.size for y in ys):
            raise ValueError(f"{name}: labels must be non-empty integer arrays; pass num_classes "
                             "to validate float labels")
        num_classes = int(max(y.max() for y in ys)) + 1
    return (x_train, y_train, x_test, y_test), positive_int(num_classes, "num_classes"), value_range


def read_idx_gz(path: Path) -> np.ndarray:
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


def find_cifar(cache_dir: Optional[str], folder: str, archive: str,
               members: Sequence[str]) -> Optional[Callable[[str], bytes]]:
    """A reader of the CIFAR pickles found in the Keras cache (folder or tar.gz), or None.

    Layouts, in order: ``<datasets>/<folder>-target/<folder>/`` (Keras 3 ``get_file(extract=True)``),
    ``<datasets>/<folder>/`` (tf.keras / Keras 2), the archive ``<datasets>/<folder>-target_archive``
    (Keras 3) or ``<datasets>/<archive>`` (the file as downloaded).
    """
    for d in keras_dataset_dirs(cache_dir):
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


def cifar_batch(raw: bytes, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 32, 32, 3)`` uint8 and int64 labels of one CIFAR python batch."""
    d = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    d = {(k.encode() if isinstance(k, str) else k): v for k, v in d.items()}
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_svhn_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 32, 32, 3)`` uint8 and int64 labels 0..9 of an SVHN cropped-digit ``.mat``.

    The files (``train_32x32.mat``, ``test_32x32.mat``) hold ``X`` as ``(32, 32, 3, n)`` and
    ``y`` as ``(n, 1)`` with the digit 0 labelled 10; read with ``scipy.io.loadmat`` (MATLAB v5,
    no code). Label 10 becomes 0.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on bad bytes
        raise ValueError(f"{path} is not a readable SVHN .mat file ({type(e).__name__}: {e})"
                         ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or \
            x.dtype != np.uint8 or y.size != x.shape[3]:
        raise ValueError(f"{path}: expected X uint8 (32, 32, 3, n) and y (n, 1) as in SVHN's "
                         f"cropped digits, got X {getattr(x, 'shape', None)} "
                         f"{getattr(x, 'dtype', None)}, y {getattr(y, 'shape', None)}")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise ValueError(f"{path}: SVHN labels are 1..10 (10 is the digit 0), found "
                         f"{labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


#: The downsampled ImageNet 32x32 (Chrabaszcz et al. 2017) npz files, as the two zips
#: ``Imagenet32_train_npz.zip`` and ``Imagenet32_val_npz.zip`` hold them.
IMAGENET32_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)) + ("val_data.npz",)


def find_imagenet32(folder: Path) -> Optional[Path]:
    """The folder holding all of `IMAGENET32_FILES`: ``folder`` or one of its subfolders."""
    if not folder.is_dir():
        return None
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if all((d / f).is_file() for f in IMAGENET32_FILES):
            return d
    return None


def read_imagenet32(folder: Path) -> Arrays:
    """``(x_train, y_train, x_test, y_test)`` of the downsampled ImageNet 32x32 npz batches.

    Each file holds ``data`` ``(n, 3072)`` uint8 (the red, green, blue planes of a 32x32 image)
    and ``labels`` 1..1000; labels become 0..999, the validation set is the test set.
    """
    parts = []
    for name in IMAGENET32_FILES:
        with np.load(folder / name, allow_pickle=False) as z:
            if "data" not in z.files or "labels" not in z.files:
                raise ValueError(f"{folder / name}: expected arrays 'data' and 'labels' (the "
                                 f"downsampled ImageNet npz format), found {sorted(z.files)}")
            x = np.asarray(z["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            parts.append((x, np.asarray(z["labels"]).reshape(-1).astype(np.int64) - 1))
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return x_train, y_train, np.ascontiguousarray(parts[-1][0]), parts[-1][1]
