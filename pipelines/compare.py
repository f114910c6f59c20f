"""MLproject step `compare`: rank every metric by how well it predicts the generalization gap.

Reads the network instances (SPEC §3: each finished train run at each full snapshot; the final
one only for shuffled-label runs) of a grid's child runs, or of every train run of an experiment,
and correlates each metric with ``gen_gap`` and ``loss_gap`` (CNA also with ``test_acc``):
Pearson, Kendall and granulated Kendall, for All Nets, per architecture and per dataset. Logs a
CSV and a Markdown table, the instances, Fig-8/9-style bar charts and the Fig-7 scatter of CNA
against test accuracy to the compare run, and prints the Markdown table.

    python pipelines/compare.py --grid_run_id <id>          # one grid
    python pipelines/compare.py --experiment cna_tf-demo    # all train runs of an experiment
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import ALL_PARAMS, AXES  # noqa: E402
from params import declared, log_launch, log_resolved, parse_bool, read_params  # noqa: E402

from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402
from cna_tf.tracking import metric_steps  # noqa: E402

METRICS = ("cna_area", "cna_margin", "l2", "l2_path", "spectral", "bound_2018", "margin",
           "cna_train", "cna_test")
TARGETS = ("gen_gap", "loss_gap")
EXTRA_TARGETS = {"cna_train": ["test_acc"], "cna_test": ["test_acc"]}
READ = METRICS + TARGETS + ("test_acc", "train_acc")
INSTANCE_AXES = AXES + ("epoch",)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid_run_id", default="", help="the grid's parent run (default: the "
                    "latest grid run of the experiment)")
    ap.add_argument("--experiment", default="", help="experiment name (default: the grid's; "
                    "with neither, cna_tf-demo)")
    ap.add_argument("--all_runs", type=parse_bool, default=False,
                    help="true: every finished train run of the experiment, not one grid's")
    return ap.parse_args(argv)


def run_params(run) -> Dict[str, Any]:
    """A train run's parameters, typed: the values its step resolved, else the declared ones."""
    return read_params(run.data.params, {k: v[0] for k, v in ALL_PARAMS.items()})


def instances_of_run(client, run) -> List[Dict[str, Any]]:
    """The network instances of one finished train run: one per full snapshot epoch."""
    # the last value logged at a step wins (a resumed epoch may have been logged twice)
    history = metric_steps(run.info.run_id, [k for k in READ if k in run.data.metrics], client,
                           duplicates="last")
    steps = sorted(history.get("gen_gap", {}))
    if run.data.tags.get(TAG + "final_only") == "true" and steps:
        steps = steps[-1:]
    base = run_params(run)
    base.update(run_id=run.info.run_id, cell_key=run.data.tags.get(TAG + "cell_key", ""))
    out = []
    for step in steps:
        row = dict(base, epoch=step)
        for key, values in history.items():
            row[key] = values.get(step, math.nan)
        out.append(row)
    return out


def find_runs(client, experiment_ids: Sequence[str], grid_run_id: str = ""):
    """Finished train runs: a grid's children, or all of the experiments'."""
    query = f"tags.`{TAG}role` = 'train' and attributes.status = 'FINISHED'"
    if grid_run_id:
        query += f" and tags.mlflow.parentRunId = '{grid_run_id}'"
    return client.search_runs(list(experiment_ids), query, max_results=50_000)


