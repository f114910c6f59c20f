"""Checks of the data layer's arguments and arrays; each raises a ValueError naming the fix.

Used by :class:`cna_tf.data.Dataset`, :func:`cna_tf.data.load` and the file readers, so every
entry point accepts and rejects the same values. Numpy only.
"""
from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

__all__ = ["ValueRange", "check_seed", "positive_int", "check_fraction", "check_value_range",
           "as_images", "check_in_range", "as_labels"]

ValueRange = Tuple[Union[int, float], Union[int, float]]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_seed(seed: Any) -> int:
    """A non-negative integer seed, as ``int``."""
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def positive_int(v: Any, what: str) -> int:
    """``v`` as ``int`` when it is an integer >= 1; ``what`` names it in the error."""
    if not _is_int(v) or v < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


def check_fraction(p: Any) -> float:
    """The ``label_shuffle`` fraction: a number in [0, 1], as ``float``."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ValueError(f"label_shuffle must be a fraction in [0, 1], got {p!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_shuffle must be a fraction in [0, 1], got {p!r}")
    return p


def check_value_range(value_range: Any) -> ValueRange:
    """A finite ``(low, high)`` pair with ``low < high``; integers stay ``int``, else ``float``.

    Examples:
        >>> check_value_range((0, 16)), check_value_range([0, 1.0])
        ((0, 16), (0.0, 1.0))
    """
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


def as_images(x: Any, what: str) -> np.ndarray:
    """Channels-last ``(n, H, W, C)``; integer sources as uint8 when they fit, floats float32.

    ``(n, H, W)`` gets a channel axis of 1. ``what`` names the array in errors.
    """
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


def check_in_range(x: np.ndarray, value_range: ValueRange, what: str) -> None:
    """Raises unless every pixel of ``x`` is finite and inside ``value_range``."""
    if x.size == 0:
        return
    lo, hi = value_range
    xmin, xmax = x.min(), x.max()
    if not (np.isfinite(xmin) and np.isfinite(xmax)):
        raise ValueError(f"{what}: images contain NaN or infinite values")
    if xmin < lo or xmax > hi:
        raise ValueError(f"{what}: pixel values span [{xmin}, {xmax}], outside the declared "
                         f"value_range {value_range}")


def as_labels(y: Any, num_classes: int, what: str) -> np.ndarray:
    """Integer class ids ``(n,)`` (``(n, 1)`` accepted) in ``0..num_classes-1``, as int64."""
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
