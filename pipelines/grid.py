"""MLproject step `grid`: train every cell of a config, each as its own process and child run.

A parent run holds the grid (tag ``cna_tf.grid_key``: a hash of its cell keys). Each cell is a
child run (tags ``mlflow.parentRunId`` and ``cna_tf.cell_key``) trained by ``train.py`` in its
own process, ``workers`` at a time. Re-running the same grid resumes the same parent run: cells
that FINISHED are skipped, runs left RUNNING by a killed grid are marked KILLED, and failed or
killed cells are trained again in their own run (resumed from the cell's backup when one exists,
otherwise the old run is deleted and a new one started), so no cell is ever recorded twice.

Backends: ``local`` (``train.py`` subprocesses on this machine), ``ray`` (the same ``train.py``
command as a Ray task per cell, on a local Ray runtime or a cluster; see docs/scaling.md) and
``kubernetes`` (MLflow Projects' kubernetes backend).

    python pipelines/grid.py --config demo --workers 2
    python pipelines/grid.py --config demo --backend ray                      # local Ray runtime
    python pipelines/grid.py --config paper --backend ray --ray_address ray://head:10001 \
        --ray_gpus_per_cell 1
    python pipelines/grid.py --config paper --backend kubernetes --backend_config k8s.json
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup import has_backup  # noqa: E402
from cells import cell_key, cli_args, load_config  # noqa: E402
from params import declared, log_launch, log_resolved, parse_float, parse_int  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent
TRAIN = Path(__file__).resolve().parent / "train.py"
TAG = "cna_tf."
BACKENDS = ("local", "kubernetes", "ray")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo", help="demo, paper, or a YAML path")
    ap.add_argument("--workers", type=parse_int, default=2,
                    help="cells trained at once (local; ray with a local runtime: its CPUs are "
                    "workers x ray_cpus_per_cell)")
    ap.add_argument("--backend", default="local", help="local, ray or kubernetes")
    ap.add_argument("--backend_config", default="",
                    help="MLflow kubernetes backend config (JSON), passed through")
    ap.add_argument("--experiment", default="",
                    help="experiment name (default: the one `mlflow run` uses, else "
                    "cna_tf-<config>)")
    ap.add_argument("--backup_root", default="",
                    help="where cells keep resume state (default .cna_backup)")
    ap.add_argument("--max_cells", type=parse_int, default=0, help="only the first N cells (0: all)")
    ap.add_argument("--ray_address", default="",
                    help="ray: empty starts a local Ray runtime; 'auto' or 'ray://host:10001' "
                    "(or host:6379 on a cluster node) joins a cluster")
    ap.add_argument("--ray_cpus_per_cell", type=parse_float, default=1.0, help="ray: CPUs per cell task")
    ap.add_argument("--ray_gpus_per_cell", type=parse_float, default=0.0, help="ray: GPUs per cell task")
    ap.add_argument("--ray_max_retries", type=parse_int, default=3,
                    help="ray: times Ray retries a cell whose worker process or node died (a "
                    "training failure, i.e. train.py exiting non-zero, is never retried)")
    return ap.parse_args(argv)


def grid_key(keys: List[str]) -> str:
    return hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:16]


class Progress:
    """Prints one line per finished cell: done/total, failures, elapsed, ETA."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.failed = total, done, 0
        self.t0, self.ran = time.time(), 0
        self._lock = threading.Lock()

    def finished(self, label: str, status: str, seconds: float) -> None:
        with self._lock:
            self.done += 1
            self.ran += 1
            self.failed += status != "FINISHED"
            elapsed = time.time() - self.t0
            left = self.total - self.done
            eta = elapsed / self.ran * left
            print(f"[{self.done}/{self.total}] {status:8s} {label} ({seconds:.0f}s) | elapsed "
                  f"{_hms(elapsed)}, ETA {_hms(eta)}, failed {self.failed}", flush=True)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def label(p: Dict[str, Any]) -> str:
    """A cell as the progress lines and the MLflow UI (its run name) show it."""
    extra = f" shuffle={p['label_shuffle']:g}" if p["label_shuffle"] else ""
    depth = f" depth={p['depth']}" if p["arch"] == "mlp" else ""
    return (f"{p['arch']}/{p['dataset']} w={p['width']:g}{depth} ep={p['epochs']} "
            f"seed={p['seed']}{extra}")


