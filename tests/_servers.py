"""Throwaway servers for the end-to-end tests: PostgreSQL, an MLflow tracking server, Chromium.

Each one binds 127.0.0.1 on a free port, lives in a temporary directory and is stopped by its
own process id (or process group, which this module created) when its ``with`` block ends. A
missing server binary skips the test with the command that installs it (`.ci/run` does); under
CI (``CI=true``) it fails the test instead (`missing`), so a CI run cannot go green with them
skipped.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, NoReturn, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
MLFLOW = str(Path(sys.executable).parent / "mlflow")
CHROMIUM = os.environ.get("CNA_TF_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CNA_TF_CHROMEDRIVER", "/usr/bin/chromedriver")

# The tiny grid of the concurrency tests: 4 MLP cells on digits, 2 epochs, a snapshot each epoch.
TINY_GRID = (
    "name: tiny4\n"
    "defaults: {dataset: digits, epochs: 2, snapshot_every: 1, batch_size: 64,"
    " n_train: 300, n_test: 150, max_samples: 200, suite: cheap}\n"
    "cells:\n"
    "  - {arch: mlp, width: 0.05, depth: 2, seed: [0, 1, 2, 3]}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, group: bool = False,
          timeout: float = 30) -> None:
    """Stops a process this module started (and its group, when it leads one)."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(10)


# -- missing programs: skip here, fail under CI ---------------------------------------------------

def under_ci(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this is a CI run: ``CI`` set to true/1/yes/on (GitHub Actions, GitLab CI and
    others set ``CI=true``; `.ci/run` exports it)."""
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def missing(what: str, env: Optional[Mapping[str, str]] = None) -> NoReturn:
    """Ends a test that needs something absent: a skip naming ``what`` (and how to install it)
    on a developer's machine, a failure under CI, where `.ci/run` must have installed it."""
    if under_ci(env):
        pytest.fail(f"CI=true and {what}; .ci/run installs it, so this CI run is broken",
                    pytrace=False)
    pytest.skip(what)


def require_module(name: str, hint: str, env: Optional[Mapping[str, str]] = None):
    """``pytest.importorskip`` that fails instead under CI (see `missing`)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing(f"Python module {name} cannot be imported ({e}): {hint}", env)


def chromium_missing(chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> Optional[str]:
    """Why the UI test cannot run (None when Chromium and chromedriver are there)."""
    if os.path.exists(chromium) and os.path.exists(chromedriver):
        return None
    return (f"{chromium} / {chromedriver} missing: apt-get install -y chromium chromium-driver "
            "(.ci/run does)")


#: headless Chromium's flags for the UI and site tests (no network of its own, no GPU)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=2200,900",
                  "--disable-dev-shm-usage")


@contextlib.contextmanager
def headless_chromium(profile: Path):
    """A Selenium driver of headless Chromium with its profile in ``profile``; quit on exit.
    Skips (fails under CI=true) when Chromium, chromedriver or selenium is missing."""
    why = chromium_missing()
    if why:
        missing(why)
    webdriver = require_module("selenium.webdriver", "pip install selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# -- PostgreSQL ----------------------------------------------------------------------------------

def pg_bin(name: str) -> Optional[str]:
    """A PostgreSQL server program: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parent.parent.name)
                      if Path(p).parent.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def pg_os_user() -> Optional[pwd.struct_passwd]:
    """The account the server runs as: PostgreSQL refuses to run as root.

    None (the current user) unless running as root; then ``CNA_TF_PG_USER``, else ``postgres``
    (created by Debian's postgresql package), else ``nobody``.
    """
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("CNA_TF_PG_USER"), "postgres", "nobody"):
        if name:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged account for PostgreSQL: "
                       "set CNA_TF_PG_USER")


@contextlib.contextmanager
def postgres(dbname: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields the database's SQLAlchemy URI."""
    initdb, server = pg_bin("initdb"), pg_bin("postgres")
    if not (initdb and server):
        missing("PostgreSQL server programs (initdb, postgres) not found: "
                "apt-get install -y postgresql (.ci/run does)")
    psycopg = require_module("psycopg", "pip install 'psycopg[binary]' (dev extra)")
    account = pg_os_user()
    # Not under pytest's tmp_path: that is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="cna_tf_pg_"))
    as_user: Dict = {}
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
    data, log = root / "data", root / "postgres.log"
    proc = None
    try:
        init = subprocess.run([initdb, "-D", str(data), "-U", "mlflow", "--auth=trust",
                               "-E", "UTF8", "--no-locale", "--no-sync"], cwd=root,
                              capture_output=True, text=True, timeout=120, **as_user)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        port = free_port()
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [server, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                 "-c", "unix_socket_directories=", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=100"],
                cwd=root, stdout=f, stderr=subprocess.STDOUT, **as_user)
        deadline = time.time() + 60
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="mlflow",
                                     dbname="postgres", autocommit=True,
                                     connect_timeout=2) as conn:
                    conn.execute(f'CREATE DATABASE "{dbname}"')
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{_tail(log)}")
                time.sleep(0.2)
        yield f"postgresql://mlflow@127.0.0.1:{port}/{dbname}"
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # "fast" shutdown: ends open sessions, then exits
        shutil.rmtree(root, ignore_errors=True)


# -- MLflow tracking server --------------------------------------------------------------------

