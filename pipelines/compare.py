"""MLproject step `compare`: rank every metric by how well it predicts the generalization gap.

Reads the network instances (SPEC §3: each finished train run at each full snapshot; the final
one only for shuffled-label runs) of a grid's child runs, or of every train run of an experiment,
and correlates each metric with ``gen_gap`` and ``loss_gap`` (CNA also with ``test_acc``):
Pearson, Kendall and granulated Kendall, for All Nets, per architecture and per dataset, and,
beside them, PGDL's conditional mutual information with each gap (SPEC §8) on the final snapshots
(one network per run) wherever they form a complete grid over the hyperparameters the scope
varies (a note says why where they do not). Ranks the paper's measures, SPEC §8's ``dist_init``
and ``sum_of_fro``, the flatness measures, SPEC §12's suite and optimization-based measures when
the runs computed them (``train -P suite=...``; at the final snapshot only), and every user's
measure the `score` step logged on the runs (tag ``cna_tf.score.<metric>``; at the final
snapshot only). With ~50 measures the printed tables keep the CNA family, the paper's baselines
and the best others, and a table per gap gives each family's best (`families`); the artifacts
and the Description have every row.

Every score of a gap comes with a seed-bootstrap interval (SPEC §9) over the final snapshots:
the CSV has ``<stat>_low`` / ``<stat>_high`` columns, and for All Nets a table ranks every measure
with ``+0.36 [+0.12, +0.55]``-style intervals and puts CNA-M against every other measure (the
share of the same replicates in which it scores higher). Runs with no seed replicates are
resampled as a pool, and the table says so in one line.

Under the bootstrap tables, one table per gap gives Dziugaite et al.'s robust sign-error (SPEC
§10) over the final snapshots: per intervention (a hyperparameter that varies) and over all, the
mean and the worst environment loss of every measure (``compare/environments.csv``: every kept
environment; ``sign_error_<gap>.png``: the losses per intervention).

Networks of runs that set ``stop_loss`` and did not reach it are counted and said;
``--converged_only true`` leaves them out (Jiang et al.'s and Dziugaite et al.'s protocol).
Runs that logged the flatness names in their two forms (SPEC §8's 1/σ′² with ``suite`` none,
§12's √(µ/m) with ``suite`` all or cheap) leave those names out of the ranking, said in a line
(`mixed_flatness`).

Logs a CSV and a Markdown table, the instances, one row per network (``compare/networks.csv``:
hyperparameters, epochs trained, every measure, the gaps and accuracies), Fig-8/9-style bar
charts and the Fig-7 scatter of CNA against test accuracy to the compare run, and prints the
Markdown tables.

    python pipelines/compare.py --grid_run_id <id>          # one grid
    python pipelines/compare.py --experiment cna_tf-demo    # all train runs of an experiment

It ends with where to look (``Browse the runs: ...``, `cna_tf.tracking.browse_line`), unless
the environment has ``CNA_TF_BROWSE_LINE=0``: `make demo` sets it and prints the line itself,
once, as its last line.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import families  # noqa: E402
from cells import ALL_PARAMS, AXES  # noqa: E402
from experiment import find_experiment  # noqa: E402
from params import declared, log_launch, log_resolved, parse_bool, read_params  # noqa: E402

from cna_tf.ranking import ALL_NETS  # noqa: E402
from cna_tf.scoring import scored_measures  # noqa: E402
from cna_tf.tracking import TAG_PREFIX as TAG  # noqa: E402
from cna_tf.tracking import metric_steps  # noqa: E402

METRICS = ("cna_area", "cna_margin", "l2", "l2_path", "spectral", "bound_2018", "margin",
           "cna_train", "cna_test", "dist_init", "sum_of_fro")
# SPEC §8's flatness measures: ranked when the runs computed them (train -P flatness=true)
FLATNESS = ("pacbayes_flatness", "pacbayes_mag_flatness", "sharpness_mag_flatness")
TARGETS = ("gen_gap", "loss_gap")
EXTRA_TARGETS = {"cna_train": ["test_acc"], "cna_test": ["test_acc"]}
# SPEC §12's suite and optimization-based measures (train -P suite=all|cheap), by family
SUITE = tuple(m for m in families.ordered(families.SUITE + families.OPTIMIZATION)
              if m not in METRICS + FLATNESS)
READ = METRICS + FLATNESS + SUITE + TARGETS + ("test_acc", "train_acc")
INSTANCE_AXES = AXES + ("epoch",)
#: tag of a run whose hyperparameters are not the train step's (a zoo imported by `pgdl`): the
#: JSON list of their names, each a param of the run; they join `AXES` as grid axes
HPARAMS_TAG = TAG + "hparams"
#: instance key holding those names, comma-separated
EXTRA_AXES = "extra_axes"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid_run_id", default="", help="the grid's parent run (default: the "
                    "latest grid run of the experiment)")
    ap.add_argument("--experiment", default="", help="experiment name (default: the grid's; "
                    "with neither, the one `mlflow run --experiment-name` started this run "
                    "in, else cna_tf-demo)")
    ap.add_argument("--all_runs", type=parse_bool, default=False,
                    help="true: every finished train run of the experiment, not one grid's")
    ap.add_argument("--replicates", type=int, default=1000,
                    help="seed-bootstrap replicates of the intervals (SPEC §9)")
    ap.add_argument("--level", type=float, default=0.95, help="the intervals' level")
    ap.add_argument("--converged_only", type=parse_bool, default=False,
                    help="true: leave out the networks of runs that set stop_loss and did not "
                    "reach it (runs without stop_loss are kept)")
    args = ap.parse_args(argv)
    if args.replicates < 1 or not 0 < args.level < 1:
        ap.error(f"replicates must be >= 1 and level in (0, 1), got {args.replicates} and "
                 f"{args.level}")
    return args


def run_params(run) -> Dict[str, Any]:
    """A train run's parameters, typed: the values its step resolved, else the declared ones;
    the hyperparameters its ``cna_tf.hparams`` tag names as numbers where they are numbers."""
    out = read_params(run.data.params, {k: v[0] for k, v in ALL_PARAMS.items()})
    for name in extra_hparams(run):
        if name in out and name not in ALL_PARAMS:
            out[name] = _number(out[name])
    return out


def extra_hparams(run) -> List[str]:
    """The hyperparameter names of the run's ``cna_tf.hparams`` tag ([] without it)."""
    try:
        names = json.loads(run.data.tags.get(HPARAMS_TAG, "[]"))
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def _number(text: Any) -> Any:
    """An int or float where the text is one, else the text."""
    for parse in (int, float):
        try:
            return parse(text)
        except (TypeError, ValueError):
            pass
    return text


