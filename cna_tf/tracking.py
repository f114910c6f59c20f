"""The one small place that talks to MLflow: metrics by step, tags, artifacts.

Everything goes through ``mlflow.MlflowClient`` against the active run, so logging works next to
``mlflow.tensorflow.autolog()`` / ``mlflow.keras.autolog()`` (no params are logged here, so no
duplicate-param conflicts), and a run is never started silently.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["TAG_PREFIX", "Tracker", "sanitize_artifact_name", "metric_histories", "metric_steps"]

#: Prefix of every MLflow tag the project's steps set (``cna_tf.role``, ``cna_tf.cell_key``, ...).
TAG_PREFIX = "cna_tf."

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call


def sanitize_artifact_name(name: str) -> str:
    """A file name with no path separators or odd characters (for artifacts)."""
    clean = _SAFE.sub("_", os.path.basename(str(name))).strip("._")
    return clean or "artifact"


class Tracker:
    """Logs to an MLflow run: the active one, or one this tracker started and will end.

    Args:
        mode: ``None`` logs only when a run is active; ``True`` also starts a run when none is
            active (ended again by `close`); ``False`` never logs.
        run_name: name of a run started by this tracker.
    """

    def __init__(self, mode: Optional[bool] = None, run_name: Optional[str] = None):
        self.mode = mode
        self.run_name = run_name
        self.run_id: Optional[str] = None
        self._started = False
        self._client = None

    def open(self) -> Optional[str]:
        """Attaches to the active run (or starts one when ``mode`` is True); returns its id."""
        if self.mode is False:
            return None
        import mlflow
        run = mlflow.active_run()
        if run is None and self.mode:
            run = mlflow.start_run(run_name=self.run_name)
            self._started = True
        if run is None:
            return None
        self.run_id = run.info.run_id
        self._client = mlflow.MlflowClient()
        return self.run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Logs finite and NaN values alike (MLflow stores NaN); skips non-numbers."""
        if not self.active:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(entries), _MAX_BATCH):
            self._retry(lambda: self._client.log_batch(self.run_id,
                                                       metrics=entries[i:i + _MAX_BATCH]))

    def logged_steps(self, key: str) -> set:
        """Steps at which ``key`` has been logged to the run (empty when not tracking)."""
        if not self.active:
            return set()
        steps, _ = self._retry(
            lambda: metric_histories(self.run_id, key, self._client, duplicates="all")[key])
        return set(steps.tolist())

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._retry(lambda: self._client.log_batch(self.run_id, tags=items))

    def log_artifact_file(self, path: str, artifact_path: Optional[str] = None) -> None:
        if self.active:
            self._retry(lambda: self._client.log_artifact(self.run_id, path, artifact_path))

    def log_text(self, text: str, name: str, artifact_path: Optional[str] = None) -> None:
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, sanitize_artifact_name(name))
            with open(path, "w") as f:
                f.write(text)
            self.log_artifact_file(path, artifact_path)

    def log_figure(self, figure, name: str, artifact_path: Optional[str] = None) -> None:
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, sanitize_artifact_name(name))
            figure.savefig(path, dpi=110, bbox_inches="tight")
            self.log_artifact_file(path, artifact_path)

    def close(self) -> None:
        """Ends the run if this tracker started it."""
        if self._started:
            import mlflow
            run = mlflow.active_run()
            if run is not None and run.info.run_id == self.run_id:
                mlflow.end_run()
            self._started = False

    @staticmethod
    def _retry(fn, attempts: int = 5):
        """Retries transient store errors (e.g. sqlite 'database is locked') with backoff."""
        for i in range(attempts):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - MLflow raises various types
                transient = any(s in str(e).lower() for s in ("locked", "timeout", "temporar",
                                                                "connection"))
                if not transient or i == attempts - 1:
                    raise
                time.sleep(0.2 * 2 ** i)


def nan_reasons(metrics: Mapping[str, float], messages: Iterable[str]) -> Dict[str, str]:
    """Tags explaining NaN metrics: ``cna_nan.<metric>`` -> the warnings seen while computing."""
    nan = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
    if not nan:
        return {}
    reason = "; ".join(dict.fromkeys(messages)) or "undefined for this data"
    return {f"cna_nan.{k}": reason for k in nan}


def metric_histories(run_id: str, keys: Union[str, Iterable[str]], client=None,
                     duplicates: str = "first") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Metric histories of an MLflow run: ``{key: (steps, values)}``, sorted by step.

    `CNACallback` logs at ``step`` = epochs completed (0 = initialization). MLflow's Keras
    autologging logs the ``logs`` dict (Keras' ``loss``, and the callback's keys it contains) at
    0-based epoch indices, i.e. step ``e`` holds the value after epoch ``e + 1``. A key logged
    by both therefore has two values at most steps: the default ``duplicates="first"`` keeps the
    one logged first, which for a key written by both is the callback's (it logs step ``e``
    one epoch before autolog does).

    Args:
        run_id: the MLflow run.
        keys: one metric name or several.
        client: an ``mlflow.MlflowClient`` (default: one for the current tracking URI).
        duplicates: for several values at one step keep the ``"first"`` or ``"last"`` logged
            (by timestamp, then store order), or ``"all"`` of them.

    Returns:
        dict mapping each key to ``(steps int64 (k,), values float64 (k,))``; a key the run
        never logged maps to two empty arrays.
    """
    if duplicates not in ("first", "last", "all"):
        raise ValueError(f"duplicates must be 'first', 'last' or 'all', got {duplicates!r}")
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    keys = [keys] if isinstance(keys, str) else list(keys)
    out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for key in keys:
        hist = list(client.get_metric_history(run_id, key))
        order = sorted(range(len(hist)), key=lambda i: (hist[i].step, hist[i].timestamp, i))
        rows = [(int(hist[i].step), float(hist[i].value)) for i in order]
        if duplicates != "all":
            kept: Dict[int, float] = {}
            for step, value in rows:
                if duplicates == "last" or step not in kept:
                    kept[step] = value
            rows = sorted(kept.items())
        steps = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([r[1] for r in rows], dtype=np.float64)
        out[key] = (steps, values)
    return out


def metric_steps(run_id: str, keys: Union[str, Iterable[str]], client=None,
                 duplicates: str = "last") -> Dict[str, Dict[int, float]]:
    """`metric_histories` as ``{key: {step: value}}``: one value per step, steps ascending.

    Args:
        run_id: the MLflow run.
        keys: one metric name or several.
        client: an ``mlflow.MlflowClient`` (default: one for the current tracking URI).
        duplicates: ``"last"`` (default: a resumed epoch logged twice keeps its later value) or
            ``"first"``.

    Returns:
        dict mapping each key to ``{step: value}`` (empty for a key the run never logged).
    """
    if duplicates not in ("first", "last"):
        raise ValueError(f"duplicates must be 'first' or 'last', got {duplicates!r}")
    return {key: dict(zip(steps.tolist(), values.tolist()))
            for key, (steps, values) in metric_histories(run_id, keys, client,
                                                         duplicates).items()}
