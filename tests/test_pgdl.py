"""`mlflow run . -e pgdl`: a PGDL 2020 task imported, scored and compared (docs/pgdl.md).

The tests write small tasks in the organizers' layout themselves (HDF5 weights with h5py in
the Keras 2 layout, TFRecord shards with tf.io) and check every imported number against the
arrays they wrote; PGDL's CMI is computed here in numpy from its definition (SPEC §8).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

TASK = "task1_v4"
SHAPE = (6, 6, 2)
CLASSES = 3
N = 40
#: the grid of the slow test's task: 2 x 2 x 2 models (CMI needs three hyperparameters to be
#: defined: with two, every bin holds one pair of networks)
GRID = {"depth": [2, 3], "dense_width": [4, 6], "dropout": [0.0, 0.5]}

IMPORT = ("mlflow run . --env-manager local -e pgdl "
          "-P task=$HOME/pgdl/public_data/input_data/task1_v4")
SCORE = ("mlflow run . --env-manager local -e score --experiment-name pgdl-task1_v4 "
         "-P measure=examples/pgdl_measure.py:input_grad_norm")
COMPARE = ("mlflow run . --env-manager local -e compare --experiment-name pgdl-task1_v4 "
           "-P all_runs=true")


# -- writing a task in the organizers' layout ------------------------------------------------

def layer_dicts(depth: int, dense_width: int, dropout: float):
    """config.json's model_config (floats where JSON writers give them) and, per layer, its
    Keras 2 name and weight shapes."""
    layers = [({"layer_name": "Conv2D", "filters": 2.0, "kernel_size": [3, 3],
                "padding": "same", "activation": "relu"}, "conv2d",
               [("kernel", (3, 3, SHAPE[2], 2)), ("bias", (2,))]),
              ({"layer_name": "BatchNormalization"}, "batch_normalization",
               [("gamma", (2,)), ("beta", (2,)), ("moving_mean", (2,)),
                ("moving_variance", (2,))])]
    for i in range(1, depth - 1):
        layers.append(({"layer_name": "Conv2D", "filters": 2, "kernel_size": 3,
                        "padding": "same", "activation": "relu"}, f"conv2d_{i}",
                       [("kernel", (3, 3, 2, 2)), ("bias", (2,))]))
    layers += [({"layer_name": "MaxPooling2D", "pool_size": 2}, "max_pooling2d", []),
               ({"layer_name": "Flatten"}, "flatten", []),
               ({"layer_name": "Dense", "units": dense_width, "activation": "relu"}, "dense",
                [("kernel", (18, dense_width)), ("bias", (dense_width,))]),
               ({"layer_name": "Dropout", "rate": dropout}, "dropout", []),
               ({"layer_name": "Dense", "units": CLASSES, "activation": "softmax"}, "dense_1",
                [("kernel", (dense_width, CLASSES)), ("bias", (CLASSES,))])]
    return layers


def write_hdf5(path: Path, layers, weights) -> None:
    """Keras 2's ``save_weights`` layout: root attribute layer_names (every layer), a group per
    layer with attribute weight_names, each weight a dataset at that path in the group."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for _, name, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        for _, name, shapes in layers:
            g = f.create_group(name)
            names = [f"{name}/{w}:0" for w, _ in shapes]
            g.attrs["weight_names"] = np.array([n.encode() for n in names]) if names \
                else np.zeros(0)
            for n, (w, _) in zip(names, shapes):
                g.create_dataset(n, data=weights[(name, w)])


def random_weights(layers, rng):
    out = {}
    for _, name, shapes in layers:
        for w, shape in shapes:
            v = rng.normal(scale=0.5, size=shape).astype(np.float32)
            if w == "moving_variance":
                v = np.abs(v) + 0.5
            out[(name, w)] = v
    return out


