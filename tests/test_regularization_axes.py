"""Jiang et al.'s weight-decay and dropout axes (issue 26 item 3): `models.build`'s
``weight_decay`` / ``dropout``, the `train` step's parameters of the same names, their cell keys,
and the stopping rule under weight decay (it reads the cross-entropy, not the penalized loss)."""
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import cna_tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
import executors  # noqa: E402
from _stores import sqlite_store  # noqa: E402


def _kernels(model):
    return [layer.kernel for layer in model.layers
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]


@pytest.mark.parametrize("arch,shape", [("mlp", (8, 8)), ("vgg18", (8, 8, 1)),
                                        ("resnet18", (8, 8, 1))])
def test_weight_decay_is_l2_on_every_kernel_only(arch, shape):
    wd = 3e-3
    model = cna_tf.models.build(arch, shape, 10, width=0.0625 if arch != "mlp" else 0.05,
                                seed=0, weight_decay=wd)
    plain = cna_tf.models.build(arch, shape, 10, width=0.0625 if arch != "mlp" else 0.05,
                                seed=0)
    kernels = _kernels(model)
    assert len(model.losses) == len(kernels) and not plain.losses
    expected = wd * sum(float(np.sum(np.asarray(k, dtype=np.float64) ** 2)) for k in kernels)
    got = float(sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses))
    assert got == pytest.approx(expected, rel=1e-5)
    # the same seed gives the same initial kernels with or without the penalty
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dropout_after_every_hidden_dense_and_identity_at_inference():
    x = np.random.default_rng(0).random((16, 8, 8)).astype("float32")
    model = cna_tf.models.build("mlp", (8, 8), 10, width=0.05, depth=3, seed=0, dropout=0.5)
    plain = cna_tf.models.build("mlp", (8, 8), 10, width=0.05, depth=3, seed=0)
    names = [layer.name for layer in model.layers]
    assert names == ["image", "flatten", "dense1", "dropout1", "dense2", "dropout2", "dense3",
                     "dropout3", "classifier"]
    assert all(model.get_layer(f"dropout{i}").rate == 0.5 for i in (1, 2, 3))
    np.testing.assert_allclose(model.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-6)
    # in training mode it drops units: the outputs differ
    assert not np.allclose(keras.ops.convert_to_numpy(model(x, training=True)),
                           plain.predict(x, verbose=0))
    # the probe sees the same affine layers, dropout or not
    assert cna_tf.ActivationProbe(model).layer_names == ["dense1", "dense2", "dense3"]
    np.testing.assert_allclose(cna_tf.ActivationProbe(model).layer_sums(x),
                               cna_tf.ActivationProbe(plain).layer_sums(x), rtol=1e-5)
    vgg = cna_tf.models.build("vgg18", (8, 8, 1), 10, width=0.0625, dropout=0.25)
    assert [layer.name for layer in vgg.layers][-3:] == ["fc", "fc_dropout", "classifier"]


def test_bad_weight_decay_and_dropout_are_clear_errors():
    with pytest.raises(ValueError, match="resnet18 has no place for dropout"):
        cna_tf.models.build("resnet18", (8, 8, 1), 10, dropout=0.2)
    cna_tf.models.build("resnet18", (8, 8, 1), 10, width=0.0625, dropout=0.0)  # 0: nothing
    with pytest.raises(ValueError, match="dropout must be a rate in"):
        cna_tf.models.build("mlp", (8, 8), 10, dropout=1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        cna_tf.models.build("mlp", (8, 8), 10, weight_decay=-1e-4)
    with pytest.raises(cells.ConfigError, match="resnet18 has no place for dropout"):
        cells.normalize({"arch": "resnet18", "dropout": 0.1})
    with pytest.raises(cells.ConfigError, match="weight_decay must be >= 0"):
        cells.normalize({"weight_decay": -0.1})
    with pytest.raises(cells.ConfigError, match="dropout must be a rate"):
        cells.normalize({"dropout": 1.5})


def test_new_axes_enter_the_cell_key_only_when_set():
    old = {"arch": "mlp", "width": 0.5, "epochs": 3}
    key = cells.cell_key(old)
    assert cells.cell_key({**old, "weight_decay": 0.0, "dropout": 0.0}) == key
    assert cells.cell_key({**old, "weight_decay": 1e-4}) != key
    assert cells.cell_key({**old, "dropout": 0.2}) != key
    assert "weight_decay" in cells.AXES and "dropout" in cells.AXES
    args = cells.cli_args({**old, "weight_decay": 1e-4, "dropout": 0.2})
    assert args[args.index("--weight_decay") + 1] == "0.0001"
    assert args[args.index("--dropout") + 1] == "0.2"


def test_local_workers_split_the_cores(monkeypatch):
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert executors.thread_share(2) == {"OMP_NUM_THREADS": "4", "TF_NUM_INTRAOP_THREADS": "4",
                                         "TF_NUM_INTEROP_THREADS": "1"}
    assert executors.thread_share(16)["TF_NUM_INTRAOP_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert "OMP_NUM_THREADS" not in executors.thread_share(2)


@pytest.mark.slow
def test_weight_decay_and_dropout_through_train_py(tmp_path):
    """Jiang's stopping rule reads the cross-entropy: with a weight decay whose penalty alone
    exceeds the threshold, the penalized `loss` never reaches it but training still stops."""
    import mlflow

    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
               TF_CPP_MIN_LOG_LEVEL="3", CNA_TF_BACKUP_DIR=str(tmp_path / "backup"))
    env.pop("MLFLOW_RUN_ID", None)
    args = ["--dataset", "digits", "--arch", "mlp", "--width", "0.1", "--depth", "2",
            "--batch_size", "32", "--n_train", "300", "--n_test", "150", "--max_samples", "150",
            "--snapshot_every", "0", "--lr", "0.05", "--epochs", "40", "--stop_loss", "0.3",
            "--weight_decay", "0.01", "--dropout", "0.1", "--suite", "none"]
    done = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py"), *args],
                          env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`cna_tf.role` = 'train'")
    assert run.data.params["weight_decay"] == "0.01" and run.data.params["dropout"] == "0.1"
    end = int(run.data.tags["cna_tf.stopped_at_epoch"])
    ce = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "cross_entropy")}
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert max(ce) == end and ce[end] <= 0.3 and all(ce[e] > 0.3 for e in ce if e < end)
    assert all(loss[e] > ce[e] for e in ce)  # the penalty is in Keras' loss, not in ce
    assert loss[end] > 0.3
    assert run.data.tags["cna_tf.snapshots"] == f"0,{end}"
