"""One call that measures a trained model: alpha, beta, CNA, CNA-A, margin, CNA-M and the gaps.

Data flows one way: raw images -> alpha; preprocess(raw) -> probe -> layer sums -> beta;
(alpha, beta) -> CNA / CNA-A; model outputs from the same forward pass -> margin, accuracy, loss.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from cna_tf.complexity import alpha as compute_alpha
from cna_tf.measures import beta as compute_beta
from cna_tf.measures import cna, cna_area, cna_margin, margins, _labels, _probabilities
from cna_tf.probe import ActivationProbe

__all__ = ["evaluate", "measure_split", "summarize", "add_baselines", "subsample"]


def subsample(n: int, max_samples: Optional[int], seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most ``max_samples`` of ``n`` items."""
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(max_samples), replace=False))


def _split(data, name: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (raw_images, labels)") from None
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{name}: {len(x)} images but {len(y)} labels")
    return x, y


def measure_split(probe: ActivationProbe, raw, labels, preprocess: Optional[Callable] = None,
                  value_range=None, bins: int = 100, batch_size: Optional[int] = None,
                  alpha_values: Optional[np.ndarray] = None, inputs: Any = None
                  ) -> Dict[str, np.ndarray]:
    """Per-sample values of one data split from one forward pass.

    ``alpha_values`` and ``inputs`` pass precomputed alpha / model inputs (e.g. cached by a
    callback); otherwise they are computed from ``raw``.

    Returns:
        dict of arrays: ``alpha`` (n,), ``layer_sums`` (n, L), ``beta`` (n,), ``outputs``
        (n, classes), ``probs`` (n, classes), ``labels`` (n,), ``correct`` (n,) bool,
        ``margins`` (n,) and ``nll`` (n,) (cross-entropy of the true class).
    """
    a = compute_alpha(raw, bins=bins, value_range=value_range) if alpha_values is None \
        else np.asarray(alpha_values)
    if inputs is None:
        inputs = preprocess(raw) if preprocess is not None else raw
    sums, outputs = probe.layer_sums_and_outputs(inputs, batch_size=batch_size)
    outputs = np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs,
                         dtype=np.float64)
    probs, _ = _probabilities(outputs, None)
    y = _labels(labels, outputs.shape[0], outputs.shape[1])
    rows = np.arange(len(y))
    nll = -np.log(np.clip(probs[rows, y], 1e-12, None))
    return {
        "alpha": a, "layer_sums": sums, "beta": compute_beta(sums), "outputs": outputs,
        "probs": probs, "labels": y, "correct": probs.argmax(axis=1) == y,
        "margins": margins(probs, y, from_logits=False), "nll": nll,
    }


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
             baselines: bool = True, initial_weights: Optional[Dict[str, np.ndarray]] = None,
             train_size: Optional[int] = None, return_details: bool = False) -> Any:
    """Every metric of SPEC §6 for a model on a train and a test split, in inference mode.

    Example:
        >>> ds = cna_tf.data.load("digits")
        >>> m = cna_tf.evaluate(model, (ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
        ...                     preprocess=ds.preprocess, value_range=ds.value_range)
        >>> m["cna_test"], m["cna_margin"]

    Args:
        model: a Functional or Sequential Keras classifier.
        train: ``(raw_images, labels)`` of the training set (alpha is computed on the raw
            images; the network sees ``preprocess(raw_images)``).
        test: ``(raw_images, labels)`` of the test set.
        preprocess: maps raw images to model inputs (None: the raw images are the inputs).
        value_range: (low, high) of the raw pixel values (None: uint8 -> (0, 255)).
        bins: histogram bins of alpha.
        method: correlation of CNA (``pearson``, ``spearman``, ``kendall``).
        window, points: smoothing window and resampling points of the CNA-A curves.
        percentile: percentile of the training margins that is the network margin.
        mode, reduce, include_output: passed to `ActivationProbe`.
        max_samples: evaluate a seeded random subset of at most this many points per split.
        seed: seed of that subset.
        batch_size: forward-pass batch size.
        probe: an existing probe of ``model`` to reuse (its compiled predict function is kept).
        baselines: also compute the norm-based measures of SPEC §2 (`cna_tf.baselines`).
        initial_weights: the model's weights before training, from
            `cna_tf.baselines.capture_initial_weights`; needed by ``bound_2018`` (NaN without).
        train_size: m of ``bound_2018`` (default: the number of training images given).
        return_details: also return the per-sample arrays of each split.

    Returns:
        dict of floats (alpha/beta summaries, ``cna_train``, ``cna_test``, ``cna_area``,
        ``margin``, ``cna_margin``, ``train_acc``, ``test_acc``, ``train_loss``, ``test_loss``,
        ``gen_gap``, ``loss_gap``, and with ``baselines`` ``l2``, ``spectral``, ``l2_path``,
        ``bound_2018`` and the raw products); with ``return_details`` a pair
        ``(metrics, details)``.
    """
    x_tr, y_tr = _split(train, "train")
    x_te, y_te = _split(test, "test")
    idx_tr = subsample(len(x_tr), max_samples, seed)
    idx_te = subsample(len(x_te), max_samples, seed + 1)
    if probe is None:
        probe = ActivationProbe(model, mode=mode, reduce=reduce, include_output=include_output)
    details = {
        split: measure_split(probe, x[idx], y[idx], preprocess=preprocess,
                             value_range=value_range, bins=bins, batch_size=batch_size)
        for split, x, y, idx in (("train", x_tr, y_tr, idx_tr), ("test", x_te, y_te, idx_te))
    }
    metrics = summarize(details["train"], details["test"], method=method, window=window,
                        points=points, percentile=percentile)
    if baselines:
        add_baselines(metrics, model, initial_weights, train_size or len(x_tr))
    return (metrics, details) if return_details else metrics
