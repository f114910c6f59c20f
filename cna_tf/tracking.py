"""The one small place that talks to MLflow: metrics by step, tags, artifacts.

Everything goes through ``mlflow.MlflowClient`` against the active run, so logging works next to
``mlflow.tensorflow.autolog()`` / ``mlflow.keras.autolog()`` (no params are logged here, so no
duplicate-param conflicts), and a run is never started silently.

Step conventions of the per-epoch values (`Tracker.log_epoch`), chosen per fit when a run opens:

* without Keras autologging, ``step`` = epochs completed: 0 is the value before training, step
  ``e`` the value after ``e`` epochs;
* while MLflow's Keras autologging logs the fit's epoch ``logs`` (`keras_autolog_flavor`), its
  convention: ``step`` = Keras' 0-based epoch index, step ``e`` the value after epoch ``e`` (the
  step of autolog's ``loss``, of TensorBoard's ``epoch_*`` and CSVLogger's ``epoch``). A key
  written into ``logs`` is then logged by autolog alone, and the value before training, which
  no ``logs`` holds, goes to ``init_<key>`` (`INIT_PREFIX`) at step 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TAG_PREFIX", "INIT_PREFIX", "Tracker", "keras_autolog_flavor", "sanitize_artifact_name",
           "metric_histories", "epoch_histories", "metric_steps",
           "RUNS_VIEW", "runs_view_state", "save_runs_view", "ui_address", "runs_url", "runs_link",
           "browse_line"]

#: Prefix of every MLflow tag the project's steps set (``cna_tf.role``, ``cna_tf.cell_key``, ...).
TAG_PREFIX = "cna_tf."

#: Prefix of a metric's before-training value under Keras autologging (``init_cna_test``), as
#: Keras prefixes ``val_`` to a metric measured on the validation data.
INIT_PREFIX = "init_"

# The autologging integrations that patch ``keras.Model.fit`` and log its epoch ``logs``.
_KERAS_AUTOLOG_FLAVORS = ("keras", "tensorflow")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call


def sanitize_artifact_name(name: str) -> str:
    """A file name with no path separators or odd characters (for artifacts)."""
    clean = _SAFE.sub("_", os.path.basename(str(name))).strip("._")
    return clean or "artifact"


def keras_autolog_flavor() -> Optional[str]:
    """The MLflow autologging flavor (``"keras"`` or ``"tensorflow"``) that logs the epoch ``logs``
    of the ``fit`` in progress, or None; call it from inside ``fit`` (a callback's hook).

    An integration counts when it is enabled with ``log_every_epoch`` (MLflow's public
    ``autologging_is_disabled`` / ``get_autologging_config``) and its patched ``fit`` is running
    with autologging on: MLflow records that only in its autologging session, which is absent when
    it skips a fit (``exclusive=True`` inside a user-created run). Without that record (another
    MLflow version) an enabled, non-exclusive integration counts.
    """
    try:
        from mlflow.utils import autologging_utils as au
    except ImportError:  # pragma: no cover - mlflow is a hard dependency
        return None
    enabled = [f for f in _KERAS_AUTOLOG_FLAVORS
               if not au.autologging_is_disabled(f)
               and au.get_autologging_config(f, "log_every_epoch", True)]
    if not enabled:
        return None
    try:
        from mlflow.utils.autologging_utils.safety import _AutologgingSessionManager
    except ImportError:  # pragma: no cover - depends on MLflow's internals
        return next((f for f in enabled if not au.get_autologging_config(f, "exclusive", False)),
                    None)
    session = _AutologgingSessionManager.active_session()
    flavor = getattr(session, "integration", None)
    return flavor if flavor in enabled else None


class Tracker:
    """Logs to an MLflow run: the active one, or one this tracker started and will end.

    Per-epoch values go through `log_epoch`, at the step convention of the module docstring;
    ``autolog`` is the Keras autologging flavor that logs the fit's ``logs`` (found by `open`).

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
        self.autolog: Optional[str] = None
        self._epoch_keys: Dict[int, set] = {}

    def open(self) -> Optional[str]:
        """Attaches to the active run (or starts one when ``mode`` is True); returns its id.

        Called from inside ``fit``, it also notes whether Keras autologging logs the fit's
        ``logs`` (`keras_autolog_flavor`), which sets the step convention of `log_epoch`.
        """
        self.autolog, self._epoch_keys = None, {}
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
        self.autolog = keras_autolog_flavor()
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

    def epoch_step(self, done: int) -> int:
        """The step of the values measured after ``done`` epochs (0 = before training)."""
        return max(int(done) - 1, 0) if self.autolog else int(done)

    def epoch_names(self, metrics: Mapping[str, float], done: int) -> Dict[str, float]:
        """``metrics`` under the names they are logged with after ``done`` epochs
        (``init_<key>`` before training under autologging, else unchanged)."""
        prefix = INIT_PREFIX if self.autolog and int(done) == 0 else ""
        return {prefix + k: v for k, v in metrics.items()}

    def log_epoch(self, metrics: Mapping[str, float], done: int, in_logs: bool = False) -> None:
        """Logs the values measured after ``done`` epochs (0 = before training) at the step
        convention of the module docstring, each key once per step of this fit.

        Args:
            metrics: the values.
            done: epochs completed.
            in_logs: the values are also written into this epoch's Keras ``logs``, which
                autologging (when on) logs itself.
        """
        names = self.epoch_names(metrics, done)
        step = self.epoch_step(done)
        seen = self._epoch_keys.setdefault(step, set())
        new = {k: v for k, v in names.items() if k not in seen}
        seen.update(new)
        if not (in_logs and self.autolog):
            self.log_metrics(new, step=step)

    def mark_logged(self, keys, done: int) -> None:
        """Counts ``keys`` as logged after ``done`` epochs in this fit: `log_epoch` skips them
        (values a killed process logged, measured again on its resume)."""
        step = self.epoch_step(done)
        self._epoch_keys.setdefault(step, set()).update(
            self.epoch_names(dict.fromkeys(keys, 0.0), done))

    def epoch_logged(self, key: str, done: int) -> bool:
        """Whether the run holds ``key``'s value after ``done`` epochs (by anyone's logging)."""
        name = next(iter(self.epoch_names({key: 0.0}, done)))
        return self.epoch_step(done) in self.logged_steps(name)

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


def nan_reasons(metrics: Mapping[str, float], messages: Iterable[str],
                epoch: Optional[int] = None) -> Dict[str, str]:
    """Tags explaining NaN metrics: ``cna_nan.<metric>`` -> the warnings seen while computing,
    after ``at epoch N:`` when ``epoch`` is given (a run's tag outlives the snapshot it
    describes: a metric NaN at initialization is often finite at the end)."""
    nan = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
    if not nan:
        return {}
    reason = "; ".join(dict.fromkeys(messages)) or "undefined for this data"
    if epoch is not None:
        reason = f"at epoch {epoch}: {reason}"
    return {f"cna_nan.{k}": reason for k in nan}


def metric_histories(run_id: str, keys: Union[str, Iterable[str]], client=None,
                     duplicates: str = "first") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Metric histories of an MLflow run: ``{key: (steps, values)}``, sorted by step.

    `CNACallback` logs one value per step (see the module docstring for its two step
    conventions). Several values at one step come from a run logged twice at an epoch (a
    resumed run, or another logger beside the callback): the default ``duplicates="first"``
    keeps the one logged first.

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


def epoch_histories(run_id: str, keys: Union[str, Iterable[str]], client=None
                    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """`metric_histories` by epochs completed (0 = before training), whichever step convention
    of the module docstring the run was logged at.

    A run logged beside Keras autologging (it has ``init_<key>`` metrics beside ``<key>``) has
    its steps shifted by one and each key's ``init_<key>`` value put at epoch 0; any other run's
    steps are epochs completed already.

    Returns:
        dict mapping each key to ``(epochs completed int64 (k,), values float64 (k,))``.
    """
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    keys = [keys] if isinstance(keys, str) else list(keys)
    logged = client.get_run(run_id).data.metrics
    autolog = any(k.startswith(INIT_PREFIX) and k[len(INIT_PREFIX):] in logged for k in logged)
    if not autolog:
        return metric_histories(run_id, keys, client)
    h = metric_histories(run_id, keys + [INIT_PREFIX + k for k in keys], client)
    return {k: (np.concatenate([h[INIT_PREFIX + k][0], h[k][0] + 1]),
                np.concatenate([h[INIT_PREFIX + k][1], h[k][1]])) for k in keys}


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


# -- the MLflow UI: a link that lands on an experiment's runs ------------------------------------

#: MLflow 3.17's UI opens an experiment in its GenAI layout (an Overview of traces, latency and
#: token usage) unless the URL asks for its "Model training" layout, where the runs table is.
ML_LAYOUT = "workflowType=machine_learning"
#: The id of the saved view `save_runs_view` gives an experiment. MLflow 3.17's UI keeps the views
#: of its "Views" menu in experiment tags ``mlflow.sharedViewState.<id>`` (an envelope
#: ``{"name", "createdAt", "updatedAt", "state"}`` around the runs page's state as JSON) and opens
#: one from ``#/experiments/<id>/runs?viewStateShareKey=<view id>``.
RUNS_VIEW = "cna_tf"
RUNS_VIEW_NAME = "cna_tf: measures vs the gap"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: the view's columns: the gap, the paper's measures, a norm baseline, accuracy, and the
#: parameters a run's name does not spell out
RUNS_VIEW_METRICS = ("gen_gap", "cna_margin", "cna_area", "margin", "l2", "test_acc")
RUNS_VIEW_PARAMS = ("dataset", "width", "label_shuffle")
#: the view's chart (in "Chart view"): CNA-M against the gap, one point per run
RUNS_VIEW_SCATTER = ("cna_margin", "gen_gap")
#: where `mlflow ui` (and `make ui`) serves by default
UI_HOST, UI_PORT = "127.0.0.1", 5000


def runs_view_state() -> Dict:
    """The runs page state of the `RUNS_VIEW` view, as MLflow 3.17's UI saves one.

    The runs are grouped by the ``arch`` parameter: every grid cell is listed without unfolding
    its grid run, each architecture's group row shows its averages, and the grid and compare
    runs (no ``arch``) sit under "Additional runs", unfolded. The columns are
    `RUNS_VIEW_METRICS` (a run's latest value: its final snapshot) and `RUNS_VIEW_PARAMS`. Every
    run counts in the charts (the UI's default is the first 10), each with its own point
    (not its group's average), and "Chart view" opens on a scatter plot of `RUNS_VIEW_SCATTER`.
    The search, sort and time filter are the UI's defaults (the UI fills in what a view omits).
    """
    x, y = RUNS_VIEW_SCATTER
    section = f"{RUNS_VIEW}-section"
    return {
        "selectedColumns": ([f"metrics.`{m}`" for m in RUNS_VIEW_METRICS]
                            + [f"params.`{p}`" for p in RUNS_VIEW_PARAMS]),
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "param", "groupByData": "arch"}]},
        # the group of runs without an arch ("Additional runs") is folded unless named here
        "groupsExpanded": {"param.arch": True},
        "runsHiddenMode": "SHOW_ALL",
        "useGroupedValuesInCharts": False,
        "compareRunCharts": [{
            "uuid": f"{RUNS_VIEW}-{x}-vs-{y}", "type": "SCATTER", "runsCountToCompare": 100,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "xaxis": {"key": x, "type": "METRIC"}, "yaxis": {"key": y, "type": "METRIC"}}],
        "compareRunSections": [{"uuid": section, "name": RUNS_VIEW_NAME, "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
    }


def save_runs_view(experiment_id: str, client=None) -> Optional[str]:
    """Gives an experiment the `RUNS_VIEW` saved view unless it has one by that id.

    A view already there is kept as it is (a user may have changed and saved it in the UI).

    Returns:
        `RUNS_VIEW`, or None (with a note on stderr) when the store refuses the tag, e.g. no
        permission on a tracking server: a link then opens the runs without the view.
    """
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    key = VIEW_TAG_PREFIX + RUNS_VIEW
    try:
        if key not in client.get_experiment(experiment_id).tags:
            now = int(time.time() * 1000)
            client.set_experiment_tag(experiment_id, key, json.dumps({
                "name": RUNS_VIEW_NAME, "createdAt": now, "updatedAt": now,
                "state": json.dumps(runs_view_state())}))
    except Exception as e:  # noqa: BLE001 - the link works without the view
        print(f"note: view {RUNS_VIEW!r} not saved to experiment {experiment_id} "
              f"({type(e).__name__}: {e}); the link opens the runs without it", file=sys.stderr)
        return None
    return RUNS_VIEW


def ui_address(host: Optional[str] = None, port: Optional[int] = None,
               tracking_uri: Optional[str] = None) -> str:
    """Where the MLflow UI over a tracking store is.

    A tracking server (an ``http(s)://`` URI) serves its own UI: its URL, without any
    credentials, unless ``host`` or ``port`` is given. For any other store it is where
    ``mlflow ui --host HOST --port PORT`` serves: ``http://127.0.0.1:5000`` by default, what
    `make ui` serves. A host that binds every interface (``0.0.0.0``, ``::``) is opened as
    127.0.0.1; an IPv6 address gets its brackets.

    Args:
        host, port: of ``mlflow ui`` / ``mlflow server``.
        tracking_uri: the store (default: MLflow's current tracking URI).
    """
    if tracking_uri is None:
        import mlflow
        tracking_uri = mlflow.get_tracking_uri()
    if host is None and port is None and re.match(r"https?://", tracking_uri or "", re.I):
        from urllib.parse import urlsplit, urlunsplit
        parts = urlsplit(tracking_uri)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    host = host or UI_HOST
    if host in ("0.0.0.0", "::", "[::]"):
        host = UI_HOST
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port or UI_PORT}"


