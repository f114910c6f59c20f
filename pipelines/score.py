"""MLproject step `score`: a user's own measure on every saved network, no retraining (SPEC §11).

For every finished train run of an experiment (the runs `compare` reads) that saved its model
(``save_model``: artifact ``model/model.keras``), loads the model, rebuilds that network's
training set from the run's parameters (`train.load_data`: same loader, subset, seed, shuffled
labels; preprocessed, no augmentation, in order; `cna_tf.scoring.training_dataset`), calls the
measure ``complexity(model, dataset)`` and logs its value on the train run as metric ``name`` at
the final snapshot's step, with tag ``cna_tf.score.<name>`` (JSON: spec, sha256 of the
function's file, the score run). `compare` then ranks it beside the built-in measures.

Safe to re-run: a network already scored by the same spec and file is skipped (``force``
re-scores); the metric and its tag are logged in one batch, so a step killed mid-way leaves
every network scored or not, and the same command finishes the rest. A measure that raises or
returns a non-finite or non-scalar value on a network is recorded there (tag
``cna_tf.score_error.<name>``) and in the summary, the others go on, and the step exits 1.

    python pipelines/score.py --measure examples/pgdl_measure.py:input_grad_norm \
        --experiment cna_tf-demo
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import ALL_PARAMS, normalize  # noqa: E402
from experiment import find_experiment  # noqa: E402
from params import declared, log_launch, log_resolved, parse_bool  # noqa: E402

from cna_tf import scoring  # noqa: E402
from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402

#: where `train` logs the model with ``save_model``
MODEL_ARTIFACT = "model/model.keras"
#: what a run without a saved model needs
RETRAIN = ("train them again with the model saved: `save_model: true` in the grid config's "
           "defaults (or `-P save_model=true` for `-e train`), in a new experiment (a grid "
           "skips cells it already finished)")
#: a metric name MLflow accepts, also usable in a tag key
NAME = re.compile(r"[A-Za-z0-9_\-.]+")
DATA_CACHE = 4  # datasets kept in memory between networks (a grid shares few)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", default="", help=f"the measure: {scoring.SPEC_FORM}")
    ap.add_argument("--experiment", default="", help="experiment name (default: the one "
                    "`mlflow run --experiment-name` started this run in, else cna_tf-demo)")
    ap.add_argument("--name", default="", help="metric name (default: the function's name)")
    ap.add_argument("--force", type=parse_bool, default=False,
                    help="true: score networks already scored by the same spec and file again")
    return ap.parse_args(argv)


def final_step(client, run) -> int:
    """The step of the run's final snapshot (where the saved model was measured)."""
    snaps = [s for s in run.data.tags.get(TAG + "snapshots", "").split(",") if s.strip()]
    if snaps:
        return max(int(s) for s in snaps)
    hist = client.get_metric_history(run.info.run_id, "gen_gap")
    return max((m.step for m in hist), default=0)


def _label(run) -> str:
    return f"{run.info.run_name or '?'} ({run.info.run_id[:8]})"


class DataCache:
    """The runs' datasets by data parameters: a grid's networks share a few."""

    KEYS = ("dataset", "n_train", "n_test", "label_shuffle", "seed", "data_options")

    def __init__(self):
        self._items: Dict[tuple, Any] = {}

    def get(self, p: Dict[str, Any]):
        from train import load_data

        key = tuple(p[k] for k in self.KEYS)
        if key not in self._items:
            if len(self._items) >= DATA_CACHE:
                self._items.pop(next(iter(self._items)))
            self._items[key] = load_data(p)
        return self._items[key]


def run_cell_params(run) -> Dict[str, Any]:
    """A train run's parameters, normalized as `train` used them."""
    from compare import run_params

    return normalize({k: v for k, v in run_params(run).items() if k in ALL_PARAMS})


