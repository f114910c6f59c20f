"""The `score` step (issue 31, SPEC §11): a user's PGDL-style measure on saved networks.

One small trained experiment serves every end-to-end test (a copy of the session's shared grid,
tests/_shared_grid.py: 8 tiny digits MLPs, saved: shuffled labels 0 / 0.5 x width x seed, a
complete grid with CMI defined); each test scores under its own metric name.
"""
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import _shared_grid  # noqa: E402
from cna_tf import scoring  # noqa: E402

MEASURES = "tests/score_measures.py"
EXPERIMENT = _shared_grid.EXPERIMENT
N = _shared_grid.N_CELLS  # trained networks


# -- resolving a spec: no store, no model --------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("tests/score_measures.py", "names no function: give package.module:function or "
                                "path/to/file.py:function"),
    ("tests/nowhere.py:f", "measure file 'tests/nowhere.py' not found"),
    ("no_such_package_31.sub:f", "no module named 'no_such_package_31'"),
    (f"{MEASURES}:nope", "measure file 'tests/score_measures.py' has no function 'nope'; it "
                         "defines flaky, kill_on_second, label_order"),
    ("json:nope", "module 'json' has no function 'nope'"),
    (f"{MEASURES}:NOT_CALLABLE", "tests/score_measures.py:NOT_CALLABLE is a float, not a "
                                 "function"),
    (f"{MEASURES}:one_arg", "cannot be called as f(model, dataset)"),
    (f"{MEASURES}:bad-name", "is not a Python name"),
])
def test_an_unresolvable_spec_names_what_is_missing(spec, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(scoring.MeasureSpecError) as e:
        scoring.resolve(spec)
    assert message in str(e.value)


def test_the_step_fails_on_a_bad_spec_before_reading_the_store(tmp_path, monkeypatch):
    import score

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(SystemExit) as e:  # the experiment does not exist either
        score.main(["--measure", "tests/nowhere.py:f", "--experiment", "absent"])
    assert "measure file 'tests/nowhere.py' not found" in str(e.value.code)
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(SystemExit, match="no measure given: -P measure=SPEC"):
        score.main([])


def test_resolve_fingerprints_the_functions_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    m = scoring.resolve(f"./tests/../{MEASURES}:n_points")
    assert m.spec == f"{MEASURES}:n_points" and m.name == "n_points"
    assert m.sha256 == hashlib.sha256((ROOT / MEASURES).read_bytes()).hexdigest()
    assert m.same_as(scoring.scored_tag(m, run="x"))
    assert not m.same_as(scoring.scored_tag(scoring.resolve(f"{MEASURES}:label_sum")))
    assert scoring.resolve("math:hypot").spec == "math:hypot"


@pytest.mark.parametrize("value, message", [
    (np.ones(2), "not a scalar"), (np.ones(1), "not a scalar"), ("0.5", "not a number"),
    (None, "not a number"), (True, "not a number"), (float("inf"), "not a finite number"),
    (np.float32("nan"), "not a finite number"),
])
def test_a_value_that_is_not_one_finite_number_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        scoring.as_score(value)
    assert scoring.as_score(np.float32(0.25)) == 0.25 and scoring.as_score(3) == 3.0


# -- the trained experiment --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(shared_grid, tmp_path_factory):
    """A copy of the session's shared grid (tests/_shared_grid.py): 8 saved digits MLPs."""
    d = tmp_path_factory.mktemp("score")
    return d, shared_grid.copy(d / "store")


@pytest.fixture
def store(trained, monkeypatch):
    import mlflow

    d, uri = trained
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")
    assert len(runs) == N
    return d, client, exp, runs


def _score(*args):
    import score

    return score.main(["--experiment", EXPERIMENT, *args])


def _runs(client, exp):
    return client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'train'")


def _hand_dataset(run):
    """The run's training set, rebuilt here from its params without the step's code."""
    import cna_tf
    from params import read_params

    p = read_params(run.data.params)
    ds = cna_tf.data.load("digits", n_train=int(p["n_train"]), n_test=int(p["n_test"]),
                          label_shuffle=float(p["label_shuffle"]), seed=int(p["seed"]))
    return ds


@pytest.mark.slow
def test_the_logged_value_is_the_function_on_the_loaded_model(store, capsys):
    import keras

    import score_measures

    d, client, exp, _ = store
    rows = _score("--measure", f"{MEASURES}:output_mean")
    assert [r["status"] for r in rows] == ["scored"] * N
    out = capsys.readouterr().out
    assert "8 scored, 0 skipped (already scored), 0 failed, 0 without a saved model" in out
    sha = hashlib.sha256((ROOT / MEASURES).read_bytes()).hexdigest()
    for run in _runs(client, exp):
        rid = run.info.run_id
        model = keras.saving.load_model(
            client.download_artifacts(rid, "model/model.keras", str(d / rid)))
        ds = _hand_dataset(run)
        batches = ds.pipeline("train", batch_size=64, augment=False, shuffle=False)
        by_hand = score_measures.output_mean(model, batches)
        (logged,) = client.get_metric_history(rid, "output_mean")
        assert logged.value == pytest.approx(by_hand, rel=1e-6, abs=1e-9)
        assert logged.step == 2  # the final snapshot, where gen_gap was measured
        tag = run.data.tags if "cna_tf.score.output_mean" in run.data.tags else \
            client.get_run(rid).data.tags
        assert f'"sha256": "{sha}"' in tag["cna_tf.score.output_mean"]
        assert f'"spec": "{MEASURES}:output_mean"' in tag["cna_tf.score.output_mean"]
    own = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'score'")[0]
    assert own.info.status == "FINISHED" and own.data.metrics["networks_scored"] == N
    summary = Path(client.download_artifacts(own.info.run_id, "score/summary.txt",
                                             str(d))).read_text()
    assert summary.count("\nscored ") == N and "output_mean=" in summary


@pytest.mark.slow
def test_the_dataset_is_the_runs_exact_training_set(store):
    d, client, exp, _ = store
    for fn in ("n_points", "label_sum", "label_order", "train_accuracy"):
        _score("--measure", f"{MEASURES}:{fn}")
    shuffled_differs = False
    for run in _runs(client, exp):
        m, tags = run.data.metrics, run.data.tags
        ds = _hand_dataset(run)
        assert m["n_points"] == int(tags["cna_tf.n_train"]) == 300
        assert m["label_sum"] == int(ds.y_train.sum())
        assert m["label_order"] == int((np.arange(300) * ds.y_train).sum())
        if run.data.params["label_shuffle"] == "0.5":
            clean = int((np.arange(300) * ds.y_train_clean).sum())
            shuffled_differs |= m["label_order"] != clean
        # what the training run itself measured on its training set (shuffled labels)
        assert m["train_accuracy"] == pytest.approx(m["train_acc"], abs=1e-6)
    assert shuffled_differs


@pytest.mark.slow
def test_rerun_skips_and_force_rescores(store, capsys):
    d, client, exp, _ = store
    _score("--measure", f"{MEASURES}:n_points", "--name", "again")
    capsys.readouterr()
    rows = _score("--measure", f"{MEASURES}:n_points", "--name", "again")
    assert [r["status"] for r in rows] == ["skipped"] * N
    assert "0 scored, 8 skipped (already scored)" in capsys.readouterr().out
    for run in _runs(client, exp):
        assert len(client.get_metric_history(run.info.run_id, "again")) == 1
    rows = _score("--measure", f"{MEASURES}:n_points", "--name", "again", "--force", "true")
    assert [r["status"] for r in rows] == ["scored"] * N
    for run in _runs(client, exp):
        history = client.get_metric_history(run.info.run_id, "again")
        assert [h.value for h in history] == [300, 300]
    # a measure that draws random numbers repeats its value: the run's seed is set first
    first = {r["run_id"]: r["value"] for r in _score("--measure", f"{MEASURES}:noise")}
    again = {r["run_id"]: r["value"] for r in _score("--measure", f"{MEASURES}:noise",
                                                      "--force", "true")}
    assert first == again and len(set(first.values())) == 2  # seeds 0 and 1
    # another function under the same name is not "the same spec": scored again
    rows = _score("--measure", f"{MEASURES}:label_sum", "--name", "again")
    assert [r["status"] for r in rows] == ["scored"] * N


@pytest.mark.slow
def test_a_failing_network_is_recorded_and_the_others_go_on(store, capsys):
    d, client, exp, _ = store
    with pytest.raises(SystemExit) as e:
        _score("--measure", f"{MEASURES}:flaky")
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "5 scored, 0 skipped (already scored), 3 failed" in out
    assert "RuntimeError: flaky measure failed on purpose" in out
    assert "ValueError: returned nan, not a finite number" in out
    assert "ValueError: returned an array of shape (3,), not a scalar" in out
    runs = _runs(client, exp)
    errors = [r.data.tags.get("cna_tf.score_error.flaky") for r in runs]
    assert sum(e is not None for e in errors) == 3
    assert sum("flaky" in r.data.metrics for r in runs) == 5
    own = client.search_runs([exp.experiment_id], "tags.`cna_tf.score_metric` = 'flaky'")[0]
    assert own.info.status == "FAILED" and own.data.metrics["networks_failed"] == 3
    # the same command again: the scored one is skipped, the failed ones are tried again (a
    # fresh import: call 1 scores, clearing that run's error tag)
    with pytest.raises(SystemExit):
        _score("--measure", f"{MEASURES}:flaky")
    assert "1 scored, 5 skipped (already scored), 2 failed" in capsys.readouterr().out
    runs = _runs(client, exp)
    assert sum("flaky" in r.data.metrics for r in runs) == 6
    assert sum("cna_tf.score_error.flaky" in r.data.tags for r in runs) == 2
    assert all(("flaky" in r.data.metrics) != ("cna_tf.score_error.flaky" in r.data.tags)
               for r in runs)


@pytest.mark.slow
def test_a_kill_mid_way_then_the_same_command_finishes_without_duplicates(store, tmp_path):
    d, client, exp, _ = store
    env = dict(os.environ, SCORE_TEST_COUNTER=str(tmp_path / "calls"),
               TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, str(ROOT / "pipelines" / "score.py"), "--measure",
           f"{MEASURES}:kill_on_second", "--experiment", EXPERIMENT]
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == -9, first.stderr[-3000:]  # SIGKILL during the second network
    assert sum("kill_on_second" in r.data.metrics for r in _runs(client, exp)) == 1
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "7 scored, 1 skipped (already scored), 0 failed" in again.stdout
    for run in _runs(client, exp):
        history = client.get_metric_history(run.info.run_id, "kill_on_second")
        assert len(history) == 1 and history[0].value > 0


@pytest.mark.slow
def test_runs_without_a_saved_model_are_named_with_the_fix(store, capsys):
    d, client, exp, _ = store
    bare = client.create_run(exp.experiment_id, run_name="no-model-net",
                             tags={"cna_tf.role": "train"})
    client.set_terminated(bare.info.run_id, "FINISHED")
    try:
        rows = _score("--measure", f"{MEASURES}:n_points", "--name", "bare_check")
        assert sorted(r["status"] for r in rows) == ["no model"] + ["scored"] * N
        out = capsys.readouterr().out
        assert f"1 train run(s) have no saved model: no-model-net ({bare.info.run_id[:8]})" in out
        assert "`save_model: true` in the grid config's defaults" in out
        assert "-P save_model=true" in out
    finally:
        client.delete_run(bare.info.run_id)


@pytest.mark.slow
def test_a_name_clashing_with_a_logged_metric_is_refused(store):
    with pytest.raises(SystemExit, match="built-in measure's metric"):
        _score("--measure", f"{MEASURES}:n_points", "--name", "cna_margin")
    with pytest.raises(SystemExit, match="already have a metric 'loss' that `score` did not"):
        _score("--measure", f"{MEASURES}:n_points", "--name", "loss")


@pytest.mark.slow
def test_compare_ranks_the_scored_measure_in_every_table(store, capsys):
    import compare

    d, client, exp, _ = store
    _score("--measure", f"{MEASURES}:train_accuracy", "--name", "ranked_measure")
    capsys.readouterr()
    rows = compare.main(["--experiment", EXPERIMENT, "--all_runs", "true",
                         "--replicates", "50"])
    out = capsys.readouterr().out
    mine = [r for r in rows if r["metric"] == "ranked_measure" and r["scope"] == "All Nets"
            and r["target"] == "gen_gap"]
    assert len(mine) == 1 and mine[0]["n"] == N  # the final snapshots: where it was scored
    assert math.isfinite(mine[0]["kendall"]) and math.isfinite(mine[0]["cmi"])
    assert mine[0]["boot_mode"] == "seed" and math.isfinite(mine[0]["kendall_low"])
    points = out.split("Correlation with `gen_gap`")[1]
    assert "\n| ranked_measure | " in points.split("\n\n")[1]
    assert "Ranked by CMI:" in points and "ranked_measure " in points.split("Ranked by CMI:")[1]
    intervals = out.split("Seed-bootstrap intervals of the correlation with `gen_gap`")[1]
    assert "| ranked_measure | " in intervals
    paired = intervals.split("| other measure | by CMI | by Kendall |")[1]
    assert "\n| ranked_measure | " in paired
    own = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'compare'")[0]
    table = Path(client.download_artifacts(own.info.run_id, "compare/networks.csv",
                                           str(d))).read_text()
    assert "ranked_measure" in table.splitlines()[0]


@pytest.mark.slow
def test_a_suite_measure_scores_the_saved_networks(store):
    """SPEC §12: ``-e score -P measure=cna_tf.suite:pacbayes_orig`` on a zoo, no retraining;
    each value is `cna_tf.suite.compute` on the network's own training set (all m points,
    seed 0). (Under its own name the suite measure may fill in the built-in metric; these runs
    may already have it from `train`, so it is scored here under another name.)"""
    import keras

    from cna_tf import suite

    d, client, exp, _ = store
    rows = _score("--measure", "cna_tf.suite:pacbayes_orig", "--name", "suite_pacbayes_orig")
    assert [r["status"] for r in rows] == ["scored"] * N
    run = _runs(client, exp)[0]
    model = keras.saving.load_model(client.download_artifacts(
        run.info.run_id, "model/model.keras", str(d / f"suite-{run.info.run_id}")))
    ds = _hand_dataset(run)
    want = suite.compute(model, ds.preprocess(ds.x_train), ds.y_train,
                         names=["pacbayes_orig"])["pacbayes_orig"]
    (logged,) = client.get_metric_history(run.info.run_id, "suite_pacbayes_orig")
    assert logged.value == pytest.approx(want, rel=1e-9)


def test_the_example_measure_is_the_mean_per_point_gradient_norm(monkeypatch):
    """examples/pgdl_measure.py: the batch trick (one gradient of the summed true-class
    probabilities) gives each point's own gradient norm, as one gradient per point does."""
    import tensorflow as tf

    import cna_tf

    monkeypatch.chdir(ROOT)
    measure = scoring.resolve("examples/pgdl_measure.py:input_grad_norm")
    ds = cna_tf.data.load("digits", n_train=40, n_test=20)
    model = cna_tf.models.build("mlp", ds.input_shape, ds.num_classes, width=0.05, depth=2)
    value = measure(model, scoring.training_dataset(ds, 16))
    x, y = ds.preprocess(ds.x_train), ds.y_train
    norms = []
    for i in range(len(x)):
        xi = tf.convert_to_tensor(x[i:i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            p = model(xi, training=False)[0, int(y[i])]
        norms.append(float(tf.norm(tape.gradient(p, xi))))
    assert value == pytest.approx(float(np.mean(norms)), rel=1e-5)
    assert value > 0