# -- the train step of a cell: what the local backend runs in a thread and a Ray task on a worker --
# Driver environment variables a cell's train.py gets on a Ray worker too (the local backend
# passes the whole environment): tracking (URI, credentials, S3 endpoint), data, Keras, TF.
FORWARD_ENV = ("MLFLOW_", "CNA_TF_", "KERAS_", "TF_")
LOG_LIMIT = 10_000_000  # characters of a cell's log kept (its end)
INSTALL_RAY = 'pip install "cna_tf[ray]"'


def run_train(args: List[str], env: Dict[str, str], project_dir: str,
              lock_path: str = "") -> Dict[str, Any]:
    """Runs ``python pipelines/train.py ARGS`` to its end; this process's environment plus env.

    The local backend calls this in a thread, the ray backend as a Ray task on a worker (with
    the worker's Python). A non-zero exit (a failed training) is a result, returned and never
    raised, so Ray retries only a task whose worker process or node died.

    A killed worker must leave no training behind to race its retry on the same run and
    backup: on Linux train.py gets SIGKILL when the process that started it dies
    (PR_SET_PDEATHSIG); and train.py inherits an exclusive lock on ``lock_path`` (the cell's),
    so an attempt that finds it held waits for the earlier train.py to end, and does not train
    a cell that train.py finished (``MLFLOW_RUN_ID`` FINISHED) again.

    Returns:
        ``rc`` (the exit code), ``log`` (train.py's output, its last LOG_LIMIT characters),
        ``seconds``, ``host`` and ``pid`` (of the process that ran it).
    """
    project = _find_project(project_dir)
    t = time.time()
    fd, waited = _lock(lock_path)
    try:
        if waited is not None and _finished(env):
            return {"rc": 0, "log": f"waited {waited:.0f}s for the cell's earlier train.py (its "
                    "worker had died); it finished the run: not trained again\n",
                    "seconds": time.time() - t, "host": socket.gethostname(),
                    "pid": os.getpid()}
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "train.log"
            with open(log, "w") as f:
                rc = subprocess.call(
                    [sys.executable, str(project / "pipelines" / "train.py"), *args],
                    stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, **env),
                    cwd=str(project), preexec_fn=_die_with_parent(),
                    pass_fds=() if fd is None else (fd,))
            text = log.read_text(errors="replace")
    finally:
        if fd is not None:
            os.close(fd)
    return {"rc": rc, "log": text[-LOG_LIMIT:], "seconds": time.time() - t,
            "host": socket.gethostname(), "pid": os.getpid()}


def _lock(path: str) -> Tuple[Optional[int], Optional[float]]:
    """An exclusive flock on path: (its fd, seconds waited or None if it was free at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None, None
    if not path:
        return None, None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, None
    except BlockingIOError:
        t = time.time()
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, time.time() - t


def _finished(env: Dict[str, str]) -> bool:
    import mlflow

    client = mlflow.MlflowClient(env.get("MLFLOW_TRACKING_URI"))
    return client.get_run(env["MLFLOW_RUN_ID"]).info.status == "FINISHED"


def _find_project(hint: str) -> Path:
    """The project checkout here: $CNA_TF_PROJECT_DIR, the driver's path, or the working dir."""
    places = [os.environ.get("CNA_TF_PROJECT_DIR", ""), hint, os.getcwd()]
    for place in places:
        if place and (Path(place) / "pipelines" / "train.py").is_file():
            return Path(place)
    raise FileNotFoundError(
        f"pipelines/train.py not found on {socket.gethostname()} (looked in "
        f"{', '.join(repr(p) for p in places if p)}): a Ray worker needs the project checkout at "
        "the driver's path or at $CNA_TF_PROJECT_DIR (see docs/scaling.md)")


