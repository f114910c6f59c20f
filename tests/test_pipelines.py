"""The MLproject steps: cell configs and keys, the ranking statistics, grid / compare end to end."""
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

import cells  # noqa: E402
import executors  # noqa: E402
import params as step_params  # noqa: E402
from _shared_grid import EXPERIMENT, N_CELLS  # noqa: E402
from cna_tf import ranking  # noqa: E402
from _stores import sqlite_store  # noqa: E402


def instances_per_cell(p):
    if p["final_only"]:
        return 1
    se = p["snapshot_every"]
    periodic = p["epochs"] // se if se else 0
    return 1 + periodic + (0 if se and p["epochs"] % se == 0 else 1)


# -- cells and configs ---------------------------------------------------------------------------

def test_cell_key_is_deterministic_and_ignores_order_defaults_and_types():
    a = cells.cell_key({"arch": "mlp", "width": 0.5, "epochs": 3})
    b = cells.cell_key({"epochs": "3", "width": "0.5", "arch": "mlp", "lr": 0.05})
    assert a == b and len(a) == 16
    assert cells.cell_key({"arch": "mlp", "width": 0.25, "epochs": 3}) != a
    # run-only parameters do not change the network
    assert cells.cell_key({"arch": "mlp", "width": 0.5, "epochs": 3, "save_model": True}) == a


def test_normalize_rejects_typos_and_bad_types():
    with pytest.raises(cells.ConfigError, match=r"unknown train parameter.*'widht'.*valid keys"):
        cells.normalize({"widht": 2})
    with pytest.raises(cells.ConfigError, match="epochs=2.5"):
        cells.normalize({"epochs": 2.5})
    with pytest.raises(cells.ConfigError, match="augment"):
        cells.normalize({"augment": "maybe"})
    assert cells.normalize({"epochs": "4.0", "final_only": "true"})["epochs"] == 4


def test_expand_is_a_product_of_list_values():
    got = cells.expand({"arch": "mlp", "width": [0.1, 0.2], "seed": [0, 1, 2]})
    assert len(got) == 6
    assert {(c["width"], c["seed"]) for c in got} == set(itertools.product([0.1, 0.2], [0, 1, 2]))


def test_demo_config_has_enough_instances_and_offline_datasets():
    name, grid = cells.load_config("demo")
    assert name == "demo"
    assert sum(instances_per_cell(p) for p in grid) >= 40
    assert {p["dataset"] for p in grid} <= {"digits", "gaussian"}
    assert {p["arch"] for p in grid} == {"mlp", "vgg18", "resnet18"}
    shuffled = [p for p in grid if p["label_shuffle"]]
    assert shuffled and all(p["final_only"] for p in shuffled)
    assert {p["label_shuffle"] for p in shuffled} <= {0.1, 0.2, 0.3, 0.4, 0.5}
    assert len({cells.cell_key(p) for p in grid}) == len(grid)
    # CI runs the demo: SPEC §12's suite without the searches (issue 37)
    assert {p["suite"] for p in grid} == {"cheap"}


def test_suite_levels_are_checked_and_keyed_only_when_not_all():
    base = {"arch": "mlp"}
    assert cells.cell_key(dict(base, suite="ALL")) == cells.cell_key(base)
    assert cells.cell_key(dict(base, suite="cheap")) != cells.cell_key(base)
    with pytest.raises(cells.ConfigError, match="suite must be one of all, cheap, none"):
        cells.normalize(dict(base, suite="some"))


def test_paper_config_is_the_spec_grid():
    _, grid = cells.load_config("paper")
    base = [p for p in grid if not p["label_shuffle"]]
    assert len(base) == 4 * 7 - 1  # ImageNet-32 skips the MLP
    assert not any(p["arch"] == "mlp" and p["dataset"] == "imagenet32" for p in base)
    assert len(grid) - len(base) == 75
    for p in base:
        assert p["batch_size"] == 512 and p["momentum"] == 0.8 and p["snapshot_every"] == 20
        if p["arch"] == "mlp":
            assert p["lr"] == 0.05
        else:
            assert p["lr"] == 0.01
            want = {"cifar10": 100, "cifar100": 100, "imagenet32": 50}.get(p["dataset"], 40)
            assert p["epochs"] == want


