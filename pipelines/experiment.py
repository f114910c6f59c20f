"""The experiment an MLproject step works on: one rule and one set of messages for every step.

A step that reads a store's runs (`compare`, `score`, ...) works on, in this order:

1. the experiment it is given by name (``-P experiment=NAME``, ``--experiment NAME``);
2. else the experiment ``mlflow run --experiment-name NAME`` started the step's run in (its id
   is ``MLFLOW_RUN_ID``), unless that is MLflow's ``Default`` one (``mlflow run`` without
   ``--experiment-name``);
3. else :data:`DEFAULT`, the experiment ``make demo`` trains in.

    >>> exp = find_experiment("score", args.experiment)
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

__all__ = ["DEFAULT", "launched_in", "find_experiment"]

#: the experiment a step falls back to (``make demo`` trains there)
DEFAULT = "cna_tf-demo"


def launched_in(client: Any = None) -> Optional[Any]:
    """The experiment ``mlflow run`` started this step's run in.

    Args:
        client: an ``mlflow.MlflowClient`` (default: one on the current tracking URI).

    Returns:
        The ``mlflow.entities.Experiment``, or None when the step was not started by
        ``mlflow run`` (no ``MLFLOW_RUN_ID``), the run is not in this store, or it is in MLflow's
        ``Default`` experiment (``mlflow run`` without ``--experiment-name``).
    """
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    client = client or mlflow.MlflowClient()
    try:
        exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    except Exception:  # a run id from another store: not ours to read
        return None
    return None if exp.name == "Default" else exp


def find_experiment(step: str, name: str = "", client: Any = None) -> Any:
    """The experiment the step ``step`` works on: ``name``, else :func:`launched_in`, else
    :data:`DEFAULT`.

    Args:
        step: the step's name, which starts every message (``"compare"``, ``"score"``).
        name: the experiment's name as the user gave it; empty when not given.
        client: an ``mlflow.MlflowClient`` (default: one on the current tracking URI).

    Returns:
        The ``mlflow.entities.Experiment``.

    Raises:
        SystemExit: the named experiment is not in the store, or none was named, the step
            was not started in one, and there is no :data:`DEFAULT` experiment; the message
            names the store and what to do.
    """
    import mlflow

    client = client or mlflow.MlflowClient()
    where = mlflow.get_tracking_uri()
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            sys.exit(f"{step}: experiment {name!r} not found in {where}: name one that exists "
                     "(`mlflow experiments search` lists them) with -P experiment=NAME "
                     "(--experiment NAME for the script)")
        return exp
    exp = launched_in(client) or client.get_experiment_by_name(DEFAULT)
    if exp is None or exp.lifecycle_stage == "deleted":
        sys.exit(f"{step}: no experiment given, none from `mlflow run --experiment-name`, and no "
                 f"{DEFAULT} experiment in {where}: run `make demo` first, or name the "
                 "experiment with -P experiment=NAME (--experiment NAME for the script) or "
                 "`mlflow run --experiment-name NAME`")
    return exp
