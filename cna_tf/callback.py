"""`CNACallback`: CNA and friends per epoch in `model.fit`, in `logs` and in MLflow."""
from __future__ import annotations

import csv
import io
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import keras
import numpy as np

from cna_tf.complexity import alpha as compute_alpha, check_images
from cna_tf.evaluation import add_baselines, measure_split, subsample, summarize
from cna_tf.measures import CNAWarning, _labels, beta as compute_beta, cna, curves
from cna_tf.probe import ActivationProbe
from cna_tf.tracking import Tracker, nan_reasons

__all__ = ["CNACallback", "flat_weights"]

LIGHT_KEYS = ("cna_train", "cna_test", "beta_train_mean", "beta_test_mean")


class _Split:
    """Raw images, labels and cached model inputs / alpha of one (sub)set."""

    def __init__(self, raw, labels, inputs, preprocess, value_range, bins):
        self.raw, self.labels = raw, labels
        self._inputs, self._preprocess = inputs, preprocess
        self._value_range, self._bins = value_range, bins
        self._alpha: Optional[np.ndarray] = None

    @property
    def inputs(self):
        if self._inputs is None:
            self._inputs = self._preprocess(self.raw) if self._preprocess else self.raw
        return self._inputs

    @property
    def alpha(self) -> np.ndarray:
        if self._alpha is None:
            self._alpha = compute_alpha(self.raw, bins=self._bins, value_range=self._value_range)
        return self._alpha

    def take(self, idx: np.ndarray) -> "_Split":
        inputs = None if self._inputs is None else _index(self._inputs, idx)
        sub = _Split(self.raw[idx], self.labels[idx], inputs, self._preprocess,
                     self._value_range, self._bins)
        if self._alpha is not None:
            sub._alpha = self._alpha[idx]
        return sub

    def __len__(self) -> int:
        return len(self.raw)


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


def _batched_layer_sums(probe: ActivationProbe, x, batch_size: Optional[int]) -> np.ndarray:
    """``probe.layer_sums(x)`` for in-memory arrays, one ``predict_on_batch`` per batch.

    The same compiled predict function on the same batches (identical values), without the
    input pipeline ``model.predict`` builds on every call (~0.1 s with TensorFlow: the light path
    runs every epoch, on 2 x 2,000 points, where that pipeline cost more than the forward pass).
    """
    n = len(keras.tree.flatten(x)[0])
    size = int(batch_size or 256)
    parts = [np.asarray(probe.sums_model.predict_on_batch(
        keras.tree.map_structure(lambda a: a[i:i + size], x))) for i in range(0, n, size)]
    return np.concatenate(parts)


def _unpack(data, name: str) -> Tuple[np.ndarray, np.ndarray, Any]:
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError(
            f"{name} must be (raw_images, labels) or (raw_images, labels, model_inputs); "
            f"got {type(data).__name__}. Alpha needs the raw images, so a tf.data.Dataset "
            "cannot be passed here: give the arrays and a preprocess function.")
    raw, labels = np.asarray(data[0]), np.asarray(data[1])
    if labels.ndim != 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise ValueError(f"{name}: labels must be integer class indices of shape (n,), got shape "
                         f"{labels.shape}; for one-hot labels pass labels.argmax(-1)")
    labels = labels.reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{name}: labels must be integer class indices, got "
                             f"{labels.dtype} values such as {labels[:3]}")
        labels = labels.astype(np.int64)
    if len(raw) != len(labels):
        raise ValueError(f"{name}: {len(raw)} images but {len(labels)} labels")
    if len(raw) < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {len(raw)}")
    return raw, labels, (data[2] if len(data) == 3 else None)


