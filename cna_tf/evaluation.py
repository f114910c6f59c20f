"""One call that measures a trained model: alpha, beta, CNA, CNA-A, margin, CNA-M and the gaps.

Data flows one way: raw images -> alpha; preprocess(raw) -> probe -> layer sums -> beta;
(alpha, beta) -> CNA / CNA-A; model outputs from the same forward pass -> margin, accuracy, loss.

A split is ``(raw_images, labels)`` arrays or a re-iterable batched stream of
``(raw_images, labels)`` (SPEC §6): a ``tf.data.Dataset``, a ``keras.utils.PyDataset`` or any
object whose ``iter()`` starts a fresh pass (e.g. a PyTorch ``DataLoader``). A stream is read
batch by batch: alpha on the raw batch, ``preprocess`` on the batch, one forward pass per batch;
only per-sample scalars (and the (n, L) layer sums) are kept, so memory is bounded by the batch,
not the dataset. Subsets of a stream are the arrays' subsets: a first pass counts the n samples,
the indices are ``subsample(n, max_samples, seed)`` (the same as for arrays of n samples), and a
second pass keeps the raw images and labels at those indices. A stream must therefore yield the
same samples in the same order on every pass (no reshuffling between passes).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import keras
import numpy as np

from cna_tf.complexity import alpha as compute_alpha
from cna_tf.measures import beta as compute_beta
from cna_tf.measures import (class_indices, cna, cna_area, cna_margin, margins,
                             probabilities)
from cna_tf.probe import ActivationProbe

__all__ = ["evaluate", "measure_split", "measure_chunks", "measure_stream", "summarize",
           "add_baselines", "subsample", "is_stream", "stream_batches", "scan_stream",
           "gather_stream", "array_split", "STREAM_ORDER_HINT"]

STREAM_ORDER_HINT = (
    "A stream must yield the same samples in the same order on every pass: build it without "
    "reshuffling (tf.data: no .shuffle(), or shuffle(..., reshuffle_each_iteration=False); "
    "PyDataset: a __getitem__ that depends only on the index).")


def subsample(n: int, max_samples: Optional[int], seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most ``max_samples`` of ``n`` items."""
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(max_samples), replace=False))


# -- splits: arrays or streams -----------------------------------------------------------------

def is_stream(data) -> bool:
    """Whether ``data`` is a batched stream rather than a tuple/list of arrays.

    Streams: a ``keras.utils.PyDataset``, a ``tf.data.Dataset`` (recognized by its
    ``element_spec``, without importing TensorFlow), or any other iterable object that is not a
    tuple, list, dict or array (a PyTorch ``DataLoader``; a generator, which `stream_batches`
    rejects because it can be read only once).
    """
    if data is None or isinstance(data, (tuple, list, dict, str, bytes, np.ndarray)):
        return False
    if isinstance(data, keras.utils.PyDataset) or hasattr(data, "element_spec"):
        return True
    return hasattr(data, "__iter__") and not hasattr(data, "shape")


def _batch_pair(item, name: str, k: int) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(item, dict):
        raise ValueError(
            f"{name}: batch {k} of the stream is a dict with keys {sorted(item)[:5]}; each batch "
            "must be a pair (raw_images, labels), e.g. dataset.map(lambda d: (d['image'], "
            "d['label'])) (TFDS: as_supervised=True)")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        what = (f"a {type(item).__name__} of {len(item)} elements"
                if isinstance(item, (tuple, list)) else f"a {type(item).__name__}")
        raise ValueError(f"{name}: each batch of the stream must be a pair (raw_images, labels), "
                         f"got {what} at batch {k}")
    raw, labels = np.asarray(item[0]), np.asarray(item[1])
    if labels.ndim == 0:
        raise ValueError(
            f"{name}: the stream yields single samples (a scalar label at element {k}), not "
            "batches; batch it first, e.g. dataset.batch(256)")
    if raw.ndim < 2 or len(raw) != len(labels):
        raise ValueError(f"{name}: batch {k} has raw images of shape {raw.shape} and "
                         f"{len(labels)} labels; each batch must hold n images (n, ...) and "
                         "their n labels")
    return raw, labels