@pytest.mark.parametrize("text, match", [
    ("name: x\ncell: []\n", r"unknown config key.*'cell'.*valid keys: name, description"),
    ("name: x\ncells:\n  - {arch: mlp, widht: 1}\n", r"unknown key.*'widht'.*valid keys"),
    ("name: x\ndefaults: {epoch: 3}\ncells:\n  - {arch: mlp}\n", r"'epoch'.*defaults"),
    ("name: x\ncells: []\n", "non-empty list 'cells'"),
])
def test_config_errors_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(cells.ConfigError, match=match):
        cells.load_config(str(path))


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(cells.ConfigError, match=r"'dmeo' not found.*'demo'.*'paper'"):
        cells.load_config("dmeo")


def test_mlproject_parameters_match_the_train_step():
    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT))
    assert {"main", "train", "grid", "compare"} <= set(project._entry_points)
    train = project.get_entry_point("train")
    assert set(train.parameters) == set(cells.ALL_PARAMS)
    type_of = {step_params.parse_int: "int", step_params.parse_float: "float", step_params.parse_bool: "bool"}
    for name, (parse, default, _) in cells.ALL_PARAMS.items():
        declared = train.parameters[name]
        assert declared.type == type_of.get(parse, "string"), name
        # spelled as the grid spells a cell's value: a grid cell's params equal `-e train`'s
        assert step_params.cli_value(declared.default) == step_params.cli_value(default), name
    for ep in project._entry_points.values():  # MLflow accepts any type name: only ours here
        assert {p.type for p in ep.parameters.values()} <= {"int", "float", "bool", "string"}
    # the command quotes a JSON value intact (MLflow shell-quotes every parameter)
    cmd = train.compute_command({"data_options": '{"shape": [8, 8, 1]}'}, storage_dir=None)
    assert "--data_options '{\"shape\": [8, 8, 1]}'" in cmd


# -- ranking statistics --------------------------------------------------------------------------

def test_pearson_and_kendall_match_scipy_on_finite_pairs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x[3], y[7] = np.nan, np.inf
    ok = np.isfinite(x) & np.isfinite(y)
    assert ranking.pearson(x, y) == pytest.approx(stats.pearsonr(x[ok], y[ok])[0])
    assert ranking.kendall(x, y) == pytest.approx(stats.kendalltau(x[ok], y[ok])[0])
    assert math.isnan(ranking.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(ranking.kendall([1], [2]))


def test_granulated_kendall_by_hand():
    # axes a (2 values) and b (3 values); metric m, target t on the 6 instances.
    rows = []
    m = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 2, (1, 1): 1, (1, 2): 0}
    t = {(0, 0): 1, (0, 1): 2, (0, 2): 3, (1, 0): 1, (1, 1): 2, (1, 2): 3}
    for (a, b), v in m.items():
        rows.append({"a": a, "b": b, "m": v, "t": t[(a, b)]})
    got = ranking.granulated_kendall(rows, "m", "t", ["a", "b", "constant"])
    # axis b: within a=0 tau=+1, within a=1 tau=-1 -> psi_b = 0
    assert got["psi.b"] == pytest.approx(0.0)
    # axis a: groups b=0 (m 1,2; t 1,1 -> undefined), b=1 (2,1 vs 2,2 -> undefined),
    # b=2 (3,0 vs 3,3 -> undefined) -> psi_a NaN, left out of the mean
    assert math.isnan(got["psi.a"])
    assert got["granulated_kendall"] == pytest.approx(0.0)
    assert "psi.constant" not in got


