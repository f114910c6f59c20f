"""The grid's executors: how each cell's ``train.py`` runs, apart from the grid's bookkeeping.

* `LocalExecutor`: `run_train` (``python pipelines/train.py ...`` in a subprocess) in a thread
  per cell, ``workers`` at a time;
* `RayExecutor`: `run_train` as a Ray task per cell with declared CPUs and GPUs, on a local Ray
  runtime or a cluster (docs/scaling.md);
* `KubernetesExecutor`: each cell as a job of MLflow Projects' kubernetes backend (``k8s/``).

An executor is a context manager (Ray connects on entry and shuts down on exit) whose ``run``
trains the cells it is given through a `CellBook` (`grid.Grid`: it creates, resumes and closes
each cell's MLflow run) and reports each finished cell to a callback. `run_train` is also what a
Ray worker runs: it and the helpers it calls use only the standard library, so the Ray executor
sends this module to the worker by value (the worker needs no ``pipelines/`` on its path).
"""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from cells import cell_key

__all__ = ["PROJECT_DIR", "FORWARD_ENV", "LOG_LIMIT", "INSTALL_RAY", "CellBook", "Todo",
           "CellDone", "run_train", "die_with_parent", "require_ray", "LocalExecutor",
           "KubernetesExecutor", "RayExecutor"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Driver environment variables a cell's train.py gets on a Ray worker too (the local backend
# passes the whole environment): tracking (URI, credentials, S3 endpoint), data, Keras, TF.
FORWARD_ENV = ("MLFLOW_", "CNA_TF_", "KERAS_", "TF_")
LOG_LIMIT = 10_000_000  # characters of a cell's log kept (its end)
INSTALL_RAY = 'pip install "cna_tf[ray]"'


def run_train(args: List[str], env: Dict[str, str], project_dir: str,
              lock_path: str = "", server: Optional[Any] = None) -> Dict[str, Any]:
    """Runs ``python pipelines/train.py ARGS`` to its end; this process's environment plus env.

    The local backend calls this in a thread, with its `forkserver.ForkServer` (the cell forked
    from a process that has imported train.py's modules; a fresh Python when it has none or
    it is gone), the ray backend as a Ray task on a worker (with the worker's Python). A
    non-zero exit (a failed training) is a result, returned and never raised, so Ray retries
    only a task whose worker process or node died.

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
                try:
                    if server is None:
                        raise ConnectionError
                    rc = server.call(args, dict(os.environ, **env), f.fileno(),
                                     () if fd is None else (fd,))
                    if rc is None:  # the cell died with the server
                        f.write(f"\ncell lost: {server.failure}\n")
                except ConnectionError:  # no server, or gone before the cell started
                    rc = subprocess.call(
                        [sys.executable, str(project / "pipelines" / "train.py"), *args],
                        stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, **env),
                        cwd=str(project), preexec_fn=die_with_parent(),
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


def die_with_parent():
    """A preexec function giving the child SIGKILL when its parent (this process) dies
    (Linux), else None; the fork server's cells call it themselves after the fork.

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

def require_ray():
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed; the message says how to install it.
    """
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"backend ray needs Ray, an optional dependency: {INSTALL_RAY} (in a "
                          f'checkout: pip install -e ".[ray]"). ({type(e).__name__}: {e})'
                          ) from None
    return ray


# -- executors -------------------------------------------------------------------------------------

#: The cells to train, each with the run id to resume (or None).
Todo = Sequence[Tuple[Dict[str, Any], Optional[str]]]
#: Called once per cell as it ends: (cell, run id, final status or "ERROR ...", seconds).
CellDone = Callable[[Dict[str, Any], str, str, float], None]


class CellBook(Protocol):
    """What an executor needs of the grid's bookkeeping (`grid.Grid` provides it)."""

    parent_id: Optional[str]
    experiment_id: str

    def open_cell(self, p: Dict[str, Any], resume: Optional[str],
                  status: str = "RUNNING") -> str: ...

    def train_spec(self, p: Dict[str, Any],
                   run_id: str) -> Tuple[List[str], Dict[str, str]]: ...

    def lock_path(self, p: Dict[str, Any]) -> str: ...

    def close_cell(self, run_id: str, rc: Optional[int], log: str) -> str: ...


def _in_threads(todo: Todo, workers: int,
                run_one: Callable[[Dict[str, Any], Optional[str]], Tuple[str, str]],
                done: CellDone) -> None:
    """``workers`` cells at a time, each waited on by a thread; ``done`` called in this one."""
    def timed(p: Dict[str, Any], resume: Optional[str]) -> Tuple[str, str, float]:
        t = time.time()
        run_id, status = run_one(p, resume)
        return run_id, status, time.time() - t

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(timed, p, resume): p for p, resume in todo}
        for fut in as_completed(futures):
            try:
                run_id, status, seconds = fut.result()
            except Exception as e:  # noqa: BLE001 - one cell's error must not stop the grid
                run_id, status, seconds = "-", f"ERROR {type(e).__name__}: {e}", 0.0
            done(futures[fut], run_id, status, seconds)