def axes_of(instances: Sequence[Dict[str, Any]]) -> tuple:
    """`AXES` and, after them, the hyperparameters the instances' runs name in their
    ``cna_tf.hparams`` tag (first seen first) that are not among `AXES`."""
    extra = [a for i in instances for a in str(i.get(EXTRA_AXES) or "").split(",") if a]
    return AXES + tuple(a for a in dict.fromkeys(extra) if a not in AXES)


def instances_of_run(client, run) -> List[Dict[str, Any]]:
    """The network instances of one finished train run: one per full snapshot epoch."""
    # the last value logged at a step wins (a resumed epoch may have been logged twice)
    keys = READ + scored_measures([run])  # with the user's measures that `score` logged
    history = metric_steps(run.info.run_id, [k for k in keys if k in run.data.metrics], client,
                           duplicates="last")
    steps = sorted(history.get("gen_gap", {}))
    if run.data.tags.get(TAG + "final_only") == "true" and steps:
        steps = steps[-1:]
    base = run_params(run)
    if "arch" not in base and "arch" in run.data.tags:  # an imported zoo names it in a tag
        base["arch"] = run.data.tags["arch"]
    extra = extra_hparams(run)
    if extra:
        base[EXTRA_AXES] = ",".join(extra)
    base.update(run_id=run.info.run_id, cell_key=run.data.tags.get(TAG + "cell_key", ""),
                converged=run_converged(run), test_size=gap_test_size(run, base))
    out = []
    for step in steps:
        row = dict(base, epoch=step)
        for key, values in history.items():
            row[key] = values.get(step, math.nan)
        out.append(row)
    return out


def run_converged(run) -> Optional[bool]:
    """Whether a train run reached its ``stop_loss``; None when it set none (no criterion).

    The ``cna_tf.converged`` tag train logs; a run from before that tag is read from
    ``cna_tf.stopped_at_epoch`` (logged, since stop_loss exists, exactly when the rule
    stopped training), else from its last training cross-entropy against ``stop_loss``.
    """
    tags = run.data.tags
    if TAG + "converged" in tags:
        return tags[TAG + "converged"] == "true"
    try:
        stop_loss = float(run.data.params.get("stop_loss", 0) or 0)
    except ValueError:
        stop_loss = 0.0
    if not stop_loss > 0:
        return None
    if TAG + "stopped_at_epoch" in tags:
        return True
    loss = run.data.metrics.get("cross_entropy", run.data.metrics.get("loss"))
    return loss is not None and loss <= stop_loss