def markdown(rows: List[Dict[str, Any]], target: str) -> str:
    """Metric x scope table of "Pearson / Kendall / granulated Kendall" for one target."""
    rows = [r for r in rows if r["target"] == target]
    scopes = list(dict.fromkeys(r["scope"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cell = {(r["metric"], r["scope"]): r for r in rows}

    def fmt(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"

    lines = [f"Correlation with `{target}`: Pearson / Kendall / granulated Kendall "
             f"(n = instances)", "",
             "| metric | " + " | ".join(f"{s} (n={max(cell[(m, s)]['n'] for m in metrics if (m, s) in cell)})"
                                       for s in scopes) + " |",
             "|---|" + "---|" * len(scopes)]
    for m in metrics:
        vals = [cell.get((m, s)) for s in scopes]
        lines.append(f"| {m} | " + " | ".join(
            "" if r is None else f"{fmt(r['pearson'])} / {fmt(r['kendall'])} / "
            f"{fmt(r['granulated_kendall'])}" for r in vals) + " |")
    return "\n".join(lines)


def to_csv(rows: List[Dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def compare(instances: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from cna_tf.ranking import correlate

    return correlate(instances, METRICS, TARGETS, INSTANCE_AXES, group_by=("arch", "dataset"),
                     extra_targets=EXTRA_TARGETS)


def _figures(rows: List[Dict[str, Any]]):
    """Fig-8/9-style bars of the Pearson correlation with each target, per scope."""
    from cna_tf import plots

    for target in TARGETS:
        table = {}
        for r in rows:
            if r["target"] == target:
                table.setdefault(r["scope"], {})[r["metric"]] = r["pearson"]
        yield f"correlation_{target}.png", plots.correlation_bars(
            table, title=f"Pearson correlation with {target}")


def accuracy_figure(instances: List[Dict[str, Any]], cna_key: str = "cna_test"):
    """Paper Fig. 7: CNA against test accuracy over every network instance, by arch/dataset."""
    from cna_tf import plots

    return plots.cna_vs_accuracy([i.get(cna_key, math.nan) for i in instances],
                                 [i.get("test_acc", math.nan) for i in instances],
                                 groups=[f"{i.get('arch')}/{i.get('dataset')}" for i in instances],
                                 title=f"{cna_key} vs test accuracy (Fig. 7)")


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    import mlflow

    args = parse_args(argv)
    client = mlflow.MlflowClient()
    grid_id = args.grid_run_id
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            sys.exit(f"experiment {args.experiment!r} not found in {mlflow.get_tracking_uri()}")
    elif grid_id:
        exp = client.get_experiment(client.get_run(grid_id).info.experiment_id)
    else:
        exp = client.get_experiment_by_name("cna_tf-demo")
        if exp is None:
            sys.exit("no experiment given and no cna_tf-demo experiment: run the grid first or "
                     "pass --experiment / --grid_run_id")
    all_runs = args.all_runs
    if not grid_id and not all_runs:
        grids = client.search_runs([exp.experiment_id], f"tags.`{TAG}role` = 'grid'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not grids:
            sys.exit(f"no grid run in experiment {exp.name!r}: pass --all_runs true to compare "
                     "every train run")
        grid_id = grids[0].info.run_id
    grid_name = client.get_run(grid_id).data.tags.get(TAG + "config", "") if grid_id else ""
    runs = find_runs(client, [exp.experiment_id], "" if all_runs else grid_id)
    instances = [i for run in runs for i in instances_of_run(client, run)]
    if len(instances) < 3:
        sys.exit(f"only {len(instances)} network instances found (finished train runs with "
                 "snapshots): nothing to correlate")
    rows = compare(instances)
    tables = "\n\n".join(markdown(rows, t) for t in TARGETS + ("test_acc",))
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the run already exists
        mlflow.set_experiment(experiment_id=exp.experiment_id)
    with mlflow.start_run() as run:
        scope = f"grid {grid_id}" if grid_id else f"all train runs of {exp.name}"
        mlflow.set_tags({TAG + "role": "compare", TAG + "grid_run_id": grid_id or "",
                         "mlflow.runName": "compare" + (f"-{grid_name}" if grid_name else ""),
                         # the run page's Description
                         "mlflow.note.content": f"Metrics ranked by their correlation with the "
                                                f"generalization gap over {len(instances)} "
                                                f"network instances ({len(runs)} runs, "
                                                f"{scope}).\n\n{tables}\n"})
        log_launch("compare", {k: getattr(args, k) for k in declared("compare")})
        log_resolved({"grid_run_id": grid_id or "all", "experiment": exp.name})
        mlflow.log_metrics({"runs": len(runs), "instances": len(instances)})
        mlflow.log_text(to_csv(rows), "compare/correlations.csv")
        mlflow.log_text(tables + "\n", "compare/correlations.md")
        mlflow.log_text(to_csv(instances), "compare/instances.csv")
        from cna_tf import plots
        for name, fig in _figures(rows):
            mlflow.log_figure(fig, f"compare/{name}")
            plots.close(fig)
        try:
            fig = accuracy_figure(instances)
            mlflow.log_figure(fig, "compare/cna_vs_test_acc.png")
            plots.close(fig)
        except Exception as e:  # the tables are the result; a figure never fails the step
            print(f"warning: compare/cna_vs_test_acc.png not logged: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
            mlflow.set_tag(TAG + "figure_error.cna_vs_test_acc", f"{type(e).__name__}: {e}"[:5000])
        for r in rows:
            if r["scope"] == "All Nets" and not math.isnan(r["pearson"]):
                mlflow.log_metric(f"pearson.{r['metric']}.{r['target']}", r["pearson"])
    print(f"compare run {run.info.run_id}: {len(runs)} runs, {len(instances)} network "
          f"instances\n\n{tables}", flush=True)
    return rows


if __name__ == "__main__":
    main()
