"""Seeded sampling: stratified subsets, train/test splits, subsampling and label shuffling.

Every step of :func:`cna_tf.data.load` draws from its own random stream (``seeded_rng(seed,
STREAM_...)``), so that e.g. changing ``n_train`` leaves the train/test split unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from cna_tf.data.validation import check_fraction, check_seed

__all__ = ["STREAM_SPLIT", "STREAM_TRAIN", "STREAM_TEST", "STREAM_SHUFFLE", "STREAM_GAUSSIAN",
           "seeded_rng", "stratified_indices", "stratified_sample", "train_test_split",
           "subsample", "shuffle_labels"]

# Independent random streams per step.
STREAM_SPLIT, STREAM_TRAIN, STREAM_TEST, STREAM_SHUFFLE, STREAM_GAUSSIAN = 1, 2, 3, 4, 5

Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def seeded_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one random stream of a seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, stratified random subset of ``n`` items, in random order.

    Each class gets ``n * count_c / N`` items rounded down; the remaining items go to the classes
    with the largest fractional parts (ties broken at random), so class proportions are kept as
    closely as integers allow.

    Examples:
        >>> idx = stratified_indices(np.repeat(np.arange(3), 10), 6, seed=0)
        >>> np.bincount(np.repeat(np.arange(3), 10)[idx]).tolist()
        [2, 2, 2]

    Args:
        labels: class ids ``(N,)``.
        n: subset size, ``1 <= n <= N``.
        seed: non-negative integer seed.
    """
    return stratified_sample(np.asarray(labels), n, seeded_rng(check_seed(seed), STREAM_SPLIT))


def stratified_sample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`stratified_indices` drawing from a given generator."""
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


def train_test_split(x: np.ndarray, y: np.ndarray, test_size: Union[float, int],
                     rng: np.random.Generator, name: str) -> Arrays:
    """A stratified split ``(x_train, y_train, x_test, y_test)``, both parts in random order.

    Args:
        x, y: images and labels of the whole dataset.
        test_size: a fraction in (0, 1) or a count of test images.
        rng: the generator to draw from.
        name: the dataset's name, for errors.
    """
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
    test = stratified_sample(y, n_test, rng)
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    return x[train], y[train], x[test], y[test]


def subsample(x: np.ndarray, y: np.ndarray, n: Optional[int], rng: np.random.Generator,
              option: str, split: str, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """A stratified subset of ``n`` images of one split (all of them for ``None`` or ``n = N``).

    ``option`` (``"n_train"``), ``split`` (``"training"``) and ``name`` word the error.
    """
    if n is None:
        return x, y
    if n > len(y):
        raise ValueError(f"{option}={n} exceeds the {len(y)} {split} images of {name!r}")
    if n == len(y):
        return x, y
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    idx = stratified_sample(labels, n, rng)
    return x[idx], y[idx]


def shuffle_labels(labels: np.ndarray, fraction: float, seed: int = 0
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Permutes a seeded random subset of exactly ``round(fraction * n)`` labels among itself.

    The multiset of labels is unchanged; labels outside the subset are untouched; a label inside
    it may by chance keep its value.

    Examples:
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
    p = check_fraction(fraction)
    rng = seeded_rng(check_seed(seed), STREAM_SHUFFLE)
    k = int(round(p * len(y)))
    mask = np.zeros(len(y), dtype=bool)
    out = y.copy()
    if k > 0:
        idx = rng.choice(len(y), size=k, replace=False)
        out[idx] = y[idx][rng.permutation(k)]
        mask[idx] = True
    return out, mask