def gap_test_size(run, params: Dict[str, Any]) -> Optional[int]:
    """The number of test points the run's gaps were measured on: its test set (tag
    ``cna_tf.n_test``), or ``full_max_samples`` of it when set; None when not logged."""
    try:
        size = int(run.data.tags[TAG + "n_test"])
    except (KeyError, ValueError):
        return None
    cap = params.get("full_max_samples") or 0
    return min(size, int(cap)) if cap and cap > 0 else size


def flatness_form(run) -> str:
    """Which values a train run logged under `FLATNESS`' names: ``"suite"``, SPEC §12's
    √(µ/m) report (``suite`` all or cheap), or ``"raw"``, SPEC §8's 1/σ′² of
    `cna_tf.flatness` (``flatness`` true with ``suite`` none, or a run from before the suite,
    which logged no ``suite``)."""
    return "suite" if run_params(run).get("suite", "none") in ("all", "cheap") else "raw"


def mixed_flatness(runs) -> str:
    """One line when the runs logged `FLATNESS`' names in both forms (`flatness_form`), which
    do not compare (a factor √m apart, and 1/σ′² against its square root); "" otherwise."""
    forms: Dict[str, int] = {}
    for run in runs:
        if any(m in run.data.metrics for m in FLATNESS):
            form = flatness_form(run)
            forms[form] = forms.get(form, 0) + 1
    if len(forms) < 2:
        return ""
    return (f"Flatness: {forms['raw']} run(s) logged {', '.join(FLATNESS)} as SPEC §8's 1/σ′² "
            f"(flatness=true with suite=none, or from before the suite) and {forms['suite']} "
            "as SPEC §12's √(µ/m) (suite=all or cheap); the two forms do not compare, so these "
            "three are not ranked here (compare/networks.csv keeps them as logged): compare "
            "each set on its own (its grid's run, or an experiment per setting).")


