"""Input complexity alpha(x): the histogram entropy of an image's raw pixel values.

Paper eq. 1 (SPEC §1). Every raw value of one image (all channels, any layout) is scaled to
[0, 1] by the dataset's value range and binned into ``bins`` equal-width bins; alpha is the
Shannon entropy (natural log) of the bin frequencies. Counting is vectorized over the batch:
integer images are counted per distinct value with one ``np.bincount`` per chunk of images (and
binned exactly, in integer arithmetic), float images are binned with numpy.histogram's edge rules.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.stats import entropy

__all__ = ["alpha", "compression_alpha", "resolve_value_range"]

ValueRange = Optional[Tuple[float, float]]

# Images per np.bincount call: small enough that the offset keys of a chunk fit in uint16 for
# uint8 data and that the counts stay in cache.
_CHUNK_PIXELS = 1 << 18


def resolve_value_range(images: np.ndarray, value_range: ValueRange) -> Tuple[float, float]:
    """Returns the declared value range of ``images``, defaulting to (0, 255) for uint8.

    Raises:
        ValueError: if the range is missing for a non-uint8 dtype or is not (low < high).
    """
    if value_range is None:
        if images.dtype == np.uint8:
            return 0.0, 255.0
        raise ValueError(
            f"alpha needs the value range of {images.dtype} images: pass value_range=(low, high), "
            "e.g. (0, 16) for scikit-learn digits or (0.0, 1.0) for images scaled to [0, 1]. "
            "Only uint8 images default to (0, 255).")
    fix = ("pass value_range=(low, high), the raw pixel values' range, e.g. (0, 255) for uint8 "
           "images, (0, 16) for scikit-learn digits or (0.0, 1.0) for images scaled to [0, 1]")
    if isinstance(value_range, (str, bytes)):
        raise ValueError(f"value_range must be a pair of numbers (low, high), got "
                         f"{value_range!r}; {fix}")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair of numbers (low, high), got "
                         f"{value_range!r}; {fix}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must satisfy low < high (both finite), got "
                         f"{value_range!r}; {fix}")
    return lo, hi


def _as_batch(images) -> np.ndarray:
    try:
        x = np.asarray(images)
    except (TypeError, ValueError) as e:  # e.g. a list of images of different shapes
        raise ValueError(
            "alpha expects one numeric array of images with shape (n, ...), all of one shape; "
            f"the images could not be stacked into one ({e}). Resize or crop them to one "
            "shape, or call alpha on each group of equally shaped images.") from None
    if x.ndim < 2:
        raise ValueError(
            f"alpha expects a batch of images with shape (n, ...), got shape {x.shape}; "
            "wrap a single image as images[None].")
    if x.shape[0] == 0:
        raise ValueError(f"alpha got an empty batch (0 images, shape {x.shape}); pass at least "
                         "one image")
    if x[0].size == 0:
        raise ValueError(f"alpha got images without pixels (shape {x.shape}); each image needs "
                         "at least one value")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
            or x.dtype == np.bool_):
        raise ValueError(
            f"alpha expects numeric pixel values (integer, float or bool), got dtype {x.dtype}; "
            "convert the images to a numeric array first, e.g. np.asarray(images, np.uint8)")
    return x.reshape(x.shape[0], -1)


def _check_range(flat: np.ndarray, lo: float, hi: float) -> None:
    if np.issubdtype(flat.dtype, np.integer):
        info = np.iinfo(flat.dtype)
        if lo <= info.min and info.max <= hi:  # e.g. uint8 in (0, 255): nothing can be outside
            return
    if np.issubdtype(flat.dtype, np.floating) and not np.isfinite(flat).all():
        bad = int(np.argmax(~np.isfinite(flat).all(axis=1)))
        raise ValueError(f"image {bad} has NaN or inf pixel values; alpha needs finite pixels")
    mn, mx = flat.min(), flat.max()
    if mn < lo or mx > hi:
        rows = np.flatnonzero((flat < lo).any(axis=1) | (flat > hi).any(axis=1))
        raise ValueError(
            f"pixel values lie outside the declared value_range ({lo:g}, {hi:g}): found min "
            f"{mn:g}, max {mx:g} in {rows.size} image(s), first index {rows[0]}. Pass the range "
            "of the raw (un-normalized) images, or compute alpha before preprocessing.")


def _validated(images, value_range: ValueRange) -> Tuple[np.ndarray, float, float]:
    """The checks of `alpha`: (flat (n, pixels) batch, low, high) or a ValueError."""
    flat = _as_batch(images)
    if flat.dtype == np.bool_:
        flat = flat.astype(np.uint8)
        value_range = (0, 1) if value_range is None else value_range
    lo, hi = resolve_value_range(flat, value_range)
    _check_range(flat, lo, hi)
    return flat, lo, hi


def check_images(images, value_range: ValueRange = None) -> Tuple[float, float]:
    """Validates raw images for alpha without computing it; returns the resolved value range.

    Raises:
        ValueError: as `alpha` does: bad shapes, a missing range, NaN/inf or out-of-range pixels.
    """
    _, lo, hi = _validated(images, value_range)
    return lo, hi


def _run_chunks(work, n_rows: int, step: int) -> None:
    """Runs ``work(start, stop)`` over row chunks; np.bincount releases the GIL, so threads help."""
    starts = range(0, n_rows, step)
    workers = min(os.cpu_count() or 1, 8, len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda s: work(s, min(s + step, n_rows)), starts))
    else:
        for s in starts:
            work(s, min(s + step, n_rows))


def _value_counts(flat: np.ndarray, lo: int, n_values: int) -> np.ndarray:
    """Counts of each integer value lo..lo+n_values-1 per row, shape (n, n_values)."""
    n, p = flat.shape
    counts = np.empty((n, n_values), dtype=np.int64)
    rows_per_chunk = max(1, _CHUNK_PIXELS // p)
    key_dtype = np.uint16 if rows_per_chunk * n_values <= np.iinfo(np.uint16).max else np.int64
    if flat.dtype == np.uint8 and lo == 0 and n_values <= 256 and key_dtype == np.uint16:
        # Fast path: uint8 + uint16 offsets, no widening copy of the whole chunk.
        step = min(rows_per_chunk, (np.iinfo(np.uint16).max + 1) // 256)
    else:
        step = rows_per_chunk
        key_dtype = np.int64

    def work(s: int, e: int) -> None:
        chunk = flat[s:e]
        offsets = (np.arange(e - s, dtype=key_dtype) * n_values)[:, None]
        if key_dtype == np.uint16:
            keys = chunk + offsets
        else:
            keys = (chunk.astype(np.int64) - lo) + offsets
        counts[s:e] = np.bincount(keys.ravel(), minlength=(e - s) * n_values).reshape(
            e - s, n_values)

    _run_chunks(work, n, step)
    return counts


def _integer_bin_counts(flat: np.ndarray, lo: int, hi: int, bins: int) -> np.ndarray:
    """Exact binning of integer pixels: value v falls in bin floor((v - lo) * bins / (hi - lo))."""
    span = hi - lo
    values = np.arange(span + 1, dtype=np.int64)
    bin_of_value = np.minimum(values * bins // span, bins - 1)
    per_value = _value_counts(flat, lo, span + 1)
    counts = np.zeros((flat.shape[0], bins), dtype=np.int64)
    # bin_of_value is non-decreasing, so each bin's values are one contiguous run.
    used, first = np.unique(bin_of_value, return_index=True)
    counts[:, used] = np.add.reduceat(per_value, first, axis=1)
    return counts


def _float_bin_counts(flat: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Binning with numpy.histogram's rules on [0, 1] (last bin closed) after scaling."""
    n, p = flat.shape
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.empty((n, bins), dtype=np.int64)
    step = max(1, _CHUNK_PIXELS // p)

    def work(s: int, e: int) -> None:
        v = (flat[s:e].astype(np.float64) - lo) / (hi - lo)
        idx = (v * bins).astype(np.intp)
        idx[idx == bins] -= 1
        # Same correction as numpy.histogram for values that rounding put in a neighbour bin.
        idx[v < edges[idx]] -= 1
        idx[(v >= edges[idx + 1]) & (idx != bins - 1)] += 1
        idx += (np.arange(e - s, dtype=np.intp) * bins)[:, None]
        counts[s:e] = np.bincount(idx.ravel(), minlength=(e - s) * bins).reshape(e - s, bins)

    _run_chunks(work, n, step)
    return counts


def alpha(images, bins: int = 100, value_range: ValueRange = None) -> np.ndarray:
    """Input complexity alpha(x) of each image (paper eq. 1).

    Examples:
        >>> x = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
        >>> cna_tf.alpha(x).shape
        (8,)

    Args:
        images: array of shape (n, ...): a batch of raw, un-normalized images in any layout
            (channels-last, channels-first or flat); all values of one image are pooled.
        bins: number of equal-width histogram bins B over the scaled range [0, 1].
        value_range: (low, high) of the raw pixel values. Defaults to (0, 255) for uint8 and is
            required for every other dtype (scikit-learn digits: (0, 16)).

    Returns:
        float64 array of shape (n,): -sum_i p_i ln p_i with 0 ln 0 = 0.

    Raises:
        ValueError: for a missing range, values outside the range, NaN/inf pixels, or bad shapes.
    """
    bins = int(bins)
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    flat, lo, hi = _validated(images, value_range)
    integral = np.issubdtype(flat.dtype, np.integer) and lo.is_integer() and hi.is_integer()
    if integral and hi - lo <= 1 << 16:
        counts = _integer_bin_counts(flat, int(lo), int(hi), bins)
    else:
        counts = _float_bin_counts(flat, lo, hi, bins)
    return _entropy_of_counts(counts)


def _entropy_of_counts(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of integer counts with equal row sums.

    H = ln N - (1/N) sum_i c_i ln c_i, with c ln c read from a table over 0..N: the same value
    as scipy.stats.entropy(counts, axis=1) (tested) at a third of its cost on large batches.
    Each row's counts are summed in sorted order, so two images whose histograms hold the same
    counts in different bins get bit-identical alphas (a float sum depends on its order, and
    ties in alpha decide the order of points along the (alpha, beta) curve); and H >= 0 exactly
    (a constant image is 0, not -2e-16).
    """
    n_pixels = int(counts[0].sum())
    counts = np.sort(counts, axis=1)
    if n_pixels > 1 << 22:  # table would be large; scipy is fine for few, huge images
        return np.maximum(entropy(counts, axis=1), 0.0)
    c = np.arange(n_pixels + 1, dtype=np.float64)
    c_ln_c = np.zeros_like(c)
    c_ln_c[1:] = c[1:] * np.log(c[1:])
    return np.maximum(np.log(n_pixels) - c_ln_c[counts].sum(axis=1) / n_pixels, 0.0)


def compression_alpha(images, value_range: ValueRange = None, level: int = 9) -> np.ndarray:
    """Compression-based complexity: zlib-compressed size / raw size of each uint8 image.

    The slides' "method 1" alternative to the histogram entropy. Non-uint8 images are scaled to
    0..255 by their value range and rounded first.

    Args:
        images: array of shape (n, ...), raw images.
        value_range: (low, high) for non-uint8 images (as in `alpha`).
        level: zlib compression level (default 9, the maximum).

    Returns:
        float64 array of shape (n,), the compression ratio of each image.
    """
    flat = _as_batch(images)
    if flat.dtype != np.uint8:
        lo, hi = resolve_value_range(flat, value_range)
        _check_range(flat, lo, hi)
        flat = np.rint((flat.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    flat = np.ascontiguousarray(flat)
    raw = flat.shape[1]
    return np.fromiter((len(zlib.compress(row.tobytes(), level)) / raw for row in flat),
                       dtype=np.float64, count=flat.shape[0])
