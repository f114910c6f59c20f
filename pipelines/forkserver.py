"""A fork server for the grid's local cells: train.py's imports done once, each cell forked.

A Python that imports TensorFlow, Keras and MLflow spends about 6 s of CPU before it trains
anything, most of what a small grid cell costs. `LocalExecutor` (executors.py) starts one
`ForkServer` per grid; the server imports ``train.py``'s modules once and never runs a model.
`ForkServer.call` then runs ``train.py ARGS`` as `subprocess.call` would: a process of its own
with its environment, working directory, output file, the file descriptors it is given (the
cell's lock) and an exit code that is negative when a signal killed it; but the process is
forked from the server, so it starts with the imports done. Forking after TensorFlow has *run*
is unsafe (its thread pools do not survive a fork; docs/testing.md, mutation testing); after
importing it, it is safe, and the server only imports.

A cell's process dies with the server (``PR_SET_PDEATHSIG``), and the server with the grid
process that started it, so a killed grid leaves no training behind, as with subprocesses.
Linux only (`available`); ``CNA_TF_FORKSERVER=0`` turns it off (every cell a fresh Python).

Run as a script, this module is the server (`main`).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from executors import die_with_parent

__all__ = ["ForkServer", "available"]

#: what the server imports before it forks any cell: train.py and what it imports on first use
PRELOAD = ("train", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "cna_tf.callback",
           "cna_tf.models", "cna_tf.data", "cna_tf.plots", "cna_tf.baselines", "cna_tf.folding",
           "sklearn.datasets")
_MAX_MESSAGE = 1 << 20  # bytes: a request's arguments and environment


def available() -> bool:
    """Whether cells can be forked here: Linux, and ``CNA_TF_FORKSERVER`` is not ``0``."""
    return (sys.platform.startswith("linux") and hasattr(socket, "send_fds")
            and os.environ.get("CNA_TF_FORKSERVER", "1").strip().lower()
            not in ("0", "false", "no", "off"))


# -- the grid's side -------------------------------------------------------------------------------

class ForkServer:
    """The server process and the calls waiting on its cells; one per grid, used from threads.

    Args:
        project: the checkout whose ``pipelines/train.py`` the cells run (their working
            directory).
        env: the server's environment: what the cells share (each call gives a cell its own).
        script: what a cell runs, relative to ``project``.
        preload: the modules the server imports (from ``script``'s folder and the environment's
            packages) before it forks any cell.
    """

    def __init__(self, project: Path, env: Dict[str, str], script: str = "pipelines/train.py",
                 preload: Sequence[str] = PRELOAD):
        self.project = Path(project)
        self.env = env
        self.script = self.project / script
        self.preload = tuple(preload)
        self.proc: Optional[subprocess.Popen] = None
        self.sock: Optional[socket.socket] = None
        self.failure = ""  # why the server is not (or no longer) serving
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: Dict[int, Dict[str, Any]] = {}

    def start(self) -> bool:
        """Starts the server and waits for its imports; False (and `failure` says why) if it
        could not start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with tempfile.TemporaryFile("w+") as log:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), str(theirs.fileno()),
                     str(self.script.parent), ",".join(self.preload)],
                    pass_fds=(theirs.fileno(),), env=self.env, cwd=str(self.project),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent())
            except OSError as e:
                self.failure = f"the fork server could not start ({type(e).__name__}: {e})"
                ours.close()
                return False
            finally:
                theirs.close()
            try:
                ready = ours.recv(_MAX_MESSAGE)
            except OSError:
                ready = b""
            if not ready:
                self.proc.wait()
                log.seek(0)
                tail = log.read()[-2000:].strip()
                self.failure = (f"the fork server exited with code {self.proc.returncode} "
                                f"before it was ready: {tail.splitlines()[-1] if tail else ''}")
                ours.close()
                return False
        self.sock = ours
        threading.Thread(target=self._read, name="cna_tf-forkserver", daemon=True).start()
        return True

    def call(self, args: Sequence[str], env: Dict[str, str], stdout: int,
             pass_fds: Sequence[int] = ()) -> Optional[int]:
        """``python SCRIPT ARGS`` (train.py) forked from the server, waited for.

        Args:
            args: the script's arguments.
            env: the cell's whole environment.
            stdout: a file descriptor for its output (stdout and stderr).
            pass_fds: more descriptors the cell keeps open (the cell's lock).

        Returns:
            its exit code (``-N``: killed by signal N), or None if the server died while the
            cell ran (`failure` says so; the cell died with it).

        Raises:
            ConnectionError: the server was gone before the cell started (it did not run).
        """
        with self._lock:
            if self.sock is None:
                raise ConnectionError(self.failure or "the fork server is not running")
            self._next += 1
            call = {"id": self._next, "done": threading.Event(), "rc": None}
            self._waiting[call["id"]] = call
            request = {"id": call["id"], "cwd": str(self.project), "env": dict(env),
                       "argv": [str(self.script), *args], "fds": list(pass_fds)}
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()],
                                [stdout, *pass_fds])
            except OSError as e:
                self._waiting.pop(call["id"])
                raise ConnectionError(f"the fork server is gone ({type(e).__name__}: {e})"
                                      ) from None
        call["done"].wait()
        return call["rc"]

    def _read(self) -> None:
        """Hands the server's replies to the calls waiting for them; at its end, wakes them."""
        while True:
            try:
                message = self.sock.recv(_MAX_MESSAGE)
            except OSError:
                message = b""
            if not message:
                break
            reply = json.loads(message)
            if "rc" in reply:
                with self._lock:
                    call = self._waiting.pop(reply["id"], None)
                if call is not None:
                    call["rc"] = reply["rc"]
                    call["done"].set()
        code = self.proc.wait()
        with self._lock:
            if not self.failure:
                self.failure = f"the fork server (pid {self.proc.pid}) died (exit code {code})"
            self.sock.close()
            self.sock = None
            waiting, self._waiting = self._waiting, {}
        for call in waiting.values():
            call["done"].set()

    def close(self) -> None:
        """Stops the server (after the last call: a cell still running dies with it)."""
        with self._lock:
            sock = self.sock
            if sock is not None:
                self.failure = self.failure or "closed"
                sock.shutdown(socket.SHUT_RDWR)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the server's side -----------------------------------------------------------------------------

