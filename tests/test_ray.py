"""The grid's ray backend: against a real Ray head on 127.0.0.1, with a worker killed mid-cell.

The slow tests start ``ray start --head --block`` (2 CPUs) in its own process group, run a tiny
grid through it (4 cells that train, 1 whose loss becomes NaN), SIGKILL the Ray worker process
running one cell in the middle of its training, and check what the store holds: every cell
once, the killed one retried by Ray in the same run and resumed from its backup, every epoch
logged once, the NaN cell FAILED with its reason. The head is stopped by signalling its process
group (not ``ray stop``, which would stop every Ray runtime of the machine).
"""
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
from params import read_params  # noqa: E402
from _stores import sqlite_store  # noqa: E402

TINY = ("defaults: {arch: mlp, dataset: digits, width: 0.05, depth: 2, batch_size: 64,"
        " n_train: 300, n_test: 150, max_samples: 200, snapshot_every: 2, suite: cheap}\n")
CONFIG = ("name: raytiny\n" + TINY + "cells:\n"
          "  - {epochs: 4, seed: 0}\n"  # its Ray worker is killed (snapshots 0, 2, 4)
          "  - {epochs: 3, seed: 1}\n"
          "  - {epochs: 2, seed: 2}\n"
          "  - {epochs: 2, width: 0.1}\n"
          "  - {epochs: 2, seed: 3, lr: 1.0e9}\n")  # NaN loss: FAILED, the grid goes on


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# -- a real Ray head ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray")
    gcs, client_port, dash, agent, agent_grpc, env_agent, metrics = _free_ports(7)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are bounded
    # Token authentication, with this head's own token: explicit, so that neither a token in
    # ~/.ray (which makes `ray start` enable it) nor its absence changes the test.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = open(Path(temp) / "head.log", "w+")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={gcs}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp}",
         f"--ray-client-server-port={client_port}", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **auth))
    try:
        t = time.time()
        while "Ray runtime started" not in Path(log.name).read_text(errors="replace"):
            if head.poll() is not None or time.time() - t > 180:
                raise AssertionError("ray head did not start:\n"
                                     + Path(log.name).read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        yield f"127.0.0.1:{gcs}", auth
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(proc):
    """SIGTERM the head's process group (ray start --block shuts its processes down), then KILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    t = time.time()
    while time.time() - t < 5:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- processes, from /proc (Linux) ----------------------------------------------------------------

def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _ppid_state(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _train_process(key, backup_root):
    """pid of the train.py running cell `key` of this test's grid (its backup dir is ours)."""
    want = str(Path(backup_root) / key).encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            args = _cmdline(d.name)
            if any(a.endswith(b"pipelines/train.py") for a in args) and want in args:
                return int(d.name)
    return None


def _dead(pid):
    _, state = _ppid_state(pid)
    return state in (None, "Z", "X")


# -- the grid, with a worker killed mid-cell --------------------------------------------------------

@pytest.fixture(scope="module")
def ray_grid(ray_head, tmp_path_factory):
    import mlflow

    d = tmp_path_factory.mktemp("raygrid")
    config = d / "raytiny.yaml"
    config.write_text(CONFIG)
    _, grid_cells = cells.load_config(str(config))
    victim = next(cells.cell_key(c) for c in grid_cells if c["epochs"] == 4)
    backup_root = d / "backup"
    address, auth = ray_head
    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(d / "mlflow.db"),
               TF_CPP_MIN_LOG_LEVEL="3", **auth)
    env.pop("RAY_ADDRESS", None)
    out_path = d / "grid.out"
    t0 = time.time()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "pipelines" / "grid.py"), "--config", str(config),
             "--backend", "ray", "--ray_address", address, "--workers", "2",
             "--experiment", "raygrid", "--backup_root", str(backup_root)],
            env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT)
    killed = {}
    try:
        # Kill while the victim measures CNA just after a complete backup of epoch 2 or 4 (the
        # weights written, then the metadata): a kill at any moment is retried by Ray, but
        # Keras' BackupAndRestore writes its weights file in place, so a kill during that write
        # would leave a backup train.py cannot resume from.
        meta = backup_root / victim / "training_metadata.json"
        weights = backup_root / victim / "latest.weights.h5"
        deadline = time.time() + 400
        while not killed and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
            try:
                m, w = meta.stat().st_mtime_ns, weights.stat().st_mtime_ns
                epoch = json.loads(meta.read_text())["epoch"]
            except (OSError, ValueError, KeyError):
                continue
            if epoch not in (2, 4) or m < w or time.time_ns() - m > 200_000_000:
                continue
            pid = _train_process(victim, backup_root)
            worker = _ppid_state(pid)[0] if pid else None
            worker_cmd = (_cmdline(worker) or [b""])[0] if worker else b""
            if not worker_cmd.startswith(b"ray::"):
                continue
            os.kill(worker, signal.SIGKILL)
            killed = {"train_pid": pid, "worker_pid": worker, "epoch": epoch,
                      "worker_cmd": worker_cmd.decode(errors="replace")}
        if killed:  # the worker's train.py dies with it (PR_SET_PDEATHSIG)
            t = time.time()
            while not _dead(killed["train_pid"]) and time.time() - t < 30:
                time.sleep(0.1)
            killed["train_died"] = _dead(killed["train_pid"])
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    return types.SimpleNamespace(
        client=client, rc=proc.returncode, out=out_path.read_text(errors="replace"),
        cells=grid_cells, victim=victim, killed=killed, seconds=time.time() - t0,
        experiment_id=client.get_experiment_by_name("raygrid").experiment_id)