def stream_batches(data, name: str = "data") -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """One pass over a stream: ``(raw_images, labels)`` numpy batches, in order.

    A ``PyDataset`` is read by index (``data[i]`` for i < ``num_batches``; no TensorFlow), a
    ``tf.data.Dataset`` through ``as_numpy_iterator()``, anything else through ``iter()``.

    Raises:
        ValueError: a one-shot iterator or generator, an endless PyDataset, or a batch that is
            not a pair ``(raw_images (n, ...), labels (n,...))``.
    """
    if isinstance(data, keras.utils.PyDataset):
        n_batches = data.num_batches
        if n_batches is None:
            raise ValueError(f"{name}: this PyDataset has no length (num_batches is None), so a "
                             "pass over it never ends; define __len__ (the number of batches)")
        items: Any = (data[i] for i in range(int(n_batches)))
    elif hasattr(data, "as_numpy_iterator"):
        items = data.as_numpy_iterator()
    else:
        if iter(data) is data:
            raise ValueError(
                f"{name}: a {type(data).__name__} can be read only once, and a stream is read "
                "several times (counting, subsets, every snapshot); pass a re-iterable stream "
                "(tf.data.Dataset, keras.utils.PyDataset, or an object whose __iter__ starts a "
                "fresh pass) or the arrays (raw_images, labels)")
        items = iter(data)
    for k, item in enumerate(items):
        yield _batch_pair(item, name, k)