def test_correlate_scopes_and_extra_targets():
    rng = np.random.default_rng(1)
    inst = [{"arch": arch, "dataset": "d", "seed": s, "x": rng.normal(), "gap": rng.normal(),
             "acc": rng.normal()} for arch in ("mlp", "vgg18") for s in range(5)]
    rows = ranking.correlate(inst, ["x"], ["gap"], ["arch", "seed"], group_by=["arch"],
                             extra_targets={"x": ["acc"]})
    scopes = {(r["scope"], r["target"]) for r in rows}
    assert scopes == {(s, t) for s in ("All Nets", "arch=mlp", "arch=vgg18")
                      for t in ("gap", "acc")}
    mlp = next(r for r in rows if r["scope"] == "arch=mlp" and r["target"] == "gap")
    sub = [i for i in inst if i["arch"] == "mlp"]
    assert mlp["n"] == 5
    assert mlp["pearson"] == pytest.approx(stats.pearsonr([i["x"] for i in sub],
                                                          [i["gap"] for i in sub])[0])


# -- kubernetes pass-through (no cluster here: MLflow's call is replaced) ---------------------------

def test_kubernetes_backend_passes_config_and_parent(monkeypatch, tmp_path):
    import mlflow
    import mlflow.projects

    import grid as grid_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    calls = []

    class Submitted:
        run_id = "k8s-run"

        def wait(self):
            return True

        def get_status(self):
            return "FINISHED"

    def fake_run(uri, **kw):
        calls.append((uri, kw))
        return Submitted()

    monkeypatch.setattr(mlflow.projects, "run", fake_run)
    cfg = tmp_path / "k8s.json"
    cfg.write_text(json.dumps({"kube-context": "ctx", "repository-uri": "r",
                               "kube-job-template-path": "job.yaml"}))
    _, grid = cells.load_config({"cells": [{"arch": "mlp", "width": [0.1, 0.2]}]})
    g = grid_step.Grid("k8s", grid, "k8s-test", tmp_path / "backup", "kubernetes", str(cfg))
    try:
        counts = g.run(workers=2)
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    assert counts == {"cells_finished": 2, "cells_failed": 0}
    assert len(calls) == 2
    for uri, kw in calls:
        assert kw["backend"] == "kubernetes" and kw["backend_config"] == str(cfg)
        assert kw["entry_point"] == "train" and kw["parameters"]["parent_run_id"] == g.parent_id
        params = {k: v for k, v in kw["parameters"].items() if k in cells.ALL_PARAMS}
        assert kw["parameters"]["cell_key"] == cells.cell_key(params)


def test_unknown_backend_and_missing_kubernetes_config_are_clear(tmp_path, monkeypatch):
    import grid as grid_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        grid_step.Grid("x", [], "x", tmp_path, "slurm")
    with pytest.raises(ValueError, match="needs --backend_config"):
        grid_step.Grid("x", [], "x", tmp_path, "kubernetes")


# -- end to end ---------------------------------------------------------------------------------

def _run(script, args, env):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / script), *args], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    return proc


@pytest.fixture(scope="module")
def tiny_grid(shared_grid, tmp_path_factory):
    """A copy of the session's shared grid (8 cells, 2 workers; tests/_shared_grid.py): the
    tests below rerun it, compare it and train beside it."""
    d = tmp_path_factory.mktemp("grid")
    env = dict(os.environ, MLFLOW_TRACKING_URI=shared_grid.copy(d / "store"),
               TF_CPP_MIN_LOG_LEVEL="3")
    return d, env, shared_grid.grid_args(d / "backup"), shared_grid


def _children(env):
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    grids = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'grid'")
    assert len(grids) == 1
    kids = client.search_runs([exp.experiment_id],
                              f"tags.mlflow.parentRunId = '{grids[0].info.run_id}'")
    return client, grids[0], kids


