"""The `train` step's `stop_loss` (Jiang et al.'s stopping rule) and `flatness` parameters, on a
tiny grid of two digits cells run through pipelines/train.py; the mnist_hparams config."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
from _stores import sqlite_store  # noqa: E402

FLATNESS_KEYS = {"pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness",
                 "pacbayes_sigma", "pacbayes_mag_sigma", "sharpness_mag_alpha"}


def test_new_parameters_keep_old_cell_keys_and_change_new_ones():
    old = {"arch": "mlp", "width": 0.5, "epochs": 3}
    key = cells.cell_key(old)
    assert cells.cell_key({**old, "stop_loss": 0.0, "flatness": False}) == key
    assert cells.cell_key({**old, "stop_loss": 0.01}) != key
    assert cells.cell_key({**old, "flatness": True}) != key
    with pytest.raises(cells.ConfigError, match="stop_loss must be >= 0"):
        cells.normalize({"stop_loss": -1})


def test_mnist_hparams_is_a_complete_16_network_grid():
    name, grid = cells.load_config("mnist_hparams")
    assert name == "mnist_hparams" and len(grid) == 16
    axes = ("depth", "width", "lr", "batch_size")
    values = {a: sorted({c[a] for c in grid}) for a in axes}
    assert all(len(v) == 2 for v in values.values())
    assert {tuple(c[a] for a in axes) for c in grid} == set(itertools.product(*values.values()))
    for c in grid:  # everything else is one value: the four axes are the grid's hparams
        assert (c["arch"], c["dataset"], c["stop_loss"], c["flatness"]) == \
            ("mlp", "mnist", 0.01, True)
        assert c["epochs"] > 1 and c["final_only"] is True  # one instance: the final snapshot
    assert len({cells.cell_key(c) for c in grid}) == 16
    demo = cells.load_config("demo")[1]
    assert not any(c["flatness"] or c["stop_loss"] for c in demo)  # the demo keeps its budget


def _train(args, env):
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py"), *args],
                          env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_stop_loss_and_flatness_through_train_py(tmp_path):
    import mlflow

    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
               TF_CPP_MIN_LOG_LEVEL="3", CNA_TF_BACKUP_DIR=str(tmp_path / "backup"))
    env.pop("MLFLOW_RUN_ID", None)
    common = ["--dataset", "digits", "--arch", "mlp", "--width", "0.1", "--depth", "2",
              "--batch_size", "32", "--n_train", "300", "--n_test", "150", "--max_samples",
              "150", "--snapshot_every", "0", "--lr", "0.05",
              "--suite", "none"]  # §8's flatness alone: with the suite its forms are §12's
    # cell 1: Jiang's rule with a loose threshold stops well before the 40-epoch maximum;
    # cell 2: the defaults (no rule, no flatness) train every epoch
    stopped = _train(common + ["--epochs", "40", "--stop_loss", "0.3", "--flatness", "true"], env)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    plain = _train(common + ["--epochs", "3"], env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    # cell 3: a threshold two epochs cannot reach: the run did not converge
    short = _train(common + ["--epochs", "2", "--stop_loss", "0.0001"], env)
    assert short.returncode == 0, short.stderr[-3000:]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`cna_tf.role` = 'train'")
    by_stop = {r.data.params["stop_loss"]: r for r in runs}
    assert set(by_stop) == {"0.3", "0.0", "0.0001"}

    r = by_stop["0.3"]
    end = int(r.data.tags["cna_tf.stopped_at_epoch"])
    assert 1 <= end < 40
    loss = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "loss")}
    assert max(loss) == end and loss[end] <= 0.3                # stopped at the first epoch
    assert all(loss[e] > 0.3 for e in loss if e < end)          # whose loss met the rule
    # the final snapshot is measured at the epoch training stopped (a network instance)
    assert r.data.tags["cna_tf.snapshots"] == f"0,{end}"
    # it reached stop_loss: tag and metric (at the final snapshot's step) say so
    assert r.data.tags["cna_tf.converged"] == "true"
    assert [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "converged")] \
        == [(end, 1.0)]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "gen_gap")] == [0, end]
    for k in FLATNESS_KEYS | {"flatness_seconds"}:
        h = client.get_metric_history(r.info.run_id, k)
        assert [m.step for m in h] == [end] and h[0].value > 0, k
    assert 0 < r.data.metrics["pacbayes_sigma"] < 2
    assert r.data.metrics["pacbayes_flatness"] == pytest.approx(
        1 / r.data.metrics["pacbayes_sigma"] ** 2)
    assert r.data.metrics["flatness_seconds"] >= r.data.metrics["pacbayes_flatness_seconds"]

    r = by_stop["0.0001"]
    assert r.data.tags["cna_tf.converged"] == "false" and r.data.metrics["converged"] == 0.0
    assert "cna_tf.stopped_at_epoch" not in r.data.tags

    r = by_stop["0.0"]   # no stop_loss: no criterion to reach, no flag
    assert "cna_tf.stopped_at_epoch" not in r.data.tags
    assert "cna_tf.converged" not in r.data.tags and "converged" not in r.data.metrics
    assert r.data.tags["cna_tf.snapshots"] == "0,3"
    assert not FLATNESS_KEYS & set(r.data.metrics)