#: MLflow 3's server starts a job runner and a Huey consumer per GenAI job kind (~20 Python
#: processes over a test session, ~60 s of CPU) that no cna_tf test uses; tests/conftest.py
#: sets the same for the servers tests start through `make ui`.
JOB_EXECUTION = "false"


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, workers: int = 2,
                  timeout: float = 180) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts; yields its URL."""
    port = free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / f"mlflow-server-{port}.log"
    cmd = [MLFLOW, "server", "--backend-store-uri", backend_store_uri, "--host", "127.0.0.1",
           "--port", str(port), "--artifacts-destination", str(artifacts),
           "--workers", str(workers)]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k != "PYTEST_CURRENT_TEST"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = JOB_EXECUTION
    with open(log, "w") as f:
        # its own process group: the server's worker processes are stopped with it
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=str(artifacts.parent), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{_tail(log)}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc, signal.SIGTERM, group=True)


# -- the tiny grid -------------------------------------------------------------------------------

def run_tiny_grid(tracking_uri: str, workdir: Path, experiment: str = "tiny4",
                  workers: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the 4-cell grid with ``workers`` at a time against ``tracking_uri``."""
    config = workdir / "tiny4.yaml"
    config.write_text(TINY_GRID)
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTEST_CURRENT_TEST", None)  # MLflow turns on test-only checks when it is set
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, str(ROOT / "pipelines" / "grid.py"), "--config", str(config),
           "--workers", str(workers), "--backup_root", str(workdir / "backup"),
           "--experiment", experiment]
    return subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout)


def grid_record(client, experiment: str = "tiny4") -> Dict:
    """What a store holds of the grid: parent, children, each child's metric steps and files.

    Returns:
        ``{"parent": Run, "children": {cell_key: Run}, "steps": {cell_key: {metric: [steps]}},
        "artifacts": {cell_key: [paths]}, "logs": {cell_key: train.log text}}``.
    """
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} missing"
    grids = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'grid'")
    assert len(grids) == 1, [g.info.run_id for g in grids]
    parent = grids[0]
    kids = client.search_runs([exp.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    out: Dict = {"parent": parent, "children": {}, "steps": {}, "artifacts": {}, "logs": {}}
    # one request per (run, metric): in parallel, a tracking server answers them in a few seconds
    with ThreadPoolExecutor(8) as pool:
        histories = {(run.info.run_id, m): pool.submit(client.get_metric_history,
                                                        run.info.run_id, m)
                     for run in kids for m in run.data.metrics}
        histories = {k: sorted(x.step for x in f.result()) for k, f in histories.items()}
    for run in kids:
        key = run.data.tags.get("cna_tf.cell_key", run.info.run_id)
        assert key not in out["children"], f"two runs for cell {key}"
        out["children"][key] = run
        out["steps"][key] = {m: histories[run.info.run_id, m] for m in run.data.metrics}
        paths: List[str] = []
        todo = [None]
        while todo:
            for a in client.list_artifacts(run.info.run_id, todo.pop()):
                (todo.append(a.path) if a.is_dir else paths.append(a.path))
        out["artifacts"][key] = sorted(paths)
        with tempfile.TemporaryDirectory() as d:
            local = client.download_artifacts(run.info.run_id, "logs/train.log", d) \
                if "logs/train.log" in paths else None
            out["logs"][key] = Path(local).read_text(errors="replace") if local else ""
    return out


def assert_grid_complete(rec: Dict, n_cells: int = 4, epochs: int = 2) -> None:
    """Every cell FINISHED once, with every metric at every step exactly once, and its files."""
    sys.path.insert(0, str(ROOT / "pipelines"))
    import cells
    from params import read_params

    parent = rec["parent"]
    assert parent.info.status == "FINISHED", parent.info.status
    assert parent.data.metrics.get("cells_finished") == n_cells, parent.data.metrics
    assert parent.data.metrics.get("cells_failed") == 0, parent.data.metrics
    assert len(rec["children"]) == n_cells, sorted(rec["children"])
    snapshots = list(range(epochs + 1))
    for key, run in rec["children"].items():
        where = f"cell {key} (run {run.info.run_id})"
        assert run.info.status == "FINISHED", f"{where}: {run.info.status}, " \
            f"{run.data.tags.get('cna_tf.failure')}"
        assert cells.cell_key(read_params(run.data.params)) == key, where
        assert run.data.tags.get("cna_tf.snapshots") == "0,1,2", where
        steps = rec["steps"][key]
        # a lost or duplicated write shows up as a missing or repeated step
        for name in ("cna_test", "cna_train", "gen_gap", "cna_margin", "l2", "cna_area"):
            assert steps.get(name) == snapshots, f"{where}: {name} at steps {steps.get(name)}"
        assert steps.get("accuracy") == snapshots[1:], where  # Keras' own, per epoch
        assert steps.get("train_seconds") == [0], where
        for name, got in steps.items():
            assert set(got) <= set(snapshots), f"{where}: {name} at steps {got}"
            assert len(got) == len(set(got)), f"{where}: {name} repeated: {got}"
        files = rec["artifacts"][key]
        assert "logs/train.log" in files, f"{where}: {files}"
        assert any(p.startswith("cna/") and p.endswith(".csv") for p in files), \
            f"{where}: no (alpha, beta) curves in {files}"
        assert any(p.startswith("cna/") and p.endswith(".png") for p in files), \
            f"{where}: no Fig-3 plot in {files}"
        assert "finished in" in rec["logs"][key], f"{where}: train.log incomplete"


LOCK_MARKERS = ("database is locked", "database table is locked")


def lock_errors(*texts: str) -> int:
    """How many sqlite lock errors these outputs mention."""
    return sum(t.count(m) for t in texts for m in LOCK_MARKERS)


def artifacts_dir(name: str) -> Path:
    """Where a test keeps files for people to look at: ``$CNA_TF_TEST_ARTIFACTS`` or a temp dir."""
    base = os.environ.get("CNA_TF_TEST_ARTIFACTS") or os.path.join(tempfile.gettempdir(),
                                                                    "cna_tf_test_artifacts")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
