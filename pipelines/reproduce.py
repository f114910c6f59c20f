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

TAG = "cna_tf."
EXPERIMENT = "cna_tf-reproduce"
#: SPEC §3: Pearson correlation with the generalization gap, MNIST (supplement).
PAPER_MNIST = {"cna_area": 0.98, "cna_margin": 0.39, "l2": 0.13, "l2_path": 0.05,
               "spectral": 0.17, "bound_2018": 0.17}
#: Paper dataset whose row a dataset of ours is compared with (mnist5k: 5,000 real MNIST digits).
PAPER_ROW = {"mnist5k": "MNIST", "mnist": "MNIST"}
LABELS = {"cna_area": "CNA-A", "cna_margin": "CNA-M", "l2": "L2", "l2_path": "L2-path",
          "spectral": "Spectral", "bound_2018": "2018 bound"}
BASELINES = ("l2", "l2_path", "spectral", "bound_2018")
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
                              "n_train": args.n_train, "n_test": args.n_test}
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

def run_cells(cells: Sequence[Dict[str, Any]], backup_root: Path) -> List[Dict[str, Any]]:
    """Trains each cell as a nested child run of the active run; one failure stops nothing."""
    import keras
    import mlflow

    import train as train_step

    done = []
    for i, p in enumerate(cells, 1):
        t0 = time.time()
        status, error, run_id = "FINISHED", "", ""
        name = f"{p['dataset']}-seed{p['seed']}"
        print(f"[{i}/{len(cells)}] training {name} ({p['epochs']} epochs, width {p['width']:g})",
              flush=True)
        try:
            with mlflow.start_run(run_name=name, nested=True) as child:
                run_id = child.info.run_id
                train_step.train(p, backup_dir=str(backup_root / cell_key(p)))
                mlflow.log_metric("train_seconds", time.time() - t0)
        except Exception as e:  # the report lists it; the other runs go on
            status, error = "FAILED", f"{type(e).__name__}: {e}"
            traceback.print_exc()
        keras.backend.clear_session()
        seconds = time.time() - t0
        print(f"[{i}/{len(cells)}] {status} {name} in {seconds:.0f}s", flush=True)
        done.append({"dataset": p["dataset"], "seed": p["seed"], "run_id": run_id,
                     "status": status, "error": error, "seconds": seconds})
    return done


# -- analysis: every number from MLflow ------------------------------------------------------------

def _history(client, run_id: str, key: str) -> Dict[int, float]:
    """step -> value; the last value logged at a step wins (as in compare.instances_of_run)."""
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    from cna_tf.ranking import pearson

    return float(pearson(list(x), list(y)))


def loss_key(run) -> str:
    """Keras' per-epoch training loss: ``loss``; runs logged before that name: ``train_loss``.

    (``train_loss`` is now the callback's loss on the un-augmented training set at snapshots.)
    """
    return "loss" if "loss" in run.data.metrics else "train_loss"


def run_summary(client, run) -> Dict[str, Any]:
    """CNA at initialization and at the end, accuracy, loss and CNA-A of one child run."""
    rid = run.info.run_id
    out: Dict[str, Any] = {"run_id": rid}
    for key in ("cna_train", "cna_test"):
        h = _history(client, rid, key)
        out[f"{key}_init"] = h.get(0, math.nan)
        out[f"{key}_end"] = h[max(h)] if h else math.nan
        out["end_epoch"] = max(h) if h else -1
    for key in ("test_acc", "train_acc", "gen_gap", "cna_area", "cna_margin"):
        h = _history(client, rid, key)
        out[f"{key}_end"] = h[max(h)] if h else math.nan
    loss = _history(client, rid, loss_key(run))
    cna_tr = _history(client, rid, "cna_train")
    steps = sorted(s for s in loss if s in cna_tr and s > 0)
    out["loss_first"] = loss[min(loss)] if loss else math.nan
    out["loss_last"] = loss[max(loss)] if loss else math.nan
    # Fig 4 in one number: over epochs 1..E, does CNA rise as the training loss falls (< 0)?
    out["corr_loss_cna"] = _pearson([loss[s] for s in steps], [cna_tr[s] for s in steps])
    out["fig4_holds"] = bool(out["cna_train_end"] > out["cna_train_init"]
                             and out["cna_test_end"] > out["cna_test_init"]
                             and out["corr_loss_cna"] < 0)
    return out