@pytest.mark.slow
def test_grid_trains_every_cell_as_a_child_run(tiny_grid):
    d, env, args, first = tiny_grid
    assert f"[{N_CELLS}/{N_CELLS}]" in first.stdout and "ETA" in first.stdout
    client, parent, kids = _children(env)
    assert len(kids) == N_CELLS and all(r.info.status == "FINISHED" for r in kids)
    assert parent.data.metrics["cells_failed"] == 0
    finished = [r for r in kids if r.data.params["final_only"] == "false"]
    for r in finished:
        tags, params = r.data.tags, step_params.read_params(r.data.params)
        assert tags["arch"] == "mlp" and tags["dataset"] == "digits"
        assert tags["cna_tf.cell_key"] == cells.cell_key(params)
        history = client.get_metric_history(r.info.run_id, "cna_test")
        assert sorted(m.step for m in history) == [0, 1, 2]
        gaps = client.get_metric_history(r.info.run_id, "gen_gap")
        assert sorted(m.step for m in gaps) == [0, 1, 2]
        assert all(np.isfinite(m.value) for m in history)
        assert tags["cna_tf.snapshots"] == "0,1,2"
        logs = client.list_artifacts(r.info.run_id, "logs")
        assert [a.path for a in logs] == ["logs/train.log"]
        # suite=cheap (issue 37): SPEC §12's measures but no search, at the final step, timed
        m = r.data.metrics
        assert {"num_params", "prod_of_spec_fft", "path_norm", "grad_noise_final",
                "suite_seconds"} <= set(m) and "pacbayes_orig" not in m
        assert [h.step for h in client.get_metric_history(r.info.run_id, "fro_dist")] == [2]
        assert np.isfinite(m["grad_noise_final"]) and m["suite_seconds"] > 0
        # 2 epochs of digits never reach cross-entropy 0.1: NaN, and the tag says why
        assert math.isnan(m["steps_to_ce_0.1"])
        assert "cross-entropy 0.1 not reached" in tags["cna_nan.steps_to_ce_0.1"]


@pytest.mark.slow
def test_grid_rerun_skips_every_finished_cell(tiny_grid):
    d, env, args, first = tiny_grid
    before = {r.info.run_id for r in _children(env)[2]}
    again = _run("grid.py", args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming grid run" in again.stdout
    assert f"{N_CELLS} of {N_CELLS} cells already finished" in again.stdout
    assert "[" not in again.stdout.split("already finished")[1].split("grid ")[0]  # none ran
    client, parent, kids = _children(env)
    assert {r.info.run_id for r in kids} == before
    keys = [r.data.tags["cna_tf.cell_key"] for r in kids]
    assert len(keys) == len(set(keys)) == N_CELLS


@pytest.mark.slow
def test_nan_loss_fails_the_run_with_the_reason(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
               MLFLOW_EXPERIMENT_NAME="nan", TF_CPP_MIN_LOG_LEVEL="3")
    proc = _run("train.py", ["--width", "0.05", "--depth", "2", "--epochs", "2", "--lr", "1e9",
                             "--n_train", "300", "--n_test", "100", "--batch_size", "64",
                             "--backup_dir", str(tmp_path / "b")], env)
    assert proc.returncode != 0
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("nan").experiment_id])[0]
    assert run.info.status == "FAILED"
    reason = run.data.tags["cna_tf.failure"]
    assert reason.startswith("FloatingPointError: training loss became nan at epoch 1")
    assert "lower the learning rate" in reason


