"""Concurrency against real stores: the grid with 2 workers on PostgreSQL behind `mlflow server`,
and on the default sqlite file; sqlite lock errors and `Tracker`'s retries.

The server tests start a throwaway PostgreSQL cluster (``initdb`` + ``postgres`` on 127.0.0.1, as
the ``postgres`` account when run as root) and ``mlflow server`` on it, then run a 4-cell grid
(MLP on digits, 2 epochs, a snapshot each epoch) with 2 workers, and check that nothing was lost:
every child run FINISHED once, every metric at every step exactly once, every artifact there.
"""
import time
import warnings

import pytest

from _servers import (assert_grid_complete, grid_record, lock_errors, mlflow_server, postgres,
                      run_tiny_grid)


def _report(name, proc, rec, seconds):
    locks = lock_errors(proc.stdout, proc.stderr, *rec["logs"].values())
    print(f"\n{name}: grid of 4 cells with 2 workers in {seconds:.0f}s; "
          f"sqlite lock errors seen: {locks}")
    if locks:
        warnings.warn(f"{name}: {locks} 'database is locked' error(s) in the grid's output "
                      "(retried; nothing was lost if the test passed)")
    return locks


@pytest.fixture(scope="module")
def sqlite_grid(tmp_path_factory):
    import mlflow

    d = tmp_path_factory.mktemp("sqlite_grid")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    t0 = time.time()
    proc = run_tiny_grid(uri, d)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rec = grid_record(mlflow.MlflowClient(uri))
    return proc, rec, seconds


@pytest.fixture(scope="module")
def postgres_grid(tmp_path_factory):
    import mlflow

    d = tmp_path_factory.mktemp("postgres_grid")
    t0 = time.time()
    with postgres() as db, mlflow_server(db, d / "artifacts") as url:
        started = time.time() - t0
        proc = run_tiny_grid(url, d)
        seconds = time.time() - t0 - started
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        rec = grid_record(mlflow.MlflowClient(url))
    print(f"\nPostgreSQL + mlflow server started in {started:.0f}s")
    return proc, rec, seconds, d / "artifacts"


@pytest.mark.slow
def test_grid_on_postgres_behind_mlflow_server_loses_nothing(postgres_grid):
    proc, rec, seconds, artifacts = postgres_grid
    assert "[4/4]" in proc.stdout and "4 finished, 0 failed" in proc.stdout, proc.stdout
    assert_grid_complete(rec)
    assert _report("postgres", proc, rec, seconds) == 0  # no sqlite anywhere on this path
    # the artifacts went through the server's proxy into --artifacts-destination
    for key, run in rec["children"].items():
        uri = run.info.artifact_uri  # mlflow-artifacts:/<experiment>/<run>/artifacts
        assert uri.startswith("mlflow-artifacts:"), uri
        root = artifacts / uri.split(":", 1)[1].lstrip("/")
        for path in rec["artifacts"][key]:
            assert (root / path).is_file() and (root / path).stat().st_size > 0, root / path


@pytest.mark.slow
def test_grid_on_sqlite_with_two_workers_loses_nothing(sqlite_grid):
    proc, rec, seconds = sqlite_grid
    assert "[4/4]" in proc.stdout and "4 finished, 0 failed" in proc.stdout, proc.stdout
    assert_grid_complete(rec)
    _report("sqlite", proc, rec, seconds)


@pytest.mark.slow
def test_both_stores_hold_the_same_record(sqlite_grid, postgres_grid):
    """Same cells, same metric names at the same steps, same artifact files, on both stores."""
    a, b = sqlite_grid[1], postgres_grid[1]
    assert set(a["children"]) == set(b["children"])
    for key in a["children"]:
        assert a["steps"][key] == b["steps"][key], key
        assert a["artifacts"][key] == b["artifacts"][key], key
        assert a["children"][key].data.params == b["children"][key].data.params, key


# -- sqlite locks and Tracker._retry -------------------------------------------------------------

class _ShortBusyTimeout:
    """``sqlalchemy.sql`` as MLflow's session factory sees it, with a 50 ms sqlite busy timeout
    instead of MLflow's 20 s, so that a held lock fails fast with 'database is locked'."""

    def __init__(self, sql):
        self._sql = sql

    def text(self, statement, *args, **kwargs):
        return self._sql.text(statement.replace("busy_timeout = 20000", "busy_timeout = 50"),
                              *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._sql, name)


def test_tracker_retries_a_real_sqlite_lock(tmp_path, monkeypatch):
    """Another connection holds the sqlite file locked for 1 s: the first writes fail with
    'database is locked', Tracker retries with backoff, and the value is stored once."""
    import sqlite3
    import threading

    import mlflow
    from mlflow.store.db import utils as db_utils

    from cna_tf.tracking import Tracker

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(db_utils, "sql", _ShortBusyTimeout(db_utils.sql))
    mlflow.set_tracking_uri(uri)
    errors = []
    try:
        with mlflow.start_run() as run:
            tracker = Tracker()
            assert tracker.open() == run.info.run_id
            real = tracker._client.log_batch

            def spy(*args, **kwargs):
                try:
                    return real(*args, **kwargs)
                except Exception as e:
                    errors.append(str(e))
                    raise

            monkeypatch.setattr(tracker._client, "log_batch", spy)
            holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN EXCLUSIVE")
            release = threading.Timer(1.0, holder.execute, ["COMMIT"])
            release.start()
            t0 = time.time()
            tracker.log_metrics({"cna_test": 0.5, "cna_train": 0.25}, step=3)
            waited = time.time() - t0
            release.join()
            holder.close()
        client = mlflow.MlflowClient(uri)
        for name, value in (("cna_test", 0.5), ("cna_train", 0.25)):
            got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            assert got == [(3, value)], (name, got)
    finally:
        mlflow.set_tracking_uri(None)
    assert errors, "the lock never made a write fail: the test did not test the retry"
    assert all("database is locked" in e for e in errors), errors
    assert waited >= 0.9


def test_tracker_retry_gives_up_after_5_attempts_and_never_retries_other_errors(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from cna_tf import tracking

    sleeps = []
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    calls = []

    def locked():
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked",
                              TEMPORARILY_UNAVAILABLE)

    with pytest.raises(MlflowException, match="database is locked"):
        tracking.Tracker._retry(locked)
    assert len(calls) == 5 and sleeps == [0.2, 0.4, 0.8, 1.6]

    calls.clear()

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked",
                                  TEMPORARILY_UNAVAILABLE)
        return "ok"

    assert tracking.Tracker._retry(flaky) == "ok" and len(calls) == 3

    calls.clear()

    def invalid():
        calls.append(1)
        raise MlflowException("Invalid metric name", INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException, match="Invalid metric name"):
        tracking.Tracker._retry(invalid)
    assert len(calls) == 1
