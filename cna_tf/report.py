"""The reproduction report (`pipelines/reproduce.py`): its numbers, verdicts and Markdown.

Pure functions of what the runs logged, read back by the step: per run, its metric histories
(``{key: {step: value}}``, as `cna_tf.tracking.metric_steps` returns them), its
``figures/quintile_errors.csv`` rows and its network instances. From them `analyze` computes CNA
at initialization and at the end, test error per alpha quintile pooled over seeds with 95 %
Wilson intervals, Q5/Q1 ratios, the correlation of every measure with the generalization gap
(through a ``correlate`` function the caller passes) and, per finding, whether it reproduced;
`render` writes the Markdown. Nothing here talks to MLflow.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence

from cna_tf.analysis import wilson_interval
from cna_tf.ranking import pearson

__all__ = ["PAPER_MNIST", "PAPER_ROW", "LABELS", "BASELINES", "SUMMARY_KEYS", "loss_key",
           "run_summary", "pooled_quintiles", "fig6_verdict", "fig7_summary", "fig8_summary",
           "analyze", "pearson_by_scope", "render", "to_jsonable"]

#: SPEC §3: Pearson correlation with the generalization gap, MNIST (supplement).
PAPER_MNIST = {"cna_area": 0.98, "cna_margin": 0.39, "l2": 0.13, "l2_path": 0.05,
               "spectral": 0.17, "bound_2018": 0.17}
#: Paper dataset whose row a dataset of ours is compared with (mnist5k: 5,000 real MNIST digits).
PAPER_ROW = {"mnist5k": "MNIST", "mnist": "MNIST"}
LABELS = {"cna_area": "CNA-A", "cna_margin": "CNA-M", "l2": "L2", "l2_path": "L2-path",
          "spectral": "Spectral", "bound_2018": "2018 bound"}
BASELINES = ("l2", "l2_path", "spectral", "bound_2018")
#: Metrics `run_summary` reads (besides the training loss, see `loss_key`).
SUMMARY_KEYS = ("cna_train", "cna_test", "test_acc", "train_acc", "gen_gap", "cna_area",
                "cna_margin")

#: One run as the step reads it back: ``dataset``, ``seed``, ``run_id``, ``histories``
#: (``{key: {step: value}}``), ``loss_key``, ``quintile_rows`` (rows of the run's
#: ``figures/quintile_errors.csv``, numbers as floats) and ``instances`` (its network instances).
RunRecord = Dict[str, Any]


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    return float(pearson(list(x), list(y)))


def loss_key(logged: Collection[str]) -> str:
    """Keras' per-epoch training loss: ``loss``; runs logged before that name: ``train_loss``.

    (``train_loss`` is now the callback's loss on the un-augmented training set at snapshots.)

    Args:
        logged: the metric names the run logged.
    """
    return "loss" if "loss" in logged else "train_loss"


def run_summary(run_id: str, histories: Mapping[str, Mapping[int, float]],
                loss: str) -> Dict[str, Any]:
    """CNA at initialization and at the end, accuracy, loss and CNA-A of one run.

    Args:
        run_id: the run (reported as is).
        histories: ``{key: {step: value}}`` for `SUMMARY_KEYS` and ``loss``; a missing key reads
            as never logged.
        loss: the training-loss key (`loss_key`).
    """
    def h(key: str) -> Mapping[int, float]:
        return histories.get(key, {})

    out: Dict[str, Any] = {"run_id": run_id}
    for key in ("cna_train", "cna_test"):
        out[f"{key}_init"] = h(key).get(0, math.nan)
        out[f"{key}_end"] = h(key)[max(h(key))] if h(key) else math.nan
        out["end_epoch"] = max(h(key)) if h(key) else -1
    for key in ("test_acc", "train_acc", "gen_gap", "cna_area", "cna_margin"):
        out[f"{key}_end"] = h(key)[max(h(key))] if h(key) else math.nan
    losses, cna_tr = h(loss), h("cna_train")
    steps = sorted(s for s in losses if s in cna_tr and s > 0)
    out["loss_first"] = losses[min(losses)] if losses else math.nan
    out["loss_last"] = losses[max(losses)] if losses else math.nan
    # Fig 4 in one number: over epochs 1..E, does CNA rise as the training loss falls (< 0)?
    out["corr_loss_cna"] = _pearson([losses[s] for s in steps], [cna_tr[s] for s in steps])
    out["fig4_holds"] = bool(out["cna_train_end"] > out["cna_train_init"]
                             and out["cna_test_end"] > out["cna_test_init"]
                             and out["corr_loss_cna"] < 0)
    return out


def pooled_quintiles(per_run: Dict[int, List[Dict[str, float]]], epoch: int
                     ) -> Dict[str, Any]:
    """Errors and sizes per quintile at one snapshot epoch, summed over seeds, with Wilson CIs.

    Args:
        per_run: ``{seed: rows of figures/quintile_errors.csv}``; runs without the epoch are
            left out.
    """
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


def analyze(runs: Sequence[RunRecord], order: Sequence[str] = (),
            correlate: Optional[Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]] = None
            ) -> Dict[str, Any]:
    """All the report's numbers, from the finished runs of a reproduction.

    Args:
        runs: one `RunRecord` per finished training run.
        order: the datasets' order in the report (others follow, by name).
        correlate: instances -> correlation rows (``scope``, ``metric``, ``target``, ``n``,
            ``pearson``, ``kendall``, ``granulated_kendall``), e.g. the compare step's; None
            leaves the correlations out.

    Returns:
        ``datasets`` (per dataset: ``runs`` summaries, pooled ``quintiles`` at the ``init``,
        ``first`` and ``last`` snapshot, ``seeds``, ``quintile_seeds``, ``figure_run``, and with
        correlations ``fig7`` and ``fig8``), ``instances`` (their number), ``correlations`` (the
        rows, when at least 3 instances) and ``_instances`` (the instances themselves).
    """
    by_ds: Dict[str, List[RunRecord]] = {}
    for r in runs:
        by_ds.setdefault(r["dataset"], []).append(r)
    result: Dict[str, Any] = {"datasets": {}, "instances": 0}
    all_instances: List[Dict[str, Any]] = []
    names = [d for d in order if d in by_ds] + sorted(d for d in by_ds if d not in order)
    for ds in names:
        ds_runs = sorted(by_ds[ds], key=lambda r: r["seed"])
        summaries, per_run_q = [], {}
        for r in ds_runs:
            summaries.append(dict(run_summary(r["run_id"], r["histories"], r["loss_key"]),
                                  seed=r["seed"]))
            if r["quintile_rows"]:
                per_run_q[r["seed"]] = r["quintile_rows"]
            all_instances += r["instances"]
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
                                  "figure_run": ds_runs[0]["run_id"]}
    result["instances"] = len(all_instances)
    if correlate is not None and len(all_instances) >= 3:
        rows = correlate(all_instances)
        result["correlations"] = rows
        for ds, d in result["datasets"].items():
            d["fig7"] = fig7_summary(all_instances, rows, ds)
            d["fig8"] = fig8_summary(rows, ds,
                                     [i for i in all_instances if i.get("dataset") == ds])
    result["_instances"] = all_instances
    return result


def _row(rows: Sequence[Dict[str, Any]], scope: str, metric: str,
         target: str) -> Dict[str, Any]:
    for r in rows:
        if r["scope"] == scope and r["metric"] == metric and r["target"] == target:
            return r
    return {"n": 0, "pearson": math.nan, "kendall": math.nan, "granulated_kendall": math.nan}


def fig7_summary(instances: Sequence[Dict[str, Any]], rows: Sequence[Dict[str, Any]],
                 ds: str) -> Dict[str, Any]:
    """Fig 7: Pearson r of cna_test with test_acc over a dataset's instances (and trained ones)."""
    mine = [i for i in instances if i.get("dataset") == ds]
    trained = [i for i in mine if i.get("epoch", 0) > 0]
    r_all = _row(rows, f"dataset={ds}", "cna_test", "test_acc")
    return {"r": r_all["pearson"], "n": r_all["n"],
            "r_trained": _pearson([i.get("cna_test", math.nan) for i in trained],
                                  [i.get("test_acc", math.nan) for i in trained]),
            "n_trained": len(trained),
            "verdict": ("undetermined (r undefined)" if not math.isfinite(r_all["pearson"])
                        else "reproduced" if r_all["pearson"] > 0 else "not reproduced")}


def fig8_summary(rows: Sequence[Dict[str, Any]], ds: str,
                 instances: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Fig 8/9: CNA-A / CNA-M vs the norm baselines, by Pearson r with gen_gap over ``ds``.

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


def pearson_by_scope(rows: Sequence[Dict[str, Any]],
                     target: str) -> Dict[str, Dict[str, float]]:
    """``{scope: {metric: Pearson r}}`` of the correlation rows with one target (Fig 8/9 bars)."""
    table: Dict[str, Dict[str, float]] = {}
    for r in rows:
        if r["target"] == target:
            table.setdefault(r["scope"], {})[r["metric"]] = r["pearson"]
    return table


# -- Markdown ------------------------------------------------------------------------------------

def _f(v: Any, fmt: str = "+.3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, fmt)


def _pct(v: float) -> str:
    return _f(100 * v, ".1f") + " %"


def render(result: Dict[str, Any], common: Dict[str, Any], runs: List[Dict[str, Any]],
           figures: Dict[str, str], seconds: float, full_table: str = "") -> str:
    """The Markdown report.

    Args:
        result: what `analyze` returned.
        common: the protocol's common parameters (width, lr, momentum, batch_size, epochs,
            snapshot_every, n_train, n_test, optionally max_samples).
        runs: every training run started (``dataset``, ``seed``, ``status``, ``error``), failed
            ones included.
        figures: figure key (``fig7``, ``fig8``, ``<dataset>_fig1`` ...) -> path relative to the
            report; a missing key leaves its figure out.
        seconds: the reproduction's wall time.
        full_table: Markdown of the full correlation table (all scopes), or empty to leave it
            out.

    Returns:
        the report's Markdown text.
    """
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
        if full_table:
            a("Full table (all scopes; Pearson / Kendall / granulated Kendall):\n")
            a(full_table + "\n")

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


def to_jsonable(x: Any) -> Any:
    """``x`` with dict keys as strings, tuples as lists, NaN as None, ±inf as "inf"/"-inf"."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if hasattr(x, "item"):
        return to_jsonable(x.item())
    return x