def thread_share(workers: int) -> Dict[str, str]:
    """Each of ``workers`` concurrent trainings' share of this machine's cores, as the thread
    variables TensorFlow and OpenMP read; a variable already set in the environment wins.

    Two trainings with every core each on a 2-core machine slow each other down."""
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    share = {"OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
             "TF_NUM_INTEROP_THREADS": "1"}
    return {k: v for k, v in share.items() if k not in os.environ}


class LocalExecutor:
    """Each cell's train.py in a process of its own on this machine, ``workers`` at a time,
    each with its share of the cores (`thread_share`).

    On Linux the processes are forked from one `forkserver.ForkServer` per grid, which
    imported train.py's modules once (about 6 s of CPU a cell saves); elsewhere, with
    ``CNA_TF_FORKSERVER=0`` or when the server cannot start, each is a fresh Python.
    """

    def __init__(self, workers: int = 2):
        self.workers = workers

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def run(self, book: CellBook, todo: Todo, done: CellDone) -> None:
        """Trains every cell of ``todo`` to its end, calling ``done`` for each."""
        share = thread_share(self.workers)
        server = self.fork_server(share) if todo else None

        def run_one(p: Dict[str, Any], resume: Optional[str]) -> Tuple[str, str]:
            run_id = book.open_cell(p, resume)
            args, env = book.train_spec(p, run_id)
            out = run_train(args, {**share, **env}, str(PROJECT_DIR), book.lock_path(p),
                            server)
            return run_id, book.close_cell(run_id, out["rc"], out["log"])

        try:
            _in_threads(todo, self.workers, run_one, done)
        finally:
            if server is not None:
                server.close()

    @staticmethod
    def fork_server(share: Dict[str, str]) -> Optional[Any]:
        """A started `forkserver.ForkServer` for this grid's cells, or None (not available
        here, or it failed to start: said on stdout)."""
        import forkserver

        if not forkserver.available():
            return None
        # what every cell's environment shares (TensorFlow reads its log level at import)
        server = forkserver.ForkServer(PROJECT_DIR, dict(os.environ, **share,
                                                         TF_CPP_MIN_LOG_LEVEL="3"))
        if server.start():
            return server
        print(f"grid: {server.failure}; each cell starts a fresh Python", flush=True)
        return None


class KubernetesExecutor(LocalExecutor):
    """Each cell as a Kubernetes job through MLflow Projects (the job tags itself a child run).

    Args:
        backend_config: MLflow's kubernetes backend config (JSON path), passed through.
        workers: jobs submitted and waited on at once.
    """

    def __init__(self, backend_config: str, workers: int = 2):
        super().__init__(workers)
        self.backend_config = backend_config

    def run(self, book: CellBook, todo: Todo, done: CellDone) -> None:
        """Submits every cell of ``todo`` and waits for each job, calling ``done`` for each."""
        import mlflow.projects

        def run_one(p: Dict[str, Any], resume: Optional[str]) -> Tuple[str, str]:
            params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in p.items()}
            params.update(cell_key=cell_key(p), parent_run_id=book.parent_id)
            submitted = mlflow.projects.run(
                str(PROJECT_DIR / "k8s"), entry_point="train", parameters=params,
                backend="kubernetes", backend_config=self.backend_config,
                experiment_id=book.experiment_id, synchronous=False)
            submitted.wait()
            return submitted.run_id, submitted.get_status()

        _in_threads(todo, self.workers, run_one, done)


