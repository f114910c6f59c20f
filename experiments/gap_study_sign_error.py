"""Robust sign-error (SPEC §10) of a finished grid from its per-network table alone (no MLflow,
no retraining): `compare`'s tables for ``gen_gap`` (Hoeffding noise filter) and ``loss_gap``
(no filter), for every network and again with the networks that did not reach ``stop_loss``
left out, CNA-M's worst and best intervention, and CNA-M's Kendall with ``gen_gap`` on what is
left (seed bootstrap as `compare` draws it).

    python experiments/gap_study_sign_error.py docs/results/gap_study_networks.csv \\
        --figures docs/results/gap_study
    python experiments/gap_study_sign_error.py docs/results/mnist_hparams.json

A ``.csv`` is `compare`'s ``networks.csv``: a network did not converge where its ``converged``
column says False or, in tables from before that column (the gap study's), where
``epochs_trained`` reached ``epochs`` (the cap: `StopAtLoss` would have stopped it earlier). A
``.json`` is `experiments/mnist_hparams.py`'s record: not converged unless ``stopped_by`` is
``stop_loss``.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "pipelines"))
sys.path.insert(0, str(HERE))

#: compare's measures in its order (pipelines/compare.py METRICS + FLATNESS)
MEASURES = ("cna_area", "cna_margin", "l2", "l2_path", "spectral", "bound_2018", "margin",
            "cna_train", "cna_test", "dist_init", "sum_of_fro", "pacbayes_flatness",
            "pacbayes_mag_flatness", "sharpness_mag_flatness")
#: hyperparameters that can vary (compare's AXES)
AXES = ("arch", "dataset", "width", "depth", "epochs", "lr", "momentum", "batch_size",
        "label_shuffle", "seed", "n_train", "weight_decay", "dropout")
CNA_M = "cna_margin"
#: networks.csv columns that are not measures (the rest are: the 14 above and the §12 suite's)
NOT_MEASURES = frozenset(AXES) | {"run_id", "cell_key", "converged", "test_size",
                                  "epochs_trained", "gen_gap", "loss_gap", "test_acc",
                                  "train_acc"}


def measures_of(nets: List[Dict[str, Any]]) -> List[str]:
    """The measures the networks carry with a finite value somewhere: `MEASURES` first, then a
    table's other measure columns (a grid run with the §12 suite), in the table's order."""
    extra = [m for m in nets[0].get("_columns", ()) if m not in NOT_MEASURES
             and m not in MEASURES] if nets else []
    return [m for m in list(MEASURES) + extra
            if any(math.isfinite(n.get(m, math.nan)) for n in nets)]


def _number(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) else f


def load(path: str) -> Tuple[List[Dict[str, Any]], str]:
    """The networks (hyperparameters, measures, gaps, ``converged``, ``test_size``) and how
    convergence was read."""
    if path.endswith(".json"):
        import json

        from mnist_hparams_analyse import networks

        data = json.loads(Path(path).read_text())
        nets = networks(data)
        for n, c in zip(nets, [c for c in data["cells"] if c.get("status") == "finished"]):
            n["converged"] = c.get("stopped_by") == "stop_loss"
            n["test_size"] = c.get("n_test") or 10_000
        return nets, "converged: the record's stopped_by is stop_loss"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    nets = []
    columns = tuple(rows[0]) if rows else ()
    numeric = [c for c in columns if c not in NOT_MEASURES] + ["gen_gap", "loss_gap"]
    for r in rows:
        n = {k: _number(v) for k, v in r.items()}
        for m in numeric:
            n[m] = float(r[m]) if r.get(m) not in (None, "") else math.nan
        n["_columns"] = columns
        nets.append(n)
    if rows and "converged" in rows[0]:
        for n, r in zip(nets, rows):
            n["converged"] = {"True": True, "False": False}.get(r["converged"])
        how = "converged: the table's converged column"
    else:
        for n in nets:
            n["converged"] = int(n["epochs_trained"]) < int(n["epochs"])
        how = ("not converged: epochs_trained reached the epochs cap (the table predates the "
               "converged column; StopAtLoss stops at the first epoch whose cross-entropy is "
               "<= stop_loss, so a network at the cap had not reached it, barring one that "
               "reached it exactly at the last epoch)")
    for n in nets:
        n.setdefault("test_size", 10_000)   # the gap study: all 10,000 MNIST test images
        if not n.get("test_size"):
            n["test_size"] = 10_000
    return nets, how


def varied(nets: List[Dict[str, Any]]) -> Dict[str, List[Any]]:
    axes = [a for a in AXES if a in nets[0] and len({repr(n[a]) for n in nets}) > 1]
    return {a: [n[a] for n in nets] for a in axes}


def sign_error_tables(nets: List[Dict[str, Any]]) -> Dict[str, Any]:
    from cna_tf import ranking

    measures = measures_of(nets)
    hp = varied(nets)
    out = {}
    for target, noise_filter in (("gen_gap", True), ("loss_gap", False)):
        res = ranking.sign_errors({m: [n[m] for n in nets] for m in measures},
                                  [n[target] for n in nets], hp,
                                  n_test=[int(n["test_size"]) for n in nets],
                                  noise_filter=noise_filter)
        res.n_test, res.n_test_note = sorted({int(n["test_size"]) for n in nets}), ""
        out[target] = res
    return out


def cna_m_line(res, target: str) -> str:
    by_axis = {a: v for a, v in res[CNA_M].items() if a != "all" and v["n"]}
    if not by_axis:
        return f"CNA-M with {target}: no kept environment"
    worst = max(by_axis, key=lambda a: by_axis[a]["mean"])
    best = min(by_axis, key=lambda a: by_axis[a]["mean"])
    every = res[CNA_M]["all"]
    rank = 1 + sum(1 for m, v in res.items() if m != CNA_M and v["all"]["n"]
                   and v["all"]["mean"] < every["mean"])
    ranked = sum(1 for v in res.values() if v["all"]["n"])
    return (f"CNA-M with {target}: mean sign-error over all {every['n']} kept environments "
            f"{every['mean']:.2f} (max {every['max']:.2f}; rank {rank} of {ranked} by the "
            f"mean); most wrong: {worst} ({by_axis[worst]['mean']:.2f} / "
            f"{by_axis[worst]['max']:.2f}, {by_axis[worst]['n']} environments); most right: "
            f"{best} ({by_axis[best]['mean']:.2f} / {by_axis[best]['max']:.2f}, "
            f"{by_axis[best]['n']})")


def kendall_line(nets: List[Dict[str, Any]], replicates: int = 1000) -> str:
    """CNA-M's Kendall with gen_gap and its seed-bootstrap interval, the replicate axis chosen
    as compare chooses it (seed only where every combination has two or more seeds)."""
    from compare import _replicate_axis

    from cna_tf import ranking

    hp = varied(nets)
    axis, why = _replicate_axis(hp, len(nets))
    res = ranking.bootstrap({CNA_M: [n[CNA_M] for n in nets]}, [n["gen_gap"] for n in nets],
                            hp, replicate_axis=axis, replicates=replicates)
    point, low, high = res[CNA_M]["kendall"]
    mode = "seed bootstrap" if res.mode == "seed" else f"pool ({why})"
    return (f"CNA-M Kendall with gen_gap over {len(nets)} networks: {point:+.2f} "
            f"[{low:+.2f}, {high:+.2f}] (95 %, {replicates} replicates, {mode})")


def psi_lines(nets: List[Dict[str, Any]], replicates: int = 1000) -> str:
    """Ψ (granulated Kendall) of every measure with each gap as `compare` now reports it
    (SPEC §9 amended: in seed mode the point is the mean over the replicates), the networks in
    `compare`'s order (the table's), seed 0."""
    from compare import _replicate_axis

    from cna_tf import ranking

    measures = measures_of(nets)
    hp = varied(nets)
    axis, _ = _replicate_axis(hp, len(nets))
    lines = []
    for target in ("gen_gap", "loss_gap"):
        res = ranking.bootstrap({m: [n[m] for n in nets] for m in measures},
                                [n[target] for n in nets], hp, replicate_axis=axis,
                                replicates=replicates, seed=0)
        lines += [f"Ψ with `{target}` ({res.mode} mode, {replicates} replicates): point "
                  "[95 % interval]", "", "| metric | Ψ |", "|---|---|"]
        lines += [f"| {m} | {res[m]['granulated_kendall'][0]:+.2f} "
                  f"[{res[m]['granulated_kendall'][1]:+.2f}, "
                  f"{res[m]['granulated_kendall'][2]:+.2f}] |" for m in measures]
        lines.append("")
    return "\n".join(lines)


def report(path: str, figures: str = "") -> str:
    from compare import sign_error_figure, sign_error_markdown

    from cna_tf import plots

    nets, how = load(path)
    failed = [n for n in nets if n["converged"] is False]
    parts = [f"{len(nets)} networks from {path}; {len(failed)} did not reach stop_loss "
             f"({how})"]
    for title, subset in (("All networks", nets),
                          (f"Converged only ({len(nets) - len(failed)} networks)",
                           [n for n in nets if n["converged"] is not False])):
        if title.startswith("Converged") and not failed:
            parts.append("## Converged only: every network converged; the same tables")
            break
        res = sign_error_tables(subset)
        parts.append(f"## {title}")
        if figures and subset is nets:
            Path(figures).mkdir(parents=True, exist_ok=True)
            for target in ("gen_gap", "loss_gap"):
                fig = sign_error_figure(res[target], target)
                fig.savefig(Path(figures) / f"sign_error_{target}.png", dpi=80)
                plots.close(fig)
        for target in ("gen_gap", "loss_gap"):
            parts.append(sign_error_markdown(res[target], target))
            parts.append(cna_m_line(res[target], target))
        seeds = len({n.get("seed") for n in subset})
        if seeds > 1:
            parts.append(kendall_line(subset))
    if len({n.get("seed") for n in nets}) > 1:
        parts += ["## Ψ as compare now reports it (all networks)", psi_lines(nets)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help="compare's networks.csv, or mnist_hparams.py's JSON")
    ap.add_argument("--figures", default="", help="folder for sign_error_<gap>.png (every "
                    "network)")
    args = ap.parse_args()
    print(report(args.path, args.figures))