def write_shards(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Two shards named so that numeric order (2 before 10) differs from text order."""
    import tensorflow as tf

    folder.mkdir(parents=True)
    for name, part in (("shard_2.tfrecord", slice(0, 24)), ("shard_10.tfrecord", slice(24, N))):
        with tf.io.TFRecordWriter(str(folder / name)) as w:
            for xi, yi in zip(x[part], y[part]):
                feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.serialize_tensor(v).numpy()]))
                    for k, v in (("inputs", tf.constant(xi, tf.float32)),
                                 ("output", tf.constant(int(yi), tf.int32)))}
                w.write(tf.train.Example(
                    features=tf.train.Features(feature=feature)).SerializeToString())


def write_task(task_dir: Path, grid=GRID, seed: int = 0, initial: bool = True) -> dict:
    """A task of one model per combination of ``grid``; returns what was written."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N,) + SHAPE).astype(np.float32) * 1.5 + 0.25
    # the networks' biases favour class 0, which 38 of the 40 labels are: every network's
    # 5th-percentile margin is positive, so the margin-normalized measures are defined
    y = np.zeros(N, np.int64)
    y[-2:] = [1, CLASSES - 1]
    write_shards(task_dir / "dataset_1" / "train", x, y)
    configs, models = {}, {}
    for k, values in enumerate(itertools.product(*grid.values())):
        hp = dict(zip(grid, values))
        layers = layer_dicts(hp.get("depth", 2), hp.get("dense_width", 4), hp.get("dropout", 0.0))
        folder = task_dir / f"model_{k}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(
            {"model_config": [d for d, _, _ in layers], "input_shape": list(SHAPE)}))
        init = random_weights(layers, rng)
        final = {key: v + rng.normal(scale=0.3, size=v.shape).astype(np.float32)
                 for key, v in init.items()}
        final.update({key: np.abs(v) + 0.5 for key, v in final.items()
                      if key[1] == "moving_variance"})
        final[("dense_1", "bias")] = np.array([30.0, 0.0, 0.0], np.float32)
        final[("dense_1", "kernel")] *= np.float32(0.1)
        write_hdf5(folder / "weights.hdf5", layers, final)
        if initial:
            write_hdf5(folder / "weights_init.hdf5", layers, init)
        train_acc = float(rng.uniform(0.9, 1.0))
        test_acc = float(rng.uniform(0.5, 0.8))
        configs[str(k)] = {"hparams": {n: {"current_value": v, "possible_values": grid[n]}
                                       for n, v in hp.items()},
                           "metrics": {"train_acc": train_acc, "test_acc": test_acc}}
        models[str(k)] = {"hparams": hp, "layers": layers, "init": init, "final": final,
                          "train_acc": train_acc, "test_acc": test_acc}
    (task_dir / "model_configs.json").write_text(json.dumps(configs))
    return {"x": x, "y": y, "models": models, "dir": task_dir}


# -- PGDL's CMI, from its definition (SPEC §8), in numpy ---------------------------------------

def pgdl_cmi(measure, gap, hparams) -> float:
    m, g = np.asarray(measure, float), np.asarray(gap, float)
    n = len(m)
    scores = []
    for h1, h2 in itertools.permutations(hparams, 2):
        bins = {}
        for i in range(n):
            for j in range(n):
                key = (hparams[h1][i], hparams[h1][j], hparams[h2][i], hparams[h2][j])
                t = bins.setdefault(key, np.zeros((2, 2)))
                t[int(g[i] > g[j]), int(m[i] > m[j])] += 1
        mis, hs = [], []
        for t in bins.values():
            p = t / t.sum()
            pg, pm = p.sum(axis=1), p.sum(axis=0)
            mi = sum(p[a, b] * math.log2(p[a, b] / (pg[a] * pm[b]))
                     for a in range(2) for b in range(2) if p[a, b] > 0)
            mis.append(mi)
            hs.append(-sum(q * math.log2(q + 1e-12) for q in pg))
        if np.mean(hs) > 1e-9:
            scores.append(np.mean(mis) / np.mean(hs))
    return min(scores) if scores else math.nan


