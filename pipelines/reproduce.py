"""MLproject step `reproduce`: the paper's MLP experiments behind Figs 1, 3-7, with a report.

For every dataset (default ``mnist5k`` and ``digits``, the two offline ones) and seed, trains the
paper's MLP (5 hidden ReLU layers, SGD with momentum 0.8) as a nested child run of this run, with
`pipelines/train.py`'s ``train`` in this process: per-epoch CNA, a full snapshot every
``snapshot_every`` epochs, and the per-run figures under ``figures/`` (Fig 1, 4, 6, and Fig 5 for
the first seed when ``trajectory`` is on; Fig 3 under ``cna/``). Then it reads every number back
from MLflow (metric histories, each run's ``figures/quintile_errors.csv``, the network instances
as `compare.py` reads them) and logs to this run:

* ``report.md``: CNA at initialization and at the end per run (train and test); test error per
  alpha quintile at the initial, first trained and last snapshot, pooled over seeds with 95 %
  Wilson intervals, and the Q5/Q1 error ratio (pooled and per seed); the correlation of every
  measure with the generalization gap over the runs' instances beside the paper's MNIST row
  (SPEC §3); and, per finding, whether it reproduced, by criteria stated in the report;
* the figures the report embeds, next to it (``<dataset>_fig*.png``, ``fig7_*.png``,
  ``fig8_*.png``); ``report.json`` (the same numbers); ``correlations.csv``.

    python pipelines/reproduce.py          # 6 runs, ~10 min on a shared 2-core CPU (measured)
    python pipelines/reproduce.py --datasets digits --seeds 2 --quick true
    mlflow run . --env-manager local -e reproduce -P seeds=3
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import cell_key, normalize  # noqa: E402
from params import declared, log_launch, log_resolved, parse_bool, parse_int  # noqa: E402

from cna_tf import report as reporting  # noqa: E402
from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402
from cna_tf.tracking import metric_steps  # noqa: E402

EXPERIMENT = "cna_tf-reproduce"
#: What ``quick`` sets (for tests and a first look): a tiny network on small subsets.
QUICK = {"epochs": 2, "width": 0.1, "n_train": 300, "n_test": 150, "max_samples": 300}
RUN_FIGURES = (("fig1", "figures/fig1_depth_profile.png"),
               ("fig4", "figures/fig4_loss_and_cna.png"),
               ("fig5", "figures/fig5_trajectory_pca.png"),
               ("fig6", "figures/fig6_error_by_alpha_quintile.png"))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist5k,digits", help="comma-separated dataset names")
    ap.add_argument("--seeds", type=parse_int, default=3, help="seeds 0..N-1 per dataset")
    ap.add_argument("--epochs", type=parse_int, default=20, help="training epochs")
    ap.add_argument("--width", type=float, default=1.0, help="MLP width (1: 500 units, paper)")
    ap.add_argument("--batch_size", type=parse_int, default=64)
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (paper MLP: 0.05)")
    ap.add_argument("--snapshot_every", type=parse_int, default=1,
                    help="epochs between full snapshots (network instances, Fig-6 points)")
    ap.add_argument("--n_train", type=parse_int, default=0, help="training subsample (0: all)")
    ap.add_argument("--n_test", type=parse_int, default=0, help="test subsample (0: all)")
    ap.add_argument("--trajectory", default="true",
                    help="record the first seed's weight trajectory for Fig 5")
    ap.add_argument("--workers", type=parse_int, default=1,
                    help="runs trained at once, each in its own process (1: in this process)")
    ap.add_argument("--quick", default="false",
                    help=f"tiny protocol for tests: overrides {', '.join(QUICK)} with {QUICK}")
    ap.add_argument("--experiment", default="",
                    help=f"experiment name (default: the one `mlflow run` uses, else {EXPERIMENT})")
    ap.add_argument("--report_of", default="",
                    help="only rewrite the report of this earlier reproduce run, from what its "
                    "child runs logged (no training; the other options are read from the run)")
    return ap.parse_args(argv)


def protocol(args: argparse.Namespace) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The common parameters and the cells (one per dataset and seed) of a reproduction."""
    common: Dict[str, Any] = {"arch": "mlp", "depth": 5, "momentum": 0.8, "width": args.width,
                              "epochs": args.epochs, "lr": args.lr,
                              "batch_size": args.batch_size,
                              "snapshot_every": args.snapshot_every,
                              "n_train": args.n_train, "n_test": args.n_test,
                              # the paper's measures only: SPEC §12's suite is the grid's
                              "suite": "none"}
    if parse_bool(args.quick):
        common.update(QUICK)
    datasets = [d.strip() for d in str(args.datasets).split(",") if d.strip()]
    if not datasets:
        raise SystemExit("--datasets is empty: give e.g. mnist5k,digits")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    cells = [normalize(dict(common, dataset=d, seed=s,
                            trajectory=parse_bool(args.trajectory) and s == 0))
             for d in datasets for s in range(args.seeds)]
    return common, cells