def convergence(instances: List[Dict[str, Any]], converged_only: bool = False,
                older: int = 0) -> str:
    """One line: how many networks did not reach ``stop_loss``, how many set none, and
    whether ``converged_only`` left the others out."""
    nets = final_snapshots(instances)
    failed = sum(1 for i in nets if i.get("converged") is False)
    free = sum(1 for i in nets if i.get("converged") is None)
    if free == len(nets):
        return (f"Convergence: no run set stop_loss ({len(nets)} networks trained to their "
                "epoch budget): none is judged.")
    line = f"Convergence: {failed} of {len(nets)} networks did not reach stop_loss"
    if free:
        line += f"; {free} trained without stop_loss (no criterion: counted as converged)"
    if older:
        line += (f"; {older} older run(s) carry no converged flag: read from their "
                 "cna_tf.stopped_at_epoch tag (logged when stop_loss stopped training), else "
                 "their last training loss")
    if converged_only:
        line += (f". converged_only=true: they are left out, {len(nets) - failed} networks "
                 "remain." if failed else ". converged_only=true: none to leave out.")
    elif failed:
        line += ". They are included (converged_only=false)."
    else:
        line += "."
    return line


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

    Tables that would not fit are named, not cut: all are in ``compare/correlations.md``; the
    first one, if too long with the notes under it, is kept without them.
    """
    text = intro
    for i, table in enumerate(tables):
        if len(text) + 2 + len(table) > limit - 200 and i == 0:
            # the first table without its notes rather than nothing
            table = "\n".join(ln for ln in table.split("\n") if not ln.startswith("- ")) + (
                "\n\n(its notes are in the artifact compare/correlations.md)")
        if len(text) + 2 + len(table) > limit - 200:  # 200: room for the note below
            rest = tables[i:]
            targets = [t.split("`")[1] for t in rest if t.startswith("Correlation with `")]
            named = ([f"correlation with {', '.join(targets)}"] if targets else []) + [
                t.split(" (")[0].replace("`", "") for t in rest
                if "`" in t and not t.startswith("Correlation with `")]
            return (f"{text}\n\nThe other {len(rest)} table(s) ({'; '.join(named)}) are in "
                    "the artifact compare/correlations.md.\n")
        text += f"\n\n{table}"
    return text + "\n"


def to_csv(rows: List[Dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def compare(instances: List[Dict[str, Any]], scored: Sequence[str] = (),
            leave_out: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """The correlation rows of every measure; ``scored``: users' measures (`score`) to rank
    beside the built-in ones; ``leave_out``: measures not to rank (`mixed_flatness`)."""
    from cna_tf.ranking import correlate

    metrics = list(METRICS) + [m for m in FLATNESS + SUITE if m not in leave_out
                               and any(_finite(i.get(m)) for i in instances)] + list(scored)
    rows = correlate(instances, metrics, TARGETS, axes_of(instances) + ("epoch",),
                     group_by=("arch", "dataset"),
                     extra_targets=EXTRA_TARGETS)
    for r in rows:
        r["family"] = families.family(r["metric"])
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


def _scope_networks(finals: List[Dict[str, Any]], scope: str) -> tuple:
    """The networks (final snapshots) of a scope and the hyperparameters they vary:
    ``(nets, {axis: value per network})``, axes in `AXES` order."""
    nets = [i for i in finals if _in_scope(i, scope)]
    axes = [a for a in axes_of(nets) if len({repr(i.get(a)) for i in nets}) > 1]
    return nets, {a: [i.get(a) for i in nets] for a in axes}


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
        nets, hparams = _scope_networks(finals, scope)
        axes = list(hparams)
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


#: the measure the paired comparison puts against every other (CNA-M, the paper's)
PAIRED_WITH = "cna_margin"
#: the statistics of the interval table, in its column order
INTERVAL_STATS = (("kendall", "Kendall"), ("granulated_kendall", "Ψ"), ("pearson", "Pearson"),
                  ("cmi", "CMI"))


def add_intervals(rows: List[Dict[str, Any]], instances: List[Dict[str, Any]],
                  replicates: int = 1000, level: float = 0.95, seed: int = 0
                  ) -> Dict[tuple, Any]:
    """Seed-bootstrap intervals (SPEC §9) of every gap row's scores, in place; returns them.

    Per scope and gap: the networks are the runs' final snapshots in the scope (one network
    per run, as for CMI), the hyperparameters the axes that vary among them, the replicate
    axis ``seed``. Adds to every row of a gap ``boot_n`` (networks), ``boot_mode`` (``seed``
    or ``pool``), ``<stat>_point`` / ``<stat>_low`` / ``<stat>_high`` for Pearson, Kendall,
    granulated Kendall and CMI (every point is its mean over the replicates, SPEC §9; the
    row's ``pearson`` / ``kendall`` / ``granulated_kendall`` / ``cmi`` stay the values on all
    instances) and ``boot_note``. Rows of other targets are left as they are.

    Returns:
        ``(scope, target) -> cna_tf.ranking.BootstrapResult`` (with its paired fractions).
    """
    from cna_tf.ranking import bootstrap

    # in a fixed order (MLflow's search order is not), so the same runs give the same draws
    finals = sorted(final_snapshots(instances), key=_network_order)
    results: Dict[tuple, Any] = {}
    for scope in dict.fromkeys(r["scope"] for r in rows):
        nets, hparams = _scope_networks(finals, scope)
        replicate_axis, partial = _replicate_axis(hparams, len(nets))
        for target in TARGETS:
            metrics = list(dict.fromkeys(r["metric"] for r in rows
                                         if r["scope"] == scope and r["target"] == target))
            if len(nets) < 2 or not metrics:
                continue
            measures = {m: [float(i.get(m, math.nan)) for i in nets] for m in metrics}
            gap = [float(i.get(target, math.nan)) for i in nets]
            res = bootstrap(measures, gap, hparams, replicate_axis=replicate_axis,
                            replicates=replicates, level=level, seed=seed)
            if partial:
                res.notes.insert(0, partial)
            results[(scope, target)] = res
            for r in rows:
                if r["scope"] != scope or r["target"] != target:
                    continue
                r.update(boot_n=len(nets), boot_mode=res.mode,
                         boot_note=" ".join(res.notes))
                for stat, _ in INTERVAL_STATS:
                    point, low, high = res[r["metric"]][stat]
                    r.update({f"{stat}_point": point, f"{stat}_low": low,
                              f"{stat}_high": high})
    return results


def _replicate_axis(hparams: Dict[str, List[Any]], n: int):
    """``("seed", "")`` when every combination of the other varied hyperparameters has at
    least two seeds; else ``(None, why)``: the networks are then resampled as a pool, since a
    combination with one network would put none of its seed variance in the interval."""
    if "seed" not in hparams:
        return None, ""
    others = [a for a in hparams if a != "seed"]
    sizes: Dict[tuple, int] = {}
    for i in range(n):
        key = tuple(repr(hparams[a][i]) for a in others)
        sizes[key] = sizes.get(key, 0) + 1
    single = sum(1 for v in sizes.values() if v < 2)
    if not single:
        return "seed", ""
    return None, (f"the seed varies, but {single} of the {len(sizes)} combinations of the other "
                  "hyperparameters have a single network: resampled as a pool, not by seed")


#: the noise filter per gap (SPEC §10): Hoeffding's bound holds for a gap of error rates only
SIGN_ERROR_FILTER = {"gen_gap": True, "loss_gap": False}
#: test-set size assumed for a run that did not log its own (SPEC §10's default)
DEFAULT_TEST_SIZE = 10_000


def add_sign_errors(rows: List[Dict[str, Any]], instances: List[Dict[str, Any]]
                    ) -> Dict[str, Any]:
    """Dziugaite et al.'s robust sign-error (SPEC §10) of every All Nets measure with each gap.

    The networks are the runs' final snapshots, the hyperparameters the axes that vary among
    them (the seed the replicate axis), ``n_test`` each network's test-set size
    (`gap_test_size`). ``gen_gap`` is weighed with Hoeffding's noise filter; ``loss_gap``, not a
    difference of error rates, without (every pair weighs 1).

    Returns:
        ``target -> cna_tf.ranking.SignErrorResult``, with ``n_test_note`` (how many networks
        had no logged test-set size; ``""`` when all had) set on it.
    """
    from cna_tf.ranking import sign_errors

    finals = sorted(final_snapshots(instances), key=_network_order)
    nets, hparams = _scope_networks(finals, ALL_NETS)
    sizes = [i.get("test_size") for i in nets]
    missing = sum(1 for v in sizes if not v)
    note = (f"{missing} of {len(nets)} networks logged no test-set size: "
            f"{DEFAULT_TEST_SIZE:,} assumed" if missing else "")
    n_test = [int(v) if v else DEFAULT_TEST_SIZE for v in sizes]
    out: Dict[str, Any] = {}
    for target in TARGETS:
        metrics = list(dict.fromkeys(r["metric"] for r in rows
                                     if r["scope"] == ALL_NETS and r["target"] == target))
        if len(nets) < 2 or not metrics:
            continue
        res = sign_errors({m: [float(i.get(m, math.nan)) for i in nets] for m in metrics},
                          [float(i.get(target, math.nan)) for i in nets], hparams,
                          n_test=n_test, noise_filter=SIGN_ERROR_FILTER[target])
        res.n_test_note, res.n_test = note, sorted(set(n_test))
        out[target] = res
    return out


def _fmt_rate(v) -> str:
    return "–" if not _finite(v) else f"{v:.2f}"


def _by_mean_sign_error(result) -> List[str]:
    """The measures of a sign-error result, lowest mean over all environments first; those
    with no kept environment last, in their given order."""
    def key(metric):
        mean = result[metric]["all"]["mean"]
        return (0, mean) if _finite(mean) else (1, 0.0)
    return sorted(result, key=key)


def sign_error_markdown(result, target: str, scope: str = ALL_NETS) -> str:
    """A row per measure, a column per varied axis and "all": ``mean / max (n)`` of the kept
    environments' losses; sorted by the mean over all (best first; none kept last). ``scope``
    names the networks in the title."""
    columns = list(result.axes) + ["all"]
    sizes = ", ".join(f"{n:,}" for n in getattr(result, "n_test", []))
    lines = [f"Robust sign-error with `{target}` in {scope} (Dziugaite et al. 2020, SPEC "
             "§10): per intervention, mean / max (n) of the environment losses (environment: "
             "two combinations that differ in that axis only, every seed pairing; 0 = the "
             "measure always orders the two networks as their gap, 1 = always the wrong way; "
             f"n = environments kept, ESS >= {result.min_ess:g})", ""]
    if result.noise_filter:
        where = f"{sizes} test points" if sizes else "each network's test set"
        lines += [f"Pairs weighed by Hoeffding's noise filter on {where} (pairs whose gaps may "
                  "differ by chance weigh 0).", ""]
    else:
        lines += [f"No noise filter: `{target}` is not a difference of error rates, so "
                  "Hoeffding's bound does not hold; every pair weighs 1.", ""]

    lines += ["| rank | metric | " + " | ".join(columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    for rank, metric in enumerate(_by_mean_sign_error(result), 1):
        by_axis = result[metric]
        cells = [f"{_fmt_rate(by_axis[c]['mean'])} / {_fmt_rate(by_axis[c]['max'])} "
                 f"({by_axis[c]['n']})" if by_axis[c]["n"] else "– (0)" for c in columns]
        shown = rank if by_axis["all"]["n"] else "–"   # nothing kept: no rank
        lines.append(f"| {shown} | {metric} | " + " | ".join(cells) + " |")
    notes = list(result.notes) + ([result.n_test_note] if getattr(result, "n_test_note", "")
                                  else [])
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def environments_table(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per kept environment of each gap (``compare/environments.csv``): the gap, the
    axis, its two values, the fixed hyperparameters, pairs, ESS and every measure's loss."""
    out = []
    for target, res in results.items():
        for e in res.environments:
            row = {"target": target, "axis": e["axis"], "a": e["a"], "b": e["b"],
                   "fixed": ", ".join(f"{k}={v}" for k, v in e["fixed"].items()),
                   "pairs": e["pairs"], "ess": e["ess"]}
            row.update(e["losses"])
            out.append(row)
    return out