# -- the three documented commands, once for the module ----------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("pgdl")
    home = d / "home"
    task = write_task(home / "pgdl" / "public_data" / "input_data" / TASK)
    env = dict(os.environ, HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{d}/mlflow.db",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               TF_CPP_MIN_LOG_LEVEL="3", CNA_TF_BROWSE_LINE="0")
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    out = {}
    for key, command in (("import", IMPORT), ("score", SCORE), ("compare", COMPARE)):
        proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        out[key] = proc.stdout
    return {"task": task, "env": env, "out": out, "dir": d}


def _client(env):
    import mlflow

    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


def _runs(env):
    client = _client(env)
    exp = client.get_experiment_by_name("pgdl-task1_v4")
    runs = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")
    return client, sorted(runs, key=lambda r: int(r.data.tags["cna_tf.pgdl_model"]))


@pytest.mark.slow
def test_the_documented_import_makes_one_finished_run_per_model(imported):
    task = imported["task"]
    client, runs = _runs(imported["env"])
    assert len(runs) == 8 and "8 imported, 0 skipped" in imported["out"]["import"]
    x = task["x"]
    for run in runs:
        mid = run.data.tags["cna_tf.pgdl_model"]
        written = task["models"][mid]
        assert run.info.status == "FINISHED" and run.data.tags["cna_tf.pgdl_task"] == TASK
        assert run.info.run_name == f"{TASK} model_{mid}"
        # hyperparameters as params, PGDL's accuracies and gap as metrics
        assert json.loads(run.data.tags["cna_tf.hparams"]) == list(GRID)
        for name, value in written["hparams"].items():
            assert json.loads(run.data.params[name]) == value
        m = run.data.metrics
        assert m["train_acc"] == written["train_acc"] and m["test_acc"] == written["test_acc"]
        assert m["gen_gap"] == pytest.approx(written["train_acc"] - written["test_acc"],
                                             abs=1e-15)
        # alpha's range: the inputs' observed min and max, in a tag and in data_options
        assert json.loads(run.data.tags["cna_tf.value_range"]) == [float(x.min()),
                                                                    float(x.max())]
        options = json.loads(run.data.params["data_options"].strip("'"))
        assert options == {"num_classes": CLASSES, "value_range": [float(x.min()),
                                                                    float(x.max())]}
        # measured at import, initial weights included (SPEC §2, §8)
        for key in ("cna_train", "margin", "l2", "spectral", "l2_path", "bound_2018",
                    "dist_init", "sum_of_fro"):
            assert math.isfinite(m[key]), key
        assert m["measured_train_acc"] == 38 / N


@pytest.mark.slow
def test_the_saved_model_and_initial_weights_are_the_files_weights(imported):
    import keras

    from train import _load_weights

    client, runs = _runs(imported["env"])
    d = imported["dir"] / "artifacts"
    for run in runs[:3]:
        written = imported["task"]["models"][run.data.tags["cna_tf.pgdl_model"]]
        local = client.download_artifacts(run.info.run_id, "model", str(d / run.info.run_id))
        model = keras.saving.load_model(f"{local}/model.keras")
        want = [written["final"][(name, w)] for _, name, shapes in written["layers"]
                for w, _ in shapes]
        got = model.get_weights()
        assert len(got) == len(want)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        initial = list(_load_weights(Path(local) / "initial_weights.npz").values())
        kernels = [written["init"][(name, "kernel")] for _, name, shapes in written["layers"]
                   if shapes and shapes[0][0] == "kernel"]
        assert len(initial) == len(kernels)
        assert all(np.array_equal(a, b.astype(np.float64)) for a, b in zip(initial, kernels))
        # dist_init (SPEC §8) from the written kernels
        dist = sum(float(np.sum((written["final"][(name, "kernel")].astype(np.float64)
                                 - written["init"][(name, "kernel")]) ** 2))
                   for _, name, shapes in written["layers"] if shapes and shapes[0][0] == "kernel")
        assert run.data.metrics["dist_init"] == pytest.approx(dist, rel=1e-6)
        keras.backend.clear_session()


@pytest.mark.slow
def test_score_hands_the_measure_the_tasks_training_data(imported):
    """The documented score line: every model scored on the task's data, exactly as written."""
    import keras
    import tensorflow as tf

    import score
    from cna_tf import scoring

    assert "8 scored, 0 skipped" in imported["out"]["score"]
    client, runs = _runs(imported["env"])
    task = imported["task"]
    run = runs[5]
    p = score.run_cell_params(run)
    data = scoring.training_dataset(score.DataCache().get(p), p["batch_size"])
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in data])
    assert np.array_equal(np.concatenate(xs), task["x"])  # bit for bit, shard_2 before shard_10
    assert np.array_equal(np.concatenate(ys), task["y"])
    # the logged value: the example measure on the run's model and the written arrays
    sys.path.insert(0, str(ROOT / "examples"))
    from pgdl_measure import input_grad_norm

    local = client.download_artifacts(run.info.run_id, "model/model.keras",
                                      str(imported["dir"] / "score"))
    model = keras.saving.load_model(local)
    mine = tf.data.Dataset.from_tensor_slices((task["x"], task["y"])).batch(p["batch_size"])
    assert run.data.metrics["input_grad_norm"] == pytest.approx(input_grad_norm(model, mine),
                                                                rel=1e-5)


