"""The grid looks up its data before it trains: the missing-data stop and ``dry_run``'s plan.

Every test points the Keras cache and the cna_tf data folder at empty temporary folders, so
only the bundled and generated datasets are found; nothing is trained or downloaded.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
import grid as grid_step  # noqa: E402
import main as main_step  # noqa: E402
from _stores import sqlite_store  # noqa: E402

# 2 digits cells, 3 cifar10 cells, 1 svhn cell, 1 imagenet32 cell
CONFIG = (
    "name: mixed\n"
    "defaults: {epochs: 1, batch_size: 64}\n"
    "cells:\n"
    "  - {arch: mlp, dataset: digits, seed: [0, 1]}\n"
    "  - {arch: mlp, dataset: cifar10, seed: [0, 1, 2]}\n"
    "  - {arch: mlp, dataset: svhn}\n"
    "  - {arch: vgg18, dataset: imagenet32}\n")


@pytest.fixture
def nodata(tmp_path, monkeypatch):
    """No dataset files anywhere; a fresh store; the config file."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("CNA_TF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "mlflow.db"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    config = tmp_path / "mixed.yaml"
    config.write_text(CONFIG)
    return config


def test_data_status_counts_the_cells_of_each_dataset(nodata):
    _, every = cells.load_config(str(nodata))
    status = grid_step.data_status(every)
    assert list(status) == ["digits", "cifar10", "svhn", "imagenet32"]
    assert {d: n for d, (_, n) in status.items()} == {"digits": 2, "cifar10": 3, "svhn": 1,
                                                       "imagenet32": 1}
    assert status["digits"][0] == "bundled with scikit-learn"
    assert [d for d, (where, _) in status.items() if where is None] == ["cifar10", "svhn",
                                                                        "imagenet32"]


def test_missing_data_stops_the_grid_before_anything_is_made(nodata, tmp_path):
    import mlflow

    with pytest.raises(SystemExit) as stop:
        grid_step.main(["--config", str(nodata)])
    msg = str(stop.value.code)
    assert msg.splitlines()[0] == ("grid 'mixed': 3 of its 4 datasets are not on this machine; "
                                   "nothing was trained:")
    assert "  cifar10: 3 of 7 cells\n  svhn: 1 of 7 cells\n  imagenet32: 1 of 7 cells" in msg
    assert "fetch them: python -m cna_tf.data.fetch cifar10 svhn" in msg
    assert "python -m cna_tf.data.fetch imagenet32` says what to download" in msg
    assert "-P datasets=digits" in msg
    # nothing was made: no experiment, no run
    assert mlflow.MlflowClient().get_experiment_by_name("cna_tf-mixed") is None


def test_a_ray_cluster_only_warns(nodata, monkeypatch, capsys):
    """The cells run on the cluster's nodes, whose disks the driver cannot see."""
    stop = RuntimeError("past the data check")

    def grid(*args, **kwargs):
        raise stop

    monkeypatch.setattr(grid_step, "Grid", grid)
    with pytest.raises(RuntimeError, match="past the data check"):
        grid_step.main(["--config", str(nodata), "--backend", "ray",
                        "--ray_address", "ray://head:10001"])
    assert "warning: grid 'mixed'" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_the_finished_cells(nodata, capsys):
    import mlflow

    from cna_tf.tracking import TAG_PREFIX as TAG

    _, every = cells.load_config(str(nodata))
    keys = [cells.cell_key(c) for c in every]
    # a grid run of these cells in the store, with one cell FINISHED and one FAILED
    client = mlflow.MlflowClient()
    exp = client.create_experiment("cna_tf-mixed")
    parent = client.create_run(exp, tags={TAG + "grid_key": grid_step.grid_key(keys),
                                          TAG + "role": "grid"}).info.run_id
    for key, status in ((keys[1], "FINISHED"), (keys[2], "FAILED")):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, TAG + "cell_key": key})
        client.set_terminated(run.info.run_id, status)
    runs_before = len(client.search_runs([exp]))
    assert grid_step.main(["--config", str(nodata), "--dry_run", "true"]) == ""
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dry run of grid 'mixed': 7 cells; nothing is trained"
    assert out[1].startswith("  1. to train  mlp/digits") and out[1].endswith(f"[{keys[0]}]")
    assert out[2].startswith("  2. finished  mlp/digits")
    assert out[3].startswith("  3. no data   mlp/cifar10")
    assert out[8] == "data:"
    assert out[9:13] == ["  digits: 2 cells, here: bundled with scikit-learn",
                         "  cifar10: 3 cells, MISSING", "  svhn: 1 cell, MISSING",
                         "  imagenet32: 1 cell, MISSING"]
    assert out[13] == "  fetch them: python -m cna_tf.data.fetch cifar10 svhn"
    assert out[-1].endswith(f"grid run {parent} in experiment 'cna_tf-mixed'; 1 of 7 cells "
                            "finished (a real run skips them), 6 to train")
    # nothing changed in the store: the failed cell was not touched, no run was made
    assert len(client.search_runs([exp])) == runs_before
    # only the cells of the datasets asked for
    grid_step.main(["--config", str(nodata), "--dry_run", "true", "--datasets", "digits"])
    out = capsys.readouterr().out
    assert "MISSING" not in out and "2 cells; nothing is trained" in out


def test_grid_and_main_declare_dry_run():
    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT))
    for entry in ("grid", "main"):
        declared = project.get_entry_point(entry).parameters["dry_run"]
        assert (declared.type, declared.default) == ("bool", "false")
        cmd = project.get_entry_point(entry).compute_command({"dry_run": "true"}, None)
        assert "--dry_run true" in cmd
    args = main_step.parse_args(["--config", "paper", "--dry_run", "true"])
    assert main_step.grid_parameters(args)["dry_run"] == "true"
    assert grid_step.parse_args(["--dry_run", "false"]).dry_run is False


@pytest.mark.slow
def test_the_documented_dry_run_prints_the_plan(tmp_path):
    """README's and docs/pipelines.md's `mlflow run . -e grid -P config=paper -P dry_run=true`,
    as written, with an empty HOME (so only the generated Gaussian noise is here); the stop it
    would make without dry_run is the in-process test's above (the same main)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "CNA_TF_", "KERAS_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               TF_CPP_MIN_LOG_LEVEL="3")
    command = "mlflow run . --env-manager local -e grid -P config=paper -P dry_run=true"
    dry = subprocess.run(command.split(), cwd=ROOT, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout
    assert "dry run of grid 'paper': 102 cells; nothing is trained" in out
    assert "  mnist: 19 cells, MISSING" in out and "  gaussian: 4 cells, here: generated" in out
    assert "  imagenet32: 3 cells, MISSING" in out
    assert ("  fetch them: python -m cna_tf.data.fetch mnist fashion_mnist svhn cifar10 "
            "cifar100") in out
    assert "no run of this grid in experiment 'Default' yet; 0 of 102 cells finished" in out
    # the run `mlflow run` made is marked as the dry run it was
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.data.tags["cna_tf.role"] == "grid-dry-run" and run.data.params["dry_run"] == "true"