def sign_error_figure(result, target: str):
    """The environment losses of each measure per intervention (`plots.sign_error_losses`),
    measures ordered as in the table."""
    from cna_tf import plots

    return plots.sign_error_losses(result.environments, _by_mean_sign_error(result), result.axes,
                                   title=f"Robust sign-error with {target} per intervention "
                                         "(Dziugaite et al. 2020)")


def incomplete_after_filter(all_instances: List[Dict[str, Any]],
                            kept: List[Dict[str, Any]]) -> str:
    """One line when ``converged_only`` turned a complete grid (every combination of the
    varied hyperparameters, seed included, once) into an incomplete one; else ``""``."""
    from cna_tf.ranking import grid_codes

    before = final_snapshots(all_instances)
    after = final_snapshots(kept)
    if len(after) == len(before):
        return ""
    nets, hparams = _scope_networks(before, ALL_NETS)
    try:
        grid_codes(hparams, len(nets))
    except ValueError:
        return ""   # not complete before either
    others = [a for a in hparams if a != "seed"]

    def combos(instances):
        counts: Dict[tuple, int] = {}
        for i in instances:
            k = tuple(repr(i.get(a)) for a in others)
            counts[k] = counts.get(k, 0) + 1
        return counts

    full, left = combos(before), combos(after)
    lost = sum(1 for k in full if k not in left)
    fewer = sum(1 for k in full if 0 < left.get(k, 0) < full[k])
    return (f"converged_only left out {len(before) - len(after)} networks that did not reach "
            f"stop_loss: the {len(after)} left are no longer a complete grid ({lost} of "
            f"{len(full)} combinations of {others} lost every seed, {fewer} some)")