@pytest.mark.slow
def test_compare_ranks_over_the_tasks_hyperparameters_by_pgdls_cmi(imported):
    client, runs = _runs(imported["env"])
    exp = client.get_experiment_by_name("pgdl-task1_v4")
    compare = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'compare'")[0]
    local = client.download_artifacts(compare.info.run_id, "compare/correlations.csv",
                                      str(imported["dir"] / "compare"))
    import csv

    rows = [r for r in csv.DictReader(open(local)) if r["scope"] == "All Nets"
            and r["target"] == "gen_gap"]
    assert rows and all(r["cmi_hparams"] == "depth, dropout, dense_width" for r in rows)
    hparams = {h: [imported["task"]["models"][r.data.tags["cna_tf.pgdl_model"]]["hparams"][h]
                   for r in runs] for h in GRID}
    gap = [r.data.metrics["gen_gap"] for r in runs]
    checked = 0
    for metric in ("l2", "bound_2018", "input_grad_norm", "cna_train", "margin"):
        mine = pgdl_cmi([r.data.metrics[metric] for r in runs], gap, hparams)
        logged = compare.data.metrics.get(f"cmi.{metric}.gen_gap", math.nan)
        if math.isnan(mine):
            assert math.isnan(logged)
        else:
            assert logged == pytest.approx(mine, abs=1e-12), metric
            checked += 1
    assert checked >= 2
    assert "| input_grad_norm | " in imported["out"]["compare"]


@pytest.mark.slow
def test_importing_again_skips_every_model(imported, monkeypatch):
    import pgdl

    monkeypatch.setenv("MLFLOW_TRACKING_URI", imported["env"]["MLFLOW_TRACKING_URI"])
    rows = pgdl.import_task(str(imported["task"]["dir"]))
    assert [r["status"] for r in rows] == ["skipped"] * 8
    assert len(_runs(imported["env"])[1]) == 8


# -- fast: the data, the layout's fallbacks and malformed tasks ------------------------------

def test_a_task_is_a_dataset_handed_over_unchanged(tmp_path):
    import cna_tf

    task = write_task(tmp_path / TASK, grid={"depth": [2]})
    ds = cna_tf.data.load(f"pgdl:{tmp_path / TASK}")
    assert type(ds).__name__ == "PreprocessedDataset" and ds.num_classes == CLASSES
    assert np.array_equal(ds.x_train, task["x"]) and np.array_equal(ds.y_train, task["y"])
    assert ds.value_range == (float(task["x"].min()), float(task["x"].max()))
    assert len(ds.x_test) == 0  # the public tasks ship no test inputs
    assert np.array_equal(ds.preprocess(ds.x_train), task["x"])
    batches = list(ds.pipeline("train", batch_size=16, shuffle=False))
    assert np.array_equal(np.concatenate([b[0].numpy() for b in batches]), task["x"])
    assert cna_tf.data.loaders.locate(f"pgdl:{tmp_path / TASK}") == str(tmp_path / TASK)
    with pytest.raises(ValueError, match="already preprocessed"):
        ds.pipeline("train", augment=True)