# -- training ------------------------------------------------------------------------------------

def run_name(p: Dict[str, Any]) -> str:
    """A cell's child-run name and progress label: ``<dataset>-seed<seed>``."""
    return f"{p['dataset']}-seed{p['seed']}"


def train_cell(p: Dict[str, Any], backup_dir: str, parent_id: str,
               experiment_id: str) -> Dict[str, Any]:
    """Trains one cell as a child run of ``parent_id``; a failure is returned, never raised.

    Runs in this process (``workers`` 1) or in a worker process of `run_cells`' pool, which
    has no active run: the child run is attached to the parent by ``parent_run_id``.
    """
    import keras
    import mlflow

    import train as train_step

    t0 = time.time()
    status, error, run_id = "FINISHED", "", ""
    try:
        with mlflow.start_run(run_name=run_name(p), experiment_id=experiment_id,
                              nested=mlflow.active_run() is not None,
                              parent_run_id=parent_id) as child:
            run_id = child.info.run_id
            train_step.train(p, backup_dir=backup_dir)
            mlflow.log_metric("train_seconds", time.time() - t0)
    except Exception as e:  # the report lists it; the other runs go on
        status, error = "FAILED", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    keras.backend.clear_session()
    return {"dataset": p["dataset"], "seed": p["seed"], "run_id": run_id, "status": status,
            "error": error, "seconds": time.time() - t0}


def _worker_init(threads: int, tracking_uri: str) -> None:
    """A worker process's setup, before it imports its backend: this run's tracking store and
    its share of the cores."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def run_cells(cells: Sequence[Dict[str, Any]], backup_root: Path, parent_id: str,
              experiment_id: str, workers: int = 1) -> List[Dict[str, Any]]:
    """Trains each cell as a child run of ``parent_id``, ``workers`` at a time.

    One worker trains in this process; more train in fresh (spawned) processes, each given an
    equal share of the cores. One failure, or one worker process dying, stops nothing.
    """
    import mlflow

    names = [run_name(p) for p in cells]
    args = [(p, str(backup_root / cell_key(p)), parent_id, experiment_id) for p in cells]
    for i, (p, name) in enumerate(zip(cells, names), 1):
        print(f"[{i}/{len(cells)}] training {name} ({p['epochs']} epochs, width {p['width']:g})"
              + (f", {workers} at a time" if workers > 1 else ""), flush=True)
    done: List[Optional[Dict[str, Any]]] = [None] * len(cells)

    def finish(i: int, r: Dict[str, Any]) -> None:
        done[i] = r
        print(f"[{i + 1}/{len(cells)}] {r['status']} {names[i]} in {r['seconds']:.0f}s",
              flush=True)

    if workers <= 1:
        for i, a in enumerate(args):
            finish(i, train_cell(*a))
        return done  # type: ignore[return-value]

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)),
                             mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, mlflow.get_tracking_uri())) as pool:
        futures = {pool.submit(train_cell, *a): i for i, a in enumerate(args)}
        t0 = time.time()
        for f in as_completed(futures):
            i = futures[f]
            try:
                finish(i, f.result())
            except Exception as e:  # the worker process died (killed, out of memory)
                finish(i, {"dataset": cells[i]["dataset"], "seed": cells[i]["seed"],
                           "run_id": "", "status": "FAILED",
                           "error": f"worker process died: {type(e).__name__}: {e}",
                           "seconds": time.time() - t0})
    return done  # type: ignore[return-value]


# -- reading the runs back -------------------------------------------------------------------------

def quintile_rows(client, run_id: str, dest: str) -> List[Dict[str, float]]:
    """The run's ``figures/quintile_errors.csv`` (empty when it was not logged)."""
    try:
        path = client.download_artifacts(run_id, "figures/quintile_errors.csv", dest)
    except Exception:
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def read_runs(client, parent_id: str, experiment_id: str, workdir: str) -> List[Dict[str, Any]]:
    """The finished train runs under ``parent_id`` as `cna_tf.report.analyze` reads them."""
    import compare as compare_step
    from compare import run_params

    runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
        f"tags.`{TAG}role` = 'train' and attributes.status = 'FINISHED'", max_results=10_000)
    records = []
    for r in runs:
        params, rid = run_params(r), r.info.run_id
        loss = reporting.loss_key(r.data.metrics)
        records.append({
            "dataset": params["dataset"], "seed": params["seed"], "run_id": rid,
            "histories": metric_steps(rid, reporting.SUMMARY_KEYS + (loss,), client),
            "loss_key": loss,
            "quintile_rows": quintile_rows(client, rid, tempfile.mkdtemp(dir=workdir)),
            "instances": compare_step.instances_of_run(client, r)})
    return records