def _send(sock: socket.socket, message: Dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def serve(sock: socket.socket) -> Optional[Tuple[Dict[str, Any], List[int]]]:
    """The server's loop: a fork per request, an exit code per ended cell.

    Returns:
        in a forked cell, its request and descriptors; in the server, None once the grid has
        closed the socket.
    """
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    cells: Dict[int, int] = {}  # pid -> request id
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    _send(sock, {"ready": os.getpid()})
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                try:
                    message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 8)
                except OSError:
                    message, fds = b"", []
                if not message:
                    return None
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    for fd in (wake_r, wake_w):
                        os.close(fd)
                    sock.close()
                    return request, fds
                for fd in fds:
                    os.close(fd)
                cells[pid] = request["id"]
                _send(sock, {"id": request["id"], "pid": pid})
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            while cells:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in cells:
                    _send(sock, {"id": cells.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


def run_cell(request: Dict[str, Any], fds: List[int], die_with_server) -> None:
    """In a forked cell: becomes ``python train.py ARGS`` with the request's environment.

    ``die_with_server``: `executors.die_with_parent` as the server built it before the fork
    (None where it has none).
    """
    import fcntl

    if die_with_server is not None:
        die_with_server()
    out, kept = fds[0], fds[1:]
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    # the passed descriptors under the caller's numbers, as subprocess's pass_fds keeps them
    wanted = request["fds"]
    above = max([*kept, *wanted, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, above) for fd in kept]
    for fd in kept:
        os.close(fd)
    for fd, number in zip(moved, wanted):
        os.dup2(fd, number)  # inheritable, as pass_fds makes them
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(sys.argv[0]).parent)
    import runpy

    runpy.run_path(sys.argv[0], run_name="__main__")


def main() -> None:
    """``forkserver.py SOCKET_FD SCRIPT_DIR MODULE,MODULE...``: imports, then serves."""
    fd, script_dir, modules = sys.argv[1:4]
    sock = socket.socket(fileno=int(fd))
    sys.path[0] = script_dir
    import importlib

    for name in filter(None, modules.split(",")):
        importlib.import_module(name)
    die_with_server = die_with_parent()
    job = serve(sock)
    if job is not None:  # a forked cell: it exits as train.py would (atexit hooks included)
        run_cell(*job, die_with_server)


if __name__ == "__main__":
    main()
