"""MLproject step `compare`: rank every metric by how well it predicts the generalization gap.

Reads the network instances (SPEC §3: each finished train run at each full snapshot; the final
one only for shuffled-label runs) of a grid's child runs, or of every train run of an experiment,
and correlates each metric with ``gen_gap`` and ``loss_gap`` (CNA also with ``test_acc``):
Pearson, Kendall and granulated Kendall, for All Nets, per architecture and per dataset, and,
beside them, PGDL's conditional mutual information with each gap (SPEC §8) on the final snapshots
(one network per run) wherever they form a complete grid over the hyperparameters the scope
varies (a note says why where they do not). Ranks the paper's measures, SPEC §8's ``dist_init``
and ``sum_of_fro``, and the flatness measures when the runs computed them. Logs a
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
           "cna_train", "cna_test", "dist_init", "sum_of_fro")
# SPEC §8's flatness measures: ranked when the runs computed them (train -P flatness=true)
FLATNESS = ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness")
TARGETS = ("gen_gap", "loss_gap")
EXTRA_TARGETS = {"cna_train": ["test_acc"], "cna_test": ["test_acc"]}
READ = METRICS + FLATNESS + TARGETS + ("test_acc", "train_acc")
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
    """Metric x scope table of "Pearson / Kendall / granulated Kendall" for one target, with
    " / CMI" for a gap (SPEC §8), notes where CMI is not computed and the ranking by CMI."""
    rows = [r for r in rows if r["target"] == target]
    scopes = list(dict.fromkeys(r["scope"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cell = {(r["metric"], r["scope"]): r for r in rows}
    with_cmi = target in TARGETS

    def fmt(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"

    def cmi(r):
        return f" / {_fmt_cmi(r.get('cmi'))}" if with_cmi else ""

    title = (f"Correlation with `{target}`: Pearson / Kendall / granulated Kendall "
             f"(n = instances)")
    if with_cmi:
        title += (" / CMI (PGDL's conditional mutual information, SPEC §8, on the final "
                  "snapshots: one network per run)")
    lines = [title, "",
             "| metric | " + " | ".join(f"{s} (n={max(cell[(m, s)]['n'] for m in metrics if (m, s) in cell)})"
                                       for s in scopes) + " |",
             "|---|" + "---|" * len(scopes)]
    for m in metrics:
        vals = [cell.get((m, s)) for s in scopes]
        lines.append(f"| {m} | " + " | ".join(
            "" if r is None else f"{fmt(r['pearson'])} / {fmt(r['kendall'])} / "
            f"{fmt(r['granulated_kendall'])}{cmi(r)}" for r in vals) + " |")
    if with_cmi:
        lines += [""] + _cmi_notes(rows, scopes)
    return "\n".join(lines)


def _fmt_cmi(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _cmi_notes(rows: List[Dict[str, Any]], scopes: List[str]) -> List[str]:
    """Per scope: what CMI was computed over, or why it was not; the ranking by CMI."""
    out = []
    for s in scopes:
        r = next(r for r in rows if r["scope"] == s)
        if "cmi_n" not in r:  # rows of ranking.correlate alone: no CMI was computed
            continue
        if r.get("cmi_note"):
            out.append(f"- CMI in {s}: not computed: {r['cmi_note']}")
            continue
        out.append(f"- CMI in {s}: {r['cmi_n']} final snapshots, a complete grid over "
                   f"{r['cmi_hparams']}.")
        ranked = sorted((x for x in rows if x["scope"] == s and not math.isnan(x["cmi"])),
                        key=lambda x: -x["cmi"])
        if ranked:
            out.append("  Ranked by CMI: " + ", ".join(
                f"{i}. {x['metric']} {_fmt_cmi(x['cmi'])}" for i, x in enumerate(ranked, 1)))
    return out


#: MLflow keeps at most this many characters of a tag (the run's Description is one)
DESCRIPTION_LIMIT = 8000


def description(intro: str, tables: List[str], limit: int = DESCRIPTION_LIMIT) -> str:
    """The compare run's Description: the intro and as many whole tables as MLflow keeps.

    Tables that would not fit are named, not cut: all are in ``compare/correlations.md``.
    """
    text = intro
    for i, table in enumerate(tables):
        if len(text) + 2 + len(table) > limit - 200:  # 200: room for the note below
            targets = [t.split("`")[1] for t in tables[i:] if "`" in t]
            return (f"{text}\n\nThe other {len(tables) - i} table(s) (correlation with "
                    f"{', '.join(targets)}) are in the artifact compare/correlations.md.\n")
        text += f"\n\n{table}"
    return text + "\n"


def to_csv(rows: List[Dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def compare(instances: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    from cna_tf.ranking import correlate

    metrics = list(METRICS) + [m for m in FLATNESS
                               if any(_finite(i.get(m)) for i in instances)]
    rows = correlate(instances, metrics, TARGETS, INSTANCE_AXES, group_by=("arch", "dataset"),
                     extra_targets=EXTRA_TARGETS)
    add_cmi(rows, instances)
    return rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def final_snapshots(instances: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One network per run (SPEC §8): the instance of its last snapshot epoch."""
    last: Dict[Any, Dict[str, Any]] = {}
    for i in instances:
        key = i.get("run_id") or id(i)
        if key not in last or i.get("epoch", 0) > last[key].get("epoch", 0):
            last[key] = i
    return list(last.values())