class CNACallback(keras.callbacks.Callback):
    """Measures CNA, CNA-A, CNA-M and the norm baselines while a Keras model trains.

    Before training (epoch 0) and every ``every`` epochs it computes CNA on train and test over
    a fixed, seeded subset of at most ``max_samples`` points (alpha from the raw images, computed
    once; beta from the model inputs). Every ``full_every`` epochs and at the end of training it
    computes the full set: CNA-A, margin, CNA-M, the baselines (initial weights captured at
    ``on_train_begin``), accuracy and loss on un-augmented data, ``gen_gap`` and ``loss_gap``.
    Values are written into ``logs`` under SPEC §6 names (``cna_test``, ``cna_margin``, ...), so
    `EarlyStopping`, `ModelCheckpoint`, `CSVLogger` and TensorBoard see them (list this callback
    before them), and into the active MLflow run with ``step`` = epochs completed (0 = init).

    Example:
        >>> ds = cna_tf.data.load("digits")
        >>> cb = cna_tf.CNACallback((ds.x_train, ds.y_train), (ds.x_test, ds.y_test),
        ...                         preprocess=ds.preprocess, value_range=ds.value_range)
        >>> model.fit(ds.preprocess(ds.x_train), ds.y_train, epochs=20, callbacks=[cb,
        ...           keras.callbacks.EarlyStopping(monitor="cna_test", mode="max")])

    Args:
        train_data: ``(raw_images, labels)`` or ``(raw_images, labels, model_inputs)``.
        test_data: same, for the test set.
        preprocess: maps raw images to model inputs (not needed with a third element).
        value_range: (low, high) of the raw pixel values (uint8 defaults to (0, 255)).
        every: epochs between CNA measurements (1 = every epoch).
        full_every: epochs between full snapshots (SPEC §3 "network instances"); the last
            epoch is always one. 0 disables the periodic ones.
        max_samples: size of the seeded subset of each split used for the per-epoch CNA.
        full_max_samples: samples per split of a full snapshot (None: all).
        bins, method, window, points, percentile: as in `cna_tf.evaluate`.
        mode, reduce, include_output: as in `cna_tf.ActivationProbe`.
        baselines: also compute the norm-based baselines at full snapshots.
        batch_size: forward-pass batch size of the measurements.
        mlflow: None logs to the active MLflow run if there is one; True starts a run when none
            is active (and ends it after training); False never logs. A nested run is never
            opened. With MLflow autologging on, autolog also records the ``logs`` keys at its own
            0-based steps.
        log_artifacts: at the end, log the (alpha, beta) curves (CSV) and the Fig-3 plot (PNG).
        seed: seed of the subsets.
        verbose: 1 prints one line per measurement.
        record_trajectory: at every measurement (epoch 0 included) store the model's flattened
            trainable weights (`flat_weights`, float32) in ``trajectory``, for the paper's Fig. 5
            (`cna_tf.plots.trajectory_pca`). Costs 4 bytes x parameters per measured epoch
            (the MLP on digits at width 0.1: ~0.1 MB); meant for small models.
        initial_weights: the run's initial weights W⁰ for ``bound_2018``
            (`cna_tf.baselines.capture_initial_weights`), for a run resumed from a backup;
            None captures them when training starts.

    Resuming: with `keras.callbacks.BackupAndRestore` a restarted ``fit`` begins at a later
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
            raise ValueError(f"every must be >= 1, got {every}")
        if int(full_every) < 0:
            raise ValueError(f"full_every must be >= 0 (0 disables), got {full_every}")
        for name, v in (("max_samples", max_samples), ("full_max_samples", full_max_samples)):
            if v is not None and int(v) < 2:
                raise ValueError(f"{name} must be >= 2 or None, got {v}")
        if method not in ("pearson", "spearman", "kendall"):
            raise ValueError(f"method must be 'pearson', 'spearman' or 'kendall', got {method!r}")
        raw_tr, y_tr, in_tr = _unpack(train_data, "train_data")
        raw_te, y_te, in_te = _unpack(test_data, "test_data")
        self.train = _Split(raw_tr, y_tr, in_tr, preprocess, value_range, bins)
        self.test = _Split(raw_te, y_te, in_te, preprocess, value_range, bins)
        for what, raw in (("train_data", raw_tr), ("test_data", raw_te)):
            try:  # fail now, not epochs into training
                check_images(raw, value_range)
            except ValueError as e:
                raise ValueError(f"CNACallback {what}: {e}") from None
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
        self.initial_weights = initial_weights
        self._last_details = None
        self._last_full_epoch: Optional[int] = None
        self._epoch = 0
        self._started = False
        self._reasons: List[str] = []
        self._tracker: Optional[Tracker] = None
        idx_tr = subsample(len(self.train), max_samples, seed)
        idx_te = subsample(len(self.test), max_samples, seed + 1)
        self._sub_train, self._sub_test = self.train.take(idx_tr), self.test.take(idx_te)
        self._full_train = self.train.take(subsample(len(self.train), full_max_samples, seed + 2))
        self._full_test = self.test.take(subsample(len(self.test), full_max_samples, seed + 3))

    @property
    def snapshot_alpha(self) -> Dict[str, np.ndarray]:
        """alpha of the full-snapshot samples, aligned with ``snapshots[epoch][split]``."""
        return {"train": self._full_train.alpha, "test": self._full_test.alpha}

    # -- measurements -------------------------------------------------------------------------
    def _light(self) -> Dict[str, float]:
        m: Dict[str, float] = {}
        for tag, split in (("train", self._sub_train), ("test", self._sub_test)):
            sums = _batched_layer_sums(self.probe, split.inputs, self.batch_size)
            b = compute_beta(sums)
            m[f"cna_{tag}"] = cna(split.alpha, b, method=self.method)
            m[f"beta_{tag}_mean"] = float(np.mean(b))
        return m

    def _full(self) -> Dict[str, float]:
        details = {tag: measure_split(self.probe, split.raw, split.labels, inputs=split.inputs,
                                      alpha_values=split.alpha, batch_size=self.batch_size)
                   for tag, split in (("train", self._full_train), ("test", self._full_test))}
        m = summarize(details["train"], details["test"], method=self.method, window=self.window,
                      points=self.points, percentile=self.percentile)
        for key in ("cna_train", "cna_test", "beta_train_mean", "beta_test_mean"):
            m.pop(key, None)  # the per-epoch series always come from the fixed subset
        if self.baselines:
            add_baselines(m, self.model, self.initial_weights, len(self.train))
        self._last_details = details
        return m

    def _measure(self, epoch: int, full: bool) -> Dict[str, float]:
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
        tags = nan_reasons(m, messages)
        if tags:
            new = [msg for msg in messages if msg not in self._reasons]
            self._reasons.extend(new)
            for msg in new:
                warnings.warn(f"CNACallback (epoch {epoch}): {msg}", CNAWarning, stacklevel=2)
            self._tracker.set_tags(tags)
        self.history[epoch] = dict(m)
        self._tracker.log_metrics(m, step=epoch)
        if self.verbose:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in m.items()
                              if k in LIGHT_KEYS + ("cna_area", "cna_margin", "gen_gap"))
            print(f"CNACallback epoch {epoch}: {shown}")
        return m

    # -- Keras hooks --------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.probe = ActivationProbe(self.model, **self.probe_kwargs)
        units = self.model.outputs[0].shape[-1] if getattr(self.model, "outputs", None) else None
        for name, split in (("train_data", self.train), ("test_data", self.test)):
            if units:
                try:  # the check margins() would make at the first full snapshot, made now
                    _labels(split.labels, len(split.labels), units)
                except ValueError as e:
                    raise ValueError(
                        f"CNACallback {name}: {e}. Pass integer class indices (not one-hot), "
                        "matching the model's classifier.") from None
        self._tracker = Tracker(self.mlflow, run_name=f"{self.model.name}_cna")
        self._tracker.open()
        self._epoch = 0
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        # The initialization snapshot waits for the first epoch so that every callback's
        # on_train_begin (e.g. BackupAndRestore restoring weights) has run.
        if not self._started:
            self._start(epoch)

    def _start(self, epoch: int) -> None:
        self._started = True
        self._epoch = epoch
        if self.baselines and self.initial_weights is None:
            from cna_tf import baselines
            self.initial_weights = baselines.capture_initial_weights(self.model)
        full = epoch == 0 or self._is_full(epoch)
        if not (full or epoch % self.every == 0):
            return
        if epoch == 0 and not self._tracker.active:
            self._measure(0, full=True)
        elif epoch not in self._tracker.logged_steps("cna_train"):
            # Epoch 0, or resumed from a backup written before this epoch's measurement was
            # logged (a kill in between): the restored weights are exactly that epoch's state.
            self._measure(epoch, full=full)
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
        m = self._measure(done, full)
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