def runs_url(experiment_id: Union[str, int], host: str = UI_HOST, port: int = UI_PORT,
             view: Optional[str] = None, base: Optional[str] = None) -> str:
    """The link that opens an experiment's runs table in MLflow 3.17's UI.

    ``#/experiments/<id>/runs?workflowType=machine_learning``: the "Model training" layout's
    runs table, not the GenAI overview the UI opens an experiment on by default; with ``view``
    (a saved view's id, see `save_runs_view`), that view's columns, grouping and charts.

    Args:
        experiment_id: the experiment's id.
        host, port: where ``mlflow ui`` serves (see `ui_address`).
        view: a saved view of the experiment to open, or None.
        base: the UI's address, instead of ``host`` and ``port`` (e.g. a tracking server's).
    """
    from urllib.parse import quote

    base = (base or ui_address(host, port, tracking_uri="")).rstrip("/")
    query = ML_LAYOUT + (f"&viewStateShareKey={quote(view, safe='')}" if view else "")
    return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs?{query}"


def runs_link(experiment_id: str, client=None, host: Optional[str] = None,
              port: Optional[int] = None, view: bool = True) -> str:
    """`runs_url` in the UI over ``client``'s store (`ui_address`), with the experiment's
    `RUNS_VIEW` view, saved first when missing (`save_runs_view`; ``view=False``: none)."""
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    key = save_runs_view(experiment_id, client) if view else None
    return runs_url(experiment_id, view=key, base=ui_address(host, port, client.tracking_uri))