def _in_scope(instance: Dict[str, Any], scope: str) -> bool:
    from cna_tf.ranking import ALL_NETS

    if scope == ALL_NETS:
        return True
    col, _, value = scope.partition("=")
    return str(instance.get(col)) == value


def add_cmi(rows: List[Dict[str, Any]], instances: List[Dict[str, Any]]) -> None:
    """Adds ``cmi`` (PGDL's conditional mutual information with the row's gap, SPEC §8),
    ``cmi_n``, ``cmi_hparams`` and ``cmi_note`` to every row, in place.

    Per scope: the networks are the runs' final snapshots in it, the hyperparameters the axes
    that vary among them (seed included when it varies). Where those networks are not a
    complete grid (every combination once) or vary fewer than two axes, ``cmi`` is NaN and
    ``cmi_note`` says why. Targets other than the gaps get NaN and no note.
    """
    from cna_tf.ranking import conditional_mutual_information, grid_codes

    finals = final_snapshots(instances)
    per_scope: Dict[str, tuple] = {}
    for scope in dict.fromkeys(r["scope"] for r in rows):
        nets = [i for i in finals if _in_scope(i, scope)]
        axes = [a for a in AXES if len({repr(i.get(a)) for i in nets}) > 1]
        hparams = {a: [i.get(a) for i in nets] for a in axes}
        note = ""
        if len(axes) < 2:
            note = (f"the {len(nets)} final snapshots vary {len(axes)} hyperparameter(s) "
                    f"{axes}; CMI conditions on pairs of them and needs at least two")
        else:
            try:
                grid_codes(hparams, len(nets))
            except ValueError as e:
                note = str(e)
        per_scope[scope] = (nets, hparams, note)
    for r in rows:
        nets, hparams, note = per_scope[r["scope"]]
        r.update(cmi=math.nan, cmi_n=len(nets), cmi_hparams=", ".join(hparams), cmi_note="")
        if r["target"] not in TARGETS:
            continue
        if note:
            r["cmi_note"] = note
            continue
        measure = [float(i.get(r["metric"], math.nan)) for i in nets]
        gap = [float(i.get(r["target"], math.nan)) for i in nets]
        r["cmi"] = conditional_mutual_information(measure, gap, hparams)


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
                         "mlflow.note.content": description(
                             f"Metrics ranked by their correlation with the generalization gap "
                             f"over {len(instances)} network instances ({len(runs)} runs, "
                             f"{scope}).",
                             [markdown(rows, t) for t in TARGETS + ("test_acc",)])})
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
            if r["scope"] == "All Nets" and not math.isnan(r.get("cmi", math.nan)):
                mlflow.log_metric(f"cmi.{r['metric']}.{r['target']}", r["cmi"])
    print(f"compare run {run.info.run_id}: {len(runs)} runs, {len(instances)} network "
          f"instances\n\n{tables}", flush=True)
    return rows


if __name__ == "__main__":
    main()