def quintile_rows(client, run_id: str, dest: str) -> List[Dict[str, float]]:
    """The run's ``figures/quintile_errors.csv`` (empty when it was not logged)."""
    try:
        path = client.download_artifacts(run_id, "figures/quintile_errors.csv", dest)
    except Exception:
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def pooled_quintiles(per_run: Dict[int, List[Dict[str, float]]], epoch: int
                     ) -> Dict[str, Any]:
    """Errors and sizes per quintile at one snapshot epoch, summed over seeds, with Wilson CIs.

    Args:
        per_run: ``{seed: rows of figures/quintile_errors.csv}``; runs without the epoch are
            left out.
    """
    from cna_tf.analysis import wilson_interval

    seeds = sorted(s for s, rows in per_run.items() if any(r["epoch"] == epoch for r in rows))
    if not seeds:
        return {}
    bins = int(max(r["quintile"] for r in per_run[seeds[0]]))
    errors, n = [0] * bins, [0] * bins
    per_seed_ratio = {}
    for s in seeds:
        rows = {int(r["quintile"]): r for r in per_run[s] if r["epoch"] == epoch}
        for q in range(1, bins + 1):
            errors[q - 1] += int(rows[q]["errors"])
            n[q - 1] += int(rows[q]["n"])
        per_seed_ratio[s] = _ratio(rows[bins]["error"], rows[1]["error"])
    low, high = wilson_interval(errors, n)
    rates = [e / k for e, k in zip(errors, n)]
    out = {"epoch": int(epoch), "seeds": seeds,
           "quintiles": [{"quintile": q + 1, "errors": errors[q], "n": n[q], "error": rates[q],
                          "low": float(low[q]), "high": float(high[q])} for q in range(bins)],
           "ratio_q5_q1": _ratio(rates[-1], rates[0]), "per_seed_ratio": per_seed_ratio}
    out["verdict"] = fig6_verdict(out["quintiles"])
    return out


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return float(a / b)
    return math.inf if a > 0 else math.nan


def fig6_verdict(q: List[Dict[str, float]]) -> str:
    """Paper Fig 6: error rises with alpha quintile, the top quintile having the most error."""
    rates = [r["error"] for r in q]
    monotone = all(b >= a for a, b in zip(rates, rates[1:]))
    if q[-1]["low"] > q[0]["high"]:
        return "reproduced" if monotone else "partly (Q5 > Q1 beyond the intervals, not monotone)"
    if q[0]["low"] > q[-1]["high"]:
        return "not reproduced: opposite (Q1 > Q5 beyond the intervals)"
    return "not reproduced (Q1 and Q5 intervals overlap)"


def analyze(client, parent_id: str, experiment_id: str, workdir: str,
            order: Sequence[str] = ()) -> Dict[str, Any]:
    """All the report's numbers, read from the child runs of ``parent_id``.

    ``order``: the datasets' order in the report (others follow, by name).
    """
    import compare as compare_step
    from compare import run_params

    runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
        f"tags.`{TAG}role` = 'train' and attributes.status = 'FINISHED'", max_results=10_000)
    by_ds: Dict[str, List[Any]] = {}
    for r in runs:
        by_ds.setdefault(run_params(r)["dataset"], []).append(r)
    result: Dict[str, Any] = {"datasets": {}, "instances": 0}
    all_instances: List[Dict[str, Any]] = []
    names = [d for d in order if d in by_ds] + sorted(d for d in by_ds if d not in order)
    for ds in names:
        ds_runs = by_ds[ds]
        ds_runs.sort(key=lambda r: run_params(r)["seed"])
        summaries, per_run_q = [], {}
        for r in ds_runs:
            seed = run_params(r)["seed"]
            summaries.append(dict(run_summary(client, r), seed=seed))
            rows = quintile_rows(client, r.info.run_id, tempfile.mkdtemp(dir=workdir))
            if rows:
                per_run_q[seed] = rows
            all_instances += compare_step.instances_of_run(client, r)
        epochs = sorted({int(row["epoch"]) for rows in per_run_q.values() for row in rows})
        snaps = {}
        if epochs:
            trained = [e for e in epochs if e > 0]
            picks = {"init": epochs[0]}
            if trained:
                picks.update(first=trained[0], last=trained[-1])
            snaps = {k: pooled_quintiles(per_run_q, e) for k, e in picks.items()}
        result["datasets"][ds] = {"runs": summaries, "quintiles": snaps,
                                  "seeds": [s["seed"] for s in summaries],
                                  "quintile_seeds": sorted(per_run_q),
                                  "figure_run": ds_runs[0].info.run_id}
    result["instances"] = len(all_instances)
    if len(all_instances) >= 3:
        rows = compare_step.compare(all_instances)
        result["correlations"] = rows
        for ds, d in result["datasets"].items():
            d["fig7"] = _fig7(all_instances, rows, ds)
            d["fig8"] = _fig8(rows, ds, [i for i in all_instances if i.get("dataset") == ds])
    result["_instances"] = all_instances
    return result


