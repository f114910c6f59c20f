"""`CNACallback`: CNA and friends per epoch in `model.fit`, in `logs` and in MLflow."""
from __future__ import annotations

import csv
import io
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import keras
import numpy as np

from cna_tf.complexity import alpha as compute_alpha, check_images
from cna_tf.evaluation import (add_baselines, gather_stream, is_stream, measure_chunks,
                               measure_stream, scan_stream, subsample, summarize)
from cna_tf.measures import CNAWarning, class_indices, beta as compute_beta, cna, curves
from cna_tf.probe import ActivationProbe
from cna_tf.tracking import Tracker, nan_reasons

__all__ = ["CNACallback", "Samples", "StreamSamples", "flat_weights"]

LIGHT_KEYS = ("cna_train", "cna_test", "beta_train_mean", "beta_test_mean")


# Model inputs of one chunk of a full snapshot, as float32 (the usual model input): 32 MiB.
# A sample set that fits in one chunk keeps its inputs (computed once); a larger one is
# preprocessed chunk by chunk at every measurement, so no float32 copy of it is ever held.
CHUNK_BYTES = 32 * 2**20
# Rows per alpha call on a large set (alpha's temporaries are ~3.6 kB per image).
ALPHA_ROWS = 8192


class Samples:
    """The samples a `CNACallback` measures, in memory: raw images, class indices, and the
    model inputs and alpha (computed on first use).

    The raw images are the arrays given (a view of them for the full set, a copy of a
    subset's rows). Memory stays bounded as the set grows: alpha is computed chunk by chunk
    (n float64 values are kept), and measurements run chunk by chunk (`chunks`): a set larger
    than one chunk (``CHUNK_BYTES`` of float32 model inputs) is preprocessed per chunk at each
    measurement instead of keeping a preprocessed copy; a smaller one keeps its model inputs.

    Attributes:
        raw: raw images (n, ...).
        labels: class indices (n,).
        inputs: model inputs (``preprocess(raw)``, or the given third element); computed anew
            on each access for a set larger than one chunk.
        alpha: alpha of ``raw`` (n,).
        chunk_bytes: float32 model-input bytes per chunk (``CHUNK_BYTES``).
        alpha_rows: images per alpha call (``ALPHA_ROWS``).
    """

    chunk_bytes: int = CHUNK_BYTES
    alpha_rows: int = ALPHA_ROWS

    def __init__(self, raw, labels, inputs, preprocess, value_range, bins):
        self.raw, self.labels = raw, labels
        self._inputs, self._preprocess = inputs, preprocess
        self._value_range, self._bins = value_range, bins
        self._alpha: Optional[np.ndarray] = None

    def _model_inputs(self, start: int, stop: int):
        """Model inputs of rows start:stop (of the given or cached inputs, else preprocessed)."""
        if self._inputs is not None:
            return keras.tree.map_structure(lambda a: a[start:stop], self._inputs)
        raw = self.raw[start:stop]
        return self._preprocess(raw) if self._preprocess else raw

    def chunk_rows(self, batch_size: Optional[int] = None) -> int:
        """Rows per chunk: a multiple of the forward-pass batch size (so the forward slices are
        those of one pass over the whole set) with about ``CHUNK_BYTES`` of float32 inputs."""
        size = max(1, int(batch_size or 256))
        per_sample = 4 * max(1, int(np.prod(np.shape(self.raw)[1:], dtype=np.int64)))
        return max(size, int(self.chunk_bytes) // per_sample // size * size)

    @property
    def inputs(self):
        if self._inputs is not None:
            return self._inputs
        inputs = self._model_inputs(0, len(self))
        if len(self) <= self.chunk_rows():
            self._inputs = inputs
        return inputs

    @property
    def alpha(self) -> np.ndarray:
        if self._alpha is None:
            rows = max(1, int(self.alpha_rows))
            self._alpha = np.concatenate([
                compute_alpha(self.raw[i:i + rows], bins=self._bins,
                              value_range=self._value_range) for i in range(0, len(self), rows)])
        return self._alpha

    def chunks(self, batch_size: Optional[int] = None
               ) -> Iterator[Tuple[np.ndarray, np.ndarray, Any]]:
        """``(alpha, labels, model inputs)`` of consecutive chunks of `chunk_rows` samples
        (one chunk, with the model inputs kept, for a set that fits in one)."""
        rows = self.chunk_rows(batch_size)
        if len(self) <= rows:
            if self._inputs is None:
                self._inputs = self._model_inputs(0, len(self))
            yield self.alpha, self.labels, self._inputs
            return
        alpha = self.alpha
        for i in range(0, len(self), rows):
            yield alpha[i:i + rows], self.labels[i:i + rows], self._model_inputs(i, i + rows)

    def take(self, idx: np.ndarray) -> "Samples":
        """The samples at ``idx`` (cached inputs and alpha carried over); all of them (in
        order) are this object itself, not a copy."""
        idx = np.asarray(idx)
        if len(idx) == len(self) and np.array_equal(idx, np.arange(len(self))):
            return self
        inputs = None if self._inputs is None else _index(self._inputs, idx)
        sub = Samples(self.raw[idx], self.labels[idx], inputs, self._preprocess,
                      self._value_range, self._bins)
        if self._alpha is not None:
            sub._alpha = self._alpha[idx]
        return sub

    def __len__(self) -> int:
        return len(self.raw)


class StreamSamples:
    """All samples of a stream, measured by reading the stream again, batch by batch.

    Used for a stream's full snapshots with ``full_max_samples=None`` (and its per-epoch CNA
    with ``max_samples=None``): nothing but alpha (n,) is kept between passes. Every pass checks
    that the stream yields the same images in the same order (alpha per position).

    Attributes:
        stream: the stream.
        alpha: alpha of every sample, in stream order (n,).
    """

    def __init__(self, stream, name: str, alpha: np.ndarray, preprocess, value_range, bins):
        self.stream, self.name, self.alpha = stream, name, alpha
        self._preprocess, self._value_range, self._bins = preprocess, value_range, bins

    def measure(self, probe: ActivationProbe, batch_size: Optional[int]
                ) -> Dict[str, np.ndarray]:
        """`cna_tf.evaluation.measure_stream` over the stream (order checked against alpha)."""
        return measure_stream(probe, self.stream, self.name, preprocess=self._preprocess,
                              value_range=self._value_range, bins=self._bins,
                              batch_size=batch_size, alpha_values=self.alpha)

    def __len__(self) -> int:
        return len(self.alpha)


def _index(x, idx):
    if isinstance(x, dict):
        return {k: _index(v, idx) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_index(v, idx) for v in x)
    return np.asarray(x)[idx]


def flat_weights(model) -> np.ndarray:
    """All trainable weights of ``model`` concatenated into one float32 vector.

    The order is ``model.trainable_weights`` (each variable raveled in C order); the inverse is
    `cna_tf.plots.set_flat_weights`.
    """
    parts = [np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float32).ravel()
             for v in model.trainable_weights]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _too_few(name: str, n: int) -> ValueError:
    return ValueError(f"CNACallback {name} needs at least 2 samples (CNA is a correlation over "
                      f"samples), got {n}; pass at least 2 images with their labels")