def _grid_and_children(g, view=1):
    grids = g.client.search_runs([g.experiment_id], "tags.`cna_tf.role` = 'grid'")
    assert len(grids) == 1
    kids = g.client.search_runs([g.experiment_id], "tags.`cna_tf.role` = 'train'",
                                run_view_type=view, max_results=1000)
    return grids[0], kids


@pytest.mark.slow
def test_ray_worker_killed_mid_cell_is_retried_and_every_cell_recorded_once(ray_grid):
    g = ray_grid
    print(f"ray grid: {g.seconds:.0f}s, killed {g.killed}")
    assert g.rc == 0, g.out[-4000:]
    assert g.killed, "the victim's worker was never killed:\n" + g.out[-3000:]
    assert g.killed["worker_cmd"].startswith("ray::cna_tf-cell")
    assert g.killed["train_died"], "train.py outlived its killed Ray worker"
    parent, kids = _grid_and_children(g, view=3)  # ViewType.ALL: deleted runs too
    assert parent.data.params["backend"] == "ray"
    assert parent.data.metrics == {"cells_finished": 4.0, "cells_failed": 1.0}
    assert all(r.info.lifecycle_stage == "active" for r in kids)  # none deleted and replaced
    keys = [r.data.tags["cna_tf.cell_key"] for r in kids]
    assert sorted(keys) == sorted(cells.cell_key(c) for c in g.cells)  # each key exactly once
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in kids)
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert len(finished) == 4
    for r in finished:
        epochs = int(r.data.params["epochs"])
        assert r.data.tags["cna_tf.cell_key"] == cells.cell_key(read_params(r.data.params))
        assert r.data.tags["arch"] == "mlp" and r.data.tags["dataset"] == "digits"
        assert _steps(g.client, r.info.run_id, "cna_train") == list(range(epochs + 1))
        assert _steps(g.client, r.info.run_id, "cna_test") == list(range(epochs + 1))
        snaps = sorted({0, epochs, *range(0, epochs + 1, 2)})
        assert _steps(g.client, r.info.run_id, "gen_gap") == snaps
        assert len(g.client.get_metric_history(r.info.run_id, "train_seconds")) == 1
        assert [a.path for a in g.client.list_artifacts(r.info.run_id, "logs")] == [
            "logs/train.log"]
    victim = next(r for r in kids if r.data.tags["cna_tf.cell_key"] == g.victim)
    assert victim.info.status == "FINISHED"
    # the retry ran train.py again in the same run, which resumed from the cell's backup
    assert victim.data.tags["cna_tf.resumed_from_epoch"] == str(g.killed["epoch"])
    log = Path(g.client.download_artifacts(victim.info.run_id, "logs/train.log",
                                           tempfile.mkdtemp()))
    assert "resuming cell" in log.read_text()


