"""The experiment a step works on (issue 36 item 2): a given name, else the one `mlflow run`
started the step in, else cna_tf-demo; one set of messages for `compare`, `score` and later
steps. Two tests, one store each (a store's setup costs seconds)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipelines"))

from experiment import DEFAULT, find_experiment, launched_in  # noqa: E402


def test_a_name_else_where_mlflow_run_started_the_step_else_the_demo(store, monkeypatch):
    # the messages first, while the store has no cna_tf-demo experiment
    for step in ("compare", "score"):
        with pytest.raises(SystemExit) as e:
            find_experiment(step, "absent", store)
        msg = str(e.value.code)
        assert msg.startswith(f"{step}: experiment 'absent' not found in sqlite:///")
        assert "-P experiment=NAME" in msg and "mlflow experiments search" in msg
        with pytest.raises(SystemExit) as e:
            find_experiment(step, "", store)
        msg = str(e.value.code)
        assert msg.startswith(f"{step}: no experiment given, none from `mlflow run "
                              f"--experiment-name`, and no {DEFAULT} experiment in sqlite:///")
        assert "run `make demo` first" in msg and "-P experiment=NAME" in msg
    store.delete_experiment(store.create_experiment("gone"))   # deleted: not there to work on
    with pytest.raises(SystemExit, match="score: experiment 'gone' not found"):
        find_experiment("score", "gone", store)
    # `mlflow run` without --experiment-name starts the step in Default: that does not count
    demo = store.create_experiment(DEFAULT)
    default = store.get_experiment_by_name("Default")
    monkeypatch.setenv("MLFLOW_RUN_ID", store.create_run(default.experiment_id).info.run_id)
    assert launched_in(store) is None
    assert find_experiment("compare", "", store).experiment_id == demo
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)             # a run of another store
    assert launched_in(store) is None
    # started in an experiment: that one, unless a name is given
    named, started = store.create_experiment("named"), store.create_experiment("started")
    monkeypatch.setenv("MLFLOW_RUN_ID", store.create_run(started).info.run_id)
    assert launched_in(store).experiment_id == started
    assert find_experiment("score", "", store).experiment_id == started
    assert find_experiment("score", "named", store).experiment_id == named
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert launched_in(store) is None
    assert find_experiment("score", "", store).experiment_id == demo


def test_compare_and_score_exit_with_the_helpers_messages(store, monkeypatch):
    import compare as compare_step
    import score

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=r"^compare: experiment 'absent' not found in sqlite"):
        compare_step.main(["--experiment", "absent"])
    with pytest.raises(SystemExit, match=r"^compare: no experiment given, none from"):
        compare_step.main([])
    with pytest.raises(SystemExit, match=r"^score: no experiment given, none from"):
        score.main(["--measure", "examples/pgdl_measure.py:input_grad_norm"])