@pytest.mark.slow
def test_compare_ranks_metrics_over_the_grid(tiny_grid):
    d, env, args, first = tiny_grid
    proc = _run("compare.py", ["--experiment", EXPERIMENT], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 4 clean runs x 3 snapshots + the 4 shuffled runs' final snapshots
    assert "8 runs, 16 network instances" in proc.stdout
    assert "| cna_margin |" in proc.stdout and "All Nets" in proc.stdout
    # trained networks: the sign-error tables (SPEC §10) and the convergence line (no stop_loss)
    for target in ("gen_gap", "loss_gap"):
        assert f"Robust sign-error with `{target}` in All Nets" in proc.stdout
    assert "Convergence: no run set stop_loss (8 networks" in proc.stdout
    # the suite's measures are ranked; the families' best are printed (issue 37)
    assert "Best measure of each family with `gen_gap` in All Nets" in proc.stdout
    # steps_to_ce_*: NaN in every run (2 epochs), so not ranked; grad_noise_final is
    assert "| optimization | 1 | grad_noise_final |" in proc.stdout
    assert "| spectral | " in proc.stdout and "| distance | " in proc.stdout
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = client.search_runs([exp.experiment_id], "tags.`cna_tf.role` = 'compare'")[0]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "compare")}
    assert names == {"compare/correlations.csv", "compare/correlations.md",
                     "compare/instances.csv", "compare/networks.csv",
                     "compare/correlation_gen_gap.png",
                     "compare/correlation_loss_gap.png", "compare/cna_vs_test_acc.png",
                     # SPEC §10's robust sign-error (issue 30)
                     "compare/environments.csv", "compare/sign_error_gen_gap.png",
                     "compare/sign_error_loss_gap.png"}
    local = client.download_artifacts(run.info.run_id, "compare/correlations.csv", str(d))
    import csv
    rows = list(csv.DictReader(open(local)))
    got = next(r for r in rows if r["scope"] == "All Nets" and r["metric"] == "cna_area"
               and r["target"] == "gen_gap")
    inst = list(csv.DictReader(open(client.download_artifacts(
        run.info.run_id, "compare/instances.csv", str(d)))))
    assert len(inst) == 16
    x = [float(r["cna_area"]) for r in inst]
    y = [float(r["gen_gap"]) for r in inst]
    assert float(got["pearson"]) == pytest.approx(stats.pearsonr(x, y)[0])


