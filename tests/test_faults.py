"""Killed runs and grids lose nothing and record nothing twice (SIGKILL at several moments)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
from _stores import sqlite_store  # noqa: E402

# suite cheap: the kills and resumes are what these test (the searches' resume: test_reference)
TINY = ["--width", "0.05", "--depth", "2", "--n_train", "300", "--n_test", "150",
        "--max_samples", "200", "--batch_size", "64", "--suite", "cheap"]


def _env(tmp_path, **kw):
    return dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
                TF_CPP_MIN_LOG_LEVEL="3", **kw)


def _client(env):
    import mlflow

    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


def _steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _killed_then_resumed(tmp_path, train_args, fault_env):
    """train.py in one run killed by tests/fault_train.py (``fault_env``), then the same
    command again: (client, run id, the backup, a function that runs the second process and
    returns it)."""
    env = _env(tmp_path)
    client = _client(env)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    backup = tmp_path / "backup"
    cmd = [sys.executable, str(ROOT / "pipelines" / "train.py"), *TINY, *train_args,
           "--backup_dir", str(backup)]
    first = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_train.py"), *cmd[2:]],
                           env=dict(env, MLFLOW_RUN_ID=run_id, **fault_env),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]

    def again():
        second = subprocess.run(cmd, env=dict(env, MLFLOW_RUN_ID=run_id), capture_output=True,
                                text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        return second
    return client, run_id, backup, again


@pytest.mark.slow
@pytest.mark.parametrize("kill_epoch, lose_backup", [
    (3, False),  # a light epoch
    (4, False),  # a snapshot epoch
    (6, False),  # the last epoch
    (1, True),   # no usable backup: the run restarts from scratch in place
])
def test_train_killed_after_backup_resumes_and_logs_each_epoch_once(tmp_path, kill_epoch,
                                                                     lose_backup):
    client, run_id, backup, again = _killed_then_resumed(
        tmp_path, ["--epochs", "6", "--snapshot_every", "2"],
        {"CNA_TF_KILL_AT_EPOCH": str(kill_epoch)})
    assert client.get_run(run_id).info.status == "RUNNING"   # what a kill leaves behind
    assert _steps(client, run_id, "cna_train") == list(range(kill_epoch))
    assert (backup / "training_metadata.json").exists()
    if lose_backup:
        import shutil
        shutil.rmtree(backup)

    again()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    if lose_backup:
        assert "cna_tf.resumed_from_epoch" not in run.data.tags
    else:
        assert run.data.tags["cna_tf.resumed_from_epoch"] == str(kill_epoch)
    assert _steps(client, run_id, "cna_train") == list(range(7))   # each epoch exactly once
    assert _steps(client, run_id, "gen_gap") == [0, 2, 4, 6]
    assert _steps(client, run_id, "bound_2018") == [0, 2, 4, 6]
    assert run.data.tags["cna_tf.snapshots"] == "0,2,4,6"   # the killed process's too
    assert not backup.exists()
    assert [a.path for a in client.list_artifacts(run_id, "cna")] == [
        "cna/alpha_beta_epoch6.csv", "cna/alpha_beta_epoch6.png"]


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["CNA_TF_KILL_IN_SUITE", "CNA_TF_KILL_IN_FINAL_SNAPSHOT"])
def test_train_killed_after_stop_loss_resumes_without_training_on(tmp_path, kill):
    """Killed during its final measures, after stop_loss ended training (in the suite, or in
    the CNA callback's final full snapshot, after that epoch's light measure was logged): the
    resumed run restores the epoch training stopped at and trains no further epoch (before the
    fix it trained one more: the conv gap study's two resumed cells,
    docs/results/gap_study_conv.md), and logs what the kill kept from MLflow once (before the
    second fix a kill in the snapshot left gen_gap and the rest of it unlogged)."""
    client, run_id, backup, again = _killed_then_resumed(
        tmp_path, ["--epochs", "40", "--stop_loss", "1.5", "--snapshot_every", "0"],
        {kill: "1"})
    stopped = _steps(client, run_id, "cna_train")[-1]
    assert 1 <= stopped < 40
    assert _steps(client, run_id, "cna_train") == list(range(stopped + 1))
    if kill == "CNA_TF_KILL_IN_SUITE":
        assert client.get_run(run_id).data.tags["cna_tf.stopped_at_epoch"] == str(stopped)
    else:  # the window the kill was meant for: the stop epoch's light values, not its full
        assert _steps(client, run_id, "gen_gap") == [0]

    assert "no more epochs" in again().stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["cna_tf.resumed_from_epoch"] == str(stopped)
    assert run.data.tags["cna_tf.stopped_at_epoch"] == str(stopped)     # not one epoch more
    assert run.data.tags["cna_tf.converged"] == "true"
    assert _steps(client, run_id, "cna_train") == list(range(stopped + 1))   # each once
    assert _steps(client, run_id, "gen_gap") == [0, stopped]
    assert _steps(client, run_id, "l2_norm") == [stopped]    # the suite ran on the resume
    assert _steps(client, run_id, "sum_of_fro") == [0, stopped]   # the callback's, not again
    assert _steps(client, run_id, "converged") == [stopped]
    assert run.data.tags["cna_tf.snapshots"] == f"0,{stopped}"
    assert [a.path for a in client.list_artifacts(run_id, "cna")] == [
        f"cna/alpha_beta_epoch{stopped}.csv", f"cna/alpha_beta_epoch{stopped}.png"]
    assert not backup.exists()


def _write_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\n"
        "defaults: {dataset: digits, epochs: 4, snapshot_every: 2, batch_size: 64,"
        " n_train: 300, n_test: 150, max_samples: 200, depth: 2, arch: mlp, suite: cheap}\n"
        "cells:\n"
        "  - {width: [0.05, 0.1], seed: [0, 1]}\n")
    return config


def _grid(config, tmp_path, env):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "pipelines" / "grid.py"), "--config", str(config),
         "--workers", "1", "--experiment", "faults", "--backup_root", str(tmp_path / "bk")],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def _children(client):
    exp = client.get_experiment_by_name("faults")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")


def _wait(pred, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.2)
    raise AssertionError("condition not reached")


@pytest.mark.slow
def test_grid_killed_mid_cell_and_between_cells_finishes_each_cell_once(tmp_path):
    """SIGKILL the whole grid (its cell processes too) during training, then between cells."""
    env = _env(tmp_path)
    client = _client(env)
    config = _write_config(tmp_path)
    _, grid_cells = cells.load_config(str(config))
    want = {cells.cell_key(c) for c in grid_cells}

    # 1. during training: a cell has logged epoch 1 but is not finished
    proc = _grid(config, tmp_path, env)

    def training():
        return any(r.info.status == "RUNNING" and
                   max(_steps(client, r.info.run_id, "cna_train") or [-1]) >= 1
                   for r in _children(client))
    _wait(training)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(r.info.status == "RUNNING" for r in _children(client))

    # 2. between cells: right after a cell finished
    proc = _grid(config, tmp_path, env)
    _wait(lambda: sum(r.info.status == "FINISHED" for r in _children(client)) >= 1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # 3. to the end
    proc = _grid(config, tmp_path, env)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming grid run" in out
    kids = _children(client)
    keys = [r.data.tags["cna_tf.cell_key"] for r in kids]
    assert sorted(keys) == sorted(want)                    # each configured cell exactly once
    assert all(r.info.status == "FINISHED" for r in kids)
    for r in kids:
        assert _steps(client, r.info.run_id, "cna_train") == [0, 1, 2, 3, 4]
        assert _steps(client, r.info.run_id, "gen_gap") == [0, 2, 4]
        # a finished cell carries no failure; one resumed after the kill says what stopped it
        assert "cna_tf.failure" not in r.data.tags, r.data.tags
        if "cna_tf.resumed_from_epoch" in r.data.tags:
            assert r.data.tags["cna_tf.interrupted"].startswith("killed"), r.data.tags
    grids = client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                               "tags.`cna_tf.role` = 'grid'")
    assert len(grids) == 1
    # the killed cell's runs: resumed in place from its backup, or deleted and replaced
    deleted = client.search_runs([grids[0].info.experiment_id], "tags.`cna_tf.role` = 'train'",
                                 run_view_type=2)  # ViewType.DELETED_ONLY
    assert all(r.data.tags["cna_tf.cell_key"] in want for r in deleted)


@pytest.mark.slow
def test_a_new_run_never_resumes_another_runs_backup(tmp_path):
    """A crashed run's backup (same cell, same folder) is discarded by a fresh run of the cell."""
    env = _env(tmp_path)
    client = _client(env)
    exp = client.create_experiment("foreign")
    crashed = client.create_run(exp).info.run_id
    backup = tmp_path / "backup"
    args = [*TINY, "--epochs", "4", "--snapshot_every", "2", "--backup_dir", str(backup)]
    first = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_train.py"), *args],
                           env=dict(env, MLFLOW_RUN_ID=crashed, CNA_TF_KILL_AT_EPOCH="2"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (backup / "training_metadata.json").exists()
    fresh = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py"), *args],
                           env=dict(env, MLFLOW_EXPERIMENT_ID=exp), capture_output=True,
                           text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"discarded the backup in {backup}: run {crashed} wrote it" in fresh.stdout
    runs = [r for r in client.search_runs([exp]) if r.info.run_id != crashed]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "cna_tf.resumed_from_epoch" not in runs[0].data.tags
    assert _steps(client, runs[0].info.run_id, "cna_train") == list(range(5))  # from epoch 0
    assert _steps(client, crashed, "cna_train") == [0, 1]  # the crashed run is left as it was


def test_backup_is_owned_by_the_run_that_wrote_it(tmp_path):
    import backup as backup_store

    d = tmp_path / "cell"
    assert backup_store.claim(d, "run-a") is False and backup_store.owner(d) == "run-a"
    (d / "training_metadata.json").write_text("{}")  # an epoch backed up by run-a
    assert backup_store.has_backup(d) and backup_store.has_backup(d, "run-a")
    assert not backup_store.has_backup(d, "run-b")
    assert backup_store.claim(d, "run-a") is True                      # run-a resumes
    assert backup_store.claim(d, "run-b") is False                     # run-b starts fresh
    assert backup_store.owner(d) == "run-b" and not (d / "training_metadata.json").exists()