class RayExecutor:
    """Every cell a Ray task running `run_train`, with declared CPUs and GPUs per cell.

    Args:
        address: empty starts a local Ray runtime with CPUs for ``workers`` cells; ``auto``,
            ``ray://host:10001`` or ``host:6379`` joins a cluster.
        cpus, gpus: per cell task.
        max_retries: times Ray retries a cell whose worker process or node died.
        workers: cells at once on a local runtime.
        tracking_uri: the grid's (a warning when a cluster's workers cannot reach it).
    """

    def __init__(self, address: str = "", cpus: float = 1.0, gpus: float = 0.0,
                 max_retries: int = 3, workers: int = 2, tracking_uri: str = ""):
        self.address, self.cpus, self.gpus = address, cpus, gpus
        self.max_retries, self.workers, self.tracking_uri = max_retries, workers, tracking_uri
        self.ray = None

    def __enter__(self) -> "RayExecutor":
        self.ray = self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.ray is not None:
            self.ray.shutdown()

    def connect(self):
        """Joins the Ray cluster at ``address``, or starts a local runtime for ``workers`` cells.

        Returns:
            the ``ray`` module, initialized.

        Raises:
            ImportError: Ray is not installed.
            ConnectionError: Ray could not be reached or started (the message names the cause).
        """
        ray = require_ray()
        try:
            if self.address:
                ray.init(address=self.address, logging_level="WARNING",
                         configure_logging=True)
                where = f"Ray cluster at {self.address}"
            else:
                cpus = max(1, math.ceil(max(1, self.workers) * self.cpus))  # `workers` cells
                ray.init(address="local", num_cpus=cpus,
                         include_dashboard=False, logging_level="WARNING",
                         configure_logging=True)
                where = "a local Ray runtime"
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(
                f"ray: cannot connect to {self.address or 'a new local runtime'}: "
                f"{type(e).__name__}: {e}\n(a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and its token, in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        res = ray.cluster_resources()
        print(f"ray: {where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; per cell "
              f"{self.cpus:g} CPU, {self.gpus:g} GPU, max_retries {self.max_retries}",
              flush=True)
        if self.gpus and not res.get("GPU"):
            print("ray: warning: cells ask for GPUs and the cluster has none now; they wait "
                  "until an autoscaler adds GPU nodes", flush=True)
        if self.tracking_uri.startswith(("sqlite:", "file:", "/")) \
                and self.address.startswith("ray://"):
            print(f"ray: warning: tracking URI {self.tracking_uri} is local to this machine; "
                  "workers on other nodes need a tracking server (docs/scaling.md)", flush=True)
        return ray

    def run(self, book: CellBook, todo: Todo, done: CellDone) -> None:
        """Every cell of ``todo`` a Ray task running `run_train`; ``done`` called for each.

        The driver creates each cell's child run once, before submitting it (SCHEDULED until
        train.py starts it); a task only runs train.py with that run's id, so a task Ray retries
        after its worker died resumes the same run from the cell's backup and never makes a
        second one. Cells finish in any order; ``ray.wait`` reports each as it does.
        """
        ray = self.ray
        module = sys.modules[run_train.__module__]
        if module.__name__ != "__main__":  # imported: send the code, not its name
            ray.cloudpickle.register_pickle_by_value(module)
        task = ray.remote(run_train).options(
            num_cpus=self.cpus, num_gpus=self.gpus,
            max_retries=self.max_retries, retry_exceptions=False,
            name="cna_tf-cell")
        pending: Dict[Any, Tuple[Dict[str, Any], str, float]] = {}
        for p, resume in todo:
            run_id = book.open_cell(p, resume, status="SCHEDULED")
            args, env = book.train_spec(p, run_id)
            ref = task.remote(args, env, str(PROJECT_DIR), book.lock_path(p))
            pending[ref] = (p, run_id, time.time())
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
                    log = (f"ray task of cell {cell_key(p)} failed ({self.max_retries} "
                           f"retries for a lost worker): {type(e).__name__}: "
                           + " ".join(str(e).split())[:2000])
                try:
                    status = book.close_cell(run_id, rc, log)
                except Exception as e:  # noqa: BLE001 - one cell's error must not stop the grid
                    status = f"ERROR {type(e).__name__}: {e}"
                done(p, run_id, status, seconds)