@pytest.mark.slow
def test_ray_nan_cell_is_failed_with_its_reason_and_the_grid_goes_on(ray_grid):
    g = ray_grid
    assert g.rc == 0, g.out[-4000:]
    _, kids = _grid_and_children(g)
    failed = [r for r in kids if r.info.status != "FINISHED"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert float(failed[0].data.params["lr"]) == 1e9
    reason = failed[0].data.tags["cna_tf.failure"]
    assert reason.startswith("FloatingPointError: training loss became nan at epoch 1")
    assert "FAILED" in g.out and "failed cells (re-run the grid to retry them)" in g.out
    assert "[5/5]" in g.out and "ETA" in g.out


# -- without a cluster ------------------------------------------------------------------------------

def test_ray_backend_without_ray_says_how_to_install(tmp_path, monkeypatch):
    import grid as grid_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ValueError, match=r'backend ray needs Ray.*pip install "cna_tf\[ray\]"'):
        grid_step.Grid("x", [], "x", tmp_path, "ray")


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay(types.ModuleType):
    """Records what the grid asks of Ray; a task marks its run finished instead of training."""

    def __init__(self, uri):
        super().__init__("ray")
        import mlflow

        self.client = mlflow.MlflowClient(uri)
        self.inits, self.options, self.calls = [], [], []
        self.cloudpickle = types.SimpleNamespace(register_pickle_by_value=lambda m: None)

    def init(self, **kw):
        self.inits.append(kw)

    def cluster_resources(self):
        return {"CPU": 2.0}

    def shutdown(self):
        pass

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                fake.options.append(kw)
                return self

            def remote(self, args, env, project_dir, lock_path):
                run = fake.client.get_run(env["MLFLOW_RUN_ID"])
                fake.calls.append((args, env, run.info.status, lock_path))
                fake.client.set_terminated(run.info.run_id, "FINISHED")
                return _Ref({"rc": 0, "log": "ok\n", "seconds": 0.0})
        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value