@pytest.mark.slow
def test_mlflow_run_train_entry_point(tmp_path):
    """`mlflow run . -e train` passes the parameters through MLproject's command intact."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "m.db"),
               TF_CPP_MIN_LOG_LEVEL="3",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # an earlier in-process mlflow.set_experiment exported its experiment id: not this one's
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "train",
           "--env-manager", "local", "--experiment-name", "cli",
           "-P", "dataset=gaussian", "-P", "epochs=1", "-P", "width=0.05", "-P", "depth=2",
           "-P", 'data_options={"shape": [8, 8, 1], "train_size": 200, "test_size": 100}',
           "-P", "batch_size=50", "-P", "save_model=true"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("cli").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["cna_tf.n_train"] == "200"
    # MLflow records the parameter as it put it on the command line (shell-quoted)
    assert json.loads(shlex.split(run.data.params["data_options"])[0])["shape"] == [8, 8, 1]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == \
        ["model/model.keras"]


def test_compare_on_runs_logged_by_hand(tmp_path, monkeypatch):
    """Metric values chosen so that Pearson and Kendall are known exactly."""
    import mlflow

    import compare as compare_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("hand")
    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    gaps = [0.1, 0.3, 0.2, 0.5]
    for i, gap in enumerate(gaps):
        run = client.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                           "mlflow.parentRunId": grid.info.run_id,
                                           "cna_tf.final_only": "false"})
        rid = run.info.run_id
        for k, v in {"arch": "mlp", "dataset": "digits", "width": 0.1 * (i + 1),
                     "seed": 0}.items():
            client.log_param(rid, k, v)
        client.log_metric(rid, "gen_gap", gap, step=5)
        client.log_metric(rid, "cna_area", 2 * gap + 1, step=5)    # Pearson +1, Kendall +1
        client.log_metric(rid, "l2", -gap ** 3, step=5)            # Kendall -1
        client.log_metric(rid, "cna_margin", [1, 2, 4, 3][i], step=5)
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(grid.info.run_id, "FINISHED")
    rows = compare_step.main(["--experiment", "hand"])
    got = {(r["scope"], r["metric"], r["target"]): r for r in rows}
    area = got[("All Nets", "cna_area", "gen_gap")]
    assert area["n"] == 4 and area["pearson"] == pytest.approx(1.0)
    assert area["kendall"] == pytest.approx(1.0)
    assert got[("All Nets", "l2", "gen_gap")]["kendall"] == pytest.approx(-1.0)
    # cna_margin ranks (1,2,4,3) vs gap ranks (1,3,2,4): 4 concordant, 2 discordant pairs
    assert got[("All Nets", "cna_margin", "gen_gap")]["kendall"] == pytest.approx(2 / 6)
    # only width varies: granulated Kendall = Kendall within the one group
    assert area["granulated_kendall"] == pytest.approx(1.0)
    assert math.isnan(got[("All Nets", "margin", "gen_gap")]["pearson"])  # never logged


@pytest.mark.slow
def test_a_grid_cell_has_the_params_of_the_same_cell_launched_with_mlflow_run(tiny_grid):
    """One rule for params: the grid logs what `mlflow run . -e train -P ...` logs, nothing else.

    And the same values: the grid's cell was forked from its fork server
    (pipelines/forkserver.py), the one by hand is a fresh Python (with the grid's share of the
    threads), and every metric's history is equal to the last digit but the timings.
    """
    d, env, args, first = tiny_grid
    client, parent, kids = _children(env)
    kid = next(r for r in kids if r.data.params["seed"] == "1")
    cell = step_params.read_params(kid.data.params, {k: v[0] for k, v in
                                                     cells.ALL_PARAMS.items()})
    cell = cells.normalize({k: cell[k] for k in cells.ALL_PARAMS})
    flags = [f"-P {k}={shlex.quote(step_params.cli_value(v))}" for k, v in cell.items()
             if v != cells.ALL_PARAMS[k][1]]  # as a user types it: what differs from defaults
    proc = subprocess.run(
        f"mlflow run . --env-manager local -e train --experiment-name by-hand {' '.join(flags)}",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                 CNA_TF_BACKUP_DIR=str(d / "by-hand-backup"), **executors.thread_share(2)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = client.get_experiment_by_name("by-hand")
    by_hand = client.search_runs([exp.experiment_id])[0]
    assert by_hand.info.status == "FINISHED"
    assert by_hand.data.params == kid.data.params
    assert by_hand.data.tags["cna_tf.cell_key"] == kid.data.tags["cna_tf.cell_key"]

    def histories(run):
        return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                for k in run.data.metrics if not k.endswith("_seconds")}
    forked, fresh = histories(kid), histories(by_hand)
    assert len(forked) > 50 and forked.keys() == fresh.keys()
    assert {k: (v, fresh[k]) for k, v in forked.items()
            if not np.array_equal(v, fresh[k], equal_nan=True)} == {}


def test_compare_description_keeps_whole_tables_within_mlflows_tag_limit():
    import compare

    tables = [f"Correlation with `{t}`: Pearson\n" + "|x|\n" * n
              for t, n in (("gen_gap", 1200), ("loss_gap", 900), ("test_acc", 50))]
    text = compare.description("Metrics ranked.", tables)
    assert len(text) <= compare.DESCRIPTION_LIMIT
    assert tables[0] in text and tables[1] not in text  # whole tables only, never a cut one
    assert "(correlation with loss_gap, test_acc) are in the artifact compare/correlations.md" \
        in text
    short = compare.description("Metrics ranked.", [t[:60] for t in tables])
    assert all(t[:60] in short for t in tables) and "artifact" not in short


def test_printed_tables_keep_cna_the_baselines_and_the_best_others():
    """compare's terminal form of a ~50-row ranking (pipelines/families.py): the CNA family,
    the paper's baselines and the best `BEST` others, ranks kept, the rest counted; the
    paired-fraction table under it keeps the same measures; short tables stay whole."""
    import families

    suite_names = [m for m in families.SUITE if m not in families.ALWAYS_SHOWN]
    ranked = suite_names[:5] + ["cna_margin", "l2"] + suite_names[5:20] + ["cna_area"]
    table = "\n".join(["Ranking", "", "| rank | metric | Kendall |", "|---|---|---|"]
                      + [f"| {i} | {m} | +0.{i:02d} |" for i, m in enumerate(ranked, 1)]
                      + ["", "paired", "", "| other measure | by CMI |", "|---|---|"]
                      + [f"| {m} | 0.5 |" for m in reversed(ranked)])
    short = families.shorten(table, best=3)
    rows = [ln for ln in short.splitlines() if ln.startswith("| ") and "---" not in ln]
    shown = [ln.split(" | ")[1] for ln in rows[1:1 + 6]]
    assert shown == suite_names[:3] + ["cna_margin", "l2", "cna_area"]
    assert "| 23 | cna_area | +0.23 |" in short          # its rank among all 23
    assert short.count("(… and 17 more measures: every row is in compare/correlations.md)") == 2
    paired = short.split("| other measure | by CMI |")[1]
    assert {ln.split(" | ")[0].strip("| ") for ln in paired.splitlines() if ln.startswith("| ")
            and "---" not in ln} == set(shown)
    # an unranked table takes the order it is given; a short one is left whole
    by_order = families.shorten(table, order=[suite_names[10]] + ranked, best=1)
    assert f"| 13 | {suite_names[10]} |" in by_order and f"| {suite_names[0]} |" not in by_order
    small = "| metric | x |\n|---|---|\n| cna_area | 1 |\n| dist_init | 2 |"
    assert families.shorten(small) == small
    # a user's measure (`score`) is always shown, beside CNA and the baselines
    mine = table.replace(f"| {suite_names[19]} |", "| my_measure |")
    assert "| my_measure |" in families.shorten(mine, best=3)
    assert families.family("prod_of_spec_fft") == "spectral"
    assert families.family("steps_to_ce_0.1") == "optimization"
    assert families.family("my_measure") == "users' measures"


@pytest.mark.slow
def test_compare_ranks_the_whole_suite_and_prints_it_short(tmp_path, monkeypatch, capsys):
    """Runs logged by hand with every SPEC §12 measure (issue 37): every measure is in every
    artifact table and the CSV (with its family), the printed tables keep CNA, the baselines
    and the best others, and say how many rows are elsewhere."""
    import mlflow
    from mlflow.entities import Metric, Param

    import compare as compare_step
    import families

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("suite")
    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    rng = np.random.default_rng(0)
    measures = list(compare_step.METRICS) + list(compare_step.SUITE)
    for i in range(8):
        rid = client.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                           "mlflow.parentRunId": grid.info.run_id,
                                           "cna_tf.final_only": "true"}).info.run_id
        gap = 0.05 * i
        values = {m: float(rng.standard_normal()) for m in measures}
        values.update(gen_gap=gap, loss_gap=2 * gap, test_acc=1 - gap, train_acc=1.0)
        client.log_batch(rid, metrics=[Metric(k, v, 0, 5) for k, v in values.items()],
                         params=[Param("width", str(0.1 * (i % 4 + 1))),
                                 Param("seed", str(i // 4)), Param("arch", "mlp")])
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(grid.info.run_id, "FINISHED")
    rows = compare_step.main(["--experiment", "suite", "--replicates", "20"])
    out = capsys.readouterr().out
    ranked = {r["metric"] for r in rows if r["target"] == "gen_gap"}
    assert set(measures) <= ranked
    assert {r["family"] for r in rows if r["metric"] == "spec_orig_main_fft"} == {"spectral"}
    run = client.search_runs([exp], "tags.`cna_tf.role` = 'compare'")[0]
    md = Path(client.download_artifacts(run.info.run_id, "compare/correlations.md",
                                        str(tmp_path))).read_text()
    for m in measures:   # in the correlation, interval and sign-error tables of both gaps
        assert md.count(f"| {m} |") >= 6, m
    # printed: every table cut, the CNA family and the baselines always in
    cut = out.count("more measures: every row is in compare/correlations.md")
    assert cut >= 7
    for m in families.ALWAYS_SHOWN:
        assert f"| {m} |" in out
    assert sum(f"| {m} |" in out for m in compare_step.SUITE) < len(compare_step.SUITE)
    assert "Best measure of each family with `gen_gap` in All Nets" in out
    # the Description: the tables as printed (cut), as many whole ones as MLflow keeps
    note = run.data.tags["mlflow.note.content"]
    assert len(note) <= compare_step.DESCRIPTION_LIMIT
    assert "Seed-bootstrap intervals of the correlation with `gen_gap`" in note
    assert "| cna_margin |" in note and "every row is in compare/correlations.md" in note