def browse_line(experiment_id: str, client=None) -> str:
    """The line that tells a user where to look, with `runs_link`: ``Browse the runs: make ui,
    then open <link>`` for a local store (`make ui` serves it), ``Browse the runs: <link>`` on a
    tracking server."""
    if client is None:
        import mlflow
        client = mlflow.MlflowClient()
    served = re.match(r"https?://", client.tracking_uri or "", re.I)
    link = runs_link(experiment_id, client)
    return f"Browse the runs: {link}" if served else f"Browse the runs: make ui, then open {link}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: ``python -m cna_tf.tracking url --experiment NAME [--host] [--port]``.

    Prints the link that opens the experiment's runs in the MLflow UI (`runs_link`, which saves
    the experiment's `RUNS_VIEW` view when missing); `make demo` and `make ui` print it. Exits 1
    when the store has no such (active) experiment.
    """
    parser = argparse.ArgumentParser(
        prog="python -m cna_tf.tracking",
        description="The link that opens an experiment's runs in the MLflow UI (the 'Model "
                    "training' layout, with the cna_tf view) instead of MLflow 3.17's GenAI "
                    "overview.")
    commands = parser.add_subparsers(dest="command", required=True)
    url = commands.add_parser("url", help="print the link to an experiment's runs")
    url.add_argument("--experiment", default="cna_tf-demo", help="experiment name")
    url.add_argument("--host", default=None,
                     help=f"where mlflow ui serves (default {UI_HOST}, or the tracking server)")
    url.add_argument("--port", type=int, default=None,
                     help=f"where mlflow ui serves (default {UI_PORT}, or the tracking server)")
    url.add_argument("--tracking-uri", default=None,
                     help="the store (default: MLFLOW_TRACKING_URI)")
    url.add_argument("--no-view", action="store_true",
                     help=f"neither save nor open the {RUNS_VIEW!r} view")
    args = parser.parse_args(argv)
    import mlflow

    client = mlflow.MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None or exp.lifecycle_stage != "active":
        print(f"no experiment {args.experiment!r} in {client.tracking_uri}: run its grid first "
              "(make demo for cna_tf-demo)", file=sys.stderr)
        return 1
    print(runs_link(exp.experiment_id, client, args.host, args.port, view=not args.no_view))
    return 0


if __name__ == "__main__":
    sys.exit(main())