def _die_with_parent():
    """A preexec function giving the child SIGKILL when its parent dies (Linux), else None.

    Built where it runs (ctypes objects do not travel to a Ray worker).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
    return preexec


def _require_ray():
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"backend ray needs Ray, an optional dependency: {INSTALL_RAY} (in a "
                         f'checkout: pip install -e ".[ray]"). ({type(e).__name__}: {e})') from None
    return ray


class Grid:
    """One grid run: finds or creates the parent run and the cells' child runs, runs the cells."""

    def __init__(self, name: str, cells: List[Dict[str, Any]], experiment: str,
                 backup_root: Path, backend: str = "local", backend_config: str = "",
                 ray_address: str = "", ray_cpus_per_cell: float = 1.0,
                 ray_gpus_per_cell: float = 0.0, ray_max_retries: int = 3):
        import mlflow

        if backend not in BACKENDS:
            raise SystemExit(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend == "kubernetes" and not backend_config:
            raise SystemExit("backend kubernetes needs --backend_config (MLflow's kubernetes "
                             "backend JSON: kube-context, repository-uri, kube-job-template-path)")
        if backend == "ray":
            _require_ray()
            if ray_cpus_per_cell < 0 or ray_gpus_per_cell < 0 or ray_max_retries < -1:
                raise SystemExit("ray_cpus_per_cell and ray_gpus_per_cell must be >= 0, "
                                 "ray_max_retries >= 0 (or -1: retry forever)")
        self.ray_address = (ray_address or "").strip()
        self.ray_cpus, self.ray_gpus = float(ray_cpus_per_cell), float(ray_gpus_per_cell)
        self.ray_max_retries = int(ray_max_retries)
        self.name, self.cells = name, cells
        self.keys = [cell_key(c) for c in cells]
        self.backend, self.backend_config = backend, backend_config
        self.backup_root = backup_root
        self.client = mlflow.MlflowClient()
        own = os.environ.get("MLFLOW_RUN_ID")
        if own and not experiment:  # `mlflow run -e grid`: the grid lives where MLflow put it
            self.experiment_id = self.client.get_run(own).info.experiment_id
        else:
            self.experiment_id = mlflow.set_experiment(experiment or f"cna_tf-{name}"
                                                       ).experiment_id
        self.tracking_uri = mlflow.get_tracking_uri()
        self.parent_id: Optional[str] = None
        #: the grid step's declared parameters as given (logged when `mlflow run` did not)
        self.launch: Dict[str, Any] = {}

    # -- runs ---------------------------------------------------------------------------------
    def open_parent(self) -> str:
        """Starts the grid's parent run: the one an earlier attempt created, or a new one.

        Under ``mlflow run -e grid`` MLflow has made a run for this process (``MLFLOW_RUN_ID``):
        it becomes the parent of a new grid; when resuming, it is tagged as an attempt pointing
        at the parent. Either way it gets tag ``cna_tf.grid_run_id``.
        """
        import mlflow

        gk = grid_key(self.keys)
        own = os.environ.pop("MLFLOW_RUN_ID", "") or None
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{TAG}grid_key` = '{gk}' and tags.`{TAG}role` = 'grid'",
            max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            run = mlflow.start_run(run_id=found[0].info.run_id)
            print(f"resuming grid run {run.info.run_id} ({self.name}, {len(self.cells)} cells)")
        else:
            run = mlflow.start_run(run_id=own)
            mlflow.set_tags({TAG + "grid_key": gk, TAG + "role": "grid", TAG + "config": self.name,
                             "mlflow.runName": f"grid-{self.name}"})
            resolved = {"config": self.name, "cells": len(self.cells),
                        "experiment": self.client.get_experiment(self.experiment_id).name}
            if self.backend == "ray":
                resolved["ray_address"] = self.ray_address or "local"
            if self.launch:  # run as a plain script: what `mlflow run` would have logged
                log_launch("grid", self.launch)
            log_resolved(resolved)
            print(f"grid run {run.info.run_id} ({self.name}, {len(self.cells)} cells)")
        self.parent_id = run.info.run_id
        mlflow.set_tag(TAG + "grid_run_id", self.parent_id)
        if own and own != self.parent_id:
            self.client.set_tag(own, "mlflow.runName", f"grid-{self.name} (attempt)")
            self.client.set_tag(own, TAG + "role", "grid-attempt")
            self.client.set_tag(own, TAG + "grid_run_id", self.parent_id)
        return self.parent_id

    def children(self) -> Dict[str, List[Any]]:
        """Child runs of the parent by cell key (active runs only; deleted ones are gone)."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
            max_results=50_000)
        by_key: Dict[str, List[Any]] = {}
        for r in runs:
            by_key.setdefault(r.data.tags.get(TAG + "cell_key", ""), []).append(r)
        return by_key

    def plan(self) -> Tuple[List[Tuple[Dict[str, Any], Optional[str]]], int]:
        """Cells still to train, each with the run id to resume (or None); and how many are done.

        Runs left RUNNING by a killed grid are marked KILLED first. A failed or killed cell is
        resumed in its own run when its backup exists; otherwise its runs are deleted.
        """
        by_key = self.children()
        todo, done = [], 0
        for p, key in zip(self.cells, self.keys):
            runs = by_key.get(key, [])
            if any(r.info.status == "FINISHED" for r in runs):
                done += 1
                for r in runs:  # a leftover duplicate of a finished cell
                    if r.info.status != "FINISHED":
                        self.client.delete_run(r.info.run_id)
                continue
            resume = None
            for r in runs:
                if r.info.status in ("RUNNING", "SCHEDULED"):
                    self.client.set_terminated(r.info.run_id, "KILLED")
                    self.client.set_tag(r.info.run_id, TAG + "failure",
                                        "killed: the grid stopped while this cell was running")
                if resume is None and has_backup(self.backup_root / key, r.info.run_id):
                    resume = r.info.run_id
                else:
                    self.client.delete_run(r.info.run_id)
            todo.append((p, resume))
        return todo, done

    # -- cells --------------------------------------------------------------------------------
    def open_cell(self, p: Dict[str, Any], resume: Optional[str], status: str = "RUNNING") -> str:
        """The cell's child run, created here (the driver) once, or the one to resume."""
        key = cell_key(p)
        if resume is None:
            run = self.client.create_run(self.experiment_id, run_name=label(p),
                                         tags={"mlflow.parentRunId": self.parent_id,
                                               TAG + "cell_key": key, TAG + "role": "train",
                                               "arch": p["arch"], "dataset": p["dataset"]})
            run_id = run.info.run_id
            # the params `mlflow run . -e train -P ...` would log for this cell
            log_launch("train", p, run_id, self.client)
            if status != "RUNNING":
                self.client.update_run(run_id, status=status)
        else:
            run_id = resume
            self.client.update_run(run_id, status=status)
        return run_id

    def train_spec(self, p: Dict[str, Any], run_id: str) -> Tuple[List[str], Dict[str, str]]:
        """``train.py``'s arguments and environment for a cell's run: the same on every backend.

        ``MLFLOW_RUN_ID`` makes train.py log into (and resume) the run the grid created; the
        cell's backup directory makes it continue from its last completed epoch.
        """
        key = cell_key(p)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV)}
        env.update(MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                   MLFLOW_EXPERIMENT_ID=self.experiment_id, TF_CPP_MIN_LOG_LEVEL="3")
        args = [*cli_args(p), "--cell_key", key, "--parent_run_id", self.parent_id,
                "--backup_dir", str(self.backup_root / key)]
        return args, env

    def lock_path(self, p: Dict[str, Any]) -> str:
        """The cell's lock file, beside its backup directory (held while its train.py runs)."""
        return str(self.backup_root / f"{cell_key(p)}.lock")

    def close_cell(self, run_id: str, rc: Optional[int], log: str) -> str:
        """Records how the cell's train.py ended; returns the run's final status.

        ``rc`` None: it never ended (the Ray task was lost); ``log`` then gives the reason.
        A run train.py left RUNNING is FAILED (exit code > 0) or KILLED (a signal, or lost), with
        tag ``cna_tf.failure`` (the log's last line unless train.py set its own reason).
        """
        status = self.client.get_run(run_id).info.status
        if rc != 0:
            if status in ("RUNNING", "SCHEDULED"):
                status = "FAILED" if rc is not None and rc > 0 else "KILLED"
                self.client.set_terminated(run_id, status)
            if TAG + "failure" not in self.client.get_run(run_id).data.tags:
                tail = log[-3000:].strip()
                reason = tail.splitlines()[-1] if tail else f"exit code {rc}"
                self.client.set_tag(run_id, TAG + "failure", reason[:5000])
        if log:
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "train.log"
                path.write_text(log)
                self.client.log_artifact(run_id, str(path), "logs")
        return status

    def run_cell(self, p: Dict[str, Any], resume: Optional[str]) -> Tuple[str, str]:
        """Trains one cell to the end in a subprocess here; returns (run id, final status)."""
        if self.backend == "kubernetes":
            return self._run_cell_kubernetes(p)
        run_id = self.open_cell(p, resume)
        args, env = self.train_spec(p, run_id)
        out = run_train(args, env, str(PROJECT_DIR), self.lock_path(p))
        return run_id, self.close_cell(run_id, out["rc"], out["log"])

    def _run_cell_kubernetes(self, p: Dict[str, Any]) -> Tuple[str, str]:
        """One cell as a Kubernetes job through MLflow Projects (the job tags itself a child)."""
        import mlflow.projects

        key = cell_key(p)
        params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in p.items()}
        params.update(cell_key=key, parent_run_id=self.parent_id)
        submitted = mlflow.projects.run(
            str(PROJECT_DIR / "k8s"), entry_point="train", parameters=params,
            backend="kubernetes",
            backend_config=self.backend_config, experiment_id=self.experiment_id,
            synchronous=False)
        submitted.wait()
        return submitted.run_id, submitted.get_status()

    def run(self, workers: int = 2) -> Dict[str, int]:
        """Runs the remaining cells; returns counts of finished and failed cells."""
        import mlflow

        ray = self._ray_connect(workers) if self.backend == "ray" else None  # before any run
        try:
            self.open_parent()
            todo, done = self.plan()
            progress = Progress(len(self.cells), done)
            if done:
                print(f"{done} of {len(self.cells)} cells already finished: skipped", flush=True)
            if ray is not None:
                failed = self._run_ray(ray, todo, progress)
            else:
                failed = self._run_threads(todo, workers, progress)
        finally:
            if ray is not None:
                ray.shutdown()
        counts = {"cells_finished": len(self.cells) - len(failed), "cells_failed": len(failed)}
        mlflow.log_metrics(counts)
        if failed:
            print("failed cells (re-run the grid to retry them):\n  " + "\n  ".join(failed))
        return counts

    def _run_threads(self, todo, workers: int, progress: Progress) -> List[str]:
        """local and kubernetes: ``workers`` cells at a time, each waited on by a thread."""
        failed: List[str] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(self._timed, p, resume): p for p, resume in todo}
            for fut in as_completed(futures):
                p = futures[fut]
                try:
                    run_id, status, seconds = fut.result()
                except Exception as e:  # noqa: BLE001 - one cell's error must not stop the grid
                    run_id, status, seconds = "-", f"ERROR {type(e).__name__}: {e}", 0.0
                if status != "FINISHED":
                    failed.append(f"{label(p)} ({run_id}): {status}")
                progress.finished(label(p), status.split()[0], seconds)
        return failed

    def _ray_connect(self, workers: int):
        """Joins the Ray cluster at ray_address, or starts a local runtime for `workers` cells."""
        ray = _require_ray()
        try:
            if self.ray_address:
                ray.init(address=self.ray_address, logging_level="WARNING",
                         configure_logging=True)
                where = f"Ray cluster at {self.ray_address}"
            else:
                cpus = max(1, math.ceil(max(1, workers) * self.ray_cpus))  # `workers` cells
                ray.init(address="local", num_cpus=cpus,
                         include_dashboard=False, logging_level="WARNING",
                         configure_logging=True)
                where = "a local Ray runtime"
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SystemExit(
                f"ray: cannot connect to {self.ray_address or 'a new local runtime'}: "
                f"{type(e).__name__}: {e}\n(a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and its token, in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        res = ray.cluster_resources()
        print(f"ray: {where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; per cell "
              f"{self.ray_cpus:g} CPU, {self.ray_gpus:g} GPU, max_retries {self.ray_max_retries}",
              flush=True)
        if self.ray_gpus and not res.get("GPU"):
            print("ray: warning: cells ask for GPUs and the cluster has none now; they wait "
                  "until an autoscaler adds GPU nodes", flush=True)
        if self.tracking_uri.startswith(("sqlite:", "file:", "/")) \
                and self.ray_address.startswith("ray://"):
            print(f"ray: warning: tracking URI {self.tracking_uri} is local to this machine; "
                  "workers on other nodes need a tracking server (docs/scaling.md)", flush=True)
        return ray

    def _run_ray(self, ray, todo, progress: Progress) -> List[str]:
        """ray: every cell a Ray task running :func:`run_train` with declared CPUs and GPUs.

        The driver creates each cell's child run once, before submitting it (SCHEDULED until
        train.py starts it); a task only runs train.py with that run's id, so a task Ray retries
        after its worker died resumes the same run from the cell's backup and never makes a
        second one. Cells finish in any order; ``ray.wait`` reports each as it does.
        """
        module = sys.modules[run_train.__module__]
        if module.__name__ != "__main__":  # imported (tests): send the code, not its name
            ray.cloudpickle.register_pickle_by_value(module)
        task = ray.remote(run_train).options(
            num_cpus=self.ray_cpus, num_gpus=self.ray_gpus,
            max_retries=self.ray_max_retries, retry_exceptions=False,
            name="cna_tf-cell")
        pending: Dict[Any, Tuple[Dict[str, Any], str, float]] = {}
        for p, resume in todo:
            run_id = self.open_cell(p, resume, status="SCHEDULED")
            args, env = self.train_spec(p, run_id)
            ref = task.remote(args, env, str(PROJECT_DIR), self.lock_path(p))
            pending[ref] = (p, run_id, time.time())
        failed: List[str] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                p, run_id, submitted = pending.pop(ref)
                try:
                    out = ray.get(ref)
                    rc, log, seconds = out["rc"], out["log"], out["seconds"]
                except Exception as e:  # noqa: BLE001 - the task raised, or was lost
                    # an error in run_train (FAILED), or its worker/node lost for good,
                    # retries used up (KILLED)
                    rc = 1 if isinstance(e, ray.exceptions.RayTaskError) else None
                    seconds = time.time() - submitted
                    log = (f"ray task of cell {cell_key(p)} failed ({self.ray_max_retries} "
                           f"retries for a lost worker): {type(e).__name__}: "
                           + " ".join(str(e).split())[:2000])
                try:
                    status = self.close_cell(run_id, rc, log)
                except Exception as e:  # noqa: BLE001 - one cell's error must not stop the grid
                    status = f"ERROR {type(e).__name__}: {e}"
                if status != "FINISHED":
                    failed.append(f"{label(p)} ({run_id}): {status}")
                progress.finished(label(p), status.split()[0], seconds)
        return failed

    def _timed(self, p, resume):
        t = time.time()
        run_id, status = self.run_cell(p, resume)
        return run_id, status, time.time() - t


def main(argv: Optional[List[str]] = None) -> str:
    import mlflow

    args = parse_args(argv)
    name, cells = load_config(args.config)
    if args.max_cells:
        cells = cells[:args.max_cells]
    backup_root = Path(args.backup_root or os.environ.get("CNA_TF_BACKUP_DIR", ".cna_backup"))
    grid = Grid(name, cells, args.experiment, backup_root.resolve(),
                args.backend, args.backend_config, ray_address=args.ray_address,
                ray_cpus_per_cell=args.ray_cpus_per_cell,
                ray_gpus_per_cell=args.ray_gpus_per_cell, ray_max_retries=args.ray_max_retries)
    grid.launch = {k: getattr(args, k) for k in declared("grid")}
    t0 = time.time()
    try:
        counts = grid.run(args.workers)
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
    print(f"grid {grid.parent_id}: {counts['cells_finished']} finished, "
          f"{counts['cells_failed']} failed, in {_hms(time.time() - t0)}", flush=True)
    return grid.parent_id


if __name__ == "__main__":
    main()