def score_run(client, run, measure: scoring.Measure, name: str, data: DataCache,
              score_run_id: str, workdir: str) -> Dict[str, Any]:
    """Scores one network; returns its summary row (``status``: scored or failed).

    Loading the model and data and logging are timed apart from the measure (``overhead``).
    """
    import keras
    from mlflow.entities import Metric, RunTag

    rid = run.info.run_id
    row: Dict[str, Any] = {"run_id": rid, "run": run.info.run_name, "value": math.nan,
                           "error": "", "measure_seconds": 0.0}
    t0 = time.perf_counter()
    phase = "loading the model"
    try:
        local = client.download_artifacts(rid, MODEL_ARTIFACT, workdir)
        model = scoring.load_model(local)
        phase = "rebuilding the training set"
        p = run_cell_params(run)
        dataset = scoring.training_dataset(data.get(p), p["batch_size"])
        phase = "the measure"
        keras.utils.set_random_seed(p["seed"])  # a measure that draws noise repeats its value
        t1 = time.perf_counter()
        try:
            value = measure(model, dataset)
        finally:
            row["measure_seconds"] = time.perf_counter() - t1
        phase = "logging"
        tags = [RunTag(scoring.SCORED_TAG + name, scoring.scored_tag(measure, run=score_run_id))]
        # one request (one transaction on a SQL store): the value and the tag that says it is
        # done land together or not at all
        client.log_batch(rid, metrics=[Metric(name, value, int(time.time() * 1000),
                                              final_step(client, run))], tags=tags)
        if scoring.ERROR_TAG + name in run.data.tags:
            client.delete_tag(rid, scoring.ERROR_TAG + name)
        row.update(status="scored", value=value)
    except Exception as e:
        where = "" if phase == "the measure" else f" ({phase})"
        row.update(status="failed", error=f"{type(e).__name__}{where}: {e}")
        if phase != "the measure":
            traceback.print_exc()
        try:
            client.set_tag(rid, scoring.ERROR_TAG + name,
                           f"{measure.spec} (sha256 {measure.sha256[:12]}): {row['error']}"[:5000])
        except Exception:
            pass
    finally:
        # Keras' global state reset per model; free_memory=False: its gc.collect took 0.5 s
        # of a network's 0.8 s (Python's own collector still frees the old models)
        keras.backend.clear_session(free_memory=False)
    row["overhead_seconds"] = time.perf_counter() - t0 - row["measure_seconds"]
    return row


