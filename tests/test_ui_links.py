"""The links that send a user to the MLflow UI: they land on the runs, not the GenAI overview.

MLflow 3.17 opens an experiment in its GenAI layout unless the URL carries
``workflowType=machine_learning``; `cna_tf.tracking.runs_link` builds the link (with the
experiment's saved view ``cna_tf``), `make demo`'s last line, `make ui`'s first line and the compare
step's last line print it. What the link shows in a browser: tests/test_ui.py (Chromium).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cna_tf import tracking
from cna_tf.tracking import (RUNS_VIEW, VIEW_TAG_PREFIX, browse_line, runs_link, runs_url,
                             runs_view_state, save_runs_view, ui_address)
from _stores import sqlite_store

ROOT = Path(__file__).resolve().parent.parent
LANDING = "/runs?workflowType=machine_learning"


def _store(tmp_path, name="cna_tf-demo"):
    import mlflow

    uri = sqlite_store(tmp_path / "mlflow.db")
    client = mlflow.MlflowClient(uri)
    return uri, client, client.create_experiment(name)


def test_runs_url_opens_the_runs_table_of_the_model_training_layout():
    assert runs_url("7") == ("http://127.0.0.1:5000/#/experiments/7/runs"
                             "?workflowType=machine_learning")
    assert runs_url(7, port=5001, view="cna_tf") == (
        "http://127.0.0.1:5001/#/experiments/7/runs?workflowType=machine_learning"
        "&viewStateShareKey=cna_tf")
    every_interface = ".".join(["0"] * 4)  # (the address itself is never spelled in tests)
    assert runs_url("7", host=every_interface).startswith("http://127.0.0.1:5000/#/")
    assert runs_url("7", host="::1", port=8080).startswith("http://[::1]:8080/#/")
    assert runs_url("7", host="box.lan", port=80).startswith("http://box.lan:80/#/")
    assert runs_url("7", base="https://mlflow.example.com/ui/").startswith(
        "https://mlflow.example.com/ui/#/experiments/7/runs?")


def test_ui_address_is_the_tracking_server_or_where_mlflow_ui_serves():
    assert ui_address(tracking_uri="sqlite:///x.db") == "http://127.0.0.1:5000"
    assert ui_address(port=5002, tracking_uri="sqlite:///x.db") == "http://127.0.0.1:5002"
    # a tracking server serves its own UI; credentials never go into a printed link
    assert ui_address(tracking_uri="http://u:secret@mlflow.example.com:5000/") == \
        "http://mlflow.example.com:5000"
    assert ui_address(tracking_uri="HTTPS://mlflow.example.com/prefix") == \
        "https://mlflow.example.com/prefix"
    # host/port given: the UI the user starts there, whatever the store
    assert ui_address("127.0.0.1", 5003, "http://mlflow.example.com:5000") == \
        "http://127.0.0.1:5003"


def test_the_view_is_saved_once_in_the_format_mlflow_ui_reads(tmp_path):
    uri, client, exp = _store(tmp_path)
    assert save_runs_view(exp, client) == RUNS_VIEW
    raw = client.get_experiment(exp).tags[VIEW_TAG_PREFIX + RUNS_VIEW]
    envelope = json.loads(raw)
    # what MLflow 3.17's UI requires of a saved view (its parser rejects anything else)
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    assert isinstance(envelope["updatedAt"], int) and isinstance(envelope["state"], str)
    state = json.loads(envelope["state"])
    assert state == runs_view_state()
    assert "metrics.`gen_gap`" in state["selectedColumns"]
    assert "metrics.`cna_margin`" in state["selectedColumns"]
    chart = state["compareRunCharts"][0]
    assert (chart["type"], chart["xaxis"]["key"], chart["yaxis"]["key"]) == \
        ("SCATTER", "cna_margin", "gen_gap")
    assert chart["metricSectionId"] == state["compareRunSections"][0]["uuid"]
    assert state["runsHiddenMode"] == "SHOW_ALL"  # the UI's default charts only 10 runs
    assert len(raw) <= 20000  # MLflow's limit on an experiment tag's value
    # a view changed and saved in the UI is kept
    client.set_experiment_tag(exp, VIEW_TAG_PREFIX + RUNS_VIEW, raw.replace("SCATTER", "BAR"))
    assert save_runs_view(exp, client) == RUNS_VIEW
    assert "BAR" in client.get_experiment(exp).tags[VIEW_TAG_PREFIX + RUNS_VIEW]


def test_a_store_that_refuses_the_view_gets_a_link_without_it(tmp_path, capsys):
    uri, client, exp = _store(tmp_path)

    class ReadOnly:
        tracking_uri = "http://mlflow.example.com:5000"

        def get_experiment(self, experiment_id):
            return client.get_experiment(experiment_id)

        def set_experiment_tag(self, *args):
            raise PermissionError("403: no permission to edit the experiment")

    assert save_runs_view(exp, ReadOnly()) is None
    assert "no permission" in capsys.readouterr().err
    assert runs_link(exp, ReadOnly()) == \
        f"http://mlflow.example.com:5000/#/experiments/{exp}{LANDING}"
    assert browse_line(exp, ReadOnly()) == \
        f"Browse the runs: http://mlflow.example.com:5000/#/experiments/{exp}{LANDING}"


def test_the_command_line_prints_the_link_of_an_experiment_by_name(tmp_path, capsys):
    uri, client, exp = _store(tmp_path, "grid-x")
    assert tracking.main(["url", "--experiment", "grid-x", "--tracking-uri", uri,
                          "--port", "5004"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"http://127.0.0.1:5004/#/experiments/{exp}{LANDING}&viewStateShareKey={RUNS_VIEW}")
    assert VIEW_TAG_PREFIX + RUNS_VIEW in client.get_experiment(exp).tags
    assert tracking.main(["url", "--experiment", "grid-x", "--tracking-uri", uri,
                          "--no-view"]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:5000/#/experiments/{exp}{LANDING}"
    assert tracking.main(["url", "--experiment", "nothing", "--tracking-uri", uri]) == 1
    assert "no experiment 'nothing'" in capsys.readouterr().err
    client.delete_experiment(exp)
    assert tracking.main(["url", "--experiment", "grid-x", "--tracking-uri", uri]) == 1


def _make_n(*args: str) -> list:
    # MAKELEVEL & co.: under `make test` a nested make would print "make[1]: ..." lines
    env = {k: v for k, v in os.environ.items() if not k.startswith("UI_")
           and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env,
                          capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_make_demo_ends_with_the_link_for_the_ui_make_ui_starts():
    last = _make_n("demo")[-1]
    assert "-m cna_tf.tracking url --experiment cna_tf-demo --host 127.0.0.1 --port 5000" in last
    assert 'echo "Browse the runs: make ui, then open $url"' in last
    # another port: the link and the command that serves it agree
    last = _make_n("demo", "UI_PORT=5001")[-1]
    assert "--port 5001" in last and "make ui UI_PORT=5001, then open" in last
    ui = _make_n("ui", "UI_PORT=5001", "UI_EXPERIMENT=cna_tf-reproduce")
    link, serve = "\n".join(ui[:-1]), ui[-1]
    assert "--experiment cna_tf-reproduce --host 127.0.0.1 --port 5001" in link
    assert serve.endswith("--host 127.0.0.1 --port 5001")  # never another interface


def test_make_demos_last_line_prints_the_experiments_link(tmp_path):
    """The line run as `make demo` runs it (its recipe's last line, from `make -n`)."""
    uri, client, exp = _store(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UI_", "MLFLOW_")) and k != "PYTEST_CURRENT_TEST"}
    env["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run(["bash", "-c", _make_n("demo")[-1]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"Browse the runs: make ui, then open http://127.0.0.1:5000/#/experiments/{exp}"
        f"{LANDING}&viewStateShareKey={RUNS_VIEW}")


def test_compare_ends_with_where_to_look(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "pipelines"))
    import mlflow

    import compare as compare_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "m.db"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    client = mlflow.MlflowClient()
    exp = client.create_experiment("hand")
    grid = client.create_run(exp, tags={"cna_tf.role": "grid"})
    for i, gap in enumerate([0.1, 0.3, 0.2, 0.5]):
        rid = client.create_run(exp, tags={"cna_tf.role": "train", "arch": "mlp",
                                           "mlflow.parentRunId": grid.info.run_id}).info.run_id
        for k, v in {"arch": "mlp", "dataset": "digits", "width": 0.1 * (i + 1)}.items():
            client.log_param(rid, k, v)
        for name, value in {"gen_gap": gap, "cna_area": 2 * gap, "cna_margin": i}.items():
            client.log_metric(rid, name, value, step=5)
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(grid.info.run_id, "FINISHED")
    compare_step.main(["--experiment", "hand"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"Browse the runs: make ui, then open http://127.0.0.1:5000/#/experiments/"
                    f"{exp}{LANDING}&viewStateShareKey={RUNS_VIEW}")
    # as `make demo` runs it: the Makefile prints that line itself, so compare leaves it out
    monkeypatch.setenv("CNA_TF_BROWSE_LINE", "0")
    compare_step.main(["--experiment", "hand"])
    assert "Browse the runs" not in capsys.readouterr().out


def test_make_demo_prints_where_to_look_once():
    lines = _make_n("demo")
    compare = [ln for ln in lines if "-e compare" in ln]
    assert len(compare) == 1 and compare[0].startswith("CNA_TF_BROWSE_LINE=0 ")
    assert sum("Browse the runs" in ln for ln in lines) == 1 and "Browse the runs" in lines[-1]