# -- report ----------------------------------------------------------------------------------------

def _copy_run_figures(client, result: Dict[str, Any], workdir: str) -> Dict[str, str]:
    """Logs the first seed's figures of each dataset next to the report; returns their names."""
    import mlflow

    out = {}
    for ds, d in result["datasets"].items():
        rid = d["figure_run"]
        wanted = list(RUN_FIGURES)
        cna_pngs = sorted((a.path for a in client.list_artifacts(rid, "cna")
                           if a.path.endswith(".png")),
                          key=lambda p: int("".join(c for c in p.rsplit("epoch", 1)[-1]
                                                    if c.isdigit()) or 0))
        if cna_pngs:
            wanted.append(("fig3", cna_pngs[-1]))
        for key, path in wanted:
            try:
                local = client.download_artifacts(rid, path, tempfile.mkdtemp(dir=workdir))
            except Exception:
                continue  # e.g. no Fig 5 without a trajectory, or a figure that failed
            name = f"{ds}_{Path(path).name}" if key != "fig3" else f"{ds}_fig3_{Path(path).name}"
            target = Path(workdir) / name
            shutil.copyfile(local, target)
            mlflow.log_artifact(str(target))
            out[f"{ds}_{key}"] = name
    return out


def _summary_figures(result: Dict[str, Any]) -> Dict[str, str]:
    """Logs Fig 7 and Fig 8 over every instance next to the report; returns their names."""
    import mlflow

    import compare as compare_step
    from cna_tf import plots

    out = {}
    if not result.get("_instances"):
        return out
    makers = [("fig7", "fig7_cna_vs_test_acc.png",
               lambda: compare_step.accuracy_figure(result["_instances"]))]
    if result.get("correlations"):
        makers.append(("fig8", "fig8_correlation_gen_gap.png",
                       lambda: plots.correlation_bars(
                           reporting.pearson_by_scope(result["correlations"], "gen_gap"),
                           title="Pearson correlation with gen_gap")))
    for key, name, make in makers:
        try:
            fig = make()
            mlflow.log_figure(fig, name)
            plots.close(fig)
            out[key] = name
        except Exception as e:
            print(f"warning: {name} not drawn: {type(e).__name__}: {e}", file=sys.stderr)
            mlflow.set_tag(f"{TAG}figure_error.{key}", f"{type(e).__name__}: {e}"[:5000])
    return out


