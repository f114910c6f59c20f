"""The grid's fork server (pipelines/forkserver.py): a forked cell behaves as `subprocess.call`.

Against a stand-in project whose ``pipelines/train.py`` does what its arguments say and whose
preloaded module records each import, so no TensorFlow is needed: exit codes (normal, an
exception, a signal), environment, working directory, output, passed descriptors, atexit, two
cells at once, imports done once, a server that cannot start, a server killed mid-cell (the cell
dies with it) and `executors.run_train` starting a fresh Python when the server is gone. That a
grid's cells log the same with and without the server: tests/test_pipelines.py.
"""
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pipelines"))

import executors  # noqa: E402
import forkserver  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

SCRIPT = '''import atexit, os, sys, time
import heavy
print("argv", sys.argv[1:], "cwd", os.getcwd(), "heavy", heavy.PID, flush=True)
what = sys.argv[1]
if what == "env":
    print("env", os.environ.get("CELL"), os.environ.get("SHARED"), flush=True)
elif what == "exit":
    sys.exit(int(sys.argv[2]))
elif what == "raise":
    raise ValueError("bad cell")
elif what == "kill":
    os.kill(os.getpid(), 9)
elif what == "atexit":
    atexit.register(lambda: print("atexit ran", flush=True))
elif what == "fd":
    os.write(int(sys.argv[2]), b"through the passed descriptor")
elif what == "sleep":
    print("pid", os.getpid(), "start", time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
    print("end", time.time(), flush=True)
'''
HEAVY = '''import os
PID = os.getpid()
with open(os.environ["IMPORTS"], "a") as f:
    f.write(f"{PID}\\n")
'''


@pytest.fixture
def project(tmp_path):
    pipelines = tmp_path / "project" / "pipelines"
    pipelines.mkdir(parents=True)
    (pipelines / "train.py").write_text(SCRIPT)
    (pipelines / "heavy.py").write_text(HEAVY)
    return tmp_path / "project"


@pytest.fixture
def server(project, tmp_path):
    env = dict(os.environ, IMPORTS=str(tmp_path / "imports.txt"), SHARED="shared")
    s = forkserver.ForkServer(project, env, preload=("heavy",))
    assert s.start(), s.failure
    yield s
    s.close()


def call(server, *args, env=None, pass_fds=()):
    """(exit code, output) of one cell."""
    with tempfile.TemporaryFile("w+") as out:
        rc = server.call([str(a) for a in args], dict(os.environ, **(env or {})), out.fileno(),
                         pass_fds)
        out.seek(0)
        return rc, out.read()


def test_exit_codes_output_and_working_directory(server, project):
    rc, out = call(server, "exit", 3)
    assert rc == 3 and f"argv ['exit', '3'] cwd {project}" in out
    rc, out = call(server, "raise")
    assert rc == 1 and "ValueError: bad cell" in out and "Traceback" in out
    assert call(server, "kill")[0] == -signal.SIGKILL
    assert call(server, "nothing")[0] == 0


def test_each_cell_has_its_own_environment_and_atexit_runs(server):
    rc, out = call(server, "env", env={"CELL": "one"})
    assert rc == 0 and "env one None" in out  # the call's environment, not the server's
    assert "env two None" in call(server, "env", env={"CELL": "two"})[1]
    assert "atexit ran" in call(server, "atexit")[1]


def test_imports_once_in_the_server_and_cells_run_at_once(server, tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(call(server, "sleep", 3)))
               for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [rc for rc, _ in results] == [0, 0]
    pids = {line.split()[1] for _, out in results for line in out.splitlines()
            if line.startswith("pid")}
    assert len(pids) == 2 and str(server.proc.pid) not in pids
    starts = [float(line.split()[3]) for _, out in results for line in out.splitlines()
              if line.startswith("pid")]
    ends = [float(line.split()[1]) for _, out in results for line in out.splitlines()
            if line.startswith("end")]
    assert max(starts) < min(ends)  # they ran at the same time, not one after the other
    imports = (tmp_path / "imports.txt").read_text().split()
    assert imports == [str(server.proc.pid)]  # the preloaded module, imported by the server
    assert all(f"heavy {server.proc.pid}" in out for _, out in results)


def test_a_passed_descriptor_reaches_the_cell(server):
    r, w = os.pipe()
    try:
        assert call(server, "fd", w, pass_fds=(w,))[0] == 0
        os.close(w)
        assert os.read(r, 100) == b"through the passed descriptor"
    finally:
        os.close(r)


def test_a_cell_dies_with_the_server_and_run_train_falls_back(server, project, tmp_path):
    result = {}
    with tempfile.TemporaryFile("w+") as out:
        th = threading.Thread(target=lambda: result.update(
            rc=server.call(["sleep", "60"], dict(os.environ), out.fileno())))
        th.start()
        for _ in range(200):
            out.seek(0)
            lines = [x for x in out.read().splitlines() if x.startswith("pid")]
            if lines:
                break
            time.sleep(0.05)
        cell = int(lines[0].split()[1])
        os.kill(server.proc.pid, signal.SIGKILL)
        th.join(30)
    assert not th.is_alive() and result["rc"] is None and "died" in server.failure
    for _ in range(100):  # PR_SET_PDEATHSIG: the cell is killed, then reaped by init
        if not Path(f"/proc/{cell}").exists() or "Z" in _state(cell):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"cell {cell} outlived its server")
    with pytest.raises(ConnectionError):
        call(server, "nothing")
    # run_train starts a fresh Python instead: the same script, its own import of heavy
    out = executors.run_train(["exit", "4"], {"IMPORTS": str(tmp_path / "fresh.txt")},
                              str(project), "", server)
    assert out["rc"] == 4 and "heavy" in out["log"]


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_server_that_cannot_import_says_why(project, tmp_path):
    s = forkserver.ForkServer(project, dict(os.environ), preload=("no_such_module_here",))
    assert not s.start()
    assert "ModuleNotFoundError" in s.failure and "no_such_module_here" in s.failure


def test_available_follows_the_switch(monkeypatch):
    monkeypatch.setenv("CNA_TF_FORKSERVER", "0")
    assert not forkserver.available()
    monkeypatch.setenv("CNA_TF_FORKSERVER", "1")
    assert forkserver.available() == sys.platform.startswith("linux")