def _line(status: str, run, text: str) -> str:
    return f"{status:9s} {_label(run)}: {text}"


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Runs the step; returns one summary row per train run. Exits 1 when any network failed."""
    import mlflow

    args = parse_args(argv)
    if not args.measure.strip():
        sys.exit(f"score: no measure given: -P measure=SPEC, SPEC = {scoring.SPEC_FORM} (e.g. "
                 "examples/pgdl_measure.py:input_grad_norm)")
    try:  # before anything is read or loaded
        measure = scoring.resolve(args.measure)
    except scoring.MeasureSpecError as e:
        sys.exit(f"score: {e}")
    name = args.name or measure.name
    if not NAME.fullmatch(name):
        sys.exit(f"score: metric name {name!r}: use letters, digits, _, - and . only "
                 "(-P name=...)")
    from compare import READ, find_runs

    # a suite measure scored under its own name fills in the built-in metric on networks
    # trained without the suite (SPEC §12: `-P measure=cna_tf.suite:pacbayes_orig`)
    if name in READ and measure.spec != f"cna_tf.suite:{name}":
        sys.exit(f"score: {name!r} is a built-in measure's metric; give your measure another "
                 "name: -P name=...")
    client = mlflow.MlflowClient()
    exp = find_experiment("score", args.experiment, client)
    runs = sorted(find_runs(client, [exp.experiment_id]),
                  key=lambda r: (r.info.run_name or "", r.info.start_time or 0, r.info.run_id))
    if not runs:
        sys.exit(f"score: experiment {exp.name!r} has no finished train run to score")
    clash = [r for r in runs
             if name in r.data.metrics and scoring.SCORED_TAG + name not in r.data.tags]
    if clash:
        sys.exit(f"score: {len(clash)} train run(s) of {exp.name!r} already have a metric "
                 f"{name!r} that `score` did not log (e.g. {_label(clash[0])}); give your "
                 "measure another name: -P name=...")

    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the run already exists
        mlflow.set_experiment(experiment_id=exp.experiment_id)
    head = (f"score {measure.spec} (sha256 {measure.sha256[:12] or 'none'}) as metric {name!r} "
            f"on the {len(runs)} finished train runs of {exp.name!r}")
    print(head, flush=True)
    rows: List[Dict[str, Any]] = []
    lines: List[str] = []
    t_start = time.perf_counter()
    data = DataCache()
    own = mlflow.start_run()
    status = "FAILED"  # unless it gets to the end
    workdir = tempfile.mkdtemp(prefix="cna_tf_score_")
    try:
        mlflow.set_tags({TAG + "role": "score", TAG + "score_spec": measure.spec,
                         TAG + "score_sha256": measure.sha256, TAG + "score_metric": name,
                         "mlflow.runName": f"score-{name}"})
        log_launch("score", {k: getattr(args, k) for k in declared("score")})
        log_resolved({"experiment": exp.name, "name": name})
        for run in runs:
            tag = run.data.tags.get(scoring.SCORED_TAG + name)
            if tag and not args.force and measure.same_as(tag):
                value = run.data.metrics.get(name, math.nan)
                row = {"run_id": run.info.run_id, "run": run.info.run_name, "status": "skipped",
                       "value": value, "error": "", "measure_seconds": 0.0,
                       "overhead_seconds": 0.0}
                text = f"{name}={value:.6g} (already scored by this spec and file)"
            else:
                saved = any(a.path == MODEL_ARTIFACT for a in client.list_artifacts(
                    run.info.run_id, os.path.dirname(MODEL_ARTIFACT)))
                if not saved:
                    row = {"run_id": run.info.run_id, "run": run.info.run_name,
                           "status": "no model", "value": math.nan, "error": "",
                           "measure_seconds": 0.0, "overhead_seconds": 0.0}
                    text = "no saved model"
                else:
                    row = score_run(client, run, measure, name, data, own.info.run_id, workdir)
                    text = (f"{name}={row['value']:.6g}" if row["status"] == "scored"
                            else row["error"])
                    text += (f" (measure {row['measure_seconds']:.2f} s, load/data/log "
                             f"{row['overhead_seconds']:.2f} s)")
            rows.append(row)
            lines.append(_line(row["status"], run, text))
            print(lines[-1], flush=True)
        counts = {s: sum(r["status"] == s for r in rows)
                  for s in ("scored", "skipped", "failed", "no model")}
        ran = [r for r in rows if r["status"] in ("scored", "failed")]
        measure_s = sum(r["measure_seconds"] for r in ran)
        overhead_s = sum(r["overhead_seconds"] for r in ran)
        total = (f"{counts['scored']} scored, {counts['skipped']} skipped (already scored), "
                 f"{counts['failed']} failed, {counts['no model']} without a saved model, "
                 f"of {len(rows)} train runs in {time.perf_counter() - t_start:.1f} s")
        if ran:
            total += (f" (measure {measure_s:.1f} s; loading, rebuilding the data and logging "
                      f"{overhead_s / len(ran):.2f} s per network)")
        tail = [total]
        if counts["scored"] or counts["skipped"]:
            tail.append(f"compare ranks {name} beside the built-in measures: mlflow run . "
                        f"--env-manager local -e compare --experiment-name {exp.name} (the "
                        "latest grid's networks; -P all_runs=true: every train run)")
        if counts["no model"]:
            named = ", ".join(_label(r) for r, x in zip(runs, rows) if x["status"] == "no model")
            tail.append(f"{counts['no model']} train run(s) have no saved model: {named}; "
                        f"{RETRAIN}")
        if counts["failed"]:
            tail.append(f"{counts['failed']} network(s) failed (tag "
                        f"{scoring.ERROR_TAG}{name} on each run says why); fix the measure and "
                        "run the same command again: it scores only those not yet scored")
        summary = "\n".join([head, ""] + lines + [""] + tail) + "\n"
        mlflow.log_metrics({"networks_scored": counts["scored"],
                            "networks_skipped": counts["skipped"],
                            "networks_failed": counts["failed"],
                            "networks_without_model": counts["no model"],
                            "measure_seconds": measure_s, "overhead_seconds": overhead_s})
        mlflow.set_tag("mlflow.note.content", summary[:8000])
        mlflow.log_text(summary, "score/summary.txt")
        mlflow.log_text(_csv(rows), "score/scores.csv")
        status = "FAILED" if counts["failed"] else "FINISHED"
    finally:
        mlflow.end_run(status)
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + "\n".join(tail), flush=True)
    if counts["failed"]:
        sys.exit(1)
    if not counts["scored"] and not counts["skipped"]:
        sys.exit(f"score: no train run of {exp.name!r} has a saved model: {RETRAIN}")
    return rows


def _csv(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["run_id", "run", "status", "value", "error",
                                        "measure_seconds", "overhead_seconds"])
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


if __name__ == "__main__":
    main()