def _row(rows, scope: str, metric: str, target: str) -> Dict[str, Any]:
    for r in rows:
        if r["scope"] == scope and r["metric"] == metric and r["target"] == target:
            return r
    return {"n": 0, "pearson": math.nan, "kendall": math.nan, "granulated_kendall": math.nan}


def _fig7(instances, rows, ds: str) -> Dict[str, Any]:
    """Pearson r of cna_test with test_acc over the dataset's instances (and trained ones)."""
    mine = [i for i in instances if i.get("dataset") == ds]
    trained = [i for i in mine if i.get("epoch", 0) > 0]
    r_all = _row(rows, f"dataset={ds}", "cna_test", "test_acc")
    return {"r": r_all["pearson"], "n": r_all["n"],
            "r_trained": _pearson([i.get("cna_test", math.nan) for i in trained],
                                  [i.get("test_acc", math.nan) for i in trained]),
            "n_trained": len(trained),
            "verdict": ("undetermined (r undefined)" if not math.isfinite(r_all["pearson"])
                        else "reproduced" if r_all["pearson"] > 0 else "not reproduced")}


def _fig8(rows, ds: str, instances: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """CNA-A / CNA-M vs the norm baselines: Pearson with gen_gap over the dataset's instances.

    ``table`` is compare's (each measure over the instances where it is defined); the verdict
    compares CNA-M with the baselines on the same instances (``matched``: those where every
    measure is finite; the baselines are undefined where the margin is <= 0).
    """
    scope = f"dataset={ds}"
    table = {m: {k: _row(rows, scope, m, "gen_gap")[k] for k in
                 ("n", "pearson", "kendall", "granulated_kendall")} for m in PAPER_MNIST}
    keys = list(PAPER_MNIST) + ["gen_gap"]
    both = [i for i in instances
            if all(isinstance(i.get(k), (int, float)) and math.isfinite(i[k]) for k in keys)]
    matched = {m: _pearson([i[m] for i in both], [i["gen_gap"] for i in both])
               for m in PAPER_MNIST}
    cna_m = matched["cna_margin"]
    base = [matched[b] for b in BASELINES]
    if len(both) < 3 or not all(math.isfinite(v) for v in [cna_m] + base):
        verdict = "undetermined (a correlation is undefined)"
    elif all(cna_m > b for b in base):
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    area = table["cna_area"]["pearson"]
    return {"table": table, "matched": matched, "n_matched": len(both), "verdict": verdict,
            "cna_area_verdict": ("undetermined (r undefined)" if not math.isfinite(area) else
                                 "reproduced" if area > 0 else "not reproduced")}


# -- report ----------------------------------------------------------------------------------

def _f(v: Any, fmt: str = "+.3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, fmt)


def _pct(v: float) -> str:
    return _f(100 * v, ".1f") + " %"


def render(result: Dict[str, Any], common: Dict[str, Any], runs: List[Dict[str, Any]],
           figures: Dict[str, str], seconds: float) -> str:
    """The Markdown report (figure paths relative to the report)."""
    L: List[str] = []
    a = L.append
    a("# Reproduction report: Gain & Siegelmann (ICML 2020), MLP on offline data\n")
    a(f"Protocol: the paper's MLP (5 hidden ReLU layers, width {common['width']:g} × 500 units), "
      f"SGD lr {common['lr']:g}, momentum {common['momentum']:g}, batch {common['batch_size']}, "
      f"{common['epochs']} epochs, a full snapshot (network instance) every "
      f"{common['snapshot_every']} epoch(s); CNA per epoch on ≤ "
      f"{common.get('max_samples', 2000)} samples per split; n_train "
      f"{common['n_train'] or 'all'}, n_test {common['n_test'] or 'all'}. "
      f"Datasets: {', '.join(result['datasets']) or 'none'}. "
      f"{len(runs)} runs, {sum(r['status'] == 'FINISHED' for r in runs)} finished, "
      f"{result['instances']} network instances; {seconds / 60:.1f} min in all.\n")
    failed = [r for r in runs if r["status"] != "FINISHED"]
    if failed:
        a("Failed runs (left out): " + "; ".join(f"{r['dataset']} seed {r['seed']}: "
                                                  f"{r['error']}" for r in failed) + "\n")
    a("The criteria below were fixed before the runs; each finding either reproduced or did "
      "not, and both are results (SPEC §5). Nothing was tuned to obtain the paper's "
      "direction.\n")

    a("## Findings\n")
    a("| finding (paper) | criterion | " + " | ".join(result["datasets"]) + " |")
    a("|---|---|" + "---|" * len(result["datasets"]))
    ds_list = list(result["datasets"].values())

    def cells(fn):
        return " | ".join(fn(d) for d in ds_list)

    a("| Fig 4: CNA rises as the training loss falls | every seed: CNA (train and test) at the "
      "end > at init, and Pearson(training loss, CNA train) over epochs < 0 | " + cells(
          lambda d: ("reproduced" if all(r["fig4_holds"] for r in d["runs"]) else
                     "not reproduced") + f" ({sum(r['fig4_holds'] for r in d['runs'])}/"
                                         f"{len(d['runs'])} seeds)") + " |")
    for key, text in (("first", "first trained snapshot"), ("last", "last snapshot")):
        a(f"| Fig 6: test error rises with alpha quintile ({text}) | pooled over seeds: Q5 error "
          "> Q1 error with disjoint 95 % Wilson intervals, rates non-decreasing Q1→Q5 | "
          + cells(lambda d: (f"{d['quintiles'][key]['verdict']} (epoch "
                             f"{d['quintiles'][key]['epoch']}, Q5/Q1 = "
                             f"{_f(d['quintiles'][key]['ratio_q5_q1'], '.2f')})")
                  if d["quintiles"].get(key) else "–") + " |")
    a("| Fig 7: CNA grows with test accuracy | Pearson r(cna_test, test_acc) > 0 over all "
      "instances | " + cells(lambda d: f"{d['fig7']['verdict']} (r = {_f(d['fig7']['r'])})"
                             if "fig7" in d else "–") + " |")
    a("| Fig 8/9, SPEC §3: CNA-A correlates positively with the gap (paper MNIST: +0.98) | "
      "Pearson(CNA-A, gen_gap) > 0 over all instances | " + cells(
          lambda d: f"{d['fig8']['cna_area_verdict']} (r = "
                    f"{_f(d['fig8']['table']['cna_area']['pearson'], '+.2f')})"
          if "fig8" in d else "–") + " |")
    a("| Fig 8/9: CNA-M predicts the gap better than the norm baselines | Pearson(CNA-M, "
      "gen_gap) > Pearson of every baseline, on the instances where all are defined (margin "
      "> 0) | " + cells(lambda d: _fig8_cell(d["fig8"]) if "fig8" in d else "–") + " |")
    a("| Fig 1, 3, 5 | illustrations, no criterion | " + cells(lambda d: "figures below")
      + " |")
    a("")
    a("Correlations are point estimates over network instances; the instances of one run are "
      "consecutive snapshots of one network, so they are not independent, and a small "
      "difference between two correlations (say below 0.1) is not evidence either way.")
    a("")

    a("## CNA at initialization and at the end (Fig 4)\n")
    a("Per-epoch CNA is measured on a fixed seeded subset of each split. corr(loss, CNA) is "
      "Pearson's r of Keras' per-epoch training loss and CNA (train) over epochs 1..E "
      "(negative: CNA rises as the loss falls).\n")
    a("| dataset | seed | CNA train init | CNA train end | CNA test init | CNA test end | "
      "corr(loss, CNA) | test acc end | CNA-A end | run |")
    a("|---|---|---|---|---|---|---|---|---|---|")
    for ds, d in result["datasets"].items():
        for r in d["runs"]:
            a(f"| {ds} | {r['seed']} | {_f(r['cna_train_init'])} | {_f(r['cna_train_end'])} | "
              f"{_f(r['cna_test_init'])} | {_f(r['cna_test_end'])} | {_f(r['corr_loss_cna'])} | "
              f"{_f(r['test_acc_end'], '.3f')} | {_f(r['cna_area_end'], '.4f')} | "
              f"`{r['run_id'][:8]}` |")
    a("")

    a("## Test error per alpha quintile (Fig 6)\n")
    a("Each run's full-snapshot test samples are split into alpha quintiles (Q1 lowest input "
      "complexity, Q5 highest); errors and sizes are summed over the seeds listed and given "
      "with 95 % Wilson intervals. The pooled interval treats every test prediction as an "
      "independent trial: it ignores seed-to-seed variation (different splits and "
      "initializations; the per-seed ratios show it), and for mnist5k the seeds' test sets "
      "overlap. Epoch 0 is the untrained network (chance level), shown for reference only.\n")
    for ds, d in result["datasets"].items():
        if not d["quintiles"]:
            a(f"{ds}: no quintile table was logged.\n")
            continue
        a(f"**{ds}** (seeds {', '.join(map(str, d['quintile_seeds']))})\n")
        a("| snapshot | epoch | Q1 | Q2 | Q3 | Q4 | Q5 | Q5/Q1 | Q5/Q1 per seed | verdict |")
        a("|---|---|---|---|---|---|---|---|---|---|")
        for key, text in (("init", "init"), ("first", "first trained"), ("last", "last")):
            q = d["quintiles"].get(key)
            if not q:
                continue
            qs = " | ".join(f"{_pct(r['error'])} [{_pct(r['low'])}, {_pct(r['high'])}] "
                            f"({r['errors']}/{r['n']})" for r in q["quintiles"])
            per_seed = ", ".join(f"{s}: {_f(v, '.2f')}" for s, v in q["per_seed_ratio"].items())
            verdict = "–" if key == "init" else q["verdict"]
            a(f"| {text} | {q['epoch']} | {qs} | {_f(q['ratio_q5_q1'], '.2f')} | {per_seed} | "
              f"{verdict} |")
        a("")

    if "correlations" in result:
        a("## Correlation with the generalization gap (Fig 8/9, SPEC §3)\n")
        a("Pearson correlation of each measure with `gen_gap` over each dataset's network "
          "instances (every full snapshot of every seed, initialization included), beside the "
          "paper's (supplement; MNIST, 5 architectures x snapshots). mnist5k is the 5,000 "
          "real MNIST digits; the paper has no digits experiment. Baselines are undefined "
          "(left out) where the margin is <= 0, so their n is smaller. Instances of one run "
          "are consecutive snapshots, not independent networks.\n")
        names = list(result["datasets"])
        a("| measure | " + " | ".join(
            f"paper ({PAPER_ROW[ds]}) | ours {ds}: Pearson / Kendall (n)" if ds in PAPER_ROW
            else f"ours {ds}: Pearson / Kendall (n)" for ds in names) + " |")
        a("|---|" + "".join("---|---|" if ds in PAPER_ROW else "---|" for ds in names))
        for m in PAPER_MNIST:
            parts = []
            for ds in names:
                t = result["datasets"][ds].get("fig8", {}).get("table", {}).get(m, {})
                ours = (f"{_f(t.get('pearson', math.nan), '+.2f')} / "
                        f"{_f(t.get('kendall', math.nan), '+.2f')} ({t.get('n', 0)})")
                parts.append(f"{PAPER_MNIST[m]:+.2f} | {ours}" if ds in PAPER_ROW else ours)
            a(f"| {LABELS[m]} | " + " | ".join(parts) + " |")
        a("")
        a("CNA vs test accuracy (Fig 7): " + "; ".join(
            f"{ds}: r = {_f(d['fig7']['r'])} over {d['fig7']['n']} instances, "
            f"{_f(d['fig7']['r_trained'])} over the {d['fig7']['n_trained']} trained ones"
            for ds, d in result["datasets"].items() if "fig7" in d) + ".\n")
        import compare as compare_step
        a("Full table (all scopes; Pearson / Kendall / granulated Kendall):\n")
        a(compare_step.markdown(result["correlations"], "gen_gap") + "\n")

    a("## Figures\n")
    for key, text in (("fig7", "Fig 7: CNA (test) vs test accuracy, every instance"),
                      ("fig8", "Fig 8/9: Pearson correlation with gen_gap per scope")):
        if key in figures:
            a(f"{text}\n\n![{text}]({figures[key]})\n")
    for ds, d in result["datasets"].items():
        seed = d["runs"][0]["seed"] if d["runs"] else "?"
        for key, text in (("fig4", "Fig 4: training loss and CNA"),
                          ("fig6", "Fig 6: test error by alpha quintile"),
                          ("fig1", "Fig 1: activation vs depth, lowest vs highest alpha test "
                                   "input, end of training"),
                          ("fig3", "Fig 3: train vs test (alpha, beta) curves, last snapshot"),
                          ("fig5", "Fig 5: weight trajectory over the CNA landscape")):
            path = figures.get(f"{ds}_{key}")
            if path:
                a(f"{ds}, seed {seed}. {text}\n\n![{ds} {text}]({path})\n")
    return "\n".join(L)


def _fig8_cell(f: Dict[str, Any]) -> str:
    m = f["matched"]
    text = (f"{f['verdict']} (n = {f['n_matched']}: CNA-M {_f(m['cna_margin'], '+.2f')}, "
            f"baselines {', '.join(_f(m[b], '+.2f') for b in BASELINES)})")
    k = f["table"]["cna_margin"]["kendall"]
    p = f["table"]["cna_margin"]["pearson"]
    if math.isfinite(k) and math.isfinite(p) and (k > 0) != (p > 0):
        text += (f"; CNA-M's Kendall over all instances ({_f(k, '+.2f')}) has the opposite sign "
                 f"of its Pearson ({_f(p, '+.2f')})")
    return text


def _copy_run_figures(client, result, workdir: str) -> Dict[str, str]:
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


def _summary_figures(result) -> Dict[str, str]:
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
                       lambda: next(f for n, f in compare_step._figures(result["correlations"])
                                    if n == "correlation_gen_gap.png")))
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


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x


def report(client, parent_id: str, experiment_id: str, common: Dict[str, Any],
           runs: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
    """Analyzes the child runs and logs report.md, its figures and report.json to the active run."""
    import mlflow

    import compare as compare_step

    workdir = tempfile.mkdtemp(prefix="cna_tf_report_")
    try:
        order = list(dict.fromkeys(r["dataset"] for r in runs))
        result = analyze(client, parent_id, experiment_id, workdir, order)
        figures = _copy_run_figures(client, result, workdir)
        figures.update(_summary_figures(result))
        text = render(result, common, runs, figures, seconds)
        mlflow.log_text(text, "report.md")
        if result.get("correlations"):
            mlflow.log_text(compare_step.to_csv(result["correlations"]), "correlations.csv")
        public = {k: v for k, v in result.items() if not k.startswith("_")
                  and k != "correlations"}
        public.update(protocol=common, runs=runs, seconds=seconds, figures=figures)
        mlflow.log_text(json.dumps(_jsonable(public), indent=1), "report.json")
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
            runs = run_cells(cells, backup_root)
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