def test_ray_tasks_declare_resources_and_run_train_in_the_drivers_child_runs(tmp_path,
                                                                            monkeypatch):
    import mlflow

    import grid as grid_step

    uri = sqlite_store(tmp_path / "m.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    fake = _FakeRay(uri)
    monkeypatch.setitem(sys.modules, "ray", fake)
    _, grid_cells = cells.load_config({"cells": [{"arch": "mlp", "width": [0.1, 0.2, 0.3]}]})
    runs = []
    for address, workers in (("", 3), ("ray://head:10001", 2)):
        g = grid_step.Grid("fake", grid_cells, f"fake-{workers}", tmp_path / "bk", "ray",
                           ray_address=address, ray_cpus_per_cell=2, ray_gpus_per_cell=1,
                           ray_max_retries=5)
        try:
            assert g.run(workers=workers) == {"cells_finished": 3, "cells_failed": 0}
        finally:
            while mlflow.active_run():
                mlflow.end_run()
        runs.append(g)
    # empty address: a new local runtime with CPUs for `workers` cells; else join the cluster
    assert fake.inits[0]["address"] == "local" and fake.inits[0]["num_cpus"] == 6
    assert fake.inits[1]["address"] == "ray://head:10001" and "num_cpus" not in fake.inits[1]
    for kw in fake.options:
        assert (kw["num_cpus"], kw["num_gpus"], kw["max_retries"]) == (2, 1, 5)
        assert kw["retry_exceptions"] is False  # a failed training is a result, not retried
    assert len(fake.calls) == 6
    for g, calls in zip(runs, (fake.calls[:3], fake.calls[3:])):
        kids = g.client.search_runs([g.experiment_id], f"tags.mlflow.parentRunId = '{g.parent_id}'")
        assert len(kids) == 3
        by_id = {r.info.run_id: r for r in kids}
        for args, env, status, lock in calls:
            assert status == "SCHEDULED"  # created by the driver before submission
            run = by_id[env["MLFLOW_RUN_ID"]]
            key = run.data.tags["cna_tf.cell_key"]
            assert args[args.index("--cell_key") + 1] == key
            assert args[args.index("--parent_run_id") + 1] == g.parent_id
            assert args[args.index("--backup_dir") + 1] == str(tmp_path / "bk" / key)
            assert env["MLFLOW_TRACKING_URI"] == uri and lock == str(tmp_path / "bk" / f"{key}.lock")


def test_mlproject_grid_passes_the_ray_parameters():
    from mlflow.projects._project_spec import load_project

    grid = load_project(str(ROOT)).get_entry_point("grid")
    assert {"ray_address", "ray_cpus_per_cell", "ray_gpus_per_cell",
            "ray_max_retries"} <= set(grid.parameters)
    cmd = grid.compute_command({"backend": "ray", "ray_address": "ray://head:10001",
                                "ray_gpus_per_cell": 1}, storage_dir=None)
    assert "--backend ray" in cmd and "--ray_address ray://head:10001" in cmd
    assert "--ray_gpus_per_cell 1" in cmd and "--ray_cpus_per_cell 1" in cmd
    assert "--ray_max_retries 3" in cmd
    import grid as grid_step

    args = grid_step.parse_args(["--backend", "ray", "--ray_address", "", "--ray_gpus_per_cell",
                                 "1.0", "--ray_cpus_per_cell", "1.0"])
    assert (args.ray_address, args.ray_gpus_per_cell, args.ray_max_retries) == ("", 1.0, 3)


def test_a_retry_waits_for_the_earlier_train_py_and_never_retrains_a_finished_cell(tmp_path):
    """A train.py that outlived its worker holds the cell's lock; the retry waits for it."""
    import fcntl

    import mlflow

    import executors

    uri = sqlite_store(tmp_path / "m.db")
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("lock")).info.run_id
    lock = tmp_path / "bk" / "cell.lock"
    lock.parent.mkdir()
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # the orphaned train.py of the killed attempt
    result = {}
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri}
    t = threading.Thread(target=lambda: result.update(executors.run_train(
        ["--epochs", "not-a-number"], env, str(ROOT), str(lock))))
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and not result  # waiting for the lock
    client.set_terminated(run_id, "FINISHED")  # the orphan finished the cell, then exits
    os.close(held)
    t.join(60)
    assert result["rc"] == 0 and "not trained again" in result["log"]


def test_mlproject_main_passes_the_ray_parameters_to_the_grid():
    from mlflow.projects._project_spec import load_project

    import main as main_step

    project = load_project(str(ROOT))
    main_ep, grid_ep = project.get_entry_point("main"), project.get_entry_point("grid")
    cmd = main_ep.compute_command({"backend": "ray", "ray_address": "ray://head:10001",
                                   "ray_gpus_per_cell": 1, "ray_max_retries": 2},
                                  storage_dir=None)
    argv = shlex.split(cmd)[2:]  # after "python pipelines/main.py"
    params = main_step.grid_parameters(main_step.parse_args(argv))
    assert params["backend"] == "ray" and params["ray_address"] == "ray://head:10001"
    assert (params["ray_gpus_per_cell"], params["ray_cpus_per_cell"],
            params["ray_max_retries"]) == (1.0, 1.0, 2)
    # every parameter main hands the grid is one the grid entry point declares
    assert set(params) <= set(grid_ep.parameters)
    grid_cmd = grid_ep.compute_command(params, storage_dir=None)
    assert "--ray_address ray://head:10001" in grid_cmd and "--ray_max_retries 2" in grid_cmd