def report(client, parent_id: str, experiment_id: str, common: Dict[str, Any],
           runs: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    """Analyzes the child runs and logs report.md, its figures and report.json to the active run."""
    import mlflow

    import compare as compare_step

    workdir = tempfile.mkdtemp(prefix="cna_tf_report_")
    try:
        order = list(dict.fromkeys(r["dataset"] for r in runs))
        result = reporting.analyze(read_runs(client, parent_id, experiment_id, workdir), order,
                                   correlate=compare_step.compare)
        figures = _copy_run_figures(client, result, workdir)
        figures.update(_summary_figures(result))
        table = (compare_step.markdown(result["correlations"], "gen_gap")
                 if result.get("correlations") else "")
        text = reporting.render(result, common, runs, figures, seconds, full_table=table)
        mlflow.log_text(text, "report.md")
        if result.get("correlations"):
            mlflow.log_text(compare_step.to_csv(result["correlations"]), "correlations.csv")
        public = {k: v for k, v in result.items() if not k.startswith("_")
                  and k != "correlations"}
        public.update(protocol=common, runs=runs, seconds=seconds, figures=figures)
        mlflow.log_text(json.dumps(reporting.to_jsonable(public), indent=1), "report.json")
        for ds, d in result["datasets"].items():
            for r in d["runs"]:
                for k in ("cna_train_init", "cna_train_end", "cna_test_init", "cna_test_end"):
                    if math.isfinite(r[k]):
                        mlflow.log_metric(f"{ds}.{k}", r[k], step=r["seed"])
            for key, q in d["quintiles"].items():
                if q and math.isfinite(q["ratio_q5_q1"]):
                    mlflow.log_metric(f"{ds}.q5_q1_ratio.{key}", q["ratio_q5_q1"])
        print(text, flush=True)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rewrite_report(run_id: str) -> Dict[str, Any]:
    """Rewrites report.md (and its figures, report.json) of an earlier reproduce run."""
    import mlflow

    from compare import run_params
    from params import read_params

    client = mlflow.MlflowClient()
    parent = client.get_run(run_id)
    if parent.data.tags.get(TAG + "role") != "reproduce":
        raise SystemExit(f"run {run_id} is not a reproduce run (tag {TAG}role)")
    params = read_params(parent.data.params)
    argv = [x for k in ("datasets", "seeds", "epochs", "width", "batch_size", "lr",
                        "snapshot_every", "n_train", "n_test", "trajectory", "quick")
            if k in params for x in (f"--{k}", str(params[k]))]
    common, _ = protocol(parse_args(argv))
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{run_id}' and "
                              f"tags.`{TAG}role` = 'train'", max_results=10_000)
    runs = []
    for k in sorted(kids, key=lambda r: r.info.start_time):
        kp = run_params(k)
        runs.append({"dataset": kp.get("dataset"), "seed": kp.get("seed"),
                     "run_id": k.info.run_id, "status": k.info.status,
                     "error": k.data.tags.get(TAG + "failure", ""),
                     "seconds": k.data.metrics.get("train_seconds", math.nan)})
    m = parent.data.metrics
    seconds = m.get("reproduce_seconds", m.get("train_seconds_total", math.nan))
    with mlflow.start_run(run_id=run_id):
        return report(client, run_id, parent.info.experiment_id, common, runs, seconds)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    import mlflow

    args = parse_args(argv)
    if args.report_of:
        return rewrite_report(args.report_of)
    common, cells = protocol(args)
    t0 = time.time()
    own = os.environ.pop("MLFLOW_RUN_ID", "") or None  # `mlflow run` created this run
    if not own:
        mlflow.set_experiment(args.experiment or EXPERIMENT)
    elif args.experiment:
        print(f"note: running inside `mlflow run`'s run {own}; --experiment is ignored")
    backup_root = Path(tempfile.mkdtemp(prefix="cna_tf_reproduce_"))
    client = mlflow.MlflowClient()
    try:
        with mlflow.start_run(run_id=own, run_name=None if own else "reproduce") as run:
            mlflow.set_tags({TAG + "role": "reproduce"})
            log_launch("reproduce", {k: getattr(args, k) for k in declared("reproduce")})
            log_resolved(dict(common, datasets=",".join(dict.fromkeys(c["dataset"]
                                                                     for c in cells))))
            runs = run_cells(cells, backup_root, run.info.run_id, run.info.experiment_id,
                             args.workers)
            seconds = time.time() - t0
            mlflow.log_metric("train_seconds_total", sum(r["seconds"] for r in runs))
            result = report(client, run.info.run_id, run.info.experiment_id, common, runs,
                            seconds)
            mlflow.log_metric("reproduce_seconds", time.time() - t0)
            if not any(r["status"] == "FINISHED" for r in runs):
                raise SystemExit("every training run failed; see the log above")
    finally:
        shutil.rmtree(backup_root, ignore_errors=True)
    print(f"reproduce run {run.info.run_id}: report.md logged; {time.time() - t0:.0f}s",
          flush=True)
    return result


if __name__ == "__main__":
    main()