def test_metrics_kept_apart_in_reference_data_are_read(tmp_path):
    import pgdl

    task_dir = tmp_path / "input_data" / TASK
    task = write_task(task_dir, grid={"depth": [2, 3]})
    configs = json.loads((task_dir / "model_configs.json").read_text())
    (tmp_path / "reference_data" / TASK).mkdir(parents=True)
    (tmp_path / "reference_data" / TASK / "model_configs.json").write_text(json.dumps(configs))
    for entry in configs.values():
        del entry["metrics"]
    (task_dir / "model_configs.json").write_text(json.dumps(configs))
    specs = pgdl.read_task(task_dir)
    assert [s.train_acc for s in specs] == [task["models"][k]["train_acc"] for k in ("0", "1")]


def _broken(tmp_path, how):
    task_dir = tmp_path / TASK
    write_task(task_dir, grid={"depth": [2, 3]}, initial=False)
    bad = task_dir / "model_1"
    if how == "missing":
        (bad / "weights.hdf5").unlink()
    elif how == "layer":
        config = json.loads((bad / "config.json").read_text())
        config["model_config"][3]["layer_name"] = "MaxPool2DX"
        (bad / "config.json").write_text(json.dumps(config))
    elif how == "shape":
        config = json.loads((bad / "config.json").read_text())
        config["model_config"][-3]["units"] = 5  # the weights are for 4 units
        (bad / "config.json").write_text(json.dumps(config))
    return task_dir


@pytest.mark.parametrize("how, message", [
    ("missing", r"model 1: .*model_1/weights\.hdf5 not found"),
    ("layer", r"model 1: .*model_1/config\.json: layer 3 is 'MaxPool2DX', and Keras .* has no "
              r"layer class"),
    ("shape", r"model 1: .*model_1/weights\.hdf5: layer 'dense' holds weights of shapes "
              r"\[\(18, 4\), \(4,\)\].*needs \[\(18, 5\), \(5,\)\]: weights and config do not fit"),
])
def test_a_malformed_task_is_one_error_and_imports_nothing(tmp_path, store, how, message):
    import pgdl

    task_dir = _broken(tmp_path, how)
    with pytest.raises(pgdl.TaskError, match=message):
        pgdl.import_task(str(task_dir))
    assert store.get_experiment_by_name("pgdl-task1_v4") is None  # nothing half-way


def test_the_step_says_the_error_and_that_nothing_was_imported(tmp_path, store):
    import pgdl

    task_dir = _broken(tmp_path, "missing")
    with pytest.raises(SystemExit) as e:
        pgdl.main(["--task", str(task_dir)])
    assert "model_1/weights.hdf5 not found" in str(e.value)
    assert str(e.value).endswith("Nothing was imported.")


def test_a_run_a_killed_import_left_unfinished_is_made_again(tmp_path, store):
    import pgdl

    task = write_task(tmp_path / TASK, grid={"depth": [2]})
    exp = store.create_experiment("pgdl-task1_v4")
    left = store.create_run(exp, tags={"cna_tf.pgdl_task": TASK, "cna_tf.pgdl_model": "0",
                                       "cna_tf.role": "train"})  # RUNNING: killed mid-way
    rows = pgdl.import_task(str(task["dir"]))
    assert [r["status"] for r in rows] == ["imported"]
    assert store.get_run(left.info.run_id).info.lifecycle_stage == "deleted"
    run = store.get_run(rows[0]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["depth"] == "2"
    assert run.data.tags["cna_tf.initial_weights"] == "true"