def array_split(data, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(raw_images, labels)`` arrays of a split given as a pair, labels validated.

    Labels are class indices (n,) or exact one-hot rows (`cna_tf.measures.class_indices`);
    they are returned as given (validated again against the model's classes later).

    Raises:
        ValueError: not a pair, a length mismatch, or labels `class_indices` rejects.
    """
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (raw_images, labels) or a batched stream of such "
                         "pairs (tf.data.Dataset, keras.utils.PyDataset)") from None
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} images but {len(y)} labels")
    try:
        class_indices(y, n=len(x))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return x, y


def scan_stream(data, name: str, value_range=None, bins: Optional[int] = None
                ) -> Tuple[int, Optional[np.ndarray]]:
    """One pass that counts a stream's samples and validates every batch's labels.

    Args:
        data: the stream.
        name: its name in error messages.
        value_range: value range of the raw images (for alpha).
        bins: with a number of bins, also compute alpha of every image (validating them).

    Returns:
        ``(n, alpha)``: the number of samples and their alpha (n,) in stream order, or None
        without ``bins``.
    """
    n, parts = 0, []
    for raw, labels in stream_batches(data, name):
        try:
            class_indices(labels, n=len(raw))
            if bins is not None:
                parts.append(compute_alpha(raw, bins=bins, value_range=value_range))
        except ValueError as e:
            raise ValueError(f"{name} (batch starting at sample {n}): {e}") from None
        n += len(raw)
    if n == 0:
        raise ValueError(f"{name}: the stream yielded no samples")
    return n, (np.concatenate(parts) if bins is not None else None)


def _order_changed(name: str, detail: str) -> ValueError:
    return ValueError(f"{name}: the stream changed between passes ({detail}). "
                      + STREAM_ORDER_HINT)


def gather_stream(data, name: str, indices: np.ndarray, n: int,
                  alpha_values: Optional[np.ndarray] = None, value_range=None, bins: int = 100
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """One pass that keeps the raw images and labels at sorted ``indices`` of a stream.

    Args:
        data: the stream.
        name: its name in error messages.
        indices: sorted sample indices (e.g. `subsample`).
        n: the stream's sample count from an earlier pass (checked).
        alpha_values: alpha of every sample from an earlier pass; when given, the kept images'
            alpha is recomputed and must match (the stream yields the same samples in order).
        value_range, bins: of alpha, with ``alpha_values``.

    Returns:
        ``(raw_images, labels)`` arrays of ``len(indices)`` samples, labels as class indices.

    Raises:
        ValueError: when the stream yields another number of samples or other images than on
            the earlier pass.
    """
    indices = np.asarray(indices, dtype=np.int64)
    raws: List[np.ndarray] = []
    ys: List[np.ndarray] = []
    pos = 0
    for raw, labels in stream_batches(data, name):
        b = len(raw)
        lo, hi = np.searchsorted(indices, [pos, pos + b])
        if hi > lo:
            sel = indices[lo:hi] - pos
            raws.append(raw[sel])
            ys.append(class_indices(labels, n=b)[sel])
        pos += b
    if pos != n:
        raise _order_changed(name, f"{n} samples on the first pass, {pos} on this one")
    if not raws:
        raise ValueError(f"{name}: no samples selected")
    raw, y = np.concatenate(raws), np.concatenate(ys)
    if alpha_values is not None:
        got = compute_alpha(raw, bins=bins, value_range=value_range)
        if not np.array_equal(got, np.asarray(alpha_values)[indices]):
            raise _order_changed(name, "other images at the same positions")
    return raw, y


# -- per-sample values -------------------------------------------------------------------------

def _per_sample(sums: np.ndarray, outputs, labels, keep_outputs: bool = True
                ) -> Dict[str, np.ndarray]:
    outputs = np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs,
                         dtype=np.float64)
    probs, _ = probabilities(outputs, None)
    y = class_indices(labels, n=outputs.shape[0], num_classes=outputs.shape[1])
    rows = np.arange(len(y))
    d = {"beta": compute_beta(sums), "correct": probs.argmax(axis=1) == y,
         "margins": margins(probs, y, from_logits=False),
         "nll": -np.log(np.clip(probs[rows, y], 1e-12, None))}
    if keep_outputs:
        d.update(layer_sums=sums, labels=y, outputs=outputs, probs=probs)
    return d


def measure_split(probe: ActivationProbe, raw, labels, preprocess: Optional[Callable] = None,
                  value_range=None, bins: int = 100, batch_size: Optional[int] = None,
                  alpha_values: Optional[np.ndarray] = None, inputs: Any = None
                  ) -> Dict[str, np.ndarray]:
    """Per-sample values of one data split (arrays) from one forward pass.

    ``alpha_values`` and ``inputs`` pass precomputed alpha / model inputs (e.g. cached by a
    callback); otherwise they are computed from ``raw``.

    Returns:
        dict of arrays: ``alpha`` (n,), ``layer_sums`` (n, L), ``beta`` (n,), ``outputs``
        (n, classes), ``probs`` (n, classes), ``labels`` (n,) class indices, ``correct`` (n,)
        bool, ``margins`` (n,) and ``nll`` (n,) (cross-entropy of the true class).
    """
    a = compute_alpha(raw, bins=bins, value_range=value_range) if alpha_values is None \
        else np.asarray(alpha_values)
    if inputs is None:
        inputs = preprocess(raw) if preprocess is not None else raw
    sums, outputs = probe.layer_sums_and_outputs(inputs, batch_size=batch_size)
    return {"alpha": a, **_per_sample(sums, outputs, labels)}


def measure_chunks(probe: ActivationProbe, chunks: Iterable[Tuple[np.ndarray, Any, Any]],
                   name: Optional[str] = None, batch_size: Optional[int] = None,
                   keep_outputs: bool = False) -> Dict[str, np.ndarray]:
    """`measure_split`'s per-sample values over consecutive chunks of one split.

    Each chunk is ``(alpha, labels, model_inputs)`` of consecutive samples; it gets one forward
    pass (in slices of ``batch_size``) and only its per-sample values are kept, so memory is
    bounded by the chunk and the values kept, not the split.

    Args:
        probe: the model's probe.
        chunks: an iterable of ``(alpha (b,), labels (b,) or (b, classes), inputs)``; errors it
            raises are reported like the chunks' own.
        name: the split's name: a ValueError is re-raised as ``"<name> (batch starting at
            sample <i>): ..."`` (unless it already starts with the name); None re-raises as is.
        batch_size: forward-pass slice size (default 256). With chunks of a multiple of it,
            the slices are those of one pass over the whole split (identical values).
        keep_outputs: also keep ``layer_sums`` (n, L), ``labels`` (n,), ``outputs`` and
            ``probs`` (n, classes); without, about 33 bytes per sample are kept (alpha, beta,
            margins, nll as float64, correct as bool).

    Returns:
        The keys of `measure_split` (``layer_sums``, ``labels``, ``outputs`` and ``probs`` only
        with ``keep_outputs``).

    Raises:
        ValueError: no samples, or what a chunk raised (see ``name``).
    """
    parts: List[Dict[str, np.ndarray]] = []
    pos = 0
    it = iter(chunks)
    while True:
        try:
            chunk = next(it, None)
            if chunk is None:
                break
            a, labels, inputs = chunk
            sums, outputs = probe.layer_sums_and_outputs(inputs, batch_size)
            parts.append({"alpha": np.asarray(a),
                          **_per_sample(sums, outputs, labels, keep_outputs)})
        except ValueError as e:
            if name is None or str(e).startswith(name):
                raise
            raise ValueError(f"{name} (batch starting at sample {pos}): {e}") from None
        pos += len(parts[-1]["alpha"])
    if not parts:
        raise ValueError(f"{name or 'data'}: no samples")
    # one key at a time, each chunk's piece freed as it is joined: peak ~ the kept values + one
    return {k: np.concatenate([p.pop(k) for p in parts]) for k in list(parts[0])}


def measure_stream(probe: ActivationProbe, data, name: str = "data",
                   preprocess: Optional[Callable] = None, value_range=None, bins: int = 100,
                   batch_size: Optional[int] = None, keep_outputs: bool = False,
                   alpha_values: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """`measure_split` over a stream, batch by batch (memory bounded by the batch).

    Each batch: alpha of its raw images, ``preprocess`` of the batch, one forward pass (in
    slices of ``batch_size``), and the per-sample values; only those are kept
    (`measure_chunks`).

    Args:
        probe: the model's probe.
        data: a re-iterable stream of ``(raw_images, labels)`` batches (`stream_batches`).
        name: the split's name in error messages.
        preprocess: maps a batch of raw images to model inputs (None: the raw images).
        value_range, bins: of alpha.
        batch_size: forward-pass slice size (default 256).
        keep_outputs: as in `measure_chunks`.
        alpha_values: alpha of every sample from an earlier pass; when given, each batch's alpha
            must match (the stream yields the same samples in the same order).

    Returns:
        The keys of `measure_split` (``layer_sums``, ``labels``, ``outputs`` and ``probs`` only
        with ``keep_outputs``).
    """
    def chunks():
        pos = 0
        for raw, labels in stream_batches(data, name):
            a = compute_alpha(raw, bins=bins, value_range=value_range)
            if alpha_values is not None and not np.array_equal(
                    a, np.asarray(alpha_values)[pos:pos + len(raw)]):
                raise _order_changed(name, f"other images from sample {pos} on")
            yield a, labels, (preprocess(raw) if preprocess is not None else raw)
            pos += len(raw)

    try:
        d = measure_chunks(probe, chunks(), name, batch_size, keep_outputs)
    except ValueError as e:
        if str(e) == f"{name}: no samples":
            raise ValueError(f"{name}: the stream yielded no samples") from None
        raise
    if alpha_values is not None and len(d["alpha"]) != len(alpha_values):
        raise _order_changed(name, f"{len(alpha_values)} samples on the first pass, "
                                   f"{len(d['alpha'])} now")
    return d


def _summary(prefix: str, v: np.ndarray) -> Dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    return {f"{prefix}_mean": float(np.mean(v)), f"{prefix}_std": float(np.std(v)),
            f"{prefix}_min": float(np.min(v)), f"{prefix}_max": float(np.max(v))}


def summarize(train: Dict[str, np.ndarray], test: Dict[str, np.ndarray], method: str = "pearson",
              window: int = 25, points: int = 100, percentile: float = 5) -> Dict[str, float]:
    """The SPEC §6 metrics (without baselines) from two `measure_split` results."""
    m: Dict[str, float] = {}
    for split, d in (("train", train), ("test", test)):
        m.update(_summary(f"alpha_{split}", d["alpha"]))
        m.update(_summary(f"beta_{split}", d["beta"]))
        m[f"cna_{split}"] = cna(d["alpha"], d["beta"], method=method)
        m[f"{split}_acc"] = float(np.mean(d["correct"]))
        m[f"{split}_loss"] = float(np.mean(d["nll"]))
    m["cna_area"] = cna_area(train["alpha"], train["beta"], test["alpha"], test["beta"],
                             window=window, points=points)
    m["margin"] = float(np.percentile(train["margins"], percentile))
    m["cna_margin"] = cna_margin(m["cna_area"], m["margin"])
    m["gen_gap"] = m["train_acc"] - m["test_acc"]
    m["loss_gap"] = m["test_loss"] - m["train_loss"]
    return m


def add_baselines(metrics: Dict[str, float], model, initial_weights, train_size: int
                  ) -> Dict[str, float]:
    """Adds the SPEC §2 norm-based measures, normalized by ``metrics["margin"]``."""
    from cna_tf import baselines
    metrics.update(baselines.compute(model, metrics["margin"], initial_weights=initial_weights,
                                     train_size=train_size))
    return metrics


def evaluate(model, train, test, preprocess: Optional[Callable] = None, value_range=None,
             bins: int = 100, method: str = "pearson", window: int = 25, points: int = 100,
             percentile: float = 5, mode: str = "pre", reduce: str = "sum",
             include_output: bool = False, max_samples: Optional[int] = None, seed: int = 0,
             batch_size: Optional[int] = None, probe: Optional[ActivationProbe] = None,
             baselines: bool = True, initial_weights: Any = None,
             train_size: Optional[int] = None, return_details: bool = False) -> Any:
    """Every metric of SPEC §6 for a model on a train and a test split, in inference mode.

    Examples:
        >>> ds = cna_tf.data.load("digits")
        >>> m = cna_tf.evaluate(model, (ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
        ...                     preprocess=ds.preprocess, value_range=ds.value_range)
        >>> m["cna_test"], m["cna_margin"]

    Args:
        model: a Keras classifier: Functional, Sequential or subclassed (see `ActivationProbe`).
        train: the training set: ``(raw_images, labels)`` arrays, or a re-iterable batched
            stream of ``(raw_images, labels)`` (``tf.data.Dataset``, ``keras.utils.PyDataset``;
            see the module docstring), read batch by batch. Alpha is computed on the raw
            images; the network sees ``preprocess(raw_images)``. Labels are integer class
            indices (n,) or exact one-hot rows (n, classes) (`cna_tf.measures.class_indices`).
        test: the test set, in the same forms.
        preprocess: maps raw images to model inputs (None: the raw images are the inputs);
            applied per batch to a stream.
        value_range: (low, high) of the raw pixel values (None: uint8 -> (0, 255)).
        bins: histogram bins of alpha.
        method: correlation of CNA (``pearson``, ``spearman``, ``kendall``).
        window: smoothing window of the CNA-A curves.
        points: resampling points of the CNA-A curves.
        percentile: percentile of the training margins that is the network margin.
        mode: passed to `ActivationProbe`.
        reduce: passed to `ActivationProbe`.
        include_output: passed to `ActivationProbe`.
        max_samples: evaluate a seeded random subset of at most this many points per split
            (for a stream: the same subset as for its arrays, gathered in a second pass).
        seed: seed of that subset.
        batch_size: forward-pass batch size.
        probe: an existing probe of ``model`` to reuse (its compiled predict function is kept).
        baselines: also compute the norm-based measures of SPEC §2 (`cna_tf.baselines`).
        initial_weights: the model's weights before training, as the dict
            `cna_tf.baselines.capture_initial_weights` returns or the list
            ``model.get_weights()`` returns; needed by ``bound_2018`` (NaN without).
        train_size: m of ``bound_2018`` (default: the number of training images given).
        return_details: also return the per-sample arrays of each split.

    Returns:
        dict of floats (alpha/beta summaries, ``cna_train``, ``cna_test``, ``cna_area``,
        ``margin``, ``cna_margin``, ``train_acc``, ``test_acc``, ``train_loss``, ``test_loss``,
        ``gen_gap``, ``loss_gap``, and with ``baselines`` ``l2``, ``spectral``, ``l2_path``,
        ``bound_2018`` and the raw products); with ``return_details`` a pair
        ``(metrics, details)`` (for a stream measured in full, ``outputs`` and ``probs`` are
        kept only then).

    Raises:
        ValueError: bad splits or labels (naming the split and the fix), images outside
            ``value_range``, initial weights that do not match the model.
    """
    splits = {}
    for split, data in (("train", train), ("test", test)):
        splits[split] = data if is_stream(data) else array_split(data, split)
    if probe is None:
        probe = ActivationProbe(model, mode=mode, reduce=reduce, include_output=include_output)
    details, sizes = {}, {}
    for split, offset in (("train", 0), ("test", 1)):
        data = splits[split]
        if not is_stream(data):
            x, y = data
            idx = subsample(len(x), max_samples, seed + offset)
            sizes[split] = len(x)
            details[split] = measure_split(probe, x[idx], y[idx], preprocess=preprocess,
                                           value_range=value_range, bins=bins,
                                           batch_size=batch_size)
        elif max_samples is None:
            details[split] = measure_stream(probe, data, split, preprocess=preprocess,
                                            value_range=value_range, bins=bins,
                                            batch_size=batch_size, keep_outputs=return_details)
            sizes[split] = len(details[split]["alpha"])
        else:
            n, _ = scan_stream(data, split)
            x, y = gather_stream(data, split, subsample(n, max_samples, seed + offset), n)
            sizes[split] = n
            details[split] = measure_split(probe, x, y, preprocess=preprocess,
                                           value_range=value_range, bins=bins,
                                           batch_size=batch_size)
    metrics = summarize(details["train"], details["test"], method=method, window=window,
                        points=points, percentile=percentile)
    if baselines:
        add_baselines(metrics, model, initial_weights, train_size or sizes["train"])
    return (metrics, details) if return_details else metrics