def _network_order(instance: Dict[str, Any]) -> tuple:
    """Networks sorted by their hyperparameters (in `axes_of` order), then run id."""
    return tuple(repr(instance.get(a)) for a in axes_of([instance])) + \
        (str(instance.get("run_id")),)


def _fmt_interval(point, low, high, fmt: str = "{:+.2f}") -> str:
    def one(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return one(point)
    return f"{one(point)} [{one(low)}, {one(high)}]"


def interval_markdown(result, target: str, scope: str = "All Nets",
                      paired_with: str = PAIRED_WITH) -> str:
    """The ranking of every measure with its seed-bootstrap intervals, for one scope and gap,
    ordered by CMI (then Kendall); under it the paired fractions of ``paired_with`` against
    every other measure, or the one line saying there is no seed axis."""
    def key(item):
        stats_ = item[1]
        cmi, tau = stats_["cmi"][0], stats_["kendall"][0]
        return (-(cmi if _finite(cmi) else -math.inf), -(tau if _finite(tau) else -math.inf))

    pct = f"{result.level * 100:g} %"
    lines = [f"Seed-bootstrap intervals of the correlation with `{target}` in {scope} "
             f"({result.size} networks per replicate, {result.replicates} replicates, {pct} "
             "percentile intervals, SPEC §9; "
             + ("every point is its mean over the replicates, one network per combination"
                if result.mode == "seed" else
                "every point is its mean over the resamples of the networks with replacement")
             + f"; the values on all networks are in \"Correlation with `{target}`\")", ""]
    if result.mode == "pool":
        lines += ["No seed axis: not every combination of the other hyperparameters was trained "
                  "with two or more seeds, so the networks are resampled as a pool and CMI "
                  "(one network per combination) has neither point nor interval.", ""]
    lines += ["| rank | metric | " + " | ".join(h for _, h in INTERVAL_STATS) + " |",
              "|---|---|" + "---|" * len(INTERVAL_STATS)]
    for rank, (metric, stats_) in enumerate(sorted(result.items(), key=key), 1):
        cells = [_fmt_interval(*stats_[s], fmt="{:.3f}" if s == "cmi" else "{:+.2f}")
                 for s, _ in INTERVAL_STATS]
        lines.append(f"| {rank} | {metric} | " + " | ".join(cells) + " |")
    notes = [n for n in result.notes
             if not n.startswith(("no replicate axis", "the seed varies, but"))]
    lines += [""] + [f"- {n}" for n in notes]
    if paired_with in result and len(result) > 1:
        lines.append("")
        lines.append(f"`{paired_with}` against every other measure: the share of the same "
                     f"replicates in which `{paired_with}` scores higher (ties count half)")
        lines += ["", "| other measure | by CMI | by Kendall |", "|---|---|---|"]
        for other in result:
            if other == paired_with:
                continue
            cmi = result.paired["cmi"].get((paired_with, other), math.nan)
            tau = result.paired["kendall"].get((paired_with, other), math.nan)
            fmt = lambda v: "–" if not _finite(v) else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {other} | {fmt(cmi)} | {fmt(tau)} |")
    return "\n".join(lines)


#: columns of the per-network table before the measures
NETWORK_COLUMNS = ("run_id", "cell_key") + AXES + ("epochs_trained", "converged", "test_size")


def networks_table(instances: List[Dict[str, Any]], scored: Sequence[str] = ()
                   ) -> List[Dict[str, Any]]:
    """One row per network (its run's final snapshot): every hyperparameter, the seed, epochs
    trained, whether it reached stop_loss (``converged``: True / False, empty without
    stop_loss), its test-set size, every measure, the gaps and accuracies: enough to redo the
    analysis without MLflow (``compare/networks.csv``)."""
    out = []
    extra = axes_of(instances)[len(AXES):]
    for i in sorted(final_snapshots(instances), key=_network_order):
        row = {c: i.get(c) for c in NETWORK_COLUMNS + extra if c != "epochs_trained"}
        row["epochs_trained"] = i.get("epoch")
        row.update({k: i.get(k, math.nan) for k in READ + tuple(scored)})
        out.append(row)
    return out


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


def _by_kendall(rows: List[Dict[str, Any]], target: str) -> List[str]:
    """The measures, best first, by Kendall's τ with ``target`` on All Nets (NaN last)."""
    mine = [r for r in rows if r["target"] == target and r["scope"] == ALL_NETS]
    return [r["metric"] for r in sorted(
        mine, key=lambda r: -(r["kendall"] if _finite(r["kendall"]) else -math.inf))]


def terminal_tables(rows: List[Dict[str, Any]], interval_tables: Dict[str, str],
                    sign_tables: Dict[str, str]) -> Dict[str, List[str]]:
    """Every table of ``compare/correlations.md``, whole (``"full"``) and as `compare` prints it
    (``"printed"``): each cut to the CNA family, the paper's baselines, users' measures and the
    best others (`families.shorten`; the correlation tables by Kendall's τ on All Nets), and the
    best measure of each family per gap (`families.family_markdown`). ``"description"``: the
    printed tables in the order of the run's Description, each gap's interval table, then its
    sign-error table (so the first gap's sign-errors come before the second gap's intervals
    where MLflow's 8,000 characters run out), then the correlation and family tables."""
    correlation = {t: markdown(rows, t) for t in TARGETS + ("test_acc",)}
    short = [families.shorten(table, order=_by_kendall(rows, t))
             for t, table in correlation.items()]
    family = [families.family_markdown(rows, t) for t in TARGETS]
    per_gap = [table for t in TARGETS
               for table in (interval_tables.get(t), sign_tables.get(t)) if table]
    return {"full": list(correlation.values()) + family + list(interval_tables.values())
            + list(sign_tables.values()),
            "printed": short + family + [families.shorten(t) for t in list(
                interval_tables.values()) + list(sign_tables.values())],
            "description": [families.shorten(t) for t in per_gap] + short + family}


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    import mlflow

    args = parse_args(argv)
    client = mlflow.MlflowClient()
    grid_id = args.grid_run_id
    if grid_id and not args.experiment:
        exp = client.get_experiment(client.get_run(grid_id).info.experiment_id)
    else:
        exp = find_experiment("compare", args.experiment, client)
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
    older = sum(1 for run in runs if TAG + "converged" not in run.data.tags
                and run_converged(run) is not None)
    converged_line = convergence(instances, args.converged_only, older)
    mixed = mixed_flatness(runs)
    if mixed:
        converged_line += f"\n{mixed}"
    incomplete = ""
    if args.converged_only:
        kept = [i for i in instances if i.get("converged") is not False]
        incomplete = incomplete_after_filter(instances, kept)
        instances = kept
    if len(instances) < 3:
        sys.exit(f"only {len(instances)} network instances found (finished train runs with "
                 "snapshots): nothing to correlate")
    scored = scored_measures(runs)
    rows = compare(instances, scored, leave_out=FLATNESS if mixed else ())
    boot = add_intervals(rows, instances, replicates=args.replicates, level=args.level)
    signs = add_sign_errors(rows, instances)
    if incomplete:   # one line each for the seed bootstrap and CMI
        for (scope, target), res in boot.items():
            if scope == ALL_NETS:
                res.notes.insert(0, f"{incomplete}; the seed bootstrap draws from the networks "
                                    f"left ({res.mode} mode)")
        for r in rows:
            if r["scope"] == ALL_NETS and r.get("cmi_note"):
                r["cmi_note"] = f"{incomplete}; CMI needs every combination once: {r['cmi_note']}"
    interval_tables = {t: interval_markdown(boot[(ALL_NETS, t)], t) for t in TARGETS
                       if (ALL_NETS, t) in boot}
    sign_tables = {t: sign_error_markdown(signs[t], t) for t in TARGETS if t in signs}
    views = terminal_tables(rows, interval_tables, sign_tables)
    tables, printed = "\n\n".join(views["full"]), "\n\n".join(views["printed"])
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
                             f"{scope}).\n\n{converged_line}",
                             views["description"])})
        log_launch("compare", {k: getattr(args, k) for k in declared("compare")})
        log_resolved({"grid_run_id": grid_id or "all", "experiment": exp.name})
        mlflow.log_metrics({"runs": len(runs), "instances": len(instances),
                            "unconverged": sum(1 for run in runs
                                               if run_converged(run) is False)})
        mlflow.log_text(to_csv(rows), "compare/correlations.csv")
        mlflow.log_text(tables + "\n", "compare/correlations.md")
        mlflow.log_text(to_csv(instances), "compare/instances.csv")
        mlflow.log_text(to_csv(networks_table(instances, scored)), "compare/networks.csv")
        if any(res.environments for res in signs.values()):
            mlflow.log_text(to_csv(environments_table(signs)), "compare/environments.csv")
        from cna_tf import plots
        for target, res in signs.items():
            try:
                fig = sign_error_figure(res, target)
                mlflow.log_figure(fig, f"compare/sign_error_{target}.png")
                plots.close(fig)
            except Exception as e:  # the tables are the result; a figure never fails the step
                print(f"warning: compare/sign_error_{target}.png not logged: "
                      f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
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
        summary: Dict[str, float] = {}   # one batch: ~50 measures make hundreds of metrics
        for r in rows:
            if r["scope"] == "All Nets" and not math.isnan(r["pearson"]):
                summary[f"pearson.{r['metric']}.{r['target']}"] = r["pearson"]
            if r["scope"] == "All Nets" and not math.isnan(r.get("cmi", math.nan)):
                summary[f"cmi.{r['metric']}.{r['target']}"] = r["cmi"]
            res = signs.get(r["target"]) if r["scope"] == "All Nets" else None
            if res is not None and r["metric"] in res and res[r["metric"]]["all"]["n"]:
                every = res[r["metric"]]["all"]
                summary.update({f"sign_error_mean.{r['metric']}.{r['target']}": every["mean"],
                                f"sign_error_max.{r['metric']}.{r['target']}": every["max"]})
            if r["scope"] == "All Nets" and _finite(r.get("kendall_low")):
                summary.update({f"kendall_low.{r['metric']}.{r['target']}": r["kendall_low"],
                                f"kendall_high.{r['metric']}.{r['target']}": r["kendall_high"]})
        mlflow.log_metrics(summary)
    from cna_tf.tracking import browse_line  # where to look: the runs, in the MLflow UI
    # CNA_TF_BROWSE_LINE=0: `make demo` prints that line itself (with the port `make ui` uses)
    where = ("" if os.environ.get("CNA_TF_BROWSE_LINE", "1") == "0"
             else f"\n\n{browse_line(exp.experiment_id, client)}")
    print(f"compare run {run.info.run_id}: {len(runs)} runs, {len(instances)} network "
          f"instances\n{converged_line}\n\n{printed}{where}", flush=True)
    return rows


if __name__ == "__main__":
    main()