def _unpack(data, name: str) -> Tuple[np.ndarray, np.ndarray, Any, Optional[int]]:
    """(raw images, class indices, model inputs or None, one-hot width or None) of arrays."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError(
            f"CNACallback {name} must be (raw_images, labels), (raw_images, labels, "
            "model_inputs) or a re-iterable batched stream of (raw_images, labels) "
            f"(tf.data.Dataset, keras.utils.PyDataset); got {type(data).__name__}"
            + (f" of {len(data)} elements" if isinstance(data, (tuple, list)) else ""))
    raw, labels = np.asarray(data[0]), np.asarray(data[1])
    if len(raw) != len(labels):
        raise ValueError(f"CNACallback {name}: {len(raw)} images but {len(labels)} labels")
    width = int(labels.shape[1]) if labels.ndim == 2 and labels.shape[1] > 1 else None
    try:
        labels = class_indices(labels, n=len(raw))
    except ValueError as e:
        raise ValueError(f"CNACallback {name}: {e}") from None
    if len(raw) < 2:
        raise _too_few(name, len(raw))
    inputs = data[2] if len(data) == 3 else None
    if inputs is not None:
        leaves = keras.tree.flatten(inputs)
        sizes = sorted({len(a) for a in leaves})
        if sizes != [len(raw)]:
            raise ValueError(
                f"CNACallback {name}: {len(raw)} raw images but model inputs of "
                f"{', '.join(map(str, sizes))} samples; the third element must hold the model "
                "inputs of the same images, in the same order (e.g. preprocess(raw_images)), or "
                "drop it and pass preprocess=")
    return raw, labels, inputs, width


class CNACallback(keras.callbacks.Callback):
    """Measures CNA, CNA-A, CNA-M and the norm baselines while a Keras model trains.

    Before training (epoch 0) and every ``every`` epochs it computes CNA on train and test over
    a fixed, seeded subset of at most ``max_samples`` points (alpha from the raw images, computed
    once; beta from the model inputs). Every ``full_every`` epochs and at the end of training it
    computes the full set: CNA-A, margin, CNA-M, the baselines (initial weights captured at
    ``on_train_begin``), accuracy and loss on un-augmented data, ``gen_gap`` and ``loss_gap``.
    Values are written into ``logs`` under SPEC §6 names (``cna_test``, ``cna_margin``, ...), so
    `EarlyStopping`, `ModelCheckpoint`, `CSVLogger` and TensorBoard see them (list this callback
    before them), and into the active MLflow run (steps: "MLflow steps" below).

    Examples:
        >>> ds = cna_tf.data.load("digits")
        >>> cb = cna_tf.CNACallback((ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
        ...                         preprocess=ds.preprocess, value_range=ds.value_range)
        >>> model.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=20, callbacks=[cb,
        ...           keras.callbacks.EarlyStopping(monitor="cna_test", mode="max")])

    Args:
        train_data: ``(raw_images, labels)`` or ``(raw_images, labels, model_inputs)`` arrays,
            or a re-iterable batched stream of ``(raw_images, labels)`` (``tf.data.Dataset``,
            ``keras.utils.PyDataset``; see "Streams" below). Labels are integer class indices
            (n,) or exact one-hot rows (n, classes), as ``keras.utils.to_categorical`` gives
            (`cna_tf.measures.class_indices`).
        test_data: same, for the test set.
        preprocess: maps raw images to model inputs (not needed with a third element); applied
            per batch to a stream.
        value_range: (low, high) of the raw pixel values (uint8 defaults to (0, 255)).
        every: epochs between CNA measurements (1 = every epoch).
        full_every: epochs between full snapshots (SPEC §3 "network instances"); the last
            epoch is always one. 0 disables the periodic ones.
        max_samples: size of the seeded subset of each split used for the per-epoch CNA.
        full_max_samples: samples per split of a full snapshot (None: all). Arrays are
            measured chunk by chunk (`Samples.chunks`; ``preprocess`` applied per chunk, so it
            must act on each image alone, as for streams): with None the full set is the
            arrays given, never copied or preprocessed as a whole, and between snapshots only
            per-sample alpha, beta, margin, loss and correctness are kept.
        bins: as in `cna_tf.evaluate`.
        method: as in `cna_tf.evaluate`.
        window: as in `cna_tf.evaluate`.
        points: as in `cna_tf.evaluate`.
        percentile: as in `cna_tf.evaluate`.
        mode: as in `cna_tf.ActivationProbe`.
        reduce: as in `cna_tf.ActivationProbe`.
        include_output: as in `cna_tf.ActivationProbe`.
        baselines: also compute the norm-based baselines at full snapshots.
        batch_size: forward-pass batch size of the measurements.
        mlflow: None logs to the active MLflow run if there is one; True starts a run when none
            is active (and ends it after training); False never logs. A nested run is never
            opened.
        log_artifacts: at the end, log the (alpha, beta) curves (CSV) and the Fig-3 plot (PNG).
        seed: seed of the subsets.
        verbose: 1 prints one line per measurement.
        record_trajectory: at every measurement (epoch 0 included) store the model's flattened
            trainable weights (`flat_weights`, float32) in ``trajectory``, for the paper's Fig. 5
            (`cna_tf.plots.trajectory_pca`). Costs 4 bytes x parameters per measured epoch
            (the MLP on digits at width 0.1: ~0.1 MB); meant for small models.
        initial_weights: the run's initial weights W⁰ for ``bound_2018``, as the dict
            `cna_tf.baselines.capture_initial_weights` returns or the list
            ``model.get_weights()`` returns (matched by position and shape when training
            starts), e.g. for a run resumed from a backup; None captures them when a fit starts
            at epoch 0.

    Streams: a stream is read once to count its n samples and compute their alpha, and once
    more to keep the samples of the per-epoch subset (and of the full-snapshot subset when
    ``full_max_samples`` is set) in memory: the subsets are the arrays' subsets, the first
    ``max_samples`` of a seeded random order (`cna_tf.evaluation.subsample` of n with the same
    seeds), so a stream and its arrays give the same history. With ``full_max_samples=None``
    (default) each full snapshot reads the whole stream again, batch by batch; with
    ``max_samples=None`` so does every per-epoch measurement. A stream must yield the same
    samples in the same order on every pass (checked through alpha; no reshuffling).

    MLflow steps: every metric has one value per measured epoch, each at one step.

    * Without autologging, ``step`` = epochs completed: step 0 is the value before training and
      step ``e`` the value after ``e`` epochs (``history``'s keys).
    * With ``mlflow.keras.autolog()`` or ``mlflow.tensorflow.autolog()`` logging this fit (noticed
      by the callback itself, `cna_tf.tracking.keras_autolog_flavor`), autolog's convention:
      ``step`` = Keras' 0-based epoch index, the step of autolog's ``loss``, of TensorBoard's
      ``epoch_*`` and of CSVLogger's ``epoch``. A key written into ``logs`` is logged by
      autolog (so MLflow's ``cna_test`` at step ``e`` is ``History.history["cna_test"][e]``);
      the callback logs the rest at the same steps (a final snapshot after an early stop, the
      full snapshot's keys), and the values before training, which no ``logs`` holds, once as
      ``init_<key>`` (``init_cna_test``, ``init_cna_margin``, ...) at step 0.

    Reuse and resuming: a fit that starts at epoch 0 starts fresh (``history``, ``snapshots``,
    ``trajectory`` and captured initial weights are reset in ``on_train_begin``, as Keras' own
    callbacks reset their state), so a callback reused for a second ``fit`` records what a new
    one would. A fit that starts later (`keras.callbacks.BackupAndRestore` resuming in the same
    process, or ``initial_epoch``) continues the previous fit's record and initial weights.
    With `keras.callbacks.BackupAndRestore` a restarted ``fit`` begins at a later
    epoch; the initialization measurement (epoch 0) is then skipped, and ``initial_weights``
    should be the ones saved when the run first started. List `BackupAndRestore` *before* this
    callback: each epoch's backup is then written before its measurement is logged, and a fit
    resumed from a backup whose measurement never reached MLflow measures the restored weights
    first, so every epoch is logged exactly once.

    Attributes:
        history: ``{epoch: metrics}`` of every measurement (epoch 0 = initialization).
        snapshots: ``{epoch: {"train": correct, "test": correct}}`` per-sample correctness at
            every full snapshot (over the full-snapshot subsets; see ``snapshot_alpha``).
        snapshot_alpha: ``{"train": alpha, "test": alpha}`` of the samples behind ``snapshots``
            (same order), e.g. for the paper's Fig. 6 (`cna_tf.plots.error_by_alpha_quintile`).
        snapshot_samples: ``{"train": samples, "test": samples}`` measured at full snapshots
            (`Samples`; `StreamSamples` for a stream read in full).
        epoch_samples: ``{"train": samples, "test": samples}`` behind the per-epoch CNA.
        trajectory: ``{epoch: flat weight vector}`` when ``record_trajectory`` is on.
    """

    def __init__(self, train_data, test_data, preprocess: Optional[Callable] = None,
                 value_range=None, every: int = 1, full_every: int = 20,
                 max_samples: Optional[int] = 2000, full_max_samples: Optional[int] = None,
                 bins: int = 100, method: str = "pearson", window: int = 25, points: int = 100,
                 percentile: float = 5, mode: str = "pre", reduce: str = "sum",
                 include_output: bool = False, baselines: bool = True,
                 batch_size: Optional[int] = None, mlflow: Optional[bool] = None,
                 log_artifacts: bool = True, seed: int = 0, verbose: int = 0,
                 initial_weights: Optional[Dict[str, np.ndarray]] = None,
                 record_trajectory: bool = False):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be an integer >= 1 (epochs between CNA measurements; "
                             f"1 = every epoch), got {every}")
        if int(full_every) < 0:
            raise ValueError(f"full_every must be >= 0 (epochs between full snapshots; 0 "
                             f"disables the periodic ones), got {full_every}")
        for name, v in (("max_samples", max_samples), ("full_max_samples", full_max_samples)):
            if v is not None and int(v) < 2:
                raise ValueError(f"{name} must be an integer >= 2 (CNA correlates at least 2 "
                                 f"samples) or None for all samples, got {v}")
        if method not in ("pearson", "spearman", "kendall"):
            raise ValueError(f"method (the correlation of CNA) must be 'pearson', 'spearman' or "
                             f"'kendall', got {method!r}")
        self._label_width: Dict[str, Optional[int]] = {}
        self._sizes: Dict[str, int] = {}
        splits = {}
        for tag, name, data, offset in (("train", "train_data", train_data, 0),
                                        ("test", "test_data", test_data, 1)):
            if is_stream(data):
                splits[tag] = self._stream_subsets(data, name, preprocess, value_range, bins,
                                                   max_samples, full_max_samples, seed, offset)
                continue
            raw, y, inputs, self._label_width[name] = _unpack(data, name)
            try:  # fail now, not epochs into training
                check_images(raw, value_range)
            except ValueError as e:
                raise ValueError(f"CNACallback {name}: {e}") from None
            whole = Samples(raw, y, inputs, preprocess, value_range, bins)
            self._sizes[tag] = len(whole)
            splits[tag] = (whole.take(subsample(len(whole), max_samples, seed + offset)),
                           whole.take(subsample(len(whole), full_max_samples, seed + 2 + offset)))
        (self._sub_train, self._full_train), (self._sub_test, self._full_test) = \
            splits["train"], splits["test"]
        self.every, self.full_every = int(every), int(full_every)
        self.max_samples, self.full_max_samples = max_samples, full_max_samples
        self.bins, self.method, self.window, self.points = bins, method, window, points
        self.percentile = percentile
        self.probe_kwargs = dict(mode=mode, reduce=reduce, include_output=include_output)
        self.baselines = baselines
        self.batch_size = batch_size
        self.mlflow = mlflow
        self.log_artifacts = log_artifacts
        self.seed = seed
        self.verbose = verbose
        self.history: Dict[int, Dict[str, float]] = {}
        self.snapshots: Dict[int, Dict[str, np.ndarray]] = {}
        self.record_trajectory = bool(record_trajectory)
        self.trajectory: Dict[int, np.ndarray] = {}
        self.probe: Optional[ActivationProbe] = None
        self._given_initial_weights = initial_weights
        self.initial_weights = initial_weights
        self._last_details = None
        self._last_full_epoch: Optional[int] = None
        self._epoch = 0
        self._started = False
        self._reasons: List[str] = []
        self._previous: Optional[Dict[str, Any]] = None
        self._tracker: Optional[Tracker] = None

    def _stream_subsets(self, data, name, preprocess, value_range, bins, max_samples,
                        full_max_samples, seed, offset):
        """(per-epoch samples, full-snapshot samples) of a stream: see "Streams" above."""
        try:
            n, alpha = scan_stream(data, name, value_range=value_range, bins=bins)
        except ValueError as e:
            raise ValueError(f"CNACallback {e}") from None
        if n < 2:
            raise _too_few(name, n)
        self._label_width[name] = None
        self._sizes["train" if offset == 0 else "test"] = n
        streamed = StreamSamples(data, name, alpha, preprocess, value_range, bins)
        wanted = {"sub": None if max_samples is None else subsample(n, max_samples, seed + offset),
                  "full": None if full_max_samples is None
                  else subsample(n, full_max_samples, seed + 2 + offset)}
        kept = [i for i in wanted.values() if i is not None and len(i) < n]
        if not kept:
            return streamed, streamed
        union = np.unique(np.concatenate(kept))
        try:
            raw, y = gather_stream(data, name, union, n, alpha_values=alpha,
                                   value_range=value_range, bins=bins)
        except ValueError as e:
            raise ValueError(f"CNACallback {e}") from None
        whole = Samples(raw, y, None, preprocess, value_range, bins)
        whole._alpha = alpha[union]
        out = []
        for idx in (wanted["sub"], wanted["full"]):
            out.append(streamed if idx is None or len(idx) == n
                       else whole.take(np.searchsorted(union, idx)))
        return tuple(out)

    @property
    def snapshot_alpha(self) -> Dict[str, np.ndarray]:
        """alpha of the full-snapshot samples, aligned with ``snapshots[epoch][split]``."""
        return {"train": self._full_train.alpha, "test": self._full_test.alpha}

    @property
    def snapshot_samples(self) -> Dict[str, Any]:
        """The samples of each split measured at full snapshots (aligned with ``snapshots``):
        `Samples` (``raw``, ``labels``, ``inputs``, ``alpha``), or `StreamSamples` for a stream
        read in full."""
        return {"train": self._full_train, "test": self._full_test}

    @property
    def epoch_samples(self) -> Dict[str, Any]:
        """The samples of each split behind the per-epoch CNA (``cna_train``/``cna_test``)."""
        return {"train": self._sub_train, "test": self._sub_test}

    # -- measurements -------------------------------------------------------------------------
    def _light(self) -> Dict[str, float]:
        m: Dict[str, float] = {}
        for tag, split in (("train", self._sub_train), ("test", self._sub_test)):
            if isinstance(split, StreamSamples):
                b = split.measure(self.probe, self.batch_size)["beta"]
            else:
                b = np.concatenate([compute_beta(self.probe.layer_sums(x, self.batch_size))
                                    for _, _, x in split.chunks(self.batch_size)])
            m[f"cna_{tag}"] = cna(split.alpha, b, method=self.method)
            m[f"beta_{tag}_mean"] = float(np.mean(b))
        return m

    def _measure_full(self, split) -> Dict[str, np.ndarray]:
        if isinstance(split, StreamSamples):
            return split.measure(self.probe, self.batch_size)
        # chunk by chunk: per-sample alpha, beta, margin, loss, correctness are all that is kept
        return measure_chunks(self.probe, split.chunks(self.batch_size),
                              batch_size=self.batch_size)

    def _full(self) -> Dict[str, float]:
        details = {tag: self._measure_full(split)
                   for tag, split in (("train", self._full_train), ("test", self._full_test))}
        m = summarize(details["train"], details["test"], method=self.method, window=self.window,
                      points=self.points, percentile=self.percentile)
        for key in ("cna_train", "cna_test", "beta_train_mean", "beta_test_mean"):
            m.pop(key, None)  # the per-epoch series always come from the fixed subset
        if self.baselines:
            add_baselines(m, self.model, self.initial_weights, self._sizes["train"])
        self._last_details = details
        return m

    def _measure(self, epoch: int, full: bool, in_logs: bool = False) -> Dict[str, float]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CNAWarning)
            m = self._light()
            if self.record_trajectory:
                self.trajectory[epoch] = flat_weights(self.model)
            if full:
                m.update(self._full())
                self.snapshots[epoch] = {k: d["correct"] for k, d in self._last_details.items()}
                self._last_full_epoch = epoch
        messages = [str(w.message) for w in caught if issubclass(w.category, CNAWarning)]
        for w in caught:
            if not issubclass(w.category, CNAWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        tags = nan_reasons(self._tracker.epoch_names(m, epoch), messages, epoch)
        if tags:
            new = [msg for msg in messages if msg not in self._reasons]
            self._reasons.extend(new)
            for msg in new:
                warnings.warn(f"CNACallback (epoch {epoch}): {msg}", CNAWarning, stacklevel=2)
            self._tracker.set_tags(tags)
        self.history[epoch] = dict(m)
        self._tracker.log_epoch(m, epoch, in_logs=in_logs)
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in m.items()
                              if k in LIGHT_KEYS + ("cna_area", "cna_margin", "gen_gap"))
            print(f"CNACallback epoch {epoch}: {shown}")
        return m

    # -- Keras hooks --------------------------------------------------------------------------
    def _build_model(self) -> None:
        """Builds a subclassed model that fit() has not built yet (with TensorFlow, fit builds
        it at its first step, after on_train_begin) by calling it on one training input in
        inference mode, which creates its weights as that first step would."""
        if self.model.built:
            return
        split = next((s for s in (self._sub_train, self._full_train)
                      if isinstance(s, Samples)), None)
        if split is not None:
            x = split._model_inputs(0, 1)
        else:
            raw = np.asarray(next(iter(self._full_train.stream))[0])[:1]
            prep = self._full_train._preprocess
            x = prep(raw) if prep else raw
        self.model(x, training=False)

    def on_train_begin(self, logs=None):
        from cna_tf import baselines
        self._build_model()
        self.probe = ActivationProbe(self.model, **self.probe_kwargs)
        units = self.model.outputs[0].shape[-1] if getattr(self.model, "outputs", None) else None
        if units:  # the checks margins() would make at the first full snapshot, made now
            for name, tag in (("train_data", "train"), ("test_data", "test")):
                width = self._label_width.get(name)
                if width is not None and width != units:
                    raise ValueError(
                        f"CNACallback {name}: one-hot labels have {width} columns but the "
                        f"model has {units} outputs; pass one column per class "
                        f"(keras.utils.to_categorical(y, {units})) or integer class indices")
                for split in {id(s): s for s in (getattr(self, f"_sub_{tag}"),
                                                 getattr(self, f"_full_{tag}"))}.values():
                    if isinstance(split, StreamSamples):
                        continue  # checked batch by batch at the first measurement
                    try:
                        class_indices(split.labels, len(split.labels), units)
                    except ValueError as e:
                        raise ValueError(
                            f"CNACallback {name}: {e}. Pass labels that match the model's "
                            f"classifier ({units} classes).") from None
        try:
            given = baselines.initial_kernels(self.model, self._given_initial_weights)
        except ValueError as e:
            raise ValueError(f"CNACallback: {e}") from None
        # A fresh record, as Keras' own callbacks reset in on_train_begin; the previous fit's is
        # kept aside until _start knows whether this fit continues it (a later first epoch).
        self._previous = {"history": self.history, "snapshots": self.snapshots,
                          "trajectory": self.trajectory, "initial_weights": self.initial_weights,
                          "last_details": self._last_details,
                          "last_full_epoch": self._last_full_epoch,
                          "reasons": self._reasons} if self.history else None
        self.history, self.snapshots, self.trajectory = {}, {}, {}
        self._last_details, self._last_full_epoch, self._reasons = None, None, []
        self.initial_weights = given
        self._tracker = Tracker(self.mlflow, run_name=f"{self.model.name}_cna")
        self._tracker.open()
        self._epoch = 0
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        # The initialization snapshot waits for the first epoch so that every callback's
        # on_train_begin (e.g. BackupAndRestore restoring weights) has run.
        if not self._started:
            self._start(epoch)

    def _continue_previous(self, epoch: int) -> None:
        """A fit that starts at a later epoch continues the previous fit's record (same
        process: BackupAndRestore resuming, or ``initial_epoch``)."""
        prev, self._previous = self._previous, None
        if prev is None or epoch == 0:
            return
        self.history = {e: m for e, m in prev["history"].items() if e <= epoch}
        self.snapshots = {e: v for e, v in prev["snapshots"].items() if e <= epoch}
        self.trajectory = {e: v for e, v in prev["trajectory"].items() if e <= epoch}
        self._reasons = prev["reasons"]
        if prev["last_full_epoch"] is not None and prev["last_full_epoch"] <= epoch:
            self._last_details, self._last_full_epoch = (prev["last_details"],
                                                         prev["last_full_epoch"])
        if self._given_initial_weights is None:
            self.initial_weights = prev["initial_weights"]

    def _start(self, epoch: int) -> None:
        self._started = True
        self._epoch = epoch
        self._continue_previous(epoch)
        if self.baselines and self.initial_weights is None:
            from cna_tf import baselines
            self.initial_weights = baselines.capture_initial_weights(self.model)
        full = epoch == 0 or self._is_full(epoch)
        if not (full or epoch % self.every == 0):
            return
        if epoch == 0 and not self._tracker.active:
            self._measure(0, full=True)
        elif not self._tracker.epoch_logged("cna_train", epoch):
            # Epoch 0, or resumed from a backup written before this epoch's measurement was
            # logged (a kill in between): the restored weights are exactly that epoch's state.
            self._measure(epoch, full=full)
        elif full and not self._tracker.epoch_logged("cna_area", epoch):
            # Killed between this epoch's light measure and its full snapshot (a fit stopped
            # early, e.g. by a loss threshold, takes that snapshot in on_train_end): the full
            # part now, the light values already logged not again.
            self._tracker.mark_logged(LIGHT_KEYS, epoch)
            self._measure(epoch, full=True)
        elif full:  # logged before a kill (a run restarted in place): not again
            self._last_full_epoch = epoch
            if epoch == (self.params or {}).get("epochs"):
                self._full()  # the final curves artifact still needs the details

    def _is_full(self, done: int) -> bool:
        final = done == self.params.get("epochs") if self.params else False
        return final or (self.full_every > 0 and done % self.full_every == 0)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self._epoch = done
        full = self._is_full(done)
        if not full and done % self.every:
            return
        m = self._measure(done, full, in_logs=logs is not None)
        if logs is not None:
            logs.update(m)

    def on_train_end(self, logs=None):
        try:
            if not self._started and self.params and self.params.get("epochs"):
                # a fit resumed after its last epoch: make sure the final snapshot is logged
                self._start(int(self.params["epochs"]))
            if self._epoch and self._last_full_epoch != self._epoch:  # stopped early
                self._measure(self._epoch, full=True)
            if self.log_artifacts and self._tracker.active and self._last_details is not None:
                self._log_curves()
        finally:
            self._tracker.close()

    # -- artifacts ----------------------------------------------------------------------------
    def curves_csv(self) -> str:
        """The last full snapshot's per-sample (alpha, beta) and the smoothed curves, as CSV."""
        d = self._last_details
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["kind", "split", "alpha", "beta"])
        for tag in ("train", "test"):
            for a, b in zip(d[tag]["alpha"], d[tag]["beta"]):
                w.writerow(["point", tag, repr(float(a)), repr(float(b))])
        c = curves(d["train"]["alpha"], d["train"]["beta"], d["test"]["alpha"], d["test"]["beta"],
                   window=self.window, points=self.points)
        if c is not None:
            grid, b_tr, b_te = c
            for tag, bc in (("train", b_tr), ("test", b_te)):
                for a, b in zip(grid, bc):
                    w.writerow(["curve", tag, repr(float(a)), repr(float(b))])
        return out.getvalue()

    def _log_curves(self) -> None:
        from cna_tf import plots
        epoch = self._last_full_epoch
        self._tracker.log_text(self.curves_csv(), f"alpha_beta_epoch{epoch}.csv", "cna")
        d = self._last_details
        fig = plots.alpha_beta_curves(d["train"]["alpha"], d["train"]["beta"], d["test"]["alpha"],
                                      d["test"]["beta"], window=self.window, points=self.points,
                                      title=f"{self.model.name}, epoch {epoch}")
        try:
            self._tracker.log_figure(fig, f"alpha_beta_epoch{epoch}.png", "cna")
        finally:
            plots.close(fig)
